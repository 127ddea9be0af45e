# ruff: noqa: F811
"""``md.target`` and ``temperatures_k: {auto: …}`` in workflows.yaml, and the reuse keys of
targeted campaigns (ionflow.spec, ionflow.plan)."""

from __future__ import annotations

import pytest

from ionflow.plan import stage_keys
from ionflow.spec import load_campaign
from tests.test_spec import _has, _minimal, _problems, _run_main, _structure_files, camp  # noqa: F401 (fixtures)

TARGET = (
    "{diffusivity_rel_err: 0.15, extend_ps: 2, max_production_ps: 20, sigma_at_t_factor: 3, "
    "max_temperatures: 6, budget_core_hours: 500}"
)


def _md(target: str | None = None, temps: str = "[600, 800]") -> str:
    t = f", target: {target}" if target else ""
    return f"{{temperatures_k: {temps}, production_ps: 2, equilibration_ps: 0.1{t}}}"


def test_target_and_auto_ladder_load(camp):
    spec, mats = load_campaign(
        camp(_minimal(_md(TARGET, "{auto: {min: 500, max: 1100, count: 4}}")))
    )
    md = mats[0].md
    assert md.temperatures_k == [500.0, 700.0, 900.0, 1100.0]
    tg = md.adaptive_target()
    assert (tg.extend_ps, tg.max_production_ps, tg.sigma_at_t_factor) == (2, 20, 3)
    assert tg.max_temperature_k == 1400 and tg.first_chunk_ps == 2
    # extend_ps defaults to production_ps
    spec, mats = load_campaign(camp(_minimal(_md("{diffusivity_rel_err: 0.2}"))))
    assert mats[0].md.adaptive_target().extend_ps == 2


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("{extend_ps: -1}", ("md.target.extend_ps", "must be > 0")),
        ("{extend_pss: 1}", ("md.target", "extend_pss")),
        ("{max_production_ps: 1}", ("md.target", "max_production_ps: must be ≥ production_ps")),
        ("{sigma_at_t_factor: 1}", ("md.target", "sigma_at_t_factor: must be > 1")),
        ("{extend_ps: 2.001}", ("md.target", "extend_ps: must be a whole number of saved frames")),
        ("{max_temperatures: 0}", ("md.target.max_temperatures", "must be > 0")),
        ("{max_temperature_k: 700}", ("md.target", "max_temperature_k: must be ≥ the highest")),
        ("{diffusivity_rel_err: '0.1'}", ("md.target.diffusivity_rel_err",)),
    ],
)
def test_bad_target_one_line_naming_the_key(camp, target, fragments):
    lines = _problems(camp(_minimal(_md(target))))
    assert len(lines) == 1
    _has(lines, *fragments)


@pytest.mark.parametrize(
    ("temps", "fragment"),
    [
        ("{auto: {min: 500, max: 1100}}", "auto: needs exactly min, max and count (missing count)"),
        ("{auto: {min: 500, max: 400, count: 3}}", "auto.max: must be > auto.min (500 K)"),
        ("{auto: {min: -5, max: 400, count: 3}}", "auto.min: must be a temperature > 0 K"),
        ("{auto: {min: 500, max: 900, count: 0}}", "auto.count: must be a whole number ≥ 1"),
        ("{ladder: 3}", "give a list of temperatures or {auto: {min, max, count}}"),
    ],
)
def test_bad_auto_ladder(camp, temps, fragment):
    lines = _problems(camp(_minimal(_md(None, temps))))
    assert len(lines) == 1
    _has(lines, "md.temperatures_k", fragment)


def test_cli_bad_target_exit_2(camp, capsys):
    assert _run_main(["validate", str(camp(_minimal(_md("{extend_ps: -1}"))))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "md.target.extend_ps: must be > 0" in err


def test_per_material_target_override(camp):
    mats = (
        "  - {name: LiCl, structure: structures/LiCl.cif, "
        "md: {target: {diffusivity_rel_err: 0.05}}}\n"
    )
    spec, resolved = load_campaign(camp(_minimal(_md(TARGET), mats=mats)))
    tg = resolved[0].md.adaptive_target()
    assert tg.diffusivity_rel_err == 0.05
    assert tg.sigma_at_t_factor is None  # the material's target replaces the campaign's whole


def test_keys_without_target_unchanged_and_target_keys_from_arrhenius_on(camp):
    """MD and analysis keys ignore the target (a tighter target extends the same runs); the
    Arrhenius and summary keys change with it (its controller decides anew)."""
    spec, (plain,) = load_campaign(camp(_minimal(_md()), "a.yaml"))
    base = stage_keys(spec, plain)
    spec_t, (tgt,) = load_campaign(camp(_minimal(_md(TARGET)), "b.yaml"))
    keyed = stage_keys(spec_t, tgt)
    spec_u, (tighter,) = load_campaign(
        camp(_minimal(_md(TARGET.replace("0.15", "0.05"))), "c.yaml")
    )
    tight = stage_keys(spec_u, tighter)
    for stage in base:
        same = stage[0] in ("relax", "supercell", "md", "analysis")
        assert (base[stage] == keyed[stage]) is same, stage
        assert (keyed[stage] == tight[stage]) is same, stage


# ------------------------------------------------------------------ query and summary


def test_query_filters_target_met_and_core_hours():
    """Summaries carrying compute and target fields are found by them (database path and
    the columnar index path agree), older ones match neither."""
    import mongomock

    from ionflow.errors import UserInputError
    from ionflow.names import SUMMARY_COLLECTION
    from ionflow.results import build_filter, query_summaries
    from tests.test_results import all_materials

    db = mongomock.MongoClient()["ionflow"]
    facts = {}
    for i, (s, _) in enumerate(all_materials()):
        doc = s.model_dump(mode="json")
        if i % 3 == 0:  # an older summary: no target, no accounting
            doc.update(target_met=None, core_hours=None)
        else:
            doc.update(target_met=i % 2 == 0, core_hours=10.0 * i)
        facts[(doc["campaign"], doc["material"])] = (doc["target_met"], doc["core_hours"])
        db[SUMMARY_COLLECTION].insert_one(doc)

    def names(**kw):
        return {(s.campaign, s.material) for s in query_summaries(db, **kw)}

    assert names(target_met=True) == {k for k, (m, _) in facts.items() if m is True}
    assert names(target_met=False) == {k for k, (m, _) in facts.items() if m is False}
    want = {k for k, (_, h) in facts.items() if h is not None and 15 <= h <= 45}
    assert want and names(core_hours_min=15, core_hours_max=45) == want
    with pytest.raises(UserInputError, match="core-hours bounds must be ≥ 0"):
        build_filter(core_hours_max=-1)


def test_summary_carries_decisions_and_compute():
    """build_summary: material core-hours = the variants' sums, decisions in order with the
    pinned control's prefixed, target_met from the free variant."""
    from ionflow.summary import RunSummary, VariantSummary, _compute_fields

    def run(t, ch):
        return RunSummary(
            temperature_k=t,
            variant="free",
            regime="diffusive",
            regime_reason="",
            n_eff_hops=1.0,
            duration_ps=1.0,
            fit_window_ps=(0.1, 0.5),
            core_hours=ch,
        )

    free = VariantSummary(
        variant="free",
        runs=[run(600, 1.5), run(800, 2.0)],
        decisions=["600 K extended 20 → 40 ps: err 0.30 → 0.20"],
        core_hours=3.5,
        target_met=True,
        budget_core_hours=10,
    )
    pinned = VariantSummary(variant="pinned", runs=[run(600, 0.25)], decisions=["x"])
    got = _compute_fields(free, pinned)
    assert got == {
        "decisions": ["600 K extended 20 → 40 ps: err 0.30 → 0.20", "pinned: x"],
        "core_hours": 3.75,
        "budget_core_hours": 10,
        "target_met": True,
    }
    plain = VariantSummary(variant="free", runs=[run(600, None)])
    assert _compute_fields(plain, None)["core_hours"] is None


def test_report_shows_spent_vs_budget_and_decisions():
    from ionflow.report import _extrapolation_lines
    from tests.test_results import all_materials

    s, _ = all_materials()[0]
    plain = _extrapolation_lines(s)
    assert not any("core-h" in line or line.startswith("decision:") for line in plain)
    s = s.model_copy(
        update={
            "core_hours": 123.4,
            "budget_core_hours": 500.0,
            "target_met": False,
            "decisions": ["added 1150 K: 2 of 3 runs insufficient", "done without meeting"],
        }
    )
    lines = _extrapolation_lines(s)
    assert lines[len(plain) :] == [
        "MD compute: 123 core-h spent of a 500 core-h budget (free + pinned); "
        "precision target not met",
        "decision: added 1150 K: 2 of 3 runs insufficient",
        "decision: done without meeting",
    ]
