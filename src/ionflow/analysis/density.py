"""Time-averaged probability density of the mobile ions: sites and pathway percolation.

Seed 003 draws Li pathways as iso-surfaces of the Li probability density ("the fraction
of time each spatial location is occupied"); this analysis makes the picture a file and
two numbers: where the ions sit (``sites_frac``) and whether the pathways connect
(``percolation_dimension``).

Frame of reference
------------------
Each mobile ion's position at frame t is taken as its wrapped position *minus the
drift of the framework* (the drift-reference atoms of the streamed pass), i.e. its
first-frame position plus its drift-removed unwrapped displacement, wrapped into the cell
of the first frame. Fractional coordinates are used (with each frame's own cell, so an
NPT run's density lives in the average cell's fractional frame). The framework then sits
where it sat in frame 0, which is the structure written in the file's header.

Grid and file
-------------
Voxel counts on an ``nx × ny × nz`` grid (``grid_spacing_a``, default 0.2 Å; ``n_i =
max(1, round(|a_i| / spacing))``); a position is counted at its nearest grid point
(VASP's convention: grid point ``i`` is at fractional ``i/n``). Memory is the grid. The
file is VASP CHGCAR volumetric data (read by VESTA and pymatgen ``Chgcar``) holding the
**raw** (unsmoothed) time-averaged density in the CHGCAR convention ρ·V_cell, so that
``Σ values / (nx·ny·nz)`` — pymatgen's and VASP's integral — equals the number of mobile
ions.

Sites
-----
For sites and percolation the density is smoothed with a periodic Gaussian of
``smooth_a`` (default 0.3 Å; per grid axis, exact for orthogonal cells). Sites are local
maxima of the smoothed density (3×3×3 neighbourhood, periodic) at least
``site_min_ratio`` (default 3) times the mean mobile-ion density ρ̄ = N/V, merged
greedily from the highest down: a maximum closer than ``merge_radius_a`` (default
1.0 Å, minimum image over the 27 neighbouring cells) to a higher, kept maximum is dropped.
Positions are refined to sub-voxel precision by a parabola through the log density along
each grid axis (exact for a Gaussian peak). ``site_occupancy`` is the mean number of ions
within ``merge_radius_a`` / 2 of each site.

Percolation
-----------
The region where the smoothed density ≥ L is labelled into face-connected components
with periodic boundaries (scipy labelling of the box, then a union–find over the faces
that records, for each component, the lattice translations by which it reaches its own
periodic image: its wrapping vectors). A component percolates along a direction when it
connects to its own image; the *dimension* is the rank of its wrapping vectors
(0 isolated pockets/cages, 1 channels, 2 layers, 3 a 3-D network), the network's
dimension is the largest over components. Levels are in units of ρ̄ (1 = the density of
ions spread uniformly over the cell). ``percolation_dimension`` is at ``iso_level``
(default 1.0·ρ̄: "where an ion is more likely than if spread uniformly");
``percolation_levels`` gives, for d = 1, 2, 3, the highest level at which the network
still percolates in ≥ d dimensions (bisection on log L, 1 %), and, with the temperature,
``percolation_barriers_ev`` the free-energy barrier that level implies,
k_B·T·ln(ρ_max/L) (the density at the bottleneck of the best path relative to the most
probable point). Levels below the noise floor (``noise_floor_rel``: the smoothed density
that ``NOISE_COUNTS`` = 10 samples in the Gaussian's effective volume (4π)^{3/2}σ³ give;
samples from consecutive frames are correlated, so the floor is optimistic) are not
resolved: a dimension that needs them is reported as null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.stream import FrameChunk, StreamedAnalysis, TrajectoryContext, register
from ionflow.errors import UserInputError

BOLTZMANN_EV_K = 8.617333262e-5

DEFAULT_GRID_SPACING_A = 0.2
DEFAULT_SMOOTH_A = 0.3
DEFAULT_MERGE_RADIUS_A = 1.0
DEFAULT_SITE_MIN_RATIO = 3.0
DEFAULT_ISO_LEVEL = 1.0
#: Samples in the smoothing kernel's effective volume below which a density is noise.
NOISE_COUNTS = 10.0
#: Relative precision of the bisection for the percolation levels.
LEVEL_PRECISION = 0.01


# ----------------------------------------------------------------------------- geometry


def grid_shape(lattice: np.ndarray, spacing_a: float) -> tuple[int, int, int]:
    """Grid points along each lattice vector for a target spacing (Å)."""
    if not (spacing_a > 0 and math.isfinite(spacing_a)):
        raise UserInputError(f"grid spacing must be > 0 Å, got {spacing_a}")
    lengths = np.linalg.norm(np.asarray(lattice, dtype=float), axis=1)
    shape = tuple(int(max(1, round(x / spacing_a))) for x in lengths)
    if math.prod(shape) > 400_000_000:
        raise UserInputError(
            f"grid {shape} for spacing {spacing_a} Å is too large; use a coarser spacing"
        )
    return shape  # type: ignore[return-value]


_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])


def min_image_distances(a_frac: np.ndarray, b_frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """(n, m) shortest periodic distances (Å) between fractional points, over 27 images."""
    a = np.atleast_2d(np.asarray(a_frac, dtype=float))
    b = np.atleast_2d(np.asarray(b_frac, dtype=float))
    d = a[:, None, :] - b[None, :, :]
    d -= np.round(d)
    best = np.full(d.shape[:2], np.inf)
    lat = np.asarray(lattice, dtype=float)
    for img in _IMAGES:
        cart = (d + img) @ lat
        np.minimum(best, np.sqrt(np.einsum("nmi,nmi->nm", cart, cart)), out=best)
    return best


def min_image_vectors(a_frac: np.ndarray, b_frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """(n, 3) shortest periodic Cartesian vectors b − a (Å) for paired points."""
    d = np.asarray(b_frac, float) - np.asarray(a_frac, float)
    d -= np.round(d)
    lat = np.asarray(lattice, dtype=float)
    cands = (d[:, None, :] + _IMAGES[None]) @ lat  # (n, 27, 3)
    best = np.argmin(np.einsum("nki,nki->nk", cands, cands), axis=1)
    return cands[np.arange(len(d)), best]


def framework_fractional(chunk: FrameChunk, indices: np.ndarray) -> np.ndarray:
    """(k, len(indices), 3) fractional positions in [0, 1) with the reference drift removed
    (each frame's own cell)."""
    pos = chunk.positions[:, indices] - chunk.drift[:, None, :]
    lat = chunk.lattices
    if lat.ndim == 2:
        frac = pos @ np.linalg.inv(lat)
    else:
        frac = np.einsum("fai,fij->faj", pos, np.linalg.inv(lat))
    return frac - np.floor(frac)


# ----------------------------------------------------------------------------- grid


class DensityGrid:
    """Counts of fractional positions at their nearest grid point (memory: the grid)."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(x) for x in shape)
        self.counts = np.zeros(math.prod(self.shape), dtype=np.float64)
        self.n_frames = 0

    def add(self, frac: np.ndarray) -> None:
        """Add frames of fractional positions (k, n, 3)."""
        frac = np.asarray(frac)
        if frac.size == 0:
            return
        n = np.array(self.shape)
        idx = np.floor(frac.reshape(-1, 3) * n + 0.5).astype(np.int64) % n
        flat = (idx[:, 0] * n[1] + idx[:, 1]) * n[2] + idx[:, 2]
        self.counts += np.bincount(flat, minlength=self.counts.size)
        self.n_frames += int(frac.shape[0])

    def chgcar_values(self) -> np.ndarray:
        """(nx, ny, nz) time-averaged density × V_cell (CHGCAR convention: Σ/N_grid = ions)."""
        n_grid = self.counts.size
        return (self.counts * (n_grid / max(self.n_frames, 1))).reshape(self.shape)


def smooth_density(values: np.ndarray, lattice: np.ndarray, sigma_a: float) -> np.ndarray:
    """Periodic Gaussian smoothing (σ in Å, per grid axis); preserves the sum."""
    if not sigma_a or sigma_a <= 0:
        return np.asarray(values, dtype=float)
    from scipy import ndimage

    lengths = np.linalg.norm(np.asarray(lattice, dtype=float), axis=1)
    spacing = lengths / np.array(values.shape)
    return ndimage.gaussian_filter(
        np.asarray(values, dtype=float), sigma=sigma_a / spacing, mode="wrap", truncate=3.0
    )


def noise_floor_rel(n_frames: int, n_mobile: int, volume_a3: float, shape, sigma_a: float) -> float:
    """The smoothed density (in units of ρ̄) that NOISE_COUNTS samples give (module doc)."""
    kernel_volume = (
        (4 * math.pi) ** 1.5 * sigma_a**3
        if sigma_a and sigma_a > 0
        else volume_a3 / math.prod(shape)
    )
    rho_floor = NOISE_COUNTS / (max(n_frames, 1) * kernel_volume)
    return rho_floor * volume_a3 / max(n_mobile, 1)


# ----------------------------------------------------------------------------- sites


def _refine(sm: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sub-voxel offset (voxels, |·| ≤ 0.5) of a peak by a log-parabola along each axis."""
    shape = np.array(sm.shape)
    out = np.zeros(3)
    for ax in range(3):
        if shape[ax] < 3:
            continue
        lo, hi = peak.copy(), peak.copy()
        lo[ax] = (lo[ax] - 1) % shape[ax]
        hi[ax] = (hi[ax] + 1) % shape[ax]
        f0, fm, fp = sm[tuple(peak)], sm[tuple(lo)], sm[tuple(hi)]
        if min(f0, fm, fp) <= 0:
            continue
        l0, lm, lp = math.log(f0), math.log(fm), math.log(fp)
        den = lm - 2 * l0 + lp
        if den < 0:
            out[ax] = float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))
    return out


def find_sites(
    density_rel: np.ndarray,
    lattice: np.ndarray,
    *,
    merge_radius_a: float = DEFAULT_MERGE_RADIUS_A,
    min_ratio: float = DEFAULT_SITE_MIN_RATIO,
    max_candidates: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Sites = merged maxima of a (smoothed) density in units of ρ̄ (module docstring).

    Returns (fractional positions (n, 3) in [0, 1), peak heights in units of ρ̄), highest
    first.
    """
    from scipy import ndimage

    sm = np.asarray(density_rel, dtype=float)
    maxf = ndimage.maximum_filter(sm, size=3, mode="wrap")
    cand = np.argwhere((sm >= maxf) & (sm >= min_ratio))
    if cand.size == 0:
        return np.zeros((0, 3)), np.zeros(0)
    heights = sm[tuple(cand.T)]
    order = np.argsort(-heights, kind="stable")[:max_candidates]
    cand, heights = cand[order], heights[order]
    shape = np.array(sm.shape)
    frac = cand / shape
    kept: list[int] = []
    kept_frac = np.zeros((0, 3))
    for i in range(len(cand)):
        if kept and min_image_distances(frac[i], kept_frac, lattice).min() < merge_radius_a:
            continue
        kept.append(i)
        kept_frac = np.vstack([kept_frac, frac[i]])
    sites = np.array([(cand[i] + _refine(sm, cand[i])) / shape for i in kept]) % 1.0
    return sites, heights[kept]


def site_occupancy(
    ions_per_voxel: np.ndarray, sites_frac: np.ndarray, lattice: np.ndarray, radius_a: float
) -> np.ndarray:
    """Mean number of ions within ``radius_a`` of each site, from a grid of mean ions per
    voxel (counts / frames)."""
    shape = np.array(ions_per_voxel.shape)
    lengths = np.linalg.norm(lattice, axis=1)
    reach = np.ceil(radius_a / (lengths / shape) + 1).astype(int)
    offs = np.stack(
        np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    out = np.zeros(len(sites_frac))
    for s, f in enumerate(sites_frac):
        centre = np.round(f * shape).astype(int)
        pts = centre + offs
        d = (pts / shape - f) @ lattice
        sel = np.einsum("ni,ni->n", d, d) <= radius_a**2
        idx = pts[sel] % shape
        out[s] = ions_per_voxel[tuple(idx.T)].sum()
    return out


# ----------------------------------------------------------------------------- percolation


def _find(parent: np.ndarray, off: np.ndarray, i: int) -> tuple[int, np.ndarray]:
    """Root of ``i`` and the image of ``i`` relative to its root (path compression)."""
    path = []
    while parent[i] != i:
        path.append(i)
        i = parent[i]
    root = i
    acc = np.zeros(3, dtype=np.int64)
    for node in reversed(path):  # from just below the root down to the start
        acc = acc + off[node]
        off[node] = acc
        parent[node] = root
    return root, (off[path[0]].copy() if path else np.zeros(3, dtype=np.int64))


def periodic_components(mask: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Face-connected components of a periodic boolean grid and their dimensions.

    Returns (labels of the box labelling, {root label: dimension}); every box label
    maps to its periodic component through the union–find (see
    :func:`percolation_dimension`).
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask)  # 6-connectivity (faces)
    parent = np.arange(n + 1)
    off = np.zeros((n + 1, 3), dtype=np.int64)
    wraps: dict[int, list[np.ndarray]] = {}
    for axis in range(3):
        last = np.take(labels, -1, axis=axis)
        first = np.take(labels, 0, axis=axis)
        both = (last > 0) & (first > 0)
        if not both.any():
            continue
        pairs = np.unique(np.stack([last[both], first[both]], axis=1), axis=0)
        e = np.zeros(3, dtype=np.int64)
        e[axis] = 1
        for la, lb in pairs:
            # a voxel of box label la (image 0) touches one of lb in the image +e
            ra, oa = _find(parent, off, int(la))
            rb, ob = _find(parent, off, int(lb))
            w = oa + e - ob  # image of lb's root relative to la's root
            if ra == rb:
                if np.any(w):
                    wraps.setdefault(ra, []).append(w)
            else:
                parent[rb] = ra
                off[rb] = w
                if rb in wraps:
                    wraps.setdefault(ra, []).extend(wraps.pop(rb))
    dims = {}
    for root, vecs in wraps.items():
        dims[root] = int(np.linalg.matrix_rank(np.array(vecs, dtype=float)))
    return labels, dims


def percolation_dimension(mask: np.ndarray) -> int:
    """Largest dimension (0–3) of the periodic face-connected components of ``mask``."""
    if not mask.any():
        return 0
    _, dims = periodic_components(mask)
    return max(dims.values(), default=0)


def percolation_levels(
    density_rel: np.ndarray, floor_rel: float, precision: float = LEVEL_PRECISION
) -> dict[str, float | None]:
    """For d = 1, 2, 3: the highest level (ρ̄ units) ≥ ``floor_rel`` at which the region
    above it percolates in ≥ d dimensions (None: not even at the floor)."""
    top = float(density_rel.max())
    cache: dict[float, int] = {}

    def dim(level: float) -> int:
        if level not in cache:
            cache[level] = percolation_dimension(density_rel >= level)
        return cache[level]

    out: dict[str, float | None] = {}
    floor_rel = min(max(floor_rel, 1e-12), top)
    for d in (1, 2, 3):
        if top <= 0 or dim(floor_rel) < d:
            out[str(d)] = None
            continue
        lo, hi = math.log(floor_rel), math.log(top) + 1e-9
        if dim(math.exp(hi)) >= d:
            out[str(d)] = top
            continue
        while hi - lo > math.log1p(precision):
            mid = 0.5 * (lo + hi)
            if dim(math.exp(mid)) >= d:
                lo = mid
            else:
                hi = mid
        out[str(d)] = math.exp(lo)
    return out


# ----------------------------------------------------------------------------- CHGCAR


def write_chgcar(
    path: str | Path,
    values: np.ndarray,
    lattice: np.ndarray,
    species: Sequence[str],
    frac_positions: np.ndarray,
    comment: str = "ionflow density",
) -> None:
    """Write VASP CHGCAR volumetric data (VASP 5 header, atoms grouped by element in order
    of first appearance, values in Fortran order, 5 per line)."""
    species = list(species)
    order = list(dict.fromkeys(species))
    frac = np.asarray(frac_positions, dtype=float) % 1.0
    groups = [np.flatnonzero(np.asarray(species) == el) for el in order]
    lines = [" ".join(comment.split()) or "ionflow density", "   1.0"]
    lines += ["  " + " ".join(f"{x:20.12f}" for x in row) for row in np.asarray(lattice, float)]
    lines.append("   " + " ".join(f"{el:>4s}" for el in order))
    lines.append("   " + " ".join(f"{len(g):4d}" for g in groups))
    lines.append("Direct")
    for g in groups:
        lines += ["  " + " ".join(f"{x:12.8f}" for x in frac[i]) for i in g]
    lines.append("")
    lines.append(" ".join(f"{n:5d}" for n in values.shape))
    flat = np.asarray(values, dtype=float).ravel(order="F")
    n_full = flat.size // 5 * 5
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
        if n_full:
            np.savetxt(fh, flat[:n_full].reshape(-1, 5), fmt="%18.11E", delimiter=" ")
        if flat.size > n_full:
            fh.write(" ".join(f"{x:18.11E}" for x in flat[n_full:]) + "\n")


# ----------------------------------------------------------------------------- analysis


class DensityResult(BaseModel):
    """Probability density of the mobile species of one run."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    source: str = Field(description="Trajectory analysed")
    species: str = Field(description="Mobile species")
    n_mobile: int = Field(description="Mobile ions")
    n_frames: int = Field(description="Frames accumulated")
    temperature_k: float | None = Field(description="MD temperature, K (for the barriers)")
    drift_reference: str = Field(description="Atoms whose drift was removed (frame of the density)")
    file: str | None = Field(
        description=(
            "CHGCAR written (raw density × V_cell; Σ/N_grid = n_mobile), or null when none "
            "was asked for"
        )
    )
    grid: tuple[int, int, int] = Field(description="Grid points along a, b, c")
    grid_spacing_a: tuple[float, float, float] = Field(description="Actual grid spacing, Å")
    volume_a3: float = Field(description="Cell volume of the first frame, Å³")
    mean_density_a3: float = Field(description="Mean mobile-ion density ρ̄ = N/V, Å⁻³")
    smooth_a: float = Field(description="σ of the Gaussian smoothing for sites/percolation, Å")
    max_density_rel: float = Field(description="Largest smoothed density, units of ρ̄")
    site_min_ratio: float = Field(description="A site's smoothed density is ≥ this × ρ̄")
    merge_radius_a: float = Field(description="Maxima closer than this were merged, Å")
    n_sites: int = Field(description="Occupied sites found (density maxima)")
    sites_frac: list[list[float]] = Field(description="Site positions, fractional, highest first")
    site_density_rel: list[float] = Field(description="Smoothed density at each site, units of ρ̄")
    site_occupancy: list[float] = Field(
        description="Mean ions within merge_radius_a/2 of each site (raw density)"
    )
    iso_level: float = Field(description="Iso-level of percolation_dimension, units of ρ̄")
    percolation_dimension: int = Field(
        description=(
            "Dimension (0–3) of the periodic network of the smoothed density ≥ iso_level "
            "(0 isolated cages, 1 channels, 2 layers, 3 network)"
        )
    )
    percolation_levels: dict[str, float | None] = Field(
        description=(
            "d → highest level (units of ρ̄) at which the network still percolates in ≥ d "
            "dimensions; null: not above the noise floor"
        )
    )
    percolation_barriers_ev: dict[str, float | None] = Field(
        description="d → k_B·T·ln(ρ_max / level_d), eV (needs the temperature)"
    )
    noise_floor_rel: float = Field(
        description="Levels below this (units of ρ̄) are noise (NOISE_COUNTS in the kernel)"
    )
    warnings: list[str] = Field(default_factory=list, description="Things to look at")


@register
class Density(StreamedAnalysis):
    """Mobile-ion probability density, sites and percolation (module docstring)."""

    name = "density"
    result_model = DensityResult
    schema_version = "1"

    def __init__(
        self,
        *,
        out: str | Path | None = None,
        grid_spacing_a: float = DEFAULT_GRID_SPACING_A,
        smooth_a: float = DEFAULT_SMOOTH_A,
        merge_radius_a: float = DEFAULT_MERGE_RADIUS_A,
        site_min_ratio: float = DEFAULT_SITE_MIN_RATIO,
        iso_level: float = DEFAULT_ISO_LEVEL,
    ) -> None:
        for name, val in (("grid_spacing_a", grid_spacing_a), ("merge_radius_a", merge_radius_a),
                          ("iso_level", iso_level)):  # fmt: skip
            if not (val > 0 and math.isfinite(val)):
                raise UserInputError(f"{name} must be > 0, got {val}")
        if not (smooth_a >= 0 and math.isfinite(smooth_a)):
            raise UserInputError(f"smooth_a must be ≥ 0, got {smooth_a}")
        if not (site_min_ratio >= 0 and math.isfinite(site_min_ratio)):
            raise UserInputError(f"site_min_ratio must be ≥ 0, got {site_min_ratio}")
        self.out = None if out is None else Path(out)
        self.grid_spacing_a = float(grid_spacing_a)
        self.smooth_a = float(smooth_a)
        self.merge_radius_a = float(merge_radius_a)
        self.site_min_ratio = float(site_min_ratio)
        self.iso_level = float(iso_level)
        #: after :meth:`conclude`: raw and smoothed density in units of ρ̄ (for plots)
        self.density_rel: np.ndarray | None = None
        self.smoothed_rel: np.ndarray | None = None

    @classmethod
    def describe(cls, result: DensityResult) -> str | None:
        lv = ", ".join(
            f"{d}D ≥ {v:.2g}ρ̄" if v is not None else f"{d}D —"
            for d, v in result.percolation_levels.items()
        )
        return (
            f"{result.species} density: {result.n_sites} sites; percolation "
            f"{result.percolation_dimension}-D at {result.iso_level:g}ρ̄ (levels {lv})"
        )

    def prepare(self, ctx: TrajectoryContext, unwrapper) -> None:
        self.ctx = ctx
        self.grid: DensityGrid | None = None
        self.lattice0: np.ndarray | None = None
        self.frame0_frac: np.ndarray | None = None

    def accumulate(self, chunk: FrameChunk) -> None:
        if self.grid is None:
            lat0 = chunk.lattices if chunk.lattices.ndim == 2 else chunk.lattices[0]
            self.lattice0 = np.array(lat0, dtype=float)
            f0 = chunk.positions[0] @ np.linalg.inv(self.lattice0)
            self.frame0_frac = f0 - np.floor(f0)
            self.grid = DensityGrid(grid_shape(self.lattice0, self.grid_spacing_a))
        self.grid.add(framework_fractional(chunk, self.ctx.mobile_indices))

    def write(self, path: str | Path) -> Path:
        """Write the CHGCAR of the accumulated density (after at least one chunk)."""
        if self.grid is None:
            raise UserInputError("no frames accumulated: nothing to write")
        path = Path(path)
        comment = f"ionflow {self.ctx.mobile_species} probability density of {self.ctx.source}"
        write_chgcar(
            path,
            self.grid.chgcar_values(),
            self.lattice0,
            self.ctx.species,
            self.frame0_frac,
            comment=comment[:160],
        )
        return path

    def conclude(self) -> DensityResult:
        ctx = self.ctx
        grid, lat = self.grid, self.lattice0
        if grid is None:
            raise UserInputError(f"{ctx.source}: no frames")
        n_mob = len(ctx.mobile_indices)
        volume = abs(float(np.linalg.det(lat)))
        n_grid = grid.counts.size
        # ρ/ρ̄ per voxel = counts·N_grid/(n_frames·n_mobile)
        rel = (grid.counts * (n_grid / (grid.n_frames * n_mob))).reshape(grid.shape)
        sm = smooth_density(rel, lat, self.smooth_a)
        self.density_rel, self.smoothed_rel = rel, sm
        notes: list[str] = []
        sites, heights = find_sites(
            sm, lat, merge_radius_a=self.merge_radius_a, min_ratio=self.site_min_ratio
        )
        occ = site_occupancy(rel * (n_mob / n_grid), sites, lat, self.merge_radius_a / 2)
        floor = noise_floor_rel(grid.n_frames, n_mob, volume, grid.shape, self.smooth_a)
        top = float(sm.max())
        if self.iso_level < floor:
            notes.append(
                f"iso_level {self.iso_level:g}ρ̄ is below the noise floor {floor:.2g}ρ̄: "
                "percolation_dimension may follow noise (run longer or smooth more)"
            )
        dim = percolation_dimension(sm >= self.iso_level)
        levels = percolation_levels(sm, floor)
        t = ctx.temperature_k
        barriers = {
            d: (BOLTZMANN_EV_K * t * math.log(top / v) if (t and v) else None)
            for d, v in levels.items()
        }
        if not len(sites):
            notes.append(
                f"no density maximum reaches {self.site_min_ratio:g}ρ̄: no sites (ions spread "
                "evenly — a liquid? — or too few frames)"
            )
        if floor > 0.5 * self.site_min_ratio:
            notes.append(
                f"noise floor {floor:.2g}ρ̄ is close to the site threshold "
                f"{self.site_min_ratio:g}ρ̄: too few frames for a reliable density"
            )
        if self.out is not None:
            self.write(self.out)
        lengths = np.linalg.norm(lat, axis=1)
        return DensityResult(
            source=ctx.source,
            species=ctx.mobile_species,
            n_mobile=n_mob,
            n_frames=grid.n_frames,
            temperature_k=t,
            drift_reference=ctx.reference_label,
            file=str(self.out) if self.out is not None else None,
            grid=grid.shape,
            grid_spacing_a=tuple(float(x) for x in lengths / np.array(grid.shape)),
            volume_a3=volume,
            mean_density_a3=n_mob / volume,
            smooth_a=self.smooth_a,
            max_density_rel=top,
            site_min_ratio=self.site_min_ratio,
            merge_radius_a=self.merge_radius_a,
            n_sites=len(sites),
            sites_frac=[[float(x) for x in s] for s in sites],
            site_density_rel=[float(h) for h in heights],
            site_occupancy=[float(x) for x in occ],
            iso_level=self.iso_level,
            percolation_dimension=dim,
            percolation_levels=levels,
            percolation_barriers_ev=barriers,
            noise_floor_rel=floor,
            warnings=notes,
        )


def plot_density(
    result: DensityResult,
    smoothed_rel: np.ndarray,
    lattice: np.ndarray,
    path: str | Path | None = None,
    *,
    axis: int = 2,
):
    """Projection of the smoothed density along ``axis`` (log colour scale) with the sites,
    and the percolation dimension vs iso-level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    keep = [i for i in range(3) if i != axis]
    proj = smoothed_rel.mean(axis=axis)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120,
                                  gridspec_kw={"width_ratios": [1.3, 1]})  # fmt: skip
    lengths = np.linalg.norm(lattice, axis=1)
    ext = [0, lengths[keep[0]], 0, lengths[keep[1]]]
    pos = proj[proj > 0]
    vmin = max(float(pos.min()) if pos.size else 1e-3, float(proj.max()) * 1e-3)
    im = ax.imshow(proj.T, origin="lower", extent=ext, cmap="viridis",
                   norm=LogNorm(vmin=vmin, vmax=max(float(proj.max()), vmin * 10)))  # fmt: skip
    fig.colorbar(im, ax=ax, label="projected density / ρ̄")
    if result.n_sites:
        s = np.array(result.sites_frac)
        ax.scatter(s[:, keep[0]] * lengths[keep[0]], s[:, keep[1]] * lengths[keep[1]], s=8,
                   facecolors="none", edgecolors="w", lw=0.6, label="sites")  # fmt: skip
        ax.legend(fontsize=7, loc="upper right")
    names = "abc"
    ax.set_xlabel(f"{names[keep[0]]} (Å)")
    ax.set_ylabel(f"{names[keep[1]]} (Å)")
    ax.set_title(f"{result.species} density projected along {names[axis]}; {result.n_sites} sites",
                 fontsize=9)  # fmt: skip
    levels = np.geomspace(max(result.noise_floor_rel, 1e-3), max(result.max_density_rel, 1e-2), 40)
    dims = [percolation_dimension(smoothed_rel >= lv) for lv in levels]
    ax2.step(levels, dims, where="mid", color="k")
    ax2.axvline(result.noise_floor_rel, color="0.6", ls=":", label="noise floor")
    ax2.axvline(result.iso_level, color="tab:red", ls="--", label="iso_level")
    ax2.set_xscale("log")
    ax2.set_yticks([0, 1, 2, 3])
    ax2.set_xlabel("iso-level (units of ρ̄)")
    ax2.set_ylabel("percolation dimension")
    ax2.legend(fontsize=7)
    ax2.set_title(f"percolation: {result.percolation_dimension}-D at {result.iso_level:g}ρ̄",
                  fontsize=9)  # fmt: skip
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
