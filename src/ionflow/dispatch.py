"""``ionflow run``: submit a campaign and work through it with a local FireWorks worker.

Resumability: the run holds a lock in the project directory (one local worker per
project). Several workers may share one database (other data directories, other hosts,
Slurm jobs): each job a worker runs is held by a lease (:mod:`ionflow.lease`), renewed
while it runs. On start, and every lease period while it waits for other workers, a run
resets to READY only the jobs of this campaign whose lease has expired or whose worker
process is gone from this host (Ctrl-C, kill, crash) — their MD resumes from its checkpoint
because the MD working directory is stable; a job a live worker holds is never touched.
FIZZLED ones are retried once per run. The workflows themselves are only added when their
fingerprint is new, so running twice never duplicates anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ionflow.errors import UserInputError

STATES = ("COMPLETED", "RUNNING", "READY", "WAITING", "FIZZLED", "DEFUSED", "PAUSED", "RESERVED")


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
):
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
def project_lock(data_dir: Path):
    """Exclusive lock: one local worker per project directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir / "run.lock", "w")
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


def campaign_states(lp, campaign: str) -> dict[str, Counter]:
    """State counts of every material's fireworks."""
    out: dict[str, Counter] = {}
    for fw in lp.fireworks.find(
        {"spec.ionflow_campaign": campaign}, {"state": 1, "spec.ionflow_material": 1}
    ):
        out.setdefault(fw["spec"].get("ionflow_material", "?"), Counter())[fw["state"]] += 1
    return out


def recover_lost(lp, campaign: str, echo=None) -> tuple[list[int], list]:
    """Reset the campaign's RUNNING fireworks whose lease expired (or whose worker is gone).

    Returns the fw ids reset and the :class:`~ionflow.lease.LiveRun` list of those a live
    worker holds (left alone). ``echo`` (if given) gets one line per reset job.
    """
    from ionflow.lease import find_lost_runs, lease_s, reset_lost_runs

    lost, live = find_lost_runs(
        lp, {"spec.ionflow_campaign": campaign}, default_lease_s=max(lease_s(), 300.0)
    )
    reset = reset_lost_runs(lp, lost)
    if echo is not None:
        from rich.markup import escape

        for run in lost:
            if run.fw_id in reset:
                echo(escape(f"taking over fw {run.fw_id} {run.name}: {run.reason}"))
    return reset, live


def recover_interrupted(lp, campaign: str) -> dict[str, list]:
    """Reset fireworks a previous run left unfinished to READY.

    ``running``: RUNNING whose lease expired or whose worker is gone from this host, or
    FIZZLED by a Ctrl-C (or a lost lease) — their MD resumes from its checkpoint;
    ``fizzled``: real failures, retried once per run; ``live``: RUNNING jobs held by a live
    worker elsewhere (:class:`~ionflow.lease.LiveRun`), not touched.
    """
    done: dict[str, list] = {"running": [], "fizzled": [], "live": []}
    done["running"], done["live"] = recover_lost(lp, campaign)
    for fw in lp.fireworks.find(
        {"spec.ionflow_campaign": campaign, "state": "FIZZLED"},
        {"fw_id": 1, "state": 1, "launches": 1},
    ):
        kind = "running"
        if fw["state"] == "FIZZLED":
            last = lp.launches.find_one(
                {"launch_id": {"$in": fw.get("launches", [])}},
                {"action.stored_data._exception._stacktrace": 1},
                sort=[("launch_id", -1)],
            )
            trace = str(((last or {}).get("action") or {}).get("stored_data", {}))
            kind = (
                "running"
                if "KeyboardInterrupt" in trace or "LeaseLost" in trace or "RunDirBusy" in trace
                else "fizzled"
            )
        lp.rerun_fw(fw["fw_id"])
        done[kind].append(fw["fw_id"])
    return done


_EXC_LINE = re.compile(
    r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*(?:Error|Exception|Interrupt|Lost|Busy|Failure|Exit)\b)"
)
_ENV_MARKERS = (
    "No space left on device",
    "Disk quota exceeded",
    "[Errno 28]",
    "[Errno 122]",
    "ServerSelectionTimeoutError",
    "AutoReconnect",
    "NetworkTimeout",
    "ConnectionFailure",
    "cannot reach the database",
)


def _last_line(text: str) -> str:
    """The last line of a traceback (the exception), module path of its class dropped."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return _EXC_LINE.sub(r"\1", line)


def _error_file_line(launch_dir: str | None) -> str | None:
    """The last exception line of ``FW_job.error`` in a launch directory (if readable here)."""
    if not launch_dir:
        return None
    path = Path(launch_dir) / "FW_job.error"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 65536, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return _last_line(text) or None


def is_environment_failure(line: str) -> bool:
    """Whether a failure line is the environment's (disk full, database gone), not the job's."""
    return any(m in line for m in _ENV_MARKERS)


def failed_jobs(lp, campaign: str, launch_dir: Path | None = None) -> list[dict]:
    """Each FIZZLED firework of the campaign with the last line of its real exception.

    The line comes from the last launch's ``action.stored_data._exception._stacktrace``
    (what FireWorks recorded), else its ``ionflow_lost_run`` reason, else the last line of
    ``FW_job.error`` in its launch directory. Returns dicts ``fw_id``, ``name``,
    ``material``, ``line``, ``environment`` (disk full / database unreachable),
    ``launch_dir``.
    """
    out: list[dict] = []
    fws = list(
        lp.fireworks.find(
            {"spec.ionflow_campaign": campaign, "state": "FIZZLED"},
            {"fw_id": 1, "name": 1, "launches": 1, "spec.ionflow_material": 1},
        ).sort([("spec.ionflow_material", 1), ("fw_id", 1)])
    )
    last_ids = [fw["launches"][-1] for fw in fws if fw.get("launches")]
    launches = {
        d["launch_id"]: d
        for d in lp.launches.find(
            {"launch_id": {"$in": last_ids}},
            {
                "launch_id": 1,
                "launch_dir": 1,
                "action.stored_data._exception._stacktrace": 1,
                "action.stored_data.ionflow_lost_run": 1,
            },
        )
    }
    for fw in fws:
        doc = launches.get((fw.get("launches") or [None])[-1]) or {}
        stored = (doc.get("action") or {}).get("stored_data") or {}
        trace = (stored.get("_exception") or {}).get("_stacktrace")
        line = _last_line(trace) if trace else None
        if not line and stored.get("ionflow_lost_run"):
            line = f"lost run: {stored['ionflow_lost_run']}"
        if not line:
            line = _error_file_line(doc.get("launch_dir"))
        if not line:
            where = doc.get("launch_dir") or (str(launch_dir) if launch_dir else "its launch dir")
            line = f"no exception recorded (see {where}/FW_job.error)"
        if len(line) > 1000:
            line = line[:1000] + "…"
        out.append(
            {
                "fw_id": fw["fw_id"],
                "name": fw.get("name", ""),
                "material": (fw.get("spec") or {}).get("ionflow_material", "?"),
                "line": line,
                "environment": is_environment_failure(line),
                "launch_dir": doc.get("launch_dir"),
            }
        )
    return out


class _Display:
    """Live progress (jobs done/total, current job, MD step) on stderr, from a thread."""

    def __init__(self, lp, campaign: str, run_root: Path, enabled: bool):
        self.lp, self.campaign, self.run_root, self.enabled = lp, campaign, run_root, enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _md_line(self) -> str:
        newest, t_new = None, 0.0
        for p in self.run_root.glob(f"{self.campaign}/*/*/progress.json"):
            try:
                m = p.stat().st_mtime
            except OSError:
                continue
            if m > t_new:
                newest, t_new = p, m
        if newest is None or time.time() - t_new > 30:
            return ""
        try:
            d = json.loads(newest.read_text())
        except (OSError, ValueError):
            return ""
        return f"MD {d['material']} {d['tag']}: step {d['step']}/{d['total']}"

    def _render(self):
        from rich.table import Table

        states = campaign_states(self.lp, self.campaign)
        total = sum(sum(c.values()) for c in states.values())
        done = sum(c["COMPLETED"] for c in states.values())
        running = [
            fw["name"]
            for fw in self.lp.fireworks.find(
                {"spec.ionflow_campaign": self.campaign, "state": "RUNNING"}, {"name": 1}
            )
        ]
        tab = Table.grid(padding=(0, 2))
        tab.add_row(
            f"[bold]{self.campaign}[/]: {done}/{total} jobs done",
            ", ".join(f"{m}: {c['COMPLETED']}/{sum(c.values())}" for m, c in states.items()),
        )
        tab.add_row("running", ", ".join(running) or "—")
        md = self._md_line()
        if md:
            tab.add_row("", md)
        fizzled = sum(c["FIZZLED"] for c in states.values())
        if fizzled:
            tab.add_row("[red]fizzled[/]", str(fizzled))
        return tab

    def _loop(self, live):
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                live.update(self._render())

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.live import Live

        # jobs redirect fd 2 into their launcher directory: draw on a copy of the terminal
        self._tty = os.fdopen(os.dup(2), "w")
        console = Console(file=self._tty, force_terminal=True)
        self._live = Live(self._render(), console=console, refresh_per_second=2)
        self._live.__enter__()
        self._thread = threading.Thread(target=self._loop, args=(self._live,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=3)
            if exc[0] is None:  # on an error the database may be gone: no last render
                with contextlib.suppress(Exception):
                    self._live.update(self._render())
            self._live.__exit__(*exc)
            self._tty.close()


def _quiet_database_errors_in_threads() -> None:
    """Database errors raised in background threads (FireWorks' ping thread pings once more
    when a job ends, also when the database is gone) go to the log, not as a traceback on
    the terminal: the main thread reports the failure in one line."""
    default = threading.excepthook
    if getattr(default, "_ionflow", False):
        return

    def hook(args):
        if type(args.exc_value).__module__.startswith("pymongo"):
            logging.getLogger("ionflow.dispatch").debug(
                "database error in thread %s: %s",
                getattr(args.thread, "name", "?"),
                args.exc_value,
            )
            return
        default(args)

    hook._ionflow = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def work_until_done(
    lp, fworker, launch_dir: Path, sleep_s: float = 1.0, recover=None, recover_every_s=None
) -> bool:
    """Launch rockets one after another until nothing of the worker's query can run.

    Like FireWorks' ``rapidfire`` (one launcher directory per job, stdout/stderr of the
    job redirected into it) but Ctrl-C stops the loop: the running job is interrupted
    (FireWorks records it as FIZZLED; the next ``ionflow run`` resets it and its MD
    resumes from the checkpoint) and nothing new starts. While it waits for jobs other
    workers run, ``recover()`` is called every ``recover_every_s`` seconds (resetting jobs
    whose lease expired, which this loop then runs). Returns True when interrupted.
    """
    from fireworks.core.rocket_launcher import launch_rocket
    from fireworks.utilities.fw_utilities import create_datestamp_dir, redirect_local

    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    _quiet_database_errors_in_threads()

    def on_sigint(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    log = logging.getLogger("ionflow.dispatch")
    home = os.getcwd()
    last_recover = time.monotonic()
    try:
        while not stop.is_set():
            if not lp.run_exists(fworker):
                if recover is not None and time.monotonic() - last_recover > (
                    recover_every_s or 60.0
                ):
                    last_recover = time.monotonic()
                    if recover():
                        continue
                if not lp.future_run_exists(fworker):
                    break
                time.sleep(sleep_s)
                continue
            ldir = create_datestamp_dir(str(launch_dir), log, prefix="launcher_")
            os.chdir(ldir)
            try:
                with redirect_local():
                    launch_rocket(lp, fworker, strm_lvl="ERROR")
            except KeyboardInterrupt:
                stop.set()
            except Exception as exc:
                from ionflow.store import connection_error

                cause = connection_error(exc)
                if cause is not None and cause is not exc:
                    raise cause from None  # the database went away: say that, not the echo
                raise
            finally:
                os.chdir(home)
    finally:
        signal.signal(signal.SIGINT, previous)
    return stop.is_set()


def run_campaign(
    spec_path: Path,
    *,
    data_dir: Path | None = None,
    uri: str | None = None,
    launchpad: Path | None = None,
    submit_only: bool = False,
    progress: bool = True,
    echo=print,
) -> dict:
    """Validate, submit (idempotently) and — unless ``submit_only`` — run the campaign locally.

    Returns a dict with what was added/reused/recovered and the final state counts.
    """
    from ionflow.campaign import plan_campaign, submission_lines, submit
    from ionflow.spec import load_campaign
    from ionflow.store import reset_launchpad_if_new, resolve_database
    from ionflow.summary import set_current_summaries

    spec, materials = load_campaign(spec_path)  # raises before anything is touched
    spec_path = Path(spec_path).resolve()  # (after: a symlink loop is a one-line error there)
    data_dir = Path(data_dir or (Path.cwd() / "ionflow-data")).resolve()
    project = Project(data_dir)
    planned = plan_campaign(spec, materials, project.run_root)  # also before any DB write
    settings = database_settings(spec, spec_path, data_dir, uri, launchpad)
    db = resolve_database(settings)
    echo(f"database: {db.description}")
    lp = db.launchpad()
    lp.m_logger.setLevel(logging.WARNING)
    reset_launchpad_if_new(lp)
    with project_lock(data_dir):
        recovered = recover_interrupted(lp, spec.campaign) if not submit_only else {}
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
        result = submit(lp, planned, spec.campaign)
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
        project.launch_dir.mkdir(parents=True, exist_ok=True)
        fworker = db.fworker(name="ionflow-local", query={"spec.ionflow_campaign": spec.campaign})
        logging.disable(logging.INFO)  # FireWorks/jobflow chatter; the display shows progress
        from ionflow.lease import lease_s, ping_period_s

        def recover() -> list[int]:
            reset, _ = recover_lost(lp, spec.campaign, echo=echo)
            return reset

        from datetime import datetime

        started = datetime.now().isoformat()  # jobflow's completed_at: local, naive
        try:
            with _Display(lp, spec.campaign, project.run_root, progress and sys.stderr.isatty()):
                interrupted = work_until_done(
                    lp,
                    fworker,
                    project.launch_dir,
                    recover=recover,
                    recover_every_s=max(min(ping_period_s(), lease_s() / 2), 1.0),
                )
        finally:
            logging.disable(logging.NOTSET)
        if interrupted:
            raise KeyboardInterrupt
        result["states"] = {m: dict(c) for m, c in campaign_states(lp, spec.campaign).items()}
        result["failures"] = failed_jobs(lp, spec.campaign, project.launch_dir)
        with db.client() as client:
            for doc in client[db.database]["outputs"].find(
                {
                    "output.campaign": spec.campaign,
                    "output.md.recovery_note": {"$type": "string"},
                    "completed_at": {"$gte": started},
                },
                {"name": 1, "output.md.recovery_note": 1},
            ):
                from rich.markup import escape

                echo(escape(f"note: {doc['name']}: {doc['output']['md']['recovery_note']}"))
        return result


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


def running_jobs(lp, campaign: str) -> list[str]:
    """One line per RUNNING job: who holds it and its last heartbeat, or why it is lost."""
    from ionflow.lease import find_lost_runs, lease_s

    lost, live = find_lost_runs(
        lp, {"spec.ionflow_campaign": campaign}, default_lease_s=max(lease_s(), 300.0)
    )
    lines = [f"running: {r.material} / {r.describe()}" for r in live]
    lines += [
        f"lost: {r.material} / fw {r.fw_id} {r.name}: {r.reason} (the next `ionflow run` or "
        "`ionflow recover` makes it READY again; its MD resumes from the checkpoint)"
        for r in lost
    ]
    return lines
