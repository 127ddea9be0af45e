"""Polyanion rotation: orientational autocorrelations of centre→ligand bonds (seed 000).

Groups are found in the first analysed frame, by the bonding rule of the pinned-anion
control (:func:`ionflow.structure.classify_anions`: ligand within (sum of Cordero covalent
radii) × 1.2 of a framework cation), or from explicit ``center``/``ligand`` elements with the
same distance rule. Groups are sorted into kinds by formula (``PS4``, ``BH4``, ``PO3N``).

For every centre→ligand bond the unit vector u(t) is followed through the run: the bond
vector of the first frame is taken by minimum image, later ones add the unwrapped
displacements of the two atoms (so a bond crossing the cell boundary stays whole and the
drift cancels). Only these unit vectors are kept (float32; long runs are strided so that at
most :data:`MAX_FRAMES` frames and :data:`MAX_STORED_VALUES` numbers are stored).

Orientational autocorrelations over **all time origins**, by FFT (O(T log T)):

* C1(t) = ⟨P1(u(0)·u(t))⟩ = Σ_a ⟨u_a(0) u_a(t)⟩ (three component correlations);
* C2(t) = ⟨P2(u(0)·u(t))⟩ = (3 S(t) − 1)/2 with
  S(t) = ⟨(u(0)·u(t))²⟩ = Σ_a ⟨u_a²(0) u_a²(t)⟩ + 2 Σ_{a<b} ⟨(u_a u_b)(0) (u_a u_b)(t)⟩
  (six correlations of the pairwise products).

Averaged over the bonds of a group, then over groups (the error of each lag is the standard
error over groups). Lags up to half the run are reported (longer lags have too few origins).

Relaxation times: a stretched exponential (KWW) A·exp(−(t/τ_K)^β) is fitted to C_l on lags
from the first frame interval to where C_l first falls below :data:`FIT_FLOOR` (or half the
run); τ_l is its mean relaxation time (τ_K/β)·Γ(1/β) — the integral of the normalised
decay, equal to τ for a simple exponential; 1 − A is the fast librational loss of
correlation. For rotational diffusion with constant D_r, C_l = exp(−l(l+1) D_r t):
τ1 = 1/(2 D_r), τ2 = 1/(6 D_r). When C_l does not fall below 1/e within half the run, τ_l is
null with the reason ("no reorientation within the run"). The uncertainty is a jackknife
over groups (refit with each group left out) — the spread over groups; groups of one run
are not fully independent (they share the lattice), so it is a lower bound on the
run-to-run scatter.

``mean_reorientation_angle_deg``: the mean angle between u(t0) and u(t0 + 1 ps) over all
origins and bonds (at :data:`ANGLE_LAG_PS`, or the longest lag up to half the run if the run
is shorter; the lag used is ``reorientation_angle_lag_ps``). A vibrating group gives its
libration amplitude (~10–20°); reorienting groups approach 90° (random orientation).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.stream import FrameChunk, StreamedAnalysis, TrajectoryContext, register
from ionflow.errors import InsufficientDataError, UserInputError

__all__ = [
    "GroupKindRotation",
    "RotationAnalysis",
    "RotationResult",
    "orientational_acf",
    "plot_rotation",
]

#: Frames kept (longer runs are strided; the ACF needs every origin, not every frame).
MAX_FRAMES = 20_000
#: Most float32 numbers stored for the unit vectors (frames × bonds × 3): 96 MB.
MAX_STORED_VALUES = 24_000_000
#: C_l below this ends the fit range (noise floor of the tail).
FIT_FLOOR = 0.05
#: C_l must fall below this within half the run for a τ.
DECAY_THRESHOLD = 1.0 / math.e
#: Lag of mean_reorientation_angle_deg, ps.
ANGLE_LAG_PS = 1.0
#: Points of the thinned curves.
N_CURVE_POINTS = 300

TAU_METHOD = (
    "KWW fit A·exp(-(t/τK)^β) to C_l from one frame interval to where C_l < "
    f"{FIT_FLOOR:g} (or half the run); τ = (τK/β)Γ(1/β), the mean relaxation time "
    "(= τ of a simple exponential); null when C_l stays ≥ 1/e up to half the run"
)
ERROR_METHOD = (
    "jackknife over groups (refit leaving each group out); ACF errors: standard error of "
    "the per-group ACFs at each lag"
)


class KWWFit(BaseModel):
    """Stretched-exponential fit of one C_l."""

    amplitude: float = Field(description="A (1 − A: fast librational decay)")
    tau_kww_ps: float = Field(description="τ_K, ps")
    beta: float = Field(description="Stretching exponent β (1 = exponential)")
    fit_range_ps: tuple[float, float] = Field(description="Lags fitted, ps")


class GroupKindRotation(BaseModel):
    """Rotation of one kind of polyanion group."""

    formula: str = Field(description="Group formula, centre first, e.g. 'PS4'")
    n_groups: int = Field(description="Groups of this kind")
    n_bonds: int = Field(description="Centre→ligand bonds followed")
    centre_element: str = Field(description="Centre element")
    ligand_elements: list[str] = Field(description="Ligand elements")
    centre_indices: list[int] = Field(description="Atom indices of the centres")
    mean_bond_length_a: float = Field(description="Mean centre–ligand distance over the run, Å")
    max_bond_length_a: float = Field(description="Longest centre–ligand distance seen, Å")
    time_ps: list[float] = Field(description="Lag times, ps (thinned, up to half the run)")
    p1_acf: list[float] = Field(description="C1(t) = <P1(u(0)·u(t))>, all origins")
    p2_acf: list[float] = Field(description="C2(t) = <P2(u(0)·u(t))>, all origins")
    p1_acf_err: list[float] = Field(description="Standard error of C1 over groups")
    p2_acf_err: list[float] = Field(description="Standard error of C2 over groups")
    tau_p1_ps: float | None = Field(description="Relaxation time of C1, ps (tau_method)")
    tau_p1_err_ps: float | None = Field(description="Its uncertainty, ps (error_method)")
    tau_p1_reason: str | None = Field(None, description="Why tau_p1_ps is null")
    tau_p2_ps: float | None = Field(description="Relaxation time of C2, ps (tau_method)")
    tau_p2_err_ps: float | None = Field(description="Its uncertainty, ps (error_method)")
    tau_p2_reason: str | None = Field(None, description="Why tau_p2_ps is null")
    p1_fit: KWWFit | None = Field(None, description="The fit behind tau_p1_ps")
    p2_fit: KWWFit | None = Field(None, description="The fit behind tau_p2_ps")
    p1_at_max_lag: float = Field(description="C1 at the longest lag reported")
    p2_at_max_lag: float = Field(description="C2 at the longest lag reported")
    rotational_diffusion_from_p2_ps_inv: float | None = Field(
        None, description="D_r = 1/(6 τ2), ps⁻¹ (valid if the decay is diffusive, β ≈ 1)"
    )
    mean_reorientation_angle_deg: float = Field(
        description="Mean angle between u(t0) and u(t0 + lag), degrees (lag: "
        "reorientation_angle_lag_ps)"
    )
    reorientation_angle_lag_ps: float = Field(description="Lag of that angle, ps")


class RotationResult(BaseModel):
    """Polyanion rotation of one run."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    source: str = Field(description="Trajectory analysed")
    frame_interval_fs: float = Field(description="Time between the frames used, fs")
    frame_stride: int = Field(description="Frames of the trajectory per frame used")
    n_frames: int = Field(description="Frames used")
    duration_ps: float = Field(description="Length of the analysed run, ps")
    max_lag_ps: float = Field(description="Longest lag reported (half the run), ps")
    detection: str = Field(description="How groups were found (first frame)")
    tau_method: str = Field(TAU_METHOD, description="How tau_p1_ps / tau_p2_ps are defined")
    error_method: str = Field(ERROR_METHOD, description="How their uncertainties are found")
    angle_definition: str = Field(
        "mean over all origins and bonds of arccos(u(t0)·u(t0+lag)), lag 1 ps",
        description="How mean_reorientation_angle_deg is defined",
    )
    groups: list[GroupKindRotation] = Field(description="One entry per kind of group")
    note: str | None = Field(None, description="Why groups is empty, if it is")
    warnings: list[str] = Field(default_factory=list, description="Things to check")


# ---------------------------------------------------------------------------- the numbers


def _acf_columns(x: np.ndarray) -> np.ndarray:
    """Per-column autocorrelation over all origins: out[k, j] = mean_s x[s,j] x[s+k,j]."""
    from scipy.fft import irfft, next_fast_len, rfft

    n = x.shape[0]
    size = next_fast_len(2 * n - 1, real=True)
    f = rfft(x, n=size, axis=0)
    f *= np.conj(f)
    out = irfft(f, n=size, axis=0)[:n]
    out /= (n - np.arange(n))[:, None]
    return out


def orientational_acf(
    u: np.ndarray, block_bytes: int = 64 * 2**20
) -> tuple[np.ndarray, np.ndarray]:
    """C1 and C2 per bond, all time origins, by FFT.

    ``u``: (frames, bonds, 3) unit vectors. Returns two (frames, bonds) arrays (float64).
    Bonds are transformed in blocks whose FFT work arrays stay near ``block_bytes``.
    """
    from scipy.fft import next_fast_len

    n, m, _ = u.shape
    size = next_fast_len(2 * n - 1, real=True)
    block_bonds = max(1, int(block_bytes // (9 * (size // 2 + 1) * 16 * 2)))
    c1 = np.empty((n, m))
    c2 = np.empty((n, m))
    pairs = ((0, 1), (0, 2), (1, 2))
    for s in range(0, m, block_bonds):
        blk = np.asarray(u[:, s : s + block_bonds], dtype=np.float64)
        k = blk.shape[1]
        series = np.concatenate(
            [blk[:, :, a] for a in range(3)]
            + [blk[:, :, a] ** 2 for a in range(3)]
            + [blk[:, :, a] * blk[:, :, b] for a, b in pairs],
            axis=1,
        )
        acf = _acf_columns(series).reshape(n, 9, k)
        c1[:, s : s + k] = acf[:, 0:3].sum(axis=1)
        sq = acf[:, 3:6].sum(axis=1) + 2.0 * acf[:, 6:9].sum(axis=1)
        c2[:, s : s + k] = 1.5 * sq - 0.5
    return c1, c2


def _kww(t, a, tau, beta):
    return a * np.exp(-((t / tau) ** beta))


def _fit_tau(
    t: np.ndarray, c: np.ndarray, half: int
) -> tuple[float | None, KWWFit | None, str | None]:
    """(τ, fit, reason when None) of one mean ACF c over lags 0…half."""
    from scipy.optimize import curve_fit
    from scipy.special import gamma

    seg = c[1 : half + 1]
    below = np.flatnonzero(seg < DECAY_THRESHOLD)
    if below.size == 0:
        return (
            None,
            None,
            f"no reorientation within the run: C stays ≥ {float(seg.min()):.3f} (> 1/e) up to "
            f"{t[half]:.3g} ps (half the run)",
        )
    floor = np.flatnonzero(seg < FIT_FLOOR)
    end = (int(floor[0]) + 1) if floor.size else half  # index into c
    end = max(end, min(half, 4))
    tt, cc = t[1 : end + 1], c[1 : end + 1]
    t_e = float(t[1 + int(below[0])])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(
                _kww,
                tt,
                cc,
                p0=(min(max(cc[0], 0.3), 1.0), t_e, 1.0),
                bounds=([0.05, 1e-6 * t[1], 0.1], [1.2, 1e3 * t[-1], 2.0]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None, None, "the KWW fit did not converge"
    a, tau_k, beta = (float(x) for x in p)
    tau = tau_k / beta * float(gamma(1.0 / beta))
    if not math.isfinite(tau) or tau <= 0:
        return None, None, "the KWW fit gave no finite relaxation time"
    return tau, KWWFit(amplitude=a, tau_kww_ps=tau_k, beta=beta, fit_range_ps=(tt[0], tt[-1])), None


def _short(source: str) -> str:
    """A trajectory label for messages: the first segment and how many follow."""
    parts = source.split(", ")
    return parts[0] if len(parts) == 1 else f"{parts[0]} (+{len(parts) - 1} segments)"


def _thin(n_lags: int) -> np.ndarray:
    """Lag indices 0…n_lags−1 for curves: linear plus a log-spaced start."""
    if n_lags <= N_CURVE_POINTS:
        return np.arange(n_lags)
    lin = np.linspace(0, n_lags - 1, 2 * N_CURVE_POINTS // 3).round().astype(int)
    geo = np.geomspace(1, n_lags - 1, N_CURVE_POINTS // 3).round().astype(int)
    return np.unique(np.concatenate([[0], lin, geo]))


# ---------------------------------------------------------------------------- the analysis


@register
class RotationAnalysis(StreamedAnalysis):
    """Orientational ACFs of polyanion groups (module docstring)."""

    name = "rotation"
    result_model = RotationResult
    schema_version = "1"

    def __init__(
        self,
        center: str | None = None,
        ligand: str | None = None,
        *,
        bond_tolerance: float = 1.2,
        require_groups: bool = False,
    ) -> None:
        if (center is None) != (ligand is None):
            raise UserInputError("give both --center and --ligand (e.g. --center P --ligand S)")
        self.center = center
        self.ligand = ligand
        self.bond_tolerance = float(bond_tolerance)
        self.require_groups = require_groups

    @classmethod
    def describe(cls, result: RotationResult) -> str | None:
        if not result.groups:
            return f"rotation: {result.note}" if result.note else None
        parts = []
        for g in result.groups:
            bits = []
            for l_, tau, err, reason in (
                (2, g.tau_p2_ps, g.tau_p2_err_ps, g.tau_p2_reason),
                (1, g.tau_p1_ps, g.tau_p1_err_ps, g.tau_p1_reason),
            ):
                if tau is not None:
                    bits.append(f"τ{l_} = {tau:.3g}" + (f" ± {err:.2g}" if err else "") + " ps")
                elif l_ == 2:
                    why = "no reorientation" if reason and "no reorientation" in reason else reason
                    bits.append(f"C2 = {g.p2_at_max_lag:.3f} at {result.max_lag_ps:.3g} ps ({why})")
            bits.append(
                f"⟨θ⟩ = {g.mean_reorientation_angle_deg:.0f}° at {g.reorientation_angle_lag_ps:g} ps"
            )
            parts.append(f"{g.formula} ×{g.n_groups}: " + ", ".join(bits))
        return "rotation: " + "; ".join(parts)

    # -- streaming

    def prepare(self, ctx: TrajectoryContext, unwrapper) -> None:
        self.ctx = ctx
        present = set(ctx.species)
        for role, el in (("--center", self.center), ("--ligand", self.ligand)):
            if el is not None and el not in present:
                raise UserInputError(
                    f"{_short(ctx.source)}: {role} {el} is not in the trajectory "
                    f"(species: {', '.join(sorted(present))})"
                )
        self._frames: list[np.ndarray] = []
        self._bond_sum: np.ndarray | None = None
        self._bond_max: np.ndarray | None = None
        self._n_seen = 0
        self.kinds: dict[str, list[tuple[int, list[int]]]] = {}
        self.detection = ""
        self.note: str | None = None
        self.stride = 1
        self._atoms = np.array([], dtype=int)

    def _detect(self, positions: np.ndarray, lattice: np.ndarray) -> None:
        from pymatgen.core import Lattice, Structure

        from ionflow.structure import classify_anions

        ctx = self.ctx
        structure = Structure(
            Lattice(lattice), list(ctx.species), positions, coords_are_cartesian=True
        )
        groups: list[tuple[int, list[int], str]] = []
        if self.center is None:
            cls = classify_anions(structure, ctx.mobile_species, bond_tolerance=self.bond_tolerance)
            groups = [(g.centre_index, list(g.ligand_indices), g.label) for g in cls.groups]
            self.detection = f"first frame, pinned-control bonding rule: {cls.method}"
            if not groups:
                self.note = f"no polyanion groups in the first frame ({cls.summary()})"
        else:
            from ase.data import covalent_radii
            from pymatgen.core import Element

            cut = (
                covalent_radii[Element(self.center).Z] + covalent_radii[Element(self.ligand).Z]
            ) * self.bond_tolerance
            centres = [i for i, s in enumerate(ctx.species) if s == self.center]
            ci, ni, _, dist = structure.get_neighbor_list(
                cut, sites=[structure[i] for i in centres]
            )
            members: dict[int, set[int]] = {}
            for c, n in zip(np.asarray(centres)[ci.astype(int)], ni.astype(int), strict=True):
                if ctx.species[n] == self.ligand:
                    members.setdefault(int(c), set()).add(int(n))
            for c in sorted(members):
                lig = sorted(members[c])
                label = f"{self.center}{self.ligand}{len(lig) if len(lig) > 1 else ''}"
                groups.append((c, lig, label))
            self.detection = (
                f"first frame, given centre {self.center} and ligand {self.ligand}: bonded when "
                f"within (sum of Cordero covalent radii) x {self.bond_tolerance:g} = {cut:.2f} Å"
            )
            if not groups:
                self.note = f"no {self.ligand} within {cut:.2f} Å of any {self.center}"
        if not groups:
            if self.require_groups:
                hint = "" if self.center else " (give --center/--ligand to choose groups)"
                raise UserInputError(f"{_short(ctx.source)}: {self.note}; nothing rotates{hint}")
            return
        for c, lig, label in groups:
            self.kinds.setdefault(label, []).append((c, lig))
        # bonds, grouped kind by kind, group by group
        self.bond_centre = np.array(
            [c for kind in self.kinds.values() for c, lig in kind for _ in lig], dtype=int
        )
        self.bond_ligand = np.array(
            [x for kind in self.kinds.values() for _, lig in kind for x in lig], dtype=int
        )
        self._atoms, inv = np.unique(
            np.concatenate([self.bond_centre, self.bond_ligand]), return_inverse=True
        )
        nb = len(self.bond_centre)
        self._ci, self._li = inv[:nb], inv[nb:]
        inv_lat = np.linalg.inv(lattice)
        d = (positions[self.bond_ligand] - positions[self.bond_centre]) @ inv_lat
        d -= np.round(d)
        self._v0 = d @ lattice  # minimum image in the first frame
        n = ctx.n_frames
        self.stride = max(1, -(-n // MAX_FRAMES), -(-(n * nb * 3) // MAX_STORED_VALUES))
        self._bond_max = np.zeros(nb)
        self._bond_sum = np.zeros(nb)

    def accumulate(self, chunk: FrameChunk) -> None:
        if chunk.start == 0:
            lat = chunk.lattices if chunk.lattices.ndim == 2 else chunk.lattices[0]
            self._detect(chunk.positions[0], lat)
        if not self.kinds:
            return
        disp = chunk.displacements(self._atoms)
        v = self._v0[None] + disp[:, self._li] - disp[:, self._ci]
        length = np.linalg.norm(v, axis=2)
        self._bond_sum += length.sum(axis=0)
        self._n_seen += length.shape[0]
        self._bond_max = np.maximum(self._bond_max, length.max(axis=0))
        first = (-chunk.start) % self.stride
        u = (v[first :: self.stride] / length[first :: self.stride, :, None]).astype(np.float32)
        self._frames.append(u)

    def conclude(self) -> RotationResult:
        ctx = self.ctx
        dt_ps = ctx.frame_interval_fs * self.stride / 1000.0
        base = dict(
            source=ctx.source,
            frame_interval_fs=ctx.frame_interval_fs * self.stride,
            frame_stride=self.stride,
        )
        if not self.kinds:
            return RotationResult(
                **base,
                n_frames=ctx.n_frames // self.stride,
                duration_ps=(ctx.n_frames - 1) * ctx.frame_interval_fs / 1000.0,
                max_lag_ps=0.0,
                detection=self.detection,
                groups=[],
                note=self.note or "no polyanion groups",
            )
        u = np.concatenate(self._frames)
        n = u.shape[0]
        if n < 4:
            raise InsufficientDataError(f"{_short(ctx.source)}: {n} frames: too few for an ACF")
        half = (n - 1) // 2
        t = np.arange(n) * dt_ps
        thin = _thin(half + 1)
        angle_lag = min(max(1, int(round(ANGLE_LAG_PS / dt_ps))), half)
        notes: list[str] = []
        out = []
        col = 0
        for label, members in self.kinds.items():
            sizes = [len(lig) for _, lig in members]
            nb = sum(sizes)
            sl = slice(col, col + nb)
            col += nb
            uk = u[:, sl]
            bmax = float(self._bond_max[sl].max())
            b0 = float(np.linalg.norm(self._v0[sl], axis=1).max())
            bmean = float(self._bond_sum[sl].mean()) / max(self._n_seen, 1)
            c1b, c2b = orientational_acf(uk)
            bounds = np.cumsum([0, *sizes])
            c1g = np.stack(
                [c1b[:, a:b].mean(axis=1) for a, b in zip(bounds, bounds[1:], strict=False)], 1
            )
            c2g = np.stack(
                [c2b[:, a:b].mean(axis=1) for a, b in zip(bounds, bounds[1:], strict=False)], 1
            )
            ng = c1g.shape[1]
            c1, c2 = c1g.mean(axis=1), c2g.mean(axis=1)
            if ng > 1:
                se1 = c1g.std(axis=1, ddof=1) / np.sqrt(ng)
                se2 = c2g.std(axis=1, ddof=1) / np.sqrt(ng)
            else:
                se1 = se2 = np.zeros_like(c1)
            fits = {}
            for l_, cg, c in ((1, c1g, c1), (2, c2g, c2)):
                tau, fit, reason = _fit_tau(t, c, half)
                err = None
                if tau is not None and ng > 2:
                    jk = []
                    for j in range(ng):
                        cj = (c * ng - cg[:, j]) / (ng - 1)
                        tj, _, _ = _fit_tau(t, cj, half)
                        if tj is not None:
                            jk.append(tj)
                    if len(jk) == ng:
                        jk = np.asarray(jk)
                        err = float(np.sqrt((ng - 1) / ng * np.sum((jk - jk.mean()) ** 2)))
                    else:
                        reason = None
                        notes.append(
                            f"{label}: τ{l_} without an error: leaving out one of "
                            f"{ng - len(jk)} group(s) removes the decay"
                        )
                fits[l_] = (tau, err, reason, fit)
            dots = np.einsum("tbi,tbi->tb", uk[angle_lag:], uk[:-angle_lag], dtype=np.float64)
            angle = float(np.degrees(np.arccos(np.clip(dots, -1.0, 1.0))).mean())
            if bmax > 1.5 * b0:
                notes.append(
                    f"{label}: a centre–ligand distance reached {bmax:.2f} Å: a group may have "
                    "broken up (the ACF then follows a non-bond)"
                )
            tau2 = fits[2][0]
            first = members[0]
            out.append(
                GroupKindRotation(
                    formula=label,
                    n_groups=ng,
                    n_bonds=nb,
                    centre_element=ctx.species[first[0]],
                    ligand_elements=sorted({ctx.species[x] for _, lig in members for x in lig}),
                    centre_indices=[c for c, _ in members],
                    mean_bond_length_a=bmean,
                    max_bond_length_a=bmax,
                    time_ps=t[thin].tolist(),
                    p1_acf=c1[thin].tolist(),
                    p2_acf=c2[thin].tolist(),
                    p1_acf_err=se1[thin].tolist(),
                    p2_acf_err=se2[thin].tolist(),
                    tau_p1_ps=fits[1][0],
                    tau_p1_err_ps=fits[1][1],
                    tau_p1_reason=fits[1][2],
                    tau_p2_ps=tau2,
                    tau_p2_err_ps=fits[2][1],
                    tau_p2_reason=fits[2][2],
                    p1_fit=fits[1][3],
                    p2_fit=fits[2][3],
                    p1_at_max_lag=float(c1[half]),
                    p2_at_max_lag=float(c2[half]),
                    rotational_diffusion_from_p2_ps_inv=None if tau2 is None else 1.0 / (6 * tau2),
                    mean_reorientation_angle_deg=angle,
                    reorientation_angle_lag_ps=angle_lag * dt_ps,
                )
            )
        angle_def = (
            "mean over all origins and bonds of arccos(u(t0)·u(t0+lag)), lag "
            f"{angle_lag * dt_ps:g} ps"
            + (
                ""
                if abs(angle_lag * dt_ps - ANGLE_LAG_PS) < 1e-9
                else " (the run is short of 1 ps)"
            )
        )
        return RotationResult(
            **base,
            n_frames=n,
            duration_ps=(n - 1) * dt_ps,
            max_lag_ps=half * dt_ps,
            detection=self.detection,
            angle_definition=angle_def,
            groups=out,
            warnings=notes,
        )


# ---------------------------------------------------------------------------- plot


def plot_rotation(result: RotationResult, path: str | Path | None = None):
    """C1 and C2 vs lag time per kind of group, log-linear, with the KWW fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, g in enumerate(result.groups):
        col = colours[k % len(colours)]
        t = np.asarray(g.time_ps)
        for l_, c, err, fit, style in (
            (1, g.p1_acf, g.p1_acf_err, g.p1_fit, "-"),
            (2, g.p2_acf, g.p2_acf_err, g.p2_fit, "--"),
        ):
            c, err = np.asarray(c), np.asarray(err)
            ok = c > 0
            ax.plot(t[ok], c[ok], style, color=col, label=f"{g.formula} C{l_}")
            ax.fill_between(
                t[ok], np.maximum(c - err, 1e-4)[ok], (c + err)[ok], color=col, alpha=0.15
            )
            if fit is not None:
                tf = np.linspace(max(t[1], 1e-9) if len(t) > 1 else 0, t[-1], 200)
                ax.plot(tf, _kww(tf, fit.amplitude, fit.tau_kww_ps, fit.beta), ":", color=col, lw=1)
    ax.axhline(DECAY_THRESHOLD, color="0.6", lw=0.8)
    ax.set_yscale("log")
    lows = [min((x for x in (*g.p1_acf, *g.p2_acf) if x > 0), default=1.0) for g in result.groups]
    ax.set_ylim(bottom=max(1e-3, 0.8 * min([0.3, *lows])), top=1.05)
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("orientational ACF  C_l(t) = ⟨P_l(u(0)·u(t))⟩")
    ax.set_title(f"Polyanion rotation — {_short(result.source)}", fontsize=8)
    if result.groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
