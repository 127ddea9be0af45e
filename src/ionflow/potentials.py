"""Interatomic potentials (ASE calculators) by name.

:func:`get_calculator` turns an engine name from ``workflows.yaml`` into an ASE
calculator:

``"chgnet"``
    CHGNet (``chgnet.model.dynamics.CHGNetCalculator``) on the CPU. The weights ship in
    the ``chgnet`` wheel, so nothing is downloaded. The loaded model is cached per
    process: loading costs seconds, and every calculator made afterwards shares it.
``"mace"``, ``"m3gnet"``, ``"sevennet"``
    Universal potentials from optional packages (``mace-torch``, ``matgl``,
    ``sevenn``). They are imported only when asked for; when the package is missing a
    :class:`~ionflow.errors.UserInputError` says which one to install.
``"toy"`` (alias ``"morse"``)
    A cheap, species-blind pairwise Morse potential
    (:class:`ase.calculators.morse.MorsePotential`) so that pipeline tests run in
    seconds. Every pair of atoms, whatever the elements, has a well of depth
    ``epsilon_ev`` at ``r0_angstrom`` (2.5 Å by default, a typical Li-anion distance).
    In a periodic cell at fixed volume a Li-containing structure stays condensed and does
    not blow up at 600-1500 K. It is **not** a model of any material.

Names are case-insensitive.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator

from ionflow.engines import ENGINES, ML_ENGINES
from ionflow.errors import UserInputError

__all__ = ["KNOWN_POTENTIALS", "TOY_DEFAULTS", "get_calculator", "normalize_potential_name"]

#: Engine names accepted by :func:`get_calculator` ("morse" is an alias of "toy").
KNOWN_POTENTIALS: tuple[str, ...] = (*ML_ENGINES, "morse")

#: Parameters of the toy Morse potential (energies in eV, lengths in Å; the cutoffs are
#: in units of ``r0_angstrom``, as ASE's ``MorsePotential`` expects).
TOY_DEFAULTS: dict[str, float] = {
    "epsilon_ev": 0.1,
    "r0_angstrom": 2.5,
    "rho0": 4.0,
    "rcut1_r0": 1.6,
    "rcut2_r0": 2.0,
}

_ALIASES = {"morse": "toy"}

_MISSING_PACKAGE = {
    name: (e.package, f"pip install {e.package}")
    for name, e in ENGINES.items()
    if e.kind == "ml" and e.package and name != "chgnet"
}


def normalize_potential_name(name: str) -> str:
    """Return the canonical engine name for ``name`` (case-insensitive, aliases resolved).

    Raises
    ------
    UserInputError
        If the name is not one of :data:`KNOWN_POTENTIALS`.
    """
    key = str(name).strip().lower()
    if key not in KNOWN_POTENTIALS:
        raise UserInputError(
            f"unknown potential {name!r}: expected one of {', '.join(KNOWN_POTENTIALS)}"
        )
    return _ALIASES.get(key, key)


def get_calculator(name: str, **kwargs: Any) -> Calculator:
    """Build an ASE calculator for the engine ``name``.

    Parameters
    ----------
    name
        One of :data:`KNOWN_POTENTIALS`, case-insensitive.
    **kwargs
        Engine options.

        * chgnet: ``model_name`` (default ``"0.3.0"``), ``use_device`` (default
          ``"cpu"``), other keywords go to ``CHGNetCalculator``.
        * mace: ``model`` (default ``"medium"``), ``device`` (``"cpu"``),
          ``default_dtype`` (``"float64"``), others to ``mace_mp``.
        * m3gnet: ``model_name`` (default ``"M3GNet-MP-2021.2.8-PES"``), others to
          matgl's ``PESCalculator``.
        * sevennet: ``model`` (default ``"7net-0"``), ``device`` (``"cpu"``), others to
          ``SevenNetCalculator``.
        * toy / morse: ``epsilon_ev``, ``r0_angstrom``, ``rho0``, ``rcut1_r0``,
          ``rcut2_r0`` (see :data:`TOY_DEFAULTS`).

    Returns
    -------
    ase.calculators.calculator.Calculator
        A new calculator (heavy model weights are shared between calls).

    Raises
    ------
    UserInputError
        Unknown name, unknown toy parameter, or the engine's package is not installed.
    """
    key = normalize_potential_name(name)
    if key == "toy":
        return _toy_calculator(**kwargs)
    if key == "chgnet":
        return _chgnet_calculator(**kwargs)
    if key == "mace":
        return _mace_calculator(**kwargs)
    if key == "m3gnet":
        return _m3gnet_calculator(**kwargs)
    return _sevennet_calculator(**kwargs)


# --------------------------------------------------------------------------- toy


def _toy_calculator(**kwargs: Any) -> Calculator:
    from ase.calculators.morse import MorsePotential

    unknown = set(kwargs) - set(TOY_DEFAULTS)
    if unknown:
        raise UserInputError(
            f"unknown parameter(s) for the toy potential: {', '.join(sorted(unknown))}; "
            f"expected some of {', '.join(TOY_DEFAULTS)}"
        )
    p = {**TOY_DEFAULTS, **{k: float(v) for k, v in kwargs.items()}}
    return MorsePotential(
        neighbor_list=_neighbor_list_ijdD,
        epsilon=p["epsilon_ev"],
        r0=p["r0_angstrom"],
        rho0=p["rho0"],
        rcut1=p["rcut1_r0"],
        rcut2=p["rcut2_r0"],
    )


def _neighbor_list_ijdD(
    quantities: str, atoms: Any, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for ``ase.neighborlist.neighbor_list("ijdD", ...)``, but fast for small cells.

    ASE's binning neighbour list takes ~200 ms for some 50-atom cells (e.g. a 2x2x1
    antifluorite with a 5 Å cutoff); pymatgen's compiled ``find_points_in_spheres``
    (what CHGNet itself uses) takes well under a millisecond. Falls back to ASE for
    non-periodic or lower-dimensional cells.
    """
    from ase.neighborlist import neighbor_list

    if quantities != "ijdD" or not all(atoms.pbc) or atoms.cell.rank < 3:
        return neighbor_list(quantities, atoms, cutoff)
    from pymatgen.optimization.neighbors import find_points_in_spheres

    positions = np.ascontiguousarray(atoms.positions, dtype=float)
    cell = np.ascontiguousarray(atoms.cell.array, dtype=float)
    i, j, images, d = find_points_in_spheres(
        positions,
        positions,
        r=float(cutoff),
        pbc=np.ones(3, dtype=np.int64),
        lattice=cell,
        tol=1e-8,
    )
    keep = d > 1e-8  # drop each atom's zero-distance pair with itself
    i, j, images, d = i[keep], j[keep], images[keep], d[keep]
    big_d = positions[j] + images @ cell - positions[i]
    return i.astype(np.intp), j.astype(np.intp), d, big_d


# ------------------------------------------------------------------------ chgnet


@functools.lru_cache(maxsize=4)
def _load_chgnet_model(model_name: str, device: str) -> Any:
    """Load a pretrained CHGNet model once per process (per name and device)."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet v0.3.0 initialized with ..."
        return CHGNet.load(model_name=model_name, use_device=device, verbose=False)


def _chgnet_calculator(
    model_name: str = "0.3.0", use_device: str = "cpu", **kwargs: Any
) -> Calculator:
    from chgnet.model.dynamics import CHGNetCalculator

    model = _load_chgnet_model(model_name, use_device)
    # CHGNetCalculator prints "CHGNet will run on cpu" on every construction.
    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=model, use_device=use_device, **kwargs)


# ------------------------------------------------------- optional engines (lazy)


def _missing(engine: str, exc: ImportError) -> UserInputError:
    package, command = _MISSING_PACKAGE[engine]
    return UserInputError(f"engine {engine!r} needs the {package} package: {command} ({exc})")


def _mace_calculator(
    model: str = "medium", device: str = "cpu", default_dtype: str = "float64", **kwargs: Any
) -> Calculator:
    try:
        from mace.calculators import mace_mp
    except ImportError as exc:
        raise _missing("mace", exc) from exc
    return mace_mp(model=model, device=device, default_dtype=default_dtype, **kwargs)


@functools.lru_cache(maxsize=4)
def _load_matgl_model(model_name: str) -> Any:
    import matgl

    return matgl.load_model(model_name)


def _m3gnet_calculator(model_name: str = "M3GNet-MP-2021.2.8-PES", **kwargs: Any) -> Calculator:
    try:
        from matgl.ext.ase import PESCalculator
    except ImportError as exc:
        raise _missing("m3gnet", exc) from exc
    return PESCalculator(_load_matgl_model(model_name), **kwargs)


def _sevennet_calculator(model: str = "7net-0", device: str = "cpu", **kwargs: Any) -> Calculator:
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:
        raise _missing("sevennet", exc) from exc
    return SevenNetCalculator(model=model, device=device, **kwargs)
