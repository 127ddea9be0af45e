"""Job ownership across workers: leases on FireWorks launches, run-directory locks, fencing.

The claim of a worker on a firework *is* its FireWorks launch: ``checkout_fw`` moves a READY
firework to RUNNING atomically, so two workers never check out the same firework. What
FireWorks does not do is tell a live claim from a dead one quickly (its rocket pings
``launches.state_history[-1].updated_on`` once an hour, ``PING_TIME_SECS``), nor stop a
worker whose claim was taken away. ionflow adds:

* **a lease**: while :class:`ionflow.backends.fw_tasks.IonflowJobFiretask` runs a job, a thread renews
  the launch every :func:`ping_period_s` seconds with FireWorks' own ``ping_launch`` and
  records who holds it in the launch document (``ionflow_lease``: host, pid, process start
  time, ping period and lease length). A launch whose last ping is older than its lease
  (:func:`lease_s`, default 5 ping periods), or whose worker process is gone from this host,
  is *lost* (:func:`find_lost_runs`); only lost launches are reset, by ``ionflow run``,
  ``ionflow recover`` and ``launch --watch`` alike. A live launch is never touched.
* **fencing**: the lease thread checks on every ping that the launch still owns the firework
  (the firework is RUNNING with this launch, the launch is RUNNING). When it does not, or
  when the lease could not be renewed for ``lease - ping`` seconds (database unreachable:
  another worker may take over once the lease expires), :meth:`WorkerLease.check` raises
  :class:`LeaseLost`. The MD checks before every frame and checkpoint, before the trajectory
  is stored, and jobflow's output write is fenced too (:func:`fenced_store`): a stale
  worker stops writing.
* **a run-directory lock** (:class:`RunDirLock`): one worker writes an MD directory at a
  time. The lock file holds host, pid, process start time and a token; its mtime is the
  heartbeat. It is taken over only when stale: its process is gone from this host, or no
  heartbeat for ``lease`` seconds.

Limits (stated in the README): the lease ages are compared across machines through the
timestamps the workers write, so clocks must agree to well under a ping period; a worker
frozen (SIGSTOP, swapped out) between a fence check and the write that follows it can still
write once after its lease was taken over.

Settings: ``IONFLOW_LEASE_PING_S`` (default 60 s) and ``IONFLOW_LEASE_S`` (default 5 ping
periods, at least 2). Both are read by the worker; recovery uses the values each launch
recorded, so checkers need no configuration.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ionflow.names import LEASE_FIELD, LOST_RUN_FIELD, META_MATERIAL

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fireworks import LaunchPad

__all__ = [
    "LEASE_ENV",
    "PING_ENV",
    "LeaseLost",
    "LiveRun",
    "LostRun",
    "RunDirBusy",
    "RunDirLock",
    "WorkerLease",
    "current_lease",
    "fenced_store",
    "find_lost_runs",
    "lease_s",
    "ping_period_s",
    "reset_lost_runs",
    "task_lease",
]

PING_ENV = "IONFLOW_LEASE_PING_S"
LEASE_ENV = "IONFLOW_LEASE_S"
DEFAULT_PING_S = 60.0
# LEASE_FIELD ("ionflow_lease", the field of a launch document): see ionflow.names
LOCK_NAME = ".ionflow-run.lock"
_GUARD_NAME = ".ionflow-run.guard"

log = logging.getLogger(__name__)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: must be > 0")
    return value


def ping_period_s() -> float:
    """Seconds between two lease renewals (``IONFLOW_LEASE_PING_S``, default 60)."""
    return _env_seconds(PING_ENV, DEFAULT_PING_S)


def lease_s() -> float:
    """Seconds without a renewal after which a launch is lost (``IONFLOW_LEASE_S``).

    Default 5 ping periods; never less than 2 ping periods.
    """
    ping = ping_period_s()
    return max(_env_seconds(LEASE_ENV, 5 * ping), 2 * ping)


class LeaseLost(RuntimeError):
    """This worker no longer owns the job it runs: it must stop writing."""


class RunDirBusy(RuntimeError):
    """Another live worker writes the MD run directory."""


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _process_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` on this host is alive and (if ``started`` is known) the same process."""
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None and abs(proc.create_time() - float(started)) > 1.0:
            return False  # the pid was reused
        return True
    except psutil.Error:
        return False


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _parse_time(text: Any) -> datetime.datetime | None:
    if isinstance(text, datetime.datetime):
        return text if text.tzinfo else text.replace(tzinfo=datetime.UTC)
    try:
        t = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def last_ping(launch_doc: dict[str, Any]) -> datetime.datetime | None:
    """When a RUNNING launch last pinged (``state_history`` RUNNING entry, ``updated_on``)."""
    for entry in reversed(launch_doc.get("state_history") or []):
        if entry.get("state") == "RUNNING":
            return _parse_time(entry.get("updated_on") or entry.get("created_on"))
    return None


# ----------------------------------------------------------------------------- the lease


class WorkerLease:
    """The claim of this worker on one firework (its launch), renewed by a thread.

    Parameters
    ----------
    lp
        The LaunchPad the worker checked the firework out of.
    fw_id, launch_id
        The firework and this worker's launch of it.
    ping_s, lease_length_s
        Renewal period and lease length (defaults: :func:`ping_period_s`, :func:`lease_s`).
    """

    def __init__(
        self,
        lp: LaunchPad,
        fw_id: int,
        launch_id: int,
        *,
        ping_s: float | None = None,
        lease_length_s: float | None = None,
    ) -> None:
        self.lp = lp
        self.fw_id = int(fw_id)
        self.launch_id = int(launch_id)
        self.ping_s = float(ping_s if ping_s is not None else ping_period_s())
        self.lease_s = float(lease_length_s if lease_length_s is not None else lease_s())
        self._renewed = time.monotonic()
        self._lost: str | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- ownership -------------------------------------------------------------------------

    def owned(self) -> str | None:
        """``None`` if the launch still owns the firework, else why not (reads the database)."""
        fw = self.lp.fireworks.find_one({"fw_id": self.fw_id}, {"state": 1, "launches": 1})
        if fw is None:
            return f"firework {self.fw_id} was deleted"
        if self.launch_id not in (fw.get("launches") or []):
            return (
                f"launch {self.launch_id} no longer owns firework {self.fw_id} (it was reset "
                f"and is now {fw.get('state')}; another worker may run it)"
            )
        if fw.get("state") != "RUNNING":
            return f"firework {self.fw_id} is {fw.get('state')}, not RUNNING"
        launch = self.lp.launches.find_one({"launch_id": self.launch_id}, {"state": 1})
        if launch is None or launch.get("state") != "RUNNING":
            state = None if launch is None else launch.get("state")
            return f"launch {self.launch_id} was marked {state} (declared lost)"
        return None

    def renew(self) -> None:
        """Ping the launch and check ownership once (what the thread does every period)."""
        started = time.monotonic()
        try:
            self.lp.ping_launch(self.launch_id)
            why = self.owned()
        except Exception as exc:  # database unreachable: retry next period
            self._error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return
        if why is not None:
            self._lost = why
            self._stop.set()
            return
        self._renewed = started
        self._error = None

    def _loop(self) -> None:
        while not self._stop.wait(self.ping_s):
            self.renew()

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this worker may still write for this job."""
        if self._lost is not None:
            raise LeaseLost(f"fw {self.fw_id}: {self._lost}; this worker stops writing")
        age = time.monotonic() - self._renewed
        if age > self.lease_s - self.ping_s:
            raise LeaseLost(
                f"fw {self.fw_id}: lease of launch {self.launch_id} not renewed for {age:.0f} s "
                f"(lease {self.lease_s:g} s; last error: {self._error or 'none'}); another "
                "worker may take the job over, so this worker stops writing"
            )

    # -- life cycle ------------------------------------------------------------------------

    def launch_running(self, launch_id: int) -> bool:
        """Whether ``launch_id`` (another launch of this firework) is still RUNNING."""
        doc = self.lp.launches.find_one({"launch_id": int(launch_id)}, {"state": 1})
        return doc is not None and doc.get("state") == "RUNNING"

    def record(self) -> dict[str, Any]:
        """What the launch document's ``ionflow_lease`` holds."""
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_started": _process_start(pid),
            "ping_s": self.ping_s,
            "lease_s": self.lease_s,
            "claimed_at": _utcnow().isoformat(),
        }

    def start(self) -> WorkerLease:
        self.lp.launches.update_one(
            {"launch_id": self.launch_id, "state": "RUNNING"},
            {"$set": {LEASE_FIELD: self.record()}},
        )
        self.lp.ping_launch(self.launch_id)
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="ionflow-lease", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


_CURRENT: contextvars.ContextVar[WorkerLease | None] = contextvars.ContextVar(
    "ionflow_lease", default=None
)


def current_lease() -> WorkerLease | None:
    """The lease of the job running in this process (``None`` outside a FireWorks worker)."""
    return _CURRENT.get()


def _my_launch(lp: LaunchPad, fw_id: int) -> int | None:
    """The launch of ``fw_id`` that this process checked out (its launch dir is the cwd)."""
    fw = lp.fireworks.find_one({"fw_id": fw_id}, {"launches": 1, "state": 1})
    if fw is None or not fw.get("launches"):
        return None
    lid = fw["launches"][-1]
    doc = lp.launches.find_one({"launch_id": lid}, {"launch_dir": 1, "host": 1, "state": 1})
    if doc is None or doc.get("state") != "RUNNING":
        return None
    cwd = os.path.abspath(os.getcwd())
    with contextlib.suppress(OSError):
        if os.path.samefile(doc.get("launch_dir") or "", cwd):
            return lid
    return None


@contextlib.contextmanager
def task_lease(lp: LaunchPad | None, fw_id: int | None) -> Iterator[WorkerLease | None]:
    """Hold the lease of the firework this process runs (``None`` without a LaunchPad).

    Raises :class:`LeaseLost` at once if the firework was reset between its checkout and now.
    """
    if lp is None or fw_id is None:
        yield None
        return
    lid = _my_launch(lp, fw_id)
    if lid is None:
        raise LeaseLost(
            f"fw {fw_id}: this worker's launch no longer owns the firework (it was reset "
            "before the job started); not running it"
        )
    lease = WorkerLease(lp, fw_id, lid).start()
    token = _CURRENT.set(lease)
    try:
        yield lease
    finally:
        _CURRENT.reset(token)
        lease.stop()


@contextlib.contextmanager
def fenced_store(store: Any, lease: WorkerLease | None) -> Iterator[None]:
    """Make ``store.update`` (jobflow's output write) check the lease first."""
    if lease is None:
        yield
        return
    original = store.update

    def update(*args: Any, **kwargs: Any) -> Any:
        lease.check()
        return original(*args, **kwargs)

    store.update = update
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError, KeyError):
            del store.__dict__["update"]


# ----------------------------------------------------------------------------- lost runs


@dataclass
class LostRun:
    """A RUNNING (or RESERVED) firework whose claim has expired or whose worker is gone.

    ``job_id``: the Slurm job that ran it, when known (the Slurm backend's recovery).
    """

    fw_id: int
    name: str
    material: str
    launch_id: int | None
    reason: str
    job_id: str | None = None


@dataclass
class LiveRun:
    """A RUNNING firework whose worker holds a live lease."""

    fw_id: int
    name: str
    material: str
    launch_id: int
    host: str
    pid: int | None
    age_s: float | None
    lease_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        who = f"pid {self.pid} on {self.host}" if self.pid is not None else f"host {self.host}"
        age = f", last heartbeat {self.age_s:.0f} s ago" if self.age_s is not None else ""
        return f"fw {self.fw_id} {self.name}: held by {who}{age}"


def classify_launch(
    launch_doc: dict[str, Any] | None,
    *,
    default_lease_s: float | None,
    now: datetime.datetime | None = None,
) -> tuple[bool | None, str, float | None]:
    """Whether a RUNNING launch is lost: ``(lost, reason, age_s)``.

    ``lost`` is ``None`` when nothing can be said (no lease record and no default lease).
    A launch is lost when its recorded worker process is gone from *this* host, or its last
    ping is older than its recorded lease (else ``default_lease_s``).
    """
    if launch_doc is None:
        return True, "its launch document is missing", None
    now = now or _utcnow()
    pinged = last_ping(launch_doc)
    age = (now - pinged).total_seconds() if pinged is not None else None
    rec = launch_doc.get(LEASE_FIELD) or {}
    if rec and rec.get("host") == socket.gethostname() and rec.get("pid") is not None:
        if not _process_alive(int(rec["pid"]), rec.get("pid_started")):
            return True, f"its worker (pid {rec['pid']} on this host) is gone", age
    limit = rec.get("lease_s") or default_lease_s
    if limit is None:
        return None, "", age
    if age is None or age > float(limit):
        what = "no heartbeat" if age is None else f"no heartbeat for {age:.0f} s"
        return True, f"{what} (lease {float(limit):g} s)", age
    return False, "", age


def find_lost_runs(
    lp: LaunchPad,
    query: dict[str, Any] | None = None,
    *,
    default_lease_s: float | None = None,
) -> tuple[list[LostRun], list[LiveRun]]:
    """RUNNING fireworks matching ``query`` whose lease has expired, and the live ones.

    Parameters
    ----------
    lp
        The LaunchPad.
    query
        Restricts the fireworks (e.g. ``{"spec.ionflow_campaign": name}``).
    default_lease_s
        Lease of launches without an ``ionflow_lease`` record (other tools' workers, or a
        worker that has not started its job yet). ``None``: such launches are left alone
        unless their worker is known to be gone.
    """
    lost: list[LostRun] = []
    live: list[LiveRun] = []
    fws = list(
        lp.fireworks.find(
            {**(query or {}), "state": "RUNNING"},
            {"fw_id": 1, "name": 1, "launches": 1, f"spec.{META_MATERIAL}": 1},
        )
    )
    last = {fw["fw_id"]: (fw.get("launches") or [None])[-1] for fw in fws}
    docs = {
        d["launch_id"]: d
        for d in lp.launches.find(
            {"launch_id": {"$in": [lid for lid in last.values() if lid is not None]}},
            {"launch_id": 1, "state_history": 1, "host": 1, LEASE_FIELD: 1, "state": 1},
        )
    }
    now = _utcnow()
    for fw in fws:
        lid = last[fw["fw_id"]]
        material = (fw.get("spec") or {}).get(META_MATERIAL, "?")
        doc = docs.get(lid) if lid is not None else None
        is_lost, reason, age = classify_launch(doc, default_lease_s=default_lease_s, now=now)
        if is_lost:
            lost.append(LostRun(fw["fw_id"], fw.get("name", ""), material, lid, reason))
        elif doc is not None:
            rec = doc.get(LEASE_FIELD) or {}
            live.append(
                LiveRun(
                    fw["fw_id"],
                    fw.get("name", ""),
                    material,
                    lid,
                    rec.get("host") or doc.get("host") or "?",
                    rec.get("pid"),
                    age,
                    rec.get("lease_s"),
                )
            )
    return lost, live


def reset_lost_runs(
    lp: LaunchPad, lost: list[LostRun], *, states: tuple[str, ...] = ("RUNNING",)
) -> list[int]:
    """Rerun lost fireworks (READY again) and close their launches as FIZZLED with the reason.

    A firework that moved on since it was found (no longer in one of ``states``, completed,
    or checked out again) is skipped. Returns the fw ids that were reset.
    """
    from fireworks import FWAction

    done: list[int] = []
    for run in lost:
        fw = lp.fireworks.find_one({"fw_id": run.fw_id}, {"state": 1, "launches": 1})
        if fw is None or fw.get("state") not in states:
            continue
        if (fw.get("launches") or [None])[-1] != run.launch_id:
            continue
        lp.rerun_fw(run.fw_id)
        done.append(run.fw_id)
        if run.launch_id is not None:  # archived by the rerun: close it with the reason
            with contextlib.suppress(Exception):
                lp.complete_launch(
                    run.launch_id,
                    FWAction(stored_data={LOST_RUN_FIELD: run.reason}),
                    state="FIZZLED",
                )
    return done


# ----------------------------------------------------------------------------- run dir lock


class RunDirLock:
    """One writer per MD run directory: a lock file with a heartbeat, stale-lock safe.

    ``<workdir>/.ionflow-run.lock`` holds ``{"host", "pid", "pid_started", "token",
    "acquired_at"}`` (and ``fw_id``/``launch_id`` when a FireWorks lease holds it); its
    mtime is renewed every ``heartbeat_s`` by a thread. A lock is *stale* when its process
    is gone from this host, when its mtime is older than ``stale_after_s`` (any host), or —
    with a ``lease`` — when it was taken for an earlier launch of the same firework that is
    no longer RUNNING (declared lost: that worker is fenced already, so a rerun after a
    cancelled Slurm job need not wait for the lock to age); only a stale lock is taken
    over. Taking it is serialised by
    an ``flock`` on ``<workdir>/.ionflow-run.guard``. :meth:`check` raises
    :class:`LeaseLost` once the lock was taken over (the token in the file is not ours).

    Parameters
    ----------
    workdir
        The MD run directory.
    stale_after_s, heartbeat_s
        Defaults: :func:`lease_s`, :func:`ping_period_s`.
    wait_s
        How long :meth:`acquire` waits for a live holder before raising
        :class:`RunDirBusy` (default ``stale_after_s + heartbeat_s``: long enough for a
        fenced holder to stop or for its lock to go stale).
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        stale_after_s: float | None = None,
        heartbeat_s: float | None = None,
        wait_s: float | None = None,
        lease: WorkerLease | None = None,
    ) -> None:
        self.lease = lease
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.heartbeat_s = float(heartbeat_s if heartbeat_s is not None else ping_period_s())
        self.stale_after_s = float(stale_after_s if stale_after_s is not None else lease_s())
        self.wait_s = float(wait_s if wait_s is not None else self.stale_after_s + self.heartbeat_s)
        self.token = secrets.token_hex(8)
        self.taken_over: str | None = None
        self._beat_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[dict[str, Any] | None, float | None]:
        try:
            st = self.path.stat()
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError):
            return {}, None  # unreadable: treated as stale below
        return (data if isinstance(data, dict) else {}), st.st_mtime

    def _stale(self, info: dict[str, Any], mtime: float | None) -> str | None:
        """Why the holder's lock is stale, or ``None`` while it is live."""
        if not info or mtime is None:
            return "unreadable lock file"
        if info.get("host") == socket.gethostname() and info.get("pid") is not None:
            if int(info["pid"]) == os.getpid():
                return "held by this process before"
            if not _process_alive(int(info["pid"]), info.get("pid_started")):
                return f"its writer (pid {info['pid']} on this host) is gone"
        lease = self.lease
        if (
            lease is not None
            and info.get("fw_id") == lease.fw_id
            and info.get("launch_id") not in (None, lease.launch_id)
        ):
            with contextlib.suppress(Exception):
                if not lease.launch_running(int(info["launch_id"])):
                    return f"its launch {info['launch_id']} of this job was declared lost"
        age = time.time() - mtime
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _write(self) -> None:
        pid = os.getpid()
        record = {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_started": _process_start(pid),
            "token": self.token,
            "acquired_at": _utcnow().isoformat(),
        }
        if self.lease is not None:
            record.update(fw_id=self.lease.fw_id, launch_id=self.lease.launch_id)
        tmp = self.path.with_name(f"{self.path.name}.{pid}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.path)

    def acquire(self) -> str | None:
        """Take the lock; returns why a previous holder's lock was taken over (or ``None``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            with open(self.workdir / _GUARD_NAME, "a") as guard:
                fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
                try:
                    info, mtime = self._read()
                    why = None if info is None else self._stale(info, mtime)
                    if info is None or why is not None:
                        self._write()
                        self.taken_over = why
                        break
                finally:
                    fcntl.flock(guard.fileno(), fcntl.LOCK_UN)
            if time.monotonic() > deadline:
                age = time.time() - mtime if mtime else float("nan")
                raise RunDirBusy(
                    f"MD run directory {self.workdir} is being written by pid {info.get('pid')} "
                    f"on {info.get('host')} (heartbeat {age:.0f} s ago; waited "
                    f"{self.wait_s:.0f} s); it is taken over only after "
                    f"{self.stale_after_s:g} s without a heartbeat"
                )
            time.sleep(min(1.0, self.heartbeat_s))
        self._beat_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="ionflow-runlock", daemon=True)
        self._thread.start()
        return self.taken_over

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                info, _ = self._read()
                if not info or info.get("token") != self.token:
                    return
                os.utime(self.path)
                self._beat_ok = time.monotonic()
            except OSError:
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lock is no longer ours (or its heartbeat failed)."""
        info, _ = self._read()
        if not info or info.get("token") != self.token:
            who = (
                f"pid {info.get('pid')} on {info.get('host')}" if info else "someone (lock removed)"
            )
            raise LeaseLost(
                f"MD run directory {self.workdir} was taken over by {who}; this worker stops "
                "writing"
            )
        age = time.monotonic() - self._beat_ok
        if age > self.stale_after_s - self.heartbeat_s:
            raise LeaseLost(
                f"MD run directory {self.workdir}: lock heartbeat failed for {age:.0f} s; "
                "this worker stops writing"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        info, _ = self._read()
        if info and info.get("token") == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
