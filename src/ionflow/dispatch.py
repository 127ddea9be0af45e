"""``ionflow run``: submit a campaign and work through it with a local FireWorks worker.

Resumability: the run holds a lock in the project directory (one local worker per
project). On start, fireworks of this campaign left RUNNING by a previous interrupted run
(Ctrl-C, kill, crash) are reset to READY — their MD resumes from its checkpoint because
the MD working directory is stable — and FIZZLED ones are retried once per run. The
workflows themselves are only added when their fingerprint is new, so running twice never
duplicates anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
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


def recover_interrupted(lp, campaign: str) -> dict[str, list[int]]:
    """Reset fireworks a previous local run left unfinished to READY.

    ``running``: RUNNING/RESERVED (the worker died) or FIZZLED by a Ctrl-C — their MD
    resumes from its checkpoint; ``fizzled``: real failures, retried once per run.
    """
    done: dict[str, list[int]] = {"running": [], "fizzled": []}
    for fw in lp.fireworks.find(
        {"spec.ionflow_campaign": campaign, "state": {"$in": ["RUNNING", "RESERVED", "FIZZLED"]}},
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
            kind = "running" if "KeyboardInterrupt" in trace else "fizzled"
        lp.rerun_fw(fw["fw_id"])
        done[kind].append(fw["fw_id"])
    return done


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
            with contextlib.suppress(Exception):
                self._live.update(self._render())
            self._live.__exit__(*exc)
            self._tty.close()


def work_until_done(lp, fworker, launch_dir: Path, sleep_s: float = 1.0) -> bool:
    """Launch rockets one after another until nothing of the worker's query can run.

    Like FireWorks' ``rapidfire`` (one launcher directory per job, stdout/stderr of the
    job redirected into it) but Ctrl-C stops the loop: the running job is interrupted
    (FireWorks records it as FIZZLED; the next ``ionflow run`` resets it and its MD
    resumes from the checkpoint) and nothing new starts. Returns True when interrupted.
    """
    from fireworks.core.rocket_launcher import launch_rocket
    from fireworks.utilities.fw_utilities import create_datestamp_dir, redirect_local

    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    log = logging.getLogger("ionflow.dispatch")
    home = os.getcwd()
    try:
        while not stop.is_set():
            if not lp.run_exists(fworker):
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

    spec_path = Path(spec_path).resolve()
    spec, materials = load_campaign(spec_path)  # raises before anything is touched
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
        try:
            with _Display(lp, spec.campaign, project.run_root, progress and sys.stderr.isatty()):
                interrupted = work_until_done(lp, fworker, project.launch_dir)
        finally:
            logging.disable(logging.NOTSET)
        if interrupted:
            raise KeyboardInterrupt
        result["states"] = {m: dict(c) for m, c in campaign_states(lp, spec.campaign).items()}
        return result
