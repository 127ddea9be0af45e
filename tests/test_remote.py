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

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from test_slurm import EXAMPLES, slurm, wait_for  # noqa: E402, F401 (the Slurm fixture)

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
    return {"projects": projects, "work": work, "project": project, "tmp": tmp_path}


def cli(*args: str, cwd: Path, timeout: float = 600, check: bool = True):
    proc = subprocess.run(
        [IONFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    proc.stdout, proc.stderr = " ".join(proc.stdout.split()), " ".join(proc.stderr.split())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ionflow {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def write_spec(directory: Path, campaign: str, *, production_ps: float, extra: str = "") -> Path:
    spec = directory / f"{campaign}.yaml"
    spec.write_text(
        f"""campaign: {campaign}
mobile_species: Li
engine: {{relax: toy, md: toy}}
md:
  temperatures_k: [900, 1300]
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
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-j", slurm_id, "-o", "State"], capture_output=True, text=True
    )
    run_dir = Path(md["run_dir"])
    out = json.loads((run_dir / "jfremote_out.json").read_text())
    assert out.get("response") and not out.get("error"), out  # finished without a database
    assert _step(_md_dir(work, "jfr-a", "free_900K")) > step_db_down
    print(f"MD finished with the database down (sacct: {acct.stdout.strip() or 'n/a'})")

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
