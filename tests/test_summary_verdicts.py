"""Free-vs-pinned verdicts and σ(300 K) quoting of :mod:`ionflow.summary`, from numbers
with a known answer.

Every expected interval, z-score and category is computed here from the D values and
errors the runs are given: the ratio R = D_free/D_pinned is judged on ln R with
σ_lnR = √((σ1/D1)² + (σ2/D2)²) and the ×1.5 equivalence margin.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from ionflow.results import sigma_300k_note, sigma_300k_quoted, summary_row, verdict_category
from ionflow.summary import (
    EQUIVALENCE_MARGIN,
    SIGMA_BASIS,
    PinnedComparison,
    RunSummary,
    VariantSummary,
    build_summary,
    compare_runs,
    overall_verdict,
)

Z95 = 1.959964  # two-sided 95 % normal quantile
D_PINNED = 1.0e-5  # cm²/s


def run(
    d: float | None,
    rel_err: float | None = None,
    *,
    t: float = 1000.0,
    variant: str = "free",
    regime: str = "diffusive",
    reason: str = "MSD linear",
) -> RunSummary:
    return RunSummary(
        temperature_k=t,
        variant=variant,
        regime=regime,
        regime_reason=reason,
        diffusivity_cm2_s=d,
        diffusivity_err_cm2_s=None if d is None else d * rel_err,
        n_eff_hops=200.0,
        duration_ps=100.0,
        fit_window_ps=(5.0, 50.0),
    )


def pair(ratio: float, s_ln: float, t: float = 1000.0) -> PinnedComparison:
    """Compare runs whose D ratio is ``ratio`` with σ_lnR = ``s_ln`` (equal relative errors)."""
    rel = s_ln / math.sqrt(2)
    return compare_runs(run(ratio * D_PINNED, rel, t=t), run(D_PINNED, rel, t=t, variant="pinned"))


def interval(ratio: float, s_ln: float, z: float) -> tuple[float, float]:
    return (math.exp(math.log(ratio) - z * s_ln), math.exp(math.log(ratio) + z * s_ln))


def overall(comparisons: list[PinnedComparison]) -> str:
    return overall_verdict(comparisons, "4 PS4 anions pinned", True)


# ----------------------------------------------------------------------------- one temperature


def test_twofold_ratio_at_1_2_sigma_is_inconclusive_with_its_interval():
    """The demo case: D_free/D_pinned = 2.0 with z = 1.2 could not have detected a 2× effect."""
    s_ln = math.log(2.0) / 1.2
    c = pair(2.0, s_ln)
    assert c.ratio == pytest.approx(2.0)
    assert c.z_score == pytest.approx(1.2)
    assert c.ratio_interval == pytest.approx(interval(2.0, s_ln, 1.0))
    assert c.ratio_interval95 == pytest.approx(interval(2.0, s_ln, Z95))
    lo, hi = interval(2.0, s_ln, 1.0)
    assert (round(lo, 2), round(hi, 2)) == (1.12, 3.56)
    detectable = math.exp(Z95 * s_ln)  # the smallest change these runs would call significant
    assert detectable > 2.0
    assert c.verdict == (
        f"inconclusive: runs too short to detect a {detectable:.2g}× change "
        "(ratio 2.00, 68 % [1.12, 3.56])"
    )
    verdict = overall([c])
    assert verdict.startswith("inconclusive: runs too short to exclude a 2× effect of pinning")
    assert "at 1 of 1 temperature(s)" in verdict
    assert verdict_category(verdict) == "inconclusive"


def test_demo_campaign_is_no_longer_called_no_effect():
    """Two temperatures with a tight 1.0 ratio and 1000 K at 2.0 ± (z = 1.2): inconclusive."""
    tight = 0.02
    comps = [pair(1.0, tight, 600.0), pair(1.0, tight, 800.0), pair(2.0, math.log(2) / 1.2)]
    assert [c.verdict.split(" (")[0] for c in comps[:2]] == ["no significant change"] * 2
    verdict = overall(comps)
    assert not verdict.startswith("no significant")
    assert verdict == (
        "inconclusive: runs too short to exclude a 2× effect of pinning at 1 of 3 "
        "temperature(s); no significant change at 2 — run longer to decide"
    )
    assert verdict_category(verdict) == "inconclusive"


def test_ratio_near_one_with_tight_errors_is_no_effect():
    d1, d2, rel = 1.02e-5, 1.0e-5, 0.01
    c = compare_runs(run(d1, rel), run(d2, rel, variant="pinned"))
    s_ln = math.hypot(rel, rel)
    lo95, hi95 = interval(d1 / d2, s_ln, Z95)
    assert EQUIVALENCE_MARGIN[0] <= lo95 < 1 < hi95 <= EQUIVALENCE_MARGIN[1]
    assert c.ratio_interval95 == pytest.approx((lo95, hi95))
    assert c.z_score == pytest.approx(math.log(1.02) / s_ln)
    assert (round(lo95, 3), round(hi95, 2)) == (0.992, 1.05)
    assert c.verdict.startswith("no significant change (ratio 1.02, 95 % [0.992, 1.05]")
    verdict = overall([c, pair(1.0, 0.05, 800.0), pair(0.97, 0.05, 600.0)])
    assert verdict == "no significant effect of pinning at 3 temperature(s): rotation not required"
    assert verdict_category(verdict) == "no significant"


def test_threefold_ratio_with_tight_errors_lowers():
    c = compare_runs(run(3.0e-5, 0.05), run(1.0e-5, 0.05, variant="pinned"))
    s_ln = math.hypot(0.05, 0.05)
    assert c.z_score == pytest.approx(math.log(3.0) / s_ln)
    lo95, hi95 = interval(3.0, s_ln, Z95)
    assert c.ratio_interval95 == pytest.approx((lo95, hi95)) and lo95 > 1
    assert c.ratio_err == pytest.approx(3.0 * s_ln)
    assert (round(lo95, 2), round(hi95, 2)) == (2.61, 3.45)  # 3·exp(∓1.96·0.0707)
    assert c.verdict.startswith("pinning lowers D ×3.00 (95 % [2.61, 3.45]")
    verdict = overall([c])
    assert verdict == "pinning lowers Li diffusion at all 1 temperatures: rotation-assisted"
    assert verdict_category(verdict) == "lowers"


def test_pinned_caged_where_free_diffuses_suppresses():
    c = compare_runs(
        run(2.0e-5, 0.1), run(None, t=1000.0, variant="pinned", regime="caged", reason="MSD flat")
    )
    assert c.verdict == "pinning suppresses diffusion (pinned run caged)"
    assert c.ratio is None and c.ratio_interval is None
    verdict = overall([c, pair(3.0, 0.05, 800.0)])
    assert verdict == "pinning lowers Li diffusion at all 2 temperatures: rotation-assisted"
    # suppressed at one temperature, no change at another: mixed evidence
    mixed = overall([c, pair(1.0, 0.02, 800.0)])
    assert mixed == "pinning lowers diffusion at 1 of 2 temperatures: mixed evidence"
    assert verdict_category(mixed) == "mixed"


@pytest.mark.parametrize("factor", [0.99, 1.01])
def test_equivalence_margin_boundary(factor):
    """The 95 % interval of a ratio of exactly 1 ends at ×1.5 when σ_lnR = ln 1.5/1.96."""
    s_ln = math.log(1.5) / Z95 * factor
    c = pair(1.0, s_ln)
    inside = factor < 1
    assert c.verdict.startswith("no significant change" if inside else "inconclusive")


@pytest.mark.parametrize(("z", "lowers"), [(1.95, False), (1.97, True), (-1.97, None)])
def test_significance_is_the_z_test_on_ln_ratio(z, lowers):
    s_ln = 0.3
    c = pair(math.exp(z * s_ln), s_ln)
    assert c.z_score == pytest.approx(z)
    if lowers is True:
        assert c.verdict.startswith("pinning lowers D")
    elif lowers is None:
        assert c.verdict.startswith("pinning raises D")
        assert c.ratio_interval95[1] < 1
    else:
        assert c.verdict.startswith("inconclusive")


def test_raises_and_mixed_directions():
    up = pair(1 / 3, 0.05, 800.0)
    down = pair(3.0, 0.05, 1000.0)
    raised = overall([up, pair(1.0, 0.02, 600.0)])
    assert raised == "pinning raises diffusion at 1 of 2 temperature(s)"
    assert verdict_category(raised) == "raises"
    both = overall([up, down])
    assert (
        both == "pinning lowers diffusion at 1 of 2 temperatures (raises it at 1): mixed evidence"
    )
    assert verdict_category(both) == "mixed"


def test_inconclusive_within_two_fold_counts_separately():
    """A temperature whose 95 % interval reaches ×1.5 but not ×2 is inconclusive without
    being counted among those that cannot exclude a 2× effect."""
    s_ln = 0.15  # 95 %: exp(±0.294) = [0.75, 1.34] around 1.1 → [0.82, 1.47]·1.1
    c = pair(1.25, s_ln)
    lo95, hi95 = interval(1.25, s_ln, Z95)
    assert 1.5 < hi95 < 2.0 and lo95 > 0.5 and lo95 < 1
    assert c.verdict.startswith("inconclusive")
    verdict = overall([c])
    assert verdict == (
        "inconclusive: runs too short to exclude a ×1.5 effect of pinning at 1 of 1 "
        "temperature(s) — run longer to decide"
    )


def test_runs_without_usable_pairs():
    free_sub = compare_runs(
        run(None, regime="subdiffusive", reason="MSD bends"), run(1e-5, 0.1, variant="pinned")
    )
    assert free_sub.verdict == "free run subdiffusive: no comparison"
    pinned_sub = compare_runs(
        run(1e-5, 0.1), run(None, variant="pinned", regime="subdiffusive", reason="MSD bends")
    )
    assert pinned_sub.verdict == "pinned run subdiffusive: inconclusive"
    verdict = overall([free_sub, pinned_sub])
    assert verdict == "inconclusive: no temperature with usable free and pinned runs"
    # an unusable temperature is not counted among the tested ones
    assert overall([pinned_sub, pair(1.0, 0.02, 800.0)]) == (
        "no significant effect of pinning at 1 temperature(s): rotation not required"
    )
    assert overall_verdict([], "no bonded polyanions", False) == (
        "no pinned control: no bonded polyanions"
    )


# ----------------------------------------------------------------------------- σ(300 K)


def _material(ea: float | None, ea_err: float | None, sigma: float | None = 5.0):
    from pymatgen.core import Composition

    free = VariantSummary(
        variant="free",
        runs=[run(2e-5, 0.1, t=800.0), run(3e-5, 0.1, t=1000.0)],
        ea_ev=ea,
        ea_err_ev=ea_err,
        sigma_300k_ms_cm=sigma if ea is not None else None,
        sigma_300k_interval_ms_cm=(sigma / 4, sigma * 4) if ea is not None else None,
        sigma_300k_interval95_ms_cm=(sigma / 16, sigma * 16) if ea is not None else None,
    )  # no ea_resolved: as a variant summary of schema 1.0 (build_summary computes it)
    return build_summary(
        campaign="c",
        material="m",
        structure=SimpleNamespace(composition=Composition("Li3PS4")),
        mobile_species="Li",
        engine_md="chgnet",
        engine_relax="chgnet",
        supercell={"n_atoms": 64, "matrix": [[2, 0, 0], [0, 2, 0], [0, 0, 1]]},
        free=free,
        pinned=None,
    )


def test_unresolved_ea_keeps_sigma_out_of_the_flat_fields():
    s = _material(0.23, 0.20)  # 0.23 < 2 × 0.20
    assert s.ea_resolved is False and s.free.ea_resolved is False
    assert s.sigma_300k_ms_cm is None
    assert s.sigma_300k_low_ms_cm is None and s.sigma_300k_high_ms_cm is None
    assert s.free.sigma_300k_ms_cm == 5.0  # the flagged extrapolation stays nested
    assert s.ea_ev == 0.23
    assert "σ(300 K) not quoted: Ea not resolved (0.23 ± 0.20 eV)" in s.notes
    assert s.sigma_basis == SIGMA_BASIS == "tracer: Nernst–Einstein from D* (H_R = 1 assumed)"
    assert not sigma_300k_quoted(s) and sigma_300k_note(s) == "Ea not resolved"
    row = summary_row(s)
    assert row["sigma_300k_ms_cm"] is None and row["sigma_300k_low95_ms_cm"] is None
    assert row["ea_resolved"] is False and row["sigma_300k_note"] == "Ea not resolved"


def test_resolved_ea_quotes_sigma():
    s = _material(0.41, 0.20)  # 0.41 > 0.40
    assert s.ea_resolved is True
    assert (s.sigma_300k_ms_cm, s.sigma_300k_low_ms_cm, s.sigma_300k_high_ms_cm) == (
        5.0,
        1.25,
        20.0,
    )
    assert not [n for n in s.notes if "not quoted" in n]
    assert sigma_300k_quoted(s) and sigma_300k_note(s) is None


def test_no_fit_and_no_error():
    none = _material(None, None)
    assert none.ea_resolved is None and none.sigma_300k_ms_cm is None
    assert sigma_300k_note(none) is None
    no_err = _material(0.3, None)  # two points unweighted: Ea has no error, not resolved
    assert no_err.ea_resolved is False and no_err.sigma_300k_ms_cm is None
    assert "σ(300 K) not quoted: Ea not resolved (0.30 eV, no error estimate)" in no_err.notes


# ----------------------------------------------------------------------------- `ionflow run`


def test_run_table_shows_regime_reasons_charge_haven_and_sigma_basis():
    from rich.console import Console

    from ionflow.cli.run_cmds import summary_table

    sub = run(None, t=600.0, regime="subdiffusive", reason="MSD bends: D early 2x late (z = 4)")
    ok = run(2.0e-5, 0.1, t=800.0).model_copy(
        update={
            "charge_diffusivity_cm2_s": 4.0e-5,
            "charge_diffusivity_err_cm2_s": 1.0e-5,
            "haven_ratio": 0.5,
            "haven_ratio_interval": (0.38, 0.71),
        }
    )
    weak = run(3.0e-5, 0.1, t=1000.0).model_copy(
        update={"charge_diffusivity_err_cm2_s": 2.0e-5, "charge_diffusivity_upper_cm2_s": 6.1e-5}
    )
    doc = _material(0.23, 0.20).model_dump(mode="json")
    doc["free"]["runs"] = [r.model_dump(mode="json") for r in (sub, ok, weak)]
    tab, notes = summary_table([doc])
    con = Console(record=True, width=250)
    con.print(tab)
    text = con.export_text()
    assert "subdiffusive" in text
    assert "4e-05 ± 1e-05" in text  # D_σ resolved
    assert "< 6.1e-05 (not resolved)" in text
    assert "0.50 [0.38, 0.71]" in text and "±" not in text.split("0.50")[1].split("\n")[0]
    assert "— (Ea not resolved)" in text
    assert "m free 600 K subdiffusive: MSD bends: D early 2x late (z = 4)" in notes
    assert "m free: σ(300 K) not quoted: Ea not resolved (0.23 ± 0.20 eV)" in notes
    assert f"σ quoted: {SIGMA_BASIS}" in notes
