"""One streamed pass over a trajectory feeding several analyses.

The model is MDAnalysis' ``AnalysisBase`` (cheap construction, ``prepare`` /
per-frame work / ``conclude``), improved where our users need it:

* the unit of work is a **chunk of frames**, not one frame (vectorised numpy);
* **unwrapping and drift removal are done once**, by the driver, for every analysis:
  :meth:`FrameChunk.displacements` gives drift-corrected unwrapped displacements of any
  atoms (computed only for the atoms asked for);
* each analysis has a **name in a registry** and a **typed result** (a pydantic model
  with a ``schema_version``), so jobs, summaries and reports find results by kind;
* progress is one callback for the whole pass, honouring ``quiet``.

Adding an analysis is one module with one class::

    @register
    class MyAnalysis(StreamedAnalysis):
        name = "my-analysis"
        result_model = MyResult          # pydantic BaseModel

        def prepare(self, ctx): ...      # allocate; ctx: atoms, species, Δt, T
        def accumulate(self, chunk): ... # chunk.positions / .lattices / .displacements(idx)
        def conclude(self) -> MyResult: ...

and a line importing that module in :mod:`ionflow.analysis` (the registration).

An analysis that wants velocities sets ``needs_velocities = True``: when the file stores
them (``ctx.has_velocities``) the driver reads them in the same pass and every chunk
carries ``chunk.velocities`` (Å/fs, aligned with ``positions``, leading frames skipped the
same way) and ``chunk.velocity_drift`` (the drift reference's velocity, to subtract);
otherwise ``chunk.velocities`` is None and the analysis derives what it needs from the
displacements.
Nothing here imports jobflow, FireWorks or a database.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from ionflow.errors import InsufficientDataError, UserInputError
from ionflow.rules import check_temperature_k

#: name → analysis class (see :func:`register`).
ANALYSES: dict[str, type[StreamedAnalysis]] = {}


def register(cls: type[StreamedAnalysis]) -> type[StreamedAnalysis]:
    """Class decorator: make an analysis available by its ``name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in ANALYSES and ANALYSES[cls.name] is not cls:
        raise TypeError(f"analysis name {cls.name!r} is taken by {ANALYSES[cls.name].__name__}")
    ANALYSES[cls.name] = cls
    return cls


def get_analysis(name: str) -> type[StreamedAnalysis]:
    """The registered analysis class of ``name`` (a one-line error naming the choices)."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise UserInputError(
            f"unknown analysis {name!r}; available: {', '.join(sorted(ANALYSES))}"
        ) from None


@dataclass(frozen=True)
class TrajectoryContext:
    """What every analysis knows before the first frame."""

    source: str  # label of the trajectory (file name(s) or run)
    species: tuple[str, ...]  # per atom
    n_frames: int  # frames that will be streamed (after skipping)
    frame_interval_fs: float
    temperature_k: float | None
    mobile_species: str
    mobile_indices: np.ndarray
    reference_indices: np.ndarray  # drift reference
    reference_label: str
    fixed_atoms: np.ndarray | None  # (n_atoms,) bool or None
    metadata: dict[str, Any]
    has_velocities: bool = False  # chunks carry stored velocities (an analysis asked)

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    def indices_of(self, element: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.species) == element)


@dataclass
class FrameChunk:
    """A chunk of consecutive frames, with unwrapped displacements on demand."""

    start: int  # index of the chunk's first frame in the analysed trajectory
    positions: np.ndarray  # (k, n_atoms, 3) Cartesian Å as read (wrapped)
    lattices: np.ndarray  # (3, 3) for a fixed cell or (k, 3, 3)
    volumes_a3: np.ndarray  # (k,)
    steps: np.ndarray  # (k, n_atoms, 3) minimum-image step from the previous frame, Å
    offsets: np.ndarray  # (n_atoms, 3) unwrapped displacement at the frame before the chunk
    drift: np.ndarray  # (k, 3) displacement of the drift reference since frame 0, Å
    velocities: np.ndarray | None = None  # (k, n_atoms, 3) stored velocities, Å/fs
    velocity_drift: np.ndarray | None = None  # (k, 3) the drift reference's velocity, Å/fs

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    def displacements(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(k, len(indices), 3) unwrapped displacement since frame 0, reference drift removed."""
        idx = np.asarray(indices, dtype=int)
        out = np.cumsum(self.steps[:, idx], axis=0)
        out += self.offsets[idx][None]
        out -= self.drift[:, None, :]
        return out


class Unwrapper:
    """Turn chunks of wrapped frames into minimum-image steps and a reference drift.

    Unwrapping is by the minimum image of the *fractional* step between consecutive
    frames (per-frame cells — NPT — work); the drift is the weighted mean step of the
    reference atoms, accumulated. Also samples, at the end of every chunk, the RMS
    displacement of the reference atoms relative to their drift (a melting diagnostic).
    """

    def __init__(
        self,
        n_atoms: int,
        reference_indices: Sequence[int],
        reference_weights: Sequence[float] | None = None,
    ) -> None:
        self.n_atoms = int(n_atoms)
        self.reference_indices = np.asarray(reference_indices, dtype=int)
        w = (
            np.ones(len(self.reference_indices))
            if reference_weights is None
            else np.asarray(reference_weights, dtype=np.float64)
        )
        self._ref_w_full = np.zeros(self.n_atoms)
        if w.size:
            self._ref_w_full[self.reference_indices] = w / w.sum()
        self._has_ref = bool(w.size)
        self._all_last = np.zeros((self.n_atoms, 3))
        self._drift_last = np.zeros(3)
        self._prev_frac: np.ndarray | None = None
        self.n_frames = 0
        self.volume_sum = 0.0
        self.first_volume = float("nan")
        self.max_reference_ms = 0.0

    def chunk(
        self, positions: np.ndarray, lattices: np.ndarray, velocities: np.ndarray | None = None
    ) -> FrameChunk:
        pos = np.asarray(positions, dtype=np.float64)
        k, n_atoms = pos.shape[0], pos.shape[1]
        if n_atoms != self.n_atoms:
            raise UserInputError(f"frame with {n_atoms} atoms, expected {self.n_atoms}")
        lat = np.asarray(lattices, dtype=np.float64)
        if lat.ndim == 3 and np.all(lat == lat[0]):
            lat = lat[0]
        if lat.ndim == 2:  # constant cell: plain BLAS products
            inv = np.linalg.inv(lat)
            frac = (pos.reshape(-1, 3) @ inv).reshape(k, n_atoms, 3)
            vols = np.full(k, abs(np.linalg.det(lat)))
        else:  # per-frame cell (NPT)
            frac = np.einsum("fai,fij->faj", pos, np.linalg.inv(lat))
            vols = np.abs(np.linalg.det(lat))
        if self._prev_frac is None:
            self.first_volume = float(vols[0])
            prev = frac[:1]
        else:
            prev = self._prev_frac[None]
        dfrac = np.diff(np.concatenate([prev, frac], axis=0), axis=0)
        dfrac -= np.round(dfrac)
        if lat.ndim == 2:
            steps = (dfrac.reshape(-1, 3) @ lat).reshape(k, n_atoms, 3)
        else:
            steps = np.einsum("fai,fij->faj", dfrac, lat)
        # drift = cumulative weighted mean step of the reference atoms (no per-atom cumsum)
        if self._has_ref:
            drift = np.cumsum(np.tensordot(steps, self._ref_w_full, axes=([1], [0])), axis=0)
        else:
            drift = np.zeros((k, 3))
        drift += self._drift_last[None]
        out = FrameChunk(
            start=self.n_frames,
            positions=pos,
            lattices=lat,
            volumes_a3=vols,
            steps=steps,
            offsets=self._all_last.copy(),
            drift=drift,
        )
        if velocities is not None:
            out.velocities = np.asarray(velocities, dtype=np.float64)
            out.velocity_drift = (
                np.tensordot(out.velocities, self._ref_w_full, axes=([1], [0]))
                if self._has_ref
                else np.zeros((k, 3))
            )
        self._all_last += steps.sum(axis=0)
        self._drift_last = drift[-1]
        if self.reference_indices.size:  # framework diagnostic, sampled at chunk ends
            ref = self._all_last[self.reference_indices] - drift[-1]
            self.max_reference_ms = max(
                self.max_reference_ms, float(np.mean(np.sum(ref**2, axis=1)))
            )
        self.n_frames += k
        self._prev_frac = frac[-1]
        self.volume_sum += float(vols.sum())
        return out

    @property
    def mean_volume_a3(self) -> float:
        return self.volume_sum / max(self.n_frames, 1)

    @property
    def max_reference_rms_a(self) -> float:
        return float(np.sqrt(self.max_reference_ms))


class StreamedAnalysis(ABC):
    """Base of every streamed analysis (see the module docstring)."""

    #: registry name (``ionflow analyze --analysis NAME``, stored result kind)
    name: ClassVar[str] = ""
    #: pydantic model :meth:`conclude` returns
    result_model: ClassVar[type[BaseModel]]
    #: version of the stored result schema of this kind
    schema_version: ClassVar[str] = "1"
    #: read stored velocities when the file has them (``FrameChunk.velocities``)
    needs_velocities: ClassVar[bool] = False

    def prepare(self, ctx: TrajectoryContext, unwrapper: Unwrapper) -> None:  # noqa: B027
        """Allocate before the first chunk (default: keep the context)."""
        self.ctx = ctx

    @classmethod
    def describe(cls, result: BaseModel) -> str | None:
        """One line for reports (None: nothing to say)."""
        return None

    @abstractmethod
    def accumulate(self, chunk: FrameChunk) -> None:
        """Consume a chunk of frames."""

    @abstractmethod
    def conclude(self) -> BaseModel:
        """Finish and return the typed result."""


Progress = Callable[[str, int, int], None]


def run_stream(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    analyses: Sequence[StreamedAnalysis],
    ctx: TrajectoryContext,
    reference_weights: Sequence[float] | None,
    *,
    total_frames: int,
    skip_frames: int = 0,
    progress: Progress | None = None,
) -> dict[str, BaseModel]:
    """Drive ``analyses`` over ``chunks`` (positions, lattices[, velocities]) in one pass.

    ``total_frames`` counts the frames ``chunks`` yields (for progress), of which the first
    ``skip_frames`` are dropped. Returns name → result, in the order given.
    """
    if not analyses:
        raise UserInputError("no analysis to run")
    names = [a.name for a in analyses]
    if len(set(names)) != len(names):
        raise UserInputError(f"each analysis can run once per pass, got {names}")
    unwrapper = Unwrapper(ctx.n_atoms, ctx.reference_indices, reference_weights)
    for a in analyses:
        a.prepare(ctx, unwrapper)
    done, to_skip = 0, skip_frames
    for positions, lattices, *rest in chunks:
        velocities = rest[0] if rest else None
        k = positions.shape[0]
        done += k
        if to_skip:
            drop = min(to_skip, k)
            positions = positions[drop:]
            lattices = lattices[drop:] if np.ndim(lattices) == 3 else lattices
            velocities = None if velocities is None else velocities[drop:]
            to_skip -= drop
        if positions.shape[0]:
            chunk = unwrapper.chunk(positions, lattices, velocities)
            for a in analyses:
                a.accumulate(chunk)
        if progress is not None:
            progress("read", done, total_frames)
    if unwrapper.n_frames < 2:
        raise InsufficientDataError(
            f"{ctx.source}: {unwrapper.n_frames} frame(s) after skipping {skip_frames} — an "
            "analysis needs a trajectory, not a single structure"
        )
    return {a.name: a.conclude() for a in analyses}


DriftReference = str | Sequence[int]


def _atomic_masses(species: Sequence[str]) -> np.ndarray:
    from ase.data import atomic_masses, atomic_numbers

    return np.array([atomic_masses[atomic_numbers[s]] for s in species])


def select_atoms(
    species_per_atom: Sequence[str],
    mobile_species: str,
    drift_reference: DriftReference,
    fixed_atoms: np.ndarray | None = None,
    *,
    mass_weighted: bool = True,
    source: str = "trajectory",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mobile indices, drift-reference indices + weights, and a label for the reference.

    ``drift_reference``: ``"framework"`` (every non-mobile atom; the default),
    ``"fixed"`` (atoms the file marks as fixed — pinned runs), ``"auto"`` (fixed
    atoms when the file has some, else the framework), ``"none"``, or explicit
    atom indices.
    """
    species_arr = np.asarray(species_per_atom)
    mobile = np.flatnonzero(species_arr == mobile_species)
    if mobile.size == 0:
        present = sorted(set(species_arr.tolist()))
        raise UserInputError(
            f"{source}: no {mobile_species} atoms (species present: {', '.join(present)})"
        )
    n = len(species_arr)
    if isinstance(drift_reference, str):
        mode = drift_reference.lower()
        has_fixed = fixed_atoms is not None and bool(np.any(fixed_atoms))
        if mode == "auto":
            mode = "fixed" if has_fixed else "framework"
        if mode == "framework":
            ref = np.flatnonzero(species_arr != mobile_species)
            label = "framework (all non-mobile atoms)"
        elif mode == "fixed":
            if not has_fixed:
                raise UserInputError(f"{source}: drift reference 'fixed' but no atom is fixed")
            ref = np.flatnonzero(fixed_atoms)
            label = "fixed (pinned) atoms"
        elif mode == "none":
            ref = np.array([], dtype=int)
            label = "none"
        else:
            raise UserInputError(
                f"drift reference must be framework, fixed, auto, none or atom indices; "
                f"got {drift_reference!r}"
            )
    else:
        ref = np.asarray(list(drift_reference), dtype=int)
        if ref.size and (ref.min() < 0 or ref.max() >= n):
            raise UserInputError(f"{source}: drift reference indices outside 0…{n - 1}")
        label = f"{ref.size} given atoms"
    if ref.size == 0 and label != "none":
        warnings.warn(f"{source}: no framework atoms; drift not removed", stacklevel=2)
        label = "none (no framework atoms)"
    weights = (
        _atomic_masses(species_arr[ref]) if (mass_weighted and ref.size) else np.ones(ref.size)
    )
    return mobile, ref, weights, label


def _context(
    species_per_atom: Sequence[str],
    *,
    species: str,
    drift_reference: DriftReference,
    fixed_atoms: np.ndarray | None,
    mass_weighted: bool,
    source: str,
    n_frames: int,
    frame_interval_fs: float,
    temperature_k: float | None,
    metadata: dict | None = None,
    has_velocities: bool = False,
) -> tuple[TrajectoryContext, np.ndarray]:
    mobile, ref, weights, label = select_atoms(
        species_per_atom,
        species,
        drift_reference,
        fixed_atoms,
        mass_weighted=mass_weighted,
        source=source,
    )
    ctx = TrajectoryContext(
        source=source,
        species=tuple(str(x) for x in species_per_atom),
        n_frames=n_frames,
        frame_interval_fs=float(frame_interval_fs),
        temperature_k=None if temperature_k is None else float(temperature_k),
        mobile_species=species,
        mobile_indices=mobile,
        reference_indices=ref,
        reference_label=label,
        fixed_atoms=fixed_atoms,
        metadata=dict(metadata or {}),
        has_velocities=has_velocities,
    )
    return ctx, weights


def analyze_trajectory(
    path: str | Path | Sequence[str | Path],
    analyses: Sequence[StreamedAnalysis],
    *,
    species: str = "Li",
    temperature_k: float | None = None,
    frame_interval_fs: float | None = None,
    drift_reference: DriftReference = "auto",
    mass_weighted: bool = True,
    skip_frames: int = 0,
    chunk_frames: int = 4096,
    structure: str | Path | None = None,
    format: str | None = None,
    progress: Progress | None = None,
    require_temperature: bool = False,
) -> dict[str, BaseModel]:
    """Run ``analyses`` over a trajectory file (or consecutive segment files) in one pass.

    ``temperature_k`` / ``frame_interval_fs`` override what the file says; ``skip_frames``
    leading frames (equilibration) are dropped; ``drift_reference`` as in
    :func:`select_atoms`. Stored velocities are read only when the file has them and an
    analysis ``needs_velocities``.
    """
    from ionflow.analysis.readers import open_trajectory

    kwargs: dict[str, Any] = {"format": format}
    if structure is not None:
        kwargs["structure"] = structure
    src = open_trajectory(path, **kwargs)
    info = src.info
    label = info.path
    if temperature_k is None:
        temperature_k = info.temperature_k
    if temperature_k is None and require_temperature:
        raise UserInputError(f"{label}: the file does not give the temperature; pass it")
    if temperature_k is not None:
        check_temperature_k(temperature_k)
    if frame_interval_fs is None:
        frame_interval_fs = info.frame_interval_fs
    if frame_interval_fs is None:
        raise UserInputError(f"{label}: the file does not give the time step; pass it")
    if not frame_interval_fs > 0:
        raise UserInputError(f"time step must be > 0 fs, got {frame_interval_fs}")
    if info.n_frames - skip_frames < 2:
        raise InsufficientDataError(
            f"{label}: {info.n_frames} frame(s) (after skipping {skip_frames}) — an analysis "
            "needs a trajectory, not a single structure"
        )
    velocities = info.has_velocities and any(a.needs_velocities for a in analyses)
    ctx, weights = _context(
        info.species,
        species=species,
        drift_reference=drift_reference,
        fixed_atoms=info.fixed_atoms,
        mass_weighted=mass_weighted,
        source=label,
        n_frames=info.n_frames - skip_frames,
        frame_interval_fs=frame_interval_fs,
        temperature_k=temperature_k,
        metadata=info.metadata,
        has_velocities=velocities,
    )
    return run_stream(
        src.iter_chunks(chunk_frames=chunk_frames, velocities=velocities),
        analyses,
        ctx,
        weights,
        total_frames=info.n_frames,
        skip_frames=skip_frames,
        progress=progress,
    )


def analyze_in_memory(
    positions: np.ndarray,
    lattice: np.ndarray,
    species_per_atom: Sequence[str],
    analyses: Sequence[StreamedAnalysis],
    *,
    species: str = "Li",
    temperature_k: float | None,
    frame_interval_fs: float,
    fixed_atoms: np.ndarray | None = None,
    drift_reference: DriftReference = "auto",
    mass_weighted: bool = True,
    source: str = "trajectory",
    chunk_frames: int = 4096,
    velocities: np.ndarray | None = None,
) -> dict[str, BaseModel]:
    """Run ``analyses`` over in-memory positions (frames × atoms × 3, Å) and, optionally,
    velocities (the same shape, Å/fs; passed on when an analysis ``needs_velocities``)."""
    positions = np.asarray(positions)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise UserInputError(f"positions must be (frames, atoms, 3), got {positions.shape}")
    if velocities is not None:
        velocities = np.asarray(velocities)
        if velocities.shape != positions.shape:
            raise UserInputError(
                f"velocities must have the shape of positions {positions.shape}, "
                f"got {velocities.shape}"
            )
        if not any(a.needs_velocities for a in analyses):
            velocities = None
    lat = np.asarray(lattice, dtype=np.float64)
    ctx, weights = _context(
        species_per_atom,
        species=species,
        drift_reference=drift_reference,
        fixed_atoms=fixed_atoms,
        mass_weighted=mass_weighted,
        source=source,
        n_frames=positions.shape[0],
        frame_interval_fs=frame_interval_fs,
        temperature_k=temperature_k,
        has_velocities=velocities is not None,
    )
    chunks = (
        (positions[s : s + chunk_frames], lat if lat.ndim == 2 else lat[s : s + chunk_frames])
        + (() if velocities is None else (velocities[s : s + chunk_frames],))
        for s in range(0, positions.shape[0], chunk_frames)
    )
    return run_stream(chunks, analyses, ctx, weights, total_frames=positions.shape[0])
