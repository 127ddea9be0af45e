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
    """Reset RUNNING/RESERVED (left by a dead local worker) and FIZZLED fireworks to READY."""
    done: dict[str, list[int]] = {"running": [], "fizzled": []}
    for fw in lp.fireworks.find(
        {"spec.ionflow_campaign": campaign, "state": {"$in": ["RUNNING", "RESERVED", "FIZZLED"]}},
        {"fw_id": 1, "state": 1},
    ):
        lp.rerun_fw(fw["fw_id"])
        done["fizzled" if fw["state"] == "FIZZLED" else "running"].append(fw["fw_id"])
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

        self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=2)
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
    from ionflow.campaign import plan_campaign, submit
    from ionflow.spec import load_campaign
    from ionflow.store import reset_launchpad_if_new, resolve_database

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
        n_jobs = sum(p.n_jobs for p in planned if p.material.name in result["added"])
        echo(
            f"submitted {len(result['added'])} material(s) ({n_jobs} jobs); "
            f"reused {len(result['reused'])} already submitted"
            + (f": {', '.join(result['reused'])}" if result["reused"] else "")
        )
        result["recovered"] = recovered
        result["spec"] = spec
        result["database"] = db
        if submit_only:
            return result
        project.launch_dir.mkdir(parents=True, exist_ok=True)
        fworker = db.fworker(name="ionflow-local", query={"spec.ionflow_campaign": spec.campaign})
        from fireworks.core.rocket_launcher import rapidfire

        logging.disable(logging.INFO)  # FireWorks/jobflow chatter; the display shows progress
        try:
            with _Display(lp, spec.campaign, project.run_root, progress and sys.stderr.isatty()):
                rapidfire(
                    lp,
                    fworker=fworker,
                    m_dir=str(project.launch_dir),
                    nlaunches=0,
                    sleep_time=1,
                    strm_lvl="WARNING",
                    local_redirect=True,
                )
        finally:
            logging.disable(logging.NOTSET)
        result["states"] = {m: dict(c) for m, c in campaign_states(lp, spec.campaign).items()}
        return result
