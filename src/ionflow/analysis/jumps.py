"""Jumps of the mobile ions between sites: rate, length, jump diffusivity, correlation factor.

Seed 004 Eq. 1 writes σ ∝ (f/H_R)·a²·ν0·exp(−ΔH/kT); this analysis measures the
per-run parts: the jump distance a, the jump rate Γ (whose Arrhenius gives ν0 and ΔH:
campaign level, :func:`attempt_frequency`) and the correlation factor f.

Design (one streamed pass)
--------------------------
The mobile ions' drift-removed unwrapped displacements are kept (float32, frames × mobile
ions × 3 — the diffusion analysis' own store, :class:`~ionflow.analysis.msd.DisplacementAccumulator`,
fed by the pass' shared unwrapper). In :meth:`Jumps.conclude` they give

* the ions' positions in the framework's frame (first-frame position + displacement,
  wrapped; per-frame cell for NPT — as the density analysis),
* the sites, unless given: the density analysis' site finder
  (:func:`ionflow.analysis.density.find_sites`) on the density of these same positions,
* D* from the MSD of the same displacements, by the diffusion analysis' own
  :func:`~ionflow.analysis.diffusion.analyze_displacements` (same window and errors as
  ``ionflow analyze``; or given as input).

Assignment and jumps
--------------------
At each frame an ion is *on* the nearest site (minimum image over 27 cells, first-frame
cell metric) when it is within that site's radius; else it is *in transit* and keeps its
last site. Default radius of a site: min(1.0 Å, 0.4 × the distance to its nearest
neighbouring site), so that two sites are always separated by a transit zone (at least
20 % of their distance); ``site_radius_a`` sets one radius for all. A **jump** is a
change of an ion's site to a *different* site: a transit through the gap is one jump
(counted when the ion arrives), an excursion out of the radius that comes back is none.
Jumps shorter than the frame interval that come back are not seen (sample frames
finely enough: the missed fraction is ~Γ·Δt).

* ``jump_rate_per_ps``: jumps per ion per ps, Γ = N_jumps / (N_ions · duration); error =
  SE over ions.
* ``mean_jump_length_a``: mean site–site (minimum image) distance of the jumps.
* ``jump_diffusivity_cm2_s``: D_jump = Γ⟨a²⟩/6 = Σ a² / (6 · N_ions · duration) — what the
  ions would diffuse with if successive jumps were uncorrelated; error = SE over ions.
* ``correlation_factor``: f = D*/D_jump with σ_f/f = √((σ_D*/D*)² + (σ_Dj/Dj)²) (errors
  treated as independent; both come from the same jumps, positively correlated, so the
  error is if anything conservative). f < 1: back-jumps (correlated motion, vacancy
  mechanism f = 0.78 for fcc); f ≈ 1: uncorrelated; f > 1: concerted/forward-correlated.
  Null, with the reason, when D* is not resolved (the diffusion analysis' regime).
* residence: a *visit* runs from the frame an ion arrives at a site to the frame it
  arrives at the next (transit included); only visits that start and end with a jump
  count (the first and the last are censored). ``residence_time_ps`` is their mean
  (≈ 1/Γ for a single kind of site).
* ``jumps_by_site_pair``: per unordered pair of sites with jumps: counts each way, the
  site–site distance and the mean residence at the origin site before these jumps.
* cages: each site belongs to the cage of its nearest centre; a jump is inter-cage when its
  two sites belong to different cages. Centres given (``cage_centers_frac``), or by default
  (``auto_cages``) the **isolated anions** — anions bonded to no framework cation by the
  pinned control's rule (:func:`ionflow.structure.classify_anions`) in the first frame,
  placed at their time-averaged positions (a snapshot is thermally displaced enough to
  misplace sites midway between two centres), every Wyckoff kind together. Seed 003's cages centre on isolated anions; taking all of them
  lets the data pick the centre: in Li6PS5I the Li sites lie nearest the 4d anions when S
  sits there (0 % disorder) and nearest the 4a ones when S and I swap (100 %), so the same
  rule finds the right cages at either ordering (test on the shared Morgan 2021 runs). No
  isolated anion (e.g. LGPS, all S bonded to P/Ge) or no anion at all: no cages, with a
  note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.density import (
    DEFAULT_GRID_SPACING_A,
    DEFAULT_MERGE_RADIUS_A,
    DEFAULT_SITE_MIN_RATIO,
    DEFAULT_SMOOTH_A,
    DensityGrid,
    find_sites,
    grid_shape,
    min_image_distances,
    min_image_vectors,
    smooth_density,
)
from ionflow.analysis.msd import DisplacementAccumulator
from ionflow.analysis.stream import FrameChunk, StreamedAnalysis, TrajectoryContext, register
from ionflow.errors import InsufficientDataError, UserInputError

A2_PER_PS_TO_CM2_S = 1e-4
#: Largest default site radius, Å.
MAX_DEFAULT_RADIUS_A = 1.0
#: Default radius as a fraction of the median nearest-neighbour site distance.
RADIUS_FRACTION = 0.4
#: Frames converted to positions at a time in conclude (bounds temporary memory).
BLOCK_FRAMES = 2048


class SitePairJumps(BaseModel):
    """Jumps between one (unordered) pair of sites."""

    sites: tuple[int, int] = Field(description="Site indices (i < j) into sites_frac")
    distance_a: float = Field(description="Site–site distance (minimum image), Å")
    n_jumps: int = Field(description="Jumps i→j plus j→i")
    n_forward: int = Field(description="Jumps i→j")
    n_backward: int = Field(description="Jumps j→i")
    mean_residence_before_ps: float | None = Field(
        description="Mean residence at the origin site before these jumps (completed visits), ps"
    )
    inter_cage: bool | None = Field(None, description="Sites in different cages (cages given)")


class JumpsResult(BaseModel):
    """Site-to-site jumps of the mobile species of one run."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    source: str = Field(description="Trajectory analysed")
    species: str = Field(description="Mobile species")
    temperature_k: float | None = Field(description="MD temperature, K")
    n_mobile: int = Field(description="Mobile ions")
    n_frames: int = Field(description="Frames analysed")
    frame_interval_fs: float = Field(description="Time between frames, fs")
    duration_ps: float = Field(description="Analysed duration, ps")
    drift_reference: str = Field(description="Atoms whose drift was removed")
    sites_source: str = Field(description="Where the sites came from")
    n_sites: int = Field(description="Sites")
    sites_frac: list[list[float]] = Field(description="Site positions, fractional")
    site_radius_a: float = Field(
        description="Median site radius (an ion is on a site within its radius), Å"
    )
    site_radius_min_a: float = Field(description="Smallest site radius, Å")
    site_radius_rule: str = Field(description="How the radius was chosen")
    fraction_on_site: float = Field(description="Fraction of ion-frames within a site radius")
    n_jumps: int = Field(description="Jumps between distinct sites (all ions)")
    jump_rate_per_ps: float = Field(description="Jumps per ion per ps, Γ")
    jump_rate_err_per_ps: float | None = Field(description="1σ of Γ (SE over ions)")
    mean_jump_length_a: float | None = Field(description="Mean jump length ⟨a⟩, Å")
    rms_jump_length_a: float | None = Field(description="√⟨a²⟩, Å")
    jump_diffusivity_cm2_s: float | None = Field(description="D_jump = Γ⟨a²⟩/6, cm²/s")
    jump_diffusivity_err_cm2_s: float | None = Field(description="1σ of D_jump (SE over ions)")
    tracer_diffusivity_cm2_s: float | None = Field(description="D* used for f, cm²/s")
    tracer_diffusivity_err_cm2_s: float | None = Field(description="1σ of D*, cm²/s")
    tracer_diffusivity_source: str = Field(description="Where D* came from (and its regime)")
    correlation_factor: float | None = Field(description="f = D*/D_jump")
    correlation_factor_err: float | None = Field(description="1σ of f")
    correlation_factor_reason: str = Field(description="Why f is or is not given")
    residence_time_ps: float | None = Field(
        description="Mean residence per visit (arrival to next arrival, completed visits), ps"
    )
    n_completed_visits: int = Field(description="Visits that start and end with a jump")
    site_occupancy: list[float] = Field(description="Mean ions on each site (within the radius)")
    site_residence_ps: list[float | None] = Field(description="Mean completed visit per site, ps")
    jumps_by_site_pair: list[SitePairJumps] = Field(description="Per site pair, most jumps first")
    cage_source: str | None = Field(
        None, description="Where the cage centres came from (given, or the isolated anions)"
    )
    n_cages: int | None = Field(None, description="Cage centres (given or isolated anions)")
    site_cage: list[int] | None = Field(None, description="Cage (nearest centre) of each site")
    n_intra_cage_jumps: int | None = Field(None, description="Jumps within one cage")
    n_inter_cage_jumps: int | None = Field(None, description="Jumps between cages")
    inter_cage_jump_rate_per_ps: float | None = Field(
        None, description="Inter-cage jumps per ion per ps"
    )
    intra_cage_jump_rate_per_ps: float | None = Field(
        None, description="Intra-cage jumps per ion per ps"
    )
    attempt_frequency_thz: float | None = Field(
        None,
        description=(
            "ν0 from the Arrhenius of the jump rate over temperatures (campaign level: "
            "ionflow.analysis.jumps.attempt_frequency); null for one run"
        ),
    )
    warnings: list[str] = Field(default_factory=list, description="Things to look at")


def assign_sites(cart: np.ndarray, sites_cart_images: np.ndarray, radii_a: np.ndarray, tree=None):
    """Nearest site of Cartesian points (index into the ``len(radii_a)`` sites; the images
    are image-major), −1 beyond that site's radius."""
    from scipy.spatial import cKDTree

    n_sites = len(radii_a)
    tree = tree or cKDTree(sites_cart_images)
    dist, idx = tree.query(cart, k=1, distance_upper_bound=float(np.max(radii_a)))
    found = np.isfinite(dist)
    site = np.where(found, idx % n_sites, 0)
    out = np.where(found & (dist <= radii_a[site]), site, -1)
    return out.astype(np.int32), tree


def _images(sites_frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian sites in the 27 cells around the home cell, image-major (index % n = site)."""
    imgs = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    return ((sites_frac[None, :, :] + imgs[:, None, :]).reshape(-1, 3)) @ lattice


def detect_jumps(assigned: np.ndarray):
    """Jumps in a (frames, ions) array of sites (−1: in transit keeps the last site).

    Returns (frame of arrival, ion, from site, to site), ordered by ion then time, and the
    forward-filled site array.
    """
    n_frames, n_ions = assigned.shape
    frame = np.where(assigned >= 0, np.arange(n_frames)[:, None], -1)
    np.maximum.accumulate(frame, axis=0, out=frame)
    filled = np.where(frame >= 0, assigned[np.maximum(frame, 0), np.arange(n_ions)[None]], -1)
    prev, cur = filled[:-1], filled[1:]
    t, ion = np.nonzero((prev >= 0) & (cur != prev))
    frm, to = prev[t, ion], cur[t, ion]
    order = np.lexsort((t, ion))
    return t[order] + 1, ion[order], frm[order], to[order], filled


@register
class Jumps(StreamedAnalysis):
    """Site-to-site jumps (module docstring)."""

    name = "jumps"
    result_model = JumpsResult
    schema_version = "1"

    def __init__(
        self,
        *,
        sites_frac: Sequence[Sequence[float]] | np.ndarray | None = None,
        sites_source: str | None = None,
        sites_lattice: np.ndarray | None = None,
        site_radius_a: float | None = None,
        cage_centers_frac: Sequence[Sequence[float]] | np.ndarray | None = None,
        auto_cages: bool = True,
        tracer_diffusivity_cm2_s: float | None = None,
        tracer_diffusivity_err_cm2_s: float | None = None,
        grid_spacing_a: float = DEFAULT_GRID_SPACING_A,
        smooth_a: float = DEFAULT_SMOOTH_A,
        merge_radius_a: float = DEFAULT_MERGE_RADIUS_A,
        site_min_ratio: float = DEFAULT_SITE_MIN_RATIO,
    ) -> None:
        self.sites_frac = _frac_array(sites_frac, "sites") if sites_frac is not None else None
        if self.sites_frac is not None and len(self.sites_frac) == 0:
            raise UserInputError("no sites given")
        self.sites_source = sites_source
        self.sites_lattice = None if sites_lattice is None else np.asarray(sites_lattice, float)
        if site_radius_a is not None and not (site_radius_a > 0 and math.isfinite(site_radius_a)):
            raise UserInputError(f"site radius must be > 0 Å, got {site_radius_a}")
        self.site_radius_a = site_radius_a
        self.cage_centers_frac = (
            _frac_array(cage_centers_frac, "cage centres")
            if cage_centers_frac is not None
            else None
        )
        self.auto_cages = bool(auto_cages) and self.cage_centers_frac is None
        self.cage_source: str | None = "given" if self.cage_centers_frac is not None else None
        self._cage_note: str | None = None
        if (tracer_diffusivity_cm2_s is None) != (tracer_diffusivity_err_cm2_s is None):
            raise UserInputError("give D* and its error together")
        if tracer_diffusivity_cm2_s is not None and not (
            tracer_diffusivity_cm2_s > 0 and tracer_diffusivity_err_cm2_s >= 0
        ):
            raise UserInputError("D* must be > 0 and its error ≥ 0")
        self.tracer = (
            None
            if tracer_diffusivity_cm2_s is None
            else (float(tracer_diffusivity_cm2_s), float(tracer_diffusivity_err_cm2_s))
        )
        self.grid_spacing_a = grid_spacing_a
        self.smooth_a = smooth_a
        self.merge_radius_a = merge_radius_a
        self.site_min_ratio = site_min_ratio
        #: after conclude: the tracer diffusion analysis (None when D* was given or not possible)
        self.diffusion = None

    @classmethod
    def describe(cls, result: JumpsResult) -> str | None:
        f = (
            f"f = {result.correlation_factor:.2f} ± {result.correlation_factor_err:.2f}"
            if result.correlation_factor is not None
            else "f —"
        )
        a = f"{result.mean_jump_length_a:.2f} Å" if result.mean_jump_length_a else "—"
        cage = (
            f"; inter-/intra-cage {result.n_inter_cage_jumps}/{result.n_intra_cage_jumps}"
            if result.n_inter_cage_jumps is not None
            else ""
        )
        return (
            f"jumps: Γ = {result.jump_rate_per_ps:.3g}/ps per ion over {result.n_sites} sites, "
            f"⟨a⟩ = {a}, {f}{cage}"
        )

    def prepare(self, ctx: TrajectoryContext, unwrapper) -> None:
        self.ctx = ctx
        self._acc = DisplacementAccumulator(
            ctx.n_atoms, ctx.mobile_indices, ctx.reference_indices, unwrapper=unwrapper,
            n_frames_hint=ctx.n_frames,
        )  # fmt: skip
        self._r0: np.ndarray | None = None
        self._lat0: np.ndarray | None = None
        self._lattices: list[np.ndarray] = []
        self._npt = False
        self._cage_idx: np.ndarray | None = None
        self._cage_n = 0
        if self.auto_cages:  # found again for every trajectory this analysis is given
            self.cage_centers_frac = None
            self.cage_source = None
            self._cage_note = None

    def accumulate(self, chunk: FrameChunk) -> None:
        if self._r0 is None:
            self._r0 = np.array(chunk.positions[0, self.ctx.mobile_indices], dtype=np.float64)
            self._lat0 = np.array(
                chunk.lattices if chunk.lattices.ndim == 2 else chunk.lattices[0], dtype=float
            )
            if self.auto_cages:
                self._isolated_anion_cages(np.asarray(chunk.positions[0], dtype=float))
        if self._cage_idx is not None:  # time-averaged centres (framework frame)
            self._cage_sum += chunk.displacements(self._cage_idx).astype(np.float64).sum(axis=0)
            self._cage_n += chunk.n_frames
        if chunk.lattices.ndim == 3:
            self._npt = True
            self._lattices.append(chunk.lattices.astype(np.float32))
        else:
            self._lattices.append(np.broadcast_to(chunk.lattices, (chunk.n_frames, 3, 3)))
        self._acc.add(chunk)

    def _isolated_anion_cages(self, positions: np.ndarray) -> None:
        """Cage centres = the isolated anions of the first frame (module docstring)."""
        from pymatgen.core import Lattice, Structure

        from ionflow.errors import UserInputError as _Input
        from ionflow.structure import classify_anions

        try:
            structure = Structure(
                Lattice(self._lat0), list(self.ctx.species), positions, coords_are_cartesian=True
            )
            cls = classify_anions(structure, self.ctx.mobile_species)
        except (_Input, ValueError) as exc:
            self._cage_note = f"no cages: anions not classified ({exc})"
            return
        iso = sorted(int(i) for i in cls.isolated_indices)
        if not iso:
            self._cage_note = "no cages: no isolated anion (every anion bonded to a cation)"
            return
        self._cage_idx = np.asarray(iso)
        self._cage_r0 = positions[iso]
        self._cage_sum = np.zeros((len(iso), 3))
        counts: dict[str, int] = {}
        for i in iso:
            counts[self.ctx.species[i]] = counts.get(self.ctx.species[i], 0) + 1
        kinds = ", ".join(f"{n} {el}" for el, n in sorted(counts.items()))
        self.cage_source = (
            f"isolated anions of the first frame ({kinds}; pinned-control bonding rule) at "
            "their mean positions, each site in the cage of its nearest one"
        )

    def _auto_cage_centres(self) -> None:
        """Centres = the isolated anions' time-averaged positions: a frame-0 snapshot is
        thermally displaced by up to ~0.8 Å (Li6PS5I 500 K), enough to hand sites midway
        between a 4a and a 4d anion to the wrong cage."""
        if self._cage_idx is None or self.cage_centers_frac is not None:
            return
        cart = self._cage_r0 + self._cage_sum / max(self._cage_n, 1)
        frac = cart @ np.linalg.inv(self._lat0)
        self.cage_centers_frac = frac - np.floor(frac)

    @property
    def lattice0(self) -> np.ndarray | None:
        """The first frame's cell (sites' metric), after the first chunk."""
        return self._lat0

    # -- positions in the framework's frame ------------------------------------------------
    def _frac_blocks(self, disp: np.ndarray):
        n = disp.shape[0]
        lats = np.concatenate(self._lattices) if self._npt else None
        inv0 = np.linalg.inv(self._lat0)
        for s in range(0, n, BLOCK_FRAMES):
            cart = self._r0[None] + disp[s : s + BLOCK_FRAMES].astype(np.float64)
            if lats is None:
                frac = cart @ inv0
            else:
                frac = np.einsum("fai,fij->faj", cart, np.linalg.inv(lats[s : s + BLOCK_FRAMES]))
            yield s, frac - np.floor(frac)

    def conclude(self) -> JumpsResult:
        ctx = self.ctx
        disp = self._acc.result(ctx.frame_interval_fs)
        n_frames, n_ions = disp.n_frames, disp.n_mobile
        if n_frames < 2:
            raise InsufficientDataError(f"{ctx.source}: {n_frames} frame(s)")
        lat = self._lat0
        dt_ps = ctx.frame_interval_fs / 1000.0
        duration = (n_frames - 1) * dt_ps
        notes: list[str] = []
        if self._npt:
            notes.append("variable cell: sites and distances use the first frame's cell metric")
        if self._cage_note is not None:
            notes.append(self._cage_note)

        # -- sites -----------------------------------------------------------------------
        if self.sites_frac is not None:
            sites = self.sites_frac % 1.0
            source = self.sites_source or "given"
            if self.sites_lattice is not None:
                sites, how = _sites_in_cell(sites, self.sites_lattice, lat, source)
                source += how
        else:
            grid = DensityGrid(grid_shape(lat, self.grid_spacing_a))
            for _, frac in self._frac_blocks(disp.mobile):
                grid.add(frac)
            n_grid = grid.counts.size
            rel = (grid.counts * (n_grid / (grid.n_frames * n_ions))).reshape(grid.shape)
            sites, _ = find_sites(
                smooth_density(rel, lat, self.smooth_a), lat,
                merge_radius_a=self.merge_radius_a, min_ratio=self.site_min_ratio,
            )  # fmt: skip
            source = (
                f"density maxima of this run (smoothed {self.smooth_a:g} Å, ≥ "
                f"{self.site_min_ratio:g}ρ̄, merged within {self.merge_radius_a:g} Å)"
            )
            if len(sites) == 0:
                raise InsufficientDataError(
                    f"{ctx.source}: no density maximum reaches {self.site_min_ratio:g}× the mean "
                    f"{ctx.mobile_species} density — no sites to jump between (give --sites)"
                )
        n_sites = len(sites)
        if n_sites > 1:
            dmat = min_image_distances(sites, sites, lat)
            np.fill_diagonal(dmat, np.inf)
            d_nn = dmat.min(axis=1)
        else:
            d_nn = np.full(1, float(np.min(np.linalg.norm(lat, axis=1))))
        if self.site_radius_a is not None:
            radii = np.full(n_sites, float(self.site_radius_a))
            rule = "given"
            close = int(np.sum(radii > 0.5 * d_nn))
            if close:
                notes.append(
                    f"{close} site(s) closer than twice the radius {self.site_radius_a:g} Å to a "
                    "neighbour: no transit zone between them; rattling across counts as jumps"
                )
        else:
            radii = np.minimum(MAX_DEFAULT_RADIUS_A, RADIUS_FRACTION * d_nn)
            rule = (
                f"per site: min({MAX_DEFAULT_RADIUS_A:g} Å, {RADIUS_FRACTION:g} × distance to "
                "its nearest site) — neighbouring sites are always separated by a transit zone"
            )

        # -- assignment and jumps ----------------------------------------------------------
        images = _images(sites, lat)
        assigned = np.empty((n_frames, n_ions), dtype=np.int32)
        tree = None
        for s, frac in self._frac_blocks(disp.mobile):
            a, tree = assign_sites((frac @ lat).reshape(-1, 3), images, radii, tree)
            assigned[s : s + frac.shape[0]] = a.reshape(frac.shape[0], n_ions)
        on_site = float(np.mean(assigned >= 0))
        occupancy = np.bincount(assigned[assigned >= 0], minlength=n_sites) / n_frames
        t_arr, ion, frm, to, _ = detect_jumps(assigned)
        del assigned
        n_jumps = int(len(t_arr))
        per_ion = np.bincount(ion, minlength=n_ions).astype(float)
        rate = n_jumps / (n_ions * duration)
        rate_err = (
            float(np.std(per_ion, ddof=1) / math.sqrt(n_ions) / duration) if n_ions > 1 else None
        )
        vec = min_image_vectors(sites[frm], sites[to], lat) if n_jumps else np.zeros((0, 3))
        a2 = np.einsum("ni,ni->n", vec, vec)
        mean_a = float(np.mean(np.sqrt(a2))) if n_jumps else None
        rms_a = float(math.sqrt(np.mean(a2))) if n_jumps else None
        dj_ion = np.bincount(ion, weights=a2, minlength=n_ions) / (6.0 * duration)  # Å²/ps
        d_jump = float(dj_ion.mean()) * A2_PER_PS_TO_CM2_S if n_jumps else None
        d_jump_err = (
            float(np.std(dj_ion, ddof=1) / math.sqrt(n_ions)) * A2_PER_PS_TO_CM2_S
            if n_jumps and n_ions > 1
            else None
        )

        # residence: visits between consecutive jumps of the same ion
        same = ion[1:] == ion[:-1] if n_jumps > 1 else np.zeros(0, bool)
        res_frames = (t_arr[1:] - t_arr[:-1])[same]
        res_site = to[:-1][same]  # = frm[1:][same]
        res_ps = res_frames * dt_ps
        residence = float(res_ps.mean()) if res_ps.size else None
        site_res_sum = np.bincount(res_site, weights=res_ps, minlength=n_sites)
        site_res_n = np.bincount(res_site, minlength=n_sites)
        site_res = [
            float(s / k) if k else None for s, k in zip(site_res_sum, site_res_n, strict=True)
        ]
        # residence before each jump (nan when the visit started uncensored)
        before = np.full(n_jumps, np.nan)
        if n_jumps > 1:
            before[1:][same] = res_ps

        # -- cages -------------------------------------------------------------------------
        self._auto_cage_centres()
        site_cage = None
        inter = None
        cage_fields: dict = {}
        if self.cage_centers_frac is not None:
            site_cage = np.argmin(min_image_distances(sites, self.cage_centers_frac, lat), axis=1)
            inter = site_cage[frm] != site_cage[to]
            n_inter = int(inter.sum())
            cage_fields = dict(
                cage_source=self.cage_source,
                n_cages=len(self.cage_centers_frac),
                site_cage=[int(c) for c in site_cage],
                n_inter_cage_jumps=n_inter,
                n_intra_cage_jumps=n_jumps - n_inter,
                inter_cage_jump_rate_per_ps=n_inter / (n_ions * duration),
                intra_cage_jump_rate_per_ps=(n_jumps - n_inter) / (n_ions * duration),
            )

        # -- per pair ------------------------------------------------------------------------
        pairs: list[SitePairJumps] = []
        if n_jumps:
            lo, hi = np.minimum(frm, to), np.maximum(frm, to)
            key = lo.astype(np.int64) * n_sites + hi
            uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
            fwd = np.bincount(inv, weights=(frm == lo).astype(float), minlength=len(uniq))
            ok = ~np.isnan(before)
            bsum = np.bincount(inv[ok], weights=before[ok], minlength=len(uniq))
            bn = np.bincount(inv[ok], minlength=len(uniq))
            i_s, j_s = uniq // n_sites, uniq % n_sites
            dist = np.linalg.norm(min_image_vectors(sites[i_s], sites[j_s], lat), axis=1)
            for k in np.argsort(-counts, kind="stable"):
                pairs.append(
                    SitePairJumps(
                        sites=(int(i_s[k]), int(j_s[k])),
                        distance_a=float(dist[k]),
                        n_jumps=int(counts[k]),
                        n_forward=int(fwd[k]),
                        n_backward=int(counts[k] - fwd[k]),
                        mean_residence_before_ps=float(bsum[k] / bn[k]) if bn[k] else None,
                        inter_cage=(
                            bool(site_cage[i_s[k]] != site_cage[j_s[k]])
                            if site_cage is not None
                            else None
                        ),
                    )
                )

        # -- D* and the correlation factor -------------------------------------------------------
        d_star = d_star_err = None
        if self.tracer is not None:
            d_star, d_star_err = self.tracer
            d_source = "given"
        elif ctx.temperature_k is None:
            d_source = "not computed: no temperature (pass it, or give D*)"
        else:
            from ionflow.analysis.diffusion import analyze_displacements

            try:
                self.diffusion = analyze_displacements(
                    disp, species=ctx.mobile_species, temperature_k=float(ctx.temperature_k),
                    drift_reference=ctx.reference_label, source=ctx.source,
                )  # fmt: skip
            except InsufficientDataError as exc:
                d_source = f"not computed: {exc}"
            else:
                dif = self.diffusion
                d_star, d_star_err = dif.diffusivity_cm2_s, dif.diffusivity_err_cm2_s
                d_source = (
                    f"MSD of this run (ionflow analyze's fit, window {dif.fit_window_ps[0]:.3g}–"
                    f"{dif.fit_window_ps[1]:.3g} ps): {dif.regime}"
                )
                if d_star is None:
                    d_source += f" — {dif.regime_reason}"
        f = f_err = None
        if d_star is None:
            f_reason = f"no D*: {d_source}"
        elif not d_jump:
            f_reason = "no jumps: D_jump = 0"
        else:
            f = d_star / d_jump
            rel = math.hypot(d_star_err / d_star, (d_jump_err or 0.0) / d_jump)
            f_err = f * rel
            f_reason = f"f = D*/D_jump = {d_star:.3g}/{d_jump:.3g}"
        if n_jumps < 20:
            notes.append(f"only {n_jumps} jumps: rates and f are rough")
        if on_site < 0.5:
            notes.append(
                f"ions are within the radius of a site only {on_site:.0%} of the time: the "
                "sites do not describe where the ions are (liquid-like? other sites?)"
            )
        return JumpsResult(
            source=ctx.source,
            species=ctx.mobile_species,
            temperature_k=ctx.temperature_k,
            n_mobile=n_ions,
            n_frames=n_frames,
            frame_interval_fs=ctx.frame_interval_fs,
            duration_ps=duration,
            drift_reference=ctx.reference_label,
            sites_source=source,
            n_sites=n_sites,
            sites_frac=[[float(x) for x in s] for s in sites],
            site_radius_a=float(np.median(radii)),
            site_radius_min_a=float(np.min(radii)),
            site_radius_rule=rule,
            fraction_on_site=on_site,
            n_jumps=n_jumps,
            jump_rate_per_ps=rate,
            jump_rate_err_per_ps=rate_err,
            mean_jump_length_a=mean_a,
            rms_jump_length_a=rms_a,
            jump_diffusivity_cm2_s=d_jump,
            jump_diffusivity_err_cm2_s=d_jump_err,
            tracer_diffusivity_cm2_s=d_star,
            tracer_diffusivity_err_cm2_s=d_star_err,
            tracer_diffusivity_source=d_source,
            correlation_factor=f,
            correlation_factor_err=f_err,
            correlation_factor_reason=f_reason,
            residence_time_ps=residence,
            n_completed_visits=int(res_ps.size),
            site_occupancy=[float(x) for x in occupancy],
            site_residence_ps=site_res,
            jumps_by_site_pair=pairs,
            warnings=notes,
            **cage_fields,
        )


def _sites_in_cell(
    sites: np.ndarray, sites_lattice: np.ndarray, lattice: np.ndarray, label: str
) -> tuple[np.ndarray, str]:
    """Sites given in a cell of their own: the same cell (±3 %), or a cell the trajectory's
    is an integer supercell of along parallel axes (tiled); else an error."""
    la, lb = np.linalg.norm(sites_lattice, axis=1), np.linalg.norm(lattice, axis=1)
    ratio = lb / la
    mult = np.round(ratio)
    unit_a = sites_lattice / la[:, None]
    unit_b = lattice / lb[:, None]
    parallel = np.all(np.einsum("ij,ij->i", unit_a, unit_b) > 0.999)
    if not (parallel and np.all(mult >= 1) and np.all(np.abs(ratio / mult - 1) < 0.03)):
        raise UserInputError(
            f"{label}: the cell of the sites ({', '.join(f'{x:.4g}' for x in la)} Å) is not the "
            f"trajectory's ({', '.join(f'{x:.4g}' for x in lb)} Å) nor an integer sub-cell of "
            "it along the same axes: give fractional coordinates of the trajectory's cell"
        )
    if np.all(mult == 1):
        return sites, ""
    n = mult.astype(int)
    shifts = np.array([(i, j, k) for i in range(n[0]) for j in range(n[1]) for k in range(n[2])])
    tiled = ((sites[None, :, :] + shifts[:, None, :]) / n).reshape(-1, 3)
    return tiled % 1.0, f", tiled {n[0]}×{n[1]}×{n[2]} to the trajectory's cell"


def _frac_array(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.all(np.isfinite(arr)):
        raise UserInputError(f"{what}: expected rows of 3 fractional coordinates, got {arr.shape}")
    return arr


def attempt_frequency(
    temperatures_k: Sequence[float],
    jump_rates_per_ps: Sequence[float],
    jump_rate_errs_per_ps: Sequence[float | None] | None = None,
) -> dict:
    """Campaign-level hook: Γ(T) = ν0·exp(−ΔH/k_B T) fitted like D(T) (the Arrhenius
    module's weighted fit). ``attempt_frequency_thz`` is ν0 in 1/ps = THz (it includes the
    number of escape directions: Γ is the total jump rate of an ion)."""
    from ionflow.analysis.arrhenius import fit_arrhenius

    fit = fit_arrhenius(temperatures_k, jump_rates_per_ps, jump_rate_errs_per_ps)
    return {
        "attempt_frequency_thz": fit.d0_cm2_s,
        "ln_attempt_frequency_err": fit.ln_d0_err,
        "jump_activation_enthalpy_ev": fit.ea_ev,
        "jump_activation_enthalpy_err_ev": fit.ea_err_ev,
        "n_temperatures": fit.n_temperatures,
        "warnings": fit.warnings,
    }


def plot_jumps(result: JumpsResult, lattice: np.ndarray, path=None, *, axis: int = 2):
    """The jump network projected along ``axis`` (line width ∝ log jumps; red inter-cage)
    and the jump-length histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    lat = np.asarray(lattice, dtype=float)
    keep = [i for i in range(3) if i != axis]
    sites = np.array(result.sites_frac).reshape(-1, 3)
    cart = sites @ lat
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120,
                                  gridspec_kw={"width_ratios": [1.3, 1]})  # fmt: skip
    segs, widths, colors, lengths = [], [], [], []
    for p in result.jumps_by_site_pair:
        i, j = p.sites
        v = min_image_vectors(sites[i : i + 1], sites[j : j + 1], lat)[0]
        a = cart[i][keep]
        segs.append([a, a + v[keep]])
        widths.append(0.4 + 1.2 * math.log10(1 + p.n_jumps))
        colors.append("tab:red" if p.inter_cage else "tab:blue")
        lengths += [p.distance_a] * p.n_jumps
    if segs:
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, alpha=0.7))
    occ = np.asarray(result.site_occupancy)
    ax.scatter(cart[:, keep[0]], cart[:, keep[1]], s=4 + 40 * occ / max(occ.max(), 1e-9),
               c="k", zorder=3)  # fmt: skip
    names = "abc"
    ax.set_aspect("equal")
    ax.autoscale()
    ax.set_xlabel(f"{names[keep[0]]} (Å)")
    ax.set_ylabel(f"{names[keep[1]]} (Å)")
    title = f"{result.n_jumps} jumps, Γ = {result.jump_rate_per_ps:.3g}/ps per ion"
    if result.n_inter_cage_jumps is not None:
        title += f" (red inter-cage: {result.n_inter_cage_jumps})"
    ax.set_title(title, fontsize=9)
    if lengths:
        ax2.hist(lengths, bins=40, color="0.4")
    ax2.set_xlabel("jump length (Å)")
    ax2.set_ylabel("jumps")
    f = (
        f"f = {result.correlation_factor:.2f} ± {result.correlation_factor_err:.2f}"
        if result.correlation_factor is not None
        else "f: —"
    )
    ax2.set_title(f"⟨a⟩ = {result.mean_jump_length_a or 0:.2f} Å; {f}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
