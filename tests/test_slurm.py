"""A real Slurm in the test suite: campaigns run through qlaunch -> sbatch -> rlaunch.

The module starts a one-node Slurm with ``slurm/local/start.sh`` (installing it with
``slurm/local/install.sh`` when missing) on its own ports and state directory, and stops it
at the end. Without Slurm the tests are skipped -- except in CI (``CI=true``), where they fail.

(a) a toy campaign on a SecantusDB server with authentication and TLS, reached through a
    launchpad file: every job COMPLETED by a worker of its own category, a summary exists,
    and a planted password appears in no output, file or database document;
(b) an MD job scancel-ed after its first checkpoints: ``ionflow hpc-status`` shows it lost,
    ``ionflow recover`` reruns it, the MD resumes from the checkpoint and the campaign ends
    with exactly one output per job and exact frame counts;
(c) the embedded database server stopped and restarted (new port) mid-campaign: workers of
    later jobs read the rewritten worker files, the stranded ones are recovered, and the
    campaign completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import bson
import pytest

from ionflow.hpc import (
    ACTIVE_SLURM_STATES,
    JOBS_COLLECTION,
    _job_of_launches,
    campaign_done,
    launch,
    load_profile,
    slurm_queue,
)
from ionflow.store import DatabaseSettings, LocalServer, resolve_database

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning", "ignore::FutureWarning"),
]

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "slurm"
PROFILES = SLURM_DIR / "local" / "profiles"
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
IONFLOW = str(VENV_BIN / "ionflow")
SECRET = "PLANTED-pw-7f3c9e"
IN_CI = os.environ.get("CI") == "true"


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"Slurm is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node Slurm; yields the environment (SLURM_CONF) for its clients."""
    if shutil.which("sbatch") is None or not Path("/usr/sbin/slurmctld").exists():
        proc = subprocess.run(
            ["bash", str(SLURM_DIR / "local" / "install.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            _unavailable(f"cannot install Slurm: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ)
    # own ports: a developer's cluster from start.sh (6817/6818) may be running
    env["SLURMCTLD_PORT"], env["SLURMD_PORT"] = str(_free_port()), str(_free_port())
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "local" / "start.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if proc.returncode != 0:
        _unavailable(f"cannot start Slurm: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield {"SLURM_CONF": str(state / "slurm.conf"), "state": state}
    finally:
        subprocess.run(
            ["bash", str(SLURM_DIR / "local" / "stop.sh"), str(state)],
            capture_output=True,
            timeout=120,
        )
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def data(tmp_path):
    """The project data directory; its embedded database server is stopped afterwards."""
    path = tmp_path / "ionflow-data"
    yield path
    server = LocalServer.running(path)
    if server is not None:
        server.stop()


def write_spec(
    directory: Path,
    campaign: str,
    *,
    production_ps: float,
    temperatures=(900, 1300),
    extra: str = "",
    filename: str = "workflows.yaml",
) -> Path:
    """The toy Li3N campaign (two temperatures, pinned control auto) as ``filename``."""
    spec = directory / filename
    spec.write_text(
        f"""campaign: {campaign}
mobile_species: Li
engine: {{relax: toy, md: toy}}
md:
  temperatures_k: [{", ".join(str(t) for t in temperatures)}]
  time_step_fs: 2.0
  equilibration_ps: 0.1
  production_ps: {production_ps}
  frame_interval_fs: 10
  supercell_min_length_a: 7.0
  pinned_control: auto
materials:
  - {{name: Li3N, structure: {EXAMPLES / "Li3N.cif"}}}
relax: {{fmax_ev_a: 0.1, max_steps: 50}}
{extra}"""
    )
    return spec


def cli(*args: str, cwd: Path, timeout: float = 300, check: bool = True):
    """Run the ionflow CLI in a subprocess; stdout/stderr have their whitespace collapsed
    (rich wraps long lines at 80 columns without a terminal)."""
    proc = subprocess.run(
        [IONFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    # all output without any whitespace: a secret wrapped across lines is still found
    proc.squeezed = "".join((proc.stdout + proc.stderr).split())
    proc.stdout, proc.stderr = " ".join(proc.stdout.split()), " ".join(proc.stderr.split())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ionflow {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def drive(db, data_dir: Path, campaign: str, until, *, timeout: float, max_jobs: int = 2):
    """Submit jobs of every profile (no recovery) until ``until()`` is true."""
    profiles = [load_profile(p, PROFILES) for p in ("relax", "md", "analysis")]
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s; {_states(db, campaign)}")
        queue = slurm_queue()
        for profile in profiles:
            launch(db, profile, data_dir, campaign=campaign, max_jobs=max_jobs, queue=queue)
        time.sleep(0.5)


def _states(db, campaign: str) -> dict[str, str]:
    lp = db.launchpad()
    return {
        fw["name"]: fw["state"]
        for fw in lp.fireworks.find({"spec.ionflow_campaign": campaign}, {"name": 1, "state": 1})
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def check_results(db, campaign: str, *, n_md: int) -> dict:
    """Every job COMPLETED, one output per job uuid, summary stored; returns MD outputs."""
    from ionflow.makers.analysis import SUMMARY_COLLECTION

    states = _states(db, campaign)
    assert states and set(states.values()) == {"COMPLETED"}, states
    with db.client() as client:
        outputs = client[db.database]["outputs"]
        uuids = Counter(d["uuid"] for d in outputs.find({}, {"uuid": 1}))
        lp = db.launchpad()
        job_uuids = [
            fw["spec"]["_tasks"][0]["job"]["uuid"]
            for fw in lp.fireworks.find({"spec.ionflow_campaign": campaign}, {"spec._tasks": 1})
        ]
        assert all(uuids[u] == 1 for u in job_uuids), {u: uuids[u] for u in job_uuids}
        md = [
            d["output"]
            for d in outputs.find({"name": {"$regex": "^md "}}, {"output": 1, "name": 1})
            if d["output"].get("campaign") == campaign
        ]
        assert len(md) == n_md
        summary = client[db.database][SUMMARY_COLLECTION].find_one(
            {"campaign": campaign, "material": "Li3N"}
        )
        assert summary is not None
    return {f"{m['variant']}_{m['temperature_k']:g}K": m for m in md}


def assert_exact_frames(md_output: dict, production_ps: float) -> None:
    n_steps = int(round(production_ps * 1000 / 2.0))
    expected = n_steps // 5 + 1  # frame_interval_fs 10 at 2 fs
    assert md_output["md"]["n_production_frames"] == expected
    assert md_output["trajectory"]["n_frames"] == expected


# ----------------------------------------------------------------------------- (a)


@pytest.fixture
def auth_tls_server(tmp_path):
    """A SecantusDB server requiring SCRAM authentication over TLS; yields its settings."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    d = tmp_path / "authdb"
    d.mkdir()
    (d / "secantusd.toml").write_text("# empty on purpose\n")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = _free_port()
    base = [
        str(VENV_BIN / "secantusd-py"), "--config", str(d / "secantusd.toml"),
        "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(d / "db"),
        "--standalone",
    ]  # fmt: skip
    import pymongo

    def start(*extra: str) -> subprocess.Popen:
        log = open(d / "server.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([*base, *extra], stdout=log, stderr=log, start_new_session=True)
        log.close()
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def wait_ready(uri: str, **kw) -> None:
        def ok():
            with contextlib.suppress(Exception):
                c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500, **kw)
                try:
                    c.admin.command("ping")
                    return True
                finally:
                    c.close()
            return False

        wait_for(ok, 30, "the database server")

    proc = start()  # first without --auth to create the user
    try:
        wait_ready(f"mongodb://127.0.0.1:{port}/")
        c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/")
        c.admin.command(
            "createUser", "ionflow", pwd=SECRET, roles=[{"role": "root", "db": "admin"}]
        )
        c.close()
    finally:
        stop(proc)
    proc = start(
        "--auth", "--tls-cert-file", str(d / "cert.pem"), "--tls-key-file", str(d / "key.pem")
    )
    try:
        tls = {"tls": True, "tlsCAFile": str(d / "cert.pem")}
        wait_ready(
            f"mongodb://ionflow:{SECRET}@127.0.0.1:{port}/?authSource=admin",
            **tls,
        )
        yield {"port": port, "tls": tls, "dir": d}
    finally:
        stop(proc)


def _database_holds(db, needle: bytes) -> list[str]:
    """Collections (db.collection) with a document whose BSON contains ``needle``."""
    hits = []
    with db.client() as client:
        for name in client.list_database_names():
            for coll in client[name].list_collection_names():
                for doc in client[name][coll].find({}):
                    if needle in bson.encode(doc):
                        hits.append(f"{name}.{coll}")
                        break
    return hits


def test_campaign_through_slurm_auth_tls(slurm, tmp_path, auth_tls_server):
    """(a) submit -> launch --watch (qlaunch -> sbatch -> rlaunch) -> COMPLETED + summary."""
    srv = auth_tls_server
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": srv["port"],
                "name": "ionflow_fw_a",
                "username": "ionflow",
                "password": SECRET,
                "authsource": "admin",
                "mongoclient_kwargs": srv["tls"],
            }
        )
    )
    os.chmod(lp_file, 0o644)
    spec = write_spec(tmp_path, "slurm-a", production_ps=0.4)
    data = tmp_path / "ionflow-data"
    common = ("--data-dir", str(data), "--launchpad", str(lp_file))
    outputs = []

    sub = cli("submit", str(spec), *common, cwd=tmp_path)
    outputs.append(sub.squeezed)
    assert "readable by" in sub.stderr and "chmod 600" in sub.stderr  # warned, not refused
    assert "submitted8newjob(s)(1newmaterial(s),0extended)" in sub.squeezed
    os.chmod(lp_file, 0o600)
    again = cli("submit", str(spec), *common, cwd=tmp_path)  # idempotent, no warning now
    outputs.append(again.squeezed)
    assert "submitted0newjob(s)" in again.squeezed and "reused8job(s)" in again.squeezed
    assert "warning" not in again.stderr

    t0 = time.monotonic()
    run = cli(
        "launch", str(spec), *common,
        "--profile", "relax", "--profile", "md", "--profile", "analysis",
        "--profiles-dir", str(PROFILES), "--max", "2", "--watch", "--interval", "1",
        "--max-wait", "300",
        cwd=tmp_path, timeout=400,
    )  # fmt: skip
    outputs.append(run.squeezed)
    assert "campaign done: 8 completed, 0 fizzled" in run.stdout, run.stdout + run.stderr
    print(f"campaign (a) through Slurm: {time.monotonic() - t0:.1f} s")

    status = cli("hpc-status", str(spec), *common, cwd=tmp_path)
    outputs.append(status.squeezed)
    assert "Li3N" in status.stdout and "lost" in status.stdout
    outputs.append(cli("status", str(spec), *common, cwd=tmp_path).squeezed)

    db = resolve_database(DatabaseSettings(launchpad_file=lp_file, data_dir=data))
    md = check_results(db, "slurm-a", n_md=2)
    for out in md.values():
        assert_exact_frames(out, 0.4)
    lp = db.launchpad()
    # every firework ran in a Slurm job of its own category's profile
    recs = {r["launcher_dir"]: r for r in lp.db[JOBS_COLLECTION].find({"campaign": "slurm-a"})}
    kinds = Counter()
    for fw in lp.fireworks.find({"spec.ionflow_campaign": "slurm-a"}):
        launch_doc = lp.launches.find_one({"launch_id": fw["launches"][-1]})
        assert launch_doc["fworker"]["category"] == fw["spec"]["_category"]
        rec = recs.get(str(Path(launch_doc["launch_dir"]).parent))
        assert rec is not None and rec["profile"] == fw["spec"]["_category"]
        kinds[fw["spec"]["_category"]] += 1
    assert kinds == {"relax": 1, "md": 2, "analysis": 5}

    # the planted password: in no CLI output, no file but the 0600 worker files, no document
    for text in outputs:
        assert SECRET not in text
    private = {"my_launchpad.yaml", "jobstore.json"}
    for path in data.rglob("*"):
        if path.is_file():
            if path.name in private:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                continue
            assert SECRET.encode() not in path.read_bytes(), path
    assert _database_holds(db, SECRET.encode()) == []


# ----------------------------------------------------------------------------- (b)


def _md_workdir(data: Path, campaign: str, tag: str) -> Path | None:
    found = sorted((data / "runs" / campaign / "Li3N").glob(f"{tag}_*"))
    return found[0] if found else None


def _checkpoint_step(workdir: Path | None) -> int:
    if workdir is None:
        return 0
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((workdir / "md_state.json").read_text())["step"])
    return 0


def test_scancel_mid_md_recover_resumes(slurm, tmp_path, data):
    """(b) scancel an MD job after its first checkpoints; recover; it resumes; no duplicates."""
    production_ps = 8.0  # 4000 toy steps: ~15-30 s, checkpoints every 100 steps
    spec = write_spec(tmp_path, "slurm-b", production_ps=production_ps, temperatures=(900, 1100))
    common = ("--data-dir", str(data))
    cli("submit", str(spec), *common, cwd=tmp_path)
    db = resolve_database(DatabaseSettings(data_dir=data))
    lp = db.launchpad()

    def md_checkpointed():
        fw = lp.fireworks.find_one(
            {"spec.ionflow_campaign": "slurm-b", "name": "md Li3N free 900K", "state": "RUNNING"}
        )
        step = _checkpoint_step(_md_workdir(data, "slurm-b", "free_900K"))
        return fw if fw is not None and 300 <= step < 3500 else None

    drive(db, data, "slurm-b", md_checkpointed, timeout=180)
    fw = md_checkpointed()
    assert fw is not None, "the MD finished before it could be cancelled: make it longer"
    launch_doc = lp.launches.find_one({"launch_id": fw["launches"][-1]})
    job = _job_of_launches(lp, [launch_doc])[launch_doc["launch_id"]]
    subprocess.run(["scancel", job], check=True, timeout=30)
    wait_for(
        lambda: (slurm_queue() or {}).get(job, "GONE") not in ACTIVE_SLURM_STATES,
        60,
        f"Slurm job {job} to end",
    )
    step_at_cancel = _checkpoint_step(_md_workdir(data, "slurm-b", "free_900K"))
    assert lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"] == "RUNNING"  # stranded

    status = cli("hpc-status", str(spec), *common, cwd=tmp_path)
    assert f"fw {fw['fw_id']} md Li3N free 900K" in status.stdout, status.stdout
    dry = cli("recover", str(spec), *common, "--dry-run", cwd=tmp_path)
    assert "dry run" in dry.stdout
    assert lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"] == "RUNNING"
    rec = cli("recover", str(spec), *common, cwd=tmp_path)
    assert f"Slurm job {job} ended" in rec.stdout and "rerun" in rec.stdout, rec.stdout
    assert lp.fireworks.find_one({"fw_id": fw["fw_id"]})["state"] == "READY"
    again = cli("recover", str(spec), *common, cwd=tmp_path)
    assert "no lost runs" in again.stdout
    old = lp.launches.find_one({"launch_id": launch_doc["launch_id"]})
    assert old["state"] == "FIZZLED" and "ionflow_lost_run" in old["action"]["stored_data"]

    drive(db, data, "slurm-b", lambda: campaign_done(lp, "slurm-b"), timeout=240)
    md = check_results(db, "slurm-b", n_md=2)
    resumed = md["free_900K"]["md"]["resumed_from_step"]
    assert resumed is not None and 0 < resumed <= step_at_cancel
    assert md["free_900K"]["md"]["steps_done"] == 50 + 4000
    for out in md.values():
        assert_exact_frames(out, production_ps)
    assert md["free_1100K"]["md"]["resumed_from_step"] is None  # untouched run: fresh start


# ----------------------------------------------------------------------------- (c)


def test_database_restart_mid_campaign(slurm, tmp_path, data):
    """(c) stop the embedded server while MD runs, start it again (new port): completes."""
    spec = write_spec(tmp_path, "slurm-c", production_ps=3.0)
    common = ("--data-dir", str(data))
    cli("submit", str(spec), *common, cwd=tmp_path)
    db = resolve_database(DatabaseSettings(data_dir=data))
    lp = db.launchpad()

    def md_running():
        n = lp.fireworks.count_documents({"spec.ionflow_campaign": "slurm-c", "state": "RUNNING",
                                          "spec._category": "md"})  # fmt: skip
        return n > 0 and _checkpoint_step(_md_workdir(data, "slurm-c", "free_900K")) >= 100

    drive(db, data, "slurm-c", md_running, timeout=180)
    old_port = db.local_server.port
    db.local_server.stop()
    time.sleep(2)
    server = LocalServer.ensure(data)
    print(f"database restarted: port {old_port} -> {server.port}")

    # the documented way to keep going: launch --watch re-resolves the database every round
    # (rewriting the worker files) and recovers runs whose Slurm job died with the old port
    run = cli(
        "launch", str(spec), *common,
        "--profile", "relax", "--profile", "md", "--profile", "analysis",
        "--profiles-dir", str(PROFILES), "--max", "2", "--watch", "--interval", "1",
        "--max-wait", "400",
        cwd=tmp_path, timeout=500,
    )  # fmt: skip
    assert "campaign done: 8 completed, 0 fizzled" in run.stdout, run.stdout + run.stderr
    db = resolve_database(DatabaseSettings(data_dir=data))
    md = check_results(db, "slurm-c", n_md=2)
    for out in md.values():
        assert_exact_frames(out, 3.0)
