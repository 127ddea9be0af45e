"""Tracer and charge diffusivity, conductivity and regime from a trajectory.

The fit window rule (``fit="ionflow"``, the default)
---------------------------------------------------
Let ``T`` be the analysed duration (production only). The MSD is fitted on lags
``[t_start, t_end]`` with

* ``t_start = min(max(1 ps, T/20), T/4, 10 ps)`` — past the ballistic and vibrational
  "cage" regime of Li-type ions (~0.1–1 ps) and the first hops, without throwing away
  the start of short runs;
* ``t_end = max(min(T/2, 50 ps), 5·t_start)`` capped at ``T/2`` — lags beyond ``T/2``
  have fewer than half the frames as time origins, and a window that grew with ``T``
  would keep the relative error constant however long the run: with the 50 ps cap
  the error of long (ns) ML-potential runs keeps shrinking as ``√(t_end/T)``.

The window is reported (``fit_window_ps``) and can be overridden. The slope is an
ordinary least-squares fit of MSD(t) = 6·D·t + c on up to 200 evenly spaced lags
(the intercept absorbs the rattling amplitude).

Honest uncertainty
------------------
MSD points at different lags are strongly correlated (they share time origins),
so the OLS slope error that pymatgen reports is not an error bar. The reported
``diffusivity_err_cm2_s`` is ``statistical ⊕ systematic`` (both parts are reported):

* **statistical** = max(ion resampling, Brownian model) × max(1, √block ratio):

  - *ion resampling*: the same linear estimator applied to every ion's own MSD curve
    gives one slope per ion; the ion average *is* the estimate, and the standard error
    over ions (× a Student-t factor for few ions) captures time correlation, rattling and
    hopping noise without a model;
  - *Brownian covariance model* (kinisi's idea): the exact covariance of an all-origin
    MSD for Brownian motion with the fitted D, propagated through the same estimator
    (:func:`ionflow.analysis.msd.brownian_slope_variance`);
  - *block check*: both assume independent ions and stationary dynamics. Real AIMD
    breaks both (Li in one cage move together; cages open and close). The run is cut
    into 4, 6 and 8 consecutive blocks, the same estimator (window scaled to the block)
    is applied to each, and the block-to-block variance is compared with the variance
    the errors above predict for the blocks (pooled over the three cuttings:
    ``block_dispersion``). A ratio above 1 scales the statistical error up by its square
    root; it never scales it down. A common window bias cancels in this comparison
    (every block has the same window), so it measures noise only.

* **systematic (window dependence)**: the window is split into an early and a late
  half and the slope fitted on each (``local_diffusivities``); their difference Δ has
  an error σ_Δ from the same three sources (ions paired, so the strong correlation of
  the two halves is kept). ``window_z = Δ/σ_Δ``. The part of Δ beyond its noise,
  ½·√max(0, Δ² − σ_Δ²), is the window systematic — zero on average for a truly linear
  MSD, the half-spread of the local D when the window matters.

The charge (collective) diffusivity has a single time series, so the Brownian model
applies — with the step variance of the larger of the collective and the tracer slope,
so that a collective slope ≤ 0 still has an honest non-zero error — scaled by the block
check of the collective slope. He et al. (2018)'s empirical relative error
3.43/√N_eff + 0.04 is reported alongside (``diffusivity_rel_err_he2018``) with
N_eff = N_ions·6·D·T/a², the number of hops of length ``a`` the run contains.

Calibration (tests/test_analysis.py, synthetic trajectories with a known D):
±1σ covers the truth ~0.7–0.75 of runs and ±2σ ~0.95, mean σ ≈ 1.1–1.3× the real spread.

Regime
------
In this order:

* ``caged``: the MSD stops growing in the window (log–log slope α < 0.1) — ions rattle
  or move inside cages;
* ``insufficient``: fewer than ``min_hops`` hop equivalents (N_eff);
* ``subdiffusive``: the MSD is not linear over the window within what the noise
  allows, ``|window_z| ≥ 3`` (≈ 0.3 % of linear runs): ions move but the long-time
  diffusive regime is not reached (cage-limited motion, a slope still falling — or
  rising — across the window). D depends on the window: run longer or hotter. The local
  slopes and z are kept as evidence;
* ``insufficient``: D not resolved from zero (D < 2σ, total error);
* ``diffusive`` otherwise.

Only ``diffusive`` runs report D and σ (``fit="pymatgen"`` reports them whatever the
regime, as pymatgen does, with its clamp of slopes to ≥ 1e-15 Å²/fs).

Charge transport: D_σ (``charge_diffusivity_cm2_s``) is reported only when it is more
than 2σ from zero; otherwise it is null with a reason and a 95 % upper bound, and the
estimate and its error stay in the JSON. The Haven ratio H_R = D*/D_σ is given only when
both are resolved, with a 68 % Fieller interval (a ratio of two uncertain numbers is not
symmetric). ``conductivity_ms_cm`` is the *tracer-based* σ (Nernst–Einstein from D*,
H_R = 1 assumed); ``charge_conductivity_ms_cm`` is σ from D_σ.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.msd import (
    DisplacementAccumulator,
    Displacements,
    MSDResult,
    brownian_slope_variance,
    compute_msd,
)
from ionflow.analysis.stream import (
    DriftReference,
    FrameChunk,
    StreamedAnalysis,
    TrajectoryContext,
    Unwrapper,
    analyze_in_memory,
    analyze_trajectory,
    register,
    select_atoms,  # noqa: F401  (re-exported: its home was here)
)
from ionflow.errors import InsufficientDataError, UserInputError
from ionflow.rules import check_temperature_k

A2_PER_PS_TO_CM2_PER_S = 1e-4
ELEMENTARY_CHARGE_C = 1.602176634e-19
BOLTZMANN_J_K = 1.380649e-23
AVOGADRO = 6.02214076e23

#: Default ionic charges of common mobile ions (|q| in e). Others: pass ``ion_charge``.
ION_CHARGES = {
    "H": 1, "Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1, "Ag": 1, "Cu": 1, "Tl": 1,
    "Mg": 2, "Ca": 2, "Zn": 2, "Sr": 2, "Ba": 2, "Al": 3, "Sc": 3, "Y": 3,
    "F": 1, "Cl": 1, "Br": 1, "I": 1, "O": 2, "S": 2,
}  # fmt: skip

#: MSD log-log slope across the window below which the MSD counts as a plateau
#: (with t_end/t_start = 5, the MSD grows by less than 17 %).
CAGED_MAX_EXPONENT = 0.1

Regime = Literal["diffusive", "subdiffusive", "caged", "insufficient"]
FitMode = Literal["ionflow", "pymatgen"]


class MSDCurve(BaseModel):
    """A thinned copy of the MSD curves for plots and reports."""

    time_ps: list[float] = Field(description="Lag times, ps")
    msd_a2: list[float] = Field(description="Ion-averaged MSD of the mobile species, Å²")
    msd_components_a2: list[list[float]] = Field(description="Per-axis MSD (x, y, z), Å²")
    mscd_a2: list[float] = Field(description="MSD of the summed displacement divided by N, Å²")


class LocalDiffusivity(BaseModel):
    """Tracer D fitted on one sub-window of the fit window (evidence of (non-)linearity)."""

    window_ps: tuple[float, float] = Field(description="Lag window of this local fit, ps")
    diffusivity_cm2_s: float = Field(description="Local tracer D, cm²/s")
    diffusivity_err_cm2_s: float = Field(description="1σ statistical error of the local D, cm²/s")


class DiffusionAnalysis(BaseModel):
    """Diffusion analysis of one MD run (one material, temperature and variant).

    Quantities the regime does not support are ``None``.
    """

    species: str = Field(description="Mobile species analysed")
    temperature_k: float = Field(description="MD temperature, K")
    source: str | None = Field(None, description="Trajectory file(s) analysed")
    n_mobile: int = Field(description="Number of mobile ions")
    n_frames: int = Field(description="Frames analysed")
    frame_interval_fs: float = Field(description="Time between analysed frames, fs")
    duration_ps: float = Field(description="Analysed duration, ps")
    fit_mode: FitMode = Field(description="'ionflow' (documented window) or 'pymatgen' (compat)")
    fit_window_ps: tuple[float, float] = Field(description="Lag window of the MSD fit, ps")
    drift_reference: str = Field(description="Which atoms defined the drift that was removed")
    regime: Regime = Field(description="diffusive | subdiffusive | caged | insufficient")
    regime_reason: str = Field(description="Why the regime was assigned")
    msd_exponent: float | None = Field(
        description="log-log slope of the MSD across the fit window (1 = diffusive)"
    )
    diffusivity_cm2_s: float | None = Field(description="Tracer diffusivity D*, cm²/s")
    diffusivity_err_cm2_s: float | None = Field(
        description="1σ total uncertainty of D*: statistical ⊕ window-systematic, cm²/s"
    )
    diffusivity_stat_err_cm2_s: float | None = Field(
        None, description="Statistical part of the D* uncertainty (1σ), cm²/s"
    )
    diffusivity_sys_err_cm2_s: float | None = Field(
        None, description="Window-dependence (systematic) part of the D* uncertainty, cm²/s"
    )
    local_diffusivities: list[LocalDiffusivity] = Field(
        default_factory=list,
        description="D* fitted on the early and late halves of the fit window (always kept)",
    )
    window_z: float | None = Field(
        None,
        description="(D_early − D_late)/σ of the difference: the linearity test statistic",
    )
    block_dispersion: float | None = Field(
        None,
        description=(
            "Block-to-block variance of D over the variance the errors predict (pooled over "
            "4, 6, 8 blocks); > 1 scales the statistical error by its square root"
        ),
    )
    diffusivity_components_cm2_s: list[float] | None = Field(
        description="Tracer D along x, y, z, cm²/s"
    )
    diffusivity_components_err_cm2_s: list[float] | None = Field(
        description="1σ of the per-axis D, cm²/s"
    )
    charge_diffusivity_cm2_s: float | None = Field(
        description=(
            "Charge (collective) diffusivity D_σ from the summed displacement, cm²/s; "
            "only when resolved (> 2σ from zero)"
        )
    )
    charge_diffusivity_err_cm2_s: float | None = Field(
        description="1σ of the D_σ estimate (given also when D_σ is not resolved), cm²/s"
    )
    charge_diffusivity_estimate_cm2_s: float | None = Field(
        None, description="D_σ point estimate whether resolved or not (may be ≤ 0), cm²/s"
    )
    charge_diffusivity_upper_cm2_s: float | None = Field(
        None, description="95 % upper bound on D_σ when it is not resolved, cm²/s"
    )
    charge_diffusivity_reason: str | None = Field(None, description="Why D_σ is or is not reported")
    haven_ratio: float | None = Field(description="H_R = D*/D_σ (only when both are resolved)")
    haven_ratio_interval: tuple[float, float] | None = Field(
        None, description="68 % interval of H_R (asymmetric: a ratio of uncertain numbers)"
    )
    conductivity_ms_cm: float | None = Field(
        description="Tracer-based σ: Nernst–Einstein from D* (assumes H_R = 1), mS/cm"
    )
    conductivity_err_ms_cm: float | None = Field(description="1σ of the tracer-based σ, mS/cm")
    charge_conductivity_ms_cm: float | None = Field(
        description="Charge σ: Nernst–Einstein from D_σ (only when D_σ is resolved), mS/cm"
    )
    charge_conductivity_err_ms_cm: float | None = Field(description="1σ of the charge σ, mS/cm")
    n_eff_hops: float = Field(
        description="He et al. N_eff = N·6·D*·T/a² (hop equivalents of length a in the run)"
    )
    diffusivity_rel_err_he2018: float | None = Field(
        description="He et al. 2018 relative SD of D: 3.43/√N_eff + 0.04"
    )
    hop_length_a: float = Field(description="Hop length a used for N_eff, Å")
    error_method: str = Field(description="How diffusivity_err_cm2_s was obtained")
    diffusivity_ols_std_cm2_s: float | None = Field(
        None, description="pymatgen-style OLS slope error (not an error bar; for comparison)"
    )
    ion_charge: float = Field(description="Charge of the mobile ion, e")
    number_density_cm3: float = Field(description="Mobile-ion number density, cm⁻³")
    mean_volume_a3: float = Field(description="Mean cell volume, Å³")
    max_reference_rms_a: float = Field(
        description="Largest RMS displacement of the drift-reference atoms, Å (melting check)"
    )
    msd: MSDCurve = Field(description="Thinned MSD curves for plots")
    warnings: list[str] = Field(default_factory=list, description="Things to look at")


def conductivity_factor_ms_cm(
    n_ions: int, volume_a3: float, ion_charge: float, temperature_k: float
) -> float:
    """Nernst–Einstein factor: σ [mS/cm] = factor × D [cm²/s]."""
    n_cm3 = n_ions / (volume_a3 * 1e-24)
    s_per_cm = n_cm3 * (ion_charge * ELEMENTARY_CHARGE_C) ** 2 / (BOLTZMANN_J_K * temperature_k)
    return s_per_cm * 1e3


def default_ion_charge(species: str) -> float:
    """|charge| of a mobile ion: table of common ions, else pymatgen's common oxidation state."""
    if species in ION_CHARGES:
        return float(ION_CHARGES[species])
    try:
        from pymatgen.core import Element

        states = Element(species).common_oxidation_states
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"unknown species {species!r}: not a chemical element") from exc
    if not states:
        raise UserInputError(f"no common oxidation state for {species}: pass the ion charge")
    return float(abs(states[0]))


def _ols_weights(t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Linear functional w with slope = w · y for a (weighted) straight-line fit."""
    t = np.asarray(t, dtype=np.float64)
    wt = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64)
    tbar = np.sum(wt * t) / np.sum(wt)
    return wt * (t - tbar) / np.sum(wt * (t - tbar) ** 2)


def _student_factor(n: int) -> float:
    """Ratio of the 1σ-equivalent Student-t quantile to the normal one (few ions)."""
    if n < 2:
        return float("nan")
    from scipy.special import stdtrit  # (scipy.stats takes seconds to import)

    return float(stdtrit(n - 1, 0.841344746))


def default_window_ps(duration_ps: float) -> tuple[float, float]:
    """The documented fit window rule (see module docstring)."""
    t_start = min(max(1.0, duration_ps / 20.0), duration_ps / 4.0, 10.0)
    t_end = min(max(min(duration_ps / 2.0, 50.0), 5.0 * t_start), duration_ps / 2.0)
    return t_start, t_end


def pymatgen_lags(n_frames: int, frame_interval_fs: float, n_mobile: int, min_obs: int = 30):
    """pymatgen-analysis-diffusion's smoothed='max' lag choice (frames)."""
    min_dt = int(1000 / frame_interval_fs)
    max_dt = min(n_mobile * n_frames // min_obs, n_frames)
    if min_dt >= max_dt:
        raise InsufficientDataError(
            f"pymatgen fit mode needs more than 1 ps of data with ≥{min_obs} observations: "
            f"{n_frames} frames × {frame_interval_fs} fs is too short"
        )
    return np.arange(min_dt, max_dt, max(int((max_dt - min_dt) / 200), 1))


def _thin_indices(n: int, max_points: int = 400) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    idx = np.unique(np.round(np.geomspace(1, n - 1, max_points)).astype(int))
    return np.concatenate([[0], idx])


#: |z| of the early-vs-late local slope difference at which the MSD counts as not linear
#: (``subdiffusive``). On linear synthetic runs z is N(0, 1) within ±5 % in spread, so
#: about 0.3 % of truly diffusive runs are flagged.
LINEARITY_Z = 3.0
#: Block counts whose block-to-block scatter calibrates the statistical error (pooled).
BLOCK_COUNTS = (4, 6, 8)
#: Fewest frames a block must hold to take part in the block check.
MIN_BLOCK_FRAMES = 20
#: Lags of the Brownian covariance model (a coarse subset of the fit lags).
MODEL_LAGS = 40


def _fit_lags(
    n: int, dt_ps: float, window_ps: tuple[float, float], source: str, frame_interval_fs: float
) -> np.ndarray:
    """Up to 200 evenly spaced lags (frames) covering ``window_ps``."""
    t0, t1 = window_ps
    if not (0 <= t0 < t1):
        raise UserInputError(f"fit window must satisfy 0 ≤ start < end, got ({t0}, {t1}) ps")
    k0 = max(1, int(round(t0 / dt_ps)))
    k1 = min(n - 1, int(round(t1 / dt_ps)))
    if k1 - k0 < 2:
        raise InsufficientDataError(
            f"{source}: the fit window {t0:.3g}–{t1:.3g} ps holds fewer than "
            f"3 lags at {frame_interval_fs} fs per frame ({n} frames)"
        )
    return np.unique(np.linspace(k0, k1, min(200, k1 - k0 + 1)).round().astype(int))


def _window_weights(t: np.ndarray, fit_weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """Linear functionals on the lags: the whole window, its early and late halves."""
    mid = len(t) // 2
    fw = (lambda s: None) if fit_weights is None else (lambda s: fit_weights[s])
    early, late = np.zeros(len(t)), np.zeros(len(t))
    early[: mid + 1] = _ols_weights(t[: mid + 1], fw(slice(0, mid + 1)))
    late[mid:] = _ols_weights(t[mid:], fw(slice(mid, None)))
    return {
        "all": _ols_weights(t, fit_weights),
        "early": early,
        "late": late,
        "diff": early - late,
        "mid": mid,
    }


@functools.lru_cache(maxsize=64)
def _model_variances(lags: tuple[int, ...], n: int, dt_ps: float, weighted: bool):
    """Brownian covariance-model variances (per unit step variance, 1-D) of each functional."""
    lags_arr = np.asarray(lags)
    idx = np.unique(np.linspace(0, len(lags_arr) - 1, min(MODEL_LAGS, len(lags_arr))).round())
    sub = lags_arr[idx.astype(int)]
    ws = _window_weights(sub * dt_ps, (1.0 / sub) if weighted else None)
    out = {}
    for key in ("all", "early", "late", "diff"):
        out[key] = brownian_slope_variance(sub, ws[key], n, 1.0) if len(sub) >= 4 else 0.0
    return out


@dataclass
class _SlopeFit:
    """Linear-functional estimates of one set of displacements, Å²/ps (``_slope_fit``)."""

    slope: float  # MSD slope (= 6 D*)
    slope_axes: np.ndarray  # (3,) per-axis MSD slopes (= 2 D_a)
    slope_charge: float  # collective MSD slope (= 6 D_σ)
    se_ion: float  # ion-resampling SE (× Student t)
    se_ion_axes: np.ndarray
    se_model: float  # Brownian all-origin covariance model
    se_model_axes: np.ndarray
    se_charge: float  # Brownian model of the collective slope
    early: float  # slope on the early half of the window
    late: float  # slope on the late half
    se_early: float
    se_late: float
    se_diff: float  # SE of early − late (ions paired; or the model)
    t_early: tuple[float, float]
    t_late: tuple[float, float]
    msd: MSDResult

    @property
    def se(self) -> float:
        return float(np.nanmax([self.se_ion, self.se_model]))


def _slope_fit(
    mobile: np.ndarray,
    lags: np.ndarray,
    dt_ps: float,
    weighted: bool,
    progress: Callable[[int], None] | None = None,
) -> _SlopeFit:
    """Every slope the analysis needs, with its errors, from one set of displacements.

    The estimators are linear functionals ``w · MSD[lags]`` (OLS on the whole window and
    on its early and late halves; ``weighted``: 1/lag weights, pymatgen's choice). Each gets
    an ion-resampling error (per-ion curves; paired for the early − late difference) and
    the Brownian all-origin covariance model error; the larger is used.
    """
    n, n_ions = mobile.shape[0], mobile.shape[1]
    t = lags * dt_ps
    msd = compute_msd(mobile, lags, progress=progress)
    ws = _window_weights(t, (1.0 / lags) if weighted else None)
    grid = msd.per_ion_grid_a2  # (lags, ions, 3)
    msd_lags = msd.msd_a2[lags]
    slope = float(ws["all"] @ msd_lags)
    slope_axes = msd.msd_axes_a2[lags].T @ ws["all"]
    slope_charge = float(ws["all"] @ msd.collective_a2[lags])
    per_ion = {k: np.einsum("g,gia->ia", ws[k], grid) for k in ("all", "early", "late", "diff")}
    tfac = _student_factor(n_ions)

    def ion_se(x: np.ndarray):
        if n_ions < 2:
            return np.full(x.shape[1:], np.nan)
        return x.std(axis=0, ddof=1) / math.sqrt(n_ions) * tfac

    var = _model_variances(tuple(int(k) for k in lags), n, float(dt_ps), weighted)
    step_var = 2.0 * max(slope, 0.0) / 6.0 * dt_ps  # 2·D·Δt per axis, Å²

    def model(key: str) -> float:
        return math.sqrt(3.0 * var[key]) * step_var / math.sqrt(n_ions)

    def se(key: str) -> float:
        return float(np.nanmax([float(ion_se(per_ion[key].sum(axis=1))), model(key)]))

    # collective walker: N × the step variance, at least what independent ions give, so
    # that a collective slope ≤ 0 still has an honest (non-zero) error
    step_var_chg = 2.0 * max(slope_charge, slope, 0.0) / 6.0 * dt_ps * n_ions
    mid = ws["mid"]
    return _SlopeFit(
        slope=slope,
        slope_axes=slope_axes,
        slope_charge=slope_charge,
        se_ion=float(ion_se(per_ion["all"].sum(axis=1))),
        se_ion_axes=ion_se(per_ion["all"]),
        se_model=model("all"),
        se_model_axes=np.sqrt(var["all"]) * np.maximum(slope_axes, 0.0) * dt_ps / math.sqrt(n_ions),
        se_charge=math.sqrt(3.0 * var["all"]) * step_var_chg / n_ions,
        early=float(ws["early"] @ msd_lags),
        late=float(ws["late"] @ msd_lags),
        se_early=se("early"),
        se_late=se("late"),
        se_diff=se("diff"),
        t_early=(float(t[0]), float(t[mid])),
        t_late=(float(t[mid]), float(t[-1])),
        msd=msd,
    )


@dataclass
class _BlockCheck:
    """Block-to-block scatter of the estimator relative to its own errors."""

    dispersion: float  # pooled var(block slopes) / mean(block SE²); 1 = errors honest
    dispersion_charge: float
    n_sets: int  # block counts that took part
    blocks: dict[int, list[float]]  # B → block D*, cm²/s (for the record)


def _block_check(mobile: np.ndarray, lags: np.ndarray, dt_ps: float, weighted: bool) -> _BlockCheck:
    """Cut the run into B consecutive blocks (B in :data:`BLOCK_COUNTS`) and compare the
    scatter of the block estimates (same estimator, window scaled to the block) with the
    errors the estimator claims for them. Pooled over B to steady the ratio."""
    n = mobile.shape[0]
    ratios, ratios_chg, blocks = [], [], {}
    for n_blocks in BLOCK_COUNTS:
        length = n // n_blocks
        if length < MIN_BLOCK_FRAMES:
            continue
        lags_b = np.unique(np.clip(np.round(lags * length / n), 1, length - 1).astype(int))
        if len(lags_b) < 3:
            continue
        fits = [
            _slope_fit(mobile[b * length : (b + 1) * length], lags_b, dt_ps, weighted)
            for b in range(n_blocks)
        ]
        s = np.array([f.slope for f in fits])
        e = np.array([f.se for f in fits])
        c = np.array([f.slope_charge for f in fits])
        ec = np.array([f.se_charge for f in fits])
        if np.all(e > 0):
            ratios.append(float(s.var(ddof=1) / np.mean(e**2)))
        if np.all(ec > 0):
            ratios_chg.append(float(c.var(ddof=1) / np.mean(ec**2)))
        blocks[n_blocks] = (s / 6.0 * A2_PER_PS_TO_CM2_PER_S).tolist()
    return _BlockCheck(
        dispersion=float(np.mean(ratios)) if ratios else 1.0,
        dispersion_charge=float(np.mean(ratios_chg)) if ratios_chg else 1.0,
        n_sets=len(ratios),
        blocks=blocks,
    )


def _pymatgen_clamp(d_cm2_s: float) -> float:
    """pymatgen clamps every fitted MSD slope to ≥ 1e-15 Å²/fs (D ≥ 1.7e-17 cm²/s)."""
    return max(d_cm2_s, 1e-15 / 60.0)


def _ratio_interval(
    a: float, sa: float, b: float, sb: float, z: float = 1.0
) -> tuple[float, float] | None:
    """Fieller interval of a/b for independent normal a, b (None when b is not resolved at z)."""
    # (a − r b)² = z² (sa² + r² sb²)  →  r² (b² − z² sb²) − 2ab r + a² − z² sa² = 0
    qa = b * b - z * z * sb * sb
    if qa <= 0:
        return None
    qb = -2.0 * a * b
    qc = a * a - z * z * sa * sa
    disc = qb * qb - 4.0 * qa * qc
    if disc < 0:
        return None
    root = math.sqrt(disc)
    return ((-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa))


def analyze_displacements(
    disp: Displacements,
    *,
    species: str,
    temperature_k: float,
    fit: FitMode = "ionflow",
    fit_window_ps: tuple[float, float] | None = None,
    ion_charge: float | None = None,
    hop_length_a: float = 3.0,
    min_hops: float = 20.0,
    min_obs: int = 30,
    drift_reference: str = "framework",
    source: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> DiffusionAnalysis:
    """Diffusion analysis of drift-corrected displacements (see module docstring)."""
    check_temperature_k(temperature_k)
    if not (min_hops >= 0 and math.isfinite(min_hops)):
        raise UserInputError(f"min_hops must be a finite number ≥ 0, got {min_hops}")
    n, n_ions = disp.n_frames, disp.n_mobile
    dt_ps = disp.frame_interval_fs / 1000.0
    label = source or "trajectory"
    if n < 4:
        raise InsufficientDataError(f"{label}: {n} frame(s) — need at least 4")
    if n_ions < 1:
        raise UserInputError(f"{label}: no {species} atoms")
    duration_ps = (n - 1) * dt_ps
    notes: list[str] = []

    pymatgen = fit == "pymatgen"
    if pymatgen:
        lags = pymatgen_lags(n, disp.frame_interval_fs, n_ions, min_obs)
        if fit_window_ps is not None:
            notes.append("fit_window_ps ignored in pymatgen mode")
    else:
        window = fit_window_ps if fit_window_ps is not None else default_window_ps(duration_ps)
        lags = _fit_lags(n, dt_ps, window, label, disp.frame_interval_fs)
    t = lags * dt_ps
    sf = _slope_fit(disp.mobile, lags, dt_ps, pymatgen, progress)
    msd = sf.msd
    msd_tot = msd.msd_a2
    slope, slope_axes, slope_chg = sf.slope, sf.slope_axes, sf.slope_charge

    # --- statistical error, calibrated on the run's own block-to-block scatter ---------------
    blocks = _block_check(disp.mobile, lags, dt_ps, pymatgen)
    inflate = math.sqrt(max(1.0, blocks.dispersion))
    inflate_chg = math.sqrt(max(1.0, blocks.dispersion_charge))
    if blocks.n_sets == 0:
        notes.append("run too short for the block check of the errors (< 4 blocks of 20 frames)")
    elif inflate > 1.0:
        notes.append(
            f"block-to-block scatter is {inflate:.2f}× what the ion-resampling/Brownian errors "
            "predict (correlated ions or changing dynamics): statistical errors scaled up by it"
        )
    se_stat = sf.se * inflate
    se_axes = np.fmax(sf.se_ion_axes, sf.se_model_axes) * inflate
    se_chg = sf.se_charge * inflate_chg
    if n_ions >= 2:
        error_method = (
            "max(ion-resampling SE × Student-t, Brownian all-origin covariance model) × "
            "max(1, block-scatter ratio) ⊕ window systematic"
        )
    else:
        error_method = "Brownian all-origin covariance model (single ion) ⊕ window systematic"

    # --- linearity across the window: early vs late local slope ---------------------------------
    se_diff = sf.se_diff * inflate
    diff = sf.early - sf.late
    window_z = diff / se_diff if se_diff > 0 else None
    se_sys = 0.5 * math.sqrt(max(0.0, diff * diff - se_diff * se_diff))  # excess over noise
    se_total = math.hypot(se_stat, se_sys)
    to_d = A2_PER_PS_TO_CM2_PER_S / 6.0
    local = [
        LocalDiffusivity(window_ps=sf.t_early, diffusivity_cm2_s=sf.early * to_d,
                         diffusivity_err_cm2_s=sf.se_early * inflate * to_d),
        LocalDiffusivity(window_ps=sf.t_late, diffusivity_cm2_s=sf.late * to_d,
                         diffusivity_err_cm2_s=sf.se_late * inflate * to_d),
    ]  # fmt: skip

    # pymatgen-style OLS slope error, for comparison only
    y = msd_tot[lags]
    design = np.vstack([t, np.ones_like(t)]).T
    sw = np.sqrt(1.0 / (lags * disp.frame_interval_fs)) if pymatgen else np.ones_like(t)
    _, res, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    nl = len(t)
    ols_std = None
    if nl > 2 and res.size:
        denom = (nl * np.sum(t**2) - np.sum(t) ** 2) * (nl - 2)  # t in ps, as pymatgen
        ols_std = float(np.sqrt(nl * res[0] / denom)) / 6.0 * A2_PER_PS_TO_CM2_PER_S

    # --- regime ----------------------------------------------------------------------
    i0, i1 = lags[0], lags[-1]
    span = max(1, (i1 - i0) // 20)
    m_start = float(np.mean(msd_tot[i0 : i0 + span + 1]))
    m_end = float(np.mean(msd_tot[max(i0, i1 - span) : i1 + 1]))
    alpha = (
        math.log(m_end / m_start) / math.log(t[-1] / t[0])
        if m_start > 0 and m_end > 0 and t[-1] > t[0]
        else None
    )
    d_cm2_s = slope * to_d
    d_err = se_total * to_d
    n_eff = max(n_ions * max(slope, 0.0) * duration_ps / hop_length_a**2, 0.0)  # N·6D·T/a²
    he_rel = 3.43 / math.sqrt(n_eff) + 0.04 if n_eff > 0 else None
    e_lo, e_hi = local[0].diffusivity_cm2_s, local[1].diffusivity_cm2_s
    bend = (
        f"local D {e_lo:.3g} ({sf.t_early[0]:.3g}–{sf.t_early[1]:.3g} ps) vs {e_hi:.3g} "
        f"({sf.t_late[0]:.3g}–{sf.t_late[1]:.3g} ps) cm²/s, z = {window_z:.1f}"
        if window_z is not None
        else "local slopes not testable"
    )
    if alpha is not None and alpha < CAGED_MAX_EXPONENT:
        regime, reason = (
            "caged",
            (
                f"MSD plateaus: log-log slope {alpha:.2f} < {CAGED_MAX_EXPONENT} across "
                f"{t[0]:.3g}–{t[-1]:.3g} ps; ions rattle or move inside cages — D is not meaningful"
            ),
        )
    elif n_eff < min_hops:
        regime, reason = (
            "insufficient",
            (
                f"only {n_eff:.1f} hop equivalents (N·6Dt/a², a={hop_length_a} Å) < {min_hops}: "
                "run longer or hotter"
            ),
        )
    elif window_z is not None and abs(window_z) >= LINEARITY_Z:
        trend = "falls" if window_z > 0 else "rises"
        regime, reason = (
            "subdiffusive",
            (
                f"MSD not linear over the fit window — its slope {trend}: {bend} "
                f"(|z| ≥ {LINEARITY_Z:g}); ions move but the long-time diffusive regime is not "
                "reached: D depends on the window — run longer or hotter"
            ),
        )
    elif not (d_cm2_s > 2.0 * d_err):
        regime, reason = (
            "insufficient",
            (f"D = {d_cm2_s:.3g} ± {d_err:.2g} cm²/s is not resolved from zero (< 2σ)"),
        )
    else:
        regime, reason = (
            "diffusive",
            (f"MSD linear within noise ({bend}), {n_eff:.0f} hop equivalents"),
        )
        if se_sys > 0:
            notes.append(
                f"the fit window matters: early/late local D differ by more than their noise "
                f"({bend}); ±{se_sys * to_d:.2g} cm²/s window systematic added to the error"
            )
    if disp.max_reference_rms_a > 1.5:
        notes.append(
            f"reference atoms moved {disp.max_reference_rms_a:.2f} Å RMS: framework melting or "
            "a mobile drift reference?"
        )

    if ion_charge is None:
        ion_charge = default_ion_charge(species)
    volume = disp.first_volume_a3 if pymatgen else disp.mean_volume_a3
    conv = conductivity_factor_ms_cm(n_ions, volume, ion_charge, temperature_k)
    n_cm3 = n_ions / (volume * 1e-24)

    thin = _thin_indices(n)
    curve = MSDCurve(
        time_ps=(thin * dt_ps).tolist(),
        msd_a2=msd_tot[thin].tolist(),
        msd_components_a2=msd.msd_axes_a2[thin].tolist(),
        mscd_a2=msd.collective_a2[thin].tolist(),
    )
    ok = regime == "diffusive"
    if pymatgen and not ok:
        # compatibility mode reports what pymatgen would, whatever the regime
        notes.append(f"pymatgen mode reports D although the regime is {regime}: {reason}")
        ok = True
    comps = (slope_axes / 2.0 * A2_PER_PS_TO_CM2_PER_S).tolist()
    comps_err = (se_axes / 2.0 * A2_PER_PS_TO_CM2_PER_S).tolist()

    # --- charge (collective) transport ------------------------------------------------------
    d_chg = slope_chg * to_d
    d_chg_err = se_chg * to_d
    chg_resolved = d_chg > 2.0 * d_chg_err
    d_chg_upper = None
    if not ok:
        chg_reason = f"not reported: the tracer run is {regime}"
    elif chg_resolved:
        chg_reason = f"resolved: D_σ = {d_chg:.3g} ± {d_chg_err:.2g} cm²/s (> 2σ from zero)"
    else:
        d_chg_upper = max(d_chg, 0.0) + 1.6448536 * d_chg_err
        chg_reason = (
            f"not resolved from zero: D_σ = {d_chg:.3g} ± {d_chg_err:.2g} cm²/s (< 2σ); "
            f"95 % upper bound {d_chg_upper:.2g} cm²/s — the collective MSD is one time "
            "series: run longer for a charge diffusivity"
        )
    chg_report = ok and (chg_resolved or pymatgen)
    if pymatgen:
        d_cm2_s = _pymatgen_clamp(d_cm2_s)
        d_chg = _pymatgen_clamp(d_chg)
        comps = [3.0 * _pymatgen_clamp(c / 3.0) for c in comps]
    haven = haven_iv = None
    if ok and chg_resolved and d_chg > 0:
        haven = d_cm2_s / d_chg
        haven_iv = _ratio_interval(d_cm2_s, d_err, d_chg, d_chg_err)
    elif pymatgen and ok:
        haven = d_cm2_s / d_chg  # pymatgen reports the ratio whatever its precision
    return DiffusionAnalysis(
        species=species,
        temperature_k=float(temperature_k),
        source=source,
        n_mobile=n_ions,
        n_frames=n,
        frame_interval_fs=disp.frame_interval_fs,
        duration_ps=duration_ps,
        fit_mode=fit,
        fit_window_ps=(float(t[0]), float(t[-1])),
        drift_reference=drift_reference,
        regime=regime,
        regime_reason=reason,
        msd_exponent=alpha,
        diffusivity_cm2_s=d_cm2_s if ok else None,
        diffusivity_err_cm2_s=d_err if ok else None,
        diffusivity_stat_err_cm2_s=se_stat * to_d if ok else None,
        diffusivity_sys_err_cm2_s=se_sys * to_d if ok else None,
        local_diffusivities=local,
        window_z=window_z,
        block_dispersion=blocks.dispersion if blocks.n_sets else None,
        diffusivity_components_cm2_s=comps if ok else None,
        diffusivity_components_err_cm2_s=comps_err if ok else None,
        charge_diffusivity_cm2_s=d_chg if chg_report else None,
        charge_diffusivity_err_cm2_s=d_chg_err if ok else None,
        charge_diffusivity_estimate_cm2_s=slope_chg * to_d if ok else None,
        charge_diffusivity_upper_cm2_s=d_chg_upper,
        charge_diffusivity_reason=chg_reason,
        haven_ratio=haven,
        haven_ratio_interval=haven_iv,
        conductivity_ms_cm=d_cm2_s * conv if ok else None,
        conductivity_err_ms_cm=d_err * conv if ok else None,
        charge_conductivity_ms_cm=d_chg * conv if chg_report else None,
        charge_conductivity_err_ms_cm=d_chg_err * conv if chg_report else None,
        n_eff_hops=n_eff,
        diffusivity_rel_err_he2018=he_rel,
        hop_length_a=hop_length_a,
        error_method=error_method,
        diffusivity_ols_std_cm2_s=ols_std,
        ion_charge=float(ion_charge),
        number_density_cm3=n_cm3,
        mean_volume_a3=volume,
        max_reference_rms_a=disp.max_reference_rms_a,
        msd=curve,
        warnings=notes,
    )


@register
class Diffusion(StreamedAnalysis):
    """Tracer and charge diffusion (this module's docstring), as a streamed analysis.

    Keeps the drift-corrected unwrapped displacements of the mobile ions (float32) and
    runs :func:`analyze_displacements` at the end.
    """

    name = "diffusion"
    result_model = DiffusionAnalysis
    schema_version = "2"

    def __init__(
        self,
        *,
        fit: FitMode = "ionflow",
        fit_window_ps: tuple[float, float] | None = None,
        ion_charge: float | None = None,
        hop_length_a: float = 3.0,
        min_hops: float = 20.0,
        min_obs: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.fit = fit
        self.fit_window_ps = fit_window_ps
        self.ion_charge = ion_charge
        self.hop_length_a = hop_length_a
        self.min_hops = min_hops
        self.min_obs = min_obs
        self.progress = progress

    def prepare(self, ctx: TrajectoryContext, unwrapper: Unwrapper) -> None:
        self.ctx = ctx
        self._acc = DisplacementAccumulator(
            ctx.n_atoms, ctx.mobile_indices, ctx.reference_indices, unwrapper=unwrapper,
            n_frames_hint=ctx.n_frames,
        )  # fmt: skip

    def accumulate(self, chunk: FrameChunk) -> None:
        self._acc.add(chunk)

    def conclude(self) -> DiffusionAnalysis:
        ctx = self.ctx
        if ctx.temperature_k is None:
            raise UserInputError(f"{ctx.source}: the file does not give the temperature; pass it")
        disp = self._acc.result(ctx.frame_interval_fs)
        done_ions = [0]

        def _msd_progress(k: int) -> None:
            done_ions[0] += k
            if self.progress is not None:
                self.progress("msd", done_ions[0], disp.n_mobile)

        min_obs = self.min_obs
        if min_obs is None:
            min_obs = int(ctx.metadata.get("min_obs", 30)) if ctx.metadata else 30
        return analyze_displacements(
            disp,
            species=ctx.mobile_species,
            temperature_k=float(ctx.temperature_k),
            fit=self.fit,
            fit_window_ps=self.fit_window_ps,
            ion_charge=self.ion_charge,
            hop_length_a=self.hop_length_a,
            min_hops=self.min_hops,
            min_obs=min_obs,
            drift_reference=ctx.reference_label,
            source=ctx.source,
            progress=_msd_progress,
        )


def analyze_file(
    path: str | Path | Sequence[str | Path],
    *,
    species: str = "Li",
    temperature_k: float | None = None,
    frame_interval_fs: float | None = None,
    fit: FitMode = "ionflow",
    drift_reference: DriftReference = "auto",
    fit_window_ps: tuple[float, float] | None = None,
    ion_charge: float | None = None,
    hop_length_a: float = 3.0,
    min_hops: float = 20.0,
    skip_frames: int = 0,
    chunk_frames: int = 4096,
    structure: str | Path | None = None,
    format: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DiffusionAnalysis:
    """Read a trajectory from disk (streaming) and analyse it.

    Parameters
    ----------
    path
        A trajectory file, or a list of consecutive segment files.
    species
        Mobile species.
    temperature_k, frame_interval_fs
        Override what the file says (required when the file does not say).
    fit
        ``"ionflow"`` (documented window, honest errors) or ``"pymatgen"``
        (pymatgen-analysis-diffusion's lag choice, 1/t weights, plain-average drift
        from every non-mobile atom, first-frame volume) to compare with published
        numbers.
    skip_frames
        Leading frames to drop (equilibration) before the analysis.
    progress
        Optional ``callback(stage, done, total)``; stages "read" and "msd".
    """
    analysis = Diffusion(
        fit=fit,
        fit_window_ps=fit_window_ps,
        ion_charge=ion_charge,
        hop_length_a=hop_length_a,
        min_hops=min_hops,
        progress=progress,
    )
    pymatgen = fit == "pymatgen"
    results = analyze_trajectory(
        path,
        [analysis],
        species=species,
        temperature_k=temperature_k,
        frame_interval_fs=frame_interval_fs,
        drift_reference="framework" if pymatgen else drift_reference,
        mass_weighted=not pymatgen,
        skip_frames=skip_frames,
        chunk_frames=chunk_frames,
        structure=structure,
        format=format,
        progress=progress,
        require_temperature=True,
    )
    return results["diffusion"]


def analyze_arrays(
    positions: np.ndarray,
    lattice: np.ndarray,
    species_per_atom: Sequence[str],
    *,
    species: str = "Li",
    temperature_k: float,
    frame_interval_fs: float,
    fixed_atoms: np.ndarray | None = None,
    drift_reference: DriftReference = "auto",
    fit: FitMode = "ionflow",
    **kwargs,
) -> DiffusionAnalysis:
    """Analyse in-memory positions (frames × atoms × 3, Å) with a 3×3 or per-frame lattice
    (shape checked by :func:`~ionflow.analysis.stream.analyze_in_memory`)."""
    pymatgen = fit == "pymatgen"
    return analyze_in_memory(
        positions,
        lattice,
        species_per_atom,
        [Diffusion(fit=fit, **kwargs)],
        species=species,
        temperature_k=temperature_k,
        frame_interval_fs=frame_interval_fs,
        fixed_atoms=fixed_atoms,
        drift_reference="framework" if pymatgen else drift_reference,
        mass_weighted=not pymatgen,
    )["diffusion"]
