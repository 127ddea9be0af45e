"""Streaming trajectory readers for the diffusion analysis.

Every supported file is opened with :func:`open_trajectory`, which returns a
:class:`TrajectorySource`: a small object with an :class:`TrajectoryInfo` (species,
exact frame count, time between stored frames, temperature, first lattice, fixed
atoms, format-specific metadata) and :meth:`TrajectorySource.iter_chunks`, which
yields ``(positions, lattices)`` blocks of at most ``chunk_frames`` frames:

* ``positions``: ``(k, n_atoms, 3)`` float64, Cartesian Å (wrapped or unwrapped, as
  the file stores them; the analysis unwraps by minimum image);
* ``lattices``: ``(k, 3, 3)`` float64, lattice vectors as rows, Å (the same matrix
  repeated for a fixed cell).

Velocities (optional): ``info.has_velocities`` says whether the file stores them, and
``iter_chunks(..., velocities=True)`` then yields ``(positions, lattices, velocities)``
with the same chunking (``velocities``: ``(k, n_atoms, 3)`` float64, Å/fs). Read are the
``.npz`` key ``velocities`` (Å/fs), extxyz ``momenta`` or ``velocities`` per-atom arrays
and ASE ``.traj`` momenta (ASE units, converted: velocity × ``ase.units.fs``, momentum /
mass × ``ase.units.fs``); the other formats store none.

A source can be iterated any number of times; each pass re-opens the file. Memory
is bounded by the chunk size, except for the two whole-file JSON formats (pymatgen
``Trajectory`` and ``DiffusionAnalyzer``), which are parsed once when opened and kept
as compact float64 arrays.

Formats (``SUPPORTED_FORMATS``; sniffed from the file name, then the content)
-----------------------------------------------------------------------------
``extxyz``
    ``.xyz`` / ``.extxyz``, read with :func:`ase.io.iread`; the cell comes from the
    ``Lattice=`` key. ``temperature_k`` and ``frame_interval_fs`` (or its alias
    ``time_step_fs``, also meaning the time between *stored* frames) are read from
    the first frame's key=value pairs when present; ``move_mask`` → fixed atoms.
``ase-traj``
    ASE ``.traj`` (ULM) files. ``FixAtoms`` constraints → fixed atoms; the
    trajectory description may give ``frame_interval_fs`` (alias ``time_step_fs``)
    and ``temperature_k``. A corrupt *last* frame (a job killed while writing) is
    skipped with a :class:`TruncatedTrajectoryWarning`.
``xdatcar``
    VASP XDATCAR (any file whose name contains ``XDATCAR``), streamed line by line.
    Fixed cell (header once) and variable cell (header before every frame, as VASP
    writes for NPT) are both read; VASP 5+ headers with element names are required.
    XDATCAR does not record the time step, so ``frame_interval_fs`` is None (VASP
    writes every ``NBLOCK``-th step: the interval is ``POTIM × NBLOCK``).
``vasprun``
    ``vasprun.xml`` (optionally ``.gz``), streamed with
    :func:`xml.etree.ElementTree.iterparse`. One frame per ionic step (the
    ``<structure>`` of each ``<calculation>``; in machine-learned force-field runs
    VASP also writes bare top-level ``<structure>`` blocks, which are frames too).
    ``frame_interval_fs`` is ``POTIM`` for MD (``IBRION=0``), multiplied by
    ``ML_OUTBLOCK`` for ``ML_MODE=run`` with VASP ≥ 6.4.3 (the only setting that thins
    the structures in vasprun.xml). ``NBLOCK`` is deliberately *not* applied: by the
    VASP documentation (NBLOCK, ML_OUTBLOCK pages) it only thins XDATCAR, PCDAT and
    DOSCAR, while vasprun.xml records every ionic step. ``temperature_k`` is
    ``TEBEG``; selective dynamics of the initial structure → fixed atoms. A file cut
    off mid-write (job killed) keeps its complete ionic steps, with a warning.
``pymatgen-trajectory``
    JSON of :class:`pymatgen.core.trajectory.Trajectory` (``"@class": "Trajectory"``):
    fractional ``coords`` ``(M, N, 3)``, either positions or, with
    ``coords_are_displacement``, frame-to-frame displacements added cumulatively to
    ``base_positions`` (``positions[i] = base + Σ_{j≤i} coords[j]``, as
    ``Trajectory.to_positions``); ``lattice`` ``(3, 3)`` or ``(M, 3, 3)``;
    ``time_step`` (fs) → ``frame_interval_fs``; ``selective_dynamics`` site property
    → fixed atoms. Molecule trajectories (no lattice) are rejected.
``diffusion-analyzer``
    JSON of pymatgen-analysis-diffusion's ``DiffusionAnalyzer``. Its ``displacements``
    (sites × steps × 3, Cartesian Å) are, by ``DiffusionAnalyzer.from_structures``,
    the *unwrapped* displacement of each site from the starting ``structure`` (the
    first of the structures, so ``displacements[:, 0] == 0``): the minimum-image
    fractional steps between consecutive structures are summed, and the cumulative
    fractional displacement is converted to Cartesian with frame ``j``'s lattice.
    Frame ``j`` is therefore ``structure.frac_coords @ lattice_j + displacements[:,
    j]`` — for a fixed cell simply ``structure.cart_coords + displacements[:, j]`` —
    which recovers the original structures up to lattice translations. ``lattices``
    holds one matrix (fixed cell) or one per structure *plus* a leading copy of the
    first (``steps + 1`` rows; the copy is dropped). ``frame_interval_fs = time_step × step_skip``,
    ``temperature_k = temperature``; ``specie``, ``min_obs``, ``smoothed``,
    ``avg_nsteps``, ``step_skip``, ``time_step`` go to ``metadata``.
``npz``
    NumPy archive with ``positions`` ``(frames, atoms, 3)`` Cartesian Å (float32 or
    float64, C order), ``lattice`` ``(3, 3)`` or ``(frames, 3, 3)``, ``species``
    ``(atoms,)`` symbols or atomic numbers; optional ``frame_interval_fs`` (alias
    ``time_step_fs``: time between *stored* frames), ``temperature_k``,
    ``fixed_atoms`` ``(atoms,)`` bool. ``positions`` (and a per-frame ``lattice``) are
    streamed from the zip member (stored or deflated) ``chunk_frames`` at a time, so
    multi-GB files are fine.
``npy``
    A bare ``(frames, atoms, 3)`` array paired with a structure file
    (``open_trajectory(path, structure="x.cif")``, anything pymatgen reads) that
    gives the species and the (fixed) lattice. ``coords="fractional"`` or
    ``"cartesian"``, or ``"auto"`` (default): fractional when every value of the first
    frame lies in [-0.5, 1.5) and every lattice vector is longer than 3 Å, Cartesian
    when some value lies outside; otherwise ambiguous and you must say. The
    reference ``cNa3PS4_trajectories.npy`` of pymatgen-analysis-diffusion (200 frames,
    128 atoms, values in [2.5e-6, 0.99999505], frame 0 equal to ``cNa3PS4.cif`` to
    5e-7) holds *wrapped fractional* coordinates. The file gives no time step or
    temperature.

Fixed atoms are atoms that cannot move at all (``FixAtoms``, or selective dynamics
``F F F``); partially constrained atoms are not fixed.

A list of paths is read as consecutive segments of one run: same species in the same
order, the same ``frame_interval_fs`` and ``temperature_k`` where given; ``n_frames``
is the sum. Every problem with the input raises :class:`ionflow.errors.UserInputError`
with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import math
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, Literal
from xml.etree import ElementTree as ET
from zlib import error as zlib_error

import numpy as np

from ionflow.errors import UserInputError

__all__ = [
    "SUPPORTED_FORMATS",
    "TrajectoryInfo",
    "TrajectorySource",
    "TruncatedTrajectoryWarning",
    "open_trajectory",
]

#: Format names accepted by :func:`open_trajectory` (``format=``) and shown in CLI help.
SUPPORTED_FORMATS: tuple[str, ...] = (
    "extxyz",
    "ase-traj",
    "xdatcar",
    "vasprun",
    "pymatgen-trajectory",
    "diffusion-analyzer",
    "npz",
    "npy",
)

_FORMAT_ALIASES: dict[str, str] = {
    "extxyz": "extxyz",
    "xyz": "extxyz",
    "ase-traj": "ase-traj",
    "traj": "ase-traj",
    "ase": "ase-traj",
    "xdatcar": "xdatcar",
    "vasprun": "vasprun",
    "vasprun.xml": "vasprun",
    "xml": "vasprun",
    "pymatgen-trajectory": "pymatgen-trajectory",
    "trajectory": "pymatgen-trajectory",
    "pmg-trajectory": "pymatgen-trajectory",
    "diffusion-analyzer": "diffusion-analyzer",
    "diffusionanalyzer": "diffusion-analyzer",
    "npz": "npz",
    "npy": "npy",
    "json": "json",  # internal: dispatch on "@class"
}

CoordsMode = Literal["auto", "fractional", "cartesian"]

PathLike = str | Path


class TruncatedTrajectoryWarning(UserWarning):
    """An incomplete last frame (job killed mid-write) was skipped."""


@dataclass(eq=False)
class TrajectoryInfo:
    """What a trajectory file says about itself.

    Attributes
    ----------
    path
        The file (segments joined by ``", "``).
    format
        One of :data:`SUPPORTED_FORMATS` (``"+"``-joined if segments differ).
    species
        Element symbol of every atom, in file order.
    n_frames
        Exact number of frames :meth:`TrajectorySource.iter_chunks` yields in total.
    frame_interval_fs
        Time between *stored* frames (MD time step × stride), fs; None if the file
        does not say.
    temperature_k
        Thermostat temperature, K; None if the file does not say.
    lattice
        ``(3, 3)`` lattice (rows) of the first frame, Å.
    constant_lattice
        True when every frame has the same lattice.
    fixed_atoms
        ``(n_atoms,)`` bool, atoms that cannot move at all; None when the format
        does not carry constraints.
    metadata
        Format-specific extras (e.g. ``min_obs`` of a DiffusionAnalyzer, VASP tags).
    has_velocities
        The file stores every frame's velocities (``iter_chunks(velocities=True)``).
    """

    path: str
    format: str
    species: list[str]
    n_frames: int
    frame_interval_fs: float | None
    temperature_k: float | None
    lattice: np.ndarray
    constant_lattice: bool
    fixed_atoms: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    has_velocities: bool = False

    @property
    def n_atoms(self) -> int:
        """Number of atoms per frame."""
        return len(self.species)


class TrajectorySource:
    """A trajectory that can be streamed in chunks of frames (any number of times).

    Subclasses set :attr:`info` and implement :meth:`_iter_blocks`, which may yield
    blocks of any size; :meth:`iter_chunks` re-blocks them to exactly
    ``chunk_frames`` (the last chunk may be shorter), checks shapes and the total.
    Sources that can set ``info.has_velocities`` also implement
    :meth:`_iter_velocity_blocks` (``(positions, lattices, velocities)`` blocks).
    """

    info: TrajectoryInfo

    def iter_chunks(
        self,
        chunk_frames: int = 4096,
        progress: Callable[[int], None] | None = None,
        *,
        velocities: bool = False,
    ) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield ``(positions, lattices)`` chunks covering every frame once, in order.

        Parameters
        ----------
        chunk_frames
            Frames per chunk (the last chunk may be shorter).
        progress
            Called with the number of frames of each chunk, just before it is yielded.
        velocities
            Also yield each chunk's velocities, ``(positions, lattices, velocities)``
            (only when ``info.has_velocities``; otherwise a :class:`UserInputError`).

        Yields
        ------
        positions : np.ndarray
            ``(k, n_atoms, 3)`` float64 Cartesian Å.
        lattices : np.ndarray
            ``(k, 3, 3)`` float64 lattice rows, Å.
        velocities : np.ndarray
            With ``velocities=True``: ``(k, n_atoms, 3)`` float64, Å/fs.
        """
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int | np.integer):
            raise UserInputError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        chunk_frames = int(chunk_frames)
        if chunk_frames < 1:
            raise UserInputError(f"chunk_frames must be a positive integer, got {chunk_frames}")
        info = self.info
        n_total = info.n_frames
        n_atoms = info.n_atoms
        done = 0
        if velocities and not info.has_velocities:
            raise UserInputError(f"{info.path}: the file stores no velocities")
        raw = (
            self._iter_velocity_blocks(chunk_frames)
            if velocities
            else self._iter_blocks(chunk_frames)
        )
        blocks = _rechunk(raw, chunk_frames)
        with contextlib.closing(blocks):
            for block in blocks:
                positions, lattices = block[0], block[1]
                k = positions.shape[0]
                if positions.shape[1:] != (n_atoms, 3) or lattices.shape != (k, 3, 3):
                    raise UserInputError(
                        f"{info.path}: frame {done} has shape {positions.shape[1:]}, "
                        f"expected ({n_atoms}, 3)"
                    )
                if velocities and block[2].shape != positions.shape:
                    raise UserInputError(
                        f"{info.path}: velocities of frame {done} have shape "
                        f"{block[2].shape[1:]}, expected ({n_atoms}, 3)"
                    )
                if done + k > n_total:
                    k = n_total - done
                    block = tuple(a[:k] for a in block)
                    positions, lattices = block[0], block[1]
                if k == 0:
                    break
                if not (np.isfinite(positions).all() and np.isfinite(lattices).all()):
                    raise UserInputError(
                        f"{info.path}: non-finite coordinates or cell in frames "
                        f"{done}-{done + k - 1} (overflow '****' or NaN in the file?)"
                    )
                if velocities and not np.isfinite(block[2]).all():
                    raise UserInputError(
                        f"{info.path}: non-finite velocities in frames {done}-{done + k - 1}"
                    )
                done += k
                if progress is not None:
                    progress(k)
                yield (positions, lattices, block[2]) if velocities else (positions, lattices)
                if done >= n_total:
                    break
        if done < n_total:
            raise UserInputError(
                f"{info.path}: only {done} of {n_total} frames could be read "
                "(did the file change on disk?)"
            )

    def read_all(self, chunk_frames: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All frames at once: ``(positions (F, N, 3), lattices (F, 3, 3))``.

        Convenience for small files and tests; this is *not* memory-bounded.
        """
        pos, lat = [], []
        for p, m in self.iter_chunks(chunk_frames):
            pos.append(p)
            lat.append(m)
        return np.concatenate(pos), np.concatenate(lat)

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _iter_velocity_blocks(
        self, chunk_frames: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        raise NotImplementedError  # pragma: no cover - only sources with velocities

    def __repr__(self) -> str:
        i = self.info
        return (
            f"{type(self).__name__}(path={i.path!r}, format={i.format!r}, "
            f"n_frames={i.n_frames}, n_atoms={i.n_atoms})"
        )


# --------------------------------------------------------------------------- helpers


def _err(path: PathLike, message: str) -> UserInputError:
    """A one-line :class:`UserInputError` naming ``path``."""
    one_line = " ".join(str(message).split())
    return UserInputError(f"{path}: {one_line}")


def _exc_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rechunk(
    blocks: Iterator[tuple[np.ndarray, ...]], chunk: int
) -> Iterator[tuple[np.ndarray, ...]]:
    """Re-block a stream of ``(positions, lattices[, velocities])`` blocks (arrays sharing
    the leading frame axis) to exactly ``chunk`` frames."""
    pend: list[tuple[np.ndarray, ...]] = []
    n = 0

    def joined() -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(c) if len(pend) > 1 else c[0] for c in zip(*pend, strict=True))

    with contextlib.closing(blocks) if hasattr(blocks, "close") else contextlib.nullcontext():
        for block in blocks:
            k = len(block[0])
            if k == 0:
                continue
            if n == 0 and k == chunk:
                yield tuple(block)
                continue
            pend.append(tuple(block))
            n += k
            while n >= chunk:
                parts = joined()
                yield tuple(a[:chunk] for a in parts)
                rest = n - chunk
                pend = [tuple(a[chunk:] for a in parts)] if rest else []
                n = rest
    if n:
        yield joined()


def _batch_frames(
    frames: Iterable[tuple[np.ndarray, ...]], n_atoms: int, chunk: int
) -> Iterator[tuple[np.ndarray, ...]]:
    """Pack single frames ``(positions (N, 3), lattice (3, 3)[, velocities (N, 3)])`` into
    blocks."""
    shapes = ((n_atoms, 3), (3, 3), (n_atoms, 3))
    bufs: list[np.ndarray] = []
    k = 0
    for frame in frames:
        if k == 0:
            bufs = [np.empty((chunk, *shape)) for shape in shapes[: len(frame)]]
        for buf, a in zip(bufs, frame, strict=True):
            buf[k] = a
        k += 1
        if k == chunk:
            yield tuple(bufs)
            k = 0
    if k:
        yield tuple(b[:k] for b in bufs)


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise _err(p, "no such file")
    if p.is_dir():
        raise _err(p, "is a directory, expected a trajectory file")
    return p


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_binary(path: Path) -> IO[bytes]:
    """Open a file for binary reading, transparently gunzipping."""
    if _is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="replace")


def _symbol(raw: Any, path: PathLike, what: str = "species") -> str:
    """Validate/normalise an element symbol (also accepts atomic numbers)."""
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(raw, int | np.integer) and not isinstance(raw, bool):
        z = int(raw)
        if 1 <= z < len(chemical_symbols):
            return chemical_symbols[z]
        raise _err(path, f"{what}: {z} is not an atomic number")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    text = str(raw).strip()
    if text in atomic_numbers and text != "X":
        return text
    # "Fe2+", "Li1", "Na12" (CIF labels) -> the element
    m = re.match(r"^([A-Z][a-z]?)(?![A-Za-z])", text)
    if m and m.group(1) in atomic_numbers and m.group(1) != "X":
        return m.group(1)
    raise _err(path, f"{what}: {text!r} is not an element symbol")


def _lattice_ok(lattice: np.ndarray, path: PathLike, where: str = "") -> np.ndarray:
    lat = np.asarray(lattice, dtype=np.float64)
    if lat.shape != (3, 3):
        raise _err(path, f"lattice{where} has shape {lat.shape}, expected (3, 3)")
    if not np.all(np.isfinite(lat)) or abs(np.linalg.det(lat)) < 1e-6:
        raise _err(
            path,
            f"lattice{where} is missing or degenerate (non-periodic data?); "
            "a periodic cell is required",
        )
    return lat


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fixed_from_ase(atoms: Any) -> np.ndarray | None:
    """Atoms fully fixed by ``FixAtoms`` constraints; None when no constraint at all."""
    from ase.constraints import FixAtoms, FixCartesian

    constraints = list(getattr(atoms, "constraints", []) or [])
    if not constraints:
        return None
    mask = np.zeros(len(atoms), dtype=bool)
    for c in constraints:
        if isinstance(c, FixAtoms):
            mask[np.asarray(c.get_indices(), dtype=int)] = True
        elif isinstance(c, FixCartesian) and np.all(np.asarray(c.mask, dtype=bool)):
            mask[np.asarray(c.get_indices(), dtype=int)] = True  # fixed in x, y and z
    return mask


def _fixed_from_selective(flags: Any, n_atoms: int, path: PathLike) -> np.ndarray | None:
    """``selective_dynamics`` flags (N × 3, True = may move) → fully fixed mask."""
    if flags is None:
        return None
    try:
        arr = np.asarray(flags, dtype=bool)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n_atoms, 3):
        raise _err(path, f"selective dynamics has shape {arr.shape}, expected ({n_atoms}, 3)")
    return ~arr.any(axis=1)


def _same(values: Sequence[float | None], rel: float = 1e-6) -> tuple[bool, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return True, None
    ref = known[0]
    ok = all(math.isclose(v, ref, rel_tol=rel, abs_tol=1e-12) for v in known)
    return ok, ref


# --------------------------------------------------------------------------- extxyz


_LATTICE_RE = re.compile(r"""Lattice\s*=\s*(?:"([^"]*)"|'([^']*)'|\{([^}]*)\})""", re.IGNORECASE)


class ExtxyzSource(TrajectorySource):
    """Extended XYZ via :func:`ase.io.iread` (streaming; frames counted up front)."""

    def __init__(self, path: PathLike):
        self.path = _check_file(path)
        n_frames, n_atoms, constant, truncated = self._scan()
        if n_frames == 0:
            raise _err(self.path, "no complete frame (empty or not an extended XYZ file)")
        if truncated:
            warnings.warn(
                f"{self.path}: incomplete last frame skipped; reading {n_frames} frames",
                TruncatedTrajectoryWarning,
                stacklevel=3,
            )
        import ase.io

        try:
            atoms = ase.io.read(self.path, index=0, format="extxyz")
        except Exception as exc:
            raise _err(
                self.path, f"cannot read the first frame as extended XYZ ({_exc_text(exc)})"
            ) from None
        lattice = _lattice_ok(atoms.cell.array, self.path, " (Lattice= key)")
        self._numbers = atoms.numbers.copy()
        self._velocity_key = next((k for k in ("momenta", "velocities") if k in atoms.arrays), None)
        info = dict(atoms.info)
        interval = _float_or_none(info.get("frame_interval_fs", info.get("time_step_fs")))
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="extxyz",
            species=list(atoms.get_chemical_symbols()),
            n_frames=n_frames,
            frame_interval_fs=interval,
            temperature_k=_float_or_none(info.get("temperature_k")),
            lattice=lattice,
            constant_lattice=constant,
            fixed_atoms=_fixed_from_ase(atoms),
            metadata={
                "info_keys": sorted(str(k) for k in info),
                "truncated_last_frame": truncated,
                "velocities_from": self._velocity_key,
            },
            has_velocities=self._velocity_key is not None,
        )
        if len(atoms) != n_atoms:  # pragma: no cover - scan and ase disagree
            raise _err(self.path, f"atom count {len(atoms)} differs from header {n_atoms}")

    def _scan(self) -> tuple[int, int, bool, bool]:
        """Count complete frames, check atom counts, compare Lattice= strings."""
        n_frames = 0
        n_atoms = -1
        first_lat: str | None = None
        first_lat_arr: np.ndarray | None = None
        constant = True
        truncated = False
        try:
            with _open_text(self.path) as f:
                lineno = 0
                pending: str | None = None  # line read ahead while looking for VEC lines
                while True:
                    line = pending if pending is not None else f.readline()
                    pending = None
                    lineno += 1
                    if not line or not line.strip():
                        break
                    try:
                        nat = int(line.strip())
                    except ValueError:
                        raise _err(
                            self.path,
                            f"line {lineno}: expected the atom count of frame {n_frames}, "
                            f"got {line.strip()[:40]!r}",
                        ) from None
                    if n_atoms < 0:
                        n_atoms = nat
                    elif nat != n_atoms:
                        raise _err(
                            self.path,
                            f"frame {n_frames} has {nat} atoms but frame 0 has {n_atoms}",
                        )
                    comment = f.readline()
                    lineno += 1
                    got = 0
                    if comment:
                        for _ in range(nat):
                            if not f.readline():
                                break
                            got += 1
                        lineno += got
                    if not comment or got < nat:
                        truncated = True
                        break
                    # optional VEC lines (as ase does); no seek: cheap on .gz too
                    while True:
                        nxt = f.readline()
                        if nxt.lstrip().startswith("VEC"):
                            lineno += 1
                            continue
                        pending = nxt
                        break
                    m = _LATTICE_RE.search(comment)
                    lat_text = next((g for g in m.groups() if g is not None), "") if m else ""
                    if first_lat is None:
                        first_lat = lat_text
                    elif constant and lat_text != first_lat:
                        try:
                            if first_lat_arr is None:
                                first_lat_arr = np.array(first_lat.split(), dtype=float)
                            arr = np.array(lat_text.split(), dtype=float)
                            constant = arr.shape == first_lat_arr.shape and bool(
                                np.allclose(arr, first_lat_arr, rtol=0, atol=1e-8)
                            )
                        except ValueError:
                            constant = False
                    n_frames += 1
        except UserInputError:
            raise
        except (OSError, EOFError, UnicodeError) as exc:
            raise _err(self.path, f"cannot read ({_exc_text(exc)})") from None
        return n_frames, max(n_atoms, 0), constant, truncated

    def _frames(self, velocities: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
        import ase.io

        n = self.info.n_frames
        try:
            frames = ase.io.iread(self.path, index=slice(0, n), format="extxyz")
            for i, atoms in enumerate(frames):
                if len(atoms) != len(self._numbers) or not np.array_equal(
                    atoms.numbers, self._numbers
                ):
                    raise _err(self.path, f"frame {i}: species differ from frame 0")
                lat = _lattice_ok(atoms.cell.array, self.path, f" of frame {i}")
                if not velocities:
                    yield atoms.positions, lat
                    continue
                key = self._velocity_key
                if key not in atoms.arrays:
                    raise _err(self.path, f"frame {i} has no '{key}' (frame 0 has)")
                yield atoms.positions, lat, _ase_velocities_a_fs(atoms, key)
        except UserInputError:
            raise
        except Exception as exc:
            raise _err(self.path, f"cannot parse extended XYZ ({_exc_text(exc)})") from None

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _batch_frames(self._frames(), self.info.n_atoms, chunk_frames)

    def _iter_velocity_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, ...]]:
        return _batch_frames(self._frames(velocities=True), self.info.n_atoms, chunk_frames)


def _ase_velocities_a_fs(atoms: Any, key: str) -> np.ndarray:
    """Velocities in Å/fs from an Atoms' ``momenta`` or ``velocities`` array (ASE units)."""
    from ase import units

    arr = np.asarray(atoms.arrays[key], dtype=np.float64)
    if key == "momenta":
        arr = arr / atoms.get_masses()[:, None]
    return arr * units.fs


# --------------------------------------------------------------------------- ASE .traj


class AseTrajSource(TrajectorySource):
    """ASE ``.traj`` via :class:`ase.io.trajectory.TrajectoryReader`, one frame at a time."""

    def __init__(self, path: PathLike):
        self.path = _check_file(path)
        reader = self._open()
        try:
            n = len(reader)
            if n == 0:
                raise _err(self.path, "contains zero frames")
            truncated = False
            try:
                self._read_frame(reader, n - 1)
            except Exception:
                truncated = True
                n -= 1
                if n == 0:
                    raise _err(self.path, "its only frame is corrupt") from None
                warnings.warn(
                    f"{self.path}: corrupt or truncated last frame skipped; reading {n} frames",
                    TruncatedTrajectoryWarning,
                    stacklevel=3,
                )
            try:
                atoms = reader[0]
            except Exception as exc:
                raise _err(self.path, f"cannot read frame 0 ({_exc_text(exc)})") from None
            self._numbers = np.asarray(atoms.numbers).copy()
            self._masses = np.asarray(atoms.get_masses(), dtype=np.float64)
            has_v = "momenta" in reader.backend[0]
            lattice = _lattice_ok(atoms.cell.array, self.path, " of frame 0")
            constant = True
            for i in range(1, n):
                try:
                    cell = np.asarray(reader.backend[i].cell, dtype=float)
                except Exception as exc:
                    raise _err(self.path, f"frame {i} is corrupt ({_exc_text(exc)})") from None
                if constant and not np.allclose(cell, lattice, rtol=0, atol=1e-10):
                    constant = False
                    break
            description = dict(getattr(reader, "description", None) or {})
        finally:
            reader.close()
        interval = _float_or_none(
            description.get("frame_interval_fs", description.get("time_step_fs"))
        )
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="ase-traj",
            species=list(atoms.get_chemical_symbols()),
            n_frames=n,
            frame_interval_fs=interval,
            temperature_k=_float_or_none(description.get("temperature_k")),
            lattice=lattice,
            constant_lattice=constant,
            fixed_atoms=_fixed_from_ase(atoms),
            metadata={"description": description, "truncated_last_frame": truncated},
            has_velocities=has_v,
        )

    def _open(self) -> Any:
        from ase.io.trajectory import TrajectoryReader

        try:
            return TrajectoryReader(str(self.path))
        except Exception as exc:
            raise _err(self.path, f"not a readable ASE trajectory ({_exc_text(exc)})") from None

    @staticmethod
    def _read_frame(reader: Any, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        b = reader.backend[i]
        numbers = np.asarray(b.numbers) if "numbers" in b else None
        pos = np.asarray(b.positions, dtype=np.float64)
        cell = np.asarray(b.cell, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3 or cell.shape != (3, 3):
            raise ValueError(f"bad shapes {pos.shape} / {cell.shape}")
        return pos, cell, numbers

    def _frames(self, velocities: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
        from ase import units

        reader = self._open()
        try:
            for i in range(self.info.n_frames):
                try:
                    pos, cell, numbers = self._read_frame(reader, i)
                except Exception as exc:
                    raise _err(self.path, f"frame {i} is corrupt ({_exc_text(exc)})") from None
                if len(pos) != len(self._numbers) or (
                    numbers is not None and not np.array_equal(numbers, self._numbers)
                ):
                    raise _err(
                        self.path,
                        f"frame {i} has {len(pos)} atoms / different species than frame 0 "
                        f"({len(self._numbers)} atoms)",
                    )
                lat = _lattice_ok(cell, self.path, f" of frame {i}")
                if not velocities:
                    yield pos, lat
                    continue
                b = reader.backend[i]
                if "momenta" not in b:
                    raise _err(self.path, f"frame {i} has no momenta (frame 0 has)")
                momenta = np.asarray(b.momenta, dtype=np.float64)
                yield pos, lat, momenta / self._masses[:, None] * units.fs  # → Å/fs
        finally:
            reader.close()

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _batch_frames(self._frames(), self.info.n_atoms, chunk_frames)

    def _iter_velocity_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, ...]]:
        return _batch_frames(self._frames(velocities=True), self.info.n_atoms, chunk_frames)


# --------------------------------------------------------------------------- XDATCAR

_CONFIG_RE = re.compile(r"^\s*(direct|cartesian)\b", re.IGNORECASE)


class _Lines:
    """Line reader with a line counter."""

    def __init__(self, f: IO[str]):
        self.f = f
        self.lineno = 0

    def next(self) -> str | None:
        line = self.f.readline()
        if not line:
            return None
        self.lineno += 1
        return line

    def next_nonblank(self) -> str | None:
        while True:
            line = self.next()
            if line is None or line.strip():
                return line


class XdatcarSource(TrajectorySource):
    """VASP XDATCAR, fixed or variable cell, streamed line by line."""

    def __init__(self, path: PathLike):
        self.path = _check_file(path)
        st = SimpleNamespace()
        species: list[str] | None = None
        first_lattice: np.ndarray | None = None
        constant = True
        n = 0
        for lattice, _ in self._frames(parse=False, st=st):
            if first_lattice is None:
                first_lattice = lattice
                species = st.species
            elif constant and not np.allclose(lattice, first_lattice, rtol=0, atol=1e-10):
                constant = False
            n += 1
        if n == 0 or species is None or first_lattice is None:
            raise _err(self.path, "contains zero complete frames")
        if st.truncated:
            warnings.warn(
                f"{self.path}: incomplete last frame skipped; reading {n} frames",
                TruncatedTrajectoryWarning,
                stacklevel=3,
            )
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="xdatcar",
            species=species,
            n_frames=n,
            frame_interval_fs=None,
            temperature_k=None,
            lattice=first_lattice,
            constant_lattice=constant,
            fixed_atoms=None,
            metadata={
                "system": st.system,
                "variable_cell_format": st.variable_format,
                "truncated_last_frame": st.truncated,
            },
        )

    # -- parsing

    def _bad(self, lines: _Lines, what: str) -> UserInputError:
        return _err(self.path, f"line {lines.lineno}: {what}")

    def _floats(self, lines: _Lines, line: str | None, count: int, what: str) -> list[float]:
        if line is None:
            raise _Eof
        tokens = line.split()
        try:
            values = [float(t) for t in tokens[:count]]
        except ValueError:
            raise self._bad(lines, f"expected {what}, got {line.strip()[:60]!r}") from None
        if len(values) < count:
            raise self._bad(lines, f"expected {what}, got {line.strip()[:60]!r}")
        return values

    def _header(
        self, lines: _Lines, comment: str, st: SimpleNamespace
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Parse a POSCAR-like header after its comment line; return
        (lattice, coordinate scale vector, config line)."""
        scale_line = lines.next()
        if scale_line is None:
            raise _Eof
        try:
            scale = [float(t) for t in scale_line.split()]
        except ValueError:
            scale = []
        if len(scale) not in (1, 3):
            raise self._bad(lines, f"expected the scale factor, got {scale_line.strip()[:60]!r}")
        rows = [self._floats(lines, lines.next(), 3, "a lattice vector") for _ in range(3)]
        lattice = np.array(rows, dtype=np.float64)
        if len(scale) == 1:
            s = scale[0]
            if s < 0:
                vol = abs(np.linalg.det(lattice))
                if vol <= 0:
                    raise self._bad(lines, "degenerate lattice")
                s = (abs(s) / vol) ** (1.0 / 3.0)
            svec = np.full(3, s)
        else:
            svec = np.array(scale)
        lattice = lattice * svec[None, :]
        line = lines.next()
        if line is None:
            raise _Eof
        tokens = line.split()
        if tokens and all(t.lstrip("+-").isdigit() for t in tokens):
            raise _err(
                self.path,
                "XDATCAR header without element names (VASP 4 format); add the element "
                "line (as in VASP 5 POSCAR) or convert the file",
            )
        names = [
            _symbol(t.split("/")[0].split("_")[0], self.path, "XDATCAR element") for t in tokens
        ]
        count_line = lines.next()
        if count_line is None:
            raise _Eof
        try:
            counts = [int(t) for t in count_line.split()]
        except ValueError:
            raise self._bad(
                lines, f"expected atom counts, got {count_line.strip()[:60]!r}"
            ) from None
        if len(counts) != len(names) or not counts or min(counts) < 0:
            raise self._bad(
                lines, f"{len(names)} element names but counts {count_line.strip()[:60]!r}"
            )
        species = [s for s, c in zip(names, counts, strict=True) for _ in range(c)]
        if st.species is None:
            st.species = species
            st.system = comment.strip()
        elif species != st.species:
            raise self._bad(
                lines,
                f"atom counts change ({len(species)} atoms here, {len(st.species)} in the "
                "first header)",
            )
        config = lines.next_nonblank()
        if config is None:
            raise _Eof
        if config.lstrip().lower().startswith(("s", "selective")):
            config = lines.next_nonblank()
            if config is None:
                raise _Eof
        if not _CONFIG_RE.match(config):
            raise self._bad(lines, f"expected 'Direct configuration=', got {config.strip()[:60]!r}")
        return lattice, svec, config

    def _coords(self, lines: _Lines, n_atoms: int, parse: bool) -> np.ndarray | None:
        block = list(itertools.islice(lines.f, n_atoms))
        start = lines.lineno
        lines.lineno += len(block)
        if len(block) < n_atoms or not block[-1].endswith("\n") and len(block[-1].split()) < 3:
            raise _Eof
        if not parse:
            return None
        tokens = " ".join(block).split()
        try:
            if len(tokens) == 3 * n_atoms:
                return np.array(tokens, dtype=np.float64).reshape(n_atoms, 3)
            return np.array([ln.split()[:3] for ln in block], dtype=np.float64)
        except ValueError:
            for j, ln in enumerate(block):
                try:
                    vals = [float(t) for t in ln.split()[:3]]
                    if len(vals) == 3:
                        continue
                except ValueError:
                    pass
                raise _err(
                    self.path, f"line {start + j + 1}: bad coordinates {ln.strip()[:60]!r}"
                ) from None
            raise _err(self.path, f"lines {start + 1}-{lines.lineno}: bad coordinates") from None

    def _frames(
        self, parse: bool, st: SimpleNamespace | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(lattice, cartesian positions or None)`` for each complete frame."""
        st = SimpleNamespace() if st is None else st
        st.species = None
        st.system = ""
        st.variable_format = False
        st.truncated = False
        n_headers = 0
        try:
            with _open_text(self.path) as f:
                lines = _Lines(f)
                first = lines.next_nonblank()
                if first is None:
                    raise _err(self.path, "empty file")
                lattice, svec, config = self._header(lines, first, st)
                n_headers = 1
                assert st.species is not None
                n_atoms = len(st.species)
                while True:
                    coords = self._coords(lines, n_atoms, parse)
                    if coords is not None:
                        if config.lstrip().lower().startswith("c"):
                            coords = coords * svec[None, :]
                        else:
                            coords = coords @ lattice
                    yield lattice, coords
                    nxt = lines.next_nonblank()
                    if nxt is None:
                        return
                    if _CONFIG_RE.match(nxt):
                        config = nxt
                    else:
                        lattice, svec, config = self._header(lines, nxt, st)
                        n_headers += 1
                        st.variable_format = True
        except _Eof:
            if n_headers == 0:
                raise _err(self.path, "ends inside the first header; not an XDATCAR?") from None
            st.truncated = True
        except UserInputError:
            raise
        except (OSError, EOFError, UnicodeError) as exc:
            raise _err(self.path, f"cannot read ({_exc_text(exc)})") from None

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        frames = ((lat, pos) for lat, pos in self._frames(parse=True))
        return _batch_frames(((pos, lat) for lat, pos in frames), self.info.n_atoms, chunk_frames)


class _Eof(Exception):
    """Internal: the file ended inside a frame or header."""


# --------------------------------------------------------------------------- vasprun.xml


def _vasp_symbol(raw: str, path: PathLike) -> str:
    text = raw.strip()
    # VASP quirks also handled by pymatgen: "X" for Xe, "r" for Zr
    text = {"X": "Xe", "r": "Zr"}.get(text, text)
    return _symbol(text, path, "atominfo element")


def _parse_version(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


class VasprunSource(TrajectorySource):
    """VASP ``vasprun.xml`` (or ``.gz``), streamed with ``iterparse``."""

    def __init__(self, path: PathLike):
        self.path = _check_file(path)
        n = 0
        first_lattice: np.ndarray | None = None
        constant = True
        st = SimpleNamespace()
        for lattice, _ in self._frames(parse=False, st=st):
            if first_lattice is None:
                first_lattice = lattice
            elif constant and not np.allclose(lattice, first_lattice, rtol=0, atol=1e-10):
                constant = False
            n += 1
        if st.scan_error is not None:
            if n == 0:
                raise _err(self.path, f"unreadable vasprun.xml ({st.scan_error})")
            warnings.warn(
                f"{self.path}: file ends abruptly ({st.scan_error}); reading the "
                f"{n} complete ionic steps",
                TruncatedTrajectoryWarning,
                stacklevel=3,
            )
        if st.species is None:
            raise _err(self.path, "no <atominfo> block; not a vasprun.xml?")
        if n == 0 or first_lattice is None:
            raise _err(self.path, "contains zero ionic steps (no <calculation> structures)")
        p = st.params
        potim = _float_or_none(p.get("POTIM"))
        ibrion = _int_or_none(p.get("IBRION"))
        nblock = _int_or_none(p.get("NBLOCK"))
        ml_outblock = _int_or_none(p.get("ML_OUTBLOCK"))
        ml_mode = (p.get("ML_MODE") or "").strip().strip("'\"").lower()
        version = st.version
        stride = 1
        if ml_outblock and ml_outblock > 1 and ml_mode == "run" and version >= (6, 4, 3):
            stride = ml_outblock
        is_md = ibrion is None or ibrion == 0
        interval = potim * stride if (potim is not None and potim > 0 and is_md) else None
        tebeg = _float_or_none(p.get("TEBEG"))
        teend = _float_or_none(p.get("TEEND"))
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="vasprun",
            species=list(st.species),
            n_frames=n,
            frame_interval_fs=interval,
            temperature_k=tebeg if is_md else None,
            lattice=first_lattice,
            constant_lattice=constant,
            fixed_atoms=st.fixed,
            metadata={
                "vasp_version": ".".join(map(str, version)) if version else None,
                "POTIM": potim,
                "IBRION": ibrion,
                "NBLOCK": nblock,
                "ML_OUTBLOCK": ml_outblock,
                "ML_MODE": ml_mode or None,
                "TEBEG": tebeg,
                "TEEND": teend,
                "ISIF": _int_or_none(p.get("ISIF")),
                "SMASS": _float_or_none(p.get("SMASS")),
                "stride": stride,
                "is_md": is_md,
                "truncated": st.scan_error is not None,
            },
        )

    def _frames(
        self, parse: bool, st: SimpleNamespace | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(lattice, cartesian positions or None)`` per ionic-step structure.

        While scanning (``parse=False``) a parse error after at least one frame is
        recorded in ``st.scan_error`` (truncated file) instead of raised.
        """
        st = SimpleNamespace() if st is None else st
        st.species = None
        st.params = {}
        st.version = ()
        st.fixed = None
        st.scan_error = None
        incar: dict[str, str] = {}
        params: dict[str, str] = {}
        n_done = 0
        stack: list[str] = []
        root: ET.Element | None = None
        try:
            with _open_binary(self.path) as f:
                for event, elem in ET.iterparse(f, events=("start", "end")):
                    if event == "start":
                        if root is None:
                            root = elem
                            if elem.tag != "modeling":
                                raise _err(
                                    self.path,
                                    f"root element <{elem.tag}>, expected <modeling>; "
                                    "not a vasprun.xml",
                                )
                        stack.append(elem.tag)
                        continue
                    stack.pop()
                    tag = elem.tag
                    parent = stack[-1] if stack else None
                    if tag == "generator" and parent == "modeling":
                        for i in elem.iter("i"):
                            if i.get("name") == "version":
                                st.version = _parse_version(i.text)
                    elif tag == "incar" and parent == "modeling":
                        incar = _collect_i(elem)
                    elif tag == "parameters" and parent == "modeling":
                        params = _collect_i(elem)
                    elif tag == "atominfo" and parent == "modeling":
                        st.species = self._atominfo(elem)
                        st.params = {**incar, **params}
                    elif tag == "structure":
                        name = elem.get("name")
                        if name == "initialpos" and parent == "modeling":
                            st.fixed = self._selective(elem, st.species)
                        elif not name and parent in ("calculation", "modeling"):
                            if st.species is None:
                                raise _err(self.path, "structure before <atominfo>")
                            if not st.params:
                                st.params = {**incar, **params}
                            lattice, pos = self._structure(elem, parse, n_done, st.species)
                            n_done += 1
                            yield lattice, pos
                            if parse and n_done >= self.info.n_frames:
                                return
                    if len(stack) == 1 and root is not None:
                        root.clear()  # drop the finished top-level block
        except UserInputError:
            raise
        except (ET.ParseError, OSError, EOFError, ValueError, zlib_error) as exc:
            if parse:
                raise _err(
                    self.path, f"unreadable after ionic step {n_done} ({_exc_text(exc)})"
                ) from None
            st.scan_error = _exc_text(exc)

    def _atominfo(self, elem: ET.Element) -> list[str]:
        for arr in elem.iter("array"):
            if arr.get("name") == "atoms":
                symbols = []
                for rc in arr.iter("rc"):
                    c = rc.find("c")
                    if c is None or c.text is None:
                        raise _err(self.path, "malformed <atominfo> atoms array")
                    symbols.append(_vasp_symbol(c.text, self.path))
                if not symbols:
                    raise _err(self.path, "<atominfo> lists no atoms")
                return symbols
        raise _err(self.path, "<atominfo> has no atoms array")

    def _varray(self, elem: ET.Element, name: str) -> ET.Element | None:
        for va in elem.iter("varray"):
            if va.get("name") == name:
                return va
        return None

    def _structure(
        self, elem: ET.Element, parse: bool, index: int, species: list[str]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        n_atoms = len(species)
        crystal = elem.find("crystal")
        basis = self._varray(crystal, "basis") if crystal is not None else None
        positions = None
        for va in elem.findall("varray"):
            if va.get("name") == "positions":
                positions = va
        if basis is None or positions is None:
            raise _err(self.path, f"ionic step {index}: <structure> without basis or positions")
        try:
            lattice = np.array(" ".join(v.text or "" for v in basis).split(), dtype=float)
            lattice = lattice.reshape(3, 3)
        except ValueError:
            raise _err(self.path, f"ionic step {index}: bad lattice basis") from None
        rows = positions.findall("v")
        if len(rows) != n_atoms:
            raise _err(
                self.path,
                f"ionic step {index} has {len(rows)} positions but atominfo lists {n_atoms} atoms",
            )
        if not parse:
            return lattice, None
        try:
            frac = np.array(" ".join(v.text or "" for v in rows).split(), dtype=float)
            frac = frac.reshape(n_atoms, 3)
        except ValueError:
            raise _err(self.path, f"ionic step {index}: bad positions (overflow '****'?)") from None
        return lattice, frac @ lattice

    def _selective(self, elem: ET.Element, species: list[str] | None) -> np.ndarray | None:
        va = self._varray(elem, "selective")
        if va is None or species is None:
            return None
        flags = [
            [t.upper().startswith("T") for t in (v.text or "").split()] for v in va.findall("v")
        ]
        return _fixed_from_selective(flags, len(species), self.path)

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        frames = self._frames(parse=True)
        return _batch_frames(((pos, lat) for lat, pos in frames), self.info.n_atoms, chunk_frames)


def _collect_i(elem: ET.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in elem.iter("i"):
        name = i.get("name")
        if name:
            out[name.strip().upper()] = (i.text or "").strip()
    return out


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(float(str(value).strip()))
    except ValueError:
        return None


# --------------------------------------------------------------------------- JSON formats


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with _open_binary(path) as f:
            data = json.load(f)
    except (OSError, EOFError, ValueError, zlib_error) as exc:
        raise _err(path, f"unreadable JSON ({_exc_text(exc)})") from None
    if not isinstance(data, dict):
        raise _err(path, "JSON top level is not an object")
    return data


def _decode_array(obj: Any, path: PathLike, what: str, dtype: Any = np.float64) -> np.ndarray:
    """A JSON list or a monty-encoded numpy array as an ndarray."""
    try:
        if isinstance(obj, dict) and obj.get("@module") == "numpy" and obj.get("@class") == "array":
            raw = np.asarray(obj["data"], dtype=obj.get("dtype"))
            return np.asarray(raw, dtype=dtype)
        if isinstance(obj, dict) and "matrix" in obj:  # a pymatgen Lattice dict
            return np.asarray(obj["matrix"], dtype=dtype)
        return np.asarray(obj, dtype=dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(path, f"{what} is not a numeric array ({_exc_text(exc)})") from None


def _pmg_species(raw: Any, path: PathLike, index: int) -> str:
    """Symbol from a pymatgen species entry (str, Element/Species dict, composition)."""
    if isinstance(raw, str):
        return _symbol(raw, path, f"species of site {index}")
    if isinstance(raw, dict):
        if "element" in raw:
            return _symbol(raw["element"], path, f"species of site {index}")
        comp = {k: v for k, v in raw.items() if not str(k).startswith("@")}
        if len(comp) == 1:
            return _symbol(next(iter(comp)), path, f"species of site {index}")
        raise _err(
            path, f"site {index} is disordered ({comp}); a trajectory needs one element per site"
        )
    if isinstance(raw, int):
        return _symbol(raw, path, f"species of site {index}")
    raise _err(path, f"species of site {index} not understood: {raw!r}")


class PymatgenTrajectorySource(TrajectorySource):
    """pymatgen :class:`~pymatgen.core.trajectory.Trajectory` JSON (whole file in memory)."""

    def __init__(self, path: PathLike, data: dict[str, Any] | None = None):
        self.path = _check_file(path)
        d = _load_json(self.path) if data is None else data
        if d.get("@class") != "Trajectory":
            raise _err(self.path, f"JSON '@class' is {d.get('@class')!r}, expected 'Trajectory'")
        for key in ("species", "coords"):
            if key not in d:
                raise _err(self.path, f"Trajectory JSON has no '{key}'")
        coords = _decode_array(d["coords"], self.path, "coords")
        if coords.ndim != 3 or coords.shape[2] != 3:
            raise _err(self.path, f"coords has shape {coords.shape}, expected (frames, atoms, 3)")
        n_frames, n_atoms = coords.shape[:2]
        if n_frames == 0:
            raise _err(self.path, "contains zero frames")
        species_raw = d["species"]
        if not isinstance(species_raw, list) or len(species_raw) != n_atoms:
            raise _err(
                self.path,
                f"species has {len(species_raw) if isinstance(species_raw, list) else '?'} "
                f"entries but coords has {n_atoms} atoms",
            )
        species = [_pmg_species(s, self.path, i) for i, s in enumerate(species_raw)]
        if d.get("lattice") is None:
            raise _err(self.path, "a Molecule trajectory (no lattice); a periodic cell is required")
        lat = _decode_array(d["lattice"], self.path, "lattice")
        if lat.shape == (3, 3) or lat.shape == (1, 3, 3):
            lat = _lattice_ok(lat.reshape(3, 3), self.path)
        elif lat.shape == (n_frames, 3, 3):
            for i in range(n_frames):
                _lattice_ok(lat[i], self.path, f" of frame {i}")
        else:
            raise _err(
                self.path, f"lattice has shape {lat.shape}, expected (3, 3) or ({n_frames}, 3, 3)"
            )
        displacement = bool(d.get("coords_are_displacement", False))
        base = None
        if displacement:
            if d.get("base_positions") is None:
                raise _err(
                    self.path,
                    "coords_are_displacement is true but base_positions is missing; "
                    "positions cannot be reconstructed",
                )
            base = _decode_array(d["base_positions"], self.path, "base_positions")
            if base.shape != (n_atoms, 3):
                raise _err(
                    self.path, f"base_positions has shape {base.shape}, expected ({n_atoms}, 3)"
                )
        self._frac = coords
        self._lat = lat
        self._base = base
        constant = lat.ndim == 2 or bool(np.allclose(lat, lat[0], rtol=0, atol=1e-10))
        fixed = None
        sp = d.get("site_properties")
        if isinstance(sp, list) and sp:
            sp = sp[0]
        if isinstance(sp, dict) and sp.get("selective_dynamics") is not None:
            fixed = _fixed_from_selective(sp["selective_dynamics"], n_atoms, self.path)
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="pymatgen-trajectory",
            species=species,
            n_frames=int(n_frames),
            frame_interval_fs=_float_or_none(d.get("time_step")),
            temperature_k=None,
            lattice=np.array(lat if lat.ndim == 2 else lat[0]),
            constant_lattice=constant,
            fixed_atoms=fixed,
            metadata={
                "coords_are_displacement": displacement,
                "time_step": d.get("time_step"),
                "constant_lattice_flag": d.get("constant_lattice"),
            },
        )

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = self.info.n_frames
        running = self._base.copy() if self._base is not None else None
        for a in range(0, n, chunk_frames):
            b = min(n, a + chunk_frames)
            frac = self._frac[a:b]
            if running is not None:
                frac = np.cumsum(frac, axis=0) + running[None]
                running = frac[-1].copy()
            if self._lat.ndim == 2:
                pos = frac @ self._lat
                lat = np.repeat(self._lat[None], b - a, axis=0)
            else:
                lat = np.array(self._lat[a:b])
                pos = np.einsum("fni,fij->fnj", frac, lat)
            yield np.ascontiguousarray(pos, dtype=np.float64), lat


class DiffusionAnalyzerSource(TrajectorySource):
    """pymatgen-analysis-diffusion ``DiffusionAnalyzer`` JSON (whole file in memory)."""

    def __init__(self, path: PathLike, data: dict[str, Any] | None = None):
        self.path = _check_file(path)
        d = _load_json(self.path) if data is None else data
        if d.get("@class") != "DiffusionAnalyzer":
            raise _err(
                self.path, f"JSON '@class' is {d.get('@class')!r}, expected 'DiffusionAnalyzer'"
            )
        for key in ("structure", "displacements"):
            if key not in d:
                raise _err(self.path, f"DiffusionAnalyzer JSON has no '{key}'")
        structure = _structure_from_dict(d["structure"], self.path)
        n_atoms = len(structure)
        disp = _decode_array(d["displacements"], self.path, "displacements")
        if disp.ndim != 3 or disp.shape[0] != n_atoms or disp.shape[2] != 3:
            raise _err(
                self.path,
                f"displacements has shape {disp.shape}, expected ({n_atoms} sites, steps, 3)",
            )
        n_steps = disp.shape[1]
        if n_steps == 0:
            raise _err(self.path, "contains zero frames (displacements has no steps)")
        lat0 = _lattice_ok(structure.lattice.matrix, self.path, " of the structure")
        lat: np.ndarray = lat0
        if d.get("lattices") is not None:
            lats = _decode_array(d["lattices"], self.path, "lattices")
            if lats.shape == (3, 3):
                lats = lats[None]
            if lats.ndim != 3 or lats.shape[1:] != (3, 3):
                raise _err(self.path, f"lattices has shape {lats.shape}, expected (n, 3, 3)")
            if len(lats) == 1:
                lat = _lattice_ok(lats[0], self.path)
            elif len(lats) == n_steps + 1:  # from_structures prepends a copy of the first
                lat = lats[1:]
            elif len(lats) == n_steps:
                lat = lats
            else:
                raise _err(
                    self.path,
                    f"lattices has {len(lats)} entries; expected 1, {n_steps} or {n_steps + 1}",
                )
        self._cart0 = np.asarray(structure.cart_coords, dtype=np.float64)
        self._frac0 = np.asarray(structure.frac_coords, dtype=np.float64)
        self._disp = disp
        self._lat = lat
        constant = lat.ndim == 2 or bool(np.allclose(lat, lat[0], rtol=0, atol=1e-10))
        time_step = _float_or_none(d.get("time_step"))
        step_skip = _float_or_none(d.get("step_skip"))
        interval = None
        if time_step is not None:
            interval = time_step * (step_skip if step_skip is not None else 1.0)
        fixed = _fixed_from_selective(
            structure.site_properties.get("selective_dynamics"), n_atoms, self.path
        )
        self.info = TrajectoryInfo(
            path=str(self.path),
            format="diffusion-analyzer",
            species=_structure_species(structure, self.path),
            n_frames=int(n_steps),
            frame_interval_fs=interval,
            temperature_k=_float_or_none(d.get("temperature")),
            lattice=np.array(lat if lat.ndim == 2 else lat[0]),
            constant_lattice=constant,
            fixed_atoms=fixed,
            metadata={
                k: d.get(k)
                for k in (
                    "specie",
                    "min_obs",
                    "smoothed",
                    "avg_nsteps",
                    "step_skip",
                    "time_step",
                    "weighted",
                )
                if k in d
            },
        )

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = self.info.n_frames
        if self._lat.ndim == 2:  # fixed cell: simply start + displacement
            for a in range(0, n, chunk_frames):
                b = min(n, a + chunk_frames)
                pos = self._disp[:, a:b].transpose(1, 0, 2) + self._cart0[None]
                yield np.ascontiguousarray(pos), np.repeat(self._lat[None], b - a, axis=0)
            return
        # variable cell: displacements[:, j] = (cumulative fractional step) @ lattice_j,
        # so frame j = (frac0 + displacements[:, j] @ inv(lattice_j)) @ lattice_j
        for a in range(0, n, chunk_frames):
            b = min(n, a + chunk_frames)
            lat = np.array(self._lat[a:b])
            pos = np.einsum("ni,fij->fnj", self._frac0, lat) + self._disp[:, a:b].transpose(1, 0, 2)
            yield np.ascontiguousarray(pos), lat


def _structure_from_dict(d: Any, path: PathLike) -> Any:
    from pymatgen.core import Structure

    try:
        return Structure.from_dict(d)
    except Exception as exc:
        raise _err(path, f"cannot read the embedded structure ({_exc_text(exc)})") from None


def _structure_species(structure: Any, path: PathLike) -> list[str]:
    out = []
    for i, site in enumerate(structure):
        if not site.is_ordered:
            raise _err(path, f"site {i} is disordered; a trajectory needs one element per site")
        out.append(_symbol(site.specie.symbol, path, f"species of site {i}"))
    return out


# --------------------------------------------------------------------------- .npy / .npz


def _npy_header(
    fp: IO[bytes], label: str, allow_int: bool = False
) -> tuple[tuple[int, ...], np.dtype]:
    """Read a .npy header; return (shape, dtype). Rejects Fortran order and non-floats."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        else:
            raise UserInputError(f"{label}: unsupported .npy format version {version}")
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{label}: not a valid .npy array ({_exc_text(exc)})") from None
    if fortran and len(shape) > 1:
        raise UserInputError(
            f"{label}: array stored in Fortran order; re-save it in C order "
            "(np.ascontiguousarray) to stream it"
        )
    if allow_int and dtype.kind in "iu" and not dtype.hasobject:
        return tuple(int(s) for s in shape), dtype
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise UserInputError(f"{label}: dtype {dtype} not supported, expected float32 or float64")
    return tuple(int(s) for s in shape), dtype


def _iter_npy_rows(
    fp: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, chunk: int, label: str
) -> Iterator[np.ndarray]:
    """Stream an array body (positioned after the header) ``chunk`` rows at a time."""
    n = shape[0]
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    row_bytes = row_items * dtype.itemsize
    done = 0
    while done < n:
        k = min(chunk, n - done)
        want = k * row_bytes
        try:
            buf = fp.read(want)
            while len(buf) < want:
                more = fp.read(want - len(buf))
                if not more:
                    break
                buf += more
        except (OSError, EOFError, zlib_error, zipfile.BadZipFile) as exc:
            raise UserInputError(
                f"{label}: corrupt data after row {done} ({_exc_text(exc)})"
            ) from None
        if len(buf) < want:
            raise UserInputError(
                f"{label}: truncated: {n} rows announced but data ends after row "
                f"{done + len(buf) // max(row_bytes, 1)}"
            )
        arr = np.frombuffer(buf, dtype=dtype).reshape((k, *shape[1:]))
        del buf
        yield arr.astype(np.float64)  # always a fresh, writable, native float64 copy
        done += k


class NpzSource(TrajectorySource):
    """``.npz`` with positions/lattice/species; positions streamed from the zip member."""

    def __init__(self, path: PathLike):
        self.path = _check_file(path)
        label = str(self.path)
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _err(self.path, f"not a readable .npz archive ({_exc_text(exc)})") from None
        with zf:
            members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
            self._members = members
            if "positions" not in members:
                raise _err(
                    self.path,
                    "missing key 'positions' (frames × atoms × 3 Cartesian Å); "
                    f"keys present: {sorted(members)}",
                )
            for key, shape_text in (
                ("species", "(atoms,)"),
                ("lattice", "(3, 3) or (frames, 3, 3)"),
            ):
                if key not in members:
                    raise _err(
                        self.path,
                        f"missing key '{key}' {shape_text}; keys present: {sorted(members)}",
                    )
            with self._open_member(zf, "positions") as fp:
                pshape, pdtype = _npy_header(fp, f"{label}[positions]")
            if len(pshape) != 3 or pshape[2] != 3:
                raise _err(
                    self.path, f"'positions' has shape {pshape}, expected (frames, atoms, 3)"
                )
            n_frames, n_atoms = pshape[0], pshape[1]
            if n_frames == 0:
                raise _err(self.path, "contains zero frames ('positions' is empty)")
            if n_atoms == 0:
                raise _err(self.path, "'positions' has zero atoms")
            has_v = "velocities" in members
            if has_v:
                with self._open_member(zf, "velocities") as fp:
                    vshape, _ = _npy_header(fp, f"{label}[velocities]")
                if vshape != pshape:
                    raise _err(
                        self.path,
                        f"'velocities' has shape {vshape}, expected {pshape} like 'positions' (Å/fs)",
                    )
            small = self._load_small(
                zf,
                members,
                ("species", "time_step_fs", "frame_interval_fs", "temperature_k", "fixed_atoms"),
            )
            species_arr = small["species"]
            if species_arr.ndim != 1 or len(species_arr) != n_atoms:
                raise _err(
                    self.path,
                    f"'species' has shape {species_arr.shape}, expected ({n_atoms},) to match "
                    "'positions'",
                )
            species = [
                _symbol(s.item() if isinstance(s, np.generic) else s, self.path, "species")
                for s in species_arr
            ]
            # lattice: small (3, 3) or per frame (streamed when large)
            with self._open_member(zf, "lattice") as fp:
                lshape, _ = _npy_header(fp, f"{label}[lattice]", allow_int=True)
            if lshape in ((3, 3), (1, 3, 3)):
                lat = self._load_small(zf, members, ("lattice",))["lattice"].reshape(3, 3)
                lattice0 = _lattice_ok(lat, self.path)
                per_frame = False
                constant = True
            elif lshape == (n_frames, 3, 3):
                per_frame = True
                lattice0 = None
                constant = True
                with self._open_member(zf, "lattice") as fp:
                    _, ldtype = _npy_header(fp, f"{label}[lattice]", allow_int=True)
                    for block in _iter_npy_rows(fp, lshape, ldtype, 65536, f"{label}[lattice]"):
                        if lattice0 is None:
                            lattice0 = _lattice_ok(block[0], self.path, " of frame 0")
                        bad = ~np.isfinite(block).all(axis=(1, 2)) | (
                            np.abs(np.linalg.det(block)) < 1e-6
                        )
                        if bad.any():
                            raise _err(self.path, "'lattice' has a degenerate or non-finite frame")
                        if constant and not np.allclose(block, lattice0, rtol=0, atol=1e-10):
                            constant = False
                assert lattice0 is not None
            else:
                raise _err(
                    self.path,
                    f"'lattice' has shape {lshape}, expected (3, 3) or ({n_frames}, 3, 3)",
                )
        interval = self._scalar(small, "frame_interval_fs")
        ts = self._scalar(small, "time_step_fs")
        if interval is not None and ts is not None and not math.isclose(interval, ts, rel_tol=1e-9):
            raise _err(
                self.path,
                f"'frame_interval_fs' ({interval}) and 'time_step_fs' ({ts}) disagree; "
                "both mean the time between stored frames",
            )
        interval = interval if interval is not None else ts
        fixed = None
        if "fixed_atoms" in small:
            fa = small["fixed_atoms"]
            if fa.shape != (n_atoms,) or fa.dtype.kind not in "biu":
                raise _err(
                    self.path,
                    f"'fixed_atoms' has shape {fa.shape} dtype {fa.dtype}, expected "
                    f"({n_atoms},) bool",
                )
            fixed = fa.astype(bool)
        self._pshape = pshape
        self._lshape = lshape
        self._per_frame = per_frame
        self.info = TrajectoryInfo(
            path=label,
            format="npz",
            species=species,
            n_frames=int(n_frames),
            frame_interval_fs=interval,
            temperature_k=self._scalar(small, "temperature_k"),
            lattice=lattice0,
            constant_lattice=constant,
            fixed_atoms=fixed,
            metadata={"keys": sorted(members), "positions_dtype": str(pdtype)},
            has_velocities=has_v,
        )

    def _open_member(self, zf: zipfile.ZipFile, key: str) -> IO[bytes]:
        try:
            return zf.open(self._members[key])
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
            raise _err(
                self.path, f"cannot open '{key}' in the archive ({_exc_text(exc)})"
            ) from None

    def _load_small(
        self, zf: zipfile.ZipFile, members: dict[str, str], keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        out = {}
        for key in keys:
            if key not in members:
                continue
            try:
                with zf.open(members[key]) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise _err(
                        self.path,
                        f"'{key}' is an object array; save it as a plain string/number array",
                    ) from None
                raise _err(self.path, f"'{key}' is unreadable ({_exc_text(exc)})") from None
            except (zipfile.BadZipFile, OSError, EOFError, zlib_error) as exc:
                raise _err(self.path, f"'{key}' is unreadable ({_exc_text(exc)})") from None
        return out

    def _scalar(self, small: dict[str, np.ndarray], key: str) -> float | None:
        if key not in small:
            return None
        arr = small[key]
        if arr.size != 1:
            raise _err(self.path, f"'{key}' has shape {arr.shape}, expected a scalar")
        value = _float_or_none(arr)
        if value is None:
            raise _err(self.path, f"'{key}' is not a finite number")
        return value

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._blocks(chunk_frames, velocities=False)

    def _iter_velocity_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, ...]]:
        return self._blocks(chunk_frames, velocities=True)

    def _blocks(self, chunk_frames: int, velocities: bool) -> Iterator[tuple[np.ndarray, ...]]:
        label = str(self.path)
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _err(self.path, f"not a readable .npz archive ({_exc_text(exc)})") from None
        with zf, contextlib.ExitStack() as stack:
            fp = stack.enter_context(self._open_member(zf, "positions"))
            pshape, pdtype = _npy_header(fp, f"{label}[positions]")
            if pshape != self._pshape:
                raise _err(self.path, "'positions' changed on disk while reading")
            streams: list[Iterator[np.ndarray]] = [
                _iter_npy_rows(fp, pshape, pdtype, chunk_frames, f"{label}[positions]")
            ]
            if self._per_frame:
                lfp = stack.enter_context(self._open_member(zf, "lattice"))
                _, ldtype = _npy_header(lfp, f"{label}[lattice]", allow_int=True)
                streams.append(
                    _iter_npy_rows(lfp, self._lshape, ldtype, chunk_frames, f"{label}[lattice]")
                )
            if velocities:
                vfp = stack.enter_context(self._open_member(zf, "velocities"))
                vshape, vdtype = _npy_header(vfp, f"{label}[velocities]")
                if vshape != self._pshape:
                    raise _err(self.path, "'velocities' changed on disk while reading")
                streams.append(
                    _iter_npy_rows(vfp, vshape, vdtype, chunk_frames, f"{label}[velocities]")
                )
            lat0 = self.info.lattice
            for rows in zip(*streams, strict=True):
                pos = rows[0]
                lat = rows[1] if self._per_frame else np.repeat(lat0[None], len(pos), axis=0)
                yield (pos, lat, rows[-1]) if velocities else (pos, lat)


class NpySource(TrajectorySource):
    """Bare ``.npy`` coordinates ``(frames, atoms, 3)`` + a structure file."""

    def __init__(self, path: PathLike, structure: PathLike | None, coords: CoordsMode = "auto"):
        self.path = _check_file(path)
        label = str(self.path)
        if structure is None:
            raise _err(
                self.path,
                "a bare .npy holds only coordinates; pass the matching structure file "
                "(structure=..., e.g. a CIF or POSCAR) for species and lattice",
            )
        struct_path = _check_file(structure)
        mode = str(coords).lower()
        if mode not in ("auto", "fractional", "cartesian"):
            raise UserInputError(
                f"coords must be 'auto', 'fractional' or 'cartesian', got {coords!r}"
            )
        st = _read_structure_file(struct_path)
        species = _structure_species(st, struct_path)
        lattice = _lattice_ok(st.lattice.matrix, struct_path)
        try:
            with open(self.path, "rb") as fp:
                shape, dtype = _npy_header(fp, label)
                if len(shape) != 3 or shape[2] != 3:
                    raise _err(self.path, f"array has shape {shape}, expected (frames, atoms, 3)")
                if shape[0] == 0:
                    raise _err(self.path, "contains zero frames")
                if shape[1] != len(species):
                    raise _err(
                        self.path,
                        f"{shape[1]} atoms per frame but {struct_path.name} has {len(species)} sites",
                    )
                first = next(_iter_npy_rows(fp, shape, dtype, 1, label))[0]
        except OSError as exc:
            raise _err(self.path, f"cannot read ({_exc_text(exc)})") from None
        detected = None
        if mode == "auto":
            in_unit = bool(np.all((first >= -0.5) & (first < 1.5)))
            min_len = float(np.min(np.linalg.norm(lattice, axis=1)))
            if not in_unit:
                mode = "cartesian"
            elif min_len > 3.0:
                mode = "fractional"
            else:
                raise _err(
                    self.path,
                    "cannot tell fractional from Cartesian coordinates (small cell); "
                    "pass coords='fractional' or 'cartesian'",
                )
            detected = mode
        self._shape = shape
        self._dtype = dtype
        self._fractional = mode == "fractional"
        self.info = TrajectoryInfo(
            path=label,
            format="npy",
            species=species,
            n_frames=int(shape[0]),
            frame_interval_fs=None,
            temperature_k=None,
            lattice=lattice,
            constant_lattice=True,
            fixed_atoms=_fixed_from_selective(
                st.site_properties.get("selective_dynamics"), len(species), struct_path
            ),
            metadata={
                "structure": str(struct_path),
                "coords": mode,
                "coords_detected": detected,
                "dtype": str(dtype),
            },
        )

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        label = str(self.path)
        lat = self.info.lattice
        try:
            fp = open(self.path, "rb")
        except OSError as exc:
            raise _err(self.path, f"cannot read ({_exc_text(exc)})") from None
        with fp:
            shape, dtype = _npy_header(fp, label)
            if shape != self._shape:
                raise _err(self.path, "array changed on disk while reading")
            for block in _iter_npy_rows(fp, shape, dtype, chunk_frames, label):
                pos = block @ lat if self._fractional else block
                yield pos, np.repeat(lat[None], len(block), axis=0)


def _read_structure_file(path: Path) -> Any:
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(str(path))
    except Exception as exc:
        raise _err(path, f"cannot read the structure ({_exc_text(exc)})") from None


# --------------------------------------------------------------------------- concatenation


class ConcatenatedSource(TrajectorySource):
    """Consecutive segments of one run, read in order."""

    def __init__(self, sources: Sequence[TrajectorySource]):
        if not sources:
            raise UserInputError("no trajectory files given")
        self.sources = list(sources)
        first = self.sources[0].info
        for src in self.sources[1:]:
            i = src.info
            if i.n_atoms != first.n_atoms:
                raise _err(
                    i.path,
                    f"segment has {i.n_atoms} atoms but {first.path} has {first.n_atoms}",
                )
            if i.species != first.species:
                k = next(
                    j
                    for j, (a, b) in enumerate(zip(i.species, first.species, strict=True))
                    if a != b
                )
                raise _err(
                    i.path,
                    f"segment species differ from {first.path} (atom {k}: {i.species[k]} vs "
                    f"{first.species[k]})",
                )
        infos = [s.info for s in self.sources]
        ok, interval = _same([i.frame_interval_fs for i in infos])
        if not ok:
            raise _err(
                ", ".join(i.path for i in infos),
                "segments have different frame intervals "
                f"({', '.join(str(i.frame_interval_fs) for i in infos)} fs)",
            )
        ok, temperature = _same([i.temperature_k for i in infos])
        if not ok:
            raise _err(
                ", ".join(i.path for i in infos),
                "segments have different temperatures "
                f"({', '.join(str(i.temperature_k) for i in infos)} K)",
            )
        fixed_list = [i.fixed_atoms for i in infos if i.fixed_atoms is not None]
        fixed = None
        if fixed_list:
            fixed = fixed_list[0]
            if any(not np.array_equal(f, fixed) for f in fixed_list[1:]):
                raise _err(", ".join(i.path for i in infos), "segments fix different atoms")
        constant = all(i.constant_lattice for i in infos) and all(
            np.allclose(i.lattice, first.lattice, rtol=0, atol=1e-10) for i in infos
        )
        formats = list(dict.fromkeys(i.format for i in infos))
        has_v = all(i.has_velocities for i in infos)
        self.info = TrajectoryInfo(
            path=", ".join(i.path for i in infos),
            format="+".join(formats),
            species=list(first.species),
            n_frames=sum(i.n_frames for i in infos),
            frame_interval_fs=interval,
            temperature_k=temperature,
            lattice=np.array(first.lattice),
            constant_lattice=constant,
            fixed_atoms=None if fixed is None else np.array(fixed),
            metadata={
                "segments": [
                    {"path": i.path, "format": i.format, "n_frames": i.n_frames, **i.metadata}
                    for i in infos
                ],
                **{k: v for k, v in first.metadata.items() if k in ("min_obs", "specie")},
            },
            has_velocities=has_v,
        )

    def _iter_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for src in self.sources:
            it = src.iter_chunks(chunk_frames)
            with contextlib.closing(it):
                yield from it

    def _iter_velocity_blocks(self, chunk_frames: int) -> Iterator[tuple[np.ndarray, ...]]:
        for src in self.sources:
            it = src.iter_chunks(chunk_frames, velocities=True)
            with contextlib.closing(it):
                yield from it


# --------------------------------------------------------------------------- entry point


def _sniff(path: Path) -> str:
    """Format from the file name, then from the first bytes."""
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    if "xdatcar" in name:
        return "xdatcar"
    if base.endswith(".xml") or "vasprun" in base:
        return "vasprun"
    if base.endswith(".traj"):
        return "ase-traj"
    if base.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if base.endswith(".json"):
        return "json"
    if base.endswith(".npz"):
        return "npz"
    if base.endswith(".npy"):
        return "npy"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                head = g.read(4096)
    except (OSError, EOFError, zlib_error):
        head = b""
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(b"- of Ulm"):
        return "ase-traj"
    text = head.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("<?xml") or stripped.startswith("<modeling"):
        if "<modeling" in text:
            return "vasprun"
    if stripped.startswith("{"):
        return "json"
    lines = text.splitlines()
    if len(lines) >= 2 and lines[0].strip().isdigit() and "lattice=" in lines[1].lower():
        return "extxyz"
    if any(_CONFIG_RE.match(ln) and "configuration" in ln.lower() for ln in lines[5:10]):
        return "xdatcar"
    raise _err(
        path,
        "cannot tell the trajectory format from the name or content; pass format= one of "
        + ", ".join(SUPPORTED_FORMATS),
    )


def _open_one(
    path: PathLike,
    format: str | None,
    structure: PathLike | None,
    coords: CoordsMode,
) -> TrajectorySource:
    p = _check_file(path)
    if format is None:
        fmt = _sniff(p)
    else:
        key = str(format).strip().lower()
        if key not in _FORMAT_ALIASES:
            raise _err(p, f"unknown format {format!r}; supported: {', '.join(SUPPORTED_FORMATS)}")
        fmt = _FORMAT_ALIASES[key]
    if structure is not None and fmt != "npy":
        raise _err(p, f"structure= applies only to bare .npy coordinates, not {fmt}")
    if fmt == "json" or fmt in ("pymatgen-trajectory", "diffusion-analyzer"):
        data = _load_json(p)
        cls = data.get("@class")
        if fmt == "json":
            if cls == "Trajectory":
                fmt = "pymatgen-trajectory"
            elif cls == "DiffusionAnalyzer":
                fmt = "diffusion-analyzer"
            else:
                raise _err(
                    p,
                    f"JSON '@class' is {cls!r}; supported JSON are pymatgen 'Trajectory' and "
                    "'DiffusionAnalyzer'",
                )
        if fmt == "pymatgen-trajectory":
            return PymatgenTrajectorySource(p, data)
        return DiffusionAnalyzerSource(p, data)
    if fmt == "extxyz":
        return ExtxyzSource(p)
    if fmt == "ase-traj":
        return AseTrajSource(p)
    if fmt == "xdatcar":
        return XdatcarSource(p)
    if fmt == "vasprun":
        return VasprunSource(p)
    if fmt == "npz":
        return NpzSource(p)
    if fmt == "npy":
        return NpySource(p, structure, coords)
    raise _err(
        p, f"unknown format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}"
    )  # pragma: no cover


def open_trajectory(
    path: PathLike | Sequence[PathLike],
    format: str | None = None,
    *,
    structure: PathLike | None = None,
    coords: CoordsMode = "auto",
) -> TrajectorySource:
    """Open a trajectory file (or consecutive segments) for streaming.

    Parameters
    ----------
    path
        A file, or a list of files holding consecutive segments of one run (same
        atoms in the same order), concatenated in the given order.
    format
        One of :data:`SUPPORTED_FORMATS` (aliases: ``xyz``, ``traj``, ``xml``,
        ``json``…); sniffed from the name, then the content, when None.
    structure
        Structure file (CIF, POSCAR, … anything pymatgen reads) giving species and
        lattice for a bare ``.npy`` of coordinates.
    coords
        For ``.npy``: ``"fractional"``, ``"cartesian"`` or ``"auto"``.

    Returns
    -------
    TrajectorySource
        With ``.info`` (:class:`TrajectoryInfo`) and ``.iter_chunks()``.

    Raises
    ------
    ionflow.errors.UserInputError
        Missing file, unknown format, unreadable content, zero frames, inconsistent
        atoms — the message names the file.
    """
    if isinstance(path, str | Path):
        return _open_one(path, format, structure, coords)
    try:
        paths = list(path)
    except TypeError:
        raise UserInputError(f"expected a path or a list of paths, got {path!r}") from None
    if not paths:
        raise UserInputError("no trajectory files given")
    if len(paths) == 1:
        return _open_one(paths[0], format, structure, coords)
    return ConcatenatedSource([_open_one(p, format, structure, coords) for p in paths])
