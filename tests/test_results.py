"""Tests of ionflow.results and the ``query``/``export``/``export-trajectory`` commands.

Summaries are built with real ionflow code: synthetic hopping trajectories
(:mod:`ionflow.analysis.synthetic`) with hop rates following an Arrhenius law are analysed
with :func:`ionflow.analysis.analyze_arrays`, then :func:`ionflow.summary.variant_summary`
and :func:`ionflow.summary.build_summary` make the documents the summary job stores.
Expected query results are computed in Python from the inserted models (independent of
the MongoDB query that :mod:`ionflow.results` builds).
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import mongomock
import numpy as np
import pytest

from ionflow.analysis import analyze_arrays
from ionflow.analysis.arrhenius import BOLTZMANN_EV_K
from ionflow.analysis.synthetic import caged_trajectory, hopping_trajectory
from ionflow.errors import UserInputError
from ionflow.results import (
    CSV_COLUMNS,
    SORT_FIELDS,
    SUMMARY_COLLECTION,
    SchemaVersionError,
    build_filter,
    ensure_indexes,
    fetch_run_analyses,
    find_summary_documents,
    format_number,
    parse_summary,
    query_summaries,
    summaries_to_csv,
    summaries_to_json,
    verdict_category,
)
from ionflow.summary import MaterialSummary, build_summary, variant_summary

# ----------------------------------------------------------------------------- builders

FRAME_FS = 20.0
HOP_A = 2.5


@dataclass(frozen=True)
class MaterialSpec:
    """How to synthesise one material's runs."""

    campaign: str
    material: str
    formula: str
    ea_ev: float = 0.25
    rate_1000k_per_ps: float = 6.0
    temperatures_k: tuple[float, ...] = (600.0, 800.0, 1000.0)
    # pinned hop rate / free hop rate (one value, or one per temperature); None: no pinned
    # run. A factor of exactly 1 reuses the free trajectory (ratio exactly 1): "no
    # significant change" when both runs' relative errors are below ln 1.5/(1.96·√2) = 0.146
    # (the 95 % interval of the ratio inside the ±×1.5 margin), else "inconclusive".
    pinned_factor: float | tuple[float, ...] | None = 0.2
    caged_k: tuple[float, ...] = ()  # temperatures whose free run is caged
    # temperatures whose free run is reported subdiffusive (see _as_subdiffusive)
    subdiffusive_k: tuple[float, ...] = ()
    n_mobile: int = 16
    n_frames: int = 1500
    frame_fs: float = FRAME_FS
    engine: str = "chgnet"
    pinned_reason: str = "4 PS4 anions pinned (bonded polyanions)"
    seed: int = 0
    # mechanism evidence (summary 1.2): free-run τ2 of PS4 (None: no groups; pinned runs do
    # not reorient), percolation dimension of every run, isolated-anion fraction
    tau_p2_ps: float | None = None
    percolation_dim: int | None = None
    isolated_fraction: float | None = None


def _rate(spec: MaterialSpec, t: float) -> float:
    return spec.rate_1000k_per_ps * math.exp(-spec.ea_ev / BOLTZMANN_EV_K * (1 / t - 1 / 1000))


def _analyse(spec: MaterialSpec, t: float, rate: float, caged: bool, seed: int):
    kw = dict(n_frames=spec.n_frames, n_mobile=spec.n_mobile, n_framework=24)
    kw.update(frame_interval_fs=spec.frame_fs)
    kw.update(temperature_k=t, seed=seed)
    if caged:
        traj = caged_trajectory(**kw)
    else:
        traj = hopping_trajectory(hop_rate_per_ps=rate, hop_length_a=HOP_A, **kw)
    return analyze_arrays(
        traj.positions, traj.lattice, traj.species, temperature_k=t, frame_interval_fs=spec.frame_fs
    )


def _as_subdiffusive(a):
    """The analysis of a run whose MSD bends over the fit window, as the analysis reports it
    (``regime`` subdiffusive, no D/σ, the early/late local D as evidence).

    Stands in for the analysis' own linearity test so that the results layer is tested on
    a known regime: local D of 1.6× and 0.7× the fitted D with 8 % errors each.
    """
    from ionflow.analysis.diffusion import LocalDiffusivity

    d = a.diffusivity_cm2_s
    t0, t1 = a.fit_window_ps
    mid = 0.5 * (t0 + t1)
    early, late = 1.6 * d, 0.7 * d
    e_early, e_late = 0.08 * early, 0.08 * late
    z = (early - late) / math.hypot(e_early, e_late)
    reason = (
        f"MSD bends over the fit window: D = {early:.3g} cm²/s on {t0:.3g}–{mid:.3g} ps vs "
        f"{late:.3g} cm²/s on {mid:.3g}–{t1:.3g} ps (z = {z:.1f})"
    )
    none = dict.fromkeys(
        (
            "diffusivity_cm2_s", "diffusivity_err_cm2_s", "diffusivity_stat_err_cm2_s",
            "diffusivity_sys_err_cm2_s", "diffusivity_components_cm2_s",
            "diffusivity_components_err_cm2_s", "charge_diffusivity_cm2_s",
            "haven_ratio", "haven_ratio_interval", "conductivity_ms_cm", "conductivity_err_ms_cm",
            "charge_conductivity_ms_cm", "charge_conductivity_err_ms_cm",
        )
    )  # fmt: skip
    return a.model_copy(
        update={
            **none,
            "regime": "subdiffusive",
            "regime_reason": reason,
            "window_z": z,
            "local_diffusivities": [
                LocalDiffusivity(
                    window_ps=(t0, mid), diffusivity_cm2_s=early, diffusivity_err_cm2_s=e_early
                ),
                LocalDiffusivity(
                    window_ps=(mid, t1), diffusivity_cm2_s=late, diffusivity_err_cm2_s=e_late
                ),
            ],
        }
    )


@cache
def build_material(spec: MaterialSpec) -> tuple[MaterialSummary, tuple[dict, ...]]:
    """The summary of ``spec`` and the JobStore ``outputs`` documents of its analysis jobs."""
    variants = ["free"] + (["pinned"] if spec.pinned_factor is not None else [])
    vsum, outputs = {}, []
    for vi, variant in enumerate(variants):
        analyses, ids = [], []
        for ti, t in enumerate(spec.temperatures_k):
            factor = 1.0
            if variant == "pinned":
                pf = spec.pinned_factor
                factor = pf[ti] if isinstance(pf, tuple) else pf
            caged = variant == "free" and t in spec.caged_k
            seed = spec.seed * 100 + (vi if factor != 1.0 else 0) * 10 + ti
            a = _analyse(spec, t, _rate(spec, t) * factor, caged, seed=seed)
            if variant == "free" and t in spec.subdiffusive_k:
                a = _as_subdiffusive(a)
            a.source = f"{spec.material}/{variant}_{t:g}K"
            job_uuid = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{spec.campaign}/{spec.material}/{variant}/{t}")
            )
            analyses.append(a)
            mech: dict = {"percolation_dimension": spec.percolation_dim}
            if spec.tau_p2_ps is not None:
                free_run = variant == "free"
                mech.update(
                    rotating_group="PS4",
                    tau_p2_ps=spec.tau_p2_ps if free_run else None,
                    tau_p2_reason=None if free_run else "no reorientation within the run",
                    p2_at_max_lag=0.05 if free_run else 0.99,
                )
            ids.append({"analysis_uuid": job_uuid, "md_uuid": None, **mech})
            outputs.append(
                {
                    "uuid": job_uuid,
                    "index": 1,
                    "name": f"analysis {spec.material} {variant} {t:g}K",
                    "completed_at": "2026-11-22T10:00:00",
                    "hosts": [],
                    "metadata": {
                        "ionflow_campaign": spec.campaign,
                        "ionflow_material": spec.material,
                        "ionflow_variant": variant,
                        "ionflow_temperature_k": float(t),
                    },
                    "output": {
                        "material": spec.material,
                        "variant": variant,
                        "temperature_k": float(t),
                        "analysis_uuid": job_uuid,
                        "analysis": a.model_dump(mode="json"),
                    },
                }
            )
        vsum[variant] = variant_summary(variant, analyses, ids)
    from pymatgen.core import Composition

    n_pinned = 4 if spec.pinned_factor is not None else 0
    summary = build_summary(
        campaign=spec.campaign,
        material=spec.material,
        structure=SimpleNamespace(composition=Composition(spec.formula)),
        mobile_species="Li",
        engine_md=spec.engine,
        engine_relax=spec.engine,
        supercell={
            "n_atoms": 64,
            "matrix": [[2, 0, 0], [0, 2, 0], [0, 0, 1]],
            "anions": {"bonded_indices": list(range(n_pinned)), "isolated_indices": []},
            "anion_summary": f"{n_pinned} bonded anions",
            "pinned_indices": list(range(n_pinned)),
            "pinned_reason": spec.pinned_reason,
            "anion_descriptors": None
            if spec.isolated_fraction is None
            else {"isolated_fraction": spec.isolated_fraction, "groups": {}, "anions": []},
        },
        free=vsum["free"],
        pinned=vsum.get("pinned"),
        provenance={"test": True},
    )
    return summary, tuple(outputs)


#: A small realistic campaign set: fast/slow conductors, a caged run, a subdiffusive run, no
#: pinned control, pinning with and without effect, an Ea not resolved from zero (σ(300 K)
#: not quoted), two campaigns and two engines.
SPECS = (
    MaterialSpec("alpha", "LPS-beta", "Li3PS4", ea_ev=0.22, seed=1, tau_p2_ps=1.3,
                 percolation_dim=3, isolated_fraction=0.0),
    # 32 ions over 300 ps: relative errors ≈ 0.07 ≪ 0.146, "no significant change" established
    MaterialSpec("alpha", "LGPS", "Li10GeP2S12", ea_ev=0.18, rate_1000k_per_ps=5.0, seed=2,
                 pinned_factor=1.0, n_mobile=32, n_frames=3000, frame_fs=100.0, tau_p2_ps=1.0,
                 percolation_dim=3, isolated_fraction=0.0),
    MaterialSpec("alpha", "LLZO", "Li7La3Zr2O12", ea_ev=0.45, pinned_factor=None, seed=3,
                 pinned_reason="no bonded polyanions (oxide framework)"),
    MaterialSpec("alpha", "Li6PS5Cl", "Li6PS5Cl", ea_ev=0.28, caged_k=(600.0,), seed=4,
                 tau_p2_ps=2.0, percolation_dim=3, isolated_fraction=1 / 3),
    MaterialSpec("beta", "LPS-beta", "Li3PS4", ea_ev=0.30, engine="mace", seed=5),
    MaterialSpec("beta", "Li3PO4", "Li3PO4", ea_ev=0.45, rate_1000k_per_ps=1.5, engine="mace",
                 caged_k=(600.0, 800.0, 1000.0), seed=6, pinned_factor=1.0),
    # pinning lowers D at 1000 K only: "mixed evidence"
    MaterialSpec("beta", "Li7P3S11", "Li7P3S11", ea_ev=0.18, rate_1000k_per_ps=5.0, seed=7,
                 pinned_factor=(1.0, 1.0, 0.2)),
    # a tiny Ea over a narrow range: Ea not resolved, σ(300 K) extrapolated but not quoted
    MaterialSpec("beta", "Li3InCl6", "Li3InCl6", ea_ev=0.02, temperatures_k=(900.0, 950.0, 1000.0),
                 pinned_factor=None, pinned_reason="no bonded polyanions (halide framework)",
                 seed=8, percolation_dim=1, isolated_fraction=1.0),
    # the 600 K free run is subdiffusive: left out of the fit, listed with its reason
    MaterialSpec("alpha", "Li3YCl6", "Li3YCl6", ea_ev=0.35, subdiffusive_k=(600.0,),
                 pinned_factor=None, pinned_reason="no bonded polyanions (halide framework)",
                 seed=9),
)  # fmt: skip


def all_materials() -> list[tuple[MaterialSummary, tuple[dict, ...]]]:
    return [build_material(s) for s in SPECS]


def insert_all(db, materials=None) -> list[MaterialSummary]:
    """Insert summaries (as the summary job does) and analysis outputs into ``db``."""
    materials = materials if materials is not None else all_materials()
    for summary, outputs in materials:
        db[SUMMARY_COLLECTION].replace_one(
            {"campaign": summary.campaign, "material": summary.material},
            summary.model_dump(mode="json"),
            upsert=True,
        )
        if outputs:
            db["outputs"].insert_many([dict(o) for o in outputs])
    return [m[0] for m in materials]


@pytest.fixture(params=["server", "columnar"])
def mdb(request, monkeypatch):
    """A mongomock database holding every synthetic material, queried by the server's
    engine or (``columnar``) through :mod:`ionflow.query_index` — same answers expected."""
    from ionflow import query_index

    if request.param == "columnar":
        monkeypatch.setattr(query_index, "MIN_DOCUMENTS", 0)
    db = mongomock.MongoClient()["ionflow"]
    insert_all(db)
    return db


def keys(summaries) -> list[tuple[str, str]]:
    return [(s.campaign, s.material) for s in summaries]


def resolved_fit(s):
    """The free Arrhenius fit when its Ea is resolved (Ea > 2σ_Ea), else None."""
    fit = s.free.arrhenius
    if fit is None or fit.ea_err_ev is None or not fit.ea_ev > 2 * fit.ea_err_ev:
        return None
    return fit


def quoted_sigma(s) -> float | None:
    """σ(300 K) as a query should see it: the fit's extrapolation, only when Ea is resolved."""
    fit = resolved_fit(s)
    return fit.sigma_at_t_ms_cm if fit is not None else None


def field_value(s, field: str):
    """A summary's value of a sort field, σ(300 K) from :func:`quoted_sigma`."""
    return quoted_sigma(s) if field == "sigma_300k_ms_cm" else getattr(s, field)


# ----------------------------------------------------------------------------- the data


def test_synthetic_mechanism_fields():
    """The mechanism flags of the synthetic set follow the summary's rule: PS4 reorient in
    the free runs and pinning lowers D → rotation-coupled; pinning without effect → not."""
    by = {(s.campaign, s.material): s for s, _ in all_materials()}
    lps, lgps = by[("alpha", "LPS-beta")], by[("alpha", "LGPS")]
    assert lps.rotation_coupled is True and lps.rotation_frozen_by_pinning is True
    assert lps.mechanism_verdict.startswith("PS4 reorient with τ2 = 1.3 ps")
    assert lps.mechanism_verdict.endswith("rotation-coupled")
    assert lgps.rotation_coupled is False and "rotation not required" in lgps.mechanism_verdict
    assert by[("alpha", "LLZO")].rotation_coupled is None
    assert by[("beta", "Li3InCl6")].isolated_fraction == 1.0
    assert by[("beta", "Li3InCl6")].percolation_dimension == 1


def test_synthetic_materials_are_realistic():
    by = {(s.campaign, s.material): s for s, _ in all_materials()}
    lps = by[("alpha", "LPS-beta")]
    assert lps.formula == "Li3PS4" and lps.chemsys == "Li-P-S" and lps.elements == ["Li", "P", "S"]
    assert lps.regimes == ["diffusive"] * 3
    assert lps.ea_ev == pytest.approx(0.22, abs=0.1)  # recovered from the synthetic rates
    assert lps.ea_resolved is True and lps.ea_ev > 2 * lps.ea_err_ev
    lo, hi = lps.free.sigma_300k_interval_ms_cm
    assert lo < lps.sigma_300k_ms_cm < hi
    assert verdict_category(lps.pinned_verdict) == "lowers"
    assert verdict_category(by[("alpha", "LLZO")].pinned_verdict) == "none"
    lgps = by[("alpha", "LGPS")]
    assert verdict_category(lgps.pinned_verdict) == "no significant"
    # ... because at every temperature the 95 % interval of D_free/D_pinned, computed here
    # from the runs' D and errors, lies inside the ×1.5 equivalence margin
    pinned_by_t = {r.temperature_k: r for r in lgps.pinned.runs}
    for r in lgps.free.runs:
        p = pinned_by_t[r.temperature_k]
        s_ln = math.hypot(
            r.diffusivity_err_cm2_s / r.diffusivity_cm2_s,
            p.diffusivity_err_cm2_s / p.diffusivity_cm2_s,
        )
        ln_r = math.log(r.diffusivity_cm2_s / p.diffusivity_cm2_s)
        assert 1 / 1.5 <= math.exp(ln_r - 1.96 * s_ln) and math.exp(ln_r + 1.96 * s_ln) <= 1.5
    assert verdict_category(by[("beta", "Li7P3S11")].pinned_verdict) == "mixed"
    assert verdict_category(by[("beta", "Li3PO4")].pinned_verdict) == "inconclusive"
    assert by[("alpha", "LLZO")].pinned is None
    assert by[("alpha", "Li6PS5Cl")].regimes == ["caged", "diffusive", "diffusive"]
    nocond = by[("beta", "Li3PO4")]
    assert nocond.sigma_300k_ms_cm is None and nocond.ea_ev is None
    assert nocond.free.arrhenius is None and "at least 2 temperatures" in nocond.free.arrhenius_note
    assert nocond.ea_resolved is None
    # Ea not resolved: the extrapolation stays in the nested fit (flagged), not in the flat
    # query fields, and a note says why
    flat = by[("beta", "Li3InCl6")]
    fit = flat.free.arrhenius
    assert fit is not None and abs(fit.ea_ev) <= 2 * fit.ea_err_ev
    assert flat.ea_resolved is False and flat.free.ea_resolved is False
    assert flat.free.sigma_300k_ms_cm == fit.sigma_at_t_ms_cm is not None
    assert flat.sigma_300k_ms_cm is None
    assert flat.sigma_300k_low_ms_cm is None and flat.sigma_300k_high_ms_cm is None
    assert flat.ea_ev == fit.ea_ev  # Ea itself stays queryable
    note = f"σ(300 K) not quoted: Ea not resolved ({fit.ea_ev:.2f} ± {fit.ea_err_ev:.2f} eV)"
    assert note in flat.notes
    assert flat.sigma_basis.startswith("tracer")
    # a subdiffusive run: no D, left out of the fit, its reason kept
    sub = by[("alpha", "Li3YCl6")]
    assert sub.regimes[0] == "subdiffusive" and sub.free.runs[0].temperature_k == 600.0
    r600 = sub.free.runs[0]
    assert r600.diffusivity_cm2_s is None and r600.conductivity_ms_cm is None
    assert r600.regime_reason.startswith("MSD bends over the fit window")
    assert r600.window_z == pytest.approx((1.6 - 0.7) / math.hypot(0.08 * 1.6, 0.08 * 0.7))
    assert 600.0 not in sub.free.arrhenius.temperatures_k
    # the indexed flat fields mirror the nested ones (σ(300 K) only when Ea is resolved)
    for s in by.values():
        assert s.sigma_300k_ms_cm == quoted_sigma(s)
        if resolved_fit(s) is not None:
            assert s.sigma_300k_ms_cm == s.free.sigma_300k_ms_cm
        assert s.regimes == [r.regime for r in s.free.runs]


# ----------------------------------------------------------------------------- filters


def test_build_filter_normalises_inputs():
    f = build_filter(
        campaign="alpha",
        formula="S4 P Li3",
        chemsys="s-LI-p",
        elements="li, s",
        engine="CHGNet",
        sigma_min_ms_cm=0.1,
        ea_max_ev=0.3,
        regime="Caged",
        pinned_verdict="lowers",
    )
    assert f == {
        "campaign": "alpha",
        "formula": "Li3PS4",
        "chemsys": "Li-P-S",
        "elements": "S",  # the rarer one: an equality an index serves
        "$and": [{"elements": {"$all": ["Li", "S"]}}],
        "engine_md": "chgnet",
        "sigma_300k_ms_cm": {"$gte": 0.1},
        "ea_ev": {"$lte": 0.3},
        "regimes": "caged",
        "pinned_verdict": {"$gte": "pinning lowers", "$lt": "pinning lowert"},
    }
    assert list(f)[:3] == ["formula", "chemsys", "campaign"]  # most selective first
    assert build_filter(elements="Ge")["elements"] == "Ge"
    assert build_filter(elements="Li,Ge,S")["elements"] == "Ge"
    assert build_filter(pinned_verdict="Mixed")["pinned_verdict"] == {"$regex": "mixed evidence"}
    assert build_filter() == {}
    # free text is escaped and case-insensitive
    assert build_filter(pinned_verdict="ratio 1.2 (z")["pinned_verdict"] == {
        "$regex": r"ratio\ 1\.2\ \(z",
        "$options": "i",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"regime": "liquid"},
            "regime must be one of diffusive, subdiffusive, caged, insufficient",
        ),
        ({"sigma_min_ms_cm": 2.0, "sigma_max_ms_cm": 1.0}, "min 2 > max 1"),
        ({"ea_min_ev": float("nan")}, "finite"),
        ({"formula": "Xx9!"}, "cannot parse"),
        ({"elements": "Li,4"}, "not an element symbol"),
        ({"pinned_verdict": "  "}, "empty"),
    ],
)
def test_build_filter_rejects_bad_values(kwargs, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")):
        build_filter(**kwargs)


def test_unknown_sort_field_lists_allowed(mdb):
    with pytest.raises(UserInputError) as exc:
        query_summaries(mdb, sort="conductivity")
    assert "unknown sort field 'conductivity'" in str(exc.value)
    for f in SORT_FIELDS:
        assert f in str(exc.value)
    with pytest.raises(UserInputError, match="limit"):
        query_summaries(mdb, limit=0)


# independent truth: plain Python over the inserted models
TRUTH_CASES = [
    ({}, lambda s: True),
    ({"campaign": "alpha"}, lambda s: s.campaign == "alpha"),
    ({"formula": "Li3PS4"}, lambda s: s.formula == "Li3PS4"),
    ({"chemsys": "Li-O-P"}, lambda s: s.chemsys == "Li-O-P"),
    ({"elements": ["Li", "S"]}, lambda s: {"Li", "S"} <= set(s.elements)),
    ({"elements": "O"}, lambda s: "O" in s.elements),
    ({"engine": "mace"}, lambda s: s.engine_md == "mace"),
    ({"sigma_min_ms_cm": 10.0}, lambda s: quoted_sigma(s) is not None and quoted_sigma(s) >= 10),
    ({"sigma_max_ms_cm": 10.0}, lambda s: quoted_sigma(s) is not None and quoted_sigma(s) <= 10),
    ({"sigma_min_ms_cm": 0.0}, lambda s: quoted_sigma(s) is not None),
    ({"ea_max_ev": 0.25}, lambda s: s.ea_ev is not None and s.ea_ev <= 0.25),
    ({"ea_min_ev": 0.25, "ea_max_ev": 0.37}, lambda s: s.ea_ev is not None and 0.25 <= s.ea_ev <= 0.37),
    ({"regime": "caged"}, lambda s: "caged" in s.regimes),
    ({"regime": "subdiffusive"}, lambda s: "subdiffusive" in [r.regime for r in s.free.runs]),
    ({"pinned_verdict": "lowers"}, lambda s: s.pinned_verdict.startswith("pinning lowers")),
    ({"pinned_verdict": "no significant"}, lambda s: s.pinned_verdict.startswith("no significant")),
    ({"pinned_verdict": "mixed"}, lambda s: s.pinned_verdict.endswith("mixed evidence")),
    ({"pinned_verdict": "none"}, lambda s: s.pinned_verdict.startswith("no pinned control")),
    ({"pinned_verdict": "inconclusive"}, lambda s: s.pinned_verdict.startswith("inconclusive")),
    ({"pinned_verdict": "OXIDE"}, lambda s: "oxide" in s.pinned_verdict.lower()),
    ({"isolated_fraction_min": 0.3}, lambda s: (s.isolated_fraction or -1) >= 0.3),
    ({"percolation_dimension": 3}, lambda s: s.percolation_dimension == 3),
    ({"rotation_coupled": True}, lambda s: s.rotation_coupled is True),
    ({"rotation_coupled": False}, lambda s: s.rotation_coupled is False),
    ({"campaign": "alpha", "elements": "S", "regime": "diffusive"},
     lambda s: s.campaign == "alpha" and "S" in s.elements and "diffusive" in s.regimes),
]  # fmt: skip


def _expected(pred, sort="sigma_300k_ms_cm", descending=True):
    chosen = [s for s, _ in all_materials() if pred(s)]
    with_value = [s for s in chosen if field_value(s, sort) is not None]
    without = [s for s in chosen if field_value(s, sort) is None]
    with_value.sort(key=lambda s: (s.campaign, s.material))
    with_value.sort(key=lambda s: field_value(s, sort), reverse=descending)  # stable
    without.sort(key=lambda s: (s.campaign, s.material))
    return keys(with_value + without)


@pytest.mark.parametrize(("kwargs", "pred"), TRUTH_CASES)
def test_filters_match_python_truth(mdb, kwargs, pred):
    got = query_summaries(mdb, **kwargs)
    assert all(isinstance(s, MaterialSummary) for s in got)
    assert keys(got) == _expected(pred)


def test_every_filter_case_is_discriminating():
    """Each truth case selects a proper, non-empty subset (or all, for {})."""
    n = len(SPECS)
    for kwargs, pred in TRUTH_CASES:
        k = len(_expected(pred))
        assert (k == n) if not kwargs else (0 < k < n), kwargs


@pytest.mark.parametrize("sort", ["sigma_300k_ms_cm", "ea_ev", "material", "pinned_ea_ev"])
@pytest.mark.parametrize("descending", [True, False])
def test_sorting_nulls_last_and_limit(mdb, sort, descending):
    got = query_summaries(mdb, sort=sort, descending=descending)
    assert keys(got) == _expected(lambda s: True, sort, descending)
    top = query_summaries(mdb, sort=sort, descending=descending, limit=2)
    assert keys(top) == keys(got)[:2]
    # a limit reaching into the null tail
    n_values = sum(field_value(s, sort) is not None for s in got)
    tail = query_summaries(mdb, sort=sort, descending=descending, limit=n_values + 1)
    assert keys(tail) == keys(got)[: n_values + 1]


def test_sort_aliases(mdb):
    assert keys(query_summaries(mdb, sort="ea", descending=False)) == _expected(
        lambda s: True, "ea_ev", False
    )


def test_query_accepts_collection_and_empty_results(mdb):
    coll = mdb[SUMMARY_COLLECTION]
    assert keys(query_summaries(coll, campaign="beta")) == _expected(lambda s: s.campaign == "beta")
    assert query_summaries(mdb, campaign="nope") == []
    with pytest.raises(TypeError, match="expected a ResolvedDatabase"):
        query_summaries({"not": "a db"})


# ----------------------------------------------------------------------------- schema


def test_schema_version_check(mdb):
    doc = find_summary_documents(mdb, {"material": "LGPS"})[0]
    assert parse_summary({**doc, "schema_version": "1.7"}).material == "LGPS"  # newer minor
    for version, hint in (("2.0", "upgrade ionflow"), ("0.9", "re-run its summary job")):
        with pytest.raises(SchemaVersionError, match=rf"schema_version {version}.*{hint}"):
            parse_summary({**doc, "schema_version": version})
    with pytest.raises(SchemaVersionError, match="no readable schema_version"):
        parse_summary({k: v for k, v in doc.items() if k != "schema_version"})
    with pytest.raises(SchemaVersionError, match="does not match summary schema.*free"):
        parse_summary({**doc, "free": {"variant": "free"}})
    # a stored document of a future major version makes the query fail clearly
    mdb[SUMMARY_COLLECTION].update_one({"material": "LGPS"}, {"$set": {"schema_version": "2.1"}})
    with pytest.raises(SchemaVersionError, match="alpha/LGPS has schema_version 2.1"):
        query_summaries(mdb)
    beta = _expected(lambda s: s.campaign == "beta")
    assert keys(query_summaries(mdb, campaign="beta")) == beta  # unaffected when not matched


def _as_schema_1_0(doc: dict) -> dict:
    """A summary document as ionflow 1.0 stored it: ``haven_ratio_err`` on the runs, none
    of the 1.1 fields (σ basis, Ea resolution, error split, charge bounds, ratio intervals),
    and σ(300 K) in the flat fields whatever Ea's resolution."""
    old = {k: v for k, v in doc.items() if k not in ("sigma_basis", "ea_resolved")}
    old["schema_version"] = "1.0"
    new_run_fields = (
        "diffusivity_stat_err_cm2_s", "diffusivity_sys_err_cm2_s", "window_z",
        "charge_diffusivity_cm2_s", "charge_diffusivity_err_cm2_s",
        "charge_diffusivity_upper_cm2_s", "charge_conductivity_ms_cm",
        "charge_conductivity_err_ms_cm", "haven_ratio_interval",
    )  # fmt: skip
    for key in ("free", "pinned"):
        v = old.get(key)
        if v is None:
            continue
        v = old[key] = {k: x for k, x in v.items() if k != "ea_resolved"}
        v["runs"] = [
            {**{k: x for k, x in r.items() if k not in new_run_fields}, "haven_ratio_err": 0.1}
            for r in v["runs"]
        ]
    old["comparisons"] = [
        {k: x for k, x in c.items() if k not in ("ratio_interval", "ratio_interval95")}
        for c in old["comparisons"]
    ]
    iv = (old["free"] or {}).get("sigma_300k_interval_ms_cm")
    old["sigma_300k_ms_cm"] = old["free"].get("sigma_300k_ms_cm")
    old["sigma_300k_low_ms_cm"], old["sigma_300k_high_ms_cm"] = iv or (None, None)
    return old


def test_schema_1_0_documents_still_parse():
    """Stored summaries of schema 1.0 validate (``haven_ratio_err`` ignored, new fields
    None) and are displayed by the 1.1 rules (σ(300 K) only with a resolved Ea)."""
    from ionflow.results import sigma_300k_quoted, summary_row
    from ionflow.summary import SCHEMA_VERSION

    assert SCHEMA_VERSION == "1.4"
    by = {(s.campaign, s.material): s for s, _ in all_materials()}
    db = mongomock.MongoClient()["ionflow"]
    for key in (("alpha", "LPS-beta"), ("beta", "Li3InCl6")):
        db[SUMMARY_COLLECTION].insert_one(_as_schema_1_0(by[key].model_dump(mode="json")))
    raw = db[SUMMARY_COLLECTION].find_one({"material": "LPS-beta"})
    assert raw["free"]["runs"][0]["haven_ratio_err"] == 0.1
    assert "haven_ratio_interval" not in raw["free"]["runs"][0]
    got = {s.material: s for s in query_summaries(db)}
    lps = got["LPS-beta"]
    assert lps.schema_version == "1.0"
    assert lps.sigma_basis == "tracer: Nernst–Einstein from D* (H_R = 1 assumed)"
    assert lps.ea_resolved is None and lps.free.ea_resolved is None
    for r in lps.free.runs:
        assert not hasattr(r, "haven_ratio_err")
        assert r.haven_ratio_interval is None and r.diffusivity_stat_err_cm2_s is None
        assert r.charge_diffusivity_upper_cm2_s is None
    assert all(c.ratio_interval is None and c.ratio is not None for c in lps.comparisons)
    # Ea resolution computed from Ea and its error where the document does not say
    assert sigma_300k_quoted(lps) is (lps.ea_ev > 2 * lps.ea_err_ev) is True
    flat = got["Li3InCl6"]
    assert flat.sigma_300k_ms_cm is not None  # 1.0 put the unresolved extrapolation here …
    assert not sigma_300k_quoted(flat)  # … 1.1 does not show it
    row = summary_row(flat)
    assert row["sigma_300k_ms_cm"] is None and row["sigma_300k_note"] == "Ea not resolved"


def test_subdiffusive_and_unresolved_sigma_queries(mdb):
    """--regime subdiffusive finds the material; an Ea not resolved keeps σ(300 K) out of
    bounds and sorts (server and columnar paths: the ``mdb`` fixture)."""
    sub = [s for s, _ in all_materials() if "subdiffusive" in [r.regime for r in s.free.runs]]
    assert keys(sub) == [("alpha", "Li3YCl6")]
    assert keys(query_summaries(mdb, regime="subdiffusive")) == keys(sub)
    assert keys(query_summaries(mdb, regime="Subdiffusive", campaign="beta")) == []
    unresolved = ("beta", "Li3InCl6")
    by = {(m.campaign, m.material): m for m, _ in all_materials()}
    extrapolated = by[unresolved].free.sigma_300k_ms_cm
    assert extrapolated is not None  # an extrapolation exists (flagged) …
    window = {"sigma_min_ms_cm": extrapolated / 2, "sigma_max_ms_cm": extrapolated * 2}
    assert unresolved not in keys(query_summaries(mdb, **window))  # … but no bound sees it
    assert unresolved not in keys(query_summaries(mdb, sigma_min_ms_cm=0.0))
    for descending in (True, False):
        ordered = keys(query_summaries(mdb, sort="sigma", descending=descending))
        tail = [k for k in ordered if quoted_sigma(by[k]) is None]
        assert unresolved in tail
        assert ordered[-len(tail) :] == tail  # the unquoted come last, either direction


# ----------------------------------------------------------------------------- indexes


def test_ensure_indexes_idempotent_and_unique(mdb):
    names = ensure_indexes(mdb)
    assert names == ensure_indexes(mdb)
    info = mdb[SUMMARY_COLLECTION].index_information()
    assert info["campaign_material_unique"]["unique"]
    for fld in ("formula", "chemsys", "elements", "sigma_300k_ms_cm", "ea_ev", "pinned_verdict"):
        assert any(k[0][0] == fld for k in (v["key"] for v in info.values())), fld


def test_ensure_indexes_reports_duplicates():
    db = mongomock.MongoClient()["ionflow"]
    doc = all_materials()[0][0].model_dump(mode="json")
    db[SUMMARY_COLLECTION].insert_many([dict(doc), dict(doc)])
    with pytest.raises(UserInputError, match="alpha/LPS-beta ×2"):
        ensure_indexes(db)


# ----------------------------------------------------------------------------- export


def test_csv_and_json_round_trip(mdb):
    got = query_summaries(mdb, sort="material", descending=False)
    buf = io.StringIO()
    assert summaries_to_csv(got, buf) == len(SPECS)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    by = {(s.campaign, s.material): s for s in got}
    for row in rows:
        s = by[(row["campaign"], row["material"])]
        assert row["formula"] == s.formula
        assert row["elements"].split(";") == s.elements
        assert row["regimes"].split(";") == s.regimes
        fit = resolved_fit(s)
        if s.free.arrhenius is None:
            assert row["sigma_300k_ms_cm"] == "" and row["ea_ev"] == ""
            assert row["ea_resolved"] == "" and row["sigma_300k_note"] == ""
        elif fit is None:  # Ea not resolved: no σ(300 K) nor its intervals, and why
            assert float(row["ea_ev"]) == s.free.arrhenius.ea_ev
            assert row["ea_resolved"] == "False" and row["sigma_300k_note"] == "Ea not resolved"
            for col in CSV_COLUMNS:
                if col.startswith("sigma_300k_") and col != "sigma_300k_note":
                    assert row[col] == "", col
        else:
            assert float(row["sigma_300k_ms_cm"]) == fit.sigma_at_t_ms_cm  # full precision
            assert float(row["sigma_300k_low95_ms_cm"]) < s.sigma_300k_low_ms_cm
            assert row["ea_resolved"] == "True" and row["sigma_300k_note"] == ""
        assert row["sigma_basis"] == "tracer: Nernst–Einstein from D* (H_R = 1 assumed)"
        assert row["pinned_verdict_category"] == verdict_category(s.pinned_verdict)
        assert int(row["n_diffusive_runs"]) == s.regimes.count("diffusive")
        n_sub = sum(r.regime == "subdiffusive" for r in s.free.runs)
        assert int(row["n_subdiffusive_runs"]) == n_sub
    buf = io.StringIO()
    assert summaries_to_json(got, buf) == len(SPECS)
    back = [MaterialSummary.model_validate(d) for d in json.loads(buf.getvalue())]
    assert back == got


def test_fetch_run_analyses_from_outputs(mdb):
    summary = query_summaries(mdb, campaign="alpha", formula="Li3PS4")[0]
    # a stale analysis of an older submission (not referenced by the summary) is ignored
    stale = dict(all_materials()[0][1][0], uuid="stale", completed_at="2027-01-01")
    mdb["outputs"].insert_one(stale)
    runs = fetch_run_analyses(mdb, summary)
    assert [(r.variant, r.temperature_k) for r in runs] == [
        ("free", 600.0), ("free", 800.0), ("free", 1000.0),
        ("pinned", 600.0), ("pinned", 800.0), ("pinned", 1000.0),
    ]  # fmt: skip
    by_t = {r.temperature_k: r for r in runs if r.variant == "free"}
    for run in summary.free.runs:
        a = by_t[run.temperature_k].analysis
        assert a.diffusivity_cm2_s == run.diffusivity_cm2_s
        assert by_t[run.temperature_k].uuid == run.analysis_uuid
        assert len(a.msd.time_ps) == len(a.msd.msd_a2) > 50
    assert "stale" not in {r.uuid for r in runs}


# ----------------------------------------------------------------------------- CLI


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from ionflow.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def patched_db(monkeypatch, mdb):
    """CLI commands see the mongomock database instead of resolving a real one."""
    import ionflow.results as results

    monkeypatch.setattr(results, "open_database", lambda *a, **k: mdb)
    no_client = SimpleNamespace(close=lambda: None)
    monkeypatch.setattr(
        results, "open_query_database", lambda *a, **k: (mdb, "mongomock", no_client)
    )
    return mdb


def test_cli_query_formats(patched_db, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    code, out, err = run_cli(["query", "--campaign", "alpha", "--format", "json"], capsys)
    assert code == 0, err
    assert [d["material"] for d in json.loads(out)] == [
        m for _, m in _expected(lambda s: s.campaign == "alpha")
    ]
    code, out, _ = run_cli(
        ["query", "--elements", "Li,S", "--sort", "ea_ev", "--asc", "--format", "csv"], capsys
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["campaign"], r["material"]) for r in rows] == _expected(
        lambda s: {"Li", "S"} <= set(s.elements), "ea_ev", False
    )
    code, out, _ = run_cli(["query", "--sigma-min-ms-cm", "0", "--limit", "2"], capsys)
    assert code == 0
    top = _expected(lambda s: quoted_sigma(s) is not None)[:2]
    for _, material in top:
        assert material in out
    assert "Ea (eV)" in out and "σ(300 K)" in out and "2 material(s)" in out


def test_cli_query_table_subdiffusive_and_unresolved(patched_db, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run_cli(["query", "--regime", "subdiffusive"], capsys)
    assert code == 0, err
    sub = next(s for s, _ in all_materials() if s.material == "Li3YCl6")
    reason = sub.free.runs[0].regime_reason
    assert "1 material(s)" in out and "Li3YCl6" in out and "subdiffusive 600 K" in out
    assert f"• Li3YCl6 (alpha) free 600 K subdiffusive: {reason}" in " ".join(out.split())
    assert "σ quoted: tracer: Nernst–Einstein from D* (H_R = 1 assumed)" in out
    code, out, err = run_cli(["query", "--formula", "Li3InCl6"], capsys)
    assert code == 0, err
    assert "— (Ea not resolved)" in out
    nested = next(s for s, _ in all_materials() if s.material == "Li3InCl6").free
    assert format_number(nested.sigma_300k_ms_cm) not in out


def test_cli_query_errors(patched_db, capsys):
    code, _, err = run_cli(["query", "--sort", "speed"], capsys)
    assert code == 2 and "unknown sort field 'speed'" in err and "sigma_300k_ms_cm" in err
    code, _, err = run_cli(["query", "--format", "xml"], capsys)
    assert code == 2 and "--format" in err
    code, _, err = run_cli(["query", "--regime", "frozen"], capsys)
    assert code == 2 and "regime must be one of" in err
    code, out, err = run_cli(["query", "--campaign", "gamma"], capsys)
    assert code == 0 and "no summaries of campaign 'gamma'" in err and "alpha, beta" in err


def test_cli_query_without_database(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["query"], capsys)
    assert code == 2
    assert f"no ionflow database in {tmp_path / 'ionflow-data'}" in err
    assert not (tmp_path / "ionflow-data").exists()  # nothing started or created


def test_bad_uri_is_a_user_error(capsys):
    from ionflow.results import open_query_database

    with pytest.raises(UserInputError, match="starting with 'mongodb://'"):
        open_query_database(uri="postgres://user:pw@host/db")
    code, _, err = run_cli(["query", "--uri", "http://x"], capsys)
    assert code == 2 and "mongodb://" in err and "http://x" not in err


def test_cli_export(patched_db, capsys, tmp_path):
    out_file = tmp_path / "x" / "summaries.csv"
    code, out, err = run_cli(
        ["export", "--format", "csv", "--campaign", "beta", "--out", str(out_file)], capsys
    )
    assert code == 0, err
    rows = list(csv.DictReader(out_file.open()))
    assert sorted(r["material"] for r in rows) == sorted(
        m for _, m in _expected(lambda s: s.campaign == "beta")
    )
    code, out, _ = run_cli(["export", "--format", "json"], capsys)
    assert code == 0 and len(json.loads(out)) == len(SPECS)


# ----------------------------------------------------------------------------- real server


@pytest.fixture
def server(tmp_path):
    """A real SecantusDB server on a fresh data directory, stopped at teardown."""
    from ionflow.store import LocalServer

    srv = LocalServer.ensure(tmp_path / "ionflow-data")
    yield srv
    for _ in range(3):  # the test restarts it once
        running = LocalServer.running(srv.data_dir)
        if running is None:
            break
        running.stop(timeout_s=10)


@pytest.mark.integration
def test_real_server_queries_cli_and_trajectory_export(server, tmp_path, capsys):
    import pymongo

    from ionflow.store import DatabaseSettings, resolve_database
    from ionflow.trajectories import put_npz, write_npz

    db = resolve_database(DatabaseSettings(data_dir=server.data_dir))
    assert db.local_server == server
    client = pymongo.MongoClient(server.uri)
    try:
        pdb = client[db.database]
        insert_all(pdb)
        # analyses via a caller's Database: its client must stay open (regression)
        lps = query_summaries(pdb, campaign="alpha", formula="Li3PS4")[0]
        for _ in range(2):
            assert len(fetch_run_analyses(pdb, lps)) == 6
        names = ensure_indexes(db)
        assert "campaign_material_unique" in names
        # the server uses the indexes
        plan = pdb[SUMMARY_COLLECTION].find({"chemsys": "Li-P-S"}).explain()
        assert "IXSCAN" in json.dumps(plan["queryPlanner"]["winningPlan"])
        for kwargs, pred in TRUTH_CASES:
            assert keys(query_summaries(db, **kwargs)) == _expected(pred), kwargs
        for sort in ("sigma_300k_ms_cm", "ea_ev", "material"):
            for desc in (True, False):
                want = _expected(lambda s: True, sort, desc)
                assert keys(query_summaries(db, sort=sort, descending=desc)) == want
                n_values = sum(field_value(s, sort) is not None for s, _ in all_materials())
                for limit in (2, n_values + 1):
                    got = query_summaries(db, sort=sort, descending=desc, limit=limit)
                    assert keys(got) == want[:limit], (sort, desc, limit)
        # one MD run's trajectory in the GridFS bucket, as the MD job stores it
        traj = hopping_trajectory(
            n_frames=120, n_mobile=6, n_framework=10, seed=7, dtype=np.float32
        )
        fixed = np.zeros(16, bool)
        fixed[10:] = True
        npz = write_npz(
            tmp_path / "production.npz", traj.positions, traj.lattice, traj.species, 20.0, 800.0,
            fixed,
        )  # fmt: skip
        store = db.jobstore()
        store.connect()
        ref = put_npz(store, npz, {"campaign": "alpha", "material": "LGPS"})
        store.close()
        assert ref.gridfs_id is not None
        npz.unlink()  # only the database copy remains
        pdb["outputs"].insert_one(
            {
                "uuid": "md-1",
                "index": 1,
                "name": "md LGPS free 800K",
                "metadata": {
                    "ionflow_campaign": "alpha",
                    "ionflow_material": "LGPS",
                    "ionflow_variant": "free",
                    "ionflow_temperature_k": 800.0,
                },
                "output": {"trajectory": ref.model_dump(mode="json"), "variant": "free"},
            }
        )
    finally:
        client.close()

    # the CLI against the same data directory
    data = ["--data-dir", str(server.data_dir)]
    code, out, err = run_cli(["query", *data, "--chemsys", "P-S-Li", "--format", "json"], capsys)
    assert code == 0, err
    assert [(d["campaign"], d["material"]) for d in json.loads(out)] == _expected(
        lambda s: s.chemsys == "Li-P-S"
    )
    xyz = tmp_path / "run.extxyz"
    argv = ["export-trajectory", *data, "--campaign", "alpha", "--material", "LGPS"]
    code, out, err = run_cli([*argv, "--temperature-k", "800", "--out", str(xyz)], capsys)
    assert code == 0, err
    assert "120 frames" in out
    from ionflow.analysis.readers import open_trajectory

    src = open_trajectory(str(xyz))
    assert src.info.n_frames == 120
    assert src.info.frame_interval_fs == pytest.approx(20.0)
    assert src.info.temperature_k == pytest.approx(800.0)
    assert src.info.species == traj.species
    np.testing.assert_array_equal(src.info.fixed_atoms, fixed)
    got = np.concatenate([p for p, _ in src.iter_chunks(chunk_frames=50)])
    np.testing.assert_allclose(got, traj.positions, atol=1e-5)
    # a run that does not exist: the message lists what is there
    code, _, err = run_cli([*argv, "--temperature-k", "900", "--out", str(xyz)], capsys)
    assert code == 2 and "runs stored for this material: free 800 K" in err
    # a stopped server is started again (the database exists), as `ionflow run` would
    server.stop(timeout_s=10)
    from ionflow.results import open_query_database

    pdb, where, client = open_query_database(server.data_dir)
    try:
        assert "local SecantusDB" in where and pdb[SUMMARY_COLLECTION].count_documents({}) == len(
            SPECS
        )
    finally:
        client.close()
    code, out, err = run_cli(["query", *data, "--format", "csv", "--regime", "caged"], capsys)
    assert code == 0, err
    assert len(list(csv.DictReader(io.StringIO(out)))) == len(
        _expected(lambda s: "caged" in s.regimes)
    )


def test_only_the_current_plans_summary_is_stored():
    """After a submission extends a material, the old plan's summary job (run late) does not
    overwrite the new one; going back to the old plan restores its summary from outputs."""
    from ionflow.results import set_current_summaries, store_summary

    db = mongomock.MongoClient().db
    coll = db.summaries

    def doc(key, temps):
        return {
            "campaign": "c",
            "material": "m",
            "temperatures_k": temps,
            "provenance": {"summary_key": key},
        }

    # no plan recorded (jobs run by other tooling): the last write wins
    assert store_summary(coll, doc("A", [600, 900]))
    assert set_current_summaries(db, "c", {"m": "B"}) == []  # A's output is not in outputs
    assert store_summary(coll, doc("B", [600, 900, 1200]))  # the new plan's job
    assert not store_summary(coll, doc("A", [600, 900]))  # the old plan's job, run late
    assert coll.find_one({})["temperatures_k"] == [600, 900, 1200]
    # back to the first plan, whose summary job had run: restored from its output
    db.outputs.insert_one({"uuid": "u", "index": 1, "metadata": {"ionflow_key": "A"},
                           "output": doc("A", [600, 900])})  # fmt: skip
    assert set_current_summaries(db, "c", {"m": "A"}) == ["m"]
    assert coll.find_one({})["temperatures_k"] == [600, 900]
    assert coll.count_documents({}) == 1
    assert set_current_summaries(db, "c", {"m": "A"}) == []  # already current
    # summaries written by older ionflow (no key) are replaced
    coll.replace_one({"material": "m"}, {"campaign": "c", "material": "m", "provenance": {}})
    assert store_summary(coll, doc("A", [700]))


@pytest.mark.parametrize("sort", ["sigma_300k_ms_cm", "ea_ev", "material", "pinned_ea_ev"])
def test_columnar_path_answers_every_query_case(monkeypatch, sort):
    """The columnar copy really answers (no silent fallback to the server) each case."""
    from ionflow import query_index
    from ionflow.results import build_filter

    monkeypatch.setattr(query_index, "MIN_DOCUMENTS", 0)
    db = mongomock.MongoClient()["ionflow"]
    insert_all(db)
    coll = db["summaries"]
    for kwargs, pred in TRUTH_CASES:
        for descending in (True, False):
            got = query_index.find(
                coll,
                build_filter(**kwargs),
                key=sort,
                descending=descending,
                nulls_last=sort != "material",
                limit=None,
            )
            assert got is not None, kwargs
            assert [(d["campaign"], d["material"]) for d in got] == _expected(
                pred, sort, descending
            ), (kwargs, sort, descending)
    # an operator the columns do not evaluate is left to the server
    assert (
        query_index.find(
            coll, {"notes": "x"}, key=sort, descending=True, nulls_last=True, limit=None
        )
        is None
    )


def test_columnar_copy_follows_writes(monkeypatch):
    from ionflow import query_index
    from ionflow.results import store_summary

    monkeypatch.setattr(query_index, "MIN_DOCUMENTS", 0)
    db = mongomock.MongoClient()["ionflow"]
    insert_all(db)
    first = query_summaries(db, sort="sigma_300k_ms_cm", limit=1)[0]
    # a summary rewritten through store_summary (the summary job's path) with a higher σ
    doc = db["summaries"].find_one({"campaign": "alpha"}, {"_id": 0})
    doc["sigma_300k_ms_cm"] = first.sigma_300k_ms_cm * 10
    store_summary(db["summaries"], doc)
    top = query_summaries(db, sort="sigma_300k_ms_cm", limit=1)[0]
    assert (top.campaign, top.material) == (doc["campaign"], doc["material"])
    # a summary written directly: stale until touch() (the documented contract) …
    extra = dict(doc, material="zz-extra", sigma_300k_ms_cm=doc["sigma_300k_ms_cm"] * 10)
    db["summaries"].insert_one(extra)
    query_index.touch(db)
    top = query_summaries(db, sort="sigma_300k_ms_cm", limit=1)[0]
    assert top.material == "zz-extra"
    # … but a deleted one is noticed (the page comes back short) and the server answers
    db["summaries"].delete_one({"material": "zz-extra"})
    top = query_summaries(db, sort="sigma_300k_ms_cm", limit=1)[0]
    assert (top.campaign, top.material) == (doc["campaign"], doc["material"])
    n = db["summaries"].count_documents({})
    assert len(query_summaries(db)) == n


def test_columns_cover_every_sort_field_and_indexed_field():
    """Every sortable and every indexed summary field is a column (else the server answers)."""
    from ionflow import query_index
    from ionflow.results import INDEXES, SORT_FIELDS

    columns = {
        *query_index.STRING_FIELDS,
        *query_index.NUMBER_FIELDS,
        *query_index.BOOL_FIELDS,
        *query_index.LIST_FIELDS,
    }
    assert set(SORT_FIELDS) <= columns
    assert {k for keys, _ in INDEXES for k, _ in keys} <= columns
    # the one declaration names real summary fields of the declared kind
    kinds = {"string": str, "number": float, "list": list, "bool": bool}
    for f in query_index.QUERY_FIELDS:
        assert f.name in MaterialSummary.model_fields, f.name
        hint = str(MaterialSummary.model_fields[f.name].annotation)
        assert kinds[f.kind].__name__ in hint or (f.kind == "number" and "int" in hint), (f, hint)


def test_columnar_null_semantics_match_the_server():
    """Null/missing strings and numbers behave as in MongoDB: matched by == None and by
    $ne, never by ranges or regular expressions."""
    from ionflow import query_index

    rows = [
        {"campaign": "c", "material": "a", "pinned_verdict": "pinning lowers x", "ea_ev": 0.2},
        {"campaign": "c", "material": "b", "pinned_verdict": None, "ea_ev": None},
        {"campaign": "c", "material": "d"},  # fields missing
    ]
    server = mongomock.MongoClient().db.summaries
    server.insert_many([dict(r) for r in rows])
    cols = query_index.Columns.from_documents(list(server.find({})))
    filters = [
        {"pinned_verdict": None},
        {"pinned_verdict": {"$ne": "pinning lowers x"}},
        {"pinned_verdict": {"$regex": "lowers"}},
        {"pinned_verdict": {"$gte": "p", "$lt": "q"}},
        {"ea_ev": None},
        {"ea_ev": {"$ne": None}},
        {"ea_ev": {"$lte": 1.0}},
        {"ea_ev": {"$ne": 0.2}},
    ]
    for filt in filters:
        want = sorted(d["material"] for d in server.find(filt))
        got = sorted(rows[i]["material"] for i in np.nonzero(cols.mask(filt))[0])
        assert got == want, filt


def test_md_run_of_the_current_summary_is_exported():
    """Two MD runs of one (material, variant, T) — the MD settings changed between
    submissions: the one analysed for the current summary is chosen, not the newest."""
    from ionflow.results import find_md_output

    db = mongomock.MongoClient().db
    meta = {
        "ionflow_campaign": "c",
        "ionflow_material": "m",
        "ionflow_variant": "free",
        "ionflow_temperature_k": 800.0,
    }
    for job_id, sha, done in (("md-a", "s1", "2026-01-01"), ("md-b", "s2", "2026-02-01")):
        db.outputs.insert_one(
            {"uuid": job_id, "index": 1, "metadata": meta, "completed_at": done,
             "output": {"trajectory": {"sha256": sha}, "tag": job_id}}
        )  # fmt: skip
    kw = {"campaign": "c", "material": "m", "variant": "free", "temperature_k": 800.0}
    assert find_md_output(db, **kw)["tag"] == "md-b"  # no summary: the newest
    db.outputs.insert_one(
        {"uuid": "an-a", "index": 1, "output": {"trajectory_sha256": "s1", "analysis": {}}}
    )
    db.summaries.insert_one(
        {"campaign": "c", "material": "m",
         "free": {"runs": [{"temperature_k": 800.0, "analysis_uuid": "an-a"}]}}
    )  # fmt: skip
    assert find_md_output(db, **kw)["tag"] == "md-a"
