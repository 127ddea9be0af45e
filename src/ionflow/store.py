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

FireWorks and jobflow
---------------------
This module is the database layer only: settings, the embedded server, URIs, the stores. It
imports neither FireWorks nor jobflow at module level (:meth:`ResolvedDatabase.jobstore`
imports jobflow's ``JobStore`` when called: the JobStore is the format job outputs are
stored and read in, whichever backend runs the jobs). The LaunchPad, FWorkers, worker files
and the firetask are built by the FireWorks backends (:mod:`ionflow.backends.fw_tasks`);
:attr:`ResolvedDatabase.launchpad_config` only says where the FireWorks collections live.

Gotchas
-------
* The embedded server listens on 127.0.0.1 only and without authentication: workers on other
  hosts (Slurm compute nodes) cannot reach it. Use ``uri``/``launchpad_file`` there.
  ``server.json`` records the host name; :meth:`LocalServer.ensure` refuses to start a second
  server for a data directory owned by another host (two servers on one data directory on a
  shared file system would corrupt it).
* ``maggma``'s ``MongoStore.name`` (and so ``JobStore.name``) returns the full URI; never log
  the stores themselves, log :attr:`ResolvedDatabase.description`.
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
from pydantic import BaseModel, ConfigDict, Field

from ionflow.errors import EnvironmentFailure, UserInputError
from ionflow.names import BLOBS_COLLECTION, DEFAULT_DATA_DIR, OUTPUTS_COLLECTION
from ionflow.uris import check_mongo_uri, redact_uri
from ionflow.uris import uri_secrets as _uri_secrets

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import jobflow
    import pymongo
    from fireworks import FWorker, LaunchPad

__all__ = [
    "DatabaseSettings",
    "LocalServer",
    "ResolvedDatabase",
    "redact_uri",
    "resolve_database",
]

# The JobStore's collection names (OUTPUTS_COLLECTION, BLOBS_COLLECTION): see ionflow.names.

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
    data_dir: Path = Path(DEFAULT_DATA_DIR)

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
        from jobflow import JobStore
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

    # The three builders below are kept for callers of the old API (tests, scripts); they
    # belong to the FireWorks backend (ionflow.backends.fw_tasks), which builds them.

    def launchpad(self) -> LaunchPad:
        """A FireWorks LaunchPad on the configured server (:func:`ionflow.backends.fw_tasks.launchpad`)."""
        from ionflow.backends.fw_tasks import launchpad

        return launchpad(self)

    def fworker(
        self,
        name: str = "ionflow",
        category: str | Sequence[str] | None = None,
        query: dict[str, Any] | None = None,
    ) -> FWorker:
        """An in-process FWorker carrying this JobStore (:func:`ionflow.backends.fw_tasks.fworker`)."""
        from ionflow.backends.fw_tasks import fworker

        return fworker(self, name, category, query)

    def write_worker_files(
        self,
        directory: Path | str,
        *,
        name: str = "ionflow",
        category: str | Sequence[str] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Path]:
        """The files of a separate worker process (:func:`ionflow.backends.fw_tasks.write_worker_files`)."""
        from ionflow.backends.fw_tasks import write_worker_files

        return write_worker_files(self, directory, name=name, category=category, query=query)

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


def __getattr__(name: str) -> Any:
    # The FireWorks name of ionflow's firetask is "{{ionflow.store.IonflowJobFiretask}}" in
    # every stored firework (it lived here before ionflow.backends existed): FireWorks
    # resolves it by importing this module and reading this attribute. Handed over lazily,
    # so that importing the database layer does not import FireWorks.
    if name == "IonflowJobFiretask":
        from ionflow.backends.fw_tasks import IonflowJobFiretask

        return IonflowJobFiretask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
