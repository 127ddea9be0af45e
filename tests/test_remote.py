"""The jobflow-remote backend with real parts: OpenSSH, Slurm, the runner, SecantusDB.

The module starts

* an OpenSSH server (Debian ``openssh-server``) on 127.0.0.1, a free port, as the current
  user: its own host key, ``UsePAM no``, key authentication only with a key generated here;
  ``SetEnv SLURM_CONF`` so that ``sbatch``/``squeue`` over SSH find the test cluster;
* the one-node Slurm of ``tests/test_slurm.py`` (same fixture);
* a SecantusDB server on a fixed port (stopped and restarted on it by the tests);

and writes the jobflow-remote project with ``ionflow remote init`` from
``slurm/local/profiles``. The runner runs in ``.venv-remote`` (``make remote-venv``); the
"cluster" side runs ``jf execution run`` from the same environment, over SSH and Slurm.

(a) a campaign end to end: submit is idempotent; the database is **stopped** while an MD
    job runs and that Slurm job still completes (the compute side needs no database); no
    file of the cluster side holds the database address; the runner, restarted after the
    database, finishes the campaign; trajectories arrive in GridFS through the runner;
(b) ``scancel`` of an MD job after its first checkpoints: the job is lost, ``ionflow remote
    recover`` reruns it in the same run directory, the MD resumes from its checkpoint, and
    the campaign ends with one output per job and exact frame counts;
(c) the same campaign through FireWorks (``ionflow run``, same seed, toy engine) gives the
    same summary numbers;
(d) a 64 MiB file streamed through the runner's SFTP into GridFS, checksum verified.

Without sshd/Slurm/.venv-remote the tests are skipped, except in CI (``CI=true``): fail.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from test_slurm import EXAMPLES, slurm, wait_for  # noqa: E402, F401 (the Slurm fixture)
from test_slurm import write_spec as slurm_write_spec  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning", "ignore::FutureWarning"),
]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IONFLOW = str(VENV_BIN / "ionflow")
REMOTE_VENV = Path(sys.prefix + "-remote")
PROFILES = REPO / "slurm" / "local" / "profiles"
IN_CI = os.environ.get("CI") == "true"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def remote_venv():
    if not (REMOTE_VENV / "bin" / "jf").exists():
        proc = subprocess.run(
            ["make", "remote-venv"], cwd=REPO, capture_output=True, text=True, timeout=1800
        )
        if proc.returncode != 0:
            _unavailable(f"cannot build .venv-remote: {proc.stderr[-800:]}")
    return REMOTE_VENV


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, slurm):  # noqa: F811 (the imported fixture)
    """An OpenSSH server on 127.0.0.1 as the current user, key auth only."""
    if not Path(SSHD).exists():
        _unavailable("sshd not found (Debian openssh-server; `make system-deps`)")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host_key", "id_ed25519"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
            check=True,
            timeout=30,
        )
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
MaxStartups 50
MaxSessions 50
SetEnv SLURM_CONF={slurm["SLURM_CONF"]}
Subsystem sftp internal-sftp
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log
    )
    ssh = [
        "ssh", "-i", str(d / "id_ed25519"), "-p", str(port), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
        f"{getpass.getuser()}@127.0.0.1",
    ]  # fmt: skip

    def ok():
        r = subprocess.run([*ssh, "echo $SLURM_CONF"], capture_output=True, text=True, timeout=20)
        return r.returncode == 0 and slurm["SLURM_CONF"] in r.stdout

    try:
        try:
            wait_for(ok, 30, "sshd")
        except AssertionError:
            _unavailable(f"sshd did not start: {(d / 'sshd.log').read_text()[-800:]}")
        yield {"port": port, "key": d / "id_ed25519", "ssh": ssh, "user": getpass.getuser()}
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        log.close()


class Secantus:
    """A SecantusDB server on a fixed port that can be stopped and started again."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        (directory / "secantusd.toml").write_text("# empty on purpose\n")

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "secantusd-py"), "--config", str(self.dir / "secantusd.toml"),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--storage-path", str(self.dir / "db"), "--standalone",
            ],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        import pymongo

        def ok():
            with contextlib.suppress(Exception):
                c = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
                try:
                    c.admin.command("ping")
                    return True
                finally:
                    c.close()
            return False

        wait_for(ok, 30, "the database server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@pytest.fixture
def database(tmp_path):
    d = tmp_path / "secantus"
    d.mkdir()
    srv = Secantus(d)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def remote(tmp_path, sshd, remote_venv, database, monkeypatch):
    """A jobflow-remote project on the test cluster; yields paths and a CLI runner."""
    projects = tmp_path / "jfremote"
    work = tmp_path / "cluster"  # the "remote" side (reached over SSH)
    monkeypatch.setenv("JFREMOTE_PROJECTS_FOLDER", str(projects))
    monkeypatch.setenv("IONFLOW_DB_URI", database.uri)
    project = "ionflow-test"
    init = cli(
        "remote", "init", "--profile", str(PROFILES), "--host",
        f"{sshd['user']}@127.0.0.1:{sshd['port']}", "--key", str(sshd["key"]),
        "--work-dir", str(work), "--python-env", str(remote_venv), "--project", project,
        "--poll", "1", cwd=tmp_path,
    )  # fmt: skip
    assert f"wrote {projects / (project + '.yaml')}" in init.stdout, init.stdout
    return {
        "projects": projects, "work": work, "project": project, "tmp": tmp_path,
        "ssh": sshd["ssh"], "sshd": sshd,
    }  # fmt: skip


def cli(*args: str, cwd: Path, timeout: float = 600, check: bool = True, env=None):
    proc = subprocess.run(
        [IONFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    proc.stdout, proc.stderr = " ".join(proc.stdout.split()), " ".join(proc.stderr.split())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ionflow {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def write_spec(directory: Path, campaign: str, **kw) -> Path:
    """tests/test_slurm.py's toy Li3N campaign, as ``<campaign>.yaml``."""
    return slurm_write_spec(directory, campaign, filename=f"{campaign}.yaml", **kw)


def _client(uri: str):
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)


def _jobs(uri: str, campaign: str) -> dict[str, dict]:
    with _client(uri) as c:
        return {
            d["job"]["name"]: d
            for d in c["ionflow"]["jfr_jobs"].find({"job.metadata.ionflow_campaign": campaign})
        }


def _md_dir(work: Path, campaign: str, tag: str) -> Path | None:
    found = sorted((work / "ionflow-runs" / campaign / "Li3N").glob(f"{tag}_*"))
    return found[0] if found else None


def _step(workdir: Path | None) -> int:
    if workdir is None:
        return 0
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((workdir / "md_state.json").read_text())["step"])
    return 0


def _squeue() -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _start_runner(spec: Path, cwd: Path, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 (the process holds it)
    proc = subprocess.Popen(
        [IONFLOW, "remote", "run", str(spec)], cwd=cwd, stdout=fh, stderr=fh,
        start_new_session=True,
    )  # fmt: skip
    fh.close()
    return proc


def _stop_runner(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def check_outputs(uri: str, campaign: str, production_ps: float) -> dict:
    """Every job COMPLETED, one output per job, exact frames, trajectories in GridFS."""
    jobs = _jobs(uri, campaign)
    assert len(jobs) == 8 and {d["state"] for d in jobs.values()} == {"COMPLETED"}, {
        n: d["state"] for n, d in jobs.items()
    }
    with _client(uri) as c:
        db = c["ionflow"]
        per_uuid = Counter(d["uuid"] for d in db["outputs"].find({}, {"uuid": 1}))
        assert all(per_uuid[d["uuid"]] == 1 for d in jobs.values()), per_uuid
        md = {}
        for name, d in jobs.items():
            if not name.startswith("md "):
                continue
            out = db["outputs"].find_one({"uuid": d["uuid"]})["output"]
            n_expected = int(round(production_ps * 1000 / 2.0)) // 5 + 1
            assert out["md"]["n_production_frames"] == n_expected
            traj = out["trajectory"]
            assert traj["n_frames"] == n_expected and traj["gridfs_id"], traj
            files = list(db["trajectories.files"].find({"metadata.job_uuid": d["uuid"]}))
            assert len(files) == 1 and files[0]["length"] == traj["size_bytes"]
            md[name] = out
        summary = db["summaries"].find_one({"campaign": campaign, "material": "Li3N"})
        assert summary is not None
    return {"md": md, "summary": summary}


# ----------------------------------------------------------------------------- (a)


def test_campaign_end_to_end_db_down_while_md_runs(remote, database):
    tmp, work = remote["tmp"], remote["work"]
    spec = write_spec(
        tmp, "jfr-a", production_ps=6.0,
        extra=f"execution: {{mode: jobflow-remote, project: {remote['project']}}}",
    )  # fmt: skip
    first = cli("submit", str(spec), cwd=tmp)  # the spec's mode selects the backend
    assert "submitted 8 new job(s)" in first.stdout, first.stdout
    again = cli("remote", "submit", str(spec), cwd=tmp)
    assert "submitted 0 new job(s)" in again.stdout and "reused 8 job(s)" in again.stdout

    runner = _start_runner(spec, tmp, tmp / "runner-1.log")
    try:
        wait_for(lambda: _step(_md_dir(work, "jfr-a", "free_900K")) >= 200, 300, "MD checkpoints")
    finally:
        _stop_runner(runner)
    md = _jobs(database.uri, "jfr-a")["md Li3N free 900K"]
    slurm_id = str(md["remote"]["process_id"])
    assert _squeue().get(slurm_id) == "RUNNING", _squeue()
    step_db_down = _step(_md_dir(work, "jfr-a", "free_900K"))
    database.stop()  # the database is gone while the Slurm job runs
    wait_for(lambda: slurm_id not in _squeue(), 300, f"Slurm job {slurm_id} to end")
    run_dir = Path(md["run_dir"])
    out = json.loads((run_dir / "jfremote_out.json").read_text())
    assert out.get("response") and not out.get("error"), out  # finished without a database
    assert _step(_md_dir(work, "jfr-a", "free_900K")) > step_db_down
    print(f"MD finished with the database down (from step {step_db_down})")

    # nothing on the cluster side names the database
    needles = [f"127.0.0.1:{database.port}".encode(), b"mongodb://", b"jfr_jobs"]
    for path in work.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, (path, needle)

    database.start()  # same port: the runner picks up where it was
    run = cli("remote", "run", str(spec), cwd=tmp, timeout=900)
    assert "campaign done: 8 completed, 0 fizzled" in run.stdout, run.stdout + run.stderr
    res = check_outputs(database.uri, "jfr-a", 6.0)
    assert res["md"]["md Li3N free 900K"]["md"]["resumed_from_step"] is None  # never killed
    status = cli("remote", "status", str(spec), cwd=tmp)
    assert status.stdout.count("COMPLETED") == 8
    resubmit = cli("remote", "submit", str(spec), cwd=tmp)
    assert "submitted 0 new job(s)" in resubmit.stdout
    assert len(_jobs(database.uri, "jfr-a")) == 8

    # (c) the same campaign through FireWorks (`ionflow run`, embedded database, same seed)
    (tmp / "fw").mkdir()
    fw_spec = write_spec(tmp / "fw", "jfr-a", production_ps=6.0)
    fw_data = tmp / "fw" / "ionflow-data"
    env = login_environment(remote["ssh"])
    try:
        fw = cli("run", str(fw_spec), "--data-dir", str(fw_data), cwd=tmp / "fw", env=env)
        assert "Li3N" in fw.stdout
        from ionflow.store import DatabaseSettings, resolve_database

        fdb = resolve_database(DatabaseSettings(data_dir=fw_data))
        with fdb.client() as c:
            fw_summary = c[fdb.database]["summaries"].find_one({"campaign": "jfr-a"})
            fw_relax = c[fdb.database]["outputs"].find_one({"name": "relax Li3N"})["output"]
            fw_md = c[fdb.database]["outputs"].find_one({"name": "md Li3N free 900K"})["output"]
    finally:
        from ionflow.store import LocalServer

        server = LocalServer.running(fw_data)
        if server is not None:
            server.stop()
    with _client(database.uri) as c:
        jfr_relax = c["ionflow"]["outputs"].find_one({"name": "relax Li3N"})["output"]
        jfr_md = c["ionflow"]["outputs"].find_one({"name": "md Li3N free 900K"})["output"]
    # both MD outputs say they ran in the same numerical environment (same CPU, the same
    # BLAS kernel and threads, the same steering variables: OMP_NUM_THREADS=1 only)
    for key in ("cpu", "env", "blas", "numpy"):
        assert jfr_md["numerics"][key] == fw_md["numerics"][key], key
    assert jfr_md["numerics"]["env"] == {"OMP_NUM_THREADS": "1"}, jfr_md["numerics"]
    assert jfr_relax["energy_ev"] == fw_relax["energy_ev"]  # to the last bit
    assert_same_summary(res["summary"], fw_summary)


def login_environment(ssh: list[str]) -> dict[str, str]:
    """The environment a job on the test cluster gets: a login over SSH (what ``sbatch``
    there exports) plus the profiles' ``export OMP_NUM_THREADS=1``, with this venv first on
    PATH. Numerical libraries read their settings from it: e.g. ``OPENBLAS_CORETYPE`` (set
    in some shells, never passed by sshd) makes OpenBLAS pick other kernels, and the last
    bits of a relaxation already differ (-1.8863312926660714 vs ...718 eV)."""
    proc = subprocess.run([*ssh, "env -0"], capture_output=True, timeout=30, check=True)
    env = dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
    env = {k: v for k, v in env.items() if not k.startswith("SSH_")}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


#: Summary fields that are not results: where and when it ran, how long it took, ids.
NOT_RESULTS = {"_id", "analysis_uuid", "core_hours", "created_at", "updated_at", "summary_key",
               "mechanism_notes", "density_file", "decisions", "job_uuid", "uuid"}  # fmt: skip


def _leaves(x, path: str = "") -> dict[str, object]:
    """Every number, bool and short word of a summary document by its path."""
    out: dict[str, object] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in NOT_RESULTS:
                out.update(_leaves(v, f"{path}.{k}"))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.update(_leaves(v, f"{path}[{i}]"))
    elif x is None or isinstance(x, bool | int | float | str):
        out[path] = x
    return out


def assert_same_summary(jfr: dict, fw: dict) -> None:
    """The same summary to the last bit: every D, error, σ, Ea, H_R, jump rate, regime and
    verdict (not run times, ids or file names). Both paths run the same jobs from the same
    inputs in the same numerical environment; MD is chaotic, so one differing bit anywhere
    (a BLAS kernel, a lost digit in a serialised structure) would show in every D."""
    a, b = _leaves(jfr), _leaves(fw)
    print("jobflow-remote:", json.dumps({k: a[k] for k in sorted(a) if "diffusivity" in k}))
    numbers = [k for k, v in a.items() if isinstance(v, float)]
    assert len(numbers) > 30 and any(k.endswith(".diffusivity_cm2_s") for k in numbers), a
    assert ".free.ea_ev" in a or ".free.arrhenius_note" in a, sorted(a)
    diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert not diff, diff


# ----------------------------------------------------------------------------- (b)


def test_scancel_mid_md_recovered(remote, database):
    tmp, work = remote["tmp"], remote["work"]
    production_ps = 8.0  # 4000 toy steps, checkpoints every 100
    spec = write_spec(
        tmp, "jfr-b", production_ps=production_ps,
        extra=f"execution: {{mode: jobflow-remote, project: {remote['project']}}}",
    )  # fmt: skip
    runner = _start_runner(spec, tmp, tmp / "runner-b.log")
    try:
        wait_for(
            lambda: 300 <= _step(_md_dir(work, "jfr-b", "free_900K")) < 3500,
            300,
            "the MD's first checkpoints",
        )
        md = _jobs(database.uri, "jfr-b")["md Li3N free 900K"]
        slurm_id = str(md["remote"]["process_id"])
        subprocess.run(["scancel", slurm_id], check=True, timeout=30)
        wait_for(lambda: slurm_id not in _squeue(), 60, f"Slurm job {slurm_id} to end")
        step_at_cancel = _step(_md_dir(work, "jfr-b", "free_900K"))
        runner.wait(600)  # the runner ends once nothing can run: the MD is lost
    finally:
        if runner.poll() is None:
            _stop_runner(runner)
    log = (tmp / "runner-b.log").read_text()
    assert "campaign done:" in log and "1 fizzled" in log, log[-2000:]
    assert _jobs(database.uri, "jfr-b")["md Li3N free 900K"]["state"] == "FAILED"

    status = cli("remote", "status", str(spec), cwd=tmp)
    assert "lost: Li3N / job" in status.stdout and "md Li3N free 900K" in status.stdout
    plain = cli("status", str(spec), cwd=tmp)  # `ionflow status` follows execution.mode
    assert "lost: Li3N / job" in plain.stdout and "md Li3N free 900K" in plain.stdout, plain.stdout
    dry = cli("remote", "recover", str(spec), "--dry-run", cwd=tmp)
    assert "dry run: would rerun: Li3N" in dry.stdout, dry.stdout
    assert _jobs(database.uri, "jfr-b")["md Li3N free 900K"]["state"] == "FAILED"
    rec = cli("remote", "recover", str(spec), cwd=tmp)
    assert "rerun: Li3N / job" in rec.stdout, rec.stdout
    assert _jobs(database.uri, "jfr-b")["md Li3N free 900K"]["state"] == "READY"
    assert "no lost runs" in cli("remote", "recover", str(spec), cwd=tmp).stdout

    run = cli("run", str(spec), cwd=tmp, timeout=900)  # `ionflow run` follows execution.mode
    assert "Li3N" in run.stdout and "failed" not in run.stdout, run.stdout + run.stderr
    res = check_outputs(database.uri, "jfr-b", production_ps)
    md = res["md"]["md Li3N free 900K"]["md"]
    assert md["resumed_from_step"] is not None and 0 < md["resumed_from_step"] <= step_at_cancel
    assert md["steps_done"] == 50 + 4000
    assert res["md"]["md Li3N free 1300K"]["md"]["resumed_from_step"] is None
    assert "submitted 0 new job(s)" in cli("remote", "submit", str(spec), cwd=tmp).stdout
    assert len(_jobs(database.uri, "jfr-b")) == 8

    # a temperature added: the material is extended by its 4 new jobs; nothing reruns
    before = {n: d["db_id"] for n, d in _jobs(database.uri, "jfr-b").items()}
    spec = write_spec(
        tmp, "jfr-b", production_ps=production_ps, temperatures=(900, 1100, 1300),
        extra=f"execution: {{mode: jobflow-remote, project: {remote['project']}}}",
    )  # fmt: skip
    ext = cli("remote", "submit", str(spec), cwd=tmp)
    assert "submitted 4 new job(s) (0 new material(s), 1 extended); reused 6 job(s)" in (
        ext.stdout
    ), ext.stdout
    # run by jobflow-remote's own runner daemon (`jf runner start`), not by ionflow: the
    # outputs arrive, the trajectories and the new summary wait for `ionflow remote sync`
    jf = [str(REMOTE_VENV / "bin" / "jf"), "-p", remote["project"], "runner"]
    jf_env = {**os.environ, "PATH": f"{REMOTE_VENV / 'bin'}:{os.environ['PATH']}"}  # supervisord
    started = subprocess.run(
        [*jf, "start", "-s"], timeout=120, capture_output=True, text=True, env=jf_env
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        wait_for(
            lambda: {d["state"] for d in _jobs(database.uri, "jfr-b").values()} == {"COMPLETED"},
            600,
            "jobflow-remote's runner daemon to finish the 4 new jobs",
        )
    finally:
        subprocess.run([*jf, "shutdown"], timeout=300, capture_output=True, env=jf_env)
    st = cli("remote", "status", str(spec), cwd=tmp)
    assert "not synced: 4 completed job(s)" in st.stdout, st.stdout
    assert "not synced: 4 completed job(s)" in cli("status", str(spec), cwd=tmp).stdout
    with _client(database.uri) as c:
        summary = c["ionflow"]["summaries"].find_one({"campaign": "jfr-b", "material": "Li3N"})
        assert [r["temperature_k"] for r in summary["free"]["runs"]] == [900, 1300]
    sync = cli("remote", "sync", str(spec), cwd=tmp)
    assert "synced 4 completed job(s)" in sync.stdout and "nothing left" in sync.stdout, sync.stdout
    assert "into GridFS bucket trajectories" in sync.stdout  # the 1100 K trajectory
    assert "synced 0 completed job(s)" in cli("remote", "sync", str(spec), cwd=tmp).stdout
    assert "not synced" not in cli("remote", "status", str(spec), cwd=tmp).stdout
    with _client(database.uri) as c:
        db = c["ionflow"]
        jobs = list(db["jfr_jobs"].find({"job.metadata.ionflow_campaign": "jfr-b"}))
        assert len(jobs) == 12 and {d["state"] for d in jobs} == {"COMPLETED"}
        names = Counter(d["job"]["name"] for d in jobs)
        assert names["arrhenius Li3N free"] == 2 and names["md Li3N free 900K"] == 1, names
        ids = {d["db_id"] for d in jobs}
        assert set(before.values()) <= ids  # the first 8 jobs are still the same documents
        per_uuid = Counter(d["uuid"] for d in db["outputs"].find({}, {"uuid": 1}))
        assert all(per_uuid[d["uuid"]] == 1 for d in jobs), per_uuid
        summary = db["summaries"].find_one({"campaign": "jfr-b", "material": "Li3N"})
        temps = [r["temperature_k"] for r in summary["free"]["runs"]]
        assert temps == [900, 1100, 1300], temps
        assert db["trajectories.files"].count_documents({"metadata.campaign": "jfr-b"}) == 3
    assert "submitted 0 new job(s)" in cli("remote", "submit", str(spec), cwd=tmp).stdout


# ----------------------------------------------------------------------------- (e)


def test_walltime_kill_resumes_from_the_sigterm_checkpoint(remote, database, slurm, tmp_path):  # noqa: F811
    """An MD longer than its Slurm walltime (1 min): Slurm's time limit ends the job
    (JobState=TIMEOUT), the MD writes a checkpoint on the SIGTERM, the job shows as lost,
    `ionflow recover` reruns it, and it resumes from exactly that step, as often as needed,
    until the MD completes with every frame once."""
    profiles = tmp_path / "profiles-walltime"
    shutil.copytree(PROFILES, profiles)
    qad = profiles / "md" / "my_qadapter.yaml"
    text = qad.read_text()
    assert 'walltime: "00:30:00"' in text
    qad.write_text(text.replace('walltime: "00:30:00"', 'walltime: "00:01:00"'))
    project, work = "ionflow-walltime", tmp_path / "cluster-walltime"
    cli(
        "remote", "init", "--profile", str(profiles), "--host",
        f"{getpass.getuser()}@127.0.0.1:{remote['sshd']['port']}", "--key", str(remote["sshd"]["key"]),
        "--work-dir", str(work), "--python-env", str(REMOTE_VENV), "--project", project,
        "--poll", "1", cwd=tmp_path,
    )  # fmt: skip
    # 500 atoms (5x5x5 Li3N), ~100 s of toy MD here: longer than one walltime
    spec = tmp_path / "walltime.yaml"
    spec.write_text(
        f"""campaign: jfr-w
mobile_species: Li
engine: {{relax: toy, md: toy}}
md:
  temperatures_k: [900]
  time_step_fs: 2.0
  equilibration_ps: 0.2
  production_ps: 70.0
  frame_interval_fs: 200
  supercell_min_length_a: 18.0
  pinned_control: auto
materials:
  - {{name: Li3N, structure: {EXAMPLES / "Li3N.cif"}}}
relax: {{fmax_ev_a: 0.1, max_steps: 50}}
execution: {{mode: jobflow-remote, project: {project}}}
"""
    )
    jobcomp = Path(slurm["state"]) / "log" / "jobcomp.txt"
    resumed_at = []
    for _attempt in range(5):
        run = cli("remote", "run", str(spec), cwd=tmp_path, timeout=900, check=False)
        md = _jobs(database.uri, "jfr-w")["md Li3N free 900K"]
        if md["state"] == "COMPLETED":
            break
        assert md["state"] == "FAILED" and "1 fizzled" in run.stdout, run.stdout + run.stderr
        slurm_id = str(md["remote"]["process_id"])
        line = next(ln for ln in jobcomp.read_text().splitlines() if f"JobId={slurm_id} " in ln)
        assert "JobState=TIMEOUT" in line, line  # the walltime, not a crash
        err = (Path(md["run_dir"]) / "queue.err").read_text()
        step = int(err.split("SIGTERM at step ")[1].split()[0])  # the checkpoint on SIGTERM
        resumed_at.append(step)
        status = cli("status", str(spec), "--backend", "jobflow-remote", cwd=tmp_path)
        assert "lost: Li3N / job" in status.stdout and "md Li3N free 900K" in status.stdout
        hpc = cli("hpc-status", str(spec), cwd=tmp_path)  # follows execution.mode
        assert "lost: Li3N / job" in hpc.stdout, hpc.stdout
        rec = cli("recover", str(spec), cwd=tmp_path)  # `ionflow recover` follows it too
        assert "rerun: Li3N / job" in rec.stdout, rec.stdout
    else:
        raise AssertionError(f"MD not completed after 5 walltimes (killed at {resumed_at})")
    assert resumed_at, "the MD finished within one walltime: make it longer"
    print(f"walltime kills at steps {resumed_at}")
    with _client(database.uri) as c:
        db = c["ionflow"]
        out = db["outputs"].find_one({"uuid": md["uuid"]})["output"]
        n_expected = 35000 // 100 + 1
        assert out["md"]["n_production_frames"] == n_expected
        assert out["md"]["steps_done"] == 100 + 35000
        assert out["md"]["resumed_from_step"] == resumed_at[-1]  # not the last 100-step one
        assert out["trajectory"]["n_frames"] == n_expected and out["trajectory"]["gridfs_id"]
        assert db["trajectories.files"].count_documents({"metadata.job_uuid": md["uuid"]}) == 1
    with np.load(out["trajectory"]["local_path"]) as npz:  # the stored trajectory
        pos = npz["positions"]
    assert len(pos) == n_expected  # every frame once: no configuration repeated
    assert np.all(np.abs(np.diff(pos, axis=0)).max(axis=(1, 2)) > 0)


# ----------------------------------------------------------------------------- (d)


def test_large_file_streamed_into_gridfs(sshd, database, tmp_path):
    """64 MiB through SFTP into GridFS: checksum kept, Python memory stays < 16 MiB (bounded by the window, not the file)."""
    import tracemalloc

    import gridfs
    import paramiko

    from ionflow.backends.jobflow_remote import _stream_to_gridfs

    size = 64 << 20
    path = tmp_path / "big.npz"
    sha = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            block = os.urandom(1 << 20)
            sha.update(block)
            fh.write(block)
    ref = {
        "local_path": str(path),
        "filename": "big.npz",
        "sha256": sha.hexdigest(),
        "size_bytes": size,
    }
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=sshd["port"], username=sshd["user"],
                   key_filename=str(sshd["key"]), look_for_keys=False, allow_agent=False)  # fmt: skip
    try:
        sftp = client.open_sftp()
        with _client(database.uri) as c:
            db = c["ionflow"]
            tracemalloc.start()
            t0 = time.monotonic()
            fid = _stream_to_gridfs(sftp, ref, db, "trajectories", {"job_uuid": "big-test"})
            seconds = time.monotonic() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out = hashlib.sha256(
                gridfs.GridFSBucket(db, "trajectories").open_download_stream(fid).read()
            )
            assert out.hexdigest() == ref["sha256"]
            # a wrong checksum is refused and leaves no file
            bad = {**ref, "sha256": "0" * 64}
            with pytest.raises(Exception, match="checksum"):
                _stream_to_gridfs(sftp, bad, db, "trajectories", {"job_uuid": "big-bad"})
            assert db["trajectories.files"].count_documents({"metadata.job_uuid": "big-bad"}) == 0
    finally:
        client.close()
    print(f"64 MiB over SFTP into GridFS: {seconds:.1f} s, Python peak {peak / 2**20:.1f} MiB")
    assert peak < 16 << 20


# ----------------------------------------------------------------------------- errors


def _ionflow(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [IONFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_init_bad_input_is_one_line_exit_2(tmp_path):
    env = {"JFREMOTE_PROJECTS_FOLDER": str(tmp_path / "projects")}
    uri = ("--uri", "mongodb://127.0.0.1:9/")
    prof = tmp_path / "profiles"
    shutil.copytree(PROFILES, prof)
    qad = prof / "md" / "my_qadapter.yaml"
    qad.write_text(qad.read_text() + "bogus_resource: 3\n")
    cases = [
        (["--profile", str(prof), "--host", "me@h", "--work-dir", "/w"], f"{qad}: bogus_resource"),
        (["--profile", str(PROFILES), "--host", "me@h", "--work-dir", "rel/dir"], "--work-dir"),
        (["--profile", str(PROFILES), "--host", "me@h:port", "--work-dir", "/w"], "--host"),
        (["--profile", str(tmp_path), "--host", "me@h", "--work-dir", "/w"], "no profile for"),
    ]
    for args, needle in cases:
        r = _ionflow("remote", "init", *args, *uri, cwd=tmp_path, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "projects").exists() or not list((tmp_path / "projects").iterdir())


def test_ssh_unreachable_and_database_down_exit_3(tmp_path, remote_venv, database):
    env = {"JFREMOTE_PROJECTS_FOLDER": str(tmp_path / "projects"), "IONFLOW_DB_URI": database.uri}
    closed = _free_port()
    init = _ionflow(
        "remote", "init", "--profile", str(PROFILES), "--host", f"nobody@127.0.0.1:{closed}",
        "--work-dir", str(tmp_path / "cluster"), "--project", "unreachable", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    spec = write_spec(
        tmp_path, "jfr-err", production_ps=0.4,
        extra="execution: {mode: jobflow-remote, project: unreachable}",
    )  # fmt: skip
    r = _ionflow("remote", "run", str(spec), cwd=tmp_path, env=env)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"cannot reach nobody@127.0.0.1:{closed} over SSH" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    database.stop()
    r = _ionflow("remote", "status", str(spec), cwd=tmp_path, env=env)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, (r.stdout, r.stderr)
    assert "unreachable" in r.stderr or "database" in r.stderr, r.stderr
