"""Per-material summary documents (the results layer's single schema definition).

Pure code: built from :class:`~ionflow.analysis.DiffusionAnalysis` and
:class:`~ionflow.analysis.ArrheniusFit` objects, no jobflow or database imports. The
campaign's summary job stores one :class:`MaterialSummary` per (campaign, material).

Which σ is quoted
-----------------
Run σ (``conductivity_ms_cm``) and σ(300 K) are *tracer-based*: Nernst–Einstein from D*,
which assumes a Haven ratio of 1 (:data:`SIGMA_BASIS`, stored as ``sigma_basis``); the
Arrhenius fit is of D*. σ from the charge diffusivity D_σ (``charge_conductivity_ms_cm``)
is given per run only when D_σ is resolved. σ(300 K) is an extrapolation along the fitted
Ea: when Ea is not resolved (Ea ≤ 2σ_Ea, ``ea_resolved`` False) the extrapolation stays in
``free.arrhenius`` / ``free.sigma_300k_*`` (flagged by ``free.ea_resolved``) but the flat
query fields ``sigma_300k_*`` are None, so queries and sorts only see resolved values.

Free vs pinned comparison
-------------------------
At each temperature with a diffusive free *and* pinned run, the ratio R = D_free/D_pinned
is judged on ln R, whose 1σ is σ_lnR = √((σ_free/D_free)² + (σ_pinned/D_pinned)²); the
68 % and 95 % intervals of R are exp(ln R ± z·σ_lnR) with z = 1 and 1.96, and the z-score
is ln R/σ_lnR. With the equivalence margin :data:`EQUIVALENCE_MARGIN` = [0.67, 1.5]:

* 95 % interval above 1 (z ≥ 1.96): "pinning lowers D" (polyanion motion assists
  transport); below 1: "pinning raises D";
* 95 % interval inside the margin: "no significant change" — the runs exclude an effect
  of pinning larger than ×1.5 either way;
* otherwise "inconclusive": neither a change nor its absence is established, the runs are
  too short (the text gives the smallest change they could detect, exp(1.96·σ_lnR)).

A pinned run that is caged where the free run diffuses counts as "pinning suppresses
diffusion". Over all temperatures (:func:`overall_verdict`): "no significant effect ...
rotation not required" only when *every* compared temperature says no change; lowered at
every temperature → "pinning lowers Li diffusion at all ..."; lowered at some →
"... mixed evidence"; raised at some, lowered at none → "pinning raises ..."; otherwise
"inconclusive: ..." with how many temperatures could not exclude a 2× effect.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from ionflow import __version__
from ionflow.analysis import ArrheniusFit, DiffusionAnalysis
from ionflow.analysis.arrhenius import ea_is_resolved
from ionflow.names import CURRENT_COLLECTION as CURRENT_COLLECTION
from ionflow.names import SUMMARY_COLLECTION as SUMMARY_COLLECTION
from ionflow.outputs import PotentialInfo, SupercellOutput

SCHEMA_VERSION = "1.4"

#: What σ (run σ and σ(300 K)) is based on: the campaign quotes the tracer-based value.
SIGMA_BASIS = "tracer: Nernst–Einstein from D* (H_R = 1 assumed)"
#: Equivalence margin of D_free/D_pinned: "no change" only when the 95 % interval of the
#: ratio lies inside it (an effect of pinning beyond ×1.5 either way is excluded).
EQUIVALENCE_MARGIN = (1 / 1.5, 1.5)
#: Normal quantiles of the 68 % and 95 % two-sided intervals.
Z68, Z95 = 1.0, 1.959964
#: The change the overall "inconclusive" verdict counts as not excluded (×2 either way).
DETECT_FACTOR = 2.0


class RunSummary(BaseModel):
    """One MD run (material, temperature, variant) in brief.

    Documents of schema 1.0 (with ``haven_ratio_err``, without the charge and error-split
    fields) still validate: unknown fields are ignored, the new ones default to None.
    """

    temperature_k: float = Field(description="Temperature, K")
    variant: Literal["free", "pinned"] = Field(description="free or pinned-anion control")
    regime: str = Field(description="diffusive | subdiffusive | caged | insufficient")
    regime_reason: str = Field(description="Why")
    potential: PotentialInfo | None = Field(
        None,
        description="Which potential made this run (engine, package version, model, model "
        "file SHA-256; schema 1.4; None in older documents)",
    )
    diffusivity_cm2_s: float | None = Field(None, description="Tracer D*, cm²/s")
    diffusivity_err_cm2_s: float | None = Field(
        None, description="1σ total of D*: statistical ⊕ window-systematic, cm²/s"
    )
    diffusivity_stat_err_cm2_s: float | None = Field(
        None, description="Statistical part of the D* error (1σ), cm²/s"
    )
    diffusivity_sys_err_cm2_s: float | None = Field(
        None, description="Window-dependence (systematic) part of the D* error, cm²/s"
    )
    window_z: float | None = Field(
        None, description="(D_early − D_late)/σ over the two halves of the fit window"
    )
    conductivity_ms_cm: float | None = Field(
        None, description="Tracer-based σ: Nernst–Einstein from D* (H_R = 1 assumed), mS/cm"
    )
    conductivity_err_ms_cm: float | None = Field(None, description="1σ of σ, mS/cm")
    charge_diffusivity_cm2_s: float | None = Field(
        None, description="Charge diffusivity D_σ, cm²/s (only when resolved, > 2σ from 0)"
    )
    charge_diffusivity_err_cm2_s: float | None = Field(
        None, description="1σ of the D_σ estimate (also when not resolved), cm²/s"
    )
    charge_diffusivity_upper_cm2_s: float | None = Field(
        None, description="95 % upper bound on D_σ when it is not resolved, cm²/s"
    )
    charge_conductivity_ms_cm: float | None = Field(
        None, description="σ from D_σ (Nernst–Einstein), mS/cm (only when D_σ is resolved)"
    )
    charge_conductivity_err_ms_cm: float | None = Field(
        None, description="1σ of the σ from D_σ, mS/cm"
    )
    haven_ratio: float | None = Field(
        None, description="Haven ratio D*/D_σ (only when both are resolved)"
    )
    haven_ratio_interval: tuple[float, float] | None = Field(
        None, description="68 % interval of the Haven ratio (asymmetric)"
    )
    n_eff_hops: float = Field(description="Hop equivalents (He et al.)")
    duration_ps: float = Field(description="Analysed duration, ps")
    fit_window_ps: tuple[float, float] = Field(description="Fit window, ps")
    analysis_uuid: str | None = Field(None, description="jobflow uuid of the analysis job")
    md_uuid: str | None = Field(None, description="jobflow uuid of the MD job")
    # mechanism evidence (schema 1.2; None when the analysis did not run or gives no value)
    rotating_group: str | None = Field(
        None, description="Polyanion formula of the rotation numbers (most numerous kind)"
    )
    tau_p2_ps: float | None = Field(
        None, description="Reorientation time τ2 of C2(t) of the polyanions, ps"
    )
    tau_p2_err_ps: float | None = Field(None, description="1σ of τ2 (spread over groups), ps")
    tau_p2_reason: str | None = Field(
        None, description="Why tau_p2_ps is None (no groups, no reorientation, not run …)"
    )
    p2_at_max_lag: float | None = Field(
        None, description="C2 at the longest lag analysed (≈1: the groups do not reorient)"
    )
    vdos_low_frequency_exponent: float | None = Field(
        None, description="n of VDOS ∝ ω^n of the mobile species at low ω (2 Debye, →0 liquid)"
    )
    vdos_low_frequency_exponent_err: float | None = Field(None, description="1σ of n")
    diffusivity_from_vacf_cm2_s: float | None = Field(
        None, description="Green–Kubo D = ⅓∫VACF of the mobile species, cm²/s"
    )
    diffusivity_from_vacf_err_cm2_s: float | None = Field(None, description="1σ, cm²/s")
    percolation_dimension: int | None = Field(
        None, description="Dimension (0–3) of the connected mobile-ion density network"
    )
    n_density_sites: int | None = Field(None, description="Density maxima (occupied sites)")
    jump_rate_per_ps: float | None = Field(None, description="Site-to-site jumps per ion per ps")
    jump_rate_err_per_ps: float | None = Field(None, description="1σ of the jump rate, ps⁻¹")
    mean_jump_length_a: float | None = Field(None, description="Mean jump length, Å")
    correlation_factor: float | None = Field(None, description="f = D*/D_jump")
    correlation_factor_err: float | None = Field(None, description="1σ of f")
    inter_cage_jump_rate_per_ps: float | None = Field(
        None,
        description="Jumps between cages (isolated-anion cages by default) per ion per ps",
    )
    intra_cage_jump_rate_per_ps: float | None = Field(
        None, description="Jumps within one cage per ion per ps"
    )
    density_file: str | None = Field(
        None, description="GridFS file name of the run's density CHGCAR (ionflow export-density)"
    )
    mechanism_notes: list[str] = Field(
        default_factory=list, description="Analyses that failed or did not run on this run"
    )
    # compute and precision target (schema 1.3; None in older documents)
    production_ps: float | None = Field(
        None, description="Production actually run (every chunk of an extended run), ps"
    )
    core_hours: float | None = Field(
        None, description="Compute of the run's MD (wall time × cores, every call), core-h"
    )
    target_met: bool | None = Field(
        None, description="err(D*)/D* within md.target (None: no target)"
    )

    @classmethod
    def from_analysis(cls, a: DiffusionAnalysis, variant: str, **ids) -> RunSummary:
        return cls(
            temperature_k=a.temperature_k,
            variant=variant,
            regime=a.regime,
            regime_reason=a.regime_reason,
            diffusivity_cm2_s=a.diffusivity_cm2_s,
            diffusivity_err_cm2_s=a.diffusivity_err_cm2_s,
            diffusivity_stat_err_cm2_s=a.diffusivity_stat_err_cm2_s,
            diffusivity_sys_err_cm2_s=a.diffusivity_sys_err_cm2_s,
            window_z=a.window_z,
            conductivity_ms_cm=a.conductivity_ms_cm,
            conductivity_err_ms_cm=a.conductivity_err_ms_cm,
            charge_diffusivity_cm2_s=a.charge_diffusivity_cm2_s,
            charge_diffusivity_err_cm2_s=a.charge_diffusivity_err_cm2_s,
            charge_diffusivity_upper_cm2_s=a.charge_diffusivity_upper_cm2_s,
            charge_conductivity_ms_cm=a.charge_conductivity_ms_cm,
            charge_conductivity_err_ms_cm=a.charge_conductivity_err_ms_cm,
            haven_ratio=a.haven_ratio,
            haven_ratio_interval=a.haven_ratio_interval,
            n_eff_hops=a.n_eff_hops,
            duration_ps=a.duration_ps,
            fit_window_ps=a.fit_window_ps,
            **ids,
        )


def mechanism_fields(
    results: dict | None,
    errors: dict[str, str] | None = None,
    density_file: dict | None = None,
) -> dict:
    """The :class:`RunSummary` mechanism fields of one run from its parsed analysis results
    (kind → result model: rotation, vdos, density, jumps; see
    :meth:`ionflow.outputs.AnalysisOutput.parsed_results`) and the failed kinds' errors."""
    results, errors = results or {}, errors or {}
    out: dict = {}
    notes = [f"{k} failed: {v}" for k, v in sorted(errors.items())]
    rot = results.get("rotation")
    if rot is None:
        out["tau_p2_reason"] = "rotation " + ("failed" if "rotation" in errors else "not run")
    elif not rot.groups:
        out["tau_p2_reason"] = rot.note or "no polyanion groups"
    else:
        g = max(rot.groups, key=lambda g: g.n_groups)
        out.update(
            rotating_group=g.formula,
            tau_p2_ps=g.tau_p2_ps,
            tau_p2_err_ps=g.tau_p2_err_ps,
            tau_p2_reason=g.tau_p2_reason if g.tau_p2_ps is None else None,
            p2_at_max_lag=g.p2_at_max_lag,
        )
    vd = results.get("vdos")
    if vd is not None:
        out.update(
            vdos_low_frequency_exponent=vd.low_frequency_exponent,
            vdos_low_frequency_exponent_err=vd.low_frequency_exponent_err,
            diffusivity_from_vacf_cm2_s=vd.diffusivity_from_vacf_cm2_s,
            diffusivity_from_vacf_err_cm2_s=vd.diffusivity_from_vacf_err_cm2_s,
        )
    de = results.get("density")
    if de is not None:
        out.update(percolation_dimension=de.percolation_dimension, n_density_sites=de.n_sites)
    ju = results.get("jumps")
    if ju is not None:
        out.update(
            jump_rate_per_ps=ju.jump_rate_per_ps,
            jump_rate_err_per_ps=ju.jump_rate_err_per_ps,
            mean_jump_length_a=ju.mean_jump_length_a,
            correlation_factor=ju.correlation_factor,
            correlation_factor_err=ju.correlation_factor_err,
            inter_cage_jump_rate_per_ps=ju.inter_cage_jump_rate_per_ps,
            intra_cage_jump_rate_per_ps=ju.intra_cage_jump_rate_per_ps,
        )
    if density_file:
        out["density_file"] = density_file.get("filename")
    out["mechanism_notes"] = notes
    return out


class VariantSummary(BaseModel):
    """Arrhenius result of one variant (free or pinned)."""

    variant: Literal["free", "pinned"]
    runs: list[RunSummary] = Field(description="Runs, by temperature")
    arrhenius: ArrheniusFit | None = Field(None, description="Arrhenius fit, when possible")
    arrhenius_note: str | None = Field(None, description="Why there is no fit, or caveats")
    ea_ev: float | None = Field(None, description="Activation energy, eV")
    ea_err_ev: float | None = Field(None, description="1σ of Ea, eV")
    ea_resolved: bool | None = Field(
        None, description="Ea > 2σ_Ea (None without a fit); σ(300 K) is quoted only if True"
    )
    sigma_300k_ms_cm: float | None = Field(
        None, description="σ extrapolated to 300 K (tracer-based), mS/cm; see ea_resolved"
    )
    sigma_300k_interval_ms_cm: tuple[float, float] | None = Field(
        None, description="68 % interval of σ(300 K), mS/cm"
    )
    sigma_300k_interval95_ms_cm: tuple[float, float] | None = Field(
        None, description="95 % interval of σ(300 K), mS/cm"
    )
    jump_activation_enthalpy_ev: float | None = Field(
        None, description="ΔH of the site-to-site jump rate, Γ = ν0·exp(−ΔH/k_B T), eV"
    )
    jump_activation_enthalpy_err_ev: float | None = Field(None, description="1σ of ΔH, eV")
    attempt_frequency_thz: float | None = Field(
        None,
        description="ν0 of Γ(T) (seed 004 Eq. 1: includes exp(ΔS/k_B) and the number of "
        "escape paths), THz",
    )
    jump_arrhenius_note: str | None = Field(
        None, description="Why there is no jump-rate fit, or its caveats"
    )
    decisions: list[str] = Field(
        default_factory=list, description="The precision target's decisions, in order"
    )
    core_hours: float | None = Field(None, description="Compute of the variant's MD, core-h")
    target_met: bool | None = Field(None, description="md.target met (None: no target)")
    budget_core_hours: float | None = Field(None, description="md.target budget, core-h")


class PinnedComparison(BaseModel):
    """Free vs pinned at one temperature (see the module docstring for the rule)."""

    temperature_k: float
    ratio: float | None = Field(None, description="D_free / D_pinned")
    ratio_err: float | None = Field(None, description="1σ of the ratio (R·σ_lnR)")
    ratio_interval: tuple[float, float] | None = Field(
        None, description="68 % interval of the ratio, exp(ln R ± σ_lnR)"
    )
    ratio_interval95: tuple[float, float] | None = Field(
        None, description="95 % interval of the ratio, exp(ln R ± 1.96 σ_lnR)"
    )
    z_score: float | None = Field(
        None, description="ln R / σ_lnR (schema 1.0: (D_free − D_pinned)/combined σ)"
    )
    verdict: str = Field(description="Significance statement")


class IsolatedAnionSummary(BaseModel):
    """Isolated anions of one element and site symmetry (from the supercell stage)."""

    element: str
    count: int = Field(description="Isolated sites of this element and symmetry (input cell)")
    site_symmetry: str = Field(description="Hermann–Mauguin point group of the site")
    wyckoff: str | None = Field(None, description="Wyckoff position in the framework")
    spacing_a: float | None = Field(
        None, description="Shortest distance between two isolated anions of this element, Å"
    )


class MaterialSummary(BaseModel):
    """Everything a user asks about one material of a campaign (flat fields are indexed)."""

    schema_version: str = Field(SCHEMA_VERSION, description="Summary schema version")
    campaign: str
    material: str
    formula: str = Field(description="Reduced formula")
    chemsys: str = Field(description="Chemical system, e.g. Cl-Li-P-S")
    elements: list[str]
    mobile_species: str
    engine_md: str
    engine_relax: str
    potential: PotentialInfo | None = Field(
        None,
        description="The MD potential of the runs (engine, package version, model, model file "
        "SHA-256; schema 1.4); None when no run recorded one",
    )
    temperatures_k: list[float]
    n_atoms_supercell: int
    supercell_matrix: list[list[int]]
    n_bonded_anions: int
    n_isolated_anions: int
    anion_summary: str
    pinned_indices_count: int
    pinned_reason: str
    free: VariantSummary
    pinned: VariantSummary | None = Field(None, description="None when no pinned run was made")
    comparisons: list[PinnedComparison] = Field(default_factory=list)
    pinned_verdict: str = Field(description="Overall free-vs-pinned statement")
    sigma_basis: str = Field(SIGMA_BASIS, description="Which σ the campaign quotes")
    ea_resolved: bool | None = Field(
        None, description="Free-variant Ea > 2σ_Ea (None without a fit)"
    )
    # flat copies for queries (σ(300 K) only when Ea is resolved)
    ea_ev: float | None = None
    ea_err_ev: float | None = None
    sigma_300k_ms_cm: float | None = Field(
        None, description="σ(300 K), mS/cm, when Ea is resolved (else None; see free)"
    )
    sigma_300k_low_ms_cm: float | None = None
    sigma_300k_high_ms_cm: float | None = None
    pinned_ea_ev: float | None = None
    # mechanism evidence (schema 1.2; older documents: the defaults)
    isolated_fraction: float | None = Field(
        None, description="Isolated anion sites / all anion sites (supercell stage)"
    )
    anion_groups: dict[str, int] = Field(
        default_factory=dict, description="Polyanion formula → count in the input cell"
    )
    isolated_anions: list[IsolatedAnionSummary] = Field(
        default_factory=list, description="Isolated anions by element and site symmetry"
    )
    percolation_dimension: int | None = Field(
        None, description="Highest percolation dimension of the Li density over the free runs"
    )
    rotation_frozen_by_pinning: bool | None = Field(
        None,
        description="Pinned runs show no reorientation (or τ2 ≥ 10× free); None: untested",
    )
    rotation_coupled: bool | None = Field(
        None,
        description="Polyanions reorient in the free runs AND pinning lowers D significantly "
        "(None: no rotation analysis)",
    )
    mechanism_verdict: str = Field("", description="One line: why the ions move, with numbers")
    # compute and precision target (schema 1.3)
    decisions: list[str] = Field(
        default_factory=list,
        description="md.target decisions in order (pinned control's prefixed 'pinned: ')",
    )
    core_hours: float | None = Field(None, description="Compute of every MD run, core-h")
    budget_core_hours: float | None = Field(
        None, description="md.target budget of the material's MD (free + pinned), core-h"
    )
    target_met: bool | None = Field(
        None, description="md.target met by the free variant (None: no target)"
    )
    regimes: list[str] = Field(default_factory=list, description="Regimes of the free runs")
    notes: list[str] = Field(default_factory=list, description="Caveats worth reading")
    provenance: dict = Field(default_factory=dict, description="Code versions, settings, job ids")


def variant_summary(
    variant: str,
    analyses: list[DiffusionAnalysis],
    ids: list[dict] | None = None,
    at_temperature_k: float = 300.0,
) -> VariantSummary:
    """Runs + Arrhenius fit (or the reason there is none) of one variant."""
    from ionflow.analysis import fit_arrhenius_from_analyses
    from ionflow.errors import UserInputError

    ids = ids or [{} for _ in analyses]
    runs = [RunSummary.from_analysis(a, variant, **i) for a, i in zip(analyses, ids, strict=True)]
    runs.sort(key=lambda r: r.temperature_k)
    out = VariantSummary(variant=variant, runs=runs)
    _jump_arrhenius(out)
    try:
        fit = fit_arrhenius_from_analyses(analyses, at_temperature_k=at_temperature_k)
    except UserInputError as exc:
        out.arrhenius_note = str(exc)
        return out
    out.arrhenius = fit
    out.arrhenius_note = "; ".join(fit.warnings) or None
    out.ea_ev, out.ea_err_ev = fit.ea_ev, fit.ea_err_ev
    out.ea_resolved = ea_is_resolved(fit.ea_ev, fit.ea_err_ev)
    out.sigma_300k_ms_cm = fit.sigma_at_t_ms_cm
    out.sigma_300k_interval_ms_cm = fit.sigma_at_t_interval_ms_cm
    out.sigma_300k_interval95_ms_cm = fit.sigma_at_t_interval95_ms_cm
    return out


def _jump_arrhenius(v: VariantSummary) -> None:
    """ΔH and ν0 from the runs' jump rates Γ(T) (weighted like D(T)), or the reason not."""
    from ionflow.analysis.jumps import attempt_frequency
    from ionflow.errors import UserInputError

    rated = [r for r in v.runs if r.jump_rate_per_ps and r.jump_rate_per_ps > 0]
    if not rated:
        return
    try:
        fit = attempt_frequency(
            [r.temperature_k for r in rated],
            [r.jump_rate_per_ps for r in rated],
            [r.jump_rate_err_per_ps for r in rated],
        )
    except UserInputError as exc:
        v.jump_arrhenius_note = f"no jump-rate fit: {exc}"
        return
    v.jump_activation_enthalpy_ev = fit["jump_activation_enthalpy_ev"]
    v.jump_activation_enthalpy_err_ev = fit["jump_activation_enthalpy_err_ev"]
    v.attempt_frequency_thz = fit["attempt_frequency_thz"]
    v.jump_arrhenius_note = "; ".join(fit["warnings"]) or None


def _ratio_text(x: float, digits: int = 2) -> str:
    """``digits`` significant digits, trailing zeros kept (2.0, 1.02, 0.333)."""
    if not math.isfinite(x):
        return f"{x}"
    return f"{x:#.{digits}g}".rstrip(".")


def compare_runs(free: RunSummary, pinned: RunSummary) -> PinnedComparison:
    """Paired free/pinned statistics at one temperature (see module docstring)."""
    t = free.temperature_k
    if free.diffusivity_cm2_s is None:
        return PinnedComparison(temperature_k=t, verdict=f"free run {free.regime}: no comparison")
    if pinned.diffusivity_cm2_s is None:
        if pinned.regime == "caged":
            return PinnedComparison(
                temperature_k=t, verdict="pinning suppresses diffusion (pinned run caged)"
            )
        return PinnedComparison(
            temperature_k=t, verdict=f"pinned run {pinned.regime}: inconclusive"
        )
    d1, e1 = free.diffusivity_cm2_s, free.diffusivity_err_cm2_s or 0.0
    d2, e2 = pinned.diffusivity_cm2_s, pinned.diffusivity_err_cm2_s or 0.0
    if not (d1 > 0 and d2 > 0):
        return PinnedComparison(temperature_k=t, verdict="D ≤ 0 in a run: no comparison")
    ratio = d1 / d2
    ln_r = math.log(ratio)
    s_ln = math.hypot(e1 / d1, e2 / d2)
    if s_ln > 0:
        z = ln_r / s_ln
    else:  # no errors given: only an exact tie is "no change"
        z = 0.0 if ln_r == 0 else math.copysign(math.inf, ln_r)
    iv68 = (math.exp(ln_r - Z68 * s_ln), math.exp(ln_r + Z68 * s_ln))
    iv95 = (math.exp(ln_r - Z95 * s_ln), math.exp(ln_r + Z95 * s_ln))
    r, lo, hi = (_ratio_text(x, 3) for x in (ratio, *iv95))
    i68 = f"68 % [{_ratio_text(iv68[0], 3)}, {_ratio_text(iv68[1], 3)}]"
    if iv95[0] > 1:
        verdict = (
            f"pinning lowers D ×{r} (95 % [{lo}, {hi}], z = {z:.1f}): anion motion assists "
            "diffusion"
        )
    elif iv95[1] < 1:
        verdict = f"pinning raises D (ratio {r}, 95 % [{lo}, {hi}], z = {z:.1f})"
    elif EQUIVALENCE_MARGIN[0] <= iv95[0] and iv95[1] <= EQUIVALENCE_MARGIN[1]:
        verdict = (
            f"no significant change (ratio {r}, 95 % [{lo}, {hi}] within the "
            f"×{EQUIVALENCE_MARGIN[1]:g} equivalence margin)"
        )
    else:
        detectable = math.exp(Z95 * s_ln)  # the smallest change these runs call significant
        verdict = (
            f"inconclusive: runs too short to detect a {_ratio_text(detectable)}× change "
            f"(ratio {r}, {i68})"
        )
    return PinnedComparison(
        temperature_k=t,
        ratio=ratio,
        ratio_err=ratio * s_ln,
        ratio_interval=iv68,
        ratio_interval95=iv95,
        z_score=z,
        verdict=verdict,
    )


def _effect(c: PinnedComparison) -> str | None:
    """lowers | raises | none | inconclusive for a compared temperature, else None."""
    v = c.verdict
    if v.startswith(("pinning lowers", "pinning suppresses")):
        return "lowers"
    if v.startswith("pinning raises"):
        return "raises"
    if c.ratio is None:
        return None  # no usable pair of runs at this temperature
    if v.startswith("no significant"):
        return "none"
    return "inconclusive"


def _cannot_exclude(c: PinnedComparison, factor: float) -> bool:
    """The 95 % interval of the ratio reaches a change of ``factor`` either way."""
    iv = c.ratio_interval95
    return iv is not None and (iv[1] >= factor or iv[0] <= 1.0 / factor)


def overall_verdict(
    comparisons: list[PinnedComparison], pinned_reason: str, has_pinned: bool
) -> str:
    """One sentence over all temperatures (rules in the module docstring)."""
    if not has_pinned:
        return f"no pinned control: {pinned_reason}"
    effects = [(c, e) for c in comparisons if (e := _effect(c)) is not None]
    if not effects:
        return "inconclusive: no temperature with usable free and pinned runs"
    n = len(effects)
    lowered = [c for c, e in effects if e == "lowers"]
    raised = [c for c, e in effects if e == "raises"]
    unclear = [c for c, e in effects if e == "inconclusive"]
    if len(lowered) == n:
        return f"pinning lowers Li diffusion at all {n} temperatures: rotation-assisted"
    if lowered:
        extra = []
        if raised:
            extra.append(f"raises it at {len(raised)}")
        if unclear:
            extra.append(f"{len(unclear)} inconclusive")
        more = f" ({', '.join(extra)})" if extra else ""
        return (
            f"pinning lowers diffusion at {len(lowered)} of {n} temperatures{more}: mixed evidence"
        )
    if raised:
        more = f" ({len(unclear)} inconclusive)" if unclear else ""
        return f"pinning raises diffusion at {len(raised)} of {n} temperature(s){more}"
    if not unclear:
        return f"no significant effect of pinning at {n} temperature(s): rotation not required"
    m = len(unclear)
    k2 = sum(_cannot_exclude(c, DETECT_FACTOR) for c in unclear)
    margin = f"×{EQUIVALENCE_MARGIN[1]:g}"
    if k2:
        text = (
            f"inconclusive: runs too short to exclude a {DETECT_FACTOR:g}× effect of pinning "
            f"at {k2} of {n} temperature(s)"
        )
        if m > k2:
            text += f", a {margin} effect at {m - k2}"
    else:
        text = (
            f"inconclusive: runs too short to exclude a {margin} effect of pinning at {m} of "
            f"{n} temperature(s)"
        )
    if n > m:
        text += f"; no significant change at {n - m}"
    return text + " — run longer to decide"


#: τ2 of a pinned run this many times the free τ2 (or no reorientation) = frozen groups.
FROZEN_FACTOR = 10.0


def isolated_anion_fields(descriptors: dict | None) -> dict:
    """The flat isolated-anion fields of :class:`MaterialSummary` from the supercell
    stage's ``anion_descriptors`` (an :class:`ionflow.analysis.anions.AnionReport` dump)."""
    if not descriptors:
        return {}
    rows: dict[tuple, dict] = {}
    spacing = descriptors.get("isolated_anion_spacing_a") or {}
    for a in descriptors.get("anions") or []:
        if a.get("bonded"):
            continue
        key = (a.get("element"), a.get("site_symmetry"), a.get("wyckoff"))
        row = rows.setdefault(
            key,
            {
                "element": key[0],
                "count": 0,
                "site_symmetry": key[1] or "?",
                "wyckoff": key[2],
                "spacing_a": spacing.get(key[0]),
            },
        )
        row["count"] += 1
    return {
        "isolated_fraction": descriptors.get("isolated_fraction"),
        "anion_groups": dict(descriptors.get("groups") or {}),
        "isolated_anions": [IsolatedAnionSummary(**r) for r in rows.values()],
    }


def _frozen(free: RunSummary, pinned: RunSummary) -> bool | None:
    """Pinned groups frozen relative to the free run at one temperature (None: unknown)."""
    if pinned.rotating_group is None:
        return None
    if pinned.tau_p2_ps is None:
        return True  # C2 does not decay: no reorientation
    if free.tau_p2_ps is None:
        return False  # pinned groups turn, free ones do not: not a freezing control
    return pinned.tau_p2_ps >= FROZEN_FACTOR * free.tau_p2_ps


def mechanism_verdict(
    free: VariantSummary,
    pinned: VariantSummary | None,
    comparisons: list[PinnedComparison],
    groups: dict[str, int] | None = None,
) -> tuple[str, bool | None, bool | None]:
    """(one-line verdict citing the numbers, rotation_coupled, rotation_frozen_by_pinning).

    rotation_coupled is True only when the polyanions reorient in a free run (τ2 finite)
    AND pinning lowers D significantly (95 % interval of D_free/D_pinned above 1, or the
    pinned run caged) at a majority of the compared temperatures and raises it at none;
    None when no free run has a rotation analysis; else False.
    """
    runs = free.runs
    with_rot = [r for r in runs if r.rotating_group is not None or r.tau_p2_reason]
    analysed = [r for r in runs if r.rotating_group is not None]
    lowered = [c for c in comparisons if _effect(c) == "lowers"]
    raised = [c for c in comparisons if _effect(c) == "raises"]
    frozen = None
    if pinned is not None:
        by_t = {r.temperature_k: r for r in pinned.runs}
        checks = [
            f
            for r in runs
            if r.temperature_k in by_t and (f := _frozen(r, by_t[r.temperature_k])) is not None
        ]
        frozen = all(checks) if checks else None
    # the pinning part, with numbers
    if pinned is None:
        pin_text = "no pinned control: coupling untested"
    elif lowered:
        best = max(lowered, key=lambda c: c.z_score if c.z_score is not None else math.inf)
        if best.ratio is not None:
            pin_text = (
                f"pinning them lowers D* {_ratio_text(best.ratio)}× (z = {best.z_score:.1f}, "
                f"{best.temperature_k:g} K)"
            )
        else:
            pin_text = f"pinning them suppresses diffusion ({best.temperature_k:g} K: caged)"
        if len(lowered) < len(comparisons):
            pin_text += f" at {len(lowered)} of {len(comparisons)} temperatures"
    elif raised:
        c = raised[0]
        pin_text = (
            f"pinning raises D* (ratio {_ratio_text(c.ratio or math.nan)}, {c.temperature_k:g} K)"
        )
    else:
        pin_text = "pinning: " + overall_verdict(comparisons, "", True)
    if not with_rot:
        return f"rotation not analysed; {pin_text}", None, frozen
    if not analysed:
        why = with_rot[0].tau_p2_reason or "no polyanion groups"
        return f"{why}: rotation-coupling does not apply; {pin_text}", False, frozen
    formula = analysed[0].rotating_group
    rotating = [r for r in analysed if r.tau_p2_ps is not None]
    if rotating:
        r = max(rotating, key=lambda r: r.temperature_k)
        err = f" ± {r.tau_p2_err_ps:.2g}" if r.tau_p2_err_ps else ""
        rot_text = f"{formula} reorient with τ2 = {r.tau_p2_ps:.3g}{err} ps ({r.temperature_k:g} K)"
    else:
        r = max(analysed, key=lambda r: r.temperature_k)
        c2 = (
            f" (C2 = {r.p2_at_max_lag:.2f} at the longest lag)"
            if r.p2_at_max_lag is not None
            else ""
        )
        rot_text = f"{formula} do not reorient within the runs{c2}"
    # one significant temperature among several inconclusive ones is not a finding (three
    # tests at 95 % give one by chance 7 % of the time): a majority must show it
    majority = 2 * len(lowered) > len(comparisons)
    coupled = bool(rotating) and majority and not raised
    if coupled:
        tail = "rotation-coupled"
    elif rotating and lowered and not raised:
        tail = "rotation coupling suggested, not shown (a minority of temperatures): run longer"
    elif (
        rotating
        and pinned is not None
        and not lowered
        and not raised
        and any(_effect(c) == "none" for c in comparisons)
    ):
        tail = "rotation not required"
    elif not rotating and lowered:
        tail = "pinning matters without reorientation (framework stiffening?)"
    else:
        tail = "rotation coupling not shown"
    text = f"{rot_text}; {pin_text}: {tail}"
    if frozen is False:
        text += "; caution: the pinned runs' groups still reorient (pinning does not freeze them)"
    return text, coupled, frozen


def material_potential(free: VariantSummary, pinned: VariantSummary | None) -> PotentialInfo | None:
    """The potential every run of the material recorded (the first run's), or None when no
    run recorded one.

    Raises
    ------
    ValueError
        Runs of one material made with different models (engine or model file SHA-256):
        their D values do not belong in one Arrhenius fit.
    """
    seen = [r.potential for v in (free, pinned) if v is not None for r in v.runs if r.potential]
    if not seen:
        return None
    first = seen[0]
    for p in seen[1:]:
        if (p.engine, p.model, p.model_sha256) != (first.engine, first.model, first.model_sha256):
            raise ValueError(
                f"runs made with different potentials: {first.engine} {first.model} "
                f"({first.model_sha256}) and {p.engine} {p.model} ({p.model_sha256})"
            )
    return first


def _sigma_note(v: VariantSummary) -> str | None:
    """Why the σ(300 K) extrapolation of a variant is not quoted (None when it is)."""
    if v.ea_resolved is not False or v.sigma_300k_ms_cm is None or v.ea_ev is None:
        return None
    ea = (
        f"{v.ea_ev:.2f} eV, no error estimate"
        if v.ea_err_ev is None
        else f"{v.ea_ev:.2f} ± {v.ea_err_ev:.2f} eV"
    )
    label = "" if v.variant == "free" else f"{v.variant}: "
    return f"{label}σ(300 K) not quoted: Ea not resolved ({ea})"


def _compute_fields(free: VariantSummary, pinned: VariantSummary | None) -> dict:
    """Material-level decisions, core-hours and target of the variants' controllers."""
    variants = [v for v in (free, pinned) if v is not None]
    decisions = list(free.decisions)
    if pinned is not None:
        decisions += [f"pinned: {line}" for line in pinned.decisions]
    hours = [
        v.core_hours
        if v.core_hours is not None
        else sum(r.core_hours for r in v.runs if r.core_hours is not None)
        for v in variants
    ]
    known = any(r.core_hours is not None for v in variants for r in v.runs)
    known = known or any(v.core_hours is not None for v in variants)
    return {
        "decisions": decisions,
        "core_hours": float(sum(hours)) if known else None,
        "budget_core_hours": free.budget_core_hours,
        "target_met": free.target_met,
    }


def build_summary(
    *,
    campaign: str,
    material: str,
    structure,
    mobile_species: str,
    engine_md: str,
    engine_relax: str,
    supercell: SupercellOutput | dict,
    free: VariantSummary,
    pinned: VariantSummary | None,
    provenance: dict | None = None,
) -> MaterialSummary:
    """Assemble the :class:`MaterialSummary` of one material from its variant summaries.

    ``ea_resolved`` is (re)computed here from each variant's Ea and its error (a variant
    summary of an older ionflow lacks it); the flat σ(300 K) fields are filled only when
    the free Ea is resolved, with a note saying why not otherwise.
    """
    comp = structure.composition
    free_v, pinned_v = (
        None
        if v is None
        else v.model_copy(update={"ea_resolved": ea_is_resolved(v.ea_ev, v.ea_err_ev)})
        for v in (free, pinned)
    )
    comparisons = []
    if pinned_v is not None:
        by_t = {r.temperature_k: r for r in pinned_v.runs}
        comparisons = [
            compare_runs(r, by_t[r.temperature_k]) for r in free_v.runs if r.temperature_k in by_t
        ]
    sc = SupercellOutput.model_validate(supercell)
    anions = isolated_anion_fields(sc.anion_descriptors)
    verdict, coupled, frozen = mechanism_verdict(free_v, pinned_v, comparisons)
    dims = [r.percolation_dimension for r in free_v.runs if r.percolation_dimension is not None]
    quoted = free_v.ea_resolved is True
    iv = free_v.sigma_300k_interval_ms_cm if quoted else None
    notes = list(sc.notes)
    notes += [n for v in (free_v, pinned_v) if v is not None and (n := _sigma_note(v))]
    return MaterialSummary(
        campaign=campaign,
        material=material,
        formula=comp.reduced_formula,
        chemsys=comp.chemical_system,
        elements=sorted(el.symbol for el in comp.elements),
        mobile_species=mobile_species,
        engine_md=engine_md,
        engine_relax=engine_relax,
        potential=material_potential(free_v, pinned_v),
        temperatures_k=sorted(
            {r.temperature_k for v in (free_v, pinned_v) if v is not None for r in v.runs}
        ),
        n_atoms_supercell=sc.n_atoms,
        supercell_matrix=sc.matrix,
        n_bonded_anions=len(sc.bonded_indices),
        n_isolated_anions=len(sc.isolated_indices),
        anion_summary=sc.anion_summary,
        pinned_indices_count=len(sc.pinned_indices),
        pinned_reason=sc.pinned_reason,
        free=free_v,
        pinned=pinned_v,
        comparisons=comparisons,
        pinned_verdict=overall_verdict(comparisons, sc.pinned_reason, pinned_v is not None),
        sigma_basis=SIGMA_BASIS,
        ea_resolved=free_v.ea_resolved,
        ea_ev=free_v.ea_ev,
        ea_err_ev=free_v.ea_err_ev,
        sigma_300k_ms_cm=free_v.sigma_300k_ms_cm if quoted else None,
        sigma_300k_low_ms_cm=iv[0] if iv else None,
        sigma_300k_high_ms_cm=iv[1] if iv else None,
        pinned_ea_ev=pinned_v.ea_ev if pinned_v else None,
        **anions,
        percolation_dimension=max(dims) if dims else None,
        rotation_frozen_by_pinning=frozen,
        rotation_coupled=coupled,
        mechanism_verdict=verdict,
        **_compute_fields(free_v, pinned_v),
        regimes=[r.regime for r in free_v.runs],
        notes=notes,
        provenance={"ionflow": __version__, **(provenance or {})},
    )
