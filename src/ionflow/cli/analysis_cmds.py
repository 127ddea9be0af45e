"""``ionflow analyze`` and ``ionflow arrhenius``."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app
from ionflow.errors import UserInputError

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


def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


@app.command("analyze")
def analyze_cmd(
    traj: Annotated[
        list[Path], typer.Argument(help="Trajectory file(s); several = segments in order")
    ],
    species: Annotated[str, typer.Option(help="Mobile species")] = "Li",
    temperature_k: Annotated[
        float | None, typer.Option(help="MD temperature, K (overrides the file)")
    ] = None,
    time_step_fs: Annotated[
        float | None,
        typer.Option(help="Time between stored frames, fs (overrides the file); see --step-skip"),
    ] = None,
    step_skip: Annotated[
        int, typer.Option(help="MD steps between stored frames (multiplies --time-step-fs)")
    ] = 1,
    drift_reference: Annotated[
        str, typer.Option(help="auto | framework | fixed | none | comma-separated atom indices")
    ] = "auto",
    fit: FitOpt = "ionflow",
    window: Annotated[
        str | None, typer.Option(help="Fit window START:END in ps (default: documented rule)")
    ] = None,
    skip_frames: Annotated[int, typer.Option(help="Leading frames to drop (equilibration)")] = 0,
    ion_charge: Annotated[
        float | None, typer.Option(help="Mobile-ion charge, e (default from species)")
    ] = None,
    hop_length_a: Annotated[
        float, typer.Option(help="Hop length a for N_eff (He et al.), Å")
    ] = 3.0,
    structure: Annotated[
        Path | None, typer.Option(help="Structure for a bare .npy of coordinates")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Force the trajectory format")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the MSD plot (PNG/PDF/SVG)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Diffusivity, conductivity and Haven ratio of one MD run, with honest error bars."""
    from ionflow.analysis import analyze_file

    if temperature_k is not None and not temperature_k > 0:
        raise UserInputError(f"--temperature-k must be > 0, got {temperature_k}")
    if time_step_fs is not None and not time_step_fs > 0:
        raise UserInputError(f"--time-step-fs must be > 0, got {time_step_fs}")
    if step_skip < 1:
        raise UserInputError(f"--step-skip must be ≥ 1, got {step_skip}")
    if skip_frames < 0:
        raise UserInputError(f"--skip-frames must be ≥ 0, got {skip_frames}")
    if fit not in ("ionflow", "pymatgen"):
        raise UserInputError(f"--fit must be ionflow or pymatgen, got {fit!r}")
    for p in traj:
        if not p.exists():
            raise UserInputError(f"{p}: no such file")
    frame_interval = time_step_fs * step_skip if time_step_fs is not None else None
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
        ("D x,y,z (cm²/s)", ", ".join(_fmt(x) for x in res.diffusivity_components_cm2_s or [None])),
        (
            "D_σ (cm²/s)",
            f"{_fmt(res.charge_diffusivity_cm2_s)} ± {_fmt(res.charge_diffusivity_err_cm2_s, '.2g')}",
        ),
        ("Haven ratio", f"{_fmt(res.haven_ratio)} ± {_fmt(res.haven_ratio_err, '.2g')}"),
        (
            "σ (mS/cm)",
            f"{_fmt(res.conductivity_ms_cm)} ± {_fmt(res.conductivity_err_ms_cm, '.2g')}",
        ),
        (
            "N_eff hops / He 2018 rel. err",
            f"{res.n_eff_hops:.1f} / {_fmt(res.diffusivity_rel_err_he2018, '.2f')}",
        ),
        ("drift reference", res.drift_reference),
    ]
    for k, v in rows:
        tab.add_row(k, v)
    con = Console()
    con.print(tab)
    for w in res.warnings:
        con.print(f"[yellow]warning:[/] {w}")


@app.command("arrhenius")
def arrhenius_cmd(
    analyses: Annotated[list[Path], typer.Argument(help="`ionflow analyze --json` outputs")],
    at_temperature_k: Annotated[
        float, typer.Option(help="Extrapolate D and σ to this T, K")
    ] = 300.0,
    unweighted: Annotated[bool, typer.Option(help="Unweighted fit (pymatgen's choice)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the Arrhenius plot")] = None,
) -> None:
    """Activation energy and σ at any temperature, with intervals, from several analyses."""
    from pydantic import ValidationError

    from ionflow.analysis import DiffusionAnalysis, fit_arrhenius_from_analyses

    docs = []
    for p in analyses:
        if not p.exists():
            raise UserInputError(f"{p}: no such file")
        try:
            docs.append(DiffusionAnalysis.model_validate_json(p.read_text()))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise UserInputError(
                f"{p}: not an `ionflow analyze --json` output ({loc}: {first['msg']})"
            ) from None
    species = {d.species for d in docs}
    if len(species) > 1:
        raise UserInputError(f"analyses of different species cannot be combined: {sorted(species)}")
    fit = fit_arrhenius_from_analyses(
        docs, at_temperature_k=at_temperature_k, weighted=not unweighted
    )
    for w in fit.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if plot is not None:
        from ionflow.analysis.plots import plot_arrhenius

        plot_arrhenius(fit, plot)
    if as_json:
        typer.echo(json.dumps(fit.model_dump(mode="json"), indent=1))
        return
    iv = fit.sigma_at_t_interval_ms_cm
    iv95 = fit.sigma_at_t_interval95_ms_cm
    typer.echo(
        f"Ea = {fit.ea_ev:.3f} ± {_fmt(fit.ea_err_ev, '.3f')} eV from {fit.n_temperatures} temperatures; "
        f"D0 = {fit.d0_cm2_s:.3g} cm²/s"
    )
    if fit.sigma_at_t_ms_cm is not None:
        typer.echo(
            f"σ({at_temperature_k:g} K) = {fit.sigma_at_t_ms_cm:.3g} mS/cm"
            + (
                f"  68 %: [{iv[0]:.3g}, {iv[1]:.3g}]  95 %: [{iv95[0]:.3g}, {iv95[1]:.3g}]"
                if iv
                else ""
            )
        )
    for e in fit.excluded:
        typer.echo(f"excluded: {e}")
