"""VASP engine helpers: the seed-003 protocol as INCAR settings, spin detection, MD segment
planning, walltime deadlines and reading chained MD segments.

Pure functions on pymatgen objects and files (no jobflow); :mod:`ionflow.makers.vasp` turns
them into atomate2 + custodian jobs.

The protocol (seed 003, Methods)
--------------------------------
*Relaxation* (:data:`RELAX_PROTOCOL`): VASP PBE/PAW (``GGA = PE``, PBE_54 POTCARs),
``ENCUT = 520`` eV (wave functions) and ``ENAUG = 780`` eV (density), ions + cell
(``ISIF = 3``, ``IBRION = 2``), ``EDIFF = 1e-5`` eV, forces 0.01 eV/Å (``EDIFFG = -0.01``),
in the primitive cell; spin-polarised only when a magnetic ion is present.

*MD* (:data:`MD_PROTOCOL`): the supercell, Γ-point only, non-spin-polarised unless a
magnetic ion is present, NVT with a Nosé thermostat (``IBRION = 0``, ``MDALGO = 2``,
``SMASS = 0`` — VASP then picks the Nosé mass whose period is ≈ 40 time steps, 40 fs at the
protocol's 1 fs), ``POTIM`` = the time step, ``TEBEG = TEEND`` = the run temperature,
``ISYM = 0``, 70 000 steps = 10 ps equilibration + 60 ps production, split into restartable
segments (:func:`plan_md_segments`).

Settings the seed does not give are ionflow's choices, listed in :data:`RELAX_PROTOCOL` /
:data:`MD_PROTOCOL` (Gaussian smearing 0.05 eV for these insulators, ``PREC = Normal`` and
``LREAL = Auto`` for the ~200-atom MD cells, no WAVECAR/CHGCAR/LOCPOT per segment).

Overrides
---------
Every key can be overridden per campaign and per material (``vasp: {incar: {...}}`` in
``workflows.yaml``, merged into :attr:`ionflow.spec.ResolvedMaterial.vasp_incar`). Keys at
the top level apply to every VASP job; the nested mappings ``RELAX: {...}`` and
``MD: {...}`` apply to one stage only (they win over top-level keys)::

    vasp:
      incar: {ENCUT: 600, MD: {LREAL: false}, RELAX: {NSW: 200}}

A value of ``null`` removes the key. ``NSW``, ``POTIM``, ``TEBEG`` and ``TEEND`` of the MD
come from the ``md`` settings (segment length, ``time_step_fs``, ``temperatures_k``) and
cannot be overridden (:class:`~ionflow.errors.UserInputError`). Each job's task document
records the protocol values it replaced (:func:`override_record`).

Pinned runs and temperature
---------------------------
A pinned control freezes the bonded anions with selective dynamics (``F F F``; all other
atoms ``T T T``). VASP then moves only the free atoms, and the pinned run has
``3 N_free`` kinetic degrees of freedom instead of ``3 N - 3``. The Nosé thermostat keeps
the kinetic energy of the moving atoms at ``TEBEG``: when VASP counts the degrees of
freedom over the free coordinates only, the free atoms of the pinned run are at the same
temperature as those of the free run, which the free-vs-pinned comparison needs. Check
with the OSZICAR ``T=`` column of a pinned run, or recompute ``T = 2 E_kin / (n_dof k_B)``
over the free atoms (:func:`ionflow.structure.free_degrees_of_freedom`); if the mean
differs from ``TEBEG`` by the factor ``(3N - 3) / (3 N_free)``, your VASP build counts every
atom, and ``TEBEG`` of the pinned run must be scaled by that factor to compare like with
like. The frozen atoms also absorb momentum, so the centre of mass of the free atoms is not
conserved: the analysis removes drift relative to the pinned atoms (``drift_reference:
auto``). The stand-in (:mod:`ionflow.vasp_standin`) counts free degrees of freedom only.

Segments
--------
An MD run of ``E + P`` steps is split into segments of ``md.segment_steps`` steps (or a
size derived from the walltime and the cost per step, :func:`segment_steps_for_walltime`).
Each segment starts from the previous CONTCAR (positions *and* velocities). VASP's
``vasprun.xml`` holds one structure per ionic step — the configuration whose forces that
step computed, step 0 being the POSCAR — and its CONTCAR holds the configuration after the
last step, which is the next segment's step 0. Concatenating the segments' structures
therefore gives every step exactly once (the convention of pymatgen-analysis-diffusion's
``DiffusionAnalyzer.from_vaspruns``); :func:`chain_segments` checks that each segment starts
where the previous one ended and drops a frame that repeats the previous segment's last
frame, should a VASP build write one.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ionflow.errors import UserInputError

__all__ = [
    "MAGNETIC_ELEMENTS",
    "MD_DERIVED_KEYS",
    "MD_PROTOCOL",
    "PROTOCOL_NAME",
    "RELAX_PROTOCOL",
    "ChainedSegments",
    "MDSegmentPlan",
    "allocation_seconds_left",
    "chain_segments",
    "check_md_overrides",
    "count_md_steps",
    "find_output",
    "magnetic_species",
    "md_incar",
    "override_record",
    "parse_slurm_duration",
    "plan_md_segments",
    "primitive_cell",
    "production_mean",
    "read_contcar",
    "read_md_temperatures",
    "strip_host",
    "relax_incar",
    "segment_steps_for_walltime",
    "spin_settings",
    "split_incar_overrides",
]

PROTOCOL_NAME = "seed-003 (Yang et al., npj Comput. Mater. 2025) PBE/PAW AIMD"

#: Elements whose ions carry a local moment in the compounds these campaigns study (open
#: 3d/4d shells, lanthanides). Ti, Zr, Nb, Y, La, Lu, Zn, Sc are usually d0/d10/f0/f14 here
#: (e.g. Ti4+ in Li8TiS6, run non-spin-polarised in seed 003) and are not listed; force
#: spin polarisation with ``vasp: {incar: {ISPIN: 2, MAGMOM: {...}}}``.
MAGNETIC_ELEMENTS: frozenset[str] = frozenset(
    {"V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Mo", "Ru", "Rh", "W", "Re", "Os", "Ir"}
    | {"Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb"}
)
#: Initial moment (μB) of a magnetic ion (high-spin start); other atoms start at 0.
MAGNETIC_INITIAL_MOMENT = 5.0

#: Relaxation INCAR: the seed-003 numbers plus ionflow's choices (commented).
RELAX_PROTOCOL: dict[str, Any] = {
    "GGA": "PE",  # PBE (atomate2's base set is PBEsol)
    "ENCUT": 520.0,  # eV, wave functions
    "ENAUG": 780.0,  # eV, density ("cutoffs ... 520 eV and 780 eV")
    "ISIF": 3,  # ions + cell
    "IBRION": 2,
    "NSW": 99,
    "EDIFF": 1e-5,  # eV
    "EDIFFG": -0.01,  # eV/Å (forces)
    "PREC": "Accurate",
    "ISMEAR": 0,  # ionflow: Gaussian smearing for the (insulating) electrolytes
    "SIGMA": 0.05,
    "LREAL": False,
    "LWAVE": False,
    "LCHARG": False,
    "LAECHG": False,
    "LVTOT": False,
    "LELF": False,
    "LMIXTAU": None,  # meta-GGA only
}

#: MD INCAR (NSW, POTIM, TEBEG, TEEND are added per run and segment).
MD_PROTOCOL: dict[str, Any] = {
    "GGA": "PE",
    "ENCUT": 520.0,
    "EDIFF": 1e-5,
    "PREC": "Normal",  # ionflow: standard for AIMD sampling
    "ALGO": "Fast",
    "ISMEAR": 0,
    "SIGMA": 0.05,
    "IBRION": 0,  # MD
    "MDALGO": 2,  # Nosé-Hoover
    "SMASS": 0,  # Nosé mass for a ~40-step period (VASP default meaning of 0)
    "ISIF": 2,  # NVT
    "ISYM": 0,
    "NBLOCK": 1,  # XDATCAR every step (the chain is read from vasprun.xml)
    "NELMIN": 4,
    "NELM": 500,
    "LREAL": "Auto",  # ionflow: real-space projectors for ~200-atom supercells
    "LWAVE": False,
    "LCHARG": False,
    "LAECHG": False,
    "LVTOT": False,
    "LELF": False,
    "LORBIT": None,  # no PROCAR per segment
    "LMIXTAU": None,
    "EDIFFG": None,
}

#: MD keys set from the ``md`` settings; overriding them is an error.
MD_DERIVED_KEYS: dict[str, str] = {
    "NSW": "md.segment_steps (and equilibration_ps + production_ps)",
    "POTIM": "md.time_step_fs",
    "TEBEG": "md.temperatures_k",
    "TEEND": "md.temperatures_k",
}

_STAGES = ("RELAX", "MD")


# ------------------------------------------------------------------ structures & spin


def primitive_cell(structure: Any, symprec: float = 0.01) -> Any:
    """The primitive cell (pymatgen ``SpacegroupAnalyzer.find_primitive``), or the structure
    itself when symmetry finding fails or gives nothing smaller."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        prim = SpacegroupAnalyzer(structure, symprec=symprec).find_primitive()
    except Exception:  # spglib failures on odd inputs: keep the cell as given
        return structure
    if prim is None or len(prim) >= len(structure):
        return structure
    return prim


def magnetic_species(structure: Any) -> list[str]:
    """Element symbols of ``structure`` that make the run spin-polarised (sorted)."""
    symbols = {el.symbol for el in structure.composition.elements}
    return sorted(symbols & MAGNETIC_ELEMENTS)


def spin_settings(structure: Any) -> dict[str, Any]:
    """``{"ISPIN": 1, "MAGMOM": None}`` or ``{"ISPIN": 2, "MAGMOM": {element: μB}}``."""
    magnetic = magnetic_species(structure)
    if not magnetic:
        return {"ISPIN": 1, "MAGMOM": None}
    moments = {
        el.symbol: (MAGNETIC_INITIAL_MOMENT if el.symbol in magnetic else 0.0)
        for el in structure.composition.elements
    }
    return {"ISPIN": 2, "MAGMOM": moments}


# ------------------------------------------------------------------------- INCAR


def _norm_key(key: Any) -> str:
    return str(key).strip().upper()


def split_incar_overrides(
    vasp_incar: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split ``vasp.incar`` into (all jobs, relax only, MD only) override mappings.

    Raises
    ------
    UserInputError
        If ``RELAX`` or ``MD`` is not a mapping.
    """
    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {s: {} for s in _STAGES}
    for key, value in (vasp_incar or {}).items():
        k = _norm_key(key)
        if k in _STAGES:
            if not isinstance(value, Mapping):
                raise UserInputError(
                    f"vasp.incar.{k}: expected a mapping of INCAR keys for the {k.lower()} "
                    f"stage, got {value!r}"
                )
            scoped[k].update({_norm_key(kk): vv for kk, vv in value.items()})
        else:
            common[k] = value
    return common, scoped["RELAX"], scoped["MD"]


def override_record(protocol: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What the overrides changed: ``{key: {"protocol": value or None, "value": value}}``."""
    record = {}
    for key, value in overrides.items():
        before = protocol.get(key)
        if before != value:
            record[key] = {"protocol": before, "value": value}
    return dict(sorted(record.items()))


def relax_incar(
    structure: Any, vasp_incar: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """INCAR settings of the relaxation of ``structure`` (atomate2 ``user_incar_settings``).

    Returns
    -------
    settings, overrides
        The settings (``None`` values remove a key) and the record of what the campaign's
        overrides changed (:func:`override_record`).
    """
    common, relax_only, _ = split_incar_overrides(vasp_incar)
    protocol = {**RELAX_PROTOCOL, **spin_settings(structure)}
    overrides = {**common, **relax_only}
    return {**protocol, **overrides}, override_record(protocol, overrides)


def check_md_overrides(vasp_incar: Mapping[str, Any] | None) -> dict[str, Any]:
    """The overrides that apply to MD jobs (top level + ``MD``).

    Raises
    ------
    UserInputError
        If one sets a key derived from the ``md`` settings (:data:`MD_DERIVED_KEYS`).
    """
    common, _, md_only = split_incar_overrides(vasp_incar)
    overrides = {**common, **md_only}
    bad = [k for k in overrides if k in MD_DERIVED_KEYS]
    if bad:
        raise UserInputError(
            "vasp.incar: "
            + "; ".join(
                f"{k} of the MD is set by {MD_DERIVED_KEYS[k]}, not by vasp.incar" for k in bad
            )
            + " (scope relaxation-only keys with vasp.incar.RELAX)"
        )
    return overrides


def md_incar(
    structure: Any,
    temperature_k: float,
    time_step_fs: float,
    nsteps: int,
    vasp_incar: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """INCAR settings of one MD segment (see :func:`relax_incar` for the return value).

    Raises
    ------
    UserInputError
        If an override sets a key derived from the ``md`` settings (:data:`MD_DERIVED_KEYS`).
    """
    overrides = check_md_overrides(vasp_incar)
    protocol = {
        **MD_PROTOCOL,
        **spin_settings(structure),
        "POTIM": float(time_step_fs),
        "TEBEG": float(temperature_k),
        "TEEND": float(temperature_k),
        "NSW": int(nsteps),
    }
    return {**protocol, **overrides}, override_record(protocol, overrides)


# ---------------------------------------------------------------------- segments


#: Most planned segments of one VASP MD run (each is a job of the campaign's workflow).
MAX_MD_SEGMENTS = 1000


@dataclass(frozen=True)
class MDSegmentPlan:
    """How an MD run of ``total_steps`` is cut into restartable VASP runs."""

    time_step_fs: float
    equilibration_steps: int
    production_steps: int
    frame_stride_steps: int
    segments: tuple[int, ...]
    segment_steps: int | None = None

    @property
    def total_steps(self) -> int:
        """Equilibration + production steps."""
        return self.equilibration_steps + self.production_steps

    @property
    def n_production_frames(self) -> int:
        """Production frames kept (steps E, E + stride, ... < E + P)."""
        return -(-self.production_steps // self.frame_stride_steps)


def segment_steps_for_walltime(
    walltime_s: float, seconds_per_step: float, buffer_s: float = 300.0, safety: float = 0.9
) -> int:
    """Steps that fit in one allocation: ``safety × (walltime − buffer) / seconds_per_step``.

    Raises
    ------
    UserInputError
        If not even one step fits.
    """
    if walltime_s <= 0 or seconds_per_step <= 0:
        raise UserInputError(
            f"walltime ({walltime_s} s) and seconds per step ({seconds_per_step}) must be > 0"
        )
    steps = int(math.floor(safety * (walltime_s - buffer_s) / seconds_per_step))
    if steps < 1:
        raise UserInputError(
            f"a walltime of {walltime_s:g} s with a {buffer_s:g} s buffer leaves no time for "
            f"one MD step of {seconds_per_step:g} s"
        )
    return steps


def plan_md_segments(
    time_step_fs: float,
    equilibration_ps: float,
    production_ps: float,
    frame_stride_steps: int = 1,
    segment_steps: int | None = None,
    walltime_s: float | None = None,
    seconds_per_step: float | None = None,
) -> MDSegmentPlan:
    """Cut ``equilibration_ps + production_ps`` into segments.

    The segment size is ``segment_steps`` when given, else derived from ``walltime_s`` and
    ``seconds_per_step`` when both are given, else the whole run is one segment (a walltime
    stop then still splits it at run time: the remaining steps become a new segment).
    """
    eq = int(round(equilibration_ps * 1000.0 / time_step_fs))
    prod = int(round(production_ps * 1000.0 / time_step_fs))
    total = eq + prod
    if total < 1:
        raise UserInputError("the MD run has no steps (equilibration_ps + production_ps = 0)")
    size = segment_steps
    if size is None and walltime_s and seconds_per_step:
        size = segment_steps_for_walltime(walltime_s, seconds_per_step)
    if size is not None and size < 1:
        raise UserInputError(f"md.segment_steps must be ≥ 1, got {size}")
    step = size or total
    n_segments = -(-total // step)
    if n_segments > MAX_MD_SEGMENTS:
        source = (
            f"md.segment_steps: {size}"
            if segment_steps is not None
            else f"a walltime of {walltime_s:g} s at {seconds_per_step:g} s per step "
            f"(IONFLOW_VASP_WALLTIME_S, IONFLOW_VASP_SECONDS_PER_STEP) gives {size}"
        )
        raise UserInputError(
            f"{source} steps per segment cut the {total}-step MD run into {n_segments} "
            f"segments, one job each; at most {MAX_MD_SEGMENTS}: use longer segments"
        )
    segments = tuple(min(step, total - start) for start in range(0, total, step))
    return MDSegmentPlan(
        time_step_fs=float(time_step_fs),
        equilibration_steps=eq,
        production_steps=prod,
        frame_stride_steps=max(1, int(frame_stride_steps)),
        segments=segments,
        segment_steps=size,
    )


def segment_sizing_from_env() -> tuple[float | None, float | None]:
    """``(IONFLOW_VASP_WALLTIME_S, IONFLOW_VASP_SECONDS_PER_STEP)`` as numbers (None where
    unset or not a number): when both are set and ``md.segment_steps`` is not, they size the
    VASP MD segments to fit one allocation (:func:`plan_md_segments`)."""

    def env_float(key: str) -> float | None:
        value = os.environ.get(key)
        try:
            return float(value) if value else None
        except ValueError:
            return None

    return env_float("IONFLOW_VASP_WALLTIME_S"), env_float("IONFLOW_VASP_SECONDS_PER_STEP")


# ---------------------------------------------------------------------- walltime


def parse_slurm_duration(text: str) -> float | None:
    """Seconds in a Slurm duration (``squeue %L``/``%l``): ``[D-]HH:MM:SS``, ``MM:SS``, ``M``.

    ``UNLIMITED``, ``NOT_SET``, ``INVALID`` and unparsable text give None
    (:func:`ionflow.slurm_time.slurm_seconds`, unknown instead of an error).
    """
    from ionflow.slurm_time import slurm_seconds

    try:
        seconds = slurm_seconds(text or "")
    except ValueError:
        return None
    return None if seconds is None else float(seconds)


def _squeue_time_left(job_id: str, run: Callable[..., Any] = subprocess.run) -> float | None:
    try:
        out = run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%L"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if getattr(out, "returncode", 1) != 0:
        return None
    return parse_slurm_duration((out.stdout or "").strip().splitlines()[0] if out.stdout else "")


def allocation_seconds_left(
    env: Mapping[str, str] | None = None,
    now: float | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> float | None:
    """Seconds until the batch allocation ends, or None when unknown.

    Sources, first found wins: ``IONFLOW_WALLTIME_END`` (UNIX time the job must be done
    by; set it in a job script, e.g. from ``date -d "+23 hours 50 minutes" +%s``),
    ``SLURM_JOB_END_TIME`` (UNIX time, newer Slurm), then ``squeue -j $SLURM_JOB_ID -o %L``
    (time left of the running Slurm job).
    """
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    for key in ("IONFLOW_WALLTIME_END", "SLURM_JOB_END_TIME"):
        value = env.get(key)
        if value:
            try:
                return float(value) - now
            except ValueError:
                continue
    job_id = env.get("SLURM_JOB_ID")
    if job_id:
        return _squeue_time_left(job_id, run=run)
    return None


# ------------------------------------------------------------------- reading segments


def find_output(directory: str | Path, name: str) -> Path | None:
    """``directory/name`` or its gzipped copy (atomate2 gzips outputs), else None."""
    directory = Path(directory)
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def strip_host(path: str | Path) -> Path:
    """A local path from atomate2's ``hostname:/path`` ``dir_name``."""
    text = str(path)
    if ":" in text and not text.startswith("/"):
        text = text.split(":", 1)[1]
    return Path(text)


def count_md_steps(directory: str | Path) -> int:
    """Ionic steps completed by the VASP run in ``directory`` (0 if it has no vasprun).

    Counts the ``<calculation>`` structures of ``vasprun.xml`` (a file cut short by a kill
    keeps its complete steps).
    """
    import warnings

    from ionflow.analysis.readers import open_trajectory

    path = find_output(strip_host(directory), "vasprun.xml")
    if path is None:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return int(open_trajectory(str(path), format="vasprun").info.n_frames)
        except UserInputError:
            return 0


_CORES_RE = re.compile(r"running on\s+(\d+)\s+total cores")
_ELAPSED_RE = re.compile(r"Elapsed time \(sec\):\s*([0-9.]+)")


def segment_compute(directory: str | Path) -> tuple[float | None, int | None]:
    """(wall seconds, cores) of the VASP run in ``directory``: ``Elapsed time (sec)`` of its
    OUTCAR and ``running on N total cores`` (OUTCAR, else vasp.out); None where not found
    (a run killed before VASP wrote its timing)."""
    import gzip

    def text(name: str) -> str:
        path = find_output(strip_host(directory), name)
        if path is None:
            return ""
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    outcar = text("OUTCAR")
    elapsed = _ELAPSED_RE.findall(outcar)
    cores = _CORES_RE.search(outcar) or _CORES_RE.search(text("vasp.out"))
    return (float(elapsed[-1]) if elapsed else None, int(cores.group(1)) if cores else None)


def read_contcar(directory: str | Path) -> Any | None:
    """The CONTCAR of ``directory`` (gzipped or not) as a Structure with its velocities and
    selective dynamics as site properties, or None."""
    from pymatgen.io.vasp import Poscar

    path = find_output(strip_host(directory), "CONTCAR")
    if path is None:
        return None
    try:
        return Poscar.from_file(path, check_for_potcar=False).structure
    except Exception:
        return None


def _frac_diff(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    d -= np.round(d)
    return float(np.abs(d).max()) if d.size else 0.0


@dataclass
class ChainedSegments:
    """Production frames of a chained MD run (see :func:`chain_segments`)."""

    positions: np.ndarray  # (frames, atoms, 3) float32, Cartesian Å
    lattice: np.ndarray  # (3, 3) Å
    species: list[str]
    fixed_atoms: np.ndarray | None
    frame_interval_fs: float
    temperature_k: float | None
    steps_per_segment: list[int]
    steps_done: int
    duplicates_dropped: int
    production_start_step: int
    frame_steps: np.ndarray = field(repr=False)  # global step of every kept frame


def chain_segments(
    directories: Sequence[str | Path],
    equilibration_steps: int,
    frame_stride_steps: int = 1,
    time_step_fs: float | None = None,
    total_steps: int | None = None,
    join_tolerance_frac: float = 1e-5,
) -> ChainedSegments:
    """Concatenate the MD segments in ``directories`` and keep the production frames.

    Global step ``g`` counts ionic steps over all segments (step 0 = the first POSCAR). A
    frame is kept when ``g ≥ equilibration_steps``, ``(g − equilibration_steps)`` is a
    multiple of ``frame_stride_steps`` and ``g < total_steps`` (when given) — so the stride
    is continuous across segment joins whatever their lengths.

    Raises
    ------
    UserInputError
        A segment has no vasprun.xml, species differ between segments, or a segment does
        not start where the previous one ended (its first frame differs from the previous
        CONTCAR and from the previous last frame).
    """
    import warnings

    from ionflow.analysis.readers import open_trajectory

    stride = max(1, int(frame_stride_steps))
    kept: list[np.ndarray] = []
    kept_steps: list[int] = []
    species: list[str] | None = None
    fixed = None
    lattice = None
    interval = None
    temperature = None
    steps_per_segment: list[int] = []
    duplicates = 0
    g = 0  # global step of the next new frame
    prev_last: np.ndarray | None = None  # fractional coords of the previous segment's last frame
    prev_final: np.ndarray | None = None  # ... and of its CONTCAR
    for index, raw in enumerate(directories):
        directory = strip_host(raw)
        path = find_output(directory, "vasprun.xml")
        if path is None:
            raise UserInputError(f"MD segment {index + 1}: no vasprun.xml in {directory}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = open_trajectory(str(path), format="vasprun")
        info = src.info
        if species is None:
            species = list(info.species)
            fixed = info.fixed_atoms
            lattice = np.asarray(info.lattice, float)
            interval = info.frame_interval_fs
            temperature = info.temperature_k
        elif list(info.species) != species:
            raise UserInputError(
                f"MD segment {index + 1} ({directory}) has different atoms from segment 1"
            )
        inv = np.linalg.inv(np.asarray(info.lattice, float))
        n_new = 0
        first = True
        for pos, _lat in src.iter_chunks(chunk_frames=1024):
            for frame in pos:
                frac = frame @ inv
                if first and prev_last is not None:
                    first = False
                    if _frac_diff(frac, prev_last) < join_tolerance_frac:
                        duplicates += 1  # the previous segment's last frame, written twice
                        continue
                    if prev_final is not None and _frac_diff(frac, prev_final) > 1e-3:
                        raise UserInputError(
                            f"MD segment {index + 1} ({directory}) does not start from the "
                            "CONTCAR of the previous segment: the chain is broken"
                        )
                first = False
                if (
                    g >= equilibration_steps
                    and (g - equilibration_steps) % stride == 0
                    and (total_steps is None or g < total_steps)
                ):
                    kept.append(frame.astype(np.float32))
                    kept_steps.append(g)
                g += 1
                n_new += 1
                prev_last = frac
        steps_per_segment.append(n_new)
        contcar = read_contcar(directory)
        prev_final = None if contcar is None else np.asarray(contcar.frac_coords, float)
    assert species is not None and lattice is not None
    dt = time_step_fs if time_step_fs is not None else interval
    positions = (np.stack(kept) if kept else np.empty((0, len(species), 3), np.float32)).astype(
        np.float32
    )
    return ChainedSegments(
        positions=positions,
        lattice=lattice,
        species=species,
        fixed_atoms=fixed,
        frame_interval_fs=float(dt or 0.0) * stride,
        temperature_k=temperature,
        steps_per_segment=steps_per_segment,
        steps_done=g,
        duplicates_dropped=duplicates,
        production_start_step=equilibration_steps,
        frame_steps=np.asarray(kept_steps, int),
    )


_T_PATTERN = re.compile(r"^\s*\d+\s+T=\s*([-+\d.Ee]+)")


def read_md_temperatures(directory: str | Path) -> list[float]:
    """Instantaneous temperatures (K) of every ionic step in the OSZICAR of ``directory``."""
    import gzip

    path = find_output(strip_host(directory), "OSZICAR")
    if path is None:
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    temps = []
    with opener(path, "rt", errors="replace") as fh:
        for line in fh:
            m = _T_PATTERN.match(line)
            if m:
                try:
                    temps.append(float(m.group(1)))
                except ValueError:
                    continue
    return temps


def production_mean(
    temperatures: Sequence[Sequence[float]], equilibration_steps: int
) -> float | None:
    """Mean of the per-step temperatures of chained segments after ``equilibration_steps``."""
    flat = [t for seg in temperatures for t in seg][equilibration_steps:]
    return float(np.mean(flat)) if flat else None
