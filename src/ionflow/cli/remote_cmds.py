"""``ionflow remote``: campaigns through jobflow-remote (compute nodes without the database).

``remote init`` writes the jobflow-remote project file from ionflow's cluster profiles;
``remote submit`` / ``run`` / ``status`` / ``recover`` are ``ionflow submit`` / ``run`` /
``status`` / ``recover`` on the ``"jobflow-remote"`` backend
(:mod:`ionflow.backends.jobflow_remote`). A campaign file with ``execution: {mode:
jobflow-remote}`` makes ``ionflow run`` and ``ionflow submit`` use it too. See
``slurm/README.md`` ("when compute nodes cannot reach the database").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app, text_cell

remote_app = typer.Typer(
    help="Campaigns through jobflow-remote: a runner on this workstation submits over SSH; "
    "compute nodes never see the database.",
    no_args_is_help=True,
)
app.add_typer(remote_app, name="remote")

DataDirOpt = Annotated[Path | None, typer.Option(help="Project data directory (embedded database)")]
UriOpt = Annotated[
    str | None,
    typer.Option(envvar="IONFLOW_DB_URI", help="MongoDB URI (never printed)", show_envvar=True),
]
LaunchpadOpt = Annotated[
    Path | None, typer.Option(help="FireWorks my_launchpad.yaml naming the database")
]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        envvar="JFREMOTE_PROJECT",
        help="jobflow-remote project (default: the campaign's execution.project, else 'ionflow')",
    ),
]


def _database(spec_file: Path | None, data_dir, uri, launchpad):
    from ionflow.backends.base import database_settings
    from ionflow.names import data_dir_path
    from ionflow.store import DatabaseSettings, resolve_database

    data_dir = data_dir_path(data_dir)
    spec = None
    if spec_file is not None:
        from ionflow.spec import load_campaign

        spec, _ = load_campaign(spec_file)
        settings = database_settings(spec, Path(spec_file).resolve(), data_dir, uri, launchpad)
    else:
        settings = DatabaseSettings(uri=uri, launchpad_file=launchpad, data_dir=data_dir)
    return spec, resolve_database(settings), data_dir


def _project(spec, project: str | None) -> str:
    from ionflow.backends.jobflow_remote import DEFAULT_PROJECT

    return project or (spec.execution.project if spec is not None else None) or DEFAULT_PROJECT


@remote_app.command("init")
def init_cmd(
    profile: Annotated[
        list[Path],
        typer.Option(
            "--profile",
            help="Cluster profile folder (my_qadapter.yaml), or a folder of them "
            "(relax/, md/, analysis/); repeatable",
        ),
    ],
    host: Annotated[str, typer.Option(help="Login node: user@host or user@host:port")],
    work_dir: Annotated[str, typer.Option(help="Absolute run directory on the cluster")],
    project: ProjectOpt = None,
    python_env: Annotated[
        str | None,
        typer.Option(help="Virtual environment on the cluster with ionflow + jobflow-remote"),
    ] = None,
    run_root: Annotated[
        str | None,
        typer.Option(help="IONFLOW_RUN_ROOT on the cluster (default WORK_DIR/ionflow-runs)"),
    ] = None,
    key: Annotated[str | None, typer.Option(help="SSH private key")] = None,
    port: Annotated[int | None, typer.Option(help="SSH port")] = None,
    poll: Annotated[float, typer.Option(help="Runner polling interval, s")] = 30.0,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="workflows.yaml naming the database")
    ] = None,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Write the jobflow-remote project file (mode 600; stays on this workstation)."""
    from ionflow.backends.jobflow_remote import write_project

    spec = None
    if spec_file is not None:
        from ionflow.spec import load_campaign

        spec, _ = load_campaign(spec_file)
    resolved = {}

    def database():  # resolved (and pinged) only once the arguments are checked
        resolved["db"] = _database(spec_file, data_dir, uri, launchpad)[1]
        return resolved["db"]

    path = write_project(
        database,
        project=_project(spec, project),
        profiles=profile,
        host=host,
        work_dir=work_dir,
        python_env=python_env,
        run_root=run_root,
        key_filename=key,
        port=port,
        poll_seconds=poll,
    )
    print(
        f"wrote {path} (workers ionflow-relax, ionflow-md, ionflow-analysis; "
        f"{resolved['db'].description})"
    )
    print(f"next: `ionflow remote submit workflows.yaml --project {_project(spec, project)}` "
          "then `ionflow remote run ...`")  # fmt: skip


def _run(spec_file: Path, data_dir, uri, launchpad, project, *, submit_only: bool) -> dict:
    from rich.console import Console

    from ionflow.backends.base import run_campaign
    from ionflow.spec import load_campaign

    spec, _ = load_campaign(spec_file)
    con = Console(width=160) if not Console().is_terminal else Console()
    return run_campaign(
        spec_file,
        data_dir=data_dir,
        uri=uri,
        launchpad=launchpad,
        submit_only=submit_only,
        progress=True,
        echo=lambda *a, **k: con.print(*a, markup=False, highlight=False, soft_wrap=True),
        backend="jobflow-remote",
        backend_options={"project": _project(spec, project)},
    )


@remote_app.command("submit")
def submit_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Add the campaign to the jobflow-remote queue (idempotent by reuse key); runs nothing."""
    _run(spec_file, data_dir, uri, launchpad, project, submit_only=True)


@remote_app.command("run")
def run_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Recover, submit, and run the runner here until nothing of the campaign can run."""
    from ionflow.errors import EXIT_JOBS_FAILED

    try:
        result = _run(spec_file, data_dir, uri, launchpad, project, submit_only=False)
    except KeyboardInterrupt:
        print("interrupted: run the same command again; running Slurm jobs go on")
        raise typer.Exit(130) from None
    states: dict = {}
    for counts in result.get("states", {}).values():
        for k, v in counts.items():
            states[k] = states.get(k, 0) + v
    print(
        f"campaign done: {states.get('COMPLETED', 0)} completed, {states.get('FIZZLED', 0)} fizzled"
    )
    for f in result.get("failures", []):
        print(f"failed: {f['material']} / {f['name']} (job {f['fw_id']}): {f['line']}")
    if states.get("FIZZLED"):
        raise typer.Exit(EXIT_JOBS_FAILED)


@remote_app.command("status")
def status_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Each job of the campaign in ionflow's states; failures and lost runs, one line each."""
    spec, db, data_dir = _database(spec_file, data_dir, uri, launchpad)
    print_remote_status(spec, db, data_dir, _project(spec, project))


def print_remote_status(spec, db, data_dir, project: str | None) -> None:
    """``ionflow remote status`` (also ``ionflow status --backend jobflow-remote``): the
    campaign's jobs on the jobflow-remote ``project`` (``None``: the backend's default)."""
    from rich.console import Console
    from rich.table import Table

    from ionflow.backends import open_backend

    with open_backend("jobflow-remote", db, data_dir=data_dir, project=project) as be:
        st = be.status(spec.campaign)
    con = Console(width=160)
    if not st.jobs:
        con.print(f"campaign {spec.campaign}: nothing submitted yet", markup=False)
        return
    tab = Table(title=f"campaign {spec.campaign} (jobflow-remote)")
    for col in ("material", "job", "state", "db_id"):
        tab.add_column(col)
    for j in st.jobs:
        tab.add_row(text_cell(j.material), text_cell(j.name), j.state, str(j.id))
    con.print(tab)
    for f in st.failures:
        con.print(f"failed: {f['material']} / {f['name']} (job {f['fw_id']}): {f['line']}",
                  markup=False, soft_wrap=True)  # fmt: skip
    for r in st.lost:
        con.print(f"lost: {r.material} / {r.describe()} (`ionflow recover` reruns it; its "
                  "MD resumes from the checkpoint)", markup=False, soft_wrap=True)  # fmt: skip
    if st.not_synced:
        from ionflow.backends.base import not_synced_line

        con.print(not_synced_line(st.not_synced), markup=False, soft_wrap=True)


@remote_app.command("recover")
def recover_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    project: ProjectOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, change nothing")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Also rerun failed jobs")] = False,
) -> None:
    """Rerun jobs whose Slurm job ended without a result (scancel, walltime, node failure)."""
    spec, db, data_dir = _database(spec_file, data_dir, uri, launchpad)
    do_remote_recover(
        spec, db, data_dir, _project(spec, project), dry_run=dry_run, retry_failed=retry_failed
    )


def do_remote_recover(
    spec, db, data_dir, project: str | None, *, dry_run: bool = False, retry_failed: bool = False
) -> None:
    """``ionflow remote recover`` (also ``ionflow recover --backend jobflow-remote``): rerun
    the campaign's lost jobs on the jobflow-remote ``project`` and say what was done."""
    from ionflow.backends import open_backend

    with open_backend("jobflow-remote", db, data_dir=data_dir, project=project) as be:
        rep = be.recover(spec.campaign, dry_run=dry_run, retry_failed=retry_failed)
    prefix = "dry run: would rerun" if dry_run else "rerun"
    for r in rep.lost:
        print(f"{prefix}: {r.material} / {r.describe()}")
    if rep.retried:
        print(
            f"{'dry run: would retry' if dry_run else 'retried'}: job(s) {', '.join(rep.retried)}"
        )
    if not rep.lost and not rep.retried:
        print(f"no lost runs ({rep.running_checked} job(s) still in the runner's hands)")


@remote_app.command("sync")
def sync_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Copy completed jobs' trajectories and densities into GridFS (streamed over SFTP) and
    store their summaries: what `remote run` does as jobs complete, for jobs that
    jobflow-remote's own daemon (`jf runner start`) ran. Idempotent."""
    from ionflow.backends import open_backend
    from ionflow.errors import EXIT_ENVIRONMENT

    spec, db, data_dir = _database(spec_file, data_dir, uri, launchpad)
    with open_backend(
        "jobflow-remote", db, data_dir=data_dir, project=_project(spec, project)
    ) as be:
        res = be.sync(spec.campaign)
    print(f"synced {res['synced']} completed job(s) of campaign {spec.campaign!r}", end="")
    if res["pending"]:
        print(
            f"; {res['pending']} not copied yet (see the lines above, or another ionflow "
            "process is copying them): run again"
        )
        raise typer.Exit(EXIT_ENVIRONMENT)
    print("; nothing left to copy")
