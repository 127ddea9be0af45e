"""``ionflow anions`` (isolated-anion descriptors of a structure) and ``ionflow rotation``
(polyanion orientational autocorrelations of a trajectory)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app
from ionflow.cli.analysis_cmds import (
    DriftOpt,
    FormatOpt,
    JsonOpt,
    QuietOpt,
    SkipFramesOpt,
    SpeciesOpt,
    StepSkipOpt,
    StructureOpt,
    TemperatureOpt,
    TimeStepOpt,
    TrajArg,
    run_streamed,
)
from ionflow.errors import UserInputError


def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2,5'."""
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


def _span(values: list[float], spec: str) -> str:
    """'—', one value, or 'mean±half-range' when they differ in the shown digits."""
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    if format(lo, spec) == format(hi, spec):
        return format(lo, spec)
    return f"{format((lo + hi) / 2, spec)}±{format((hi - lo) / 2, spec)}"


@app.command("anions")
def anions_cmd(
    structure: Annotated[Path, typer.Argument(help="Structure file (CIF, POSCAR, pymatgen JSON)")],
    species: Annotated[str, typer.Option(help="Mobile species (left out of the framework)")] = "Li",
    oxidation_states: Annotated[
        str | None,
        typer.Option(
            help="Formal charges for the Ewald sum, every element, e.g. Li=1,P=5,S=-2,Cl=-1 "
            "(their signs then decide the anions); default: guessed"
        ),
    ] = None,
    symprec: Annotated[float, typer.Option(help="Symmetry tolerance for spglib, Å")] = 0.01,
    per_site: Annotated[
        bool, typer.Option("--per-site", help="Table: one row per site (default: per class)")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Isolated vs bonded anions: site symmetry, spacing, Ewald site energy (seed 003)."""
    from ionflow.analysis.anions import describe_anions, parse_oxidation_states
    from ionflow.structure import load_structure

    if not (math.isfinite(symprec) and symprec > 0):
        raise UserInputError(f"--symprec must be > 0 Å, got {symprec}")
    oxi = parse_oxidation_states(oxidation_states) if oxidation_states is not None else None
    struct = load_structure(structure)
    try:
        from pymatgen.core import Element

        Element(species)
    except ValueError:
        raise UserInputError(f"--species {species!r} is not a chemical element") from None
    report = describe_anions(struct, species, oxi, symprec)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        tab = Table(
            title=f"Anions of {structure.name} ({report.formula}), mobile {species}; "
            f"framework {report.framework_space_group}, symprec {report.symprec:g} Å"
        )
        for col in (
            "sites", "el", "bonded to", "site sym.", "Wyck.", "iso. dist Å", "oxi", "Ewald eV",
        ):  # fmt: skip
            tab.add_column(col, justify="left" if col in ("sites", "el") else "right")
        rows: dict[tuple, list] = {}
        for a in report.anions:
            key = (a.element, a.bonded_to, a.site_symmetry, a.site_symmetry_schoenflies, a.wyckoff)
            rows.setdefault((a.index,) if per_site else key, []).append(a)
        for sites in rows.values():
            a = sites[0]
            dist = [x.nearest_isolated_anion_distance_a for x in sites]
            dist = [d for d in dist if d is not None]
            ew = [x.ewald_site_energy_ev for x in sites if x.ewald_site_energy_ev is not None]
            tab.add_row(
                _ranges([x.index for x in sites]),
                a.element,
                a.bonded_to or "isolated",
                f"{a.site_symmetry} ({a.site_symmetry_schoenflies})",
                a.wyckoff,
                _span(dist, ".2f"),
                _fmt(a.oxidation_state, "+g"),
                _span(ew, ".2f"),
            )
        console = Console()
        console.print(tab)
        console.print(report.describe())
        console.print(
            f"groups: {report.groups or 'none'}; isolated fraction "
            f"{report.isolated_fraction:.3f}; oxidation states: {report.oxidation_states_source}"
        )
    if report.ewald_note:
        print(f"note: Ewald energies not computed: {report.ewald_note}", file=sys.stderr)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)


@app.command("rotation")
def rotation_cmd(
    traj: TrajArg,
    center: Annotated[
        str | None, typer.Option("--center", help="Centre element of the groups (with --ligand)")
    ] = None,
    ligand: Annotated[
        str | None, typer.Option("--ligand", help="Ligand element of the groups (with --center)")
    ] = None,
    species: SpeciesOpt = "Li",
    temperature_k: TemperatureOpt = None,
    time_step_fs: TimeStepOpt = None,
    step_skip: StepSkipOpt = 1,
    drift_reference: DriftOpt = "auto",
    skip_frames: SkipFramesOpt = 0,
    structure: StructureOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write the C1/C2 plot (PNG/PDF/SVG), log-linear")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Polyanion rotation: orientational autocorrelations C1, C2 of centre→ligand bonds and
    their relaxation times (seed 000's paddle wheel, measured)."""
    from ionflow.analysis.rotation import RotationAnalysis, plot_rotation

    for flag, el in (("--center", center), ("--ligand", ligand)):
        if el is not None:
            from pymatgen.core import Element

            if not Element.is_valid_symbol(el):
                raise UserInputError(f"{flag} {el!r} is not an element symbol")
    analysis = RotationAnalysis(center, ligand, require_groups=True)
    res = run_streamed(
        traj,
        [analysis],
        species=species,
        temperature_k=temperature_k,
        time_step_fs=time_step_fs,
        step_skip=step_skip,
        skip_frames=skip_frames,
        drift_reference=drift_reference,
        structure=structure,
        fmt=fmt,
        quiet=quiet,
    )["rotation"]
    if plot is not None:
        plot_rotation(res, plot)
    if as_json:
        typer.echo(json.dumps(res.model_dump(mode="json"), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        tab = Table(
            title=f"Polyanion rotation: {res.n_frames} frames × {res.frame_interval_fs:g} fs "
            f"({res.duration_ps:.3g} ps), lags to {res.max_lag_ps:.3g} ps"
        )
        for col in ("group", "n", "τ1 (ps)", "τ2 (ps)", "C1, C2 at max lag", "⟨θ⟩ at lag"):
            tab.add_column(col, justify="left" if col == "group" else "right")
        for g in res.groups:

            def tau(v, e, reason):
                if v is None:
                    return "no reorientation" if reason and "no reorientation" in reason else "—"
                return f"{v:.3g}" + (f" ± {e:.2g}" if e is not None else "")

            tab.add_row(
                g.formula,
                str(g.n_groups),
                tau(g.tau_p1_ps, g.tau_p1_err_ps, g.tau_p1_reason),
                tau(g.tau_p2_ps, g.tau_p2_err_ps, g.tau_p2_reason),
                f"{g.p1_at_max_lag:.3f}, {g.p2_at_max_lag:.3f}",
                f"{g.mean_reorientation_angle_deg:.1f}° at {g.reorientation_angle_lag_ps:g} ps",
            )
        console = Console()
        console.print(tab)
        console.print(f"τ: {res.tau_method}; errors: {res.error_method}")
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
