"""Tests of ionflow.store against real SecantusDB servers (one per test data directory)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bson
import numpy as np
import psutil
import pytest
from fireworks import FWorker
from fireworks.core.rocket_launcher import rapidfire
from jobflow import Flow, run_locally

from ionflow.backends.fw_tasks import flow_to_workflow, reset_launchpad_if_new
from ionflow.errors import UserInputError
from ionflow.names import BLOBS_COLLECTION, JOBSTORE_ENV_KEY, OUTPUTS_COLLECTION
from ionflow.store import (
    DatabaseSettings,
    LocalServer,
    redact_uri,
    resolve_database,
)

VENV_BIN = Path(sys.executable).parent
PASSWORD = "s3cr3tPW"

# Jobs must live in a module that a separate `rlaunch` process can import, so they are
# written to a file and put on sys.path / PYTHONPATH rather than defined here.
JOBS_MODULE = "ionflow_store_testjobs"
JOBS_SOURCE = textwrap.dedent(
    """
    import numpy as np
    from jobflow import Response, job


    @job
    def add(a, b):
        return a + b


    @job
    def multiply(a, b):
        return a * b


    @job
    def add_later(a, b):
        return Response(replace=add(a, b))


    @job(data="trajectory")
    def trajectory(n, seed=0):
        rng = np.random.default_rng(seed)
        return {"n": n, "trajectory": rng.random(n)}
    """
)


# ----------------------------------------------------------------------------- fixtures


def _kill_servers(data_dir: Path) -> None:
    """Stop every SecantusDB process on ``data_dir`` (recorded or not)."""
    data_dir = data_dir.resolve()
    for _ in range(5):
        server = LocalServer._find_orphan(data_dir)
        if server is None:
            return
        server.stop(timeout_s=10)


@pytest.fixture
def server_dir(tmp_path):
    """Factory of fresh data directories; every server on them is stopped at teardown."""
    made: list[Path] = []

    def make(name: str = "ionflow-data") -> Path:
        path = tmp_path / name
        made.append(path)
        return path

    yield make
    for path in made:
        _kill_servers(path)


@pytest.fixture(scope="module")
def jobs_module(tmp_path_factory):
    """The importable jobs module; returns (module, directory for PYTHONPATH)."""
    directory = tmp_path_factory.mktemp("jobs")
    (directory / f"{JOBS_MODULE}.py").write_text(JOBS_SOURCE)
    sys.path.insert(0, str(directory))
    import importlib

    module = importlib.import_module(JOBS_MODULE)
    yield module, directory
    sys.path.remove(str(directory))
    sys.modules.pop(JOBS_MODULE, None)


def _small_flow(jobs):
    """add(1, 2) -> multiply(., 10), a 1000-point trajectory (data store), a dynamic job."""
    first = jobs.add(1, 2)
    second = jobs.multiply(first.output, 10)
    traj = jobs.trajectory(1000, seed=first.output)  # seed 3; keeps the graph connected
    later = jobs.add_later(second.output, 5)  # replaced at run time by add(30, 5)
    return Flow([first, second, traj, later], name="small"), (first, second, traj, later)


def _check_small_flow_outputs(db, jobs_tuple) -> None:
    first, second, traj, later = jobs_tuple
    store = db.jobstore()
    store.connect()
    try:
        assert store.get_output(first.uuid) == 3
        assert store.get_output(second.uuid) == 30
        assert store.get_output(later.uuid) == 35
        out = store.get_output(traj.uuid, load=True)
        expected = np.random.default_rng(3).random(1000)
        np.testing.assert_array_equal(np.asarray(out["trajectory"]), expected)
    finally:
        store.close()


def _rlaunch(worker_files: dict[str, Path], cwd: Path, pythonpath: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [
            str(VENV_BIN / "rlaunch"),
            "-l",
            str(worker_files["launchpad"]),
            "-w",
            str(worker_files["fworker"]),
            "rapidfire",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _fw_states(lp, wf_fw_ids) -> set[str]:
    """States of every firework of the workflow, including dynamically added ones."""
    wf = lp.get_wf_by_fw_id(next(iter(wf_fw_ids)))
    return {fw.state for fw in wf.fws}


# ----------------------------------------------------------------------------- pure


def test_redact_uri_masks_password_and_secret_options():
    uri = (
        f"mongodb+srv://alice:{PASSWORD}@h1.example.org:27017,h2.example.org/admin"
        "?tls=true&tlsCertificateKeyFilePassword=pem-secret&authSource=admin"
    )
    red = redact_uri(uri)
    assert PASSWORD not in red and "pem-secret" not in red
    assert red.startswith("mongodb+srv://alice:***@h1.example.org:27017,h2.example.org/admin?")
    assert "authSource=admin" in red and "tls=true" in red
    assert redact_uri("mongodb://localhost:27017/") == "mongodb://localhost:27017/"
    assert redact_uri("not a uri") == "<unparsable MongoDB URI>"


def test_settings_repr_and_redacted_hide_the_password():
    settings = DatabaseSettings(uri=f"mongodb://user:{PASSWORD}@db.example.org/ionflow")
    for text in (repr(settings), str(settings), json.dumps(settings.redacted())):
        assert PASSWORD not in text
    assert settings.redacted()["uri"] == "mongodb://user:***@db.example.org/ionflow"


def test_bad_uri_is_a_user_error_without_echoing_it():
    with pytest.raises(UserInputError) as info:
        resolve_database(DatabaseSettings(uri=f"http://user:{PASSWORD}@x/"))
    assert PASSWORD not in str(info.value)


def test_missing_launchpad_file_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="launchpad_file"):
        resolve_database(DatabaseSettings(launchpad_file=tmp_path / "nope.yaml"))


# ----------------------------------------------------------------------------- server


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_ensure_reuses_then_restarts_after_sigkill_keeping_data(server_dir):
    data_dir = server_dir()
    assert LocalServer.running(data_dir) is None
    server = LocalServer.ensure(data_dir)
    info = json.loads((data_dir / "server.json").read_text())
    assert (info["pid"], info["port"]) == (server.pid, server.port)
    assert stat.S_IMODE((data_dir / "server.json").stat().st_mode) == 0o600

    again = LocalServer.ensure(data_dir)
    assert (again.pid, again.port) == (server.pid, server.port)
    assert LocalServer.running(data_dir) == server

    import pymongo

    client = pymongo.MongoClient(server.uri)
    client.keep.docs.insert_one({"name": "before-kill", "value": 42})
    client.close()

    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(server.pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert LocalServer.running(data_dir) is None

    restarted = LocalServer.ensure(data_dir)
    assert restarted.pid != server.pid
    client = pymongo.MongoClient(restarted.uri)
    try:
        assert client.keep.docs.find_one({"name": "before-kill"})["value"] == 42
    finally:
        client.close()

    restarted.stop()
    assert LocalServer.running(data_dir) is None
    assert not (data_dir / "server.json").exists()

    # a clean stop (SIGTERM) keeps the data too
    third = LocalServer.ensure(data_dir)
    client = pymongo.MongoClient(third.uri)
    try:
        assert client.keep.docs.count_documents({"name": "before-kill"}) == 1
    finally:
        client.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_concurrent_ensure_from_two_processes_share_one_server(server_dir):
    data_dir = server_dir()
    code = (
        "import sys; from ionflow.store import LocalServer; "
        "s = LocalServer.ensure(sys.argv[1]); print(s.pid, s.port)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    assert outputs[0] == outputs[1]

    storage = str(data_dir.resolve() / "db")
    servers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if storage in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
            servers.append(proc.pid)
    assert servers == [int(outputs[0][0])]
    # the server outlived the processes that started it
    assert LocalServer.running(data_dir).pid == servers[0]


# ----------------------------------------------------------------------------- JobStore


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_jobstore_puts_a_20mb_array_in_gridfs(server_dir, jobs_module, tmp_path, monkeypatch):
    jobs, _ = jobs_module
    monkeypatch.chdir(tmp_path)
    db = resolve_database(DatabaseSettings(data_dir=server_dir()))
    store = db.jobstore()
    n = 2_500_000  # 20 MB of float64; ~50 MB once serialised to JSON
    traj = jobs.trajectory(n, seed=3)
    responses = run_locally(Flow([traj]), store=store, ensure_success=True)
    assert traj.uuid in responses

    client = db.client()
    try:
        mongo = client[db.database]
        doc = mongo[OUTPUTS_COLLECTION].find_one({"uuid": traj.uuid})
        assert len(bson.encode(doc)) < 64 * 1024
        assert doc["output"]["n"] == n
        assert doc["output"]["trajectory"]["store"] == "data"
        blob = mongo[f"{BLOBS_COLLECTION}.files"].find_one({"metadata.job_uuid": traj.uuid})
        assert blob is not None and blob["length"] > 16 * 2**20
    finally:
        client.close()

    store.connect()
    out = store.get_output(traj.uuid, load=True)
    store.close()
    # jobflow serialises arrays as (nested) lists: convert back
    np.testing.assert_array_equal(np.asarray(out["trajectory"]), np.random.default_rng(3).random(n))


# ----------------------------------------------------------------------------- FireWorks


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_fireworks_in_process_and_rlaunch_workers(server_dir, jobs_module, tmp_path):
    jobs, jobs_dir = jobs_module
    db = resolve_database(DatabaseSettings(data_dir=server_dir()))
    lp = db.launchpad()
    assert reset_launchpad_if_new(lp) is True
    assert lp.db.name == "ionflow_fireworks" != db.database

    # (a) in-process rapidfire with the ResolvedDatabase's FWorker
    flow_a, jobs_a = _small_flow(jobs)
    id_map = lp.add_wf(flow_to_workflow(flow_a))
    launch_dir = tmp_path / "launches-a"
    launch_dir.mkdir()
    rapidfire(lp, fworker=db.fworker(), m_dir=str(launch_dir), strm_lvl="WARNING")
    assert _fw_states(lp, id_map.values()) == {"COMPLETED"}
    assert len(lp.get_wf_by_fw_id(next(iter(id_map.values()))).fws) == 5  # + the replacement
    _check_small_flow_outputs(db, jobs_a)

    # (b) a separate `rlaunch` process with the written worker files
    files = db.write_worker_files(tmp_path / "worker")
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    flow_b, jobs_b = _small_flow(jobs)
    id_map = lp.add_wf(flow_to_workflow(flow_b))
    launch_dir = tmp_path / "launches-b"
    launch_dir.mkdir()
    _rlaunch(files, launch_dir, jobs_dir)
    assert _fw_states(lp, id_map.values()) == {"COMPLETED"}
    _check_small_flow_outputs(db, jobs_b)

    # no store (hence no connection string) is embedded in the workflow documents
    for doc in lp.fireworks.find({}):
        task = doc["spec"]["_tasks"][0]
        assert task["_fw_name"] == "{{ionflow.store.IonflowJobFiretask}}"
        assert "store" not in task
    launch_envs = [d["fworker"]["env"][JOBSTORE_ENV_KEY] for d in lp.launches.find({})]
    assert any(str(files["jobstore"]) == env for env in launch_envs)
    assert any("not serialised" in env for env in launch_envs)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_without_jobstore_fizzles_instead_of_losing_outputs(
    server_dir, jobs_module, tmp_path
):
    jobs, _ = jobs_module
    db = resolve_database(DatabaseSettings(data_dir=server_dir()))
    lp = db.launchpad()
    reset_launchpad_if_new(lp)
    job = jobs.add(2, 2)
    id_map = lp.add_wf(flow_to_workflow(job))
    rapidfire(lp, fworker=FWorker(), m_dir=str(tmp_path), strm_lvl="ERROR")
    fw = lp.get_fw_by_id(next(iter(id_map.values())))
    assert fw.state == "FIZZLED"
    stored = fw.launches[-1].action.stored_data
    assert JOBSTORE_ENV_KEY in stored["_exception"]["_stacktrace"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_reset_launchpad_if_new_keeps_existing_workflows(server_dir, jobs_module):
    jobs, _ = jobs_module
    db = resolve_database(DatabaseSettings(data_dir=server_dir()))
    lp = db.launchpad()
    assert reset_launchpad_if_new(lp) is True
    first = lp.add_wf(flow_to_workflow(jobs.add(1, 1)))
    assert reset_launchpad_if_new(lp) is False
    assert reset_launchpad_if_new(db.launchpad()) is False  # a fresh LaunchPad object too
    assert lp.workflows.count_documents({}) == 1
    second = lp.add_wf(flow_to_workflow(jobs.add(2, 2)))
    assert lp.workflows.count_documents({}) == 2
    assert set(first.values()).isdisjoint(second.values())


# ----------------------------------------------------------------------------- secrets


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_password_never_reaches_descriptions_or_stored_documents(server_dir, jobs_module, tmp_path):
    jobs, jobs_dir = jobs_module
    server = LocalServer.ensure(server_dir())
    import pymongo

    admin = pymongo.MongoClient(server.uri)
    admin.admin.command("createUser", "ionflow-user", pwd=PASSWORD, roles=["root"])
    admin.close()

    uri = f"mongodb://ionflow-user:{PASSWORD}@127.0.0.1:{server.port}/?authSource=admin"
    settings = DatabaseSettings(uri=uri, database="secure")
    db = resolve_database(settings)
    assert db.local_server is None
    for text in (db.description, repr(db), str(db), repr(settings)):
        assert PASSWORD not in text
    assert "***" in db.description

    # a wrong password fails the check, and the message does not echo it either
    wrong = DatabaseSettings(uri=uri.replace(PASSWORD, "WrongPW123"))
    with pytest.raises(RuntimeError) as info:
        resolve_database(wrong)
    assert "WrongPW123" not in str(info.value)

    lp = db.launchpad()
    reset_launchpad_if_new(lp)
    flow_a, jobs_a = _small_flow(jobs)
    lp.add_wf(flow_to_workflow(flow_a))
    (tmp_path / "a").mkdir()
    rapidfire(lp, fworker=db.fworker(), m_dir=str(tmp_path / "a"), strm_lvl="WARNING")
    _check_small_flow_outputs(db, jobs_a)

    files = db.write_worker_files(tmp_path / "worker")
    assert PASSWORD in files["launchpad"].read_text()
    assert PASSWORD in files["jobstore"].read_text()
    assert PASSWORD not in files["fworker"].read_text()
    flow_b, jobs_b = _small_flow(jobs)
    lp.add_wf(flow_to_workflow(flow_b))
    (tmp_path / "b").mkdir()
    _rlaunch(files, tmp_path / "b", jobs_dir)
    _check_small_flow_outputs(db, jobs_b)
    assert {fw["state"] for fw in lp.fireworks.find({}, {"state": 1})} == {"COMPLETED"}

    # the same server through a FireWorks launchpad file (host/port/username/password)
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text(
        f"host: 127.0.0.1\nport: {server.port}\nname: from_file_fw\nusername: ionflow-user\n"
        f"password: {PASSWORD}\nauthsource: admin\n"
    )
    db_file = resolve_database(DatabaseSettings(launchpad_file=lp_file, database="from_file"))
    assert PASSWORD not in db_file.description and PASSWORD not in repr(db_file)
    assert db_file.launchpad().db.name == "from_file_fw"
    assert reset_launchpad_if_new(db_file.launchpad()) is True
    (tmp_path / "c").mkdir()
    run_locally(jobs.add(20, 22), store=db_file.jobstore(), root_dir=tmp_path / "c")
    client = db_file.client()
    try:
        assert client.from_file[OUTPUTS_COLLECTION].find_one({})["output"] == 42
    finally:
        client.close()

    client = db.client()
    try:
        for dbname in (db.fireworks_database, db.database, "from_file_fw", "from_file"):
            for coll in client[dbname].list_collection_names():
                if coll.endswith(".chunks"):
                    continue
                for doc in client[dbname][coll].find({}):
                    text = json.dumps(doc, default=str)
                    assert PASSWORD not in text, f"{dbname}.{coll} holds the password"
    finally:
        client.close()
