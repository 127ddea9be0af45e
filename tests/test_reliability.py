"""Job ownership across workers, checkpoint recovery and environment failures.

Real parts throughout: a SecantusDB server, ``ionflow`` CLI processes as workers, the toy
MD engine. Lease periods are shortened with ``IONFLOW_LEASE_PING_S`` / ``IONFLOW_LEASE_S``
and client waits with ``IONFLOW_DB_TIMEOUT_S`` so that each case takes seconds.

* two workers on one database with different data directories: the second never takes the
  job the first holds; one COMPLETED launch per job, no orphan trajectory file;
* a worker whose lease is taken over (its firework reset under it, or frozen past its lease)
  stops writing; the job completes once, with exactly the planned frames;
* a corrupted newest checkpoint is recovered from the previous generation; with none usable
  the message naming the directory is what ``run`` and ``status`` print;
* the database killed mid-run: a bounded wait, one line naming host:port, exit 3; the rerun
  completes;
* an unreachable or auth-failing database for run/status/submit/hpc-status/recover/launch:
  one line, exit 3, no traceback, within the client timeout;
* disk full inside a job: ``run`` and ``status`` show the real exception and the path;
* ``ionflow db status|stop``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IONFLOW = [sys.executable, "-m", "ionflow.cli"]
pytestmark = pytest.mark.integration

FAST_LEASE = {
    "IONFLOW_LEASE_PING_S": "0.5",
    "IONFLOW_LEASE_S": "3",
    "IONFLOW_DB_TIMEOUT_S": "3",
}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_LEASE)
    env.update(extra)
    return env


def _spec(tmp: Path, name: str, production_ps: float = 0.4, temps=(900,)) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""
campaign: {name}
mobile_species: Li
engine: {{relax: none, md: toy}}
md:
  temperatures_k: [{", ".join(str(t) for t in temps)}]
  time_step_fs: 2.0
  equilibration_ps: 0.05
  production_ps: {production_ps}
  frame_interval_fs: 10
  supercell_min_length_a: 7.0
materials:
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}}}
"""
    )
    return path


def _run(args, cwd, timeout=600, env=None):
    return subprocess.run(
        IONFLOW + [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
    )


def _popen(args, cwd, env=None):
    return subprocess.Popen(
        IONFLOW + [str(a) for a in args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _env(),
    )


def _wait(cond, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"worker ended before {what}: {out}\n{err}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _md_state(runs: Path) -> dict | None:
    for p in runs.glob("*/*/md_state.json"):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(p.read_text()) | {"_dir": str(p.parent)}
    return None


def _mid_md(runs: Path, margin: int = 200):
    def cond():
        s = _md_state(runs)
        if s and not s.get("completed") and s["step"] > s["equilibration_steps"] + margin:
            return s
        return None

    return cond


@pytest.fixture
def server(tmp_path):
    """A SecantusDB server of its own (workers reach it with --uri)."""
    from ionflow.store import LocalServer

    srv = LocalServer.ensure(tmp_path / "server")
    yield srv
    with contextlib.suppress(Exception):
        srv.stop()


@pytest.fixture
def cleanup_servers(tmp_path):
    yield
    from ionflow.store import LocalServer

    for d in tmp_path.glob("**/server.json"):
        srv = LocalServer.running(d.parent) or LocalServer._find_orphan(d.parent)
        if srv is not None:
            with contextlib.suppress(Exception):
                srv.stop()


def _resolve(uri=None, data_dir=None):
    from ionflow.store import DatabaseSettings, resolve_database

    return resolve_database(DatabaseSettings(uri=uri, data_dir=data_dir or "unused"))


def _launch_states(lp, fw_id: int) -> list[str]:
    return [d["state"] for d in lp.launches.find({"fw_id": fw_id}, {"state": 1})]


def _assert_once_each(db, campaign: str, n_md: int) -> dict:
    """Every firework COMPLETED by exactly one COMPLETED launch; one trajectory per MD job."""
    lp = db.launchpad()
    fws = list(lp.fireworks.find({"spec.ionflow_campaign": campaign}, {"fw_id": 1, "state": 1}))
    assert fws and {fw["state"] for fw in fws} == {"COMPLETED"}
    for fw in fws:
        states = _launch_states(lp, fw["fw_id"])
        assert states.count("COMPLETED") == 1, (fw, states)
    with db.client() as client:
        mdb = client[db.database]
        md = list(mdb["outputs"].find({"name": {"$regex": "^md "}}))
        assert len(md) == n_md
        files = list(mdb["trajectories.files"].find({}))
        assert len(files) == n_md  # no orphan
        referenced = {d["output"]["trajectory"]["gridfs_id"] for d in md}
        assert referenced == {str(f["_id"]) for f in files}
        assert mdb["trajectories.chunks"].distinct("files_id") == [f["_id"] for f in files]
    return {d["output"]["variant"] + f"_{d['output']['temperature_k']:g}K": d["output"] for d in md}


def _frames(path: str) -> int:
    from ase.io.trajectory import Trajectory

    with Trajectory(path) as t:
        return len(t)


# ----------------------------------------------------------------------------- leases


def test_second_worker_never_takes_a_live_job(tmp_path, server):
    # 10,000 steps: long enough (≥ 10 s here) for B to start while A's MD runs
    spec = _spec(tmp_path, "two-workers", production_ps=20.0)
    uri = server.uri
    a = _popen(["run", spec, "--uri", uri, "--data-dir", tmp_path / "dA", "--quiet"], tmp_path)
    runs = tmp_path / "dA" / "runs" / "two-workers"
    try:
        _wait(_mid_md(runs, margin=100), 240, "A's MD in production", a)
        b = _run(["run", spec, "--uri", uri, "--data-dir", tmp_path / "dB", "--quiet"], tmp_path)
        out_a, err_a = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, out_a + err_a
    assert b.returncode == 0, b.stdout + b.stderr
    text = " ".join(b.stdout.split())
    assert "resuming" not in text  # B reset nothing
    assert "running in other live workers and are left to them" in text
    assert "md Li3N free 900K: held by pid" in text
    md = _assert_once_each(_resolve(uri), "two-workers", n_md=1)
    run = md["free_900K"]["md"]
    assert run["resumed_from_step"] is None  # never reset, never resumed
    assert run["n_production_frames"] == 2001
    assert _frames(md["free_900K"]["md"]["production_trajectory"]) == 2001
    lp = _resolve(uri).launchpad()
    assert lp.launches.count_documents({"state": {"$ne": "COMPLETED"}}) == 0


def test_worker_whose_job_is_reset_stops_writing(tmp_path, server):
    """The firework is reset under a live worker (as `lpad rerun_fws` would): it stops."""
    spec = _spec(tmp_path, "taken-over", production_ps=10.0)
    uri = server.uri
    a = _popen(["run", spec, "--uri", uri, "--data-dir", tmp_path / "dA", "--quiet"], tmp_path)
    runs = tmp_path / "dA" / "runs" / "taken-over"
    db = _resolve(uri)
    lp = db.launchpad()
    try:
        _wait(_mid_md(runs), 240, "the MD mid-production", a)
        fw = lp.fireworks.find_one({"name": "md Li3N free 900K", "state": "RUNNING"})
        old_launch = fw["launches"][-1]
        lp.rerun_fw(fw["fw_id"])  # the claim is gone
        # the worker stops writing within a ping or two, then runs the job again itself
        out, err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, out + err
    old = lp.launches.find_one({"launch_id": old_launch})
    trace = old["action"]["stored_data"]["_exception"]["_stacktrace"]
    assert old["state"] == "FIZZLED" and "LeaseLost" in trace and "stops writing" in trace
    md = _assert_once_each(db, "taken-over", n_md=1)
    run = md["free_900K"]["md"]
    assert run["resumed_from_step"] is not None and run["resumed_from_step"] > 0
    assert _frames(run["production_trajectory"]) == run["n_production_frames"] == 1001


def test_frozen_worker_is_taken_over_and_stops(tmp_path, server):
    """A worker frozen past its lease: another worker takes the job over (after the lease,
    not before); the frozen one, once resumed, writes nothing more."""
    spec = _spec(tmp_path, "frozen", production_ps=10.0)
    uri = server.uri
    a = _popen(["run", spec, "--uri", uri, "--data-dir", tmp_path / "dA", "--quiet"], tmp_path)
    runs = tmp_path / "dA" / "runs" / "frozen"
    db = _resolve(uri)
    lp = db.launchpad()
    try:
        state = _wait(_mid_md(runs), 240, "the MD mid-production", a)
        a.send_signal(signal.SIGSTOP)
        old = lp.fireworks.find_one({"name": "md Li3N free 900K"})["launches"][-1]
        stopped_at = time.monotonic()
        workdir = Path(state["_dir"])
        lock = json.loads((workdir / ".ionflow-run.lock").read_text())  # A's
        b = _popen(["run", spec, "--uri", uri, "--data-dir", tmp_path / "dB", "--quiet"], tmp_path)
        # B takes the job only once A's lease (3 s) has expired
        fw = _wait(
            lambda: lp.fireworks.find_one(
                {"name": "md Li3N free 900K", "state": "RUNNING", "launches": {"$nin": [old]}}
            ),
            120,
            "B to take the job over",
            b,
        )
        # not before A's lease (3 s after its last renewal) had expired
        from ionflow.lease import last_ping

        renewed = last_ping(lp.launches.find_one({"launch_id": old}))
        taken = last_ping(lp.launches.find_one({"launch_id": fw["launches"][-1]}))
        assert (taken - renewed).total_seconds() > 3.0
        assert time.monotonic() - stopped_at < 60
        _wait(
            lambda: json.loads((workdir / ".ionflow-run.lock").read_text())["pid"] != a.pid,
            60,
            "B to take the run directory over",
            b,
        )
        a.send_signal(signal.SIGCONT)
        out_b, err_b = b.communicate(timeout=300)
        out_a, err_a = a.communicate(timeout=300)
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                with contextlib.suppress(Exception):
                    p.send_signal(signal.SIGCONT)
                p.kill()
    assert lock["pid"] == a.pid
    assert b.returncode == 0, out_b + err_b
    assert a.returncode == 0, out_a + err_a
    said = " ".join((out_b).split())
    assert "resuming 1 interrupted job(s)" in said or "taking over fw" in said, said
    assert "no heartbeat for" in said or "resuming" in said
    first = lp.launches.find_one({"launch_id": old})
    assert first["state"] == "FIZZLED"
    stored = first["action"]["stored_data"]
    assert "LeaseLost" in json.dumps(stored)  # A, resumed, stopped at its next write
    md = _assert_once_each(db, "frozen", n_md=1)
    run = md["free_900K"]["md"]
    assert run["resumed_from_step"] is not None
    assert _frames(run["production_trajectory"]) == run["n_production_frames"] == 1001


# ----------------------------------------------------------------------------- checkpoints


def _licl():
    from ase.build import bulk

    return bulk("LiCl", "rocksalt", a=5.0, cubic=True).repeat((2, 1, 1))


def _settings():
    from ionflow.md import MDSettings

    return MDSettings(
        temperature_k=1000.0,
        time_step_fs=2.0,
        equilibration_steps=40,
        production_steps=100,
        frame_interval_steps=10,
        checkpoint_interval_steps=20,
    )


class _Crash(RuntimeError):
    pass


def _crashed_run(workdir: Path, at_step: int = 100):
    from ionflow.md import run_md
    from ionflow.potentials import get_calculator

    def crash(step, total):
        if step == at_step:
            raise _Crash

    with pytest.raises(_Crash):
        run_md(_licl(), get_calculator("toy"), _settings(), workdir, progress=crash)


def test_corrupted_newest_checkpoint_resumes_from_previous_generation(tmp_path):
    from ionflow.md import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, run_md
    from ionflow.potentials import get_calculator

    ref = run_md(_licl(), get_calculator("toy"), _settings(), tmp_path / "ref")
    work = tmp_path / "work"
    _crashed_run(work)
    with np.load(work / PREVIOUS_CHECKPOINT_NAME) as prev, np.load(work / CHECKPOINT_NAME) as new:
        assert int(prev["step"]) == int(new["step"]) - 20
        prev_step = int(prev["step"])
    (work / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 truncated garbage")
    with pytest.warns(RuntimeWarning, match="previous checkpoint generation"):
        res = run_md(_licl(), get_calculator("toy"), _settings(), work)
    assert res.completed and res.resumed_from_step == prev_step
    assert "checkpoint.npz was unusable" in res.recovery_note
    assert (work / "checkpoint.unreadable.npz").exists()
    a, b = _frames(ref.production_trajectory), _frames(res.production_trajectory)
    assert a == b == 11
    from ase.io.trajectory import Trajectory

    with Trajectory(ref.production_trajectory) as ta, Trajectory(res.production_trajectory) as tb:
        for i in range(a):
            assert np.array_equal(ta[i].positions, tb[i].positions)


def test_no_usable_checkpoint_names_the_directory_and_what_to_do(tmp_path):
    from ionflow.md import (
        CHECKPOINT_NAME,
        PREVIOUS_CHECKPOINT_NAME,
        UnusableCheckpointError,
        run_md,
    )
    from ionflow.potentials import get_calculator

    work = tmp_path / "work"
    _crashed_run(work)
    (work / CHECKPOINT_NAME).write_bytes(b"\x00" * 64)
    (work / PREVIOUS_CHECKPOINT_NAME).write_text("not a checkpoint")
    with pytest.raises(UnusableCheckpointError) as info:
        run_md(_licl(), get_calculator("toy"), _settings(), work)
    msg = str(info.value)
    assert str(work) in msg and "no usable checkpoint" in msg and "rm -r" in msg
    assert "checkpoint.npz: unreadable" in msg and "checkpoint.prev.npz: unreadable" in msg


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    from ionflow import md
    from ionflow.potentials import get_calculator

    real = np.savez
    calls = [0]

    def full(fh, **arrays):  # write() fails with ENOSPC and no file name, as the OS does
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fh, **arrays)

    monkeypatch.setattr(md.np, "savez", full)
    with pytest.raises(OSError) as info:
        md.run_md(_licl(), get_calculator("toy"), _settings(), tmp_path / "w")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "w" / "checkpoint.npz")


def test_run_dir_lock_is_exclusive_and_stale_safe(tmp_path):
    from ionflow.lease import LeaseLost, RunDirBusy, RunDirLock

    first = RunDirLock(tmp_path, stale_after_s=2.0, heartbeat_s=0.2, wait_s=0.5)
    first.acquire()
    # a live holder in another process: the lock is refused after the wait
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from ionflow.lease import RunDirLock; "
            "l=RunDirLock(sys.argv[1], stale_after_s=2.0, heartbeat_s=0.2, wait_s=30); "
            "l.acquire(); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "other"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            RunDirLock(tmp_path / "other", stale_after_s=2.0, heartbeat_s=0.2, wait_s=0.5).acquire()
        holder.kill()
        holder.wait()
        # its process is gone: taken over at once, without waiting for the heartbeat to age
        t0 = time.monotonic()
        again = RunDirLock(tmp_path / "other", stale_after_s=30.0, heartbeat_s=0.2, wait_s=5)
        assert "is gone" in again.acquire()
        assert time.monotonic() - t0 < 2.0
        again.release()
    finally:
        if holder.poll() is None:
            holder.kill()
    # a lock from another host is stale only after stale_after_s without a heartbeat
    lock = tmp_path / ".ionflow-run.lock"
    info = json.loads(lock.read_text())
    lock.write_text(json.dumps({**info, "host": "elsewhere", "token": "x"}))
    with pytest.raises(LeaseLost, match="taken over by pid"):
        first.check()  # the token is not ours any more: stop writing
    first.release()
    assert lock.exists()  # not ours: not removed
    old = time.time() - 10
    os.utime(lock, (old, old))
    taker = RunDirLock(tmp_path, stale_after_s=2.0, heartbeat_s=0.2, wait_s=1)
    assert "no heartbeat" in taker.acquire()
    taker.release()
    assert not lock.exists()


def test_corrupted_checkpoints_through_run_and_status(tmp_path, cleanup_servers):
    """A completed MD job is rerun over a corrupted checkpoint: recovered from the previous
    generation; with none usable, `run` and `status` print the message naming the dir."""
    spec = _spec(tmp_path, "ckpt")
    first = _run(["run", spec, "--quiet"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "the database server is still running" in first.stdout.strip().splitlines()[-1]
    assert "ionflow db stop --data-dir" in first.stdout
    db = _resolve(data_dir=tmp_path / "ionflow-data")
    lp = db.launchpad()
    fw = lp.fireworks.find_one({"name": "md Li3N free 900K"})
    workdir = Path(_md_state(tmp_path / "ionflow-data" / "runs" / "ckpt")["_dir"])

    (workdir / "checkpoint.npz").write_bytes(b"garbage")
    lp.rerun_fw(fw["fw_id"])
    res = _run(["run", spec, "--quiet"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    with db.client() as client:
        out = client[db.database]["outputs"].find_one(
            {"uuid": fw["spec"]["_tasks"][0]["job"]["uuid"]}
        )
    assert "previous checkpoint generation" in out["output"]["md"]["recovery_note"]
    assert "previous checkpoint generation" in " ".join(res.stdout.split())  # said by `run`

    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        (workdir / name).write_bytes(b"garbage")
    lp.rerun_fw(fw["fw_id"])
    bad = _run(["run", spec, "--quiet"], tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = [ln for ln in bad.stdout.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1, bad.stdout
    assert "UnusableCheckpointError" in lines[0] and "no usable checkpoint" in lines[0]
    assert "Traceback" not in bad.stdout + bad.stderr
    flat = " ".join(bad.stdout.split())
    assert str(workdir) in flat and "rm -r" in flat
    status = _run(["status", spec], tmp_path)
    assert status.returncode == 0
    flat = " ".join(status.stdout.split())
    assert "failed: Li3N / md Li3N free 900K" in flat and "no usable checkpoint" in flat
    assert str(workdir) in flat


# ----------------------------------------------------------------------------- environment


def test_database_killed_mid_run_then_rerun_completes(tmp_path, cleanup_servers):
    spec = _spec(tmp_path, "killed-db", production_ps=10.0)
    a = _popen(["run", spec, "--quiet"], tmp_path)
    runs = tmp_path / "ionflow-data" / "runs" / "killed-db"
    try:
        _wait(_mid_md(runs), 240, "the MD mid-production", a)
        info = json.loads((tmp_path / "ionflow-data" / "server.json").read_text())
        os.kill(info["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = a.communicate(timeout=120)
        waited = time.monotonic() - killed_at
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 3, out + err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert f"cannot reach the database at 127.0.0.1:{info['port']}" in errors[0]
    assert "no answer within 3 s" in errors[0]
    # MD to its end (≤ ~10 s) or the lease self-fence (3 s), then a few 3-s client waits
    assert waited < 60, waited

    again = _run(["run", spec, "--quiet"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming 1 interrupted job(s)" in again.stdout
    db = _resolve(data_dir=tmp_path / "ionflow-data")
    md = _assert_once_each(db, "killed-db", n_md=1)
    assert _frames(md["free_900K"]["md"]["production_trajectory"]) == 1001


COMMANDS = ["run", "status", "submit", "hpc-status", "recover", "launch"]


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_database_is_one_line_exit_3(tmp_path, command):
    spec = _spec(tmp_path, "nodb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    res = _run([command, spec, "--uri", f"mongodb://ionflow:s3cret@127.0.0.1:{port}/"], tmp_path)
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "s3cret" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot reach the database at 127.0.0.1:{port} ("
    ), res.stderr
    assert elapsed < 30, elapsed  # the 3 s client timeout plus start-up
    assert not (tmp_path / "ionflow-data" / "runs").exists()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A SecantusDB requiring SCRAM authentication, with user ionflow / right-password."""
    import pymongo

    from ionflow.store import _free_port, _server_executable

    d = tmp_path_factory.mktemp("authdb")
    (d / "secantusd.toml").write_text("# empty on purpose\n")
    port = _free_port()
    base = [
        _server_executable(),
        *("--config", str(d / "secantusd.toml"), "--host", "127.0.0.1", "--port", str(port)),
        *("--storage-path", str(d / "db"), "--standalone"),
    ]

    def start(*extra):
        log = open(d / "server.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([*base, *extra], stdout=log, stderr=log, start_new_session=True)
        log.close()
        uri = f"mongodb://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
                c.admin.command("ping")
                c.close()
                return proc
            time.sleep(0.2)
        proc.kill()
        raise AssertionError("auth server did not start")

    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    proc = start()
    c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/")
    c.admin.command("createUser", "ionflow", pwd="right-password", roles=["root"])
    c.close()
    stop(proc)
    proc = start("--auth")
    yield port
    stop(proc)


@pytest.mark.parametrize("command", COMMANDS)
def test_auth_failing_database_is_one_line_exit_3(tmp_path, auth_server, command):
    spec = _spec(tmp_path, "badauth")
    uri = f"mongodb://ionflow:wrong-password@127.0.0.1:{auth_server}/?authSource=admin"
    t0 = time.monotonic()
    res = _run([command, spec, "--uri", uri], tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "wrong-password" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: cannot use the database at 127.0.0.1:{auth_server} (")
    assert "authentication failed" in lines[0]
    assert time.monotonic() - t0 < 30


_FULL_DISK_WORKER = """
import errno, sys
from ase.io.trajectory import TrajectoryWriter

real = TrajectoryWriter.write
count = [0]
def full(self, *args, **kwargs):  # the disk fills up after 10 frames: write() fails
    count[0] += 1
    if count[0] > 10:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *args, **kwargs)
TrajectoryWriter.write = full
from ionflow.cli import main
main(sys.argv[1:])
"""


def test_disk_full_shows_the_exception_and_path(tmp_path, cleanup_servers):
    spec = _spec(tmp_path, "full")
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_WORKER)
    res = subprocess.run(
        [sys.executable, str(script), "run", str(spec), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert res.returncode == 3, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1, res.stdout
    flat = " ".join(res.stdout.split())
    assert "[Errno 28] No space left on device" in flat and "production.traj" in flat
    status = _run(["status", spec], tmp_path)
    flat = " ".join(status.stdout.split())
    assert "No space left on device" in flat and "production.traj" in flat


def test_db_status_and_stop(tmp_path, cleanup_servers):
    data = tmp_path / "ionflow-data"
    none = _run(["db", "status", "--data-dir", data], tmp_path)
    assert none.returncode == 0 and "no database server running" in none.stdout
    from ionflow.store import LocalServer

    srv = LocalServer.ensure(data)
    st = _run(["db", "status", "--data-dir", data], tmp_path)
    assert st.returncode == 0
    line = st.stdout.splitlines()[0]
    assert f"pid {srv.pid}" in line and f"port {srv.port}" in line
    assert "up " in line and "database size" in line and str(data) in line
    listed = _run(["db", "status", "--all"], tmp_path)
    assert f"pid {srv.pid}" in listed.stdout
    stop = _run(["db", "stop", "--data-dir", data], tmp_path)
    assert stop.returncode == 0 and f"stopped SecantusDB pid {srv.pid}" in stop.stdout
    assert LocalServer.running(data) is None
    again = _run(["db", "stop", "--data-dir", data], tmp_path)
    assert again.returncode == 0 and "no database server running" in again.stdout


def test_run_dir_lock_of_a_lost_launch_is_taken_at_once(tmp_path, server):
    """A live writer's lock is stale for the next launch of the same job once its launch was
    declared lost (a cancelled Slurm job on another host need not wait for the lock to age)."""
    import psutil
    from fireworks import Firework, FWAction, FWorker, ScriptTask

    from ionflow.lease import RunDirBusy, RunDirLock, WorkerLease

    db = _resolve(server.uri)
    lp = db.launchpad()
    lp.reset("", require_password=False)
    lp.add_wf(Firework(ScriptTask.from_str("true"), name="job"))
    fw_id = lp.fireworks.find_one({})["fw_id"]
    _, first = lp.checkout_fw(FWorker(), str(tmp_path), fw_id=fw_id)
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = psutil.Process(os.getppid())  # alive, on this host, not us
    (workdir / ".ionflow-run.lock").write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": holder.pid,
                "pid_started": holder.create_time(),
                "token": "theirs",
                "fw_id": fw_id,
                "launch_id": first,
            }
        )
    )
    lp.rerun_fw(fw_id)
    lp.complete_launch(first, FWAction(stored_data={"ionflow_lost_run": "test"}), "FIZZLED")
    _, second = lp.checkout_fw(FWorker(), str(tmp_path), fw_id=fw_id)
    with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
        RunDirLock(workdir, stale_after_s=60, heartbeat_s=0.2, wait_s=0.5).acquire()
    lease = WorkerLease(lp, fw_id, second, ping_s=1, lease_length_s=60)
    lock = RunDirLock(workdir, stale_after_s=60, heartbeat_s=0.2, wait_s=0.5, lease=lease)
    assert f"launch {first} of this job was declared lost" in lock.acquire()
    assert json.loads((workdir / ".ionflow-run.lock").read_text())["launch_id"] == second
    lock.release()
