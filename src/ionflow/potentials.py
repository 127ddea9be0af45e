"""Interatomic potentials (ASE calculators) by name, with their model, device and provenance.

:func:`get_calculator` turns an engine name from ``workflows.yaml`` (a row of
:data:`ionflow.engines.ENGINES`) into an ASE calculator:

``"chgnet"``
    CHGNet (``chgnet.model.dynamics.CHGNetCalculator``). The weights ship in the ``chgnet``
    wheel, so nothing is downloaded. The loaded model is cached per process: loading costs
    seconds, and every calculator made afterwards shares it.
``"sevennet"``
    SevenNet (``sevenn.calculator.SevenNetCalculator``). The ``sevenn`` wheel ships the
    checkpoints of 7net-0 (both dates) and 7net-l3i5: a shipped variant is handed to sevenn
    as its *file path*, so sevenn never reaches its download code.
``"mace"``, ``"m3gnet"``, ``"mattersim"``, ``"orb"``, ``"fairchem"``
    Universal potentials from optional packages (``mace-torch``, ``matgl``,
    ``mattersim``, ``orb-models``, ``fairchem-core``). They are imported only when asked
    for; when the package is missing a :class:`~ionflow.errors.UserInputError` says which one
    to install (from the engine's row). Their named variants are fetched by the package
    itself (not offline): on a compute node without internet give ``model:`` a file path.
``"toy"`` (alias ``"morse"``)
    A cheap, species-blind pairwise Morse potential
    (:class:`ase.calculators.morse.MorsePotential`) so that pipeline tests run in
    seconds. Every pair of atoms, whatever the elements, has a well of depth
    ``epsilon_ev`` at ``r0_angstrom`` (2.5 Å by default, a typical Li-anion distance).
    In a periodic cell at fixed volume a Li-containing structure stays condensed and does
    not blow up at 600-1500 K. It is **not** a model of any material.

Every ML engine takes two uniform options, the ``engine.model`` and ``engine.device`` keys
of ``workflows.yaml``: ``model`` (a variant name of the engine's row or a model file path;
:func:`resolve_model` checks it) and ``device`` (``auto`` | ``cpu`` | ``cuda``;
:func:`resolve_device`). :func:`potential_provenance` says which potential, package version
and model file (with its SHA-256) a calculator of the same arguments uses: every MD output
records it.

Names are case-insensitive.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator

from ionflow.engines import DEVICES, ENGINES, ML_ENGINES
from ionflow.errors import UserInputError

__all__ = [
    "KNOWN_POTENTIALS",
    "TOY_DEFAULTS",
    "check_package",
    "file_sha256",
    "get_calculator",
    "model_identity",
    "normalize_potential_name",
    "potential_provenance",
    "resolve_device",
    "resolve_model",
]

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
    name: (e.package, e.install_hint) for name, e in ENGINES.items() if e.kind == "ml" and e.package
}

#: File endings that mark ``engine.model`` as a path even when it does not exist yet.
_MODEL_SUFFIXES = (".pt", ".pth", ".model", ".ckpt", ".tar", ".pkl", ".json", ".yaml")


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
        Engine options. Every ML engine but m3gnet takes ``model`` (a variant name of its
        :data:`~ionflow.engines.ENGINES` row or a model file path; default: the row's
        first variant) and ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``; default
        ``"cpu"``; auto is cuda when torch sees a GPU); m3gnet takes ``model``.

        * chgnet: also ``model_name`` (= ``model``), ``use_device`` (= ``device``); other
          keywords go to ``CHGNetCalculator``.
        * mace: ``default_dtype`` (``"float64"``), others to ``mace_mp`` /
          ``MACECalculator``.
        * m3gnet: also ``model_name`` (= ``model``), others to matgl's ``PESCalculator``.
        * sevennet: others to ``SevenNetCalculator`` (e.g. ``modal``).
        * mattersim, orb, fairchem: others to their ASE calculators (fairchem:
          ``task_name``, default ``"omat"``).
        * toy / morse: ``epsilon_ev``, ``r0_angstrom``, ``rho0``, ``rcut1_r0``,
          ``rcut2_r0`` (see :data:`TOY_DEFAULTS`).

    Returns
    -------
    ase.calculators.calculator.Calculator
        A new calculator (heavy model weights are shared between calls where noted).

    Raises
    ------
    UserInputError
        Unknown name, unknown toy parameter, unknown model variant, missing model file,
        unknown device, or the engine's package is not installed.
    """
    key = normalize_potential_name(name)
    if key == "toy":
        return _toy_calculator(**kwargs)
    factory = _FACTORIES[key]
    return factory(**kwargs)


# ------------------------------------------------------------ model, device, provenance


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith("~")
        or value.lower().endswith(_MODEL_SUFFIXES)
    )


def resolve_model(engine: str, model: str | None, *, base_dir: str | Path | None = None) -> str:
    """Check ``engine.model`` for ``engine`` and return it in canonical form.

    Does not import the engine's package.

    Parameters
    ----------
    engine
        An ML engine name.
    model
        A variant name of the engine's row (case-insensitive), a model file path (relative
        paths are taken from ``base_dir``, default the working directory), or None for the
        engine's default variant.
    base_dir
        Directory relative model paths start from (the campaign file's directory).

    Returns
    -------
    str
        The canonical variant name, or the absolute path of an existing model file (or
        directory, for packages whose models are folders, e.g. matgl).

    Raises
    ------
    UserInputError
        The engine takes no model, the variant is unknown, or the file does not exist.
    """
    key = normalize_potential_name(engine)
    row = ENGINES[key]
    if model is None:
        if row.default_model is None:
            return ""
        return row.default_model
    if not row.models:
        raise UserInputError(f"engine {key!r} takes no model (got {model!r})")
    text = str(model).strip()
    by_lower = {m.lower(): m for m in row.models}
    if text.lower() in by_lower:
        return by_lower[text.lower()]
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    if path.exists():
        if not (path.is_file() or path.is_dir()):
            raise UserInputError(f"model for {key!r} is not a regular file: {path}")
        return str(path.resolve())
    if _looks_like_path(text):
        raise UserInputError(f"model file for {key!r} not found: {path}")
    raise UserInputError(
        f"unknown model {text!r} for {key!r}: expected a model file path or one of "
        f"{', '.join(row.models)}"
    )


def is_model_path(model: str | None) -> bool:
    """Whether a resolved model (:func:`resolve_model`) is a file path, not a variant."""
    return bool(model) and os.path.isabs(str(model))


def resolve_device(device: str | None) -> str:
    """``"cpu"`` or ``"cuda"`` for ``engine.device``.

    None and ``"auto"`` give cuda when torch sees a GPU, else cpu (the calculator factories
    pass ``"cpu"`` when no device is given, as before the key existed).

    Raises
    ------
    UserInputError
        A device other than auto, cpu or cuda, or cuda where torch sees no GPU (checked
        where the potential runs, not when the campaign file is read).
    """
    value = "auto" if device is None else str(device).strip().lower()
    if value not in DEVICES:
        raise UserInputError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if value == "cpu":
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    if value == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            "engine.device is cuda but torch sees no GPU on this machine "
            f"(torch {torch.__version__}); use device: auto or cpu"
        )
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_package(engine: str) -> None:
    """Raise the one-line missing-package error when ``engine``'s package is not importable
    (without importing it)."""
    key = normalize_potential_name(engine)
    row = ENGINES[key]
    if row.module and importlib.util.find_spec(row.module) is None:
        raise _missing(key, ImportError(f"No module named {row.module!r}"))


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a model file (hex), or of a model folder's files (names and contents, in
    sorted order); cached per path, size and modification time."""
    p = Path(path)
    if p.is_dir():
        digest = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            digest.update(str(f.relative_to(p)).encode())
            digest.update(file_sha256(f).encode())
        return digest.hexdigest()
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def model_identity(engine: str, model: str | None) -> str | None:
    """What a reuse key records of ``engine.model``: None when not given (keys as before
    the key existed), the variant name, or ``sha256:<hex>`` of a model file (so moving the
    file keeps the key and replacing its contents changes it)."""
    if model is None:
        return None
    resolved = resolve_model(engine, model)
    return f"sha256:{file_sha256(resolved)}" if is_model_path(resolved) else resolved


def _package_version(package: str | None) -> str | None:
    if not package:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _shipped_file(key: str, model: str) -> str | None:
    """The weights file of a packaged variant (CHGNet's and SevenNet's shipped ones)."""
    if key == "chgnet":
        spec = importlib.util.find_spec("chgnet")
        if spec is None or not spec.origin:
            return None
        folder = Path(spec.origin).parent / "pretrained" / model
        files = sorted(folder.glob("*.pth.tar")) if folder.is_dir() else []
        return str(files[0]) if files else None
    if key == "sevennet":
        return _sevennet_shipped(model)
    return None


def potential_provenance(name: str, **kwargs: Any) -> dict[str, Any]:
    """Which potential a calculator of these arguments is: the provenance of an MD run.

    Parameters
    ----------
    name
        Engine name.
    **kwargs
        The same keywords :func:`get_calculator` takes (``model``, ``device``, …).

    Returns
    -------
    dict
        ``engine`` (canonical name), ``potential`` (display name), ``package`` and
        ``package_version`` (None for built-in engines), ``model`` (variant name or file
        path, None for the toy), ``model_file`` (the weights file when known: a given path,
        or the file a packaged variant loads), ``model_sha256`` (its SHA-256, hex) and
        ``device`` (cpu or cuda; None when the engine takes none).
    """
    key = normalize_potential_name(name)
    row = ENGINES[key]
    if key == "toy":
        params = {**TOY_DEFAULTS, **{k: float(v) for k, v in kwargs.items()}}
        return {
            "engine": key,
            "potential": row.display,
            "package": "ase",
            "package_version": _package_version("ase"),
            "model": "morse(" + ", ".join(f"{k}={v:g}" for k, v in params.items()) + ")",
            "model_file": None,
            "model_sha256": None,
            "device": None,
        }
    model = kwargs.get("model", kwargs.get("model_name"))
    resolved = resolve_model(key, model)
    if is_model_path(resolved):
        model_file: str | None = resolved
    else:
        model_file = _shipped_file(key, resolved)
    device = None
    if row.device:
        device = resolve_device(kwargs.get("device", kwargs.get("use_device", "cpu")))
    return {
        "engine": key,
        "potential": row.display,
        "package": row.package,
        "package_version": _package_version(row.package),
        "model": resolved or None,
        "model_file": model_file,
        "model_sha256": file_sha256(model_file) if model_file else None,
        "device": device,
    }


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
    """Load a CHGNet model once per process (per variant name or file path, and device)."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet v0.3.0 initialized with ..."
        if is_model_path(model_name):
            try:
                model = CHGNet.from_file(model_name)
            except Exception as exc:  # noqa: BLE001 - a file that is not a CHGNet model
                raise UserInputError(
                    f"model file for 'chgnet' could not be loaded: {model_name} "
                    f"({type(exc).__name__}: {str(exc)[:200]})"
                ) from None
            return model.to(device)
        return CHGNet.load(model_name=model_name, use_device=device, verbose=False)


def _chgnet_calculator(
    model_name: str | None = None,
    use_device: str | None = None,
    *,
    model: str | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> Calculator:
    from chgnet.model.dynamics import CHGNetCalculator

    name = resolve_model("chgnet", model if model is not None else model_name)
    dev = resolve_device(device if device is not None else (use_device or "cpu"))
    loaded = _load_chgnet_model(name, dev)
    # CHGNetCalculator prints "CHGNet will run on cpu" on every construction.
    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=loaded, use_device=dev, **kwargs)


# ------------------------------------------------------- optional engines (lazy)


def _missing(engine: str, exc: ImportError) -> UserInputError:
    package, command = _MISSING_PACKAGE[engine]
    return UserInputError(f"engine {engine!r} needs the {package} package: {command} ({exc})")


def _mace_calculator(
    model: str | None = None,
    device: str | None = None,
    default_dtype: str = "float64",
    **kwargs: Any,
) -> Calculator:
    try:
        from mace.calculators import MACECalculator, mace_mp
    except ImportError as exc:
        raise _missing("mace", exc) from exc
    name = resolve_model("mace", model)
    dev = resolve_device(device or "cpu")
    if is_model_path(name):
        return MACECalculator(model_paths=name, device=dev, default_dtype=default_dtype, **kwargs)
    return mace_mp(model=name, device=dev, default_dtype=default_dtype, **kwargs)


@functools.lru_cache(maxsize=4)
def _load_matgl_model(model_name: str) -> Any:
    import matgl

    return matgl.load_model(model_name)


def _m3gnet_calculator(
    model_name: str | None = None, *, model: str | None = None, **kwargs: Any
) -> Calculator:
    try:
        from matgl.ext.ase import PESCalculator
    except ImportError as exc:
        raise _missing("m3gnet", exc) from exc
    name = resolve_model("m3gnet", model if model is not None else model_name)
    return PESCalculator(_load_matgl_model(name), **kwargs)


def _sevennet_shipped(model: str) -> str | None:
    """The checkpoint file of a SevenNet variant when it lies on disk (shipped in the wheel
    or in sevenn's own cache); None otherwise. Imports nothing of sevenn but its constants."""
    spec = importlib.util.find_spec("sevenn")
    if spec is None or not spec.origin:
        return None
    base = Path(spec.origin).parent / "pretrained_potentials"
    name = model.lower()
    folder = {
        "7net-0": "SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        "7net-0_11jul2024": "SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        "7net-0_22may2024": "SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
        "7net-l3i5": "SevenNet_l3i5/checkpoint_l3i5.pth",
        "7net-mf-ompa": "SevenNet_MF_ompa/checkpoint_sevennet_mf_ompa.pth",
        "7net-omat": "SevenNet_omat/checkpoint_sevennet_omat.pth",
        "7net-omni": "SevenNet_omni/checkpoint_sevennet_omni.pth",
    }.get(name)
    if folder is None:
        return None
    for root in (base, Path(os.path.expanduser("~/.cache/sevennet"))):
        path = root / folder
        if path.is_file():
            return str(path)
    return None


def _sevennet_calculator(
    model: str | None = None, device: str | None = None, **kwargs: Any
) -> Calculator:
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as exc:
        raise _missing("sevennet", exc) from exc
    name = resolve_model("sevennet", model)
    dev = resolve_device(device or "cpu")
    path = name if is_model_path(name) else _sevennet_shipped(name)
    if path is None:
        raise UserInputError(
            f"SevenNet model {name!r} is not on this machine (the sevenn wheel ships "
            "7net-0 and 7net-l3i5; others are downloaded): copy its checkpoint here and "
            "give engine.model its path"
        )
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No tensor product accelerator")
        try:
            return SevenNetCalculator(model=path, file_type="checkpoint", device=dev, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a file that is not a SevenNet checkpoint
            if not is_model_path(name):
                raise
            raise UserInputError(
                f"model file for 'sevennet' could not be loaded: {path} "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None


def _mattersim_calculator(
    model: str | None = None, device: str | None = None, **kwargs: Any
) -> Calculator:
    try:
        from mattersim.forcefield import MatterSimCalculator
    except ImportError as exc:
        raise _missing("mattersim", exc) from exc
    name = resolve_model("mattersim", model)
    return MatterSimCalculator(load_path=name, device=resolve_device(device or "cpu"), **kwargs)


def _orb_calculator(
    model: str | None = None, device: str | None = None, **kwargs: Any
) -> Calculator:
    try:
        from orb_models.forcefield import pretrained
        from orb_models.forcefield.calculator import ORBCalculator
    except ImportError as exc:
        raise _missing("orb", exc) from exc
    name = resolve_model("orb", model)
    dev = resolve_device(device or "cpu")
    if is_model_path(name):
        # a file of weights for the default architecture (orb-v3-conservative-inf-omat)
        net = pretrained.orb_v3_conservative_inf_omat(weights_path=name, device=dev)
    else:
        net = pretrained.ORB_PRETRAINED_MODELS[name](device=dev)
    return ORBCalculator(net, device=dev, **kwargs)


def _fairchem_calculator(
    model: str | None = None, device: str | None = None, task_name: str = "omat", **kwargs: Any
) -> Calculator:
    try:
        from fairchem.core import FAIRChemCalculator, pretrained_mlip
    except ImportError as exc:
        raise _missing("fairchem", exc) from exc
    name = resolve_model("fairchem", model)
    dev = resolve_device(device or "cpu")
    if is_model_path(name):
        unit = pretrained_mlip.load_predict_unit(name, device=dev)
    else:
        unit = pretrained_mlip.get_predict_unit(name, device=dev)
    return FAIRChemCalculator(unit, task_name=task_name, **kwargs)


#: engine name → calculator factory (every ML row of ENGINES but the toy)
_FACTORIES = {
    "chgnet": _chgnet_calculator,
    "mace": _mace_calculator,
    "m3gnet": _m3gnet_calculator,
    "sevennet": _sevennet_calculator,
    "mattersim": _mattersim_calculator,
    "orb": _orb_calculator,
    "fairchem": _fairchem_calculator,
}
assert set(_FACTORIES) | {"toy"} == set(ML_ENGINES), "every ML engine needs a factory"


# --------------------------------------------------------------------------- numerics


#: Environment variables that steer the BLAS/OpenMP libraries (kernels, threads).
_NUMERICS_ENV = ("OPENBLAS_", "GOTO", "MKL_", "OMP_", "KMP_", "BLIS_", "NPY_", "ATLAS_")


def numerical_environment() -> dict[str, Any]:
    """What decides the last bits of a run besides its inputs and code: the CPU, the
    BLAS/OpenMP libraries loaded (kernel architecture, version, threads, through
    ``threadpoolctl``), the environment variables that steer them, numpy's (and torch's,
    when loaded) version and threads.

    MD is chaotic: two runs of the same job agree bit for bit only where these agree (e.g.
    ``OPENBLAS_CORETYPE=Haswell`` in one shell and OpenBLAS's own choice, ``SkylakeX``, on
    the same AVX-512 CPU already change the last bit of a relaxed energy). Every ML MD
    output records it (``numerics``) so that two runs can be compared.
    """
    import platform
    import sys

    out: dict[str, Any] = {"cpu": _cpu_model(), "machine": platform.machine()}
    out["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(_NUMERICS_ENV)}
    out["numpy"] = np.__version__
    libraries = None
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        libraries = sorted(
            (
                {
                    "api": i.get("internal_api"),
                    "version": i.get("version"),
                    "architecture": i.get("architecture"),
                    "threads": i.get("num_threads"),
                    "file": Path(str(i.get("filepath", ""))).name,
                    "numpy": "numpy" in str(i.get("filepath", "")),
                }
                for i in threadpool_info()
            ),
            key=lambda d: d["file"],
        )
    out["libraries"] = libraries
    out["blas"] = next(
        ({k: v for k, v in d.items() if k not in ("file", "numpy")} for d in libraries or []
         if d["numpy"]),
        None,
    )  # fmt: skip
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = {"version": str(torch.__version__), "threads": int(torch.get_num_threads())}
    return out


def _cpu_model() -> str:
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
