"""The decision rules of precision-targeted campaigns (ionflow.adaptive), on constructed
analysis results whose right answer is known by hand."""

from __future__ import annotations

import math

import pytest

from ionflow.adaptive import (
    RunState,
    Target,
    decide_material,
    decide_run,
    extension_line,
    first_chunks_core_hours,
    sigma_factor,
    var_ln_d_at,
)

TARGET = Target(diffusivity_rel_err=0.15, extend_ps=20, max_production_ps=100, first_chunk_ps=20)


def run(t, regime="diffusive", p=20.0, rel=0.1, d=1e-6, ch=1.0):
    if regime != "diffusive":
        return RunState(t, regime, p, None, None, ch)
    return RunState(t, regime, p, d, d * rel, ch)


# ---------------------------------------------------------------- per run


def test_diffusive_within_target_is_done():
    dec = decide_run(run(1000, rel=0.12), TARGET)
    assert (dec.action, dec.target_met, dec.to_ps) == ("done", True, None)
    assert dec.line == "1000 K done at 20 ps: err 0.12 ≤ 0.15"


@pytest.mark.parametrize("regime", ["subdiffusive", "insufficient", "caged"])
def test_runs_without_d_extend_by_extend_ps(regime):
    dec = decide_run(run(600, regime, p=40), TARGET)
    assert (dec.action, dec.to_ps, dec.target_met) == ("extend", 60, False)
    assert dec.line == f"600 K to extend 40 → 60 ps: {regime}"


def test_diffusive_above_target_extends_capped_at_maximum():
    dec = decide_run(run(800, rel=0.3, p=90), TARGET)
    assert (dec.action, dec.to_ps) == ("extend", 100)
    assert "err 0.30" in dec.line


@pytest.mark.parametrize("regime", ["caged", "insufficient"])
def test_at_the_maximum_the_run_is_done_with_its_verdict(regime):
    dec = decide_run(run(500, regime, p=100), TARGET)
    assert (dec.action, dec.target_met) == ("done", False)
    assert dec.line == f"500 K stopped at the maximum 100 ps: {regime}"


def test_extension_line_reads_like_the_issue():
    before = run(1000, rel=0.22, p=20)
    after = run(1000, rel=0.13, p=40)
    assert extension_line(before, after) == "1000 K extended 20 → 40 ps: err 0.22 → 0.13"
    assert (
        extension_line(run(600, "insufficient"), run(600, rel=0.4, p=40))
        == "600 K extended 20 → 40 ps: insufficient → err 0.40"
    )


# ---------------------------------------------------------------- the gain model


def test_variance_model_matches_the_arrhenius_fit_covariance():
    """var ln D(300 K) of the model = the unscaled covariance of ionflow's own weighted fit
    (independent implementation), and the two-point closed form."""
    from ionflow.analysis.arrhenius import fit_arrhenius

    temps, rel = [600.0, 800.0, 1000.0], [0.1, 0.2, 0.15]
    d = [1e-7, 1e-6, 5e-6]
    fit = fit_arrhenius(temps, d, [x * r for x, r in zip(d, rel, strict=True)])
    v = [1.0, 1.0 / 300.0]
    c = fit.covariance
    expect = sum(v[i] * c[i][j] * v[j] for i in range(2) for j in range(2))
    if fit.covariance_scaled:  # remove the χ² scaling to compare the weights alone
        expect /= fit.chi2_reduced
    assert var_ln_d_at(temps, rel) == pytest.approx(expect, rel=1e-6)
    # two points: ln D(T*) = a·ln D1 + b·ln D2 with a = (x2 − x*)/(x2 − x1), b = 1 − a
    x1, x2, xs = 1 / 600, 1 / 1000, 1 / 300
    a = (x2 - xs) / (x2 - x1)
    assert var_ln_d_at([600, 1000], [0.1, 0.2]) == pytest.approx(
        a**2 * 0.01 + (1 - a) ** 2 * 0.04, rel=1e-9
    )
    assert var_ln_d_at([600, 600], [0.1, 0.1]) == math.inf


def test_sigma_factor():
    assert sigma_factor((1.0, 9.0)) == pytest.approx(3.0)
    assert sigma_factor(None) is None


# ---------------------------------------------------------------- per material


def test_too_few_temperatures_with_d_add_a_higher_one():
    runs = [run(600, "insufficient"), run(800, "insufficient"), run(1000, rel=0.1)]
    dec = decide_material(runs, Target(**{**TARGET.as_dict(), "max_temperature_k": 1300}))
    kinds = [(a.kind, a.temperature_k, a.to_ps) for a in dec.actions]
    # the hottest run without D extends, the colder one waits for it, and 1200 K is added
    # (step = the ladder's spacing, 200 K)
    assert kinds == [("extend", 800, 40), ("add", 1200, 20)]
    assert dec.actions[-1].line == "added 1200 K: 2 of 3 runs insufficient"
    assert dec.lines == ("600 K left at 20 ps (insufficient): 800 K has no D yet either",)
    assert not dec.done and not dec.target_met


def test_no_temperature_above_the_maximum_or_count():
    runs = [run(1000, "caged", p=100), run(1200, "caged", p=100)]
    t = Target(**{**TARGET.as_dict(), "max_temperature_k": 1250})
    dec = decide_material(runs, t)
    assert dec.done and not dec.target_met
    assert dec.lines[0] == "no temperature added: 1400 K would exceed the maximum 1250 K (0 give D)"
    t = Target(**{**TARGET.as_dict(), "max_temperatures": 2})
    dec = decide_material(runs, t)
    assert dec.lines[0].startswith("no temperature added: 2 of at most 2 already")


def test_target_met_drops_extensions_of_runs_without_d():
    runs = [run(500, "caged"), run(600, rel=0.1), run(800, rel=0.1), run(1000, rel=0.1)]
    t = Target(**{**TARGET.as_dict(), "sigma_at_t_factor": 3})
    dec = decide_material(runs, t, sigma_interval=(1.0, 4.0))  # ×/÷2
    assert dec.done and dec.target_met
    assert dec.lines == (
        "500 K left at 20 ps (caged): not needed, the material's target is met",
        "target met: σ(300 K) within ×/÷2 (target ×/÷3)",
    )


def test_wide_sigma_picks_the_best_gain_per_core_hour():
    """Two equally imprecise end points: extending the cheap one is chosen; make it
    expensive and the other end is chosen (gain per core-hour, not gain)."""
    t = Target(**{**TARGET.as_dict(), "sigma_at_t_factor": 1.5, "max_temperatures": 3})
    cheap_hot = [
        run(600, rel=0.15, ch=1.0),
        run(800, rel=0.05, ch=1.0),
        run(1000, rel=0.15, ch=0.1),
    ]
    dec = decide_material(cheap_hot, t, sigma_interval=(1.0, 16.0))
    assert [(a.kind, a.temperature_k, a.to_ps) for a in dec.actions] == [("extend", 1000, 40)]
    assert dec.lines == () and "σ(300 K) ×/÷4" in dec.actions[0].line
    costly_hot = [
        run(600, rel=0.15, ch=0.1),
        run(800, rel=0.05, ch=1.0),
        run(1000, rel=0.15, ch=10.0),
    ]
    dec = decide_material(costly_hot, t, sigma_interval=(1.0, 16.0))
    assert [(a.kind, a.temperature_k) for a in dec.actions] == [("extend", 600)]


def test_wide_sigma_may_add_a_temperature():
    """Runs at their maximum length: the only step left is a new temperature."""
    t = Target(**{**TARGET.as_dict(), "sigma_at_t_factor": 1.2, "max_temperature_k": 1000})
    runs = [run(800, rel=0.1, p=100), run(900, rel=0.1, p=100), run(1000, rel=0.1, p=100)]
    dec = decide_material(runs, t, sigma_interval=(1.0, 9.0))
    (act,) = dec.actions
    # candidates ≥ 100 K from 800/900/1000 and ≤ 1000 K: only below the ladder (≥ 600 K)
    assert act.kind == "add" and act.to_ps == 20
    assert 600 <= act.temperature_k <= 700
    assert act.line.startswith(f"added {act.temperature_k:g} K: σ(300 K) ×/÷3")


def test_budget_stops_the_round():
    runs = [run(600, "insufficient", ch=30), run(800, rel=0.3, ch=30), run(1000, rel=0.1, ch=30)]
    t = Target(**{**TARGET.as_dict(), "budget_core_hours": 125})
    dec = decide_material(runs, t)
    # spent 90; each 20-ps extension costs ~30 (1.5 core-h/ps measured): one fits
    assert [(a.kind, a.temperature_k) for a in dec.actions] == [("extend", 600)]
    assert any(line.startswith("stop: budget 125 core-h — spent 90, 800 K") for line in dec.lines)
    t = Target(**{**TARGET.as_dict(), "budget_core_hours": 100})
    dec = decide_material(runs, t)
    assert dec.done and not dec.target_met
    assert dec.lines[-1] == "done without meeting the target (2 temperatures give D)"


def test_pinned_variant_follows_the_per_run_rule_only():
    runs = [run(600, "caged"), run(800, rel=0.1)]
    dec = decide_material(runs, TARGET, add_temperatures=False)
    assert [(a.kind, a.temperature_k) for a in dec.actions] == [("extend", 600)]
    dec = decide_material(
        [run(600, "caged", p=100), run(800, rel=0.1)], TARGET, add_temperatures=False
    )
    assert dec.done and dec.target_met


def test_pinned_control_adds_the_free_variants_temperatures_within_the_material_budget():
    """The pinned controller adds the free variant's temperatures it lacks (costed like its
    nearest measured run), and counts what the free variant spent against the material's
    budget."""
    runs = [run(600, "caged", p=100, ch=200), run(800, rel=0.1, ch=40)]  # both 2 core-h/ps
    dec = decide_material(
        runs, TARGET, add_temperatures=False, follow_temperatures=[600, 800, 1000]
    )
    assert [(a.kind, a.temperature_k, a.to_ps) for a in dec.actions] == [("add", 1000, 20)]
    assert dec.actions[0].expected_core_hours == pytest.approx(40.0)  # 2 core-h/ps × 20 ps
    assert (
        dec.actions[0].line == "added 1000 K: a temperature of the free variant (pinned comparison)"
    )
    t = Target(**{**TARGET.as_dict(), "budget_core_hours": 320})
    # own 240 + the free variant's 50 = 290: the 40 core-h addition does not fit
    dec = decide_material(runs, t, add_temperatures=False, follow_temperatures=[1000],
                          spent_core_hours=290)  # fmt: skip
    assert dec.done and any(line.startswith("stop: budget 320 core-h — spent 290, added 1000 K")
                            for line in dec.lines)  # fmt: skip
    # the free controller's committed cost of the pinned first chunks: 2 core-h/ps × 20 ps each
    assert first_chunks_core_hours(runs, [600, 800], TARGET) == pytest.approx(80.0)
    assert first_chunks_core_hours([run(600, ch=0.0)], [600], TARGET) == 0.0  # nothing measured


def test_runs_without_d_stop_once_three_temperatures_give_d():
    """σ(300 K) still too wide, but 3 temperatures give D: the caged run is no longer
    extended (no gain for the fit); the step goes to a run with D or a new temperature."""
    runs = [run(500, "caged"), run(600, rel=0.1), run(800, rel=0.1), run(1000, rel=0.1)]
    t = Target(**{**TARGET.as_dict(), "sigma_at_t_factor": 1.1})
    dec = decide_material(runs, t, sigma_interval=(1.0, 4.0))
    assert dec.lines[0] == "500 K left at 20 ps (caged): not needed, 3 temperatures give D"
    assert len(dec.actions) == 1 and dec.actions[0].temperature_k != 500


def test_no_temperature_added_while_an_extension_may_still_give_d():
    """Two temperatures give D and the third is insufficient: its extension may give D, so
    no temperature is added this round; a caged third (an MSD plateau) is not counted on."""
    t = Target(**{**TARGET.as_dict(), "max_temperature_k": 1300})
    runs = [run(600, "insufficient"), run(800, rel=0.1), run(1000, rel=0.1)]
    dec = decide_material(runs, t)
    assert [(a.kind, a.temperature_k) for a in dec.actions] == [("extend", 600)]
    runs[0] = run(600, "caged")
    dec = decide_material(runs, t)
    assert [(a.kind, a.temperature_k) for a in dec.actions] == [("extend", 600), ("add", 1200)]
