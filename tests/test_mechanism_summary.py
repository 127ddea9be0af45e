"""Mechanism evidence of the per-material summary (schema 1.2), from numbers built here."""

from __future__ import annotations

import pytest

from ionflow.summary import (
    MaterialSummary,
    RunSummary,
    VariantSummary,
    compare_runs,
    isolated_anion_fields,
    mechanism_fields,
    mechanism_verdict,
)


def _run(variant, t, d, err, *, tau=None, group="PS4", reason=None, c2=None) -> RunSummary:
    return RunSummary(
        temperature_k=t,
        variant=variant,
        regime="diffusive",
        regime_reason="test",
        diffusivity_cm2_s=d,
        diffusivity_err_cm2_s=err,
        n_eff_hops=100.0,
        duration_ps=100.0,
        fit_window_ps=(1.0, 50.0),
        rotating_group=group,
        tau_p2_ps=tau,
        tau_p2_reason=reason if tau is None else None,
        p2_at_max_lag=c2,
    )


def _pair(free_runs, pinned_runs):
    free = VariantSummary(variant="free", runs=free_runs)
    pinned = VariantSummary(variant="pinned", runs=pinned_runs)
    by_t = {r.temperature_k: r for r in pinned_runs}
    comps = [compare_runs(r, by_t[r.temperature_k]) for r in free_runs]
    return free, pinned, comps


def test_rotation_coupled_when_groups_reorient_and_pinning_lowers_d():
    free, pinned, comps = _pair(
        [_run("free", 900, 3.1e-5, 1e-6, tau=1.3)],
        [_run("pinned", 900, 1.0e-5, 1e-6, reason="no reorientation", c2=0.99)],
    )
    text, coupled, frozen = mechanism_verdict(free, pinned, comps)
    assert coupled is True and frozen is True
    # ratio 3.1, σ_lnR = √((1/31)² + (1/10)²) → z = ln 3.1 / 0.105 = 10.8
    assert text.startswith("PS4 reorient with τ2 = 1.3 ps (900 K); pinning them lowers D* 3.1×")
    assert "z = 10.8" in text and text.endswith("rotation-coupled")


def test_not_coupled_when_groups_do_not_reorient():
    free, pinned, comps = _pair(
        [_run("free", 900, 3.1e-5, 1e-6, reason="no reorientation", c2=0.93)],
        [_run("pinned", 900, 1.0e-5, 1e-6, reason="no reorientation", c2=0.99)],
    )
    text, coupled, _ = mechanism_verdict(free, pinned, comps)
    assert coupled is False
    assert text.startswith("PS4 do not reorient within the runs (C2 = 0.93")


def test_not_coupled_when_pinning_has_no_effect_and_warns_when_pinning_does_not_freeze():
    free, pinned, comps = _pair(
        [_run("free", 900, 2.0e-5, 1e-7, tau=1.0)],
        [_run("pinned", 900, 2.0e-5, 1e-7, tau=1.5)],  # still turning: no freezing
    )
    text, coupled, frozen = mechanism_verdict(free, pinned, comps)
    assert coupled is False and frozen is False
    assert "rotation not required" in text and "does not freeze" in text


def test_no_pinned_control_and_no_groups():
    free = VariantSummary(variant="free", runs=[_run("free", 900, 2e-5, 1e-6, tau=1.0)])
    text, coupled, frozen = mechanism_verdict(free, None, [])
    assert coupled is False and frozen is None and "coupling untested" in text
    free = VariantSummary(
        variant="free",
        runs=[_run("free", 900, 2e-5, 1e-6, group=None, reason="no polyanion groups")],
    )
    text, coupled, _ = mechanism_verdict(free, None, [])
    assert coupled is False and "does not apply" in text
    free = VariantSummary(
        variant="free", runs=[_run("free", 900, 2e-5, 1e-6, group=None, reason=None)]
    )
    text, coupled, _ = mechanism_verdict(free, None, [])  # a summary before schema 1.2
    assert coupled is None and text.startswith("rotation not analysed")


def test_mechanism_fields_from_results_and_errors():
    from types import SimpleNamespace as NS

    group = NS(formula="PS4", n_groups=4, tau_p2_ps=None, tau_p2_err_ps=None,
               tau_p2_reason="no reorientation", p2_at_max_lag=0.97)  # fmt: skip
    results = {
        "rotation": NS(groups=[group], note=None),
        "density": NS(percolation_dimension=3, n_sites=24),
        "jumps": NS(
            jump_rate_per_ps=2.5,
            jump_rate_err_per_ps=0.1,
            mean_jump_length_a=2.3,
            correlation_factor=0.6,
            correlation_factor_err=0.05,
            inter_cage_jump_rate_per_ps=0.4,
            intra_cage_jump_rate_per_ps=2.1,
        ),  # fmt: skip
    }
    out = mechanism_fields(results, {"vdos": "InsufficientDataError: too short"},
                           {"filename": "x.CHGCAR"})  # fmt: skip
    run = _run("free", 900, 1e-5, 1e-6).model_copy(update=out)
    assert run.rotating_group == "PS4" and run.tau_p2_ps is None
    assert run.tau_p2_reason == "no reorientation" and run.p2_at_max_lag == 0.97
    assert run.percolation_dimension == 3 and run.jump_rate_per_ps == 2.5
    assert run.correlation_factor == 0.6 and run.density_file == "x.CHGCAR"
    assert run.inter_cage_jump_rate_per_ps == 0.4 and run.intra_cage_jump_rate_per_ps == 2.1
    assert run.vdos_low_frequency_exponent is None
    assert run.mechanism_notes == ["vdos failed: InsufficientDataError: too short"]
    assert mechanism_fields({}, {})["tau_p2_reason"] == "rotation not run"


def test_isolated_anion_fields_group_by_element_and_symmetry():
    desc = {
        "isolated_fraction": 0.375,
        "groups": {"PS4": 4},
        "isolated_anion_spacing_a": {"S": 7.0, "Cl": 7.0},
        "anions": [
            {"element": "Cl", "bonded": False, "site_symmetry": "-43m", "wyckoff": "4a"},
            {"element": "Cl", "bonded": False, "site_symmetry": "-43m", "wyckoff": "4a"},
            {"element": "S", "bonded": False, "site_symmetry": "-43m", "wyckoff": "4d"},
            {"element": "S", "bonded": True, "site_symmetry": ".3m", "wyckoff": "16e"},
        ],
    }
    f = isolated_anion_fields(desc)
    assert f["isolated_fraction"] == 0.375 and f["anion_groups"] == {"PS4": 4}
    rows = {(a.element, a.wyckoff): a for a in f["isolated_anions"]}
    assert rows[("Cl", "4a")].count == 2 and rows[("S", "4d")].site_symmetry == "-43m"
    assert rows[("S", "4d")].spacing_a == 7.0 and len(rows) == 2
    assert isolated_anion_fields(None) == {}


def test_schema_1_1_summary_parses_with_mechanism_defaults():
    from ionflow.summary import SCHEMA_VERSION

    assert SCHEMA_VERSION == "1.4"
    doc = {
        "schema_version": "1.1", "campaign": "c", "material": "m", "formula": "Li3N",
        "chemsys": "Li-N", "elements": ["Li", "N"], "mobile_species": "Li",
        "engine_md": "toy", "engine_relax": "toy", "temperatures_k": [900.0],
        "n_atoms_supercell": 36, "supercell_matrix": [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
        "n_bonded_anions": 0, "n_isolated_anions": 9, "anion_summary": "",
        "pinned_indices_count": 0, "pinned_reason": "off",
        "free": {"variant": "free", "runs": [{
            "temperature_k": 900.0, "variant": "free", "regime": "diffusive",
            "regime_reason": "x", "n_eff_hops": 10.0, "duration_ps": 10.0,
            "fit_window_ps": [1.0, 5.0]}]},
        "pinned_verdict": "no pinned control: off",
    }  # fmt: skip
    s = MaterialSummary.model_validate(doc)
    assert s.rotation_coupled is None and s.isolated_fraction is None
    assert s.mechanism_verdict == "" and s.free.runs[0].tau_p2_ps is None
    assert s.free.runs[0].mechanism_notes == []


@pytest.mark.parametrize("coupled", [True, False])
def test_build_summary_fills_the_flat_mechanism_fields(coupled):
    from types import SimpleNamespace

    from pymatgen.core import Composition

    from ionflow.summary import build_summary

    free, pinned, _ = _pair(
        [_run("free", 900, 3e-5, 1e-6, tau=1.3 if coupled else None, reason="no reorientation")
         .model_copy(update={"percolation_dimension": 3}),
         _run("free", 700, 1e-5, 1e-6, tau=4.0 if coupled else None, reason="no reorientation")
         .model_copy(update={"percolation_dimension": 2})],
        [_run("pinned", 900, 1e-5, 1e-6, reason="no reorientation"),
         _run("pinned", 700, 3e-6, 1e-7, reason="no reorientation")],
    )  # fmt: skip
    s = build_summary(
        campaign="c", material="Li6PS5Cl", structure=SimpleNamespace(
            composition=Composition("Li6PS5Cl")), mobile_species="Li", engine_md="toy",
        engine_relax="toy",
        supercell={"n_atoms": 52, "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                   "anion_descriptors": {"isolated_fraction": 0.375, "groups": {"PS4": 4}}},
        free=free, pinned=pinned,
    )  # fmt: skip
    assert s.rotation_coupled is coupled and s.rotation_frozen_by_pinning is True
    assert s.percolation_dimension == 3 and s.isolated_fraction == 0.375
    assert s.anion_groups == {"PS4": 4}
    assert ("rotation-coupled" in s.mechanism_verdict) is coupled


def test_one_significant_temperature_of_three_is_not_coupling():
    """Ratios 2.4 (z = 2.8), 1.6 (z = 1.5) and 1.3 (z = 0.8): only 1 of 3 temperatures is
    significant — three 95 % tests give one by chance ~7 % of the time — so coupling is
    suggested, not shown; with 2 of 3 significant it is shown."""
    pin = dict(reason="no reorientation", c2=0.99)
    free, pinned, comps = _pair(
        [_run("free", t, d, 0.1 * d, tau=1.3) for t, d in ((1000, 2.4e-5), (1150, 1.6e-5),
                                                            (1300, 1.3e-5))],
        [_run("pinned", t, 1e-5, 0.3e-5, **pin) for t in (1000, 1150, 1300)],
    )  # fmt: skip
    assert [c.verdict.startswith("pinning lowers") for c in comps] == [True, False, False]
    text, coupled, _ = mechanism_verdict(free, pinned, comps)
    assert coupled is False and "suggested, not shown" in text and "1 of 3" in text
    free, pinned, comps = _pair(
        [_run("free", t, d, 0.1 * d, tau=1.3) for t, d in ((1000, 2.4e-5), (1150, 2.6e-5),
                                                            (1300, 1.3e-5))],
        [_run("pinned", t, 1e-5, 0.1e-5, **pin) for t in (1000, 1150, 1300)],
    )  # fmt: skip
    assert sum(c.verdict.startswith("pinning lowers") for c in comps) == 2
    text, coupled, _ = mechanism_verdict(free, pinned, comps)
    assert coupled is True and text.endswith("rotation-coupled")


def test_jump_rate_arrhenius_gives_the_activation_enthalpy_and_attempt_frequency():
    """Γ(T) = ν0·exp(−ΔH/k_B T) with ν0 = 8 THz, ΔH = 0.25 eV, 5 % errors: both recovered."""
    import math

    from ionflow.summary import variant_summary

    k = 8.617333262e-5
    runs = []
    for t in (700.0, 850.0, 1000.0, 1150.0):
        g = 8.0 * math.exp(-0.25 / (k * t))
        r = _run("free", t, 1e-5, 1e-6, tau=1.0)
        runs.append(r.model_copy(update={"jump_rate_per_ps": g, "jump_rate_err_per_ps": 0.05 * g}))
    v = variant_summary("free", [], [])  # no analyses: only the runs' jump rates matter here
    v = v.model_copy(update={"runs": runs})
    from ionflow.summary import _jump_arrhenius

    _jump_arrhenius(v)
    assert v.jump_activation_enthalpy_ev == pytest.approx(0.25, abs=1e-9)
    assert v.attempt_frequency_thz == pytest.approx(8.0, rel=1e-9)
    assert 0 < v.jump_activation_enthalpy_err_ev < 0.05
    one = v.model_copy(update={"runs": runs[:1], "jump_activation_enthalpy_ev": None})
    _jump_arrhenius(one)
    assert one.jump_activation_enthalpy_ev is None and "no jump-rate fit" in one.jump_arrhenius_note
