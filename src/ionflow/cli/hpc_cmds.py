"""Cluster commands: ``ionflow submit``, ``launch``, ``recover`` and ``hpc-status``.

``submit`` puts a campaign on the FireWorks LaunchPad and runs nothing; ``launch`` submits
Slurm jobs per cluster profile (``slurm/profiles/<profile>``) through FireWorks' queue
launcher; ``recover`` reruns fireworks whose worker is gone; ``hpc-status`` shows each
material's jobs with a lost column and the queue jobs per profile. Each goes through the
``"fireworks-slurm"`` backend (:mod:`ionflow.backends.fireworks_slurm`); see
``slurm/README.md``.

``submit``, ``recover`` and ``hpc-status`` (and ``run`` / ``status``,
:mod:`ionflow.cli.run_cmds`) also take ``--backend`` (:data:`BackendOpt`) and ``--project``:
a campaign file with ``execution: {mode: jobflow-remote}``, or ``--backend jobflow-remote``,
sends them to the jobflow-remote backend (what ``ionflow remote ...`` does);
:func:`campaign_backend` applies the rule (:func:`ionflow.backends.base.choose_backend`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ionflow.backends import BACKENDS
from ionflow.cli import app, text_cell
from ionflow.cli.remote_cmds import ProjectOpt
from ionflow.errors import UserInputError

if TYPE_CHECKING:
    from ionflow.store import ResolvedDatabase

SpecOpt = Annotated[
    Path | None,
    typer.Argument(
        help="workflows.yaml (default: ./workflows.yaml if present)", show_default=False
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Project data directory, on a file system the compute nodes share"),
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        envvar="IONFLOW_DB_URI",
        help="MongoDB URI (overrides the campaign file; never printed)",
        show_envvar=True,
    ),
]
LaunchpadOpt = Annotated[
    Path | None, typer.Option(help="FireWorks my_launchpad.yaml (keep it chmod 600)")
]
ExpirationOpt = Annotated[
    float | None,
    typer.Option(
        "--expiration-secs",
        help="Also count RUNNING jobs without a FireWorks ping for this long as lost "
        "(FireWorks pings hourly; ionflow workers' leases are always checked and a live "
        "lease is never taken over)",
    ),
]


BackendOpt = Annotated[
    Literal[tuple(BACKENDS)] | None,  # the registered names
    typer.Option(
        "--backend",
        help="Dispatch backend: " + ", ".join(BACKENDS) + " (default: jobflow-remote when "
        "the campaign file says execution.mode: jobflow-remote, else this command's FireWorks "
        "backend; refused when the file's execution.mode disagrees)",
        show_default=False,
    ),
]

#: Per command, the backends it refuses and why (one line each).
_REFUSED = {
    "run": {
        "fireworks-slurm": "`ionflow run` runs the campaign here; for Slurm use `ionflow submit` "
        "then `ionflow launch --watch` (backend fireworks-slurm)",
    },
    "submit": {
        "fireworks-local": "`ionflow submit` is for fireworks-slurm or jobflow-remote; "
        "`ionflow run` submits and runs the campaign here (backend fireworks-local)",
    },
}


def campaign_backend(
    ctx: typer.Context,
    command: str,
    spec,
    spec_file: Path | None,
    backend: str | None,
    project: str | None,
    default: str,
) -> tuple[str, dict]:
    """The backend ``ionflow <command>`` opens, and its options: ``--backend`` / ``--project``
    against the campaign file (:func:`ionflow.backends.base.choose_backend`).

    A ``--project`` typed on the command line needs the jobflow-remote backend and beats the
    file's ``execution.project``; one from ``$JFREMOTE_PROJECT`` is only a fallback after it,
    then ``ionflow`` (:data:`~ionflow.backends.jobflow_remote.DEFAULT_PROJECT`).
    """
    from ionflow.backends.base import choose_backend
    from ionflow.backends.jobflow_remote import DEFAULT_PROJECT

    if backend in _REFUSED.get(command, {}):
        raise UserInputError(_REFUSED[command][backend])
    typed = project is not None and _typed(ctx, "project")
    return choose_backend(
        spec,
        default,
        backend=backend,
        project=project if typed else None,
        fallback_project=(None if typed else project) or DEFAULT_PROJECT,
        spec_path=spec_file,
    )


def _typed(ctx: typer.Context, param: str) -> bool:
    """Whether ``param`` was given on the command line (not from its environment variable)."""
    source = ctx.get_parameter_source(param) if ctx is not None else None
    return getattr(source, "name", "COMMANDLINE") == "COMMANDLINE"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _open(
    spec_file: Path | None,
    data_dir: Path | None,
    uri: str | None,
    launchpad: Path | None,
    *,
    need_spec: bool = False,
    loaded: tuple | None = None,
):
    """(spec or None, spec path or None, resolved database, absolute data dir, settings).

    ``loaded``: ``(spec, spec path)`` from :func:`_load` (not loaded again)."""
    from ionflow.backends.base import database_settings
    from ionflow.backends.fireworks_slurm import launchpad_file_warning, spec_uri_warning
    from ionflow.names import data_dir_path
    from ionflow.store import DatabaseSettings, resolve_database

    spec, spec_file = loaded if loaded is not None else _load(spec_file, need_spec=need_spec)
    data_dir = data_dir_path(data_dir)
    if spec is not None:
        warning = spec_uri_warning(spec.execution.db_uri, spec_file)
        if warning:
            _warn(warning)
        settings = database_settings(spec, spec_file.resolve(), data_dir, uri, launchpad)
    else:
        settings = DatabaseSettings(uri=uri, launchpad_file=launchpad, data_dir=data_dir)
    warning = launchpad_file_warning(settings.launchpad_file)
    if warning:
        _warn(warning)
    db = resolve_database(settings)
    return spec, spec_file, db, data_dir, settings


def _load(spec_file: Path | None, *, need_spec: bool = False):
    """(spec or None, spec path or None): the campaign file, default ./workflows.yaml."""
    if spec_file is None and Path("workflows.yaml").is_file():
        spec_file = Path("workflows.yaml")
    if spec_file is None and need_spec:
        raise UserInputError("no campaign file given and no ./workflows.yaml here")
    if spec_file is None:
        return None, None
    from ionflow.spec import load_campaign

    spec_file = Path(spec_file)
    spec, _ = load_campaign(spec_file)
    return spec, spec_file


@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    backend: BackendOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Add the campaign to the FireWorks LaunchPad (idempotent); runs nothing.

    Backends: fireworks-slurm (default), jobflow-remote (the campaign file's execution.mode
    jobflow-remote, or --backend jobflow-remote: what `ionflow remote submit` does).
    """
    from rich.console import Console

    from ionflow.backends.base import run_campaign
    from ionflow.backends.fireworks_slurm import launchpad_file_warning, spec_uri_warning
    from ionflow.spec import load_campaign

    spec, _ = load_campaign(spec_file)
    name, options = campaign_backend(
        ctx, "submit", spec, spec_file, backend, project, "fireworks-slurm"
    )
    if name == "jobflow-remote":  # (by the flag or the file) not the LaunchPad's message
        from ionflow.cli.remote_cmds import submit_cmd as remote_submit

        remote_submit(spec_file, data_dir, uri, launchpad, options["project"])
        return
    warning = spec_uri_warning(spec.execution.db_uri, spec_file)
    if warning:
        _warn(warning)
    warning = launchpad_file_warning(launchpad or spec.execution.launchpad)
    if warning:
        _warn(warning)
    con = Console()
    run_campaign(
        spec_file,
        data_dir=data_dir,
        uri=uri,
        launchpad=launchpad,
        submit_only=True,
        progress=False,
        echo=con.print,
        backend=name,
        backend_options=options,
    )
    con.print(
        f"campaign {spec.campaign!r} is on the LaunchPad. Next: "
        f"`ionflow launch {spec_file} --profile relax --profile md --profile analysis "
        "--watch` (or one profile at a time), `ionflow hpc-status`, `ionflow recover`."
    )


def _launch_round(
    db: ResolvedDatabase,
    profiles,
    data_dir: Path,
    campaign: str | None,
    max_jobs: int,
    *,
    dry_run: bool,
    do_recover: bool,
    echo,
) -> tuple[list, dict[str, int]]:
    """One round through the backend: Slurm snapshot, recovery (if asked), submissions per
    profile. Returns the launch reports and, once the campaign is done, its state counts."""
    from ionflow.backends import open_backend

    with open_backend("fireworks-slurm", db, data_dir=data_dir) as backend:
        report = backend.run(
            campaign,
            profiles=profiles,
            max_jobs=max_jobs,
            dry_run=dry_run,
            recover=do_recover,
            echo=echo,
            warn=_warn,
        )
    return report.launches, report.done or {}


@app.command("launch")
def launch_cmd(
    spec_file: SpecOpt = None,
    profile: Annotated[
        list[str],
        typer.Option(help="Cluster profile(s): relax, md, analysis (repeat the option)"),
    ] = ["md"],  # noqa: B006 (typer needs a literal default)
    max_jobs: Annotated[
        int, typer.Option("--max", min=1, help="At most this many jobs per profile in the queue")
    ] = 1,
    profiles_dir: Annotated[
        Path | None, typer.Option(help="Directory of profiles (default: slurm/profiles)")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep going: every --interval s recover lost runs and submit, until the "
            "campaign is done",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between --watch rounds")] = 30,
    max_wait: Annotated[
        float | None, typer.Option(help="Give up --watch after this many seconds (exit 4)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be submitted")
    ] = False,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Submit Slurm jobs (FireWorks queue launcher) that run the READY jobs of a profile."""
    from pymongo.errors import PyMongoError
    from rich.console import Console

    from ionflow.backends.fireworks_slurm import load_profile

    con = Console()
    profiles = [load_profile(p, profiles_dir) for p in profile]
    spec, _, db, data_dir, settings = _open(spec_file, data_dir, uri, launchpad)
    campaign = spec.campaign if spec is not None else None
    con.print(f"database: {db.description}", soft_wrap=True, markup=False)
    start = time.monotonic()
    while True:
        try:
            reports, done = _launch_round(
                db,
                profiles,
                data_dir,
                campaign,
                max_jobs,
                dry_run=dry_run,
                do_recover=watch,
                echo=con.print,
            )
        except PyMongoError as exc:
            if not watch:
                raise
            _warn(f"database error, retrying next round: {type(exc).__name__}")
            reports, done = [], {}
        if not watch:
            for rep in reports:
                if not rep.submitted:
                    what = f"would submit {rep.planned} job(s)" if dry_run else "nothing to submit"
                    con.print(
                        f"{rep.profile}: {what} ({rep.ready} READY, {rep.active_jobs} job(s) "
                        f"queued/running, max {max_jobs})",
                        soft_wrap=True,
                    )
            return
        if done:
            n_bad, n_waiting = done.get("FIZZLED", 0), done.get("WAITING", 0)
            con.print(
                f"campaign done: {done.get('COMPLETED', 0)} completed, {n_bad} fizzled"
                + (f", {n_waiting} waiting on failed jobs" if n_waiting else "")
                + (" — see `ionflow status`" if n_bad else ""),
                soft_wrap=True,
            )
            if n_bad:
                raise typer.Exit(1)
            return
        if max_wait is not None and time.monotonic() - start > max_wait:
            _warn(f"--max-wait {max_wait:g} s reached before the campaign finished")
            raise typer.Exit(4)  # 3 is an environment failure (database, disk)
        time.sleep(interval)
        # the embedded server may have been restarted on another port: resolve again, which
        # also rewrites the worker files that jobs read when they start
        from ionflow.store import resolve_database

        try:
            db = resolve_database(settings)
        except RuntimeError as exc:
            _warn(f"database unreachable, retrying: {exc}")


@app.command("recover")
def recover_cmd(
    ctx: typer.Context,
    spec_file: SpecOpt = None,
    expiration_secs: ExpirationOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only")] = False,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    backend: BackendOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Find lost runs (Slurm job gone, or no ping) and make them READY again.

    MD reruns resume from their checkpoint (stable working directories). Backends:
    fireworks-slurm (default; fireworks-local is the same LaunchPad and does the same),
    jobflow-remote (the campaign file's execution.mode jobflow-remote, or --backend
    jobflow-remote: what `ionflow remote recover` does).
    """
    from rich.console import Console

    from ionflow.backends import open_backend

    con = Console()
    loaded = _load(spec_file)
    name, options = campaign_backend(
        ctx, "recover", loaded[0], loaded[1], backend, project, "fireworks-slurm"
    )
    if name == "jobflow-remote":
        _no_expiration(expiration_secs)
        spec, _, db, data_dir, _ = _open(spec_file, data_dir, uri, launchpad, loaded=loaded)
        from ionflow.cli.remote_cmds import do_remote_recover

        do_remote_recover(spec, db, data_dir, options["project"], dry_run=dry_run)
        return
    spec, _, db, data_dir, _ = _open(spec_file, data_dir, uri, launchpad, loaded=loaded)
    campaign = spec.campaign if spec is not None else None
    # both FireWorks backends share the LaunchPad: recovery is the Slurm backend's
    with open_backend("fireworks-slurm", db, data_dir=data_dir) as backend:
        rep = backend.recover(campaign, expiration_secs=expiration_secs, dry_run=dry_run)
    if not rep.slurm_available:
        _warn("squeue failed or is missing: only worker leases and FireWorks pings were checked")
    if not rep.lost:
        con.print(
            f"no lost runs among {rep.running_checked} running job(s)"
            + (f" of campaign {campaign!r}" if campaign else "")
        )
    else:
        head = "lost runs" + (" (dry run: nothing changed)" if dry_run else "")
        con.print(f"{head}:", soft_wrap=True)
        for run in rep.lost:
            action = (
                ""
                if dry_run
                else " -> reservation cancelled, READY"
                if run.fw_id in rep.unreserved
                else " -> rerun, READY"
            )
            con.print(
                f"  fw {run.fw_id} {run.name} ({run.material}): {run.reason}{action}",
                soft_wrap=True,
                markup=False,
            )
        if not dry_run:
            con.print(
                f"{len(rep.rerun) + len(rep.unreserved)} job(s) READY again; MD resumes from "
                "its last checkpoint. Submit workers: `ionflow launch --profile md`.",
                soft_wrap=True,
            )
    if rep.inconsistent:
        con.print(f"refreshed {len(rep.inconsistent)} inconsistent firework(s)")


@app.command("hpc-status")
def hpc_status_cmd(
    ctx: typer.Context,
    spec_file: SpecOpt = None,
    expiration_secs: ExpirationOpt = None,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    backend: BackendOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Per material: queued/waiting/running/completed/fizzled/lost jobs; queue jobs per profile.

    Backends: fireworks-slurm (default; fireworks-local is the same LaunchPad and shows the
    same), jobflow-remote (the campaign file's execution.mode jobflow-remote, or --backend
    jobflow-remote: what `ionflow remote status` shows).
    """
    from rich.console import Console
    from rich.table import Table

    from ionflow.backends import open_backend

    con = Console()
    loaded = _load(spec_file, need_spec=True)
    name, options = campaign_backend(
        ctx, "hpc-status", loaded[0], loaded[1], backend, project, "fireworks-slurm"
    )
    spec, _, db, data_dir, _ = _open(spec_file, data_dir, uri, launchpad, loaded=loaded)
    if name == "jobflow-remote":
        _no_expiration(expiration_secs)
        from ionflow.cli.remote_cmds import print_remote_status

        print_remote_status(spec, db, data_dir, options["project"])
        return
    # both FireWorks backends share the LaunchPad: the queue view is the Slurm backend's
    with open_backend("fireworks-slurm", db, data_dir=data_dir) as backend:
        status = backend.status(spec.campaign, expiration_secs=expiration_secs)
    if not status.counts:
        con.print(f"campaign {spec.campaign}: nothing submitted yet ({db.description})")
        return
    cols = ("queued", "waiting", "running", "completed", "fizzled", "lost")
    tab = Table(title=f"campaign {spec.campaign}")
    tab.add_column("material")
    for col in cols:
        tab.add_column(col, justify="right")
    total = {c: 0 for c in cols}
    for mat, c in status.counts.items():
        tab.add_row(text_cell(mat), *(str(c.get(col, 0)) for col in cols))
        for col in cols:
            total[col] += c.get(col, 0)
    tab.add_row("[bold]all[/]", *(f"[bold]{total[c]}[/]" for c in cols))
    con.print(tab)
    if not status.queue_available:
        con.print(
            "Slurm: squeue unavailable (lost column from worker leases and FireWorks pings only)"
        )
    elif status.queue_jobs:
        con.print(
            "Slurm jobs: "
            + "; ".join(
                f"{prof}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items()))
                for prof, c in sorted(status.queue_jobs.items())
            )
        )
    else:
        con.print("Slurm jobs: none queued or running")
    for run in status.lost:
        con.print(
            f"lost: fw {run.fw_id} {run.name}: {run.reason} (`ionflow recover`)",
            soft_wrap=True,
            markup=False,
        )


def _no_expiration(expiration_secs: float | None) -> None:
    if expiration_secs is not None:
        raise UserInputError(
            "--expiration-secs is for the FireWorks backends (jobflow-remote finds lost runs "
            "from the Slurm queue)"
        )
