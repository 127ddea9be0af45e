"""What ionflow asks of a backend, the reports it gets back, and the campaign run on top.

A *backend* takes a campaign's plan (:func:`ionflow.campaign.plan_campaign`: one jobflow
flow per material, every job keyed) and gets it run. The rest of ionflow — the CLI, the
summaries, the results — talks to it only through :class:`Backend`: four verbs and
``close``. The results never go through a backend: every backend writes job outputs to the
JobStore of the :class:`~ionflow.store.ResolvedDatabase` it was opened on, where
:mod:`ionflow.results` reads them.

This module is backend-neutral: no FireWorks, no jobflow imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ionflow.errors import UserInputError
from ionflow.names import OUTPUTS_COLLECTION, data_dir_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from ionflow.campaign import PlannedMaterial
    from ionflow.store import DatabaseSettings, ResolvedDatabase

__all__ = [
    "STATES",
    "Backend",
    "BackendBase",
    "CampaignStatus",
    "JobRecord",
    "Project",
    "RecoveryReport",
    "RunReport",
    "backend_for",
    "choose_backend",
    "data_dir_path",
    "database_settings",
    "print_failures",
    "project_lock",
    "run_campaign",
    "running_lines",
    "server_note",
    "submission_lines",
]

#: Job states every backend reports in (FireWorks' names; a backend with other states maps
#: its own onto these).
STATES = ("COMPLETED", "RUNNING", "READY", "WAITING", "FIZZLED", "DEFUSED", "PAUSED", "RESERVED")

#: State → column of the per-material counts (:attr:`CampaignStatus.counts`).
_COLUMNS = {
    "READY": "queued",
    "RESERVED": "queued",
    "WAITING": "waiting",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "FIZZLED": "fizzled",
    "DEFUSED": "defused",
    "PAUSED": "defused",
}


# ----------------------------------------------------------------------------- project


@dataclass
class Project:
    """Where a campaign's local data lives (default ``./ionflow-data``)."""

    data_dir: Path

    @property
    def run_root(self) -> Path:
        return self.data_dir / "runs"

    @property
    def launch_dir(self) -> Path:
        return self.data_dir / "launches"


def database_settings(
    spec, spec_path: Path, data_dir: Path, uri: str | None = None, launchpad: Path | None = None
) -> DatabaseSettings:
    """DatabaseSettings from the spec's ``execution`` block and CLI overrides."""
    from ionflow.store import DatabaseSettings

    ex = spec.execution
    if uri is None and ex.db_uri_env:
        uri = os.environ.get(ex.db_uri_env)
        if not uri:
            raise UserInputError(
                f"{spec_path}: execution.db_uri_env: environment variable {ex.db_uri_env} is not set"
            )
    uri = uri or ex.db_uri
    if launchpad is None and ex.launchpad:
        launchpad = (spec_path.parent / ex.launchpad).resolve()
        if not launchpad.exists():
            raise UserInputError(f"{spec_path}: execution.launchpad: {launchpad} does not exist")
    return DatabaseSettings(uri=uri, launchpad_file=launchpad, data_dir=data_dir)


@contextlib.contextmanager
def project_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive lock: one local worker per project directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir / "run.lock", "w")  # noqa: SIM115 (closed below)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserInputError(
            f"another `ionflow run` is working on {data_dir} (lock {data_dir / 'run.lock'})"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# ----------------------------------------------------------------------------- reports


@dataclass
class JobRecord:
    """One job of a campaign as its backend holds it."""

    id: int | str
    name: str
    state: str  # one of STATES
    material: str
    submitted: str | None = None  # the submission that added it (ISO time)
    key: str | None = None  # its reuse key


@dataclass
class RecoveryReport:
    """What :meth:`Backend.recover` found and did.

    ``lost``: jobs whose worker is gone (:class:`ionflow.backends.lease.LostRun`);
    ``rerun``: made READY again (lost, or interrupted by Ctrl-C); ``retried``: failed jobs
    made READY for one more try (``retry_failed``); ``live``: held by a live worker elsewhere
    and left alone (:class:`~ionflow.backends.lease.LiveRun`); ``unreserved``: queue
    reservations cancelled; ``inconsistent``: refreshed by FireWorks' ``detect_lostruns``;
    ``slurm_available``: whether the queue could be asked (Slurm backend);
    ``running_checked``: running jobs looked at.
    """

    lost: list = field(default_factory=list)
    rerun: list = field(default_factory=list)
    retried: list = field(default_factory=list)
    live: list = field(default_factory=list)
    unreserved: list[int] = field(default_factory=list)
    inconsistent: list[int] = field(default_factory=list)
    slurm_available: bool = False
    running_checked: int = 0
    dry_run: bool = False


@dataclass
class RunReport:
    """What :meth:`Backend.run` did.

    ``interrupted``: stopped by Ctrl-C (local worker); ``launches``: per queue profile, what
    was submitted (Slurm backend: :class:`~ionflow.backends.fireworks_slurm.LaunchReport`);
    ``done``: the campaign's state counts once nothing of it can run any more, else ``None``.
    """

    interrupted: bool = False
    launches: list = field(default_factory=list)
    done: dict[str, int] | None = None


@dataclass
class CampaignStatus:
    """A campaign as its backend sees it (:meth:`Backend.status`).

    Attributes
    ----------
    states
        Material → state (:data:`STATES`) → number of jobs.
    counts
        Material → ``queued`` / ``waiting`` / ``running`` / ``completed`` / ``fizzled`` /
        ``defused`` / ``lost`` → number of jobs (``lost``: running, but lost).
    jobs
        Every job, by material then id.
    failures
        Each failed job with the last line of its exception (dicts ``fw_id``, ``name``,
        ``material``, ``line``, ``environment``, ``launch_dir``).
    live, lost
        Running jobs held by a live worker / whose worker is gone.
    last_submission
        The newest submission record (``jobs_added``, ``jobs_reused``, ``materials``,
        ``submitted``...) or ``None``.
    queue_available, queue_jobs
        Batch-queue backends: whether the queue could be asked (``None``: no queue), and
        queue profile → queue state → number of unfinished queue jobs.
    not_synced
        Backends whose outputs reach the database in two steps (jobflow-remote): completed
        jobs whose files are not yet in GridFS nor their summaries stored.
    """

    campaign: str
    states: dict[str, Counter] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    live: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    last_submission: dict | None = None
    queue_available: bool | None = None
    queue_jobs: dict[str, Counter] = field(default_factory=dict)
    not_synced: int = 0

    def fill_counts(self) -> None:
        """Derive :attr:`states` and :attr:`counts` from :attr:`jobs` and :attr:`lost`."""
        lost = {r.fw_id for r in self.lost}
        states: dict[str, Counter] = {}
        counts: dict[str, Counter] = {}
        for job in self.jobs:
            states.setdefault(job.material, Counter())[job.state] += 1
            c = counts.setdefault(job.material, Counter())
            c[_COLUMNS.get(job.state, job.state.lower())] += 1
            if job.id in lost:
                c["lost"] += 1
        self.states = states
        self.counts = dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- protocol


@runtime_checkable
class Backend(Protocol):
    """A way to run a campaign's jobs; what every backend provides.

    A backend is opened on a :class:`~ionflow.store.ResolvedDatabase` (job outputs go to its
    JobStore, whatever else the backend keeps may live there too) and, where it runs things
    locally, a project data directory; :func:`ionflow.backends.open_backend` opens one by
    name. Backend-specific options are keyword arguments of the verbs, documented by each
    backend.
    """

    #: Registry name (:data:`ionflow.backends.BACKENDS`).
    name: ClassVar[str]

    def submit(self, planned: Sequence[PlannedMaterial], campaign: str) -> dict[str, Any]:
        """Add the planned jobs that are new, reuse (by reuse key) the ones already there.

        Idempotent. Returns ``added`` / ``extended`` / ``reused`` (material names),
        ``jobs_added`` / ``jobs_reused`` (counts), ``details`` (material → ``mode``,
        ``added`` and reused job names) and ``dropped`` (materials whose half-written
        submission was removed first).
        """
        ...

    def run(self, campaign: str | None, **options: Any) -> RunReport:
        """Make the campaign's jobs run (a local worker until nothing can run; or queue jobs)."""
        ...

    def status(self, campaign: str, **options: Any) -> CampaignStatus:
        """The campaign's jobs, their states, failures, live and lost runs, last submission."""
        ...

    def recover(
        self, campaign: str | None, *, dry_run: bool = False, **options: Any
    ) -> RecoveryReport:
        """Make the jobs whose worker is gone READY again (a live one is never touched)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections)."""
        ...


class BackendBase:
    """Context-manager behaviour for backends (``with open_backend(...) as backend:``)."""

    name: ClassVar[str] = ""

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- ionflow run


def run_campaign(
    spec_path: Path,
    *,
    data_dir: Path | None = None,
    uri: str | None = None,
    launchpad: Path | None = None,
    submit_only: bool = False,
    progress: bool = True,
    echo: Callable[..., Any] = print,
    backend: str = "fireworks-local",
    backend_options: dict | None = None,
) -> dict:
    """Validate, submit (idempotently) and — unless ``submit_only`` — run the campaign.

    Everything goes through ``backend`` (:class:`Backend`): recover what a previous run
    left unfinished (lost runs; failed jobs get one more try), submit, run to completion,
    report the states and failures.

    Returns a dict with what was added/reused/recovered and the final state counts
    (``added``, ``extended``, ``reused``, ``jobs_added``, ``jobs_reused``, ``details``,
    ``dropped``, ``recovered`` {``running``, ``fizzled``, ``live``}, ``spec``,
    ``database``, and after a run ``states`` and ``failures``).
    """
    from ionflow.backends import open_backend
    from ionflow.campaign import plan_campaign
    from ionflow.results import set_current_summaries
    from ionflow.spec import load_campaign
    from ionflow.store import resolve_database

    spec, materials = load_campaign(spec_path)  # raises before anything is touched
    backend, backend_options = backend_for(spec, backend, backend_options)
    spec_path = Path(spec_path).resolve()  # (after: a symlink loop is a one-line error there)
    data_dir = data_dir_path(data_dir)
    project = Project(data_dir)
    planned = plan_campaign(spec, materials, project.run_root)  # also before any DB write
    settings = database_settings(spec, spec_path, data_dir, uri, launchpad)
    db = resolve_database(settings)
    echo(f"database: {db.description}")
    with (
        open_backend(backend, db, data_dir=data_dir, **backend_options) as be,
        project_lock(data_dir),
    ):
        recovered: dict[str, list] = {}
        if not submit_only:
            rep = be.recover(spec.campaign, retry_failed=True)
            recovered = {"running": rep.rerun, "fizzled": rep.retried, "live": rep.live}
        if recovered.get("running"):
            echo(f"resuming {len(recovered['running'])} interrupted job(s) from their checkpoints")
        if recovered.get("fizzled"):
            echo(f"retrying {len(recovered['fizzled'])} failed job(s)")
        if recovered.get("live"):
            from rich.markup import escape

            echo(
                escape(
                    f"{len(recovered['live'])} job(s) are running in other live workers and "
                    "are left to them: "
                    + "; ".join(r.describe() for r in recovered["live"][:5])
                    + (" …" if len(recovered["live"]) > 5 else "")
                )
            )
        result = be.submit(planned, spec.campaign)
        for line in submission_lines(result):
            echo(line)
        with db.client() as client:
            restored = set_current_summaries(
                client[db.database],
                spec.campaign,
                {p.material.name: p.fingerprint for p in planned},
            )
        if restored:
            echo(
                "summaries of the submitted plan restored (they had run before): "
                + ", ".join(restored)
            )
        result["recovered"] = recovered
        result["spec"] = spec
        result["database"] = db
        if submit_only:
            return result
        from datetime import datetime

        started = datetime.now().isoformat()  # jobflow's completed_at: local, naive
        report = be.run(spec.campaign, progress=progress, echo=echo)
        if report.interrupted:
            raise KeyboardInterrupt
        status = be.status(spec.campaign)
        result["states"] = {m: dict(c) for m, c in status.states.items()}
        result["failures"] = status.failures
        _echo_recovery_notes(db, spec.campaign, started, echo)
        return result


def backend_for(spec, backend: str, options: dict | None = None) -> tuple[str, dict]:
    """The backend (and its options) a campaign runs on: ``execution.mode: jobflow-remote``
    selects ``"jobflow-remote"`` with ``execution.project``; otherwise ``backend``.

    The campaign file decides; a command's ``--backend`` option goes through
    :func:`choose_backend` first (which refuses a ``--backend`` the file contradicts)."""
    options = dict(options or {})
    if getattr(spec.execution, "mode", None) == "jobflow-remote":
        if backend != "jobflow-remote":
            backend = "jobflow-remote"
        options.setdefault("project", spec.execution.project)
    return backend, options


#: ``execution.mode`` values a FireWorks backend runs (``local`` is the default mode).
_FIREWORKS_MODES = ("local", "fireworks")


def choose_backend(
    spec,
    default: str,
    *,
    backend: str | None = None,
    project: str | None = None,
    fallback_project: str | None = None,
    spec_path: Path | str | None = None,
) -> tuple[str, dict]:
    """The backend (and its options) a command opens: its ``--backend`` and ``--project``
    against the campaign file's ``execution`` block — the one rule every campaign verb uses.

    * no ``backend``: the file decides as in :func:`backend_for` (``execution.mode:
      jobflow-remote`` selects ``"jobflow-remote"``, otherwise ``default``, the command's
      FireWorks backend);
    * ``backend`` ``"fireworks-*"``: taken unless the file says ``execution.mode:
      jobflow-remote``;
    * ``backend`` ``"jobflow-remote"``: taken unless the file sets ``execution.mode`` to
      ``local`` or ``fireworks`` (a file without ``execution.mode`` agrees with any backend).

    ``spec`` may be ``None`` (a command run without a campaign file): then ``default`` or
    ``backend``, and jobflow-remote is refused (it needs the campaign). With
    ``"jobflow-remote"`` the options hold ``project``: ``project`` (given on the command
    line), else the file's ``execution.project``, else ``fallback_project`` (e.g. from
    ``$JFREMOTE_PROJECT``), else ``None`` (the backend's default).

    Raises
    ------
    UserInputError
        The file contradicts ``backend`` (one line naming the file, ``execution.mode`` and its
        value), an unknown backend name, jobflow-remote without a campaign file, or
        ``project`` without the jobflow-remote backend.
    """
    from ionflow.backends import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise UserInputError(
            f"--backend: unknown backend {backend!r} (known: {', '.join(sorted(BACKENDS))})"
        )
    where = f"{spec_path}: " if spec_path is not None else ""
    execution = getattr(spec, "execution", None)
    mode = getattr(execution, "mode", None)
    mode_given = execution is not None and "mode" in execution.model_fields_set
    if backend is None:
        name, options = backend_for(spec, default) if spec is not None else (default, {})
    elif backend == "jobflow-remote":
        if spec is None:
            raise UserInputError(
                "--backend jobflow-remote needs the campaign file (give workflows.yaml)"
            )
        if mode_given and mode in _FIREWORKS_MODES:
            raise UserInputError(
                f"{where}execution.mode is {mode!r} but --backend jobflow-remote was given "
                "(set execution.mode: jobflow-remote in the file, or drop --backend)"
            )
        name, options = backend, {}
    else:
        if mode == "jobflow-remote":
            raise UserInputError(
                f"{where}execution.mode is 'jobflow-remote' but --backend {backend} was given "
                "(drop --backend, or change execution.mode in the file)"
            )
        name, options = backend, {}
    if name == "jobflow-remote":
        options["project"] = project or execution.project or fallback_project
    elif project is not None:
        raise UserInputError(
            f"--project is for the jobflow-remote backend, not {name} (give --backend "
            "jobflow-remote, or drop --project)"
        )
    return name, options


def _echo_recovery_notes(db: ResolvedDatabase, campaign: str, since: str, echo) -> None:
    """One line per MD run of this run that recovered from a problem (its note)."""
    from rich.markup import escape

    with db.client() as client:
        for doc in client[db.database][OUTPUTS_COLLECTION].find(
            {
                "output.campaign": campaign,
                "output.md.recovery_note": {"$type": "string"},
                "completed_at": {"$gte": since},
            },
            {"name": 1, "output.md.recovery_note": 1},
        ):
            echo(escape(f"note: {doc['name']}: {doc['output']['md']['recovery_note']}"))


def submission_lines(result: dict) -> list[str]:
    """What :meth:`Backend.submit` did, in a few lines for people."""
    lines = []
    if result.get("dropped"):
        lines.append(
            "removed the incomplete workflow(s) of an interrupted earlier submission: "
            + ", ".join(result["dropped"])
        )
    lines.append(
        f"submitted {result['jobs_added']} new job(s) ({len(result['added'])} new material(s), "
        f"{len(result['extended'])} extended); reused {result['jobs_reused']} job(s) already "
        "submitted"
    )
    for name in result["extended"][:20]:
        d = result["details"][name]
        lines.append(
            f"  {name}: added {_names(d['added'])}; reused {d['n_reused']} job(s): "
            f"{_names(d['reused'])}"
        )
    if len(result["extended"]) > 20:
        lines.append(f"  … and {len(result['extended']) - 20} more extended material(s)")
    if result["reused"]:
        lines.append(f"  unchanged, reused whole: {_names(result['reused'])}")
    return lines


def _names(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" … (+{len(names) - limit})"


def running_lines(live: list, lost: list) -> list[str]:
    """One line per running job: who holds it and its last heartbeat, or why it is lost."""
    lines = [f"running: {r.material} / {r.describe()}" for r in live]
    lines += [
        f"lost: {r.material} / {getattr(r, 'id_label', 'fw')} {r.fw_id} {r.name}: {r.reason} "
        "(the next `ionflow run` or "
        "`ionflow recover` makes it READY again; its MD resumes from the checkpoint)"
        for r in lost
    ]
    return lines


def not_synced_line(n: int) -> str:
    """The status line of jobflow-remote jobs whose files are still on the cluster."""
    return (
        f"not synced: {n} completed job(s) have their trajectories and summaries still on the "
        "cluster (run by jobflow-remote's own runner): `ionflow remote sync`"
    )


def print_failures(con, failures: list[dict], limit: int = 50) -> None:
    """One line per failed job: material, job, fw id and the last line of its exception."""
    from rich.text import Text

    for f in failures[:limit]:
        con.print(
            Text.assemble(
                ("failed: ", "red"), f"{f['material']} / {f['name']} (fw {f['fw_id']}): {f['line']}"
            ),
            soft_wrap=True,
            highlight=False,
        )
    if len(failures) > limit:
        con.print(f"… and {len(failures) - limit} more failed job(s)", markup=False)


def server_note(db) -> str | None:
    """The last line of ``ionflow run``: the embedded server keeps running; how to stop it."""
    server = getattr(db, "local_server", None)
    if server is None:
        return None
    return (
        f"the database server is still running (SecantusDB pid {server.pid}, port "
        f"{server.port}, data {server.data_dir}) so that queries are fast; stop it with "
        f"`ionflow db stop --data-dir {server.data_dir}`"
    )
