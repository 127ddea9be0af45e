"""The FireWorks-local backend: a FireWorks LaunchPad, and a worker here that runs the
campaign to completion (``ionflow run``).

Resumability: the run holds a lock in the project directory (one local worker per
project). Several workers may share one database (other data directories, other hosts,
Slurm jobs): each job a worker runs is held by a lease (:mod:`ionflow.backends.lease`),
renewed while it runs. On start, and every lease period while it waits for other workers, a
run resets to READY only the jobs of this campaign whose lease has expired or whose worker
process is gone from this host (Ctrl-C, kill, crash) — their MD resumes from its checkpoint
because the MD working directory is stable; a job a live worker holds is never touched.
FIZZLED ones are retried once per run. The workflows themselves are only added when their
reuse keys are new (:mod:`ionflow.backends.fw_submit`), so running twice never duplicates
anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ionflow.backends.base import (
    BackendBase,
    CampaignStatus,
    JobRecord,
    Project,
    RecoveryReport,
    RunReport,
    data_dir_path,
)
from ionflow.names import (
    LOST_RUN_FIELD,
    META_CAMPAIGN,
    META_KEY,
    META_MATERIAL,
    META_SUBMITTED,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ionflow.campaign import PlannedMaterial
    from ionflow.store import ResolvedDatabase

__all__ = [
    "FireWorksLocal",
    "campaign_jobs",
    "campaign_states",
    "failed_jobs",
    "is_environment_failure",
    "recover_interrupted",
    "recover_lost",
    "running_jobs",
    "work_until_done",
]

#: The FireWorks query field of a campaign's fireworks.
_CAMPAIGN = f"spec.{META_CAMPAIGN}"
#: Default lease of a launch without a lease record (a worker that has not started its job).
_MIN_DEFAULT_LEASE_S = 300.0


def campaign_states(lp, campaign: str) -> dict[str, Counter]:
    """State counts of every material's fireworks."""
    out: dict[str, Counter] = {}
    for fw in lp.fireworks.find({_CAMPAIGN: campaign}, {"state": 1, f"spec.{META_MATERIAL}": 1}):
        out.setdefault(fw["spec"].get(META_MATERIAL, "?"), Counter())[fw["state"]] += 1
    return out


def _lost_and_live(lp, campaign: str) -> tuple[list, list]:
    """The campaign's lost RUNNING fireworks and those a live worker holds (leases; a launch
    without a lease record is lost after :data:`_MIN_DEFAULT_LEASE_S` or the lease)."""
    from ionflow.backends.lease import find_lost_runs, lease_s

    return find_lost_runs(
        lp, {_CAMPAIGN: campaign}, default_lease_s=max(lease_s(), _MIN_DEFAULT_LEASE_S)
    )


def recover_lost(lp, campaign: str, echo=None) -> tuple[list[int], list]:
    """Reset the campaign's RUNNING fireworks whose lease expired (or whose worker is gone).

    Returns the fw ids reset and the :class:`~ionflow.backends.lease.LiveRun` list of those a live
    worker holds (left alone). ``echo`` (if given) gets one line per reset job.
    """
    from ionflow.backends.lease import reset_lost_runs

    lost, live = _lost_and_live(lp, campaign)
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
    worker elsewhere (:class:`~ionflow.backends.lease.LiveRun`), not touched.
    """
    done: dict[str, list] = {"running": [], "fizzled": [], "live": []}
    done["running"], done["live"] = recover_lost(lp, campaign)
    for fw in lp.fireworks.find(
        {_CAMPAIGN: campaign, "state": "FIZZLED"},
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
            {_CAMPAIGN: campaign, "state": "FIZZLED"},
            {"fw_id": 1, "name": 1, "launches": 1, f"spec.{META_MATERIAL}": 1},
        ).sort([(f"spec.{META_MATERIAL}", 1), ("fw_id", 1)])
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
                f"action.stored_data.{LOST_RUN_FIELD}": 1,
            },
        )
    }
    for fw in fws:
        doc = launches.get((fw.get("launches") or [None])[-1]) or {}
        stored = (doc.get("action") or {}).get("stored_data") or {}
        trace = (stored.get("_exception") or {}).get("_stacktrace")
        line = _last_line(trace) if trace else None
        if not line and stored.get(LOST_RUN_FIELD):
            line = f"lost run: {stored[LOST_RUN_FIELD]}"
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
                "material": (fw.get("spec") or {}).get(META_MATERIAL, "?"),
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
                {_CAMPAIGN: self.campaign, "state": "RUNNING"}, {"name": 1}
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
            logging.getLogger(__name__).debug(
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
    log = logging.getLogger(__name__)
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


def running_jobs(lp, campaign: str) -> list[str]:
    """One line per RUNNING job: who holds it and its last heartbeat, or why it is lost."""
    from ionflow.backends.base import running_lines

    lost, live = _lost_and_live(lp, campaign)
    return running_lines(live, lost)


def campaign_jobs(lp, campaign: str) -> list[JobRecord]:
    """Every firework of the campaign, by material then fw id."""
    return [
        JobRecord(
            fw["fw_id"],
            fw.get("name", ""),
            fw["state"],
            fw["spec"].get(META_MATERIAL, "?"),
            fw["spec"].get(META_SUBMITTED),
            fw["spec"].get(META_KEY),
        )
        for fw in lp.fireworks.find(
            {_CAMPAIGN: campaign},
            {
                "fw_id": 1,
                "name": 1,
                "state": 1,
                f"spec.{META_MATERIAL}": 1,
                f"spec.{META_SUBMITTED}": 1,
                f"spec.{META_KEY}": 1,
            },
        ).sort([(f"spec.{META_MATERIAL}", 1), ("fw_id", 1)])
    ]


def _last_submission(lp, campaign: str) -> dict | None:
    from ionflow.backends.fw_submit import last_submission

    return last_submission(lp, campaign)


# ----------------------------------------------------------------------------- the backend


class FireWorksLocal(BackendBase):
    """FireWorks LaunchPad on the campaign's database; a worker in this process runs it.

    Parameters
    ----------
    db
        The database (LaunchPad and JobStore).
    data_dir
        Project data directory (launcher directories of the local worker); default
        ``./ionflow-data``.
    lp
        A LaunchPad to use (default: a new one on ``db``, closed by :meth:`close`).

    Verbs (:class:`~ionflow.backends.base.Backend`):

    * ``submit(planned, campaign)`` — :func:`ionflow.backends.fw_submit.submit` (the LaunchPad
      is initialised on first use);
    * ``run(campaign, progress=True, echo=print)`` — :func:`work_until_done` with a worker
      pulling only this campaign, resetting lost runs while it waits; ``interrupted`` on
      Ctrl-C;
    * ``status(campaign)`` — states from the LaunchPad, failures with their exception line,
      live and lost runs from the leases, the last submission;
    * ``recover(campaign, dry_run=False, retry_failed=False, echo=None)`` — reset the runs
      whose lease expired or whose worker is gone; with ``retry_failed`` also every FIZZLED
      job (``rerun``: interrupted ones, ``retried``: real failures).
    """

    name: ClassVar[str] = "fireworks-local"

    def __init__(
        self, db: ResolvedDatabase, data_dir: Path | str | None = None, *, lp: Any = None
    ) -> None:
        from ionflow.backends.fw_tasks import launchpad

        self.db = db
        self.project = Project(data_dir_path(data_dir))
        self._own_lp = lp is None
        self._ran = False  # failure lines name the launch directory only after a run here
        self.lp = launchpad(db) if lp is None else lp
        self.lp.m_logger.setLevel(logging.WARNING)

    def close(self) -> None:
        """Close the LaunchPad's client if this backend opened it."""
        if self._own_lp:
            with contextlib.suppress(Exception):
                self.lp.connection.close()

    # -- submit ------------------------------------------------------------------------

    def submit(self, planned: Sequence[PlannedMaterial], campaign: str) -> dict[str, Any]:
        """Add what is new on the LaunchPad, reuse the rest (see :mod:`..fw_submit`)."""
        from ionflow.backends.fw_submit import submit
        from ionflow.backends.fw_tasks import reset_launchpad_if_new

        reset_launchpad_if_new(self.lp)
        return submit(self.lp, list(planned), campaign)

    # -- recover -----------------------------------------------------------------------

    def recover(
        self,
        campaign: str | None,
        *,
        dry_run: bool = False,
        retry_failed: bool = False,
        echo: Any = None,
    ) -> RecoveryReport:
        """Reset this campaign's lost runs (and, with ``retry_failed``, its FIZZLED jobs)."""
        if campaign is None:
            raise ValueError("the local backend recovers one campaign at a time")
        report = RecoveryReport(dry_run=dry_run)
        if dry_run:
            report.lost, report.live = _lost_and_live(self.lp, campaign)
            return report
        if retry_failed:
            done = recover_interrupted(self.lp, campaign)
            report.rerun, report.retried, report.live = (
                done["running"],
                done["fizzled"],
                done["live"],
            )
        else:
            report.rerun, report.live = recover_lost(self.lp, campaign, echo=echo)
        return report

    # -- run ---------------------------------------------------------------------------

    def run(self, campaign: str | None, *, progress: bool = True, echo: Any = print) -> RunReport:
        """Run the campaign's jobs here until none can run (Ctrl-C: ``interrupted``)."""
        from ionflow.backends.lease import lease_s, ping_period_s

        if campaign is None:
            raise ValueError("the local backend runs one campaign at a time")
        project = self.project
        project.launch_dir.mkdir(parents=True, exist_ok=True)
        self._ran = True
        from ionflow.backends.fw_tasks import fworker

        worker = fworker(self.db, name="ionflow-local", query={_CAMPAIGN: campaign})
        logging.disable(logging.INFO)  # FireWorks/jobflow chatter; the display shows progress

        def recover() -> list[int]:
            reset, _ = recover_lost(self.lp, campaign, echo=echo)
            return reset

        try:
            with _Display(self.lp, campaign, project.run_root, progress and sys.stderr.isatty()):
                interrupted = work_until_done(
                    self.lp,
                    worker,
                    project.launch_dir,
                    recover=recover,
                    recover_every_s=max(min(ping_period_s(), lease_s() / 2), 1.0),
                )
        finally:
            logging.disable(logging.NOTSET)
        return RunReport(interrupted=interrupted)

    # -- status ------------------------------------------------------------------------

    def status(self, campaign: str) -> CampaignStatus:
        """The campaign on the LaunchPad; live and lost runs from the workers' leases."""
        out = CampaignStatus(campaign, jobs=campaign_jobs(self.lp, campaign))
        out.last_submission = _last_submission(self.lp, campaign)
        out.failures = failed_jobs(
            self.lp, campaign, self.project.launch_dir if self._ran else None
        )
        out.lost, out.live = _lost_and_live(self.lp, campaign)
        out.fill_counts()
        return out
