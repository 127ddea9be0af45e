"""A campaign report: one self-contained HTML page plus a Markdown version.

``write_report(source, out_dir)`` writes

* ``out_dir/index.html`` -- summary table (with the σ basis: tracer-based), then per
  material: the Arrhenius plot (free and pinned fits on the same axes, 300 K extrapolation
  with its 68 %/95 % bars), the σ(300 K) extrapolation with its intervals (only when Ea is
  resolved), the runs (D* with its statistical/systematic error split, D_σ or its upper
  bound, Haven ratio with its 68 % interval), the free-vs-pinned ratio per temperature
  with its 68 %/95 % intervals, the MSD plots of every run, and notes
  (subdiffusive/caged/insufficient runs with their reasons, missing pinned control, fit
  caveats, analysis warnings). Images are embedded as base64 PNG and there is no script,
  font or style sheet from elsewhere: the file opens anywhere on its own;
* ``out_dir/report.md`` -- the same content in Markdown, images referenced relatively as
  ``figures/*.png`` (so zip the directory);
* ``out_dir/figures/*.png`` -- the figures.

Summaries come from the ``summaries`` collection, MSD curves from the analysis job outputs
in the JobStore (see :func:`ionflow.results.iter_run_analyses`).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ionflow.analysis.arrhenius import BOLTZMANN_EV_K
from ionflow.errors import UserInputError, printable
from ionflow.results import (
    RunAnalysis,
    ea_resolved,
    export_density,
    format_number,
    iter_run_analyses,
    known_campaigns,
    query_summaries,
    regimes_text,
    sigma_300k_note,
    sigma_300k_quoted,
)
from ionflow.summary import SIGMA_BASIS, MaterialSummary, RunSummary

__all__ = ["Figure", "MaterialSection", "ReportPaths", "build_sections", "write_report"]

FIGURES_DIR = "figures"
MSD_COLUMNS = 3


@dataclass
class Figure:
    """A rendered PNG."""

    filename: str
    caption: str
    png: bytes


@dataclass
class MaterialSection:
    """Everything the report shows for one material."""

    summary: MaterialSummary
    anchor: str
    runs: list[RunAnalysis]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportPaths:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Path]
    n_materials: int


# ----------------------------------------------------------------------------- formatting


def _g(x: float | None, digits: int = 3) -> str:
    return format_number(x, digits)


def _pm(x: float | None, e: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return _g(x, digits) + (f" ± {_g(e, 2)}" if e is not None else "")


def _ea(x: float | None, e: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" + (f" ± {e:.3f}" if e is not None else "")


def _interval(iv: tuple[float, float] | None) -> str:
    return "—" if not iv else f"[{_g(iv[0], 2)}, {_g(iv[1], 2)}]"


def _with_interval(x: float | None, iv: tuple[float, float] | None, digits: int = 3) -> str:
    """``x [lo, hi]`` (a 68 % interval, asymmetric), ``—`` for None."""
    if x is None:
        return "—"
    return _g(x, digits) + (f" {_interval(iv)}" if iv else "")


def _charge(r: RunSummary) -> str:
    """D_σ ± err when resolved, else its 95 % upper bound."""
    if r.charge_diffusivity_cm2_s is not None:
        return _pm(r.charge_diffusivity_cm2_s, r.charge_diffusivity_err_cm2_s)
    if r.charge_diffusivity_upper_cm2_s is not None:
        return f"< {_g(r.charge_diffusivity_upper_cm2_s, 2)} (not resolved)"
    return "—"


def _err_split(r: RunSummary) -> str:
    """Statistical / window-systematic parts of the D* error."""
    if r.diffusivity_stat_err_cm2_s is None and r.diffusivity_sys_err_cm2_s is None:
        return "—"
    return f"{_g(r.diffusivity_stat_err_cm2_s, 2)} / {_g(r.diffusivity_sys_err_cm2_s, 2)}"


NOT_QUOTED = "— (Ea not resolved)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ----------------------------------------------------------------------------- figures


MECHANISM_COLUMNS = (
    "T (K)",
    "variant",
    "τ2 (ps)",
    "VDOS exponent n",
    "D_VACF (cm²/s)",
    "percolation dim",
    "Γ (ps⁻¹)",
    "Γ inter-cage (ps⁻¹)",
    "f",
    "density file",
)


def _has_mechanism(s: MaterialSummary) -> bool:
    return bool(s.mechanism_verdict) or any(
        r.rotating_group or r.tau_p2_reason or r.density_file or r.jump_rate_per_ps is not None
        for v in (s.free, s.pinned)
        if v is not None
        for r in v.runs
    )


def _tau_text(r: RunSummary) -> str:
    if r.tau_p2_ps is not None:
        return _pm(r.tau_p2_ps, r.tau_p2_err_ps)
    if r.rotating_group and r.tau_p2_reason and "no reorientation" in r.tau_p2_reason:
        return "no reorientation"
    return "—"


def _mechanism_cells(s: MaterialSummary) -> list[list[str]]:
    """Free and pinned side by side at each temperature."""
    runs = [r for v in (s.free, s.pinned) if v is not None for r in v.runs]
    runs.sort(key=lambda r: (r.temperature_k, r.variant != "free"))
    return [
        [
            f"{r.temperature_k:g}",
            r.variant,
            _tau_text(r),
            _pm(r.vdos_low_frequency_exponent, r.vdos_low_frequency_exponent_err, 2),
            _pm(r.diffusivity_from_vacf_cm2_s, r.diffusivity_from_vacf_err_cm2_s),
            "—" if r.percolation_dimension is None else f"{r.percolation_dimension}-D",
            _pm(r.jump_rate_per_ps, r.jump_rate_err_per_ps),
            _g(r.inter_cage_jump_rate_per_ps),
            _pm(r.correlation_factor, r.correlation_factor_err, 2),
            r.density_file or "—",
        ]
        for r in runs
    ]


def _mechanism_lines(s: MaterialSummary) -> list[str]:
    lines = [f"Mechanism: {s.mechanism_verdict or 'not analysed'}"]
    if s.isolated_fraction is not None:
        iso = "; ".join(
            f"{a.count} {a.element} on {a.wyckoff or '?'} ({a.site_symmetry}"
            + (f", spacing {a.spacing_a:.2f} Å" if a.spacing_a is not None else "")
            + ")"
            for a in s.isolated_anions
        )
        groups = ", ".join(f"{k} ×{n}" for k, n in s.anion_groups.items()) or "none"
        lines.append(
            f"Isolated anions: fraction {s.isolated_fraction:.2f}; {iso or 'none'}; "
            f"polyanion groups: {groups}"
        )
    if s.percolation_dimension is not None:
        lines.append(f"Li density percolates in {s.percolation_dimension}-D (free runs, highest)")
    for v in (s.free, s.pinned):
        if v is not None and v.jump_activation_enthalpy_ev is not None:
            err = v.jump_activation_enthalpy_err_ev
            lines.append(
                f"Jump rate Γ(T) ({v.variant}): ΔH = {v.jump_activation_enthalpy_ev:.3f}"
                + (f" ± {err:.3f}" if err is not None else "")
                + f" eV, attempt frequency ν0 = {v.attempt_frequency_thz:.3g} THz"
                + (f" ({v.jump_arrhenius_note})" if v.jump_arrhenius_note else "")
            )
    with_file = [
        (v.variant, r.temperature_k)
        for v in (s.free, s.pinned)
        if v is not None
        for r in v.runs
        if r.density_file
    ]
    if with_file:
        variant, t = with_file[0]
        lines.append(
            f"Density files (CHGCAR, VESTA) of {len(with_file)} run(s) in the database: "
            f"ionflow export-density --campaign {s.campaign} --material {s.material} "
            f"--temperature-k {t:g} --variant {variant} --out {s.material}_{variant}_{t:g}K.CHGCAR"
        )
    return lines


def _mechanism_figure(
    s: MaterialSummary, runs: list[RunAnalysis], stem: str, dpi: int
) -> Figure | None:
    """C2(t) of the polyanions and the mobile-ion VDOS, free (solid) vs pinned (dashed)."""
    rot = [(r, r.results["rotation"]) for r in runs if r.results.get("rotation") is not None]
    rot = [(r, x) for r, x in rot if x.groups]
    vd = [(r, r.results["vdos"]) for r in runs if r.results.get("vdos") is not None]
    if not rot and not vd:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=dpi, squeeze=False)
    ax_r, ax_v = axes[0]
    for r, x in sorted(rot, key=lambda p: (p[0].variant, p[0].temperature_k)):
        g = max(x.groups, key=lambda g: g.n_groups)
        ax_r.plot(g.time_ps, g.p2_acf, "-" if r.variant == "free" else "--",
                  label=f"{g.formula} {r.variant} {r.temperature_k:g} K")  # fmt: skip
    ax_r.set(xlabel="t (ps)", ylabel="C2(t)", title="polyanion reorientation")
    for r, x in sorted(vd, key=lambda p: (p[0].variant, p[0].temperature_k)):
        g = x.vdos.get(x.mobile_species)
        if g is not None:
            ax_v.plot(x.frequency_thz, g, "-" if r.variant == "free" else "--",
                      label=f"{r.variant} {r.temperature_k:g} K")  # fmt: skip
    ax_v.set(xlabel="ν (THz)", ylabel="VDOS (states/THz)", title=f"{s.mobile_species} VDOS")
    for ax in (ax_r, ax_v):
        if ax.get_lines():
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    fig.suptitle(f"{s.material}: mechanism, free (solid) vs pinned (dashed)", fontsize=10)
    fig.tight_layout()
    return Figure(
        f"{stem}_mechanism.png",
        f"{s.material}: orientational autocorrelation C2(t) of the polyanions and the "
        f"{s.mobile_species} vibrational density of states, free vs pinned runs.",
        _png(fig),
    )


#: the per-run mechanism numbers drawn against T: (field, error field, axis label, log y)
MECHANISM_SERIES = (
    ("tau_p2_ps", "tau_p2_err_ps", "τ2 of the polyanions (ps)", True),
    ("jump_rate_per_ps", "jump_rate_err_per_ps", "jump rate Γ (ps⁻¹ per ion)", True),
    ("inter_cage_jump_rate_per_ps", None, "inter-cage jump rate (ps⁻¹ per ion)", True),
    ("correlation_factor", "correlation_factor_err", "correlation factor f", False),
    ("percolation_dimension", None, "Li density percolation dimension", False),
)
_VARIANT_STYLE = {"free": ("tab:blue", "o", "-"), "pinned": ("tab:orange", "s", "--")}


def _mechanism_vs_t_figure(s: MaterialSummary, stem: str, dpi: int) -> Figure | None:
    """τ2, Γ (with its Arrhenius ν0·exp(−ΔH/kT)), inter-cage Γ, f and the percolation
    dimension against temperature, free vs pinned."""
    variants = [v for v in (s.free, s.pinned) if v is not None]
    panels = [
        p
        for p in MECHANISM_SERIES
        if sum(getattr(r, p[0]) is not None for v in variants for r in v.runs) >= 1
    ]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.3 * len(panels), 3.3), dpi=dpi, squeeze=False
    )
    for ax, (name, err_name, label, log) in zip(axes[0], panels, strict=True):
        for v in variants:
            color, marker, ls = _VARIANT_STYLE[v.variant]
            pts = [
                (r.temperature_k, getattr(r, name), getattr(r, err_name) if err_name else None)
                for r in v.runs
                if getattr(r, name) is not None and (not log or getattr(r, name) > 0)
            ]
            if not pts:
                continue
            pts.sort()
            t = [p[0] for p in pts]
            y = [p[1] for p in pts]
            e = [p[2] or 0.0 for p in pts]
            ax.errorbar(t, y, yerr=e, color=color, marker=marker, ls=ls, ms=4, capsize=2,
                        label=v.variant)  # fmt: skip
            if name == "jump_rate_per_ps" and v.attempt_frequency_thz is not None:
                tt = [min(t) + (max(t) - min(t)) * k / 40 for k in range(41)]
                ea = v.jump_activation_enthalpy_ev or 0.0
                fit = [v.attempt_frequency_thz * math.exp(-ea / (BOLTZMANN_EV_K * x)) for x in tt]
                ax.plot(tt, fit, color=color, lw=0.8, ls=":",
                        label=f"{v.variant}: ΔH = {ea:.2f} eV")  # fmt: skip
        if name == "tau_p2_ps":  # frozen groups have no τ2: say so where it would be
            frozen = [
                f"{v.variant}: no reorientation at "
                + ", ".join(f"{r.temperature_k:g}" for r in v.runs)
                + " K"
                for v in variants
                if v.runs and all(r.tau_p2_reason and "no reorientation" in r.tau_p2_reason
                                  for r in v.runs)
            ]  # fmt: skip
            if frozen:
                ax.text(0.03, 0.03, "\n".join(frozen), transform=ax.transAxes, fontsize=6)
        if log:
            ax.set_yscale("log")
        if name == "percolation_dimension":
            ax.set_ylim(-0.3, 3.3)
            ax.set_yticks([0, 1, 2, 3])
        ax.set(xlabel="T (K)", ylabel=label)
        ax.legend(fontsize=6)
    fig.suptitle(f"{s.material}: mechanism vs temperature, free vs pinned", fontsize=10)
    fig.tight_layout()
    names = ", ".join(p[2] for p in panels)
    fitted = any(v.attempt_frequency_thz is not None for v in variants) and "jump_rate_per_ps" in {
        p[0] for p in panels
    }
    return Figure(
        f"{stem}_mechanism_vs_t.png",
        f"{s.material}: {names} against temperature (free ●, pinned ■; 1σ bars"
        + ("; dotted: the jump-rate Arrhenius fit Γ = ν0·exp(−ΔH/kT))." if fitted else ")."),
        _png(fig),
    )


def _pathway_figures(
    source: Any, s: MaterialSummary, runs: list[RunAnalysis], stem: str
) -> tuple[list[Figure], str | None]:
    """The mobile-ion density (projection with its sites; percolation dimension against the
    iso-level) and the jump network of the hottest free run with a stored density (pinned
    when no free run has one); the density comes from its CHGCAR in GridFS. Returns the
    figures and a note when the density file could not be read."""
    with_density = [r for r in runs if r.results.get("density") is not None]
    if not with_density:
        return [], None
    run = max(with_density, key=lambda r: (r.variant == "free", r.temperature_k))
    what = f"{s.material} {run.variant} {run.temperature_k:g} K"
    try:
        lattice, values = _stored_density(source, s, run)
    except (UserInputError, OSError, ValueError) as exc:
        return [], f"Density of {what} not drawn: {printable(str(exc))}"
    from ionflow.analysis.density import plot_density, smooth_density

    dens = run.results["density"]
    rel = values / max(float(values.mean()), 1e-300)  # CHGCAR: mean over the grid = N ions
    fig = plot_density(dens, smooth_density(rel, lattice, dens.smooth_a), lattice)
    fig.suptitle(f"{what}: {dens.species} density (drift-removed framework frame)", fontsize=10)
    fig.tight_layout()
    figs = [
        Figure(
            f"{stem}_density.png",
            f"{dens.species} probability density of {what}, projected along c (log scale; "
            f"white: the {dens.n_sites} sites) and the dimension of the connected network "
            f"above each iso-level (percolates in {dens.percolation_dimension}-D at "
            f"{dens.iso_level:g}ρ̄). CHGCAR: ionflow export-density.",
            _png(fig),
        )
    ]
    jumps = run.results.get("jumps")
    if jumps is not None:
        from ionflow.analysis.jumps import plot_jumps

        fig = plot_jumps(jumps, lattice)
        fig.suptitle(f"{what}: jump network", fontsize=10)
        fig.tight_layout()
        cages = (
            f"; red: between cages ({jumps.cage_source or 'given centres'})"
            if jumps.n_inter_cage_jumps is not None
            else ""
        )
        figs.append(
            Figure(
                f"{stem}_jumps.png",
                f"Site-to-site jumps of {what} projected along c (line width ∝ log jumps"
                f"{cages}) and the jump-length histogram.",
                _png(fig),
            )
        )
    return figs, None


def _stored_density(source: Any, s: MaterialSummary, run: RunAnalysis):
    """(lattice, CHGCAR values) of a run's stored density file."""
    import tempfile

    from pymatgen.io.vasp import Chgcar

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_density(
            source, Path(tmp) / "density.CHGCAR", campaign=s.campaign, material=s.material,
            variant=run.variant, temperature_k=run.temperature_k,
        )  # fmt: skip
        chg = Chgcar.from_file(str(path))
    return chg.structure.lattice.matrix, chg.data["total"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _arrhenius_figure(s: MaterialSummary, stem: str, dpi: int) -> Figure | None:
    from ionflow.analysis.plots import plot_arrhenius

    fits = [
        (label, v.arrhenius)
        for label, v in (("free", s.free), ("pinned", s.pinned))
        if v is not None and v.arrhenius is not None
    ]
    if not fits:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=dpi)
    plot_arrhenius(fits, ax=ax)
    ax.set_title(f"{s.material} ({s.formula}) — " + ax.get_title(), fontsize=9)
    fig.tight_layout()
    labels = " and ".join(label for label, _ in fits)
    return Figure(
        f"{stem}_arrhenius.png",
        f"Arrhenius plot of {s.material}: {labels} D(T) with 1σ error bars, weighted fit, and "
        f"the extrapolation to {fits[0][1].at_temperature_k:g} K (◇; thick bar 68 %, thin 95 %).",
        _png(fig),
    )


def _msd_figure(
    s: MaterialSummary, variant: str, runs: list[RunAnalysis], stem: str, dpi: int
) -> Figure:
    from ionflow.analysis.plots import plot_msd

    plt = _pyplot()
    n = len(runs)
    ncols = min(MSD_COLUMNS, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), dpi=dpi, squeeze=False
    )
    for ax, run in zip(axes.flat, runs, strict=False):
        plot_msd(run.analysis, ax=ax)
        ax.set_title(f"{variant} — " + ax.get_title(), fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{s.material}: {s.mobile_species} MSD, {variant} runs", fontsize=10)
    fig.tight_layout()
    temps = ", ".join(f"{r.temperature_k:g} K" for r in runs)
    return Figure(
        f"{stem}_msd_{variant}.png",
        f"MSD of {s.mobile_species} in {s.material}, {variant} runs at {temps}: total, 3×per "
        "axis, MSCD, fit window (grey) and the fitted line.",
        _png(fig),
    )


# ----------------------------------------------------------------------------- content


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _notes(s: MaterialSummary, runs: list[RunAnalysis]) -> list[str]:
    notes = [str(n) for n in (getattr(s, "notes", None) or [])]  # summary caveats (schema ≥ 1.0)
    if s.pinned is None:
        notes.append(f"No pinned control: {s.pinned_reason or 'not requested'}")
    for v in (s.free, s.pinned):
        if v is None:
            continue
        for r in v.runs:
            if r.regime != "diffusive":
                notes.append(
                    f"{v.variant} {r.temperature_k:g} K is {r.regime}: {r.regime_reason} "
                    "(no D or σ reported; left out of the Arrhenius fit)."
                )
        if v.arrhenius is None:
            notes.append(f"{v.variant}: no Arrhenius fit — {v.arrhenius_note or 'no data'}")
        elif v.arrhenius_note:
            notes.append(f"{v.variant} Arrhenius fit: {v.arrhenius_note}")
    from ionflow.analysis import ANALYSES

    for run in runs:
        for w in run.analysis.warnings:
            notes.append(f"{run.variant} {run.temperature_k:g} K analysis: {w}")
        for kind, result in run.results.items():
            line = ANALYSES[kind].describe(result)
            if line:
                notes.append(f"{run.variant} {run.temperature_k:g} K {kind}: {line}")
    expected = {
        (v.variant, r.temperature_k) for v in (s.free, s.pinned) if v is not None for r in v.runs
    }
    found = {(r.variant, r.temperature_k) for r in runs}
    missing = sorted(expected - found)
    if missing:
        which = ", ".join(f"{v} {t:g} K" for v, t in missing)
        notes.append(f"MSD curves not found in the JobStore for: {which}")
    return [_sentence(n) for n in notes]


def build_sections(
    source: Any, *, campaign: str | None = None, dpi: int = 100
) -> list[MaterialSection]:
    """Query the summaries (and their runs' analyses) and render every figure."""
    summaries = query_summaries(source, campaign=campaign, sort="campaign", descending=False)
    if not summaries:
        campaigns = known_campaigns(source)
        if campaign is not None and campaigns:
            raise UserInputError(
                f"no summaries of campaign {campaign!r}; campaigns: {', '.join(campaigns)}"
            )
        raise UserInputError("no summaries stored yet: nothing to report")
    sections, used = [], set()
    for s, runs in iter_run_analyses(source, summaries):
        stem = _slug(f"{s.campaign}_{s.material}")
        while stem in used:
            stem += "_"
        used.add(stem)
        sec = MaterialSection(s, anchor=stem, runs=runs)
        fig = _arrhenius_figure(s, stem, dpi)
        if fig is not None:
            sec.figures.append(fig)
        for variant in ("free", "pinned"):
            vr = [r for r in runs if r.variant == variant]
            if vr:
                sec.figures.append(_msd_figure(s, variant, vr, stem, dpi))
        mech = _mechanism_figure(s, runs, stem, dpi)
        if mech is not None:
            sec.figures.append(mech)
        vs_t = _mechanism_vs_t_figure(s, stem, dpi)
        if vs_t is not None:
            sec.figures.append(vs_t)
        pathways, pathway_note = _pathway_figures(source, s, runs, stem)
        sec.figures += pathways
        sec.notes = _notes(s, runs) + ([pathway_note] if pathway_note else [])
        sections.append(sec)
    return sections


#: Headings of the report's summary table: for people, formatted cells (not the query
#: fields of :data:`ionflow.query_index.QUERY_FIELDS` nor the CSV columns, on purpose).
SUMMARY_COLUMNS = (
    "material",
    "formula",
    "campaign",
    "engine",
    "Ea (eV)",
    "σ(300 K) mS/cm",
    "68 % interval",
    "95 % interval",
    "regimes (free)",
    "pinned Ea (eV)",
    "pinned verdict",
)


def _summary_cells(s: MaterialSummary) -> list[str]:
    quoted = sigma_300k_quoted(s)
    return [
        s.material,
        s.formula,
        s.campaign,
        s.engine_md,
        _ea(s.ea_ev, s.ea_err_ev),
        _g(s.sigma_300k_ms_cm) if quoted else (NOT_QUOTED if sigma_300k_note(s) else "—"),
        _interval(s.free.sigma_300k_interval_ms_cm if quoted else None),
        _interval(s.free.sigma_300k_interval95_ms_cm if quoted else None),
        regimes_text(s),
        _ea(s.pinned_ea_ev, s.pinned.ea_err_ev if s.pinned else None),
        s.pinned_verdict,
    ]


def _extrapolation_lines(s: MaterialSummary) -> list[str]:
    lines = []
    for v in (s.free, s.pinned):
        if v is None:
            continue
        fit = v.arrhenius
        if fit is None:
            lines.append(f"{v.variant}: no extrapolation ({v.arrhenius_note or 'no fit'})")
            continue
        t = fit.at_temperature_k
        text = (
            f"{v.variant}: Ea = {_ea(fit.ea_ev, fit.ea_err_ev)} eV from "
            f"{fit.n_temperatures} temperatures ({', '.join(f'{x:g}' for x in fit.temperatures_k)}"
            " K)"
        )
        if ea_resolved(v) is not True:  # an extrapolation along an unresolved slope
            lines.append(f"{text}; D({t:g} K), σ({t:g} K) {NOT_QUOTED}")
            continue
        text += f"; D({t:g} K) = {_g(fit.d_at_t_cm2_s)} cm²/s, 68 % " + _interval(
            fit.d_at_t_interval_cm2_s
        )
        if fit.sigma_at_t_ms_cm is not None:
            text += (
                f"; σ({t:g} K) = {_g(fit.sigma_at_t_ms_cm)} mS/cm, 68 % "
                f"{_interval(fit.sigma_at_t_interval_ms_cm)}, 95 % "
                f"{_interval(fit.sigma_at_t_interval95_ms_cm)}"
            )
        lines.append(text)
    return lines + _compute_lines(s)


def _compute_lines(s: MaterialSummary) -> list[str]:
    """MD compute spent vs the md.target budget, and the target's decisions in order."""
    out = []
    if s.core_hours is not None:
        text = f"MD compute: {s.core_hours:.3g} core-h"
        if s.budget_core_hours is not None:
            text += f" spent of a {s.budget_core_hours:g} core-h budget (free + pinned)"
        if s.target_met is not None:
            text += f"; precision target {'met' if s.target_met else 'not met'}"
        out.append(text)
    return out + [f"decision: {line}" for line in s.decisions]


RUN_COLUMNS = (
    "variant",
    "T (K)",
    "regime",
    "D* (cm²/s)",
    "D* err stat / sys",
    "D_σ (cm²/s)",
    "σ tracer (mS/cm)",
    "σ from D_σ (mS/cm)",
    "Haven [68 %]",
    "hops",
    "ps",
)


def _run_cells(s: MaterialSummary) -> list[list[str]]:
    rows = []
    for v in (s.free, s.pinned):
        if v is None:
            continue
        for r in v.runs:
            rows.append(
                [
                    v.variant,
                    f"{r.temperature_k:g}",
                    r.regime,
                    _pm(r.diffusivity_cm2_s, r.diffusivity_err_cm2_s),
                    _err_split(r),
                    _charge(r),
                    _pm(r.conductivity_ms_cm, r.conductivity_err_ms_cm),
                    _pm(r.charge_conductivity_ms_cm, r.charge_conductivity_err_ms_cm),
                    _with_interval(r.haven_ratio, r.haven_ratio_interval, 2),
                    f"{r.n_eff_hops:.0f}",
                    f"{r.duration_ps:g}",
                ]
            )
    return rows


COMPARISON_COLUMNS = ("T (K)", "D_free / D_pinned [68 %]", "95 % interval", "z", "verdict")


def _comparison_cells(s: MaterialSummary) -> list[list[str]]:
    return [
        [
            f"{c.temperature_k:g}",
            # summaries of schema 1.0 have a symmetric 1σ instead of the intervals
            _with_interval(c.ratio, c.ratio_interval)
            if c.ratio_interval or c.ratio is None
            else _pm(c.ratio, c.ratio_err),
            _interval(c.ratio_interval95),
            "—" if c.z_score is None else f"{c.z_score:.1f}",
            c.verdict,
        ]
        for c in s.comparisons
    ]


def _basis_text(sections: list[MaterialSection]) -> str:
    bases = sorted({sec.summary.sigma_basis or SIGMA_BASIS for sec in sections})
    return (
        f"σ quoted: {'; '.join(bases)}. σ(300 K) is the free-variant Arrhenius extrapolation "
        "of D* with its 68 % and 95 % intervals, quoted only when Ea is resolved (Ea > 2σ); "
        "regimes are those of the free runs."
    )


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1150px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.meta{color:#666;font-size:.9em}
ul.notes li{margin:.2em 0}.verdict{font-weight:600}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(columns, rows, cls: str, link_first: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text = _e(cell)
            if j == 0 and link_first is not None:
                text = f'<a href="#{_e(link_first[i])}">{text}</a>'
            klass = ' class="num"' if re.match(r"^[\d.+\-−—\[\]eE ±,×]+$", str(cell)) else ""
            cells.append(f"<td{klass}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table>"
    )


def _html(sections: list[MaterialSection], title: str, meta: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(meta)}</p>',
        '<h2 id="summary">Summary</h2>',
        f"<p>{_e(_basis_text(sections))}</p>",
        _html_table(
            SUMMARY_COLUMNS,
            [_summary_cells(sec.summary) for sec in sections],
            "summary",
            [sec.anchor for sec in sections],
        ),
    ]
    for sec in sections:
        s = sec.summary
        parts += [
            f'<section class="material" id="{_e(sec.anchor)}">',
            f"<h2>{_e(s.material)} — {_e(s.formula)} <small>({_e(s.campaign)})</small></h2>",
            f'<p class="meta">engine {_e(s.engine_md)} (relax {_e(s.engine_relax)}), '
            f"{s.n_atoms_supercell} atoms in the supercell, mobile {_e(s.mobile_species)}, "
            f"{_e(s.anion_summary or 'no anion summary')}</p>",
            f'<p class="verdict">Pinned control: {_e(s.pinned_verdict)}</p>',
            "<h3>300 K extrapolation</h3><ul>",
            *(f"<li>{_e(line)}</li>" for line in _extrapolation_lines(s)),
            "</ul>",
            "<h3>Runs</h3>",
            _html_table(RUN_COLUMNS, _run_cells(s), "runs"),
        ]
        if s.comparisons:
            parts += [
                "<h3>Free vs pinned</h3>",
                _html_table(COMPARISON_COLUMNS, _comparison_cells(s), "comparisons"),
            ]
        if _has_mechanism(s):
            parts += [
                "<h3>Mechanism</h3><ul>",
                *(f"<li>{_e(line)}</li>" for line in _mechanism_lines(s)),
                "</ul>",
                _html_table(MECHANISM_COLUMNS, _mechanism_cells(s), "mechanism"),
            ]
        for fig in sec.figures:
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_e(fig.caption)}" '
                f'data-file="{_e(FIGURES_DIR + "/" + fig.filename)}">'
                f"<figcaption>{_e(fig.caption)}</figcaption></figure>"
            )
        if sec.notes:
            parts.append('<h3>Notes</h3><ul class="notes">')
            parts += [f"<li>{_e(n)}</li>" for n in sec.notes]
            parts.append("</ul>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- Markdown


def _md_text(x: Any) -> str:
    """Text read back from the database, inert in Markdown: one line (no block can start),
    control characters escaped, no raw HTML (``<`` before a tag name, ``/``, ``!`` or ``?``
    becomes ``&lt;``) and no link or image (``](`` is escaped)."""
    text = printable(" ".join(str(x).split()))
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text).replace("](", "\\](")


def _md_cell(x: Any) -> str:
    return _md_text(str(x).replace("\\", "\\\\").replace("|", "\\|"))


def _md_table(columns, rows) -> list[str]:
    out = ["| " + " | ".join(_md_cell(c) for c in columns) + " |"]
    out.append("|" + "|".join("---" for _ in columns) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def _markdown(sections: list[MaterialSection], title: str, meta: str) -> str:
    lines = [f"# {_md_text(title)}", "", f"_{meta}_", "", "## Summary", ""]
    lines += [_md_text(_basis_text(sections)), ""]
    lines += _md_table(SUMMARY_COLUMNS, [_summary_cells(sec.summary) for sec in sections])
    for sec in sections:
        s = sec.summary
        lines += [
            _md_text(f"## {s.material} — {s.formula} ({s.campaign})"),
            "",
            _md_text(
                f"engine {s.engine_md} (relax {s.engine_relax}), {s.n_atoms_supercell} atoms, "
                f"mobile {s.mobile_species};"
            )
            + f" **pinned control: {_md_text(s.pinned_verdict)}**",
            "",
            "### 300 K extrapolation",
            "",
            *(f"- {_md_text(line)}" for line in _extrapolation_lines(s)),
            "",
            "### Runs",
            "",
            *_md_table(RUN_COLUMNS, _run_cells(s)),
        ]
        if s.comparisons:
            lines += [
                "### Free vs pinned",
                "",
                *_md_table(COMPARISON_COLUMNS, _comparison_cells(s)),
            ]
        if _has_mechanism(s):
            lines += [
                "### Mechanism",
                "",
                *(f"- {_md_text(line)}" for line in _mechanism_lines(s)),
                "",
                *_md_table(MECHANISM_COLUMNS, _mechanism_cells(s)),
            ]
        for fig in sec.figures:
            lines += [
                f"![{_md_cell(fig.caption)}]({FIGURES_DIR}/{fig.filename})",
                "",
                f"*{_md_text(fig.caption)}*",
                "",
            ]
        if sec.notes:
            lines += ["### Notes", "", *(f"- {_md_text(n)}" for n in sec.notes), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point


def write_report(
    source: Any, out_dir: Path | str, *, campaign: str | None = None, dpi: int = 100
) -> ReportPaths:
    """Write ``index.html``, ``report.md`` and ``figures/`` into ``out_dir``.

    Parameters
    ----------
    source
        ResolvedDatabase or pymongo/mongomock Database (summaries + JobStore outputs).
    out_dir
        Output directory (created; existing report files are overwritten).
    campaign
        Only this campaign (default: every campaign in the database).
    dpi
        Figure resolution.

    Raises
    ------
    UserInputError
        Nothing to report (no summaries, or none of ``campaign``).
    """
    from ionflow import __version__

    sections = build_sections(source, campaign=campaign, dpi=dpi)
    out = Path(out_dir)
    figdir = out / FIGURES_DIR
    figdir.mkdir(parents=True, exist_ok=True)
    written = []
    for sec in sections:
        for fig in sec.figures:
            path = figdir / fig.filename
            path.write_bytes(fig.png)
            written.append(path)
    campaigns = sorted({sec.summary.campaign for sec in sections})
    title = (
        f"ionflow report — campaign {campaigns[0]}"
        if len(campaigns) == 1
        else (f"ionflow report — {len(campaigns)} campaigns")
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{len(sections)} material(s); generated {now} by ionflow {__version__}"
    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(_html(sections, title, meta), encoding="utf-8")
    md_path.write_text(_markdown(sections, title, meta), encoding="utf-8")
    return ReportPaths(html_path, md_path, written, len(sections))
