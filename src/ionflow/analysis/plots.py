"""Plots of analysis results (matplotlib imported lazily, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ionflow.analysis.arrhenius import ArrheniusFit
from ionflow.analysis.diffusion import DiffusionAnalysis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, path: str | Path | None) -> None:
    """Lay out a figure this module created; save and close it when ``path`` is given."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)


def plot_msd(analysis: DiffusionAnalysis, path: str | Path | None = None, ax=None):
    """MSD (total and per axis) and MSCD vs lag time with the fit window shaded."""
    plt = _pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    c = analysis.msd
    t = np.array(c.time_ps)
    comps = np.array(c.msd_components_a2)
    ax.plot(t, c.msd_a2, color="k", lw=2, label=f"{analysis.species} MSD")
    for i, (axis, col) in enumerate(zip("xyz", ("tab:red", "tab:green", "tab:blue"), strict=True)):
        ax.plot(t, comps[:, i] * 3, color=col, lw=1, alpha=0.8, label=f"3×MSD$_{axis}$")
    ax.plot(t, c.mscd_a2, color="tab:purple", lw=1, ls="--", label="MSCD (Σ disp.)²/N")
    t0, t1 = analysis.fit_window_ps
    ax.axvspan(t0, t1, color="0.85", zorder=0, label="fit window")
    msd_total = np.array(c.msd_a2)

    def line(d_cm2_s: float, a: float, b: float, **style) -> None:
        slope = d_cm2_s * 6e4  # Å²/ps
        sel = (t >= a) & (t <= b)
        intercept = float(np.mean(msd_total[sel] - slope * t[sel])) if sel.any() else 0.0
        ax.plot([a, b], [intercept + slope * a, intercept + slope * b], **style)

    for k, loc in enumerate(analysis.local_diffusivities):
        line(
            loc.diffusivity_cm2_s,
            *loc.window_ps,
            color="tab:cyan",
            lw=1.5,
            ls=":",
            label="local slopes (early / late half)" if k == 0 else None,
        )
    if analysis.diffusivity_cm2_s is not None:
        line(analysis.diffusivity_cm2_s, t0, t1, color="orange", lw=2, label="fit")
        err = analysis.diffusivity_err_cm2_s or 0.0
        title = f"D* = {analysis.diffusivity_cm2_s:.3g} ± {err:.2g} cm²/s"
    elif analysis.regime == "subdiffusive" and len(analysis.local_diffusivities) == 2:
        early, late = analysis.local_diffusivities
        title = (
            f"subdiffusive: local D {early.diffusivity_cm2_s:.2g} → "
            f"{late.diffusivity_cm2_s:.2g} cm²/s (no D reported)"
        )
    else:
        title = f"regime: {analysis.regime} (no D reported)"
    ax.set_title(f"{analysis.temperature_k:g} K — {title}", fontsize=10)
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend(fontsize=7, loc="upper left")
    if own:
        _finish(plt, fig, path)
    return ax


def plot_arrhenius(
    fits: ArrheniusFit | Sequence[tuple[str, ArrheniusFit]],
    path: str | Path | None = None,
    ax=None,
    quantity: str = "D",
):
    """ln D vs 1000/T with error bars, the fit, and the extrapolated point with its intervals.

    ``fits`` is one fit or a list of (label, fit) to overlay (e.g. free vs pinned).
    """
    plt = _pyplot()
    if isinstance(fits, ArrheniusFit):
        fits = [("", fits)]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.0, 4.4), dpi=120)
    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    y_seen: list[float] = []
    for (label, fit), col in zip(fits, colors, strict=False):
        temps = np.array(fit.temperatures_k)
        d = np.array(fit.diffusivities_cm2_s)
        err = np.array([e if e is not None else 0.0 for e in fit.diffusivity_errs_cm2_s])
        ax.errorbar(
            1000 / temps,
            d,
            yerr=err,
            fmt="o",
            color=col,
            capsize=3,
            label=f"{label} Ea = {fit.ea_ev:.3f}"
            + (f" ± {fit.ea_err_ev:.3f} eV" if fit.ea_err_ev is not None else " eV"),
        )
        x_lo = 1000 / max(temps.max(), fit.at_temperature_k)
        x_hi = 1000 / min(temps.min(), fit.at_temperature_k)
        xs = np.linspace(x_lo, x_hi, 100)
        ax.plot(
            xs, fit.d0_cm2_s * np.exp(-fit.ea_ev / (8.617333262e-5 * 1000 / xs)), color=col, lw=1
        )
        xt = 1000 / fit.at_temperature_k
        if fit.d_at_t_interval95_cm2_s:
            lo, hi = fit.d_at_t_interval95_cm2_s
            ax.plot([xt, xt], [lo, hi], color=col, lw=1, alpha=0.5)
        if fit.d_at_t_interval_cm2_s:
            lo, hi = fit.d_at_t_interval_cm2_s
            ax.plot([xt, xt], [lo, hi], color=col, lw=4, alpha=0.6)
        ax.plot([xt], [fit.d_at_t_cm2_s], marker="D", color=col, mfc="white")
        y_seen += [*(d - err).clip(min=d * 0.1), *(d + err), fit.d_at_t_cm2_s]
        y_seen += list(fit.d_at_t_interval_cm2_s or ())
    ax.set_yscale("log")
    if y_seen:  # frame the data and 68 % intervals; a wide 95 % bar runs off the axes
        ax.set_ylim(min(y_seen) / 3.0, max(y_seen) * 3.0)
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("D (cm²/s)")
    ax.set_title("Arrhenius (◇ extrapolation; bars: 68 % thick, 95 % thin)", fontsize=9)
    ax.legend(fontsize=8)
    if own:
        _finish(plt, fig, path)
    return ax
