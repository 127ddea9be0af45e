"""Where results and the FireWorks LaunchPad live: database settings, the embedded server, stores.

Three ways to point ionflow at a database (:class:`DatabaseSettings`):

``uri``
    A MongoDB connection string (``mongodb://`` or ``mongodb+srv://``, may carry credentials
    and TLS options). Results *and* the LaunchPad live on that server.
``launchpad_file``
    A FireWorks ``my_launchpad.yaml``. The LaunchPad is built from it; the results go to the
    same server (a URI is derived from its host/port/username/password/authsource, or its
    ``host`` is used as-is when ``uri_mode`` is true; ``mongoclient_kwargs`` are reused).
    When ``uri`` is also given, results go to ``uri`` and the LaunchPad follows the file.
neither
    ionflow starts (or reuses) its own SecantusDB server -- a MongoDB-wire-protocol server --
    for the project, see :class:`LocalServer`. SecantusDB is GPL-2.0 and beta: it is only
    ever run as a separate process (``secantusd-py``), never imported.

Collection layout
-----------------
``<database>`` (default ``ionflow``) holds the jobflow :class:`~jobflow.JobStore`:

* ``outputs`` -- one small document per job output (:class:`maggma.stores.MongoStore`);
* ``outputs_blobs.files`` / ``outputs_blobs.chunks`` -- the ``"data"`` additional store
  (:class:`maggma.stores.GridFSStore`). Big arrays (trajectories) go there: declare them with
  ``@job(data="trajectory")`` (a key) or ``@job(data=True)`` (the whole output); the
  ``outputs`` document then only holds a reference, never a >16 MB document.

``<fireworks_database>`` (default ``<database>_fireworks``) holds the FireWorks collections
(``fireworks``, ``workflows``, ``launches``, ``fw_id_assigner``, ``offline_runs``). The names
do not collide with the JobStore's even in one database, so on a server where the account may
use a single database only, set ``fireworks_database`` equal to ``database``.

How a FireWorks worker finds the JobStore
-----------------------------------------
jobflow's own :class:`jobflow.managers.fireworks.JobFiretask` takes the store from exactly two
places (``run_task``): the ``store`` embedded in the firetask by
``flow_to_workflow(flow, store=...)`` -- serialised into the ``fireworks`` collection, i.e.
the URI *with its password* ends up in every workflow document -- or, when that is ``None``,
``jobflow.SETTINGS.JOB_STORE``, a module global built once at ``import jobflow`` from
``JOBFLOW_CONFIG_FILE`` / ``~/.jobflow.yaml`` / ``JOBFLOW_*`` variables. It never reads the
FWorker ``env``. The ``SETTINGS`` route has a nasty failure mode: a worker without the config
silently writes every output to an in-memory store and marks the firework COMPLETED.

ionflow therefore uses its own firetask, :class:`IonflowJobFiretask` (a subclass of
``JobFiretask`` producing the same job execution), created by this module's
:func:`flow_to_workflow`. It stores *no* store in the workflow and takes the JobStore from the
FWorker ``env`` key ``"ionflow_jobstore"`` (FireWorks hands the env to every task as
``fw_spec["_fw_env"]``); a worker without it makes the firework FIZZLE with a clear message
instead of losing data. The env value is either

* a :class:`~jobflow.JobStore` object -- :meth:`ResolvedDatabase.fworker`, for in-process
  ``rapidfire``. FireWorks records the FWorker (including ``env``) in every ``launches``
  document, so that FWorker is a subclass whose ``to_dict`` replaces the store with a
  placeholder: the secret stays in memory;
* a path to a ``jobstore.json`` file (mode 0600) -- :meth:`ResolvedDatabase.write_worker_files`,
  for ``rlaunch -l my_launchpad.yaml -w my_fworker.yaml rapidfire`` in another process or a
  Slurm job. Only the path is recorded in ``launches``; the file must be readable where the
  worker runs (shared file system).

Dynamic flows (``Response(replace=..., addition=..., detour=...)``) are converted with the
same firetask, so they stay secret-free as well.

Gotchas
-------
* The embedded server listens on 127.0.0.1 only and without authentication: workers on other
  hosts (Slurm compute nodes) cannot reach it. Use ``uri``/``launchpad_file`` there.
  ``server.json`` records the host name; :meth:`LocalServer.ensure` refuses to start a second
  server for a data directory owned by another host (two servers on one data directory on a
  shared file system would corrupt it).
* ``maggma``'s ``MongoStore.name`` (and so ``JobStore.name``) returns the full URI; never log
  the stores themselves, log :attr:`ResolvedDatabase.description`.
* Workflows made with jobflow's own ``flow_to_workflow`` (``store=None``) would run on these
  workers with ``jobflow.SETTINGS.JOB_STORE`` (in-memory unless configured): always convert
  with this module's :func:`flow_to_workflow`.
* jobflow serialises numpy arrays to JSON lists (``get_output`` returns lists: wrap with
  ``np.asarray``), and the GridFS store JSON-encodes the whole blob: a 20 MB float64 array
  becomes ~50 MB of JSON and takes ~10-20 s to store on this hardware (mostly
  ``jsanitize``/``json.dumps``, not the server). Keep full trajectories as files; put
  summaries/reduced arrays in the store.
* The local server's URI has ``journal=true``; see :class:`LocalServer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import psutil
import yaml
from fireworks import Firework, FWAction, FWorker, LaunchPad, Workflow, explicit_serialize
from fireworks.utilities.fw_serializers import DATETIME_HANDLER, recursive_serialize
from jobflow import JobStore
from jobflow.managers.fireworks import JobFiretask
from pydantic import BaseModel, ConfigDict, Field

from ionflow.errors import EnvironmentFailure, UserInputError
from ionflow.uris import check_mongo_uri, redact_uri
from ionflow.uris import uri_secrets as _uri_secrets

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import jobflow
    import pymongo

__all__ = [
    "BLOBS_COLLECTION",
    "JOBSTORE_ENV_KEY",
    "OUTPUTS_COLLECTION",
    "DatabaseSettings",
    "IonflowJobFiretask",
    "LocalServer",
    "ResolvedDatabase",
    "flow_to_workflow",
    "job_to_firework",
    "redact_uri",
    "reset_launchpad_if_new",
    "resolve_database",
    "worker_jobstore",
]

#: FWorker ``env`` key holding the JobStore (object) or the path to a ``jobstore.json``.
JOBSTORE_ENV_KEY = "ionflow_jobstore"
#: Collection names of the JobStore (documents, and the GridFS "data" store).
OUTPUTS_COLLECTION = "outputs"
BLOBS_COLLECTION = "outputs_blobs"

_SERVER_EXECUTABLE = "secantusd-py"
_LOCAL_HOST = "127.0.0.1"
#: How long every client waits for the server before an operation fails (pymongo's
#: ``serverSelectionTimeoutMS``; its default, 30 s, retried by FireWorks and the stores,
#: made a killed database look like a ~90 s hang). ``IONFLOW_DB_TIMEOUT_S`` overrides it; a
#: ``serverSelectionTimeoutMS`` in the URI or the launchpad file's ``mongoclient_kwargs`` wins.
DB_TIMEOUT_ENV = "IONFLOW_DB_TIMEOUT_S"
DEFAULT_DB_TIMEOUT_S = 15.0


# ----------------------------------------------------------------------------- settings


class DatabaseSettings(BaseModel):
    """Where results and the LaunchPad live.

    Parameters
    ----------
    uri
        MongoDB connection string. May contain credentials: it is excluded from ``repr`` and
        must never be printed or logged; use :meth:`redacted`.
    launchpad_file
        A FireWorks ``my_launchpad.yaml``.
    database
        Database of the JobStore.
    fireworks_database
        Database of the FireWorks collections when the LaunchPad is built from ``uri`` or
        the local server; default ``f"{database}_fireworks"``. Ignored with
        ``launchpad_file`` (the file names its database).
    data_dir
        Data directory of the embedded server; used only when ``uri`` and
        ``launchpad_file`` are both unset. A relative path is taken relative to the current
        directory when the database is resolved: make it absolute if that may differ.
    """

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(default=None, repr=False)
    launchpad_file: Path | None = None
    database: str = "ionflow"
    fireworks_database: str | None = None
    data_dir: Path = Path("ionflow-data")

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a plain dict that is safe to print (password masked)."""
        out = self.model_dump(mode="json")
        if self.uri is not None:
            out["uri"] = redact_uri(self.uri)
        return out


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# ----------------------------------------------------------------------------- local server


def _pid_is_server(pid: int, storage_path: Path | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) SecantusDB process, on ``storage_path`` if given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except psutil.AccessDenied:  # alive but not ours to inspect: trust the ping
        return True
    except psutil.Error:
        return False
    if storage_path is None:
        return True
    return _cmdline_storage_path(cmdline) == str(storage_path)


def _cmdline_storage_path(cmdline: Sequence[str]) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == "--storage-path" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--storage-path="):
            return arg.split("=", 1)[1]
    return None


def _cmdline_port(cmdline: Sequence[str]) -> int | None:
    for i, arg in enumerate(cmdline):
        try:
            if arg == "--port" and i + 1 < len(cmdline):
                return int(cmdline[i + 1])
            if arg.startswith("--port="):
                return int(arg.split("=", 1)[1])
        except ValueError:
            return None
    return None


def _ping(uri: str, timeout_s: float = 1.0, **client_kwargs: Any) -> bool:
    """Whether a MongoDB server at ``uri`` answers ``ping`` within ``timeout_s``."""
    import pymongo
    from pymongo.errors import PyMongoError

    ms = max(int(timeout_s * 1000), 100)
    kwargs = {"serverSelectionTimeoutMS": ms, "connectTimeoutMS": ms, "socketTimeoutMS": ms}
    kwargs.update(client_kwargs)
    try:
        client = pymongo.MongoClient(uri, **kwargs)
    except PyMongoError:
        return False
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _free_port(host: str = _LOCAL_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _server_executable() -> str:
    """``secantusd-py`` next to the running interpreter (the venv), else from ``PATH``."""
    candidate = Path(sys.executable).parent / _SERVER_EXECUTABLE  # no resolve(): keep venv bin
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(_SERVER_EXECUTABLE)
    if found is None:
        raise RuntimeError(
            f"cannot find {_SERVER_EXECUTABLE!r} (SecantusDB) next to {sys.executable} or on "
            "PATH; install ionflow's dependencies or configure a database uri"
        )
    return found


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 16384, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


def _write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path`` with mode 0600 (it may hold credentials)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _dir_lock(lock_file: Path, timeout_s: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``lock_file``; polls until ``timeout_s``."""
    fh = open(lock_file, "a+")  # noqa: SIM115 (closed in finally); O_CLOEXEC by default
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"timed out after {timeout_s:.0f} s waiting for the lock {lock_file} "
                        "(another ionflow process is starting or stopping the server)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


class LocalServer:
    """A SecantusDB server process owned by a project data directory.

    Layout of ``data_dir``: ``db/`` (the storage), ``server.json`` (pid, port, host name),
    ``server.log`` (the server's stdout/stderr), ``server.lock`` (serialises start/stop
    between processes) and ``secantusd.toml`` (empty; passed with ``--config`` so that no
    stray ``./secantusd.toml`` or ``~/.secantus/secantusd.toml`` changes the server).

    The server is started detached (own session, re-parented away from the ionflow process)
    and keeps running after ionflow exits; the next :meth:`ensure` reuses it. Stop it with
    :meth:`stop`.

    Attributes
    ----------
    data_dir : Path
        Absolute project data directory.
    pid : int
        Server process id (on the host recorded in ``server.json``).
    port : int
        TCP port on 127.0.0.1.
    uri : str
        ``mongodb://127.0.0.1:<port>/?journal=true`` (no credentials).

    Notes
    -----
    SecantusDB acknowledges an ordinary write before its log reaches the file system: a
    server killed with SIGKILL (or by the OOM killer) loses the writes of the last ~second
    (measured). ``journal=true`` in :attr:`uri` makes every client (LaunchPad, stores,
    ``rlaunch`` workers) wait for the log, so acknowledged writes survive ``kill -9``; it
    costs ~8 ms per write and makes GridFS uploads ~3x slower. Killing ionflow or a worker
    never loses data; the server is a separate process. Stop it with SIGTERM (:meth:`stop`).
    """

    INFO_FILE = "server.json"
    LOG_FILE = "server.log"
    LOCK_FILE = "server.lock"
    CONFIG_FILE = "secantusd.toml"
    STORAGE_DIR = "db"

    def __init__(self, data_dir: Path, pid: int, port: int, host: str = _LOCAL_HOST) -> None:
        self.data_dir = Path(data_dir)
        self.pid = int(pid)
        self.port = int(port)
        self.host = host

    @property
    def uri(self) -> str:
        """Connection string of the server, with ``journal=true`` (see the class notes)."""
        return f"mongodb://{self.host}:{self.port}/?journal=true"

    @property
    def storage_path(self) -> Path:
        """The server's ``--storage-path``."""
        return self.data_dir / self.STORAGE_DIR

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.data_dir / self.LOG_FILE

    def __repr__(self) -> str:
        return f"LocalServer(data_dir={str(self.data_dir)!r}, pid={self.pid}, port={self.port})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LocalServer):
            return NotImplemented
        return (self.data_dir, self.pid, self.port) == (other.data_dir, other.pid, other.port)

    __hash__ = None  # type: ignore[assignment]

    # -- discovery -------------------------------------------------------------------------

    @staticmethod
    def _abs(data_dir: Path | str) -> Path:
        return Path(data_dir).expanduser().resolve()

    @classmethod
    def _read_info(cls, data_dir: Path) -> dict[str, Any] | None:
        try:
            info = json.loads((data_dir / cls.INFO_FILE).read_text())
            int(info["pid"]), int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info

    def _alive(self) -> bool:
        return _pid_is_server(self.pid, self.storage_path)

    def _answers(self, timeout_s: float = 1.0) -> bool:
        return _port_open(self.host, self.port) and _ping(self.uri, timeout_s)

    @staticmethod
    def running(data_dir: Path | str) -> LocalServer | None:
        """Return the server recorded in ``data_dir/server.json`` if it is alive and answers.

        Parameters
        ----------
        data_dir
            Project data directory.

        Returns
        -------
        LocalServer or None
            ``None`` when there is no record, the record belongs to another host, the process
            is gone (or a zombie, or not a SecantusDB on this data directory) or it does not
            answer ``ping``.
        """
        data_dir = LocalServer._abs(data_dir)
        info = LocalServer._read_info(data_dir)
        if info is None or info.get("hostname", socket.gethostname()) != socket.gethostname():
            return None
        server = LocalServer(data_dir, info["pid"], info["port"])
        if server._alive() and server._answers(timeout_s=2.0):
            return server
        return None

    def _write_info(self, command: Sequence[str]) -> None:
        info = {
            "pid": self.pid,
            "port": self.port,
            "host": self.host,
            "hostname": socket.gethostname(),
            "storage_path": str(self.storage_path),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": list(command),
        }
        _write_private(self.data_dir / self.INFO_FILE, json.dumps(info, indent=2) + "\n")

    def _remove_info_if_mine(self) -> None:
        info = self._read_info(self.data_dir)
        if info is not None and int(info["pid"]) == self.pid:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / self.INFO_FILE).unlink()

    @classmethod
    def _find_orphan(cls, data_dir: Path) -> LocalServer | None:
        """A server process on this data directory that ``server.json`` does not record."""
        storage = str(data_dir / cls.STORAGE_DIR)
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if _cmdline_storage_path(cmdline) != storage:
                continue
            if not any(_SERVER_EXECUTABLE in arg for arg in cmdline):
                continue
            port = _cmdline_port(cmdline)
            if port is not None:
                return cls(data_dir, proc.info["pid"], port)
        return None

    # -- start / stop ----------------------------------------------------------------------

    @classmethod
    def ensure(cls, data_dir: Path | str, *, timeout_s: float = 30) -> LocalServer:
        """Return the project's running server, starting one if needed.

        Reuses the server recorded in ``data_dir/server.json`` when its process is alive and
        answers ``ping``; otherwise starts ``secantusd-py`` on a free 127.0.0.1 port with
        ``--storage-path data_dir/db --standalone`` as a detached process that outlives the
        caller, records it in ``server.json`` and waits until it answers. Concurrent callers
        (threads or processes) are serialised by an ``flock`` on ``data_dir/server.lock`` and
        end up sharing one server.

        Parameters
        ----------
        data_dir
            Project data directory (created if missing).
        timeout_s
            How long to wait for the server to answer (the lock is waited for up to
            ``2 * timeout_s + 10`` s, since its holder may be starting the server).

        Returns
        -------
        LocalServer
            The running server.

        Raises
        ------
        RuntimeError
            If the server cannot be started (the message ends with the tail of
            ``server.log``), if a live server on this directory does not answer, or if
            ``server.json`` belongs to another host.
        """
        data_dir = cls._abs(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        # the lock holder may itself wait timeout_s for a starting server
        with _dir_lock(data_dir / cls.LOCK_FILE, 2 * timeout_s + 10):
            info = cls._read_info(data_dir)
            if info is not None:
                other_host = info.get("hostname", socket.gethostname())
                if other_host != socket.gethostname():
                    raise RuntimeError(
                        f"{data_dir / cls.INFO_FILE} records a database server on host "
                        f"{other_host!r}, not this host ({socket.gethostname()!r}); the embedded "
                        "server is local to one machine. Run ionflow on that host, configure a "
                        f"database uri, or delete {cls.INFO_FILE} if that server is gone."
                    )
                recorded = cls(data_dir, info["pid"], info["port"], info.get("host", _LOCAL_HOST))
                if recorded._alive():
                    recorded._wait_ready(timeout_s, starting=False)
                    return recorded
            orphan = cls._find_orphan(data_dir)
            if orphan is not None:  # alive but unrecorded (server.json deleted): adopt it
                orphan._wait_ready(timeout_s, starting=False)
                orphan._write_info(["(adopted)"])
                return orphan
            with contextlib.suppress(FileNotFoundError):
                (data_dir / cls.INFO_FILE).unlink()
            last_error: RuntimeError | None = None
            for _attempt in range(3):
                try:
                    return cls._start(data_dir, timeout_s)
                except _PortInUse as exc:  # lost the race for the free port: try another
                    last_error = exc
            assert last_error is not None
            raise last_error

    @classmethod
    def _start(cls, data_dir: Path, timeout_s: float) -> LocalServer:
        executable = _server_executable()
        config = data_dir / cls.CONFIG_FILE
        if not config.exists():
            config.write_text(
                "# Written by ionflow. Intentionally empty: passed with --config so that\n"
                "# secantusd-py does not auto-discover another secantusd.toml.\n"
            )
        storage = data_dir / cls.STORAGE_DIR
        log = data_dir / cls.LOG_FILE
        if log.exists() and log.stat().st_size > 20 * 2**20:
            os.replace(log, log.with_name(log.name + ".1"))
        port = _free_port()
        command = [
            executable,
            "--config",
            str(config),
            "--host",
            _LOCAL_HOST,
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--standalone",
        ]
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"=== ionflow: starting {' '.join(command)} at {stamp} ===\n")
        # Double fork through sh: the server becomes a grandchild that is re-parented when sh
        # exits at once, so it outlives us, never becomes our zombie, and -- with
        # start_new_session -- gets no terminal signals (Ctrl-C). "$0" is the log file.
        launcher = subprocess.run(
            ["/bin/sh", "-c", '"$@" </dev/null >>"$0" 2>&1 &\necho $!', str(log), *command],
            cwd=data_dir,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        try:
            pid = int(launcher.stdout.strip())
        except ValueError:
            raise RuntimeError(
                f"could not start {_SERVER_EXECUTABLE}: {launcher.stderr.strip()}\n"
                f"--- tail of {log} ---\n{_log_tail(log)}"
            ) from None
        server = cls(data_dir, pid, port)
        server._write_info(command)  # written before it is ready, so a crash here is found
        try:
            server._wait_ready(timeout_s, starting=True)
        except BaseException:
            server._terminate(5.0)
            server._remove_info_if_mine()
            raise
        return server

    def _wait_ready(self, timeout_s: float, *, starting: bool) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not _pid_is_server(self.pid):
                tail = _log_tail(self.log_file)
                if starting and "in use" in tail.lower():
                    raise _PortInUse(f"port {self.port} was taken before the server bound it")
                raise RuntimeError(
                    f"the database server (pid {self.pid}) for {self.data_dir} exited during "
                    f"startup.\n--- tail of {self.log_file} ---\n{tail}"
                )
            if self._answers(timeout_s=1.0):
                return
            if time.monotonic() > deadline:
                what = "did not become ready" if starting else "is alive but does not answer"
                raise RuntimeError(
                    f"the database server (pid {self.pid}, port {self.port}) for {self.data_dir} "
                    f"{what} within {timeout_s:.0f} s. Stop it (kill {self.pid}) and retry."
                    f"\n--- tail of {self.log_file} ---\n{_log_tail(self.log_file)}"
                )
            time.sleep(0.1)

    def _wait_dead(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while _pid_is_server(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _terminate(self, timeout_s: float) -> None:
        if not self._alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not self._wait_dead(timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait_dead(10.0)

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout_s``; remove ``server.json``.

        Parameters
        ----------
        timeout_s
            Grace period for a clean shutdown (SecantusDB takes a few seconds).
        """
        with _dir_lock(self.data_dir / self.LOCK_FILE, timeout_s + 30):
            self._terminate(timeout_s)
            self._remove_info_if_mine()


class _PortInUse(RuntimeError):
    pass


# ----------------------------------------------------------------------------- resolution


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedDatabase:
    """A concrete database: the connection (secret), names and a printable description.

    Attributes
    ----------
    uri : str
        Connection string of the JobStore server. Secret: never print or log it.
    database : str
        JobStore database.
    description : str
        Redacted, printable description.
    local_server : LocalServer or None
        The embedded server, when one is used.
    mongoclient_kwargs : dict
        Extra ``pymongo.MongoClient`` arguments (from a launchpad file).
    launchpad_config : dict
        ``LaunchPad.from_dict`` arguments (contains credentials).
    """

    uri: str = dataclasses.field(repr=False)
    database: str
    description: str
    local_server: LocalServer | None = None
    mongoclient_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    launchpad_config: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"ResolvedDatabase({self.description!r})"

    __str__ = __repr__

    @property
    def fireworks_database(self) -> str:
        """Database of the FireWorks collections."""
        return str(self.launchpad_config.get("name"))

    def client(self) -> pymongo.MongoClient:
        """Return a new ``pymongo.MongoClient`` to the JobStore server (caller closes it)."""
        import pymongo

        return pymongo.MongoClient(self.uri, **self.mongoclient_kwargs)

    def jobstore(self) -> jobflow.JobStore:
        """Return a new (unconnected) JobStore.

        Documents go to ``<database>.outputs``; the additional store ``"data"`` is GridFS
        ``<database>.outputs_blobs``. Declare large outputs with ``@job(data="key")`` or
        ``@job(data=True)``.
        """
        from maggma.stores import GridFSStore, MongoStore

        docs = MongoStore(
            database=self.database,
            collection_name=OUTPUTS_COLLECTION,
            uri=self.uri,
            mongoclient_kwargs=dict(self.mongoclient_kwargs),
        )
        blobs = GridFSStore(
            database=self.database,
            collection_name=BLOBS_COLLECTION,
            uri=self.uri,
            mongoclient_kwargs=dict(self.mongoclient_kwargs),
        )
        return JobStore(docs, additional_stores={"data": blobs})

    def launchpad(self) -> LaunchPad:
        """Return a FireWorks LaunchPad on the configured server."""
        return LaunchPad.from_dict(json.loads(json.dumps(self.launchpad_config)))

    def fworker(
        self,
        name: str = "ionflow",
        category: str | Sequence[str] | None = None,
        query: dict[str, Any] | None = None,
    ) -> FWorker:
        """Return an FWorker for in-process ``rapidfire`` that carries this JobStore.

        The store travels in ``env["ionflow_jobstore"]`` as an object; the FWorker's
        ``to_dict`` (what FireWorks writes into ``launches``) replaces it with a placeholder.

        Parameters
        ----------
        name
            FWorker name (matched by ``spec._fworker``).
        category
            Category or categories to pull (``spec._category``); ``None`` pulls any.
        query
            Extra FireWorks query restricting which fireworks run.
        """
        category = "" if category is None else category
        return _InProcessFWorker(
            name=name,
            category=list(category) if not isinstance(category, str) else category,
            query=query,
            env={JOBSTORE_ENV_KEY: self.jobstore()},
        )

    def write_worker_files(
        self,
        directory: Path | str,
        *,
        name: str = "ionflow",
        category: str | Sequence[str] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """Write the files a separate worker process needs, each with mode 0600.

        Parameters
        ----------
        directory
            Where to write (created if missing). Must be readable by the workers.
        name, category, query
            As for :meth:`fworker`.

        Returns
        -------
        dict of str to Path
            ``"launchpad"``: ``my_launchpad.yaml`` (contains the credentials);
            ``"jobstore"``: ``jobstore.json`` (contains the credentials);
            ``"fworker"``: ``my_fworker.yaml`` (env holds only the path of jobstore.json);
            ``"jobflow_config"``: ``jobflow.yaml`` with ``JOB_STORE: <jobstore.json>``, for
            plain-jobflow tools via ``JOBFLOW_CONFIG_FILE`` (ionflow's workers do not need it).
            Run a worker with ``rlaunch -l <launchpad> -w <fworker> rapidfire``.
        """
        directory = Path(directory).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "launchpad": directory / "my_launchpad.yaml",
            "jobstore": directory / "jobstore.json",
            "fworker": directory / "my_fworker.yaml",
            "jobflow_config": directory / "jobflow.yaml",
        }
        from monty.json import MontyEncoder

        _write_private(
            paths["jobstore"], json.dumps(self.jobstore().as_dict(), cls=MontyEncoder, indent=2)
        )
        _write_private(
            paths["launchpad"],
            "# Written by ionflow: FireWorks LaunchPad. Contains credentials; keep private.\n"
            + yaml.safe_dump(json.loads(json.dumps(self.launchpad_config)), sort_keys=False),
        )
        category = "" if category is None else category
        fworker = FWorker(
            name=name,
            category=list(category) if not isinstance(category, str) else category,
            query=query,
            env={JOBSTORE_ENV_KEY: str(paths["jobstore"])},
        )
        _write_private(
            paths["fworker"],
            "# Written by ionflow: the JobStore is read from the file named in env.\n"
            + yaml.safe_dump(fworker.to_dict(), sort_keys=False),
        )
        _write_private(
            paths["jobflow_config"], yaml.safe_dump({"JOB_STORE": str(paths["jobstore"])})
        )
        return paths

    def ping(self, timeout_s: float = 10.0) -> None:
        """Raise :class:`~ionflow.errors.EnvironmentFailure` (one line, host:port, never the
        password) unless the JobStore server answers ``ping`` within ``timeout_s``."""
        from pymongo.errors import PyMongoError

        kwargs = dict(self.mongoclient_kwargs)
        ms = int(timeout_s * 1000)
        kwargs["serverSelectionTimeoutMS"] = min(
            int(kwargs.get("serverSelectionTimeoutMS", ms)), ms
        )
        kwargs.setdefault("connectTimeoutMS", ms)
        try:
            import pymongo

            client = pymongo.MongoClient(self.uri, **kwargs)
            try:
                client[self.database].command("ping")
            finally:
                client.close()
        except PyMongoError as exc:
            raise EnvironmentFailure(
                database_error_message(exc, self, kwargs["serverSelectionTimeoutMS"] / 1000)
            ) from None


def _uri_from_launchpad(d: dict[str, Any]) -> str:
    host = str(d.get("host") or "localhost")
    if d.get("uri_mode") or host.startswith(("mongodb://", "mongodb+srv://")):
        return host
    port = int(d.get("port") or 27017)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    username, password = d.get("username"), d.get("password")
    if username:
        cred = quote_plus(str(username))
        if password:
            cred += ":" + quote_plus(str(password))
        authsource = d.get("authsource") or d.get("name") or "fireworks"
        return f"mongodb://{cred}@{host}:{port}/?authSource={quote_plus(str(authsource))}"
    return f"mongodb://{host}:{port}/"


def db_timeout_s() -> float:
    """Seconds a client waits for the database (``IONFLOW_DB_TIMEOUT_S``, default 15)."""
    raw = os.environ.get(DB_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_DB_TIMEOUT_S
    except ValueError:
        raise UserInputError(f"{DB_TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise UserInputError(f"{DB_TIMEOUT_ENV}={raw!r}: must be > 0")
    return value


def _with_timeout(uri: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``serverSelectionTimeoutMS`` unless the URI or ``kwargs`` set it."""
    out = dict(kwargs)
    if "serverselectiontimeoutms" in uri.lower() or any(
        k.lower() == "serverselectiontimeoutms" for k in out
    ):
        return out
    out["serverSelectionTimeoutMS"] = int(db_timeout_s() * 1000)
    return out


def db_hosts(uri: str) -> str:
    """``host:port`` (comma-separated) of a MongoDB URI, without credentials."""
    try:
        from pymongo.uri_parser import parse_uri

        nodes = parse_uri(uri, connect_timeout=1, validate=False).get("nodelist") or []
        if nodes:
            return ",".join(f"{h}:{p}" for h, p in nodes)
    except Exception:  # SRV lookups, malformed: fall back to the redacted netloc
        pass
    rest = uri.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    return rest.rpartition("@")[2] or "<unparsable MongoDB URI>"


def database_error_message(
    exc: BaseException, db: ResolvedDatabase | None = None, timeout_s: float | None = None
) -> str:
    """One line for a pymongo failure: ``cannot reach the database at host:port (cause)``.

    Names the server (never the password) and the cause in a few words; the wait was bounded
    by :func:`db_timeout_s`.
    """
    from pymongo.errors import OperationFailure

    uri = db.uri if db is not None else None
    where = db_hosts(uri) if uri else "the configured server"
    text = " ".join(str(exc).split())
    if uri:
        text = _scrub(text, _uri_secrets(uri))
    if isinstance(exc, OperationFailure) and (
        getattr(exc, "code", None) in (13, 18) or "auth" in text.lower()
    ):
        details = getattr(exc, "details", None) or {}
        what = details.get("errmsg") or text.split(", full error:")[0]
        name = details.get("codeName") or f"code {getattr(exc, 'code', '?')}"
        cause = f"{_scrub(str(what), _uri_secrets(uri)) if uri else what} ({name})"[:200]
        return (
            f"cannot use the database at {where} ({type(exc).__name__}: {cause}; check the "
            "user name, password and authSource)"
        )
    cause = text.split(", Timeout:")[0].split(" (configured timeouts")[0]
    if len(cause) > 200:
        cause = cause[:200] + "…"
    timeout = timeout_s if timeout_s is not None else db_timeout_s()
    return (
        f"cannot reach the database at {where} ({type(exc).__name__}: {cause}; no answer "
        f"within {timeout:g} s)"
    )


def connection_error(exc: BaseException | None) -> BaseException | None:
    """The first pymongo connection failure (server gone, timeout) in ``exc``'s chain."""
    from pymongo.errors import ConnectionFailure

    seen: set[int] = set()
    found = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionFailure):
            found = exc  # keep going: the earliest one is the cause
        exc = exc.__cause__ or exc.__context__
    return found


#: The database the last :func:`resolve_database` of this process returned (the CLI names
#: its host:port when an operation fails).
LAST_RESOLVED: ResolvedDatabase | None = None


def resolve_database(settings: DatabaseSettings, *, check: bool = True) -> ResolvedDatabase:
    """Turn settings into a concrete database, starting the embedded server if needed.

    Parameters
    ----------
    settings
        Database settings.
    check
        Ping the server (10 s) and raise :class:`~ionflow.errors.EnvironmentFailure` (a
        ``RuntimeError``) if it does not answer. The local server is always checked.

    Returns
    -------
    ResolvedDatabase

    Raises
    ------
    UserInputError
        Malformed ``uri`` or unreadable ``launchpad_file``.
    RuntimeError
        The server cannot be started or reached.
    """
    global LAST_RESOLVED
    database = settings.database
    fw_database = settings.fireworks_database or f"{database}_fireworks"
    lp_file_config: dict[str, Any] | None = None
    if settings.launchpad_file is not None:
        path = Path(settings.launchpad_file).expanduser()
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(
                f"launchpad_file {path}: cannot read it as a FireWorks launchpad YAML/JSON "
                f"({type(exc).__name__})"
            ) from None
        if not isinstance(loaded, dict) or not loaded.get("host"):
            raise UserInputError(
                f"launchpad_file {path}: expected a mapping with at least 'host' "
                "(FireWorks my_launchpad.yaml)"
            )
        if loaded.get("uri_mode") and not loaded.get("name"):
            raise UserInputError(f"launchpad_file {path}: uri_mode needs 'name' (the database)")
        lp_file_config = loaded

    if settings.uri is not None:
        uri = check_mongo_uri(settings.uri, "database uri")
        kwargs: dict[str, Any] = _with_timeout(uri, {})
        where = redact_uri(uri)
        if lp_file_config is None:
            lp_config = {
                "host": uri,
                "uri_mode": True,
                "name": fw_database,
                "mongoclient_kwargs": dict(kwargs),
            }
            description = f"{where} (results: db {database!r}; FireWorks: db {fw_database!r})"
        else:
            lp_config = _launchpad_with_timeout(lp_file_config)
            description = (
                f"{where} (results: db {database!r}); FireWorks: launchpad file "
                f"{settings.launchpad_file} (db {lp_config.get('name')!r})"
            )
        resolved = ResolvedDatabase(uri, database, description, None, kwargs, lp_config)
    elif lp_file_config is not None:
        uri = _uri_from_launchpad(lp_file_config)
        kwargs = _with_timeout(uri, dict(lp_file_config.get("mongoclient_kwargs") or {}))
        description = (
            f"{redact_uri(uri)} from launchpad file {settings.launchpad_file} (results: db "
            f"{database!r}; FireWorks: db {lp_file_config.get('name') or 'fireworks'!r})"
        )
        lp_config = _launchpad_with_timeout(lp_file_config)
        resolved = ResolvedDatabase(uri, database, description, None, kwargs, lp_config)
    else:
        try:
            server = LocalServer.ensure(settings.data_dir)
        except EnvironmentFailure:
            raise
        except RuntimeError as exc:
            raise EnvironmentFailure(str(exc)) from None
        description = (
            f"local SecantusDB {server.uri} (pid {server.pid}, data {server.data_dir}; results: "
            f"db {database!r}; FireWorks: db {fw_database!r})"
        )
        kwargs = _with_timeout(server.uri, {})
        lp_config = {
            "host": server.uri,
            "uri_mode": True,
            "name": fw_database,
            "mongoclient_kwargs": dict(kwargs),
        }
        LAST_RESOLVED = ResolvedDatabase(
            server.uri, database, description, server, kwargs, lp_config
        )
        return LAST_RESOLVED
    if check:
        resolved.ping()
    LAST_RESOLVED = resolved
    return resolved


def _launchpad_with_timeout(config: dict[str, Any]) -> dict[str, Any]:
    """A launchpad-file config with the client timeout added to its ``mongoclient_kwargs``."""
    out = dict(config)
    host = str(out.get("host") or "")
    out["mongoclient_kwargs"] = _with_timeout(host, dict(out.get("mongoclient_kwargs") or {}))
    return out


# ----------------------------------------------------------------------------- FireWorks


def reset_launchpad_if_new(lp: LaunchPad) -> bool:
    """Initialise the FireWorks collections on first use; never deletes anything.

    ``LaunchPad.add_wf`` needs the ``fw_id_assigner`` counter document that ``lp.reset``
    creates, but ``reset`` wipes every workflow. This creates the counter only if it is
    missing (atomically, so concurrent callers are safe) and builds FireWorks' indexes.

    Parameters
    ----------
    lp
        The LaunchPad.

    Returns
    -------
    bool
        Whether the LaunchPad was initialised now.

    Raises
    ------
    RuntimeError
        If the counter is missing although fireworks already exist (refuses to guess ids).
    """
    from pymongo.errors import DuplicateKeyError

    if lp.fw_id_assigner.find_one({}) is not None:
        return False
    if lp.fireworks.find_one({}, {"_id": 1}) is not None:
        raise RuntimeError(
            f"LaunchPad database {lp.name!r} has fireworks but no fw_id_assigner counter; "
            "refusing to initialise it (repair it or use another database)"
        )
    try:
        lp.fw_id_assigner.update_one(
            {"_id": -1},
            {"$setOnInsert": {"next_fw_id": 1, "next_launch_id": 1}},
            upsert=True,
        )
    except DuplicateKeyError:  # a concurrent caller won
        return False
    lp.tuneup(bkground=True)
    return True


class _InProcessFWorker(FWorker):
    """FWorker whose serialised form (stored in ``launches``) omits JobStore objects."""

    @recursive_serialize
    def to_dict(self) -> dict[str, Any]:
        env = {
            k: ("<in-process JobStore, not serialised>" if isinstance(v, JobStore) else v)
            for k, v in self.env.items()
        }
        return {
            "name": self.name,
            "category": self.category,
            "query": json.dumps(self._query, default=DATETIME_HANDLER),
            "env": env,
        }


_FILE_STORES: dict[tuple[str, int], JobStore] = {}


def worker_jobstore(fw_spec: dict[str, Any]) -> JobStore:
    """The JobStore named by the FWorker env in ``fw_spec["_fw_env"]["ionflow_jobstore"]``.

    Parameters
    ----------
    fw_spec
        The spec FireWorks passes to ``run_task``.

    Returns
    -------
    JobStore
        Connected. Stores loaded from a file are cached per process.

    Raises
    ------
    RuntimeError
        If the FWorker env has no usable ``ionflow_jobstore``.
    """
    ref = (fw_spec.get("_fw_env") or {}).get(JOBSTORE_ENV_KEY)
    if isinstance(ref, JobStore):
        ref.connect()
        return ref
    if isinstance(ref, str | Path):
        path = Path(ref).expanduser()
        try:
            key = (str(path.resolve()), path.stat().st_mtime_ns)
        except OSError as exc:
            raise RuntimeError(
                f"FWorker env {JOBSTORE_ENV_KEY!r} names {path}, which cannot be read on this "
                f"host ({exc.strerror})"
            ) from None
        store = _FILE_STORES.get(key)
        if store is None:
            store = JobStore.from_file(path)
            _FILE_STORES[key] = store
        store.connect()
        return store
    raise RuntimeError(
        f"this FireWorks worker has no JobStore: its FWorker env lacks {JOBSTORE_ENV_KEY!r}. "
        "Run ionflow fireworks with ResolvedDatabase.fworker() (in-process) or with "
        "`rlaunch -w my_fworker.yaml` from ResolvedDatabase.write_worker_files()."
    )


@explicit_serialize
class IonflowJobFiretask(JobFiretask):
    """Run a jobflow job with the JobStore of the worker (FWorker env), not of the workflow.

    Other Parameters
    ----------------
    job : Job
        The job to run.
    """

    required_params = ("job",)

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        """Run the job; dynamic replacements/additions/detours use this firetask too."""
        from jobflow import initialize_logger

        store = worker_jobstore(fw_spec)
        job: jobflow.Job = self.get("job")

        fw_tags = fw_spec.get("tags", None)
        if fw_tags is not None:
            if "tags" in job.metadata:
                if isinstance(job.metadata["tags"], list):
                    job.metadata["tags"].extend(fw_tags)
                else:
                    job.metadata["tags"] = [job.metadata["tags"], *fw_tags]
                job.metadata["tags"] = list(dict.fromkeys(job.metadata["tags"]))
            else:
                job.metadata.update({"tags": fw_tags})
        if hasattr(self, "fw_id"):
            job.metadata.update({"fw_id": self.fw_id})

        initialize_logger()
        # the lease (heartbeat + fencing, see ionflow.lease): a worker whose claim on this
        # firework was taken over stops writing, and its output write is refused
        from ionflow.lease import fenced_store, task_lease

        lp = getattr(self, "launchpad", None)
        try:
            with (
                task_lease(lp, getattr(self, "fw_id", None)) as lease,
                fenced_store(store, lease),
            ):
                response = job.run(store=store)
        except Exception as exc:
            if lp is not None and connection_error(exc) is not None:
                # The database is gone: FireWorks would now ping and complete the launch,
                # waiting the client timeout for each. Closing the LaunchPad's client makes
                # those fail at once; the worker stops with this error (see
                # ionflow.dispatch.work_until_done) and the launch is recovered as lost.
                with contextlib.suppress(Exception):
                    lp.connection.close()
            raise

        detours = None
        additions = None
        if response.replace is not None:
            detours = [flow_to_workflow(response.replace)]
        if response.addition is not None:
            additions = [flow_to_workflow(response.addition)]
        if response.detour is not None:
            detours = (detours or []) + [flow_to_workflow(response.detour)]

        return FWAction(
            stored_data=response.stored_data,
            detours=detours,
            additions=additions,
            defuse_workflow=response.stop_jobflow,
            defuse_children=response.stop_children,
        )


def job_to_firework(
    job: jobflow.Job,
    parents: Sequence[str] | None = None,
    parent_mapping: dict[str, Firework] | None = None,
    **kwargs: Any,
) -> Firework:
    """Convert a job to a Firework running :class:`IonflowJobFiretask` (no store embedded).

    Same spec handling as :func:`jobflow.managers.fireworks.job_to_firework`:
    ``job.config.manager_config`` and ``job.metadata`` are merged into the spec.
    """
    from jobflow.core.reference import OnMissing

    if (parents is None) is not (parent_mapping is None):
        raise ValueError("Both or neither of parents and parent_mapping must be set.")
    task = IonflowJobFiretask(job=job)
    job_parents = None
    if parents is not None and parent_mapping is not None:
        job_parents = [parent_mapping[parent] for parent in parents] if parents else None
    spec: dict[str, Any] = {"_add_launchpad_and_fw_id": True}
    if job.config.on_missing_references != OnMissing.ERROR:
        spec["_allow_fizzled_parents"] = True
    spec.update(job.config.manager_config)
    spec.update(job.metadata)
    fw = Firework([task], spec=spec, name=job.name, parents=job_parents, **kwargs)
    if parent_mapping is not None:
        parent_mapping[job.uuid] = fw
    return fw


def flow_to_workflow(
    flow: jobflow.Flow | jobflow.Job | list[jobflow.Job],
    allow_external_references: bool = False,
    **kwargs: Any,
) -> Workflow:
    """Convert a flow to a FireWorks workflow whose documents hold no store or credentials.

    Use this instead of :func:`jobflow.managers.fireworks.flow_to_workflow`; run the result
    with :meth:`ResolvedDatabase.fworker` or the files of
    :meth:`ResolvedDatabase.write_worker_files`.

    Parameters
    ----------
    flow
        A flow, a job or a list of jobs.
    allow_external_references
        Allow references to outputs of jobs outside the flow.
    **kwargs
        Passed to :class:`fireworks.Workflow` (e.g. ``metadata``; ``name`` defaults to the
        flow name).
    """
    from jobflow.core.flow import get_flow

    parent_mapping: dict[str, Firework] = {}
    flow = get_flow(flow, allow_external_references=allow_external_references)
    fireworks = [
        job_to_firework(job, parents=parents, parent_mapping=parent_mapping)
        for job, parents in flow.iterflow()
    ]
    return Workflow(fireworks, name=kwargs.pop("name", flow.name), **kwargs)
