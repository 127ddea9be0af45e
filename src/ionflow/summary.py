"""Per-material summary documents (the results layer's single schema definition).

Pure code: built from :class:`~ionflow.analysis.DiffusionAnalysis` and
:class:`~ionflow.analysis.ArrheniusFit` objects, no jobflow or database imports. The
campaign's summary job stores one :class:`MaterialSummary` per (campaign, material).

Free vs pinned comparison
-------------------------
At each temperature with a diffusive free *and* pinned run, the ratio
R = D_free / D_pinned is reported with its 1σ error (relative errors added in
quadrature) and the paired z-score z = (D_free − D_pinned)/√(σ_free² + σ_pinned²).
|z| ≥ 2 → the difference is significant at ~95 %: "pinning lowers D" (polyanion motion
assists Li transport) or "pinning raises D"; otherwise "no significant change"
(rotation is not what drives diffusion). A pinned run that is caged where the free run
diffuses counts as "pinning suppresses diffusion".
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from ionflow import __version__
from ionflow.analysis import ArrheniusFit, DiffusionAnalysis

SCHEMA_VERSION = "1.0"


class RunSummary(BaseModel):
    """One MD run (material, temperature, variant) in brief."""

    temperature_k: float = Field(description="Temperature, K")
    variant: Literal["free", "pinned"] = Field(description="free or pinned-anion control")
    regime: str = Field(description="diffusive | caged | insufficient")
    regime_reason: str = Field(description="Why")
    diffusivity_cm2_s: float | None = Field(None, description="Tracer D, cm²/s")
    diffusivity_err_cm2_s: float | None = Field(None, description="1σ of D, cm²/s")
    conductivity_ms_cm: float | None = Field(None, description="σ, mS/cm")
    conductivity_err_ms_cm: float | None = Field(None, description="1σ of σ, mS/cm")
    haven_ratio: float | None = Field(None, description="Haven ratio")
    haven_ratio_err: float | None = Field(None, description="1σ of Haven ratio")
    n_eff_hops: float = Field(description="Hop equivalents (He et al.)")
    duration_ps: float = Field(description="Analysed duration, ps")
    fit_window_ps: tuple[float, float] = Field(description="Fit window, ps")
    analysis_uuid: str | None = Field(None, description="jobflow uuid of the analysis job")
    md_uuid: str | None = Field(None, description="jobflow uuid of the MD job")

    @classmethod
    def from_analysis(cls, a: DiffusionAnalysis, variant: str, **ids) -> RunSummary:
        return cls(
            temperature_k=a.temperature_k,
            variant=variant,
            regime=a.regime,
            regime_reason=a.regime_reason,
            diffusivity_cm2_s=a.diffusivity_cm2_s,
            diffusivity_err_cm2_s=a.diffusivity_err_cm2_s,
            conductivity_ms_cm=a.conductivity_ms_cm,
            conductivity_err_ms_cm=a.conductivity_err_ms_cm,
            haven_ratio=a.haven_ratio,
            haven_ratio_err=None,
            n_eff_hops=a.n_eff_hops,
            duration_ps=a.duration_ps,
            fit_window_ps=a.fit_window_ps,
            **ids,
        )


class VariantSummary(BaseModel):
    """Arrhenius result of one variant (free or pinned)."""

    variant: Literal["free", "pinned"]
    runs: list[RunSummary] = Field(description="Runs, by temperature")
    arrhenius: ArrheniusFit | None = Field(None, description="Arrhenius fit, when possible")
    arrhenius_note: str | None = Field(None, description="Why there is no fit, or caveats")
    ea_ev: float | None = Field(None, description="Activation energy, eV")
    ea_err_ev: float | None = Field(None, description="1σ of Ea, eV")
    sigma_300k_ms_cm: float | None = Field(None, description="σ extrapolated to 300 K, mS/cm")
    sigma_300k_interval_ms_cm: tuple[float, float] | None = Field(
        None, description="68 % interval of σ(300 K), mS/cm"
    )
    sigma_300k_interval95_ms_cm: tuple[float, float] | None = Field(
        None, description="95 % interval of σ(300 K), mS/cm"
    )


class PinnedComparison(BaseModel):
    """Free vs pinned at one temperature."""

    temperature_k: float
    ratio: float | None = Field(None, description="D_free / D_pinned")
    ratio_err: float | None = Field(None, description="1σ of the ratio")
    z_score: float | None = Field(None, description="(D_free − D_pinned)/combined σ")
    verdict: str = Field(description="Significance statement")


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
    # flat copies for queries
    ea_ev: float | None = None
    ea_err_ev: float | None = None
    sigma_300k_ms_cm: float | None = None
    sigma_300k_low_ms_cm: float | None = None
    sigma_300k_high_ms_cm: float | None = None
    pinned_ea_ev: float | None = None
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
    try:
        fit = fit_arrhenius_from_analyses(analyses, at_temperature_k=at_temperature_k)
    except UserInputError as exc:
        out.arrhenius_note = str(exc)
        return out
    out.arrhenius = fit
    out.arrhenius_note = "; ".join(fit.warnings) or None
    out.ea_ev, out.ea_err_ev = fit.ea_ev, fit.ea_err_ev
    out.sigma_300k_ms_cm = fit.sigma_at_t_ms_cm
    out.sigma_300k_interval_ms_cm = fit.sigma_at_t_interval_ms_cm
    out.sigma_300k_interval95_ms_cm = fit.sigma_at_t_interval95_ms_cm
    return out


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
    ratio = d1 / d2
    ratio_err = ratio * math.hypot(e1 / d1, e2 / d2)
    comb = math.hypot(e1, e2)
    z = (d1 - d2) / comb if comb > 0 else float("inf")
    if z >= 2:
        verdict = f"pinning lowers D ×{ratio:.2g} (z = {z:.1f}): anion motion assists diffusion"
    elif z <= -2:
        verdict = f"pinning raises D (ratio {ratio:.2g}, z = {z:.1f})"
    else:
        verdict = f"no significant change (ratio {ratio:.2g} ± {ratio_err:.2g}, z = {z:.1f})"
    return PinnedComparison(
        temperature_k=t, ratio=ratio, ratio_err=ratio_err, z_score=z, verdict=verdict
    )


def overall_verdict(
    comparisons: list[PinnedComparison], pinned_reason: str, has_pinned: bool
) -> str:
    """One sentence over all temperatures."""
    if not has_pinned:
        return f"no pinned control: {pinned_reason}"
    lowered = [
        c for c in comparisons if c.verdict.startswith(("pinning lowers", "pinning suppresses"))
    ]
    tested = [c for c in comparisons if c.z_score is not None or c.verdict.startswith("pinning")]
    if not tested:
        return "inconclusive: no temperature with usable free and pinned runs"
    if len(lowered) == len(tested):
        return f"pinning lowers Li diffusion at all {len(tested)} temperatures: rotation-assisted"
    if not lowered:
        return f"no significant effect of pinning at {len(tested)} temperature(s): rotation not required"
    return (
        f"pinning lowers diffusion at {len(lowered)} of {len(tested)} temperatures: mixed evidence"
    )


def build_summary(
    *,
    campaign: str,
    material: str,
    structure,
    mobile_species: str,
    engine_md: str,
    engine_relax: str,
    supercell: dict,
    free: VariantSummary,
    pinned: VariantSummary | None,
    provenance: dict | None = None,
) -> MaterialSummary:
    """Assemble the :class:`MaterialSummary` of one material from its variant summaries."""
    comp = structure.composition
    free_v, pinned_v = free, pinned
    comparisons = []
    if pinned_v is not None:
        by_t = {r.temperature_k: r for r in pinned_v.runs}
        comparisons = [
            compare_runs(r, by_t[r.temperature_k]) for r in free_v.runs if r.temperature_k in by_t
        ]
    anions = supercell.get("anions", {})
    iv = free_v.sigma_300k_interval_ms_cm
    return MaterialSummary(
        campaign=campaign,
        material=material,
        formula=comp.reduced_formula,
        chemsys=comp.chemical_system,
        elements=sorted(el.symbol for el in comp.elements),
        mobile_species=mobile_species,
        engine_md=engine_md,
        engine_relax=engine_relax,
        temperatures_k=sorted(
            {r.temperature_k for v in (free_v, pinned_v) if v is not None for r in v.runs}
        ),
        n_atoms_supercell=int(supercell["n_atoms"]),
        supercell_matrix=supercell["matrix"],
        n_bonded_anions=len(anions.get("bonded_indices", [])),
        n_isolated_anions=len(anions.get("isolated_indices", [])),
        anion_summary=supercell.get("anion_summary", ""),
        pinned_indices_count=len(supercell.get("pinned_indices", [])),
        pinned_reason=supercell.get("pinned_reason", ""),
        free=free_v,
        pinned=pinned_v,
        comparisons=comparisons,
        pinned_verdict=overall_verdict(
            comparisons, supercell.get("pinned_reason", ""), pinned_v is not None
        ),
        ea_ev=free_v.ea_ev,
        ea_err_ev=free_v.ea_err_ev,
        sigma_300k_ms_cm=free_v.sigma_300k_ms_cm,
        sigma_300k_low_ms_cm=iv[0] if iv else None,
        sigma_300k_high_ms_cm=iv[1] if iv else None,
        pinned_ea_ev=pinned_v.ea_ev if pinned_v else None,
        regimes=[r.regime for r in free_v.runs],
        notes=list(supercell.get("notes", [])),
        provenance={"ionflow": __version__, **(provenance or {})},
    )


#: Collection (JobStore database) with one summary per (campaign, material).
SUMMARY_COLLECTION = "summaries"
#: Collection (JobStore database): the current summary key of each (campaign, material),
#: written at every submission (:func:`set_current_summaries`).
CURRENT_COLLECTION = "summaries_current"


def store_summary(collection, doc: dict) -> bool:
    """Upsert a summary document into ``summaries`` unless it is not the current one.

    Keyed by (campaign, material). Every submission records the key of each material's
    summary job (:func:`set_current_summaries`); a summary whose
    ``provenance.summary_key`` differs from the recorded one belongs to an earlier or
    later plan (e.g. before a temperature was added) and is not written — whichever
    summary job runs last. Without a record (jobs run outside ``ionflow run/submit``) the
    last write wins. Returns whether ``doc`` was written.
    """
    key = {"campaign": doc["campaign"], "material": doc["material"]}
    mine = (doc.get("provenance") or {}).get("summary_key")
    current = collection.database[CURRENT_COLLECTION].find_one(key) or {}
    if mine is not None and current.get("summary_key") not in (None, mine):
        return False
    collection.replace_one(key, doc, upsert=True)
    from ionflow.query_index import touch

    touch(collection.database)  # the columnar query copy is stale now
    return True


def set_current_summaries(db, campaign: str, keys: dict[str, str]) -> list[str]:
    """Record each material's current summary key; bring ``summaries`` in line with it.

    ``db`` is the JobStore database, ``keys`` material → summary job key (the submitted
    plan; the campaign's records of materials not in it are dropped). When the stored summary of a material is another plan's and the current
    plan's summary job has already run (its output is in ``outputs``, e.g. the user went
    back to an earlier temperature list), that output is stored again. Returns the
    materials whose stored summary was replaced this way.
    """
    from ionflow.results import OUTPUTS_COLLECTION

    if not keys:
        return []
    current = db[CURRENT_COLLECTION]
    current.create_index([("campaign", 1), ("material", 1)])
    # two writes, not an upsert per material (thousands of materials; no long $in lists,
    # slow on SecantusDB): the campaign's records are replaced by this plan's. A summary
    # job finishing in between finds no record and writes (last write wins), as before.
    current.delete_many({"campaign": campaign})
    current.insert_many(
        [{"campaign": campaign, "material": m, "summary_key": k} for m, k in keys.items()]
    )
    stored = {
        d["material"]: (d.get("provenance") or {}).get("summary_key")
        for d in db[SUMMARY_COLLECTION].find(
            {"campaign": campaign}, {"material": 1, "provenance.summary_key": 1}
        )
        if d.get("material") in keys
    }
    stale = {m: keys[m] for m, k in stored.items() if k is not None and k != keys[m]}
    restored = []
    for material, key in stale.items():
        out = list(
            db[OUTPUTS_COLLECTION]
            .find({"metadata.ionflow_key": key}, {"output": 1})
            .sort("index", -1)
            .limit(1)
        )
        doc = out[0].get("output") if out else None
        if isinstance(doc, dict) and doc.get("material") == material:
            store_summary(db[SUMMARY_COLLECTION], doc)
            restored.append(material)
    return restored
