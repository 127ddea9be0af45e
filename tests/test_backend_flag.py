"""``--backend`` / ``--project`` on ``ionflow run``, ``submit``, ``status``, ``recover`` and
``hpc-status``: which backend each verb opens, with which project, and the one-line errors
when the options and the campaign file's ``execution.mode`` disagree.

Fast: no database, no Slurm, no jobflow-remote agent — ``open_backend``, ``run_campaign``,
``resolve_database`` and ``load_summaries`` are replaced by recording fakes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ionflow.backends.base import CampaignStatus, JobRecord, RecoveryReport, RunReport
from ionflow.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from test_slurm import write_spec as slurm_write_spec  # noqa: E402

MODES = {
    "none": "",
    "local": "execution: {mode: local}\n",
    "fireworks": "execution: {mode: fireworks}\n",
    "jfr": "execution: {mode: jobflow-remote, project: p1}\n",
    "jfr-noproject": "execution: {mode: jobflow-remote}\n",
}


def write_spec(directory: Path, mode: str = "none") -> Path:
    """The toy Li3N campaign of tests/test_slurm.py, with an ``execution`` block."""
    return slurm_write_spec(
        directory, f"flag-{mode}", production_ps=1.0, extra=MODES[mode], filename=f"{mode}.yaml"
    )


class FakeDB:
    description = "fake database"
    database = "ionflow"
    local_server = None


class FakeBackend:
    not_synced = 0  # completed jobs whose files are still on the cluster (jobflow-remote)

    def __init__(self, calls: list, name: str, options: dict):
        self.calls, self.name, self.options = calls, name, options

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def close(self):
        pass

    def status(self, campaign, **options):
        self.calls.append(("status", self.name, self.options, campaign, options))
        st = CampaignStatus(campaign)
        st.jobs = [JobRecord(id=7, name="md Li3N free 900K", state="COMPLETED", material="Li3N")]
        st.not_synced = self.not_synced
        st.fill_counts()
        return st

    def recover(self, campaign, **options):
        self.calls.append(("recover", self.name, self.options, campaign, options))
        return RecoveryReport(slurm_available=True, running_checked=3)

    def run(self, campaign, **options):
        self.calls.append(("run", self.name, self.options, campaign, options))
        return RunReport()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Recording fakes; returns the list of calls: ``(verb, backend, options, ...)``."""
    import ionflow.backends
    import ionflow.backends.base
    import ionflow.results
    import ionflow.store

    calls: list = []

    def open_backend(name, db, *, data_dir=None, **options):
        assert isinstance(db, FakeDB)
        calls.append(("open", name, options))
        return FakeBackend(calls, name, options)

    def run_campaign(spec_path, **kw):
        from ionflow.spec import load_campaign

        calls.append(
            (
                "run_campaign",
                kw["backend"],
                kw.get("backend_options") or {},
                kw.get("submit_only", False),
            )
        )
        spec, _ = load_campaign(spec_path)
        result = {
            "added": [], "extended": [], "reused": [], "jobs_added": 0, "jobs_reused": 0,
            "details": {}, "dropped": [], "recovered": {}, "spec": spec, "database": FakeDB(),
        }  # fmt: skip
        if not kw.get("submit_only", False):
            result["states"] = {"Li3N": {"COMPLETED": 8}}
            result["failures"] = []
        return result

    monkeypatch.setattr(ionflow.backends, "open_backend", open_backend)
    monkeypatch.setattr(ionflow.backends.base, "run_campaign", run_campaign)
    monkeypatch.setattr(ionflow.store, "resolve_database", lambda settings: FakeDB())
    monkeypatch.setattr(ionflow.results, "load_summaries", lambda db, campaign: [])
    for var in ("JFREMOTE_PROJECT", "IONFLOW_DB_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return calls


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def opened(calls) -> list[tuple[str, dict]]:
    """(backend, options) of every backend opened or campaign run."""
    return [(c[1], c[2]) for c in calls if c[0] in ("open", "run_campaign")]


def one_error(code, err, *fragments) -> str:
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert code == 2, (code, err)
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- no flag


@pytest.mark.parametrize(
    "verb, mode, expected",
    [
        ("run", "none", ("fireworks-local", {})),
        ("run", "fireworks", ("fireworks-local", {})),
        ("run", "jfr", ("jobflow-remote", {"project": "p1"})),
        ("submit", "none", ("fireworks-slurm", {})),
        ("submit", "local", ("fireworks-slurm", {})),
        ("submit", "jfr", ("jobflow-remote", {"project": "p1"})),
        ("status", "none", ("fireworks-local", {})),
        ("status", "jfr", ("jobflow-remote", {"project": "p1"})),
        ("status", "jfr-noproject", ("jobflow-remote", {"project": "ionflow"})),
        ("recover", "none", ("fireworks-slurm", {})),
        ("recover", "jfr", ("jobflow-remote", {"project": "p1"})),
        ("hpc-status", "none", ("fireworks-slurm", {})),
        ("hpc-status", "jfr", ("jobflow-remote", {"project": "p1"})),
    ],
)
def test_no_flag_follows_the_campaign_file(fake, capsys, tmp_path, verb, mode, expected):
    code, out, err = cli([verb, write_spec(tmp_path, mode)], capsys)
    assert code == 0, out + err
    assert opened(fake) == [expected]


@pytest.mark.parametrize("verb", ["run", "submit", "status", "recover", "hpc-status"])
def test_file_or_flag_the_same(fake, capsys, tmp_path, verb):
    """A jobflow-remote campaign shows the same whether its file's execution.mode or
    --backend selects the backend: `ionflow status` its own table (titled jobflow-remote,
    ids not called fw), `ionflow run` its summary lines, `ionflow submit` no LaunchPad."""
    spec = write_spec(tmp_path, "jfr")
    code, by_file, err = cli([verb, spec], capsys)
    assert code == 0, err
    code, by_flag, err = cli([verb, spec, "--backend", "jobflow-remote"], capsys)
    assert code == 0, err
    assert by_file == by_flag
    assert opened(fake)[0] == opened(fake)[1] == ("jobflow-remote", {"project": "p1"})
    if verb == "status":
        assert "last submit" in by_file and "(jobflow-remote)" in by_file, by_file
        assert "fw_id" not in by_file, by_file
    if verb == "submit":
        assert "LaunchPad" not in by_file and "ionflow launch" not in by_file, by_file


@pytest.mark.parametrize("argv", [["status"], ["remote", "status"], ["hpc-status"]])
def test_status_says_what_is_not_synced(fake, capsys, tmp_path, monkeypatch, argv):
    spec = write_spec(tmp_path, "jfr")
    code, out, err = cli([*argv, spec], capsys)
    assert code == 0 and "not synced" not in out, out + err
    monkeypatch.setattr(FakeBackend, "not_synced", 3)
    code, out, err = cli([*argv, spec], capsys)
    assert code == 0, err
    assert "not synced: 3 completed job(s)" in out and "`ionflow remote sync`" in out, out


def test_recover_without_a_campaign_file_is_fireworks(fake, capsys):
    code, out, err = cli(["recover", "--dry-run"], capsys)
    assert code == 0, out + err
    assert opened(fake) == [("fireworks-slurm", {})]
    assert fake[-1][3] is None  # every campaign


# ----------------------------------------------------------------------------- --backend


@pytest.mark.parametrize(
    "verb, backend, expected",
    [
        ("run", "fireworks-local", "fireworks-local"),
        ("submit", "fireworks-slurm", "fireworks-slurm"),
        ("status", "fireworks-local", "fireworks-local"),
        ("status", "fireworks-slurm", "fireworks-slurm"),
        # recover / hpc-status: both FireWorks backends share the LaunchPad (Slurm's view)
        ("recover", "fireworks-local", "fireworks-slurm"),
        ("recover", "fireworks-slurm", "fireworks-slurm"),
        ("hpc-status", "fireworks-local", "fireworks-slurm"),
        ("hpc-status", "fireworks-slurm", "fireworks-slurm"),
    ],
)
@pytest.mark.parametrize("mode", ["none", "local", "fireworks"])
def test_fireworks_backend(fake, capsys, tmp_path, verb, backend, expected, mode):
    code, out, err = cli([verb, write_spec(tmp_path, mode), "--backend", backend], capsys)
    assert code == 0, out + err
    assert opened(fake) == [(expected, {})]


@pytest.mark.parametrize("verb", ["run", "submit", "status", "recover", "hpc-status"])
@pytest.mark.parametrize(
    "mode, project_args, project",
    [
        ("none", [], "ionflow"),
        ("none", ["--project", "p2"], "p2"),
        ("jfr", [], "p1"),
        ("jfr", ["--project", "p2"], "p2"),
    ],
)
def test_jobflow_remote_backend(fake, capsys, tmp_path, verb, mode, project_args, project):
    spec = write_spec(tmp_path, mode)
    code, out, err = cli([verb, spec, "--backend", "jobflow-remote", *project_args], capsys)
    assert code == 0, out + err
    assert opened(fake) == [("jobflow-remote", {"project": project})]
    if verb == "run":  # submit + run to completion, through the runner
        assert fake[0][3] is False
    elif verb == "submit":  # = `ionflow remote submit`
        assert fake[0][3] is True
        assert "ionflow launch" not in out, out
    elif verb in ("status", "hpc-status"):
        assert "(jobflow-remote)" in out and "md Li3N free 900K" in out, out
        assert fake[-1][0] == "status"
    else:  # = `ionflow remote recover`
        assert "no lost runs (3 job(s) still in the runner's hands)" in out, out
        assert fake[-1][0] == "recover" and fake[-1][4]["dry_run"] is False


@pytest.mark.parametrize("verb", ["submit", "recover", "hpc-status"])
def test_the_same_output_as_ionflow_remote(fake, capsys, tmp_path, verb):
    spec = write_spec(tmp_path, "jfr")
    remote_verb = {"hpc-status": "status"}.get(verb, verb)
    code, remote_out, err = cli(["remote", remote_verb, spec], capsys)
    assert code == 0, err
    code, out, err = cli([verb, spec, "--backend", "jobflow-remote"], capsys)
    assert code == 0, err
    assert out == remote_out
    assert opened(fake)[0] == opened(fake)[1]


def test_project_from_the_environment_is_a_fallback(fake, capsys, tmp_path, monkeypatch):
    """$JFREMOTE_PROJECT neither beats the file's project nor makes a FireWorks campaign
    an error; typed on the command line, --project wins."""
    monkeypatch.setenv("JFREMOTE_PROJECT", "from-env")
    assert cli(["status", write_spec(tmp_path, "none")], capsys)[0] == 0
    assert cli(["status", write_spec(tmp_path, "jfr")], capsys)[0] == 0
    assert cli(["status", write_spec(tmp_path, "jfr-noproject")], capsys)[0] == 0
    assert cli(["status", write_spec(tmp_path, "jfr"), "--project", "typed"], capsys)[0] == 0
    assert opened(fake) == [
        ("fireworks-local", {}),
        ("jobflow-remote", {"project": "p1"}),
        ("jobflow-remote", {"project": "from-env"}),
        ("jobflow-remote", {"project": "typed"}),
    ]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("verb", ["run", "submit", "status", "recover", "hpc-status"])
def test_fireworks_backend_on_a_jobflow_remote_campaign(fake, capsys, tmp_path, verb):
    backend = "fireworks-local" if verb == "run" else "fireworks-slurm"
    spec = write_spec(tmp_path, "jfr")
    code, _, err = cli([verb, spec, "--backend", backend], capsys)
    one_error(code, err, "jfr.yaml", "execution.mode", "'jobflow-remote'", f"--backend {backend}")
    assert fake == []


@pytest.mark.parametrize("verb", ["run", "submit", "status", "recover", "hpc-status"])
@pytest.mark.parametrize("mode", ["local", "fireworks"])
def test_jobflow_remote_backend_on_a_fireworks_campaign(fake, capsys, tmp_path, verb, mode):
    spec = write_spec(tmp_path, mode)
    code, _, err = cli([verb, spec, "--backend", "jobflow-remote"], capsys)
    one_error(code, err, f"{mode}.yaml", "execution.mode", f"'{mode}'", "--backend jobflow-remote")
    assert fake == []


@pytest.mark.parametrize("verb", ["run", "submit", "status", "recover", "hpc-status"])
@pytest.mark.parametrize("flag", [False, True])
def test_project_needs_jobflow_remote(fake, capsys, tmp_path, verb, flag):
    backend = "fireworks-local" if verb == "run" else "fireworks-slurm"
    spec = write_spec(tmp_path, "none")
    argv = [verb, spec, *(["--backend", backend] if flag else []), "--project", "p2"]
    code, _, err = cli(argv, capsys)
    one_error(code, err, "--project", "jobflow-remote")
    assert fake == []


def test_run_refuses_fireworks_slurm(fake, capsys, tmp_path):
    code, _, err = cli(["run", write_spec(tmp_path), "--backend", "fireworks-slurm"], capsys)
    one_error(code, err, "ionflow launch --watch")
    assert fake == []


def test_submit_refuses_fireworks_local(fake, capsys, tmp_path):
    code, _, err = cli(["submit", write_spec(tmp_path), "--backend", "fireworks-local"], capsys)
    one_error(code, err, "`ionflow run` submits and runs")
    assert fake == []


def test_unknown_backend_is_a_usage_error(fake, capsys, tmp_path):
    code, _, err = cli(["status", write_spec(tmp_path), "--backend", "slurm"], capsys)
    one_error(code, err, "--backend", "jobflow-remote")
    assert fake == []


def test_expiration_secs_is_for_fireworks(fake, capsys, tmp_path):
    spec = write_spec(tmp_path, "jfr")
    for verb in ("recover", "hpc-status"):
        code, _, err = cli([verb, spec, "--expiration-secs", "60"], capsys)
        one_error(code, err, "--expiration-secs")
    assert fake == []


def test_jobflow_remote_recover_needs_the_campaign_file(fake, capsys):
    code, _, err = cli(["recover", "--backend", "jobflow-remote"], capsys)
    one_error(code, err, "campaign file")
    assert fake == []


def test_backend_choices_are_the_registered_backends():
    from typing import get_args

    from ionflow.backends import BACKENDS
    from ionflow.cli.hpc_cmds import BackendOpt

    literal = get_args(BackendOpt)[0]
    assert set(get_args(get_args(literal)[0])) == set(BACKENDS)
