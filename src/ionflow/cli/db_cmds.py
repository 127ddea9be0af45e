"""``ionflow db status|stop``: see and stop the embedded database server of a data directory.

The embedded SecantusDB server (:class:`ionflow.store.LocalServer`) outlives every command on
purpose (queries and reruns are fast). There is no idle timeout: a watchdog would be one
more daemon, and a cluster campaign may leave the server idle for hours between launch
rounds while jobs still need it. Instead ``ionflow run`` says on its last line that the
server is still up, ``ionflow db status --all`` lists every server of yours on this host and
``ionflow db stop`` stops one (SIGTERM, then SIGKILL after a grace period; no data is lost:
acknowledged writes are journalled).
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app

db_app = typer.Typer(
    help="The embedded database server (SecantusDB) of a data directory: status, stop.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Project data directory (default ./ionflow-data)"),
]


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _uptime(pid: int) -> str:
    import psutil

    try:
        seconds = time.time() - psutil.Process(pid).create_time()
    except psutil.Error:
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


def _rss(pid: int) -> str:
    import psutil

    try:
        return _human(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return "?"


def _describe(data_dir: Path, pid: int, port: int) -> str:
    storage = data_dir / "db"
    return (
        f"data dir {data_dir}: SecantusDB pid {pid}, port {port} (127.0.0.1), up "
        f"{_uptime(pid)}, database size {_human(_size(storage))}, memory {_rss(pid)}"
    )


def _data_dir(data_dir: Path | None) -> Path:
    from ionflow.names import data_dir_path

    return data_dir_path(data_dir)


def _all_servers() -> list[tuple[Path, int, int | None]]:
    """Every SecantusDB process of this user on this host: (data dir, pid, port)."""
    import getpass

    import psutil

    from ionflow.store import _SERVER_EXECUTABLE, _cmdline_port, _cmdline_storage_path

    me = getpass.getuser()
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "username", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["username"] != me or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not any(_SERVER_EXECUTABLE in arg for arg in cmdline):
            continue
        storage = _cmdline_storage_path(cmdline)
        if storage is None:
            continue
        out.append((Path(storage).parent, proc.info["pid"], _cmdline_port(cmdline)))
    return sorted(out)


@db_app.command("status")
def db_status(
    data_dir: DataDirOpt = None,
    all_servers: Annotated[
        bool, typer.Option("--all", help="Every SecantusDB server of yours on this host")
    ] = False,
) -> None:
    """Whether the data directory's server runs: pid, port, uptime, database size (exit 0)."""
    from ionflow.store import LocalServer

    if all_servers:
        servers = _all_servers()
        if not servers:
            print("no SecantusDB server of yours is running on this host")
            return
        for d, pid, port in servers:
            print(_describe(d, pid, port if port is not None else -1))
        print(
            f"{len(servers)} server(s); stop one with `ionflow db stop --data-dir DIR`",
        )
        return
    d = _data_dir(data_dir)
    server = LocalServer.running(d) or LocalServer._find_orphan(d)
    if server is None:
        stale = (d / LocalServer.INFO_FILE).exists()
        print(
            f"data dir {d}: no database server running"
            + (f" ({LocalServer.INFO_FILE} is stale: its process is gone)" if stale else "")
        )
        return
    print(_describe(d, server.pid, server.port))
    print(f"stop it with `ionflow db stop --data-dir {d}`")


@db_app.command("stop")
def db_stop(data_dir: DataDirOpt = None) -> None:
    """Stop the data directory's server (SIGTERM, SIGKILL after 10 s); nothing to do is fine."""
    from ionflow.store import LocalServer

    d = _data_dir(data_dir)
    server = LocalServer.running(d) or LocalServer._find_orphan(d)
    if server is None:
        print(f"data dir {d}: no database server running")
        return
    t0 = time.monotonic()
    server.stop()
    print(
        f"data dir {d}: stopped SecantusDB pid {server.pid} (port {server.port}) in "
        f"{time.monotonic() - t0:.1f} s"
    )
