"""``ionflow run`` and ``ionflow status``.

Both take ``--backend`` and ``--project`` (:data:`ionflow.cli.hpc_cmds.BackendOpt`,
:func:`ionflow.cli.hpc_cmds.campaign_backend`); a jobflow-remote campaign shows the same
whether the file's ``execution.mode`` or ``--backend`` selects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app, text_cell
from ionflow.cli.hpc_cmds import BackendOpt, campaign_backend
from ionflow.cli.remote_cmds import ProjectOpt

DataDirOpt = Annotated[
    Path | None, typer.Option(help="Project data directory (embedded database, MD runs)")
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        envvar="IONFLOW_DB_URI", help="MongoDB URI (default: the embedded server)", show_envvar=True
    ),
]
LaunchpadOpt = Annotated[Path | None, typer.Option(help="FireWorks my_launchpad.yaml")]


def _fmt_pm(x, e, spec=".3g"):
    if x is None:
        return "—"
    return f"{x:{spec}}" + (f" ± {e:.2g}" if e is not None else "")


def _fmt_charge(r: dict) -> str:
    """D_σ ± err when resolved, else its 95 % upper bound."""
    if r.get("charge_diffusivity_cm2_s") is not None:
        return _fmt_pm(r["charge_diffusivity_cm2_s"], r.get("charge_diffusivity_err_cm2_s"))
    if r.get("charge_diffusivity_upper_cm2_s") is not None:
        return f"< {r['charge_diffusivity_upper_cm2_s']:.2g} (not resolved)"
    return "—"


def _fmt_haven(r: dict) -> str:
    """H_R with its 68 % interval (asymmetric)."""
    h, iv = r.get("haven_ratio"), r.get("haven_ratio_interval")
    if h is None:
        return "—"
    return f"{h:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")


def _ea_resolved(v: dict) -> bool | None:
    from ionflow.analysis.arrhenius import ea_is_resolved

    if v.get("ea_resolved") is not None:
        return v["ea_resolved"]
    return ea_is_resolved(v.get("ea_ev"), v.get("ea_err_ev"))


def _fmt_sigma300(v: dict) -> str:
    """σ(300 K) [68 %] only when Ea is resolved."""
    if v.get("sigma_300k_ms_cm") is None:
        return "—"
    if _ea_resolved(v) is not True:
        return "— (Ea not resolved)"
    iv = v.get("sigma_300k_interval_ms_cm")
    return f"{v['sigma_300k_ms_cm']:.3g}" + (f" [{iv[0]:.2g}, {iv[1]:.2g}]" if iv else "")


def summary_table(summaries: list[dict]):
    """Rich table (per material, free and pinned D/σ per T, Ea, σ(300 K)) and its notes."""
    from rich.table import Table

    from ionflow.summary import SIGMA_BASIS

    tab = Table(title="ionflow campaign summary")
    for col in (
        "material",
        "variant",
        "T (K)",
        "regime",
        "D* (cm²/s)",
        "D_σ (cm²/s)",
        "σ (mS/cm)",
        "H_R [68 %]",
        "Ea (eV)",
        "σ(300 K) mS/cm [68 %]",
    ):
        tab.add_column(col, no_wrap=col != "material")
    notes = []
    for s in summaries:
        for key in ("free", "pinned"):
            v = s.get(key)
            if v is None:
                notes.append(f"{s['material']}: no pinned run — {s['pinned_reason']}")
                continue
            if v.get("arrhenius_note"):
                notes.append(f"{s['material']} {key}: {v['arrhenius_note']}")
            if v.get("sigma_300k_ms_cm") is not None and _ea_resolved(v) is False:
                err = v.get("ea_err_ev")
                ea = f"{v['ea_ev']:.2f}" + (f" ± {err:.2f}" if err is not None else "")
                notes.append(
                    f"{s['material']} {key}: σ(300 K) not quoted: Ea not resolved ({ea} eV)"
                )
            for i, r in enumerate(v["runs"]):
                first = i == 0
                if r["regime"] == "subdiffusive":
                    notes.append(
                        f"{s['material']} {key} {r['temperature_k']:g} K subdiffusive: "
                        f"{r['regime_reason']}"
                    )
                tab.add_row(
                    text_cell(s["material"] if first and key == "free" else ""),
                    key if first else "",
                    f"{r['temperature_k']:g}",
                    text_cell(r["regime"]),
                    _fmt_pm(r.get("diffusivity_cm2_s"), r.get("diffusivity_err_cm2_s")),
                    _fmt_charge(r),
                    _fmt_pm(r.get("conductivity_ms_cm"), r.get("conductivity_err_ms_cm")),
                    _fmt_haven(r),
                    _fmt_pm(v.get("ea_ev"), v.get("ea_err_ev"), ".3f") if first else "",
                    _fmt_sigma300(v) if first else "",
                    end_section=(i == len(v["runs"]) - 1),
                )
        if s.get("pinned") is not None:
            notes.append(f"{s['material']} free vs pinned: {s['pinned_verdict']}")
        if s.get("mechanism_verdict"):
            notes.append(f"{s['material']} mechanism: {s['mechanism_verdict']}")
    bases = sorted({s.get("sigma_basis") or SIGMA_BASIS for s in summaries})
    if bases:
        notes.append("σ quoted: " + "; ".join(bases))
    return tab, notes


def print_summaries(con, summaries: list[dict]) -> None:
    """Print the summary table and its notes."""
    tab, notes = summary_table(summaries)
    con.print(tab)
    for n in notes:
        con.print(text_cell("• " + n, 2000))  # database text: never markup


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress")] = False,
    backend: BackendOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Submit the campaign (idempotently) and run it here to completion; Ctrl-C is resumable.

    Backends: fireworks-local (default: a worker in this process), jobflow-remote (the
    campaign file's execution.mode jobflow-remote, or --backend jobflow-remote: the runner
    here submits over SSH). For Slurm through FireWorks use `ionflow submit` and
    `ionflow launch --watch`.
    """
    from rich.console import Console

    from ionflow.backends.base import print_failures, run_campaign, server_note
    from ionflow.errors import EXIT_ENVIRONMENT
    from ionflow.results import load_summaries
    from ionflow.spec import load_campaign

    spec, _ = load_campaign(spec_file)  # (run_campaign loads it again: the same errors)
    name, options = campaign_backend(
        ctx, "run", spec, spec_file, backend, project, "fireworks-local"
    )
    con = Console()
    if not con.is_terminal:
        con = Console(width=160)
    try:
        result = run_campaign(
            spec_file,
            data_dir=data_dir,
            uri=uri,
            launchpad=launchpad,
            progress=not quiet,
            echo=con.print,
            backend=name,
            backend_options=options,
        )
    except KeyboardInterrupt:
        con.print(
            "[yellow]interrupted[/]: run the same command again to resume from the "
            "last MD checkpoints"
        )
        raise typer.Exit(130) from None
    spec = result["spec"]
    states = result.get("states", {})
    bad = {m: c for m, c in states.items() if c.get("FIZZLED")}
    summaries = load_summaries(result["database"], spec.campaign)
    if summaries:
        print_summaries(con, summaries)
    for m, c in bad.items():
        con.print(f"[red]{m}: {c['FIZZLED']} job(s) failed[/] — see `ionflow status {spec_file}`")
    failures = result.get("failures", [])
    print_failures(con, failures)  # the real reason of each, one line each
    running = sum(c.get("RUNNING", 0) for c in states.values())
    if running:
        con.print(f"{running} job(s) are still running in other workers", markup=False)
    note = server_note(result["database"])
    if note:
        con.print(note, markup=False, soft_wrap=True)
    if bad:
        raise typer.Exit(EXIT_ENVIRONMENT if any(f["environment"] for f in failures) else 1)


def _compute_lines(db, spec) -> list[str]:
    """``  <material>: MD 12.3 core-h of a 500 core-h budget; target met`` for each material
    whose summary accounts compute (nothing when the database has none)."""
    from ionflow.results import load_summaries

    try:
        docs = load_summaries(db, spec.campaign)
    except Exception:  # noqa: BLE001 — status must not fail on the summaries' account
        return []
    out = []
    for d in docs:
        if d.get("core_hours") is None:
            continue
        line = f"  {d['material']}: MD {d['core_hours']:.3g} core-h"
        if d.get("budget_core_hours") is not None:
            line += f" of a {d['budget_core_hours']:g} core-h budget (free + pinned)"
        if d.get("target_met") is not None:
            line += "; target met" if d["target_met"] else "; target not met"
        out.append(line)
    return ["compute (from the summaries):", *out] if out else []


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    backend: BackendOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Each material's jobs, their states, and what the last submission added or reused.

    Backends: fireworks-local (default) or fireworks-slurm (the same LaunchPad; lost runs as
    Slurm sees them), jobflow-remote (the campaign file's execution.mode jobflow-remote, or
    --backend jobflow-remote).
    """
    from rich.console import Console
    from rich.table import Table

    from ionflow.backends import open_backend
    from ionflow.backends.base import (
        database_settings,
        not_synced_line,
        print_failures,
        running_lines,
    )
    from ionflow.campaign import stage_keys
    from ionflow.names import data_dir_path
    from ionflow.spec import load_campaign
    from ionflow.store import resolve_database

    spec, materials = load_campaign(spec_file)
    name, options = campaign_backend(
        ctx, "status", spec, spec_file, backend, project, "fireworks-local"
    )
    plan_keys = {m.name: set(stage_keys(spec, m).values()) for m in materials}
    data_dir = data_dir_path(data_dir)
    db = resolve_database(database_settings(spec, Path(spec_file), data_dir, uri, launchpad))
    with open_backend(name, db, data_dir=data_dir, **options) as backend:
        status = backend.status(spec.campaign)
    last = status.last_submission
    stamp = last.get("submitted") if last else None
    where = " (jobflow-remote)" if name == "jobflow-remote" else ""
    tab = Table(title=f"campaign {spec.campaign}{where}")
    for col in ("material", "job", "state", "fw_id" if name.startswith("fireworks") else "id",
                "last submit"):  # fmt: skip
        tab.add_column(col)
    n = n_old = 0
    for job in status.jobs:
        style = {"COMPLETED": "green", "FIZZLED": "red", "RUNNING": "yellow"}.get(job.state, "")
        submitted = job.submitted
        material = job.material
        key = str(job.key or "").split(".")[0]
        if key and material in plan_keys and key not in plan_keys[material]:
            origin = text_cell("superseded")  # e.g. the fit and summary before a T was added
            origin.stylize("dim")
            n_old += 1
        elif not key and (" ext " in job.name or job.name.endswith(" added")):
            origin = "adaptive"  # an extension or added temperature of md.target
        elif stamp is not None and submitted == stamp:
            origin = "added"
        else:
            origin = "reused"
        state = text_cell(job.state)
        if style:
            state.stylize(style)
        tab.add_row(text_cell(material), text_cell(job.name), state, str(job.id), origin)
        n += 1
    con = Console()
    if n == 0:
        con.print(f"campaign {spec.campaign}: nothing submitted yet ({db.description})")
        return
    con.print(tab)
    if last:
        con.print(
            f"last submission {str(stamp)[:19].replace('T', ' ')} UTC added {last['jobs_added']} "
            f"job(s) and reused {last['jobs_reused']} job(s) already on the LaunchPad "
            '("reused" = submitted earlier; its result is used, not recomputed).'
        )
        if n_old:
            con.print(
                f"{n_old} job(s) are superseded: not part of the plan in {spec_file} (an "
                "earlier fit or summary, or a run this plan no longer includes); their "
                "results stay in the database."
            )
        for name, d in sorted(last.get("materials", {}).items()):
            if d.get("mode") == "extended":
                line = (
                    f"  {name}: extended — added {', '.join(d['added'])}; reused "
                    f"{', '.join(d.get('reused', []))}"
                )
            elif d.get("mode") == "unchanged":
                line = f"  {name}: unchanged — all {d['n_reused']} job(s) reused"
            else:
                line = f"  {name}: new"
            con.print(text_cell(line, 4000), soft_wrap=True)
    for line in _compute_lines(db, spec):  # md.target: spent vs budget per material
        con.print(text_cell(line, 4000), soft_wrap=True)
    print_failures(con, status.failures)  # the real reason, one line each
    for line in running_lines(status.live, status.lost):
        con.print(line, markup=False, soft_wrap=True, highlight=False)
    if status.not_synced:  # jobflow-remote: jobs its own runner daemon completed
        con.print(not_synced_line(status.not_synced), markup=False, soft_wrap=True)
