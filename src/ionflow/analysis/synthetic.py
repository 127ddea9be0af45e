"""Synthetic MD trajectories with a known tracer diffusivity.

These generators are the independent ground truth for the calibration tests of the diffusion
analysis (MSD -> D -> sigma -> Arrhenius). They are vectorised numpy (plus
:func:`scipy.signal.lfilter` for the exact Ornstein-Uhlenbeck recursion), deterministic from a
seed, and produce *wrapped* Cartesian positions like real MD output.

Model
-----
Mobile ions (:func:`hopping_trajectory`)
    Each mobile ion's *site* performs a continuous-time random walk: hops form a Poisson
    process with rate ``hop_rate_per_ps`` and every hop moves the site by ``hop_length_a`` in a
    uniformly random 3D direction. The number of hops within one frame is Poisson distributed,
    so hop rates that are fast compared with the frame interval are still exact (it is a random
    walk of the site). The true tracer diffusivity is therefore

    ``D = hop_rate_per_ps * hop_length_a**2 / 6``  [A^2/ps], i.e. ``x 1e-4`` in cm^2/s.

Thermal rattling
    On top of its site every atom rattles with an Ornstein-Uhlenbeck process per axis
    (stationary std ``rattle_a`` for mobile ions, ``framework_rattle_a`` for the framework,
    correlation time ``rattle_time_ps``). This yields a short-time sub-linear MSD regime with
    an asymptotic intercept ``6 * rattle_a**2`` before the linear one.

Framework
    Framework atoms sit on random fixed sites (uniform in the box; overlaps are irrelevant for
    the purpose) and only rattle.

Centre-of-mass drift
    *All* atoms share one common drift, a 3D Brownian walk with per-axis amplitude
    ``drift_a_per_sqrt_ps`` (std of the drift after ``t`` ps is ``amp * sqrt(t)`` per axis).
    The analysis must remove it using the framework as reference; the reported true ``D`` is
    the diffusivity *without* the drift, i.e. relative to the framework.

Correlated hops
    With ``correlated_fraction = f > 0`` the mobile ions are paired ``(0, 1), (2, 3), ...`` and
    a fraction ``f`` of every ion's hops are collective: both ions of the pair hop together by
    the *same* vector. Each ion still hops at ``hop_rate_per_ps`` in total, so the tracer ``D``
    is unchanged, but the collective ("charge") diffusivity becomes ``D_sigma = D * (1 + f)``
    and the Haven ratio ``H_R = D / D_sigma = 1 / (1 + f)`` (1 for ``f = 0``, 0.5 for
    ``f = 1``).

Wrapping and unwrapping
    Positions are wrapped into the cubic box ``[0, box_a)``. Minimum-image unwrapping is exact
    as long as no atom moves more than ``box_a / 2`` between frames; with the defaults the
    per-frame move is a few Angstrom at the very worst (two aligned hops in one frame).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format
from numpy.typing import DTypeLike
from scipy.signal import lfilter

__all__ = [
    "SyntheticTrajectory",
    "caged_trajectory",
    "hopping_trajectory",
    "write_large_npz",
]

_A2_PER_PS_TO_CM2_PER_S = 1e-4
_DEFAULT_CHUNK_FRAMES = 10_000


@dataclass
class SyntheticTrajectory:
    """A synthetic trajectory together with its known transport truth.

    Attributes
    ----------
    positions : numpy.ndarray
        ``(n_frames, n_atoms, 3)`` Cartesian positions in Angstrom, wrapped into the cell.
    lattice : numpy.ndarray
        ``(3, 3)`` lattice in Angstrom, rows are the lattice vectors.
    species : list of str
        Element symbol per atom; mobile atoms first, then framework atoms.
    frame_interval_fs : float
        Time between stored frames in fs.
    temperature_k : float
        Nominal temperature in K (only metadata; the dynamics do not depend on it).
    mobile_species : str
        Element symbol of the mobile ions.
    diffusivity_cm2_s : float
        True tracer diffusivity of the mobile ions in cm^2/s, drift excluded (0.0 for caged).
    n_hops : int
        Total number of ion hops that occurred (a collective pair hop counts as two).
    """

    positions: np.ndarray
    lattice: np.ndarray
    species: list[str]
    frame_interval_fs: float
    temperature_k: float
    mobile_species: str
    diffusivity_cm2_s: float
    n_hops: int

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.positions.shape[0])

    @property
    def mobile_indices(self) -> np.ndarray:
        """Indices of the mobile atoms."""
        return np.flatnonzero(np.asarray(self.species) == self.mobile_species)

    def save_npz(self, path: str | os.PathLike[str], compressed: bool = False) -> None:
        """Write the trajectory in the ionflow ``.npz`` trajectory format.

        Parameters
        ----------
        path : str or os.PathLike
            Destination file (``.npz``).
        compressed : bool, optional
            Use ``numpy.savez_compressed`` instead of ``numpy.savez``.

        Notes
        -----
        Keys: ``positions`` (n_frames, n_atoms, 3) Angstrom, ``lattice`` (3, 3) Angstrom,
        ``species`` (n_atoms,) str, ``time_step_fs`` (the frame interval) and
        ``temperature_k``.
        """
        save = np.savez_compressed if compressed else np.savez
        save(
            path,
            positions=self.positions,
            lattice=np.asarray(self.lattice, dtype=np.float64),
            species=np.asarray(self.species, dtype=str),
            time_step_fs=np.float64(self.frame_interval_fs),
            temperature_k=np.float64(self.temperature_k),
        )


# --------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------

# A mobile-site process: called with (rng, n_frames_in_chunk, first_chunk) and returning the
# (n, n_mobile, 3) site positions (unwrapped, float64) of the chunk and the hops it contained.
_SiteProcess = Callable[[np.random.Generator, int, bool], tuple[np.ndarray, int]]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def _species_list(
    n_mobile: int, n_framework: int, mobile_species: str, framework_species: Sequence[str]
) -> list[str]:
    framework_species = (
        (framework_species,) if isinstance(framework_species, str) else tuple(framework_species)
    )
    if n_framework > 0 and not framework_species:
        raise ValueError("framework_species must not be empty when n_framework > 0")
    if mobile_species in framework_species:
        raise ValueError(f"mobile species {mobile_species!r} must not be a framework species")
    framework = [framework_species[i % len(framework_species)] for i in range(n_framework)]
    return [mobile_species] * n_mobile + framework


def _hop_sum(rng: np.random.Generator, counts: np.ndarray, hop_length_a: float) -> np.ndarray:
    """Sum of ``counts[...]`` random 3D vectors of length ``hop_length_a`` per cell.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    counts : numpy.ndarray
        Integer array of hop counts, any shape ``S``.
    hop_length_a : float
        Length of each hop in Angstrom.

    Returns
    -------
    numpy.ndarray
        ``S + (3,)`` float64 array of summed hop vectors.
    """
    flat = counts.ravel()
    total = int(flat.sum())
    out = np.zeros((flat.size, 3))
    if total:
        vec = rng.standard_normal((total, 3))
        vec *= hop_length_a / np.linalg.norm(vec, axis=1, keepdims=True)
        owner = np.repeat(np.arange(flat.size), flat)
        for axis in range(3):
            out[:, axis] = np.bincount(owner, weights=vec[:, axis], minlength=flat.size)
    return out.reshape(*counts.shape, 3)


def _random_walk_sites(
    rng: np.random.Generator,
    *,
    n_mobile: int,
    box_a: float,
    hop_length_a: float,
    hop_rate_per_ps: float,
    frame_interval_ps: float,
    correlated_fraction: float,
) -> _SiteProcess:
    """Continuous-time random walk of the mobile sites (optionally with pair hops)."""
    sites = rng.uniform(0.0, box_a, size=(n_mobile, 3))
    n_pairs = n_mobile // 2 if correlated_fraction > 0 else 0
    lam_single = (1.0 - correlated_fraction) * hop_rate_per_ps * frame_interval_ps
    lam_pair = correlated_fraction * hop_rate_per_ps * frame_interval_ps

    def step(rng: np.random.Generator, n: int, first: bool) -> tuple[np.ndarray, int]:
        nonlocal sites
        counts = rng.poisson(lam_single, size=(n, n_mobile))
        if first:
            counts[0] = 0
        disp = _hop_sum(rng, counts, hop_length_a)
        n_hops = int(counts.sum())
        if n_pairs:
            pair_counts = rng.poisson(lam_pair, size=(n, n_pairs))
            if first:
                pair_counts[0] = 0
            pair_disp = _hop_sum(rng, pair_counts, hop_length_a)
            disp[:, : 2 * n_pairs] += np.repeat(pair_disp, 2, axis=1)
            n_hops += 2 * int(pair_counts.sum())
        np.cumsum(disp, axis=0, out=disp)
        disp += sites
        sites = disp[-1].copy()
        return disp, n_hops

    return step


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniformly random proper rotation matrices, shape ``(n, 3, 3)``."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]
    return q


def _cage_sites(
    rng: np.random.Generator,
    *,
    n_mobile: int,
    box_a: float,
    cage_edge_a: float,
    n_cage_sites: int,
    hop_rate_per_ps: float,
    frame_interval_ps: float,
) -> _SiteProcess:
    """Each ion hops among ``n_cage_sites`` corners of its own regular tetrahedron."""
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
    tetra *= cage_edge_a / (2.0 * math.sqrt(2.0))  # edge length of the unit set is 2*sqrt(2)
    tetra = tetra[:n_cage_sites]
    tetra -= tetra.mean(axis=0)
    rot = _random_rotations(rng, n_mobile)
    centres = rng.uniform(0.0, box_a, size=(n_mobile, 3))
    vertices = centres[:, None, :] + np.einsum("kj,nij->nki", tetra, rot)  # (n_mobile, m, 3)
    current = rng.integers(0, n_cage_sites, size=n_mobile)
    lam = hop_rate_per_ps * frame_interval_ps

    def step(rng: np.random.Generator, n: int, first: bool) -> tuple[np.ndarray, int]:
        nonlocal current
        counts = rng.poisson(lam, size=(n, n_mobile))
        if first:
            counts[0] = 0
        flat = counts.ravel()
        total = int(flat.sum())
        # a hop to a uniformly chosen *other* corner = adding an offset in 1..m-1 (mod m)
        offsets = rng.integers(1, n_cage_sites, size=total)
        owner = np.repeat(np.arange(flat.size), flat)
        shift = np.bincount(owner, weights=offsets, minlength=flat.size).astype(np.int64)
        idx = (current + np.cumsum(shift.reshape(n, n_mobile), axis=0)) % n_cage_sites
        current = idx[-1].copy()
        chunk = vertices[np.arange(n_mobile)[None, :], idx]  # (n, n_mobile, 3)
        return chunk, total

    return step


class _TrajectoryStream:
    """Chunked generator of wrapped positions with carried state.

    The random numbers are drawn chunk by chunk in a fixed order, so the output for a given
    seed depends on ``chunk_frames`` but not on how the chunks are consumed.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        site_process: _SiteProcess,
        *,
        n_mobile: int,
        n_framework: int,
        box_a: float,
        rattle_a: float,
        rattle_time_ps: float,
        framework_rattle_a: float,
        drift_a_per_sqrt_ps: float,
        frame_interval_ps: float,
    ) -> None:
        self._rng = rng
        self._site_process = site_process
        self._box_a = box_a
        self._framework_sites = rng.uniform(0.0, box_a, size=(n_framework, 3))
        self._n_mobile = n_mobile
        self._n_atoms = n_mobile + n_framework
        self._sigma = np.concatenate(
            [np.full(n_mobile, float(rattle_a)), np.full(n_framework, float(framework_rattle_a))]
        )[None, :, None]
        self._phi = math.exp(-frame_interval_ps / rattle_time_ps) if rattle_time_ps > 0 else 0.0
        self._innovation = math.sqrt(max(0.0, 1.0 - self._phi**2))
        self._drift_step_a = drift_a_per_sqrt_ps * math.sqrt(frame_interval_ps)
        self._ou_last: np.ndarray | None = None
        self._drift_last = np.zeros(3)
        self.n_hops = 0

    def chunks(self, n_frames: int, chunk_frames: int) -> Iterator[np.ndarray]:
        """Yield wrapped float64 position chunks ``(n, n_atoms, 3)`` covering ``n_frames``."""
        done = 0
        while done < n_frames:
            n = min(chunk_frames, n_frames - done)
            yield self._chunk(n, first=done == 0)
            done += n

    def _chunk(self, n: int, first: bool) -> np.ndarray:
        rng = self._rng
        pos = np.empty((n, self._n_atoms, 3))
        mobile, hops = self._site_process(rng, n, first)
        self.n_hops += hops
        pos[:, : self._n_mobile] = mobile
        pos[:, self._n_mobile :] = self._framework_sites

        # Ornstein-Uhlenbeck rattling, exact AR(1) discretisation x_k = phi x_{k-1} + e_k.
        noise = rng.standard_normal((n, self._n_atoms, 3))
        if first:
            noise[0] *= self._sigma[0]  # stationary start
            noise[1:] *= self._sigma * self._innovation
            zi = np.zeros((1, self._n_atoms, 3))
        else:
            noise *= self._sigma * self._innovation
            zi = self._phi * self._ou_last[None]
        ou, _ = lfilter([1.0], [1.0, -self._phi], noise, axis=0, zi=zi)
        self._ou_last = ou[-1].copy()
        pos += ou

        # common centre-of-mass drift (Brownian), shared by every atom
        drift = rng.standard_normal((n, 3)) * self._drift_step_a
        if first:
            drift[0] = 0.0
        np.cumsum(drift, axis=0, out=drift)
        drift += self._drift_last
        self._drift_last = drift[-1].copy()
        pos += drift[:, None, :]

        np.mod(pos, self._box_a, out=pos)
        return pos


def _wrap_cast(chunk: np.ndarray, box_a: float, dtype: np.dtype) -> np.ndarray:
    """Cast wrapped positions to ``dtype`` keeping them strictly inside ``[0, box_a)``."""
    out = chunk.astype(dtype, copy=False)
    out[out >= dtype.type(box_a)] = 0  # rounding up of values just below box_a
    return out


def _common_checks(
    *,
    n_frames: int,
    n_mobile: int,
    n_framework: int,
    box_a: float,
    hop_rate_per_ps: float,
    rattle_a: float,
    rattle_time_ps: float,
    framework_rattle_a: float,
    drift_a_per_sqrt_ps: float,
    frame_interval_fs: float,
) -> None:
    if n_frames < 1 or n_mobile < 1 or n_framework < 0:
        raise ValueError("need n_frames >= 1, n_mobile >= 1 and n_framework >= 0")
    _check_positive(box_a=box_a, frame_interval_fs=frame_interval_fs)
    _check_non_negative(
        hop_rate_per_ps=hop_rate_per_ps,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
    )


def _hopping_stream(
    *,
    n_frames: int,
    n_mobile: int,
    n_framework: int,
    box_a: float,
    hop_length_a: float,
    hop_rate_per_ps: float,
    rattle_a: float,
    rattle_time_ps: float,
    framework_rattle_a: float,
    drift_a_per_sqrt_ps: float,
    frame_interval_fs: float,
    correlated_fraction: float,
    seed: int,
) -> tuple[_TrajectoryStream, float]:
    _common_checks(
        n_frames=n_frames,
        n_mobile=n_mobile,
        n_framework=n_framework,
        box_a=box_a,
        hop_rate_per_ps=hop_rate_per_ps,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
        frame_interval_fs=frame_interval_fs,
    )
    _check_non_negative(hop_length_a=hop_length_a)
    if hop_length_a >= box_a / 2:
        raise ValueError("hop_length_a must be < box_a / 2 for minimum-image unwrapping")
    if not 0.0 <= correlated_fraction <= 1.0:
        raise ValueError("correlated_fraction must be in [0, 1]")
    if correlated_fraction > 0 and n_mobile % 2:
        raise ValueError("correlated_fraction > 0 pairs the mobile ions: n_mobile must be even")
    dt_ps = frame_interval_fs * 1e-3
    rng = np.random.default_rng(seed)
    sites = _random_walk_sites(
        rng,
        n_mobile=n_mobile,
        box_a=box_a,
        hop_length_a=hop_length_a,
        hop_rate_per_ps=hop_rate_per_ps,
        frame_interval_ps=dt_ps,
        correlated_fraction=correlated_fraction,
    )
    stream = _TrajectoryStream(
        rng,
        sites,
        n_mobile=n_mobile,
        n_framework=n_framework,
        box_a=box_a,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
        frame_interval_ps=dt_ps,
    )
    diffusivity_cm2_s = hop_rate_per_ps * hop_length_a**2 / 6.0 * _A2_PER_PS_TO_CM2_PER_S
    return stream, diffusivity_cm2_s


def _collect(
    stream: _TrajectoryStream, n_frames: int, n_atoms: int, box_a: float, dtype: np.dtype
) -> np.ndarray:
    positions = np.empty((n_frames, n_atoms, 3), dtype=dtype)
    start = 0
    for chunk in stream.chunks(n_frames, _DEFAULT_CHUNK_FRAMES):
        positions[start : start + len(chunk)] = _wrap_cast(chunk, box_a, dtype)
        start += len(chunk)
    return positions


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def hopping_trajectory(
    *,
    n_frames: int,
    n_mobile: int = 32,
    n_framework: int = 64,
    box_a: float = 12.0,
    hop_length_a: float = 2.5,
    hop_rate_per_ps: float = 2.0,
    rattle_a: float = 0.3,
    rattle_time_ps: float = 0.05,
    framework_rattle_a: float = 0.1,
    drift_a_per_sqrt_ps: float = 0.05,
    frame_interval_fs: float = 20.0,
    temperature_k: float = 600.0,
    mobile_species: str = "Li",
    framework_species: Sequence[str] = ("P", "S"),
    correlated_fraction: float = 0.0,
    seed: int = 0,
    dtype: DTypeLike = np.float64,
) -> SyntheticTrajectory:
    """Trajectory of mobile ions hopping as a random walk through a rattling framework.

    Parameters
    ----------
    n_frames : int
        Number of stored frames.
    n_mobile, n_framework : int
        Number of mobile and framework atoms (mobile first in the atom order).
    box_a : float
        Edge of the cubic cell in Angstrom.
    hop_length_a : float
        Length of one hop in Angstrom (must be ``< box_a / 2``).
    hop_rate_per_ps : float
        Poisson hop rate per mobile ion, 1/ps.
    rattle_a : float
        Stationary per-axis std of the mobile-ion rattling about its site, Angstrom.
    rattle_time_ps : float
        Correlation time of the Ornstein-Uhlenbeck rattling (all atoms), ps. 0 gives white
        noise.
    framework_rattle_a : float
        Stationary per-axis std of the framework rattling, Angstrom.
    drift_a_per_sqrt_ps : float
        Amplitude of the common centre-of-mass Brownian drift, Angstrom / sqrt(ps) per axis.
    frame_interval_fs : float
        Time between frames, fs.
    temperature_k : float
        Nominal temperature stored as metadata, K.
    mobile_species : str
        Symbol of the mobile ions.
    framework_species : sequence of str
        Framework symbols, assigned cyclically to the framework atoms.
    correlated_fraction : float
        Fraction ``f`` of hops that are collective pair hops (see module docstring): tracer D
        unchanged, Haven ratio ``1 / (1 + f)``. Requires an even ``n_mobile`` when ``> 0``.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the output is fully determined by it.
    dtype : numpy dtype
        Floating dtype of ``positions`` (computation is float64).

    Returns
    -------
    SyntheticTrajectory
        With ``diffusivity_cm2_s = hop_rate_per_ps * hop_length_a**2 / 6 * 1e-4``.

    Notes
    -----
    The generation runs in chunks of 10 000 frames, exactly like :func:`write_large_npz` with
    its default ``chunk_frames``, so both give identical positions for the same seed and dtype.
    """
    dtype = np.dtype(dtype)
    stream, diffusivity = _hopping_stream(
        n_frames=n_frames,
        n_mobile=n_mobile,
        n_framework=n_framework,
        box_a=box_a,
        hop_length_a=hop_length_a,
        hop_rate_per_ps=hop_rate_per_ps,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
        frame_interval_fs=frame_interval_fs,
        correlated_fraction=correlated_fraction,
        seed=seed,
    )
    positions = _collect(stream, n_frames, n_mobile + n_framework, box_a, dtype)
    return SyntheticTrajectory(
        positions=positions,
        lattice=np.eye(3) * box_a,
        species=_species_list(n_mobile, n_framework, mobile_species, framework_species),
        frame_interval_fs=float(frame_interval_fs),
        temperature_k=float(temperature_k),
        mobile_species=mobile_species,
        diffusivity_cm2_s=float(diffusivity),
        n_hops=stream.n_hops,
    )


def caged_trajectory(
    *,
    n_frames: int,
    n_mobile: int = 32,
    n_framework: int = 64,
    box_a: float = 12.0,
    cage_edge_a: float = 2.0,
    n_cage_sites: int = 4,
    hop_rate_per_ps: float = 2.0,
    rattle_a: float = 0.3,
    rattle_time_ps: float = 0.05,
    framework_rattle_a: float = 0.1,
    drift_a_per_sqrt_ps: float = 0.05,
    frame_interval_fs: float = 20.0,
    temperature_k: float = 600.0,
    mobile_species: str = "Li",
    framework_species: Sequence[str] = ("P", "S"),
    seed: int = 0,
    dtype: DTypeLike = np.float64,
) -> SyntheticTrajectory:
    """Trajectory of mobile ions that hop only inside their own cage (true D = 0).

    Each mobile ion owns a regular tetrahedron of edge ``cage_edge_a`` (random centre and
    orientation) and hops, as a Poisson process with rate ``hop_rate_per_ps``, to a uniformly
    chosen *other* one of the first ``n_cage_sites`` corners. Rattling, framework and the
    common drift are as in :func:`hopping_trajectory`.

    Parameters
    ----------
    n_frames, n_mobile, n_framework, box_a : see :func:`hopping_trajectory`
    cage_edge_a : float
        Edge of the cage tetrahedron, Angstrom.
    n_cage_sites : int
        Number of cage corners visited: 2 (an edge), 3 (a face) or 4 (the tetrahedron).
    hop_rate_per_ps, rattle_a, rattle_time_ps, framework_rattle_a : see
        :func:`hopping_trajectory`
    drift_a_per_sqrt_ps, frame_interval_fs, temperature_k : see :func:`hopping_trajectory`
    mobile_species, framework_species, seed, dtype : see :func:`hopping_trajectory`

    Returns
    -------
    SyntheticTrajectory
        With ``diffusivity_cm2_s = 0.0``.

    Notes
    -----
    The drift-free MSD plateaus at
    ``(n_cage_sites - 1) / n_cage_sites * cage_edge_a**2 + 6 * rattle_a**2`` (plus
    ``6 * framework_rattle_a**2 / n_framework`` from a framework-referenced drift removal),
    reached after a few ``1 / hop_rate_per_ps`` and ``rattle_time_ps``.
    """
    _common_checks(
        n_frames=n_frames,
        n_mobile=n_mobile,
        n_framework=n_framework,
        box_a=box_a,
        hop_rate_per_ps=hop_rate_per_ps,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
        frame_interval_fs=frame_interval_fs,
    )
    if n_cage_sites not in (2, 3, 4):
        raise ValueError(f"n_cage_sites must be 2, 3 or 4, got {n_cage_sites!r}")
    _check_positive(cage_edge_a=cage_edge_a)
    if cage_edge_a >= box_a / 2:
        raise ValueError("cage_edge_a must be < box_a / 2")
    dtype = np.dtype(dtype)
    dt_ps = frame_interval_fs * 1e-3
    rng = np.random.default_rng(seed)
    sites = _cage_sites(
        rng,
        n_mobile=n_mobile,
        box_a=box_a,
        cage_edge_a=cage_edge_a,
        n_cage_sites=n_cage_sites,
        hop_rate_per_ps=hop_rate_per_ps,
        frame_interval_ps=dt_ps,
    )
    stream = _TrajectoryStream(
        rng,
        sites,
        n_mobile=n_mobile,
        n_framework=n_framework,
        box_a=box_a,
        rattle_a=rattle_a,
        rattle_time_ps=rattle_time_ps,
        framework_rattle_a=framework_rattle_a,
        drift_a_per_sqrt_ps=drift_a_per_sqrt_ps,
        frame_interval_ps=dt_ps,
    )
    positions = _collect(stream, n_frames, n_mobile + n_framework, box_a, dtype)
    return SyntheticTrajectory(
        positions=positions,
        lattice=np.eye(3) * box_a,
        species=_species_list(n_mobile, n_framework, mobile_species, framework_species),
        frame_interval_fs=float(frame_interval_fs),
        temperature_k=float(temperature_k),
        mobile_species=mobile_species,
        diffusivity_cm2_s=0.0,
        n_hops=stream.n_hops,
    )


def write_large_npz(
    path: str | os.PathLike[str],
    *,
    n_frames: int,
    n_atoms: int,
    n_mobile: int,
    chunk_frames: int = _DEFAULT_CHUNK_FRAMES,
    seed: int = 0,
    dtype: DTypeLike = np.float32,
    **kw: object,
) -> float:
    """Stream a :func:`hopping_trajectory` straight to an ``.npz`` with bounded memory.

    The ``positions`` member is written chunk by chunk into an uncompressed (``ZIP_STORED``),
    ZIP64 archive, so peak memory is a few times one chunk regardless of ``n_frames``. The
    file has the same keys as :meth:`SyntheticTrajectory.save_npz` and is readable with
    ``numpy.load``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.npz`` file (overwritten).
    n_frames : int
        Number of frames.
    n_atoms : int
        Total number of atoms; ``n_atoms - n_mobile`` are framework atoms.
    n_mobile : int
        Number of mobile ions.
    chunk_frames : int
        Frames generated and written per chunk. With the default (10 000) the positions are
        identical to ``hopping_trajectory(..., seed=seed, dtype=dtype)``.
    seed : int
        Random seed.
    dtype : numpy dtype
        Stored dtype of the positions (float32 by default: 12 bytes per atom and frame).
    **kw
        Any other keyword of :func:`hopping_trajectory` (``box_a``, ``hop_rate_per_ps``,
        ``frame_interval_fs``, ``temperature_k``, ``mobile_species``, ...).

    Returns
    -------
    float
        The true tracer diffusivity of the mobile ions in cm^2/s.
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    n_framework = n_atoms - n_mobile
    if n_framework < 0:
        raise ValueError("n_atoms must be >= n_mobile")
    dtype = np.dtype(dtype)
    params = dict(
        box_a=12.0,
        hop_length_a=2.5,
        hop_rate_per_ps=2.0,
        rattle_a=0.3,
        rattle_time_ps=0.05,
        framework_rattle_a=0.1,
        drift_a_per_sqrt_ps=0.05,
        frame_interval_fs=20.0,
        correlated_fraction=0.0,
    )
    meta = dict(temperature_k=600.0, mobile_species="Li", framework_species=("P", "S"))
    for key, value in kw.items():
        if key in params:
            params[key] = value
        elif key in meta:
            meta[key] = value
        else:
            raise TypeError(f"write_large_npz() got an unexpected keyword argument {key!r}")
    stream, diffusivity = _hopping_stream(
        n_frames=n_frames, n_mobile=n_mobile, n_framework=n_framework, seed=seed, **params
    )
    species = _species_list(
        n_mobile, n_framework, meta["mobile_species"], meta["framework_species"]
    )
    box_a = float(params["box_a"])

    header = npy_format.header_data_from_array_1_0(np.empty((0, n_atoms, 3), dtype=dtype))
    header["shape"] = (n_frames, n_atoms, 3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("positions.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_2_0(member, header)
            for chunk in stream.chunks(n_frames, chunk_frames):
                member.write(memoryview(np.ascontiguousarray(_wrap_cast(chunk, box_a, dtype))))
                del chunk
        small = {
            "lattice": np.eye(3) * box_a,
            "species": np.asarray(species, dtype=str),
            "time_step_fs": np.float64(params["frame_interval_fs"]),
            "temperature_k": np.float64(meta["temperature_k"]),
        }
        for name, array in small.items():
            with zf.open(f"{name}.npy", "w") as member:
                npy_format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return float(diffusivity)
