"""Arrhenius fit checked against exact data, Monte Carlo coverage and pymatgen's fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ionflow.analysis import analyze_arrays, fit_arrhenius, fit_arrhenius_from_analyses
from ionflow.analysis.synthetic import caged_trajectory, hopping_trajectory
from ionflow.errors import InsufficientDataError, UserInputError

K_EV = 8.617333262e-5  # Boltzmann constant, eV/K (CODATA 2018, exact)
TEMPS = np.array([600.0, 800.0, 1000.0, 1200.0])
EA, D0 = 0.35, 2e-3  # eV, cm²/s
FACTOR = 5e9  # σ·T/D, mS·K/cm per cm²/s (n q²/k_B of some cell)


def _d_true(t):
    return D0 * np.exp(-EA / (K_EV * np.asarray(t, dtype=float)))


def test_exact_data_recovered() -> None:
    d = _d_true(TEMPS)
    fit = fit_arrhenius(TEMPS, d, d * 1e-6, sigma_factor_ms_cm_k=FACTOR, at_temperature_k=300.0)
    assert fit.ea_ev == pytest.approx(EA, rel=1e-6)
    assert fit.d0_cm2_s == pytest.approx(D0, rel=1e-6)
    assert fit.d_at_t_cm2_s == pytest.approx(float(_d_true(300.0)), rel=1e-6)
    assert fit.sigma_at_t_ms_cm == pytest.approx(FACTOR * float(_d_true(300.0)) / 300.0, rel=1e-6)
    assert fit.n_temperatures == 4 and fit.weighted
    assert fit.ea_err_ev < 1e-6
    assert not fit.covariance_scaled  # perfect data: χ² ≈ 0, never scaled down
    # extrapolation below the fitted range is flagged
    assert any("extrapolated" in w for w in fit.warnings)


def test_noisy_draws_coverage() -> None:
    """500 repetitions of D_i = D_true(T_i)·exp(N(0, s_i)) with the stated σ_D = s_i·D_i.

    Measured: Ea ± err covers 0.71, σ(300 K) 68 % interval 0.77, 95 % interval 0.97 (a
    little conservative: the χ² scaling only ever widens, with Student-t quantiles).
    """
    rng = np.random.default_rng(0)
    s = np.array([0.3, 0.2, 0.15, 0.1])
    sig300 = FACTOR * float(_d_true(300.0)) / 300.0
    hits = []
    for _ in range(500):
        d = _d_true(TEMPS) * np.exp(rng.normal(0.0, s))
        fit = fit_arrhenius(TEMPS, d, d * s, sigma_factor_ms_cm_k=FACTOR, at_temperature_k=300)
        lo68, hi68 = fit.sigma_at_t_interval_ms_cm
        lo95, hi95 = fit.sigma_at_t_interval95_ms_cm
        assert lo95 < lo68 < fit.sigma_at_t_ms_cm < hi68 < hi95
        hits.append(
            (abs(fit.ea_ev - EA) <= fit.ea_err_ev, lo68 <= sig300 <= hi68, lo95 <= sig300 <= hi95)
        )
    cov_ea, cov68, cov95 = np.mean(hits, axis=0)
    assert cov_ea >= 0.6
    assert cov68 >= 0.6
    assert cov95 >= 0.9
    # … but not vacuous
    assert cov_ea <= 0.85 and cov68 <= 0.85 and cov95 <= 0.995


def test_two_temperatures_warn() -> None:
    d = _d_true([700.0, 1000.0])
    fit = fit_arrhenius([700.0, 1000.0], d, 0.1 * d)
    assert fit.n_temperatures == 2
    assert any("only 2 temperatures" in w for w in fit.warnings)
    assert fit.ea_ev == pytest.approx(EA, rel=1e-9)  # two points: an exact line
    assert fit.chi2_reduced is None


def test_one_usable_temperature_raises() -> None:
    with pytest.raises(InsufficientDataError, match="at least 2"):
        fit_arrhenius([600.0, 800.0, 1000.0], [None, 0.0, 1e-5], [None, None, 1e-6])


def test_one_usable_analysis_raises() -> None:
    """Real analyses: a caged run and an insufficient one carry no D, one diffusive run."""
    runs = [
        caged_trajectory(n_frames=1500, n_mobile=16, n_framework=16, temperature_k=500, seed=1),
        hopping_trajectory(
            n_frames=1500,
            n_mobile=16,
            n_framework=16,
            hop_rate_per_ps=0.01,
            temperature_k=700,
            seed=2,
        ),
        hopping_trajectory(
            n_frames=1500,
            n_mobile=16,
            n_framework=16,
            hop_rate_per_ps=5.0,
            temperature_k=900,
            seed=3,
        ),
    ]
    analyses = [
        analyze_arrays(
            r.positions,
            r.lattice,
            r.species,
            species="Li",
            temperature_k=r.temperature_k,
            frame_interval_fs=r.frame_interval_fs,
        )
        for r in runs
    ]
    assert [a.regime for a in analyses] == ["caged", "insufficient", "diffusive"]
    with pytest.raises(InsufficientDataError, match="at least 2"):
        fit_arrhenius_from_analyses(analyses)


def test_unweighted_equals_pymatgen_fit_arrhenius() -> None:
    from pymatgen.analysis.diffusion.analyzer import fit_arrhenius as pmg_fit_arrhenius

    temps = [500.0, 650.0, 800.0, 1100.0, 1300.0]
    rng = np.random.default_rng(3)
    d = _d_true(temps) * np.exp(rng.normal(0, 0.3, len(temps)))
    ea_pmg, c_pmg, std_pmg = pmg_fit_arrhenius(temps, d)
    fit = fit_arrhenius(temps, d, weighted=False)
    assert not fit.weighted
    assert fit.ea_ev == pytest.approx(ea_pmg, rel=1e-9)
    assert fit.d0_cm2_s == pytest.approx(c_pmg, rel=1e-9)
    assert fit.ea_err_ev == pytest.approx(std_pmg, rel=1e-9)
    # the errors are ignored in unweighted mode
    assert fit_arrhenius(temps, d, d * 0.01, weighted=False).ea_ev == pytest.approx(
        ea_pmg, rel=1e-9
    )


def _unscaled_ea_err(temps, rel_err) -> float:
    """Weighted-LS slope error in (1/T, ln D) with weights 1/rel_err², times k_B."""
    x = 1.0 / np.asarray(temps)
    w = 1.0 / np.asarray(rel_err) ** 2
    xbar = np.sum(w * x) / np.sum(w)
    return math.sqrt(1.0 / np.sum(w * (x - xbar) ** 2)) * K_EV


def test_chi2_scaling_widens_when_scatter_exceeds_errors() -> None:
    temps = [600.0, 700.0, 800.0, 1000.0, 1200.0]
    wiggle = np.array([0.4, -0.5, 0.3, 0.45, -0.35])  # scatter in ln D ≫ the 5 % errors
    d = _d_true(temps) * np.exp(wiggle)
    rel = np.full(5, 0.05)
    fit = fit_arrhenius(temps, d, d * rel)
    base = _unscaled_ea_err(temps, rel)
    assert fit.covariance_scaled and fit.chi2_reduced > 10
    assert fit.ea_err_ev > 3 * base
    assert fit.ea_err_ev == pytest.approx(base * math.sqrt(fit.chi2_reduced), rel=1e-9)
    # hand χ²: weighted residuals of the weighted line
    x, y, w = 1 / np.array(temps), np.log(d), 1 / rel**2
    coef = np.polyfit(x, y, 1, w=np.sqrt(w))
    chi2 = np.sum(w * (y - np.polyval(coef, x)) ** 2) / 3
    assert fit.chi2_reduced == pytest.approx(chi2, rel=1e-9)
    assert fit.ea_ev == pytest.approx(-coef[0] * K_EV, rel=1e-9)


def test_chi2_scaling_never_narrows() -> None:
    temps = [600.0, 700.0, 800.0, 1000.0, 1200.0]
    d = _d_true(temps) * np.exp(np.array([0.01, -0.01, 0.005, 0.0, -0.005]))
    rel = np.full(5, 0.2)  # errors ≫ scatter: χ²_red ≪ 1
    fit = fit_arrhenius(temps, d, d * rel)
    assert fit.chi2_reduced < 1 and not fit.covariance_scaled
    assert fit.ea_err_ev == pytest.approx(_unscaled_ea_err(temps, rel), rel=1e-9)


def test_missing_temperature_is_a_user_error() -> None:
    # before the fix, the default label f"{None:g} K" raised a TypeError
    with pytest.raises(UserInputError, match="temperature must be > 0"):
        fit_arrhenius([None, 600.0, 800.0], [1e-5, 1e-6, 2e-6], [1e-6, 1e-7, 2e-7])
    with pytest.raises(UserInputError, match="temperature must be > 0"):
        fit_arrhenius([-5.0, 600.0, 800.0], [1e-5, 1e-6, 2e-6], [1e-6, 1e-7, 2e-7])


def test_unresolved_activation_energy_is_flagged():
    """D falling with T (within large errors) must not pass silently as a negative Ea."""
    from ionflow.analysis import fit_arrhenius

    fit = fit_arrhenius([900.0, 1000.0, 1100.0], [5e-5, 4.5e-5, 4e-5], [1.5e-5, 1.5e-5, 1.5e-5])
    assert fit.ea_ev < 0
    assert any("not resolved as positive" in w for w in fit.warnings)
    clean = fit_arrhenius([600.0, 800.0, 1000.0], [1e-7, 1e-6, 4e-6], [1e-9, 1e-8, 4e-8])
    assert clean.ea_ev > 0 and not any("not resolved" in w for w in clean.warnings)


def test_unresolved_ea_is_flagged_and_its_extrapolation_not_quoted(tmp_path, capsys) -> None:
    """Ea = 0.10 eV from D that are each ±60 %: Ea < 2σ, so σ(300 K) is not printed."""
    from ionflow.cli import main

    k = 8.617333262e-5
    temps = [800.0, 900.0, 1000.0]
    d = [1e-4 * math.exp(-0.10 / (k * t)) for t in temps]
    fit = fit_arrhenius(temps, d, [0.6 * x for x in d])
    assert fit.ea_err_ev is not None and fit.ea_ev < 2 * fit.ea_err_ev
    assert fit.ea_resolved is False
    assert fit_arrhenius(temps, d, [0.01 * x for x in d]).ea_resolved is True
    table = tmp_path / "d.csv"
    table.write_text(
        "T,D,D_err\n" + "".join(f"{t},{x},{0.6 * x}\n" for t, x in zip(temps, d, strict=True))
    )
    args = ["arrhenius", "--table", str(table), "--number-density-cm3", "2.5e22"]
    main(args)
    out = capsys.readouterr().out
    assert "not quoted" in out and "mS/cm" not in out
    main([*args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["ea_resolved"] is False and doc["sigma_at_t_ms_cm"] > 0  # kept, flagged
