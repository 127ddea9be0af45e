"""``ionflow analyze`` and ``ionflow arrhenius``."""

from __future__ import annotations

import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app
from ionflow.errors import UserInputError

# The trajectory options every trajectory command shares (checked by trajectory_args).
TrajArg = Annotated[
    list[Path], typer.Argument(help="Trajectory file(s); several = segments in order")
]
SpeciesOpt = Annotated[str, typer.Option(help="Mobile species")]
TemperatureOpt = Annotated[
    float | None, typer.Option(help="MD temperature, K (overrides the file)")
]
TimeStepOpt = Annotated[
    float | None,
    typer.Option(help="Time between stored frames, fs (overrides the file); see --step-skip"),
]
StepSkipOpt = Annotated[
    int, typer.Option(help="MD steps between stored frames (multiplies --time-step-fs)")
]
DriftOpt = Annotated[
    str, typer.Option(help="auto | framework | fixed | none | comma-separated atom indices")
]
SkipFramesOpt = Annotated[int, typer.Option(help="Leading frames to drop (equilibration)")]
StructureOpt = Annotated[Path | None, typer.Option(help="Structure for a bare .npy of coordinates")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="Force the trajectory format")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")]
FitOpt = Annotated[str, typer.Option("--fit", help="ionflow (honest errors) | pymatgen (compat)")]


@contextmanager
def _progress(enabled: bool):
    """Yield a callback(stage, done, total) driving a rich progress bar on stderr."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}
        labels = {"read": "reading frames", "msd": "MSD (FFT) per ion"}

        def cb(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield cb


def _parse_window(window: str | None) -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        a, b = (float(x) for x in window.split(":"))
    except ValueError:
        raise UserInputError(f"--window must be START:END in ps, got {window!r}") from None
    return a, b


def _parse_drift(ref: str) -> str | list[int]:
    if ref.replace(",", "").replace(" ", "").isdigit():
        return [int(x) for x in ref.split(",") if x.strip()]
    return ref


def trajectory_args(
    traj: list[Path],
    temperature_k: float | None,
    time_step_fs: float | None,
    step_skip: int,
    skip_frames: int,
) -> float | None:
    """Check the trajectory options every trajectory command shares; the frame interval
    (fs) they give, or None to take it from the file."""
    from ionflow.rules import check_temperature_k

    if temperature_k is not None:
        check_temperature_k(temperature_k, "--temperature-k")
    if time_step_fs is not None and not time_step_fs > 0:
        raise UserInputError(f"--time-step-fs must be > 0, got {time_step_fs}")
    if step_skip < 1:
        raise UserInputError(f"--step-skip must be ≥ 1, got {step_skip}")
    if skip_frames < 0:
        raise UserInputError(f"--skip-frames must be ≥ 0, got {skip_frames}")
    for p in traj:
        if not p.exists():
            raise UserInputError(f"{p}: no such file")
    return time_step_fs * step_skip if time_step_fs is not None else None


def run_streamed(
    traj: list[Path],
    analyses: list,
    *,
    species: str,
    temperature_k: float | None,
    time_step_fs: float | None,
    step_skip: int = 1,
    skip_frames: int = 0,
    drift_reference: str = "auto",
    structure: Path | None = None,
    fmt: str | None = None,
    quiet: bool = False,
    require_temperature: bool = False,
) -> dict:
    """Run registered streamed analyses over the trajectory options of a command (the same
    inputs as ``ionflow analyze``), with a progress bar unless ``quiet``; name → result."""
    from ionflow.analysis import analyze_trajectory

    frame_interval = trajectory_args(traj, temperature_k, time_step_fs, step_skip, skip_frames)
    with _progress(not quiet and sys.stderr.isatty()) as cb:
        return analyze_trajectory(
            [str(p) for p in traj] if len(traj) > 1 else str(traj[0]),
            analyses,
            species=species,
            temperature_k=temperature_k,
            frame_interval_fs=frame_interval,
            drift_reference=_parse_drift(drift_reference),
            skip_frames=skip_frames,
            structure=structure,
            format=fmt,
            progress=cb,
            require_temperature=require_temperature,
        )


def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


@app.command("analyze")
def analyze_cmd(
    traj: TrajArg,
    species: SpeciesOpt = "Li",
    temperature_k: TemperatureOpt = None,
    time_step_fs: TimeStepOpt = None,
    step_skip: StepSkipOpt = 1,
    drift_reference: DriftOpt = "auto",
    fit: FitOpt = "ionflow",
    window: Annotated[
        str | None, typer.Option(help="Fit window START:END in ps (default: documented rule)")
    ] = None,
    skip_frames: SkipFramesOpt = 0,
    ion_charge: Annotated[
        float | None, typer.Option(help="Mobile-ion charge, e (default from species)")
    ] = None,
    hop_length_a: Annotated[
        float, typer.Option(help="Hop length a for N_eff (He et al.), Å")
    ] = 3.0,
    min_hops: Annotated[
        float,
        typer.Option(help="Fewest hop equivalents N_eff for a D (0 = always try the fit)"),
    ] = 20.0,
    structure: StructureOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write the MSD plot (PNG/PDF/SVG)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Diffusivity, conductivity and Haven ratio of one MD run, with honest error bars."""
    from ionflow.analysis import analyze_file

    frame_interval = trajectory_args(traj, temperature_k, time_step_fs, step_skip, skip_frames)
    if not (min_hops >= 0 and math.isfinite(min_hops)):
        raise UserInputError(f"--min-hops must be a finite number ≥ 0, got {min_hops}")
    if fit not in ("ionflow", "pymatgen"):
        raise UserInputError(f"--fit must be ionflow or pymatgen, got {fit!r}")
    with _progress(not quiet and sys.stderr.isatty()) as cb:
        res = analyze_file(
            [str(p) for p in traj] if len(traj) > 1 else str(traj[0]),
            species=species,
            temperature_k=temperature_k,
            frame_interval_fs=frame_interval,
            fit=fit,
            drift_reference=_parse_drift(drift_reference),
            fit_window_ps=_parse_window(window),
            ion_charge=ion_charge,
            hop_length_a=hop_length_a,
            min_hops=min_hops,
            skip_frames=skip_frames,
            structure=structure,
            format=fmt,
            progress=cb,
        )
    if plot is not None:
        from ionflow.analysis.plots import plot_msd

        plot_msd(res, plot)
    if as_json:
        typer.echo(json.dumps(res.model_dump(mode="json"), indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    tab = Table(
        title=f"{res.species} in {res.source} at {res.temperature_k:g} K", show_header=False
    )
    rows = [
        ("regime", f"{res.regime} — {res.regime_reason}"),
        ("mobile ions / frames", f"{res.n_mobile} / {res.n_frames} ({res.duration_ps:.3g} ps)"),
        (
            "fit window",
            f"{res.fit_window_ps[0]:.3g}–{res.fit_window_ps[1]:.3g} ps ({res.fit_mode})",
        ),
        ("D* (cm²/s)", f"{_fmt(res.diffusivity_cm2_s)} ± {_fmt(res.diffusivity_err_cm2_s, '.2g')}"),
    ]
    if res.diffusivity_stat_err_cm2_s is not None:
        rows.append(
            (
                "  error parts",
                f"statistical {_fmt(res.diffusivity_stat_err_cm2_s, '.2g')}, window systematic "
                f"{_fmt(res.diffusivity_sys_err_cm2_s, '.2g')}",
            )
        )
    rows.append(
        (
            "local D* (cm²/s)",
            "; ".join(
                f"{x.window_ps[0]:.3g}–{x.window_ps[1]:.3g} ps: {x.diffusivity_cm2_s:.3g} ± "
                f"{x.diffusivity_err_cm2_s:.2g}"
                for x in res.local_diffusivities
            )
            + (f" (z = {res.window_z:.1f})" if res.window_z is not None else ""),
        )
    )
    if res.charge_diffusivity_cm2_s is not None:
        charge = f"{_fmt(res.charge_diffusivity_cm2_s)} ± {_fmt(res.charge_diffusivity_err_cm2_s, '.2g')}"
    elif res.charge_diffusivity_upper_cm2_s is not None:
        charge = (
            f"not resolved: {_fmt(res.charge_diffusivity_estimate_cm2_s)} ± "
            f"{_fmt(res.charge_diffusivity_err_cm2_s, '.2g')}, 95 % upper bound "
            f"{_fmt(res.charge_diffusivity_upper_cm2_s, '.2g')}"
        )
    else:
        charge = "—"
    iv = res.haven_ratio_interval
    rows += [
        ("D x,y,z (cm²/s)", ", ".join(_fmt(x) for x in res.diffusivity_components_cm2_s or [None])),
        ("D_σ charge (cm²/s)", charge),
        (
            "Haven ratio",
            _fmt(res.haven_ratio) + (f" (68 %: {iv[0]:.3g}–{iv[1]:.3g})" if iv else ""),
        ),
        (
            "σ tracer-based (mS/cm)",
            f"{_fmt(res.conductivity_ms_cm)} ± {_fmt(res.conductivity_err_ms_cm, '.2g')}",
        ),
        (
            "σ from D_σ (mS/cm)",
            _fmt(res.charge_conductivity_ms_cm)
            + (
                f" ± {_fmt(res.charge_conductivity_err_ms_cm, '.2g')}"
                if res.charge_conductivity_ms_cm is not None
                else ""
            ),
        ),
        (
            "N_eff hops / He 2018 rel. err",
            f"{res.n_eff_hops:.1f} / {_fmt(res.diffusivity_rel_err_he2018, '.2f')}",
        ),
        ("drift reference", res.drift_reference),
    ]
    for k, v in rows:
        tab.add_row(k, v)
    Console().print(tab)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _read_analysis(p: Path):
    """One `ionflow analyze --json` file; any unreadable file is a one-line error."""
    from pydantic import ValidationError

    from ionflow.analysis import DiffusionAnalysis

    what = "expected an `ionflow analyze --json` output"
    if not p.exists():
        raise UserInputError(f"{p}: no such file")
    if p.is_dir():
        raise UserInputError(f"{p}: is a directory, {what}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserInputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserInputError(f"{p}: binary file, {what}") from None
    try:
        return DiffusionAnalysis.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = " ".join(str(first["msg"]).split())
        raise UserInputError(
            f"{p}: not an `ionflow analyze --json` output ({f'{loc}: ' if loc else ''}{msg})"
        ) from None


def _table_density(
    structure: Path | None, species: str, number_density_cm3: float | None
) -> tuple[float | None, str | None, str | None]:
    """(n in cm⁻³, density_source, one-line description) for a --table fit."""
    if number_density_cm3 is not None:
        if not (math.isfinite(number_density_cm3) and number_density_cm3 > 0):
            raise UserInputError(f"--number-density-cm3 must be > 0, got {number_density_cm3:g}")
        return number_density_cm3, "--number-density-cm3", "given with --number-density-cm3"
    if structure is None:
        return None, None, None
    if not structure.exists():
        raise UserInputError(f"{structure}: no such file")
    if structure.is_dir():
        raise UserInputError(f"{structure}: is a directory, expected a structure file")
    from pymatgen.core import Element, Structure

    try:
        el = Element(species)
    except ValueError:
        raise UserInputError(f"--species {species!r} is not a chemical element") from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            struct = Structure.from_file(str(structure))
        for w in caught:
            first = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            if first:
                print(f"warning: {structure}: {first}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 (pymatgen raises anything on a bad file)
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserInputError(
            f"{structure}: cannot read a structure (POSCAR, CIF, ...): {detail}"
        ) from None
    amount = float(struct.composition.element_composition[el])
    if not amount > 0:
        found = ", ".join(str(e) for e in struct.composition.element_composition.elements)
        raise UserInputError(f"{structure}: no {species} in the structure (elements: {found})")
    n_cm3 = amount / (struct.volume * 1e-24)
    desc = f"{amount:g} {species} in {struct.volume:.5g} Å³ of {structure}"
    return n_cm3, "structure", desc


def _arrhenius_table(
    table_path: Path,
    *,
    structure: Path | None,
    species: str,
    number_density_cm3: float | None,
    ion_charge: float | None,
    at_temperature_k: float,
    unweighted: bool,
):
    """Fit a D(T) table: (fit, the `table` block of --json)."""
    from ionflow.analysis import conductivity_factor_ms_cm, fit_arrhenius
    from ionflow.analysis.diffusion import default_ion_charge
    from ionflow.analysis.tables import (
        DIFFUSIVITY,
        ERROR,
        TEMPERATURE,
        quoted,
        read_diffusivity_table,
    )

    if structure is not None and number_density_cm3 is not None:
        raise UserInputError("give --structure or --number-density-cm3, not both")
    if ion_charge is not None and not (math.isfinite(ion_charge) and ion_charge != 0):
        raise UserInputError(f"--ion-charge must be a non-zero number, got {ion_charge:g}")
    tab = read_diffusivity_table(table_path)
    if tab.errors_cm2_s is not None and not unweighted:
        for line, err in zip(tab.line_numbers, tab.errors_cm2_s, strict=True):
            if err == 0:
                raise UserInputError(
                    f"{table_path} line {line}, column {quoted(tab.columns_used[ERROR])}: error 0 "
                    "cannot weight a fit; give every row an error > 0, or pass --unweighted"
                )
    n_cm3, source, desc = _table_density(structure, species, number_density_cm3)
    charge = abs(ion_charge) if ion_charge is not None else None
    factor = None
    notes = []
    if n_cm3 is not None:
        if charge is None:
            charge = default_ion_charge(species)
        # σ·T/D from the one Nernst–Einstein function (n = n_ions / V with V = 1 Å³)
        factor = (
            conductivity_factor_ms_cm(n_cm3 * 1e-24, 1.0, charge, at_temperature_k)
            * at_temperature_k
        )
    else:
        notes.append(
            "no mobile-ion density: σ not computed (give --structure FILE --species X, or "
            "--number-density-cm3 N)"
        )
    for name, quantity in (
        ("temperature_k", TEMPERATURE),
        ("diffusivity_cm2_s", DIFFUSIVITY),
        ("diffusivity_err_cm2_s", ERROR),
    ):
        used = tab.columns_used.get(quantity)
        print(
            f"table: {name} <- {quoted(used)}" if used else f"table: {name} <- (no column)",
            file=sys.stderr,
        )
    if tab.ignored_columns:
        print(
            f"table: ignored columns {', '.join(quoted(c) for c in tab.ignored_columns)}",
            file=sys.stderr,
        )
    if desc is not None:
        print(
            f"table: n({species}) = {n_cm3:.4g} cm⁻³ ({desc}), ion charge {charge:g}",
            file=sys.stderr,
        )
    weighted = not unweighted
    pre_warnings = []
    if tab.errors_cm2_s is None:
        weighted = False
        pre_warnings.append(
            "no error column: unweighted fit, errors from the scatter"
            if len(set(tab.temperatures_k)) > 2
            else "no error column and only 2 temperatures: unweighted fit, no error bars"
        )
    fit = fit_arrhenius(
        tab.temperatures_k,
        tab.diffusivities_cm2_s,
        tab.errors_cm2_s,
        at_temperature_k=at_temperature_k,
        sigma_factor_ms_cm_k=factor,
        weighted=weighted,
        labels=[
            f"line {i} ({t:g} K)" for i, t in zip(tab.line_numbers, tab.temperatures_k, strict=True)
        ],
    )
    fit.warnings[:0] = pre_warnings
    block = {
        "path": tab.path,
        "n_rows": len(tab.temperatures_k),
        "columns_used": tab.columns_used,
        "ignored_columns": tab.ignored_columns,
        "number_density_cm3": n_cm3,
        "density_source": source,
        "structure": str(structure) if source == "structure" else None,
        "species": species,
        "ion_charge": charge,
        "notes": notes,
    }
    return fit, block


@app.command("arrhenius")
def arrhenius_cmd(
    analyses: Annotated[
        list[Path] | None, typer.Argument(help="`ionflow analyze --json` outputs")
    ] = None,
    table: Annotated[
        Path | None,
        typer.Option(help="A D(T) table instead (CSV/TSV: T in K, D in cm²/s, optional D error)"),
    ] = None,
    structure: Annotated[
        Path | None,
        typer.Option(help="With --table: structure (POSCAR, CIF) giving the ion density for σ"),
    ] = None,
    species: Annotated[
        str, typer.Option(help="With --table: mobile species (ion density and charge)")
    ] = "Li",
    number_density_cm3: Annotated[
        float | None,
        typer.Option("--number-density-cm3", help="With --table: mobile-ion density, cm⁻³"),
    ] = None,
    ion_charge: Annotated[
        float | None,
        typer.Option(help="With --table: mobile-ion charge, e (default from --species)"),
    ] = None,
    at_temperature_k: Annotated[
        float, typer.Option(help="Extrapolate D and σ to this T, K")
    ] = 300.0,
    unweighted: Annotated[bool, typer.Option(help="Unweighted fit (pymatgen's choice)")] = False,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write the Arrhenius plot")] = None,
) -> None:
    """Activation energy and σ at any temperature, with intervals, from several analyses
    or from a table of D(T)."""
    from ionflow.analysis import fit_arrhenius_from_analyses
    from ionflow.rules import check_temperature_k

    if analyses and table is not None:
        raise UserInputError("give either `ionflow analyze --json` files or --table FILE, not both")
    if not analyses and table is None:
        raise UserInputError(
            "nothing to fit: give `ionflow analyze --json` files, or --table FILE (T, D[, D_err])"
        )
    check_temperature_k(at_temperature_k, "--at-temperature-k")
    table_block = None
    if table is not None:
        fit, table_block = _arrhenius_table(
            table,
            structure=structure,
            species=species,
            number_density_cm3=number_density_cm3,
            ion_charge=ion_charge,
            at_temperature_k=at_temperature_k,
            unweighted=unweighted,
        )
    else:
        for flag, val in (
            ("--structure", structure),
            ("--number-density-cm3", number_density_cm3),
            ("--ion-charge", ion_charge),
        ):
            if val is not None:
                raise UserInputError(
                    f"{flag} goes with --table; analyses carry their own density and charge"
                )
        docs = [_read_analysis(p) for p in analyses]
        species_set = {d.species for d in docs}
        if len(species_set) > 1:
            raise UserInputError(
                f"analyses of different species cannot be combined: {sorted(species_set)}"
            )
        fit = fit_arrhenius_from_analyses(
            docs, at_temperature_k=at_temperature_k, weighted=not unweighted
        )
    for w in fit.warnings:
        print(f"warning: {' '.join(w.split())}", file=sys.stderr)
    for note in (table_block or {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if plot is not None:
        from ionflow.analysis.plots import plot_arrhenius

        plot_arrhenius(fit, plot)
    if as_json:
        out = fit.model_dump(mode="json")
        if table_block is not None:
            out["table"] = table_block
        typer.echo(json.dumps(out, indent=1))
        return
    iv = fit.sigma_at_t_interval_ms_cm
    iv95 = fit.sigma_at_t_interval95_ms_cm
    typer.echo(
        f"Ea = {fit.ea_ev:.3f} ± {_fmt(fit.ea_err_ev, '.3f')} eV from {fit.n_temperatures} temperatures; "
        f"D0 = {fit.d0_cm2_s:.3g} cm²/s"
    )
    if fit.ea_resolved is False:
        why = "has no error estimate" if fit.ea_err_ev is None else "is not resolved (< 2σ)"
        typer.echo(
            f"σ({at_temperature_k:g} K), D({at_temperature_k:g} K): not quoted — Ea {why}; "
            "the extrapolated values are in --json, flagged ea_resolved=false"
        )
    elif fit.sigma_at_t_ms_cm is not None:
        typer.echo(
            f"σ({at_temperature_k:g} K) = {fit.sigma_at_t_ms_cm:.3g} mS/cm"
            + (
                f"  68 %: [{iv[0]:.3g}, {iv[1]:.3g}]  95 %: [{iv95[0]:.3g}, {iv95[1]:.3g}]"
                if iv
                else ""
            )
        )
    elif table_block is not None:
        dv = fit.d_at_t_interval_cm2_s
        typer.echo(
            f"D({at_temperature_k:g} K) = {fit.d_at_t_cm2_s:.3g} cm²/s"
            + (f"  68 %: [{dv[0]:.3g}, {dv[1]:.3g}]" if dv else "")
        )
    for e in fit.excluded:
        typer.echo(f"excluded: {e}")
