"""Arrhenius fit of D(T) with the D errors, and extrapolation with an interval.

ln D = ln D0 − Ea/(k_B T) is fitted by weighted least squares in (1/T, ln D) with
weights 1/σ_lnD² (σ_lnD = σ_D/D). The parameter covariance is (XᵀWX)⁻¹, scaled by
the reduced χ² when the scatter exceeds the stated errors (Birge ratio > 1, only
possible with ≥ 3 temperatures) so that an inadequate model or underestimated
errors widen, never narrow, the interval. D or σ at any temperature T* follows from
the full slope–intercept covariance: var ln D(T*) = [1, 1/T*] C [1, 1/T*]ᵀ; the
68 % and 95 % intervals are exp(ln D ± z·sd) (Student-t quantiles when the
covariance was χ²-scaled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from ionflow.errors import InsufficientDataError, UserInputError
from ionflow.rules import check_temperature_k

BOLTZMANN_EV_K = 8.617333262e-5


class ArrheniusFit(BaseModel):
    """Result of an Arrhenius fit and its extrapolation to ``at_temperature_k``."""

    n_temperatures: int = Field(description="Temperatures used in the fit")
    temperatures_k: list[float] = Field(description="Temperatures used, K")
    diffusivities_cm2_s: list[float] = Field(description="D used, cm²/s")
    diffusivity_errs_cm2_s: list[float | None] = Field(description="1σ of D used, cm²/s")
    excluded: list[str] = Field(default_factory=list, description="Points left out and why")
    weighted: bool = Field(description="True when D errors weighted the fit")
    ea_ev: float = Field(description="Activation energy, eV")
    ea_err_ev: float | None = Field(description="1σ of Ea, eV (None with 2 points unweighted)")
    ea_resolved: bool | None = Field(
        None,
        description=(
            "Ea > 2σ: only then is an extrapolation (D, σ at at_temperature_k) quoted; "
            "false also when Ea has no error estimate"
        ),
    )
    d0_cm2_s: float = Field(description="Prefactor D0, cm²/s")
    ln_d0_err: float | None = Field(description="1σ of ln D0")
    covariance: list[list[float]] | None = Field(
        description="Covariance of (ln D0, −Ea/k_B) in (1, K) units"
    )
    chi2_reduced: float | None = Field(description="Reduced χ² (None with 2 points)")
    covariance_scaled: bool = Field(description="Covariance multiplied by χ²_red > 1")
    at_temperature_k: float = Field(description="Extrapolation temperature, K")
    d_at_t_cm2_s: float = Field(description="D at at_temperature_k, cm²/s")
    d_at_t_interval_cm2_s: tuple[float, float] | None = Field(description="68 % interval of D")
    d_at_t_interval95_cm2_s: tuple[float, float] | None = Field(description="95 % interval of D")
    sigma_at_t_ms_cm: float | None = Field(description="σ at at_temperature_k, mS/cm")
    sigma_at_t_interval_ms_cm: tuple[float, float] | None = Field(description="68 % interval of σ")
    sigma_at_t_interval95_ms_cm: tuple[float, float] | None = Field(
        description="95 % interval of σ"
    )
    warnings: list[str] = Field(default_factory=list)


def ea_is_resolved(ea_ev: float | None, ea_err_ev: float | None) -> bool | None:
    """Ea > 2σ_Ea — only then is an extrapolation meaningful (quoted in tables and
    queries). None without an Ea; False when Ea has no error estimate (two points fitted
    without errors): a resolution that cannot be shown is not claimed."""
    if ea_ev is None:
        return None
    if ea_err_ev is None or not math.isfinite(ea_err_ev):
        return False
    return bool(ea_ev > 2.0 * ea_err_ev)


def _temp_label(t) -> str:
    """'600 K' for a number; a missing/odd temperature must still reach the > 0 K check."""
    try:
        return f"{float(t):g} K"
    except (TypeError, ValueError):
        return f"{t!r} K"


def fit_arrhenius(
    temperatures_k: Sequence[float],
    diffusivities_cm2_s: Sequence[float | None],
    errors_cm2_s: Sequence[float | None] | None = None,
    *,
    at_temperature_k: float = 300.0,
    sigma_factor_ms_cm_k: float | None = None,
    weighted: bool = True,
    labels: Sequence[str] | None = None,
) -> ArrheniusFit:
    """Weighted Arrhenius fit (see module docstring).

    Parameters
    ----------
    temperatures_k, diffusivities_cm2_s, errors_cm2_s
        One entry per run; entries with D ``None``/≤ 0 (caged or insufficient runs)
        are excluded and listed in ``excluded``.
    sigma_factor_ms_cm_k
        ``σ·T/D`` (mS·K/(cm·cm²/s)), i.e. n q²/k_B: converts D(T) to σ(T) =
        factor·D/T. None → no σ extrapolation.
    weighted
        False reproduces pymatgen's unweighted ``fit_arrhenius``.
    """
    check_temperature_k(at_temperature_k)
    n_all = len(temperatures_k)
    errs = list(errors_cm2_s) if errors_cm2_s is not None else [None] * n_all
    labels = list(labels) if labels is not None else [_temp_label(t) for t in temperatures_k]
    if len(diffusivities_cm2_s) != n_all or len(errs) != n_all:
        raise UserInputError("temperatures, diffusivities and errors must have the same length")
    temps, ds, es, excluded = [], [], [], []
    for t, d, e, lab in zip(temperatures_k, diffusivities_cm2_s, errs, labels, strict=True):
        check_temperature_k(t, f"{lab}: temperature")
        if d is None or not d > 0 or not math.isfinite(d):
            excluded.append(f"{lab}: no diffusivity (caged or insufficient run)")
            continue
        if weighted and (e is None or not e > 0 or not math.isfinite(e)):
            excluded.append(f"{lab}: no finite error on D")
            continue
        temps.append(float(t))
        ds.append(float(d))
        es.append(None if e is None else float(e))
    if len(set(temps)) < 2:
        raise InsufficientDataError(
            f"Arrhenius fit needs at least 2 temperatures with a diffusive run, got {len(set(temps))}"
            + (f" ({'; '.join(excluded)})" if excluded else "")
        )
    notes = []
    if len(temps) == 2:
        notes.append("only 2 temperatures: Ea and the extrapolation rest on two points")
    x = 1.0 / np.array(temps)
    y = np.log(ds)
    if weighted:
        sy = np.array(es) / np.array(ds)
        wts = 1.0 / sy**2
    else:
        wts = np.ones_like(x)
    design = np.vstack([np.ones_like(x), x]).T
    xtwx = design.T @ (design * wts[:, None])
    cov = np.linalg.inv(xtwx)
    coef = cov @ (design.T @ (wts * y))
    resid = y - design @ coef
    dof = len(x) - 2
    chi2_red = float(np.sum(wts * resid**2) / dof) if dof > 0 else None
    scaled = False
    if weighted:
        if chi2_red is not None and chi2_red > 1.0:
            cov = cov * chi2_red
            scaled = True
    elif dof > 0:
        cov = cov * chi2_red  # unweighted: errors come from the scatter only
        scaled = True
    else:
        cov = None
    intercept, slope = float(coef[0]), float(coef[1])
    ea = -slope * BOLTZMANN_EV_K
    ea_err = math.sqrt(cov[1, 1]) * BOLTZMANN_EV_K if cov is not None else None
    xs = np.array([1.0, 1.0 / at_temperature_k])
    ln_d = float(xs @ coef)
    d_at = math.exp(ln_d)
    iv68 = iv95 = None
    if cov is not None:
        sd = math.sqrt(float(xs @ cov @ xs))
        if scaled and dof > 0:
            from scipy.stats import t as student_t

            z68, z95 = student_t.ppf(0.841344746, dof), student_t.ppf(0.975, dof)
        else:
            z68, z95 = 1.0, 1.959963985
        iv68 = (math.exp(ln_d - z68 * sd), math.exp(ln_d + z68 * sd))
        iv95 = (math.exp(ln_d - z95 * sd), math.exp(ln_d + z95 * sd))
    if ea_err is not None and not ea > 2.0 * ea_err:
        notes.append(
            f"Ea = {ea:.3f} ± {ea_err:.3f} eV is not resolved as positive (< 2σ): the runs are "
            "too short or the temperature range too narrow for an activation energy, and the "
            "extrapolation is not meaningful"
        )
    sig = sig68 = sig95 = None
    if sigma_factor_ms_cm_k is not None:
        f = sigma_factor_ms_cm_k / at_temperature_k
        sig = d_at * f
        sig68 = (iv68[0] * f, iv68[1] * f) if iv68 else None
        sig95 = (iv95[0] * f, iv95[1] * f) if iv95 else None
    if min(temps) > at_temperature_k:
        notes.append(
            f"extrapolated from {min(temps):g}–{max(temps):g} K down to {at_temperature_k:g} K: "
            "assumes no change of mechanism"
        )
    return ArrheniusFit(
        n_temperatures=len(temps),
        temperatures_k=temps,
        diffusivities_cm2_s=ds,
        diffusivity_errs_cm2_s=es,
        excluded=excluded,
        weighted=weighted,
        ea_ev=ea,
        ea_err_ev=ea_err,
        ea_resolved=ea_is_resolved(ea, ea_err),
        d0_cm2_s=math.exp(intercept),
        ln_d0_err=math.sqrt(cov[0, 0]) if cov is not None else None,
        covariance=cov.tolist() if cov is not None else None,
        chi2_reduced=chi2_red,
        covariance_scaled=scaled,
        at_temperature_k=at_temperature_k,
        d_at_t_cm2_s=d_at,
        d_at_t_interval_cm2_s=iv68,
        d_at_t_interval95_cm2_s=iv95,
        sigma_at_t_ms_cm=sig,
        sigma_at_t_interval_ms_cm=sig68,
        sigma_at_t_interval95_ms_cm=sig95,
        warnings=notes,
    )


def fit_arrhenius_from_analyses(analyses: Sequence, *, at_temperature_k: float = 300.0, **kw):
    """Arrhenius fit from :class:`~ionflow.analysis.diffusion.DiffusionAnalysis` objects.

    σ(T*) uses the Nernst–Einstein factor n q²/k_B averaged over the diffusive runs.
    """
    factors = [
        a.conductivity_ms_cm * a.temperature_k / a.diffusivity_cm2_s
        for a in analyses
        if a.diffusivity_cm2_s and a.conductivity_ms_cm
    ]
    return fit_arrhenius(
        [a.temperature_k for a in analyses],
        [a.diffusivity_cm2_s for a in analyses],
        [a.diffusivity_err_cm2_s for a in analyses],
        at_temperature_k=at_temperature_k,
        sigma_factor_ms_cm_k=float(np.mean(factors)) if factors else None,
        labels=[f"{a.temperature_k:g} K ({a.regime})" for a in analyses],
        **kw,
    )
