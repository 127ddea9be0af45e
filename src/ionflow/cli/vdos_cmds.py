"""``ionflow vdos``: vibrational density of states and Green–Kubo D of one MD run."""

from __future__ import annotations

import json
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


@app.command("vdos")
def vdos_cmd(
    traj: TrajArg,
    species: SpeciesOpt = "Li",
    temperature_k: TemperatureOpt = None,
    time_step_fs: TimeStepOpt = None,
    step_skip: StepSkipOpt = 1,
    drift_reference: DriftOpt = "auto",
    skip_frames: SkipFramesOpt = 0,
    max_lag_ps: Annotated[
        float | None,
        typer.Option(help="VACF window (max lag), ps; default 5 ps, ≤ 4096 frames, ≤ run/4"),
    ] = None,
    low_frequency_cutoff_thz: Annotated[
        float, typer.Option(help="Upper end of the low-frequency power-law fit, THz")
    ] = 2.0,
    structure: StructureOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write the VDOS plot (PNG/PDF/SVG)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Vibrational density of states per species (stored velocities, else finite
    differences), low-frequency behaviour and Green–Kubo D of the mobile species."""
    from ionflow.analysis.vdos import VDOS, plot_vdos

    analysis = VDOS(max_lag_ps=max_lag_ps, low_frequency_cutoff_thz=low_frequency_cutoff_thz)
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
    )["vdos"]
    if plot is not None:
        plot_vdos(res, plot)
    if as_json:
        typer.echo(json.dumps(res.model_dump(mode="json"), indent=1))
    else:
        _print_table(res)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _print_table(res) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x, spec=".3g") -> str:
        return "—" if x is None else format(x, spec)

    tab = Table(title=f"VDOS of {res.source}", show_header=False)
    rows = [
        (
            "velocities",
            f"{res.velocity_source}, {res.n_frames} frames {res.frame_interval_fs:g} fs apart",
        ),
        (
            "window / resolution",
            f"VACF to {res.max_lag_ps:.3g} ps ({res.max_lag_frames} frames, {res.lag_window}); "
            f"grid {res.frequency_step_thz:.3g} THz, resolution {res.resolution_thz:.3g} THz, "
            f"Nyquist {res.nyquist_thz:.3g} THz",
        ),
    ]
    for sp in res.species:
        peaks = ", ".join(f"{x:.3g}" for x in res.peak_frequencies_thz.get(sp.element, []))
        rows.append(
            (
                f"{sp.element} ({sp.n_atoms})",
                f"peaks {peaks or '—'} THz; T_kin {sp.kinetic_temperature_k:.0f} K",
            )
        )
    lo = res.low_frequency_fit_range_thz
    rows += [
        (f"{res.mobile_species} g(0)", f"{f(res.vdos_zero)} per THz"),
        (
            f"{res.mobile_species} g ∝ ν^n",
            (
                f"n = {res.low_frequency_exponent:.2f} ± {res.low_frequency_exponent_err:.2f} "
                f"({lo[0]:.2g}–{lo[1]:.2g} THz)"
            )
            if res.low_frequency_exponent is not None
            else f"— ({res.low_frequency_exponent_reason})",
        ),
        (
            "D from VACF (cm²/s)",
            f"{f(res.diffusivity_from_vacf_cm2_s)} ± {f(res.diffusivity_from_vacf_err_cm2_s, '.2g')}"
            f" (plateau {res.gk_plateau_window_ps[0]:.3g}–{res.gk_plateau_window_ps[1]:.3g} ps)",
        ),
    ]
    for k, v in rows:
        tab.add_row(k, v)
    Console().print(tab)
