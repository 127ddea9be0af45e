"""Unit tests of ionflow.hpc: profiles, secrets checks, queue launches and lost-run recovery.

Slurm is faked by small ``sbatch``/``squeue`` scripts on ``PATH``; the LaunchPad lives on a
real SecantusDB server (one per module). The real-Slurm tests are in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fireworks import Firework, FWAction, FWorker, ScriptTask, Workflow

from ionflow.errors import UserInputError
from ionflow.hpc import (
    JOBS_COLLECTION,
    SlurmSnapshot,
    campaign_overview,
    launch,
    launchpad_file_warning,
    load_profile,
    parse_walltime,
    recover,
    slurm_queue,
    spec_uri_warning,
)
from ionflow.store import DatabaseSettings, LocalServer, resolve_database

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnknownMarkWarning", "ignore::FutureWarning"
)


# ----------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        (45, 2700),
        ("10:30", 630),
        ("02:00:00", 7200),
        ("1-00", 86400),
        ("1-02:30", 95400),
        ("2-00:00:10", 172810),
        ("UNLIMITED", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_walltime(text, seconds):
    assert parse_walltime(text) == seconds


def test_parse_walltime_rejects_garbage():
    with pytest.raises(ValueError, match="Slurm time"):
        parse_walltime("2h")


@pytest.mark.parametrize(
    "root", [REPO / "slurm" / "profiles", REPO / "slurm" / "local" / "profiles"]
)
@pytest.mark.parametrize("name", ["relax", "md", "analysis"])
def test_shipped_profiles(root, name, tmp_path):
    prof = load_profile(name, root)
    assert prof.category == name
    assert prof.walltime_s is not None
    timeout = prof.rlaunch_timeout_s()
    assert 60 <= timeout < prof.walltime_s
    adapter = prof.adapter("/venv/bin/rlaunch", tmp_path / "lp.yaml", tmp_path / "fw w.yaml")
    script = adapter.get_script_str(str(tmp_path))
    assert f"--time={prof.qadapter['walltime']}" in script
    assert f"--timeout {timeout}" in script
    assert f"-l {tmp_path / 'lp.yaml'}" in script and f"-w '{tmp_path / 'fw w.yaml'}'" in script
    assert "--partition" not in script and "--account" not in script  # null -> line dropped
    assert "{" not in script.split("cd ", 1)[1].replace("${SLURM_CPUS_PER_TASK", "")


def test_md_profile_walltime_margin():
    prof = load_profile("md", REPO / "slurm" / "profiles")
    assert prof.walltime_s == 12 * 3600
    assert prof.rlaunch_timeout_s() == 11 * 3600  # stop_pulling_before_end: 1 h


def test_profile_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_profile("gpu", REPO / "slurm" / "profiles")
    bad = tmp_path / "x"
    bad.mkdir()
    (bad / "my_qadapter.yaml").write_text("_fw_q_type: SLURM\nwalltime: 2h\n")
    with pytest.raises(UserInputError, match="Slurm time"):
        load_profile("x", tmp_path)
    (bad / "my_qadapter.yaml").write_text("walltime: '1:00:00'\nionflow: {margin: 3}\n")
    with pytest.raises(UserInputError, match="unknown key"):
        load_profile("x", tmp_path)
    (bad / "my_qadapter.yaml").write_text("walltime: '1:00:00'\nrocket_launch: python run.py\n")
    with pytest.raises(UserInputError, match="rlaunch"):
        load_profile("x", tmp_path)
    (bad / "my_qadapter.yaml").write_text("walltime: null\n")
    prof = load_profile("x", tmp_path)
    assert prof.rlaunch_timeout_s() is None
    assert "--timeout" not in prof.rocket_launch("rlaunch", Path("a"), Path("b"))


def test_launchpad_file_warning(tmp_path):
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text(yaml.safe_dump({"host": "db.example.org", "username": "u", "password": "pw-XYZ"}))
    os.chmod(lp, 0o644)
    warning = launchpad_file_warning(lp)
    assert warning and "chmod 600" in warning and "pw-XYZ" not in warning
    os.chmod(lp, 0o600)
    assert launchpad_file_warning(lp) is None
    lp.write_text(yaml.safe_dump({"host": "mongodb://u:pw-XYZ@h/db", "uri_mode": True}))
    os.chmod(lp, 0o640)
    assert "its group" in launchpad_file_warning(lp)
    lp.write_text(yaml.safe_dump({"host": "localhost", "port": 27017}))  # no secret: fine
    assert launchpad_file_warning(lp) is None
    assert launchpad_file_warning(None) is None
    assert "db_uri_env" in spec_uri_warning("mongodb://u:pw@h/", "w.yaml")
    assert spec_uri_warning("mongodb://h/", "w.yaml") is None


def test_slurm_queue_parses_and_fails_safe(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda exe: f"/usr/bin/{exe}")

    def ok(cmd, **kw):
        assert cmd[:5] == ["/usr/bin/squeue", "-h", "-t", "all", "-o"]
        return subprocess.CompletedProcess(cmd, 0, "12|RUNNING\n13|PENDING\n 9|CANCELLED\n", "")

    snap = slurm_queue("alice", run=ok)
    assert snap == {"12": "RUNNING", "13": "PENDING", "9": "CANCELLED"}
    assert snap.taken_at <= time.time()
    failed = slurm_queue(run=lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "down"))
    assert failed is None


# ----------------------------------------------------------------------------- database


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalServer.ensure(tmp_path_factory.mktemp("hpcdb"))
    yield srv
    srv.stop()


_COUNTER = iter(range(10**6))


@pytest.fixture
def db(server):
    n = next(_COUNTER)
    settings = DatabaseSettings(
        data_dir=server.data_dir, database=f"hpc{n}", fireworks_database=f"hpc{n}_fw"
    )
    resolved = resolve_database(settings)
    lp = resolved.launchpad()
    lp.reset("", require_password=False)
    return resolved


def _add(lp, campaign: str, categories: list[str]) -> list[int]:
    fws = [
        Firework(
            ScriptTask.from_str("true"),
            name=f"job {i} {cat}",
            spec={"_category": cat, "ionflow_campaign": campaign, "ionflow_material": "M"},
        )
        for i, cat in enumerate(categories)
    ]
    mapping = lp.add_wf(Workflow(fws, name=campaign))
    return sorted(mapping.values())


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` numbering jobs from 100 and ``squeue`` printing a file the test writes."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    queue = tmp_path / "queue.txt"
    queue.write_text("")
    counter = tmp_path / "counter"
    counter.write_text("100")
    (bindir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(cat {counter}); echo $((n+1)) > {counter}\necho "Submitted batch job $n"\n'
    )
    (bindir / "squeue").write_text(f"#!/bin/sh\ncat {queue}\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return queue


def test_launch_submits_counts_and_records(db, tmp_path, fake_slurm):
    lp = db.launchpad()
    _add(lp, "camp", ["md", "md", "md", "analysis"])
    _add(lp, "other", ["md"])
    prof = load_profile("md", REPO / "slurm" / "local" / "profiles")
    rep = launch(db, prof, tmp_path / "data", campaign="camp", max_jobs=2)
    assert rep.ready == 3 and rep.submitted == ["100", "101"]
    recs = list(lp.db[JOBS_COLLECTION].find({}, {"_id": 0}))
    assert [r["job_id"] for r in recs] == ["100", "101"]
    assert all(r["profile"] == "md" and r["campaign"] == "camp" for r in recs)
    script = (Path(recs[0]["launcher_dir"]) / "FW_submit.script").read_text()
    wdir = tmp_path / "data" / "hpc" / "camp" / "md"
    assert f"-w {wdir / 'my_fworker.yaml'}" in script and "--timeout 1500" in script
    for name in ("my_launchpad.yaml", "jobstore.json", "my_fworker.yaml"):
        assert stat.S_IMODE((wdir / name).stat().st_mode) == 0o600
    fworker = FWorker.from_file(str(wdir / "my_fworker.yaml"))
    assert fworker.category == "md"
    assert fworker.query["spec.ionflow_campaign"] == "camp"
    assert fworker.env["ionflow_jobstore"] == str(wdir / "jobstore.json")

    # both pending: the limit is reached, nothing more
    fake_slurm.write_text("100|PENDING\n101|PENDING\n")
    rep = launch(db, prof, tmp_path / "data", campaign="camp", max_jobs=4)
    assert rep.submitted == ["102"]  # 3 READY - 2 pending = 1
    assert rep.pending_jobs == 2
    # both gone (their workers found nothing): records closed, new jobs go out
    fake_slurm.write_text("")
    rep = launch(db, prof, tmp_path / "data", campaign="camp", max_jobs=2)
    assert len(rep.submitted) == 2
    ended = lp.db[JOBS_COLLECTION].count_documents({"ended": {"$exists": True}})
    assert ended >= 2
    # dry run submits nothing
    fake_slurm.write_text("")
    dry = launch(db, prof, tmp_path / "data", campaign="camp", max_jobs=5, dry_run=True)
    assert dry.submitted == [] and dry.planned == 3


def _start(lp, fw_id: int, launch_dir: Path, category: str = "md"):
    """Check out ``fw_id`` as a worker would (RUNNING, with a launch in ``launch_dir``)."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    fw, launch_id = lp.checkout_fw(
        FWorker(name="w", category=category), str(launch_dir), fw_id=fw_id
    )
    assert fw is not None
    return launch_id


def _record(lp, job_id: str, launcher_dir: Path, campaign="camp"):
    lp.db[JOBS_COLLECTION].insert_one(
        {
            "job_id": job_id,
            "profile": "md",
            "campaign": campaign,
            "launcher_dir": str(launcher_dir),
            "submitted_ts": time.time() - 10,
        }
    )


def test_recover_uses_slurm_view(db, tmp_path):
    lp = db.launchpad()
    ids = _add(lp, "camp", ["md", "md", "md"])
    job_dir = tmp_path / "block" / "launcher_1"
    lid0 = _start(lp, ids[0], job_dir / "launcher_a")  # rapidfire: a subdirectory of the job
    _record(lp, "42", job_dir)
    _start(lp, ids[1], tmp_path / "elsewhere")  # not ionflow's job: only pings can tell

    running = recover(db, campaign="camp", queue_view=lambda: SlurmSnapshot({"42": "RUNNING"}))
    assert running.lost == [] and running.slurm_available
    blind = recover(db, campaign="camp", queue_view=lambda: None)
    assert blind.lost == [] and not blind.slurm_available
    dry = recover(db, campaign="camp", dry_run=True, queue_view=lambda: SlurmSnapshot({}))
    assert [r.fw_id for r in dry.lost] == [ids[0]]
    assert lp.get_fw_by_id(ids[0]).state == "RUNNING"

    ov = campaign_overview(db, "camp", queue=SlurmSnapshot({"42": "CANCELLED"}))
    assert ov["materials"]["M"]["lost"] == 1 and ov["materials"]["M"]["running"] == 2
    assert ov["materials"]["M"]["queued"] == 1

    rep = recover(db, campaign="camp", queue_view=lambda: SlurmSnapshot({"42": "CANCELLED"}))
    assert [r.fw_id for r in rep.lost] == [ids[0]] and rep.rerun == [ids[0]]
    assert "Slurm job 42 ended (CANCELLED)" in rep.lost[0].reason
    assert lp.get_fw_by_id(ids[0]).state == "READY"
    old = lp.launches.find_one({"launch_id": lid0})
    assert old["state"] == "FIZZLED"
    assert "CANCELLED" in old["action"]["stored_data"]["ionflow_lost_run"]
    assert lp.get_fw_by_id(ids[1]).state == "RUNNING"  # untouched
    # the rerun firework runs again under a new job: not lost while that job runs
    lid_new = _start(lp, ids[0], tmp_path / "block" / "launcher_2")
    _record(lp, "43", tmp_path / "block" / "launcher_2")
    assert lid_new != lid0
    assert (
        recover(db, campaign="camp", queue_view=lambda: SlurmSnapshot({"43": "RUNNING"})).lost == []
    )

    # FireWorks' ping view: the job without a Slurm record, after its ping expired
    time.sleep(1.1)
    pinged = recover(
        db,
        campaign="camp",
        expiration_secs=1,
        queue_view=lambda: SlurmSnapshot({"43": "RUNNING"}),
    )
    assert ids[1] in pinged.rerun and "no ping" in pinged.lost[-1].reason
    assert ids[0] not in pinged.rerun  # its Slurm job runs: Slurm's view wins over pings


def test_recover_skips_a_firework_that_completes_meanwhile(db, tmp_path):
    lp = db.launchpad()
    ids = _add(lp, "camp", ["md"])
    lid = _start(lp, ids[0], tmp_path / "job" / "launcher_a")
    _record(lp, "7", tmp_path / "job")

    def queue_view():  # the worker finishes between the first read and the snapshot
        lp.complete_launch(lid, FWAction(), state="COMPLETED")
        return SlurmSnapshot({})

    rep = recover(db, campaign="camp", queue_view=queue_view)
    assert rep.lost == [] and lp.get_fw_by_id(ids[0]).state == "COMPLETED"


def test_recover_other_campaign_untouched(db, tmp_path):
    lp = db.launchpad()
    ids = _add(lp, "other", ["md"])
    _start(lp, ids[0], tmp_path / "job" / "launcher_a")
    _record(lp, "8", tmp_path / "job", campaign="other")
    assert recover(db, campaign="camp", queue_view=lambda: SlurmSnapshot({})).lost == []
    assert len(recover(db, campaign=None, queue_view=lambda: SlurmSnapshot({})).lost) == 1


def test_worker_files_hold_no_secret_outside_private_files(db, tmp_path, fake_slurm):
    """The queue script, fworker file and job records name paths only."""
    lp = db.launchpad()
    _add(lp, "camp", ["relax"])
    prof = load_profile("relax", REPO / "slurm" / "local" / "profiles")
    rep = launch(db, prof, tmp_path / "data", campaign="camp")
    assert rep.submitted
    port = str(db.local_server.port)  # stand-in for a secret: the connection string
    rec = lp.db[JOBS_COLLECTION].find_one({"job_id": rep.submitted[0]})
    assert port not in json.dumps(rec, default=str)
    script = (Path(rec["launcher_dir"]) / "FW_submit.script").read_text()
    assert db.uri not in script and port not in script
    fw_file = (rep.worker_dir / "my_fworker.yaml").read_text()
    assert port not in fw_file
    assert port in (rep.worker_dir / "my_launchpad.yaml").read_text()


# ----------------------------------------------------------------------------- submit


def _planned(tmp_path, temps="600, 900"):
    from ionflow.campaign import plan_campaign
    from ionflow.spec import load_campaign

    spec_file = tmp_path / "workflows.yaml"
    spec_file.write_text(
        f"""campaign: fast-submit
mobile_species: Li
engine: {{relax: toy, md: toy}}
md:
  temperatures_k: [{temps}]
  time_step_fs: 2.0
  equilibration_ps: 0.1
  production_ps: 0.4
  frame_interval_fs: 10
  supercell_min_length_a: 7.0
  pinned_control: auto
materials:
  - {{name: Li6PS5Cl, structure: {REPO / "examples" / "Li6PS5Cl.cif"}, md: {{supercell_min_length_a: 9.0}}}}
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}}}
"""
    )
    spec, materials = load_campaign(spec_file)
    return spec, plan_campaign(spec, materials, tmp_path / "runs")


def test_workflow_documents_match_fireworks(tmp_path):
    """fw_submit.workflow_documents == fw_tasks.flow_to_workflow + bulk_add_wfs, job by job."""
    from ionflow.backends.fw_submit import workflow_documents
    from ionflow.backends.fw_tasks import flow_to_workflow

    _, planned = _planned(tmp_path)
    assert {p.material.name: p.n_jobs for p in planned} == {"Li6PS5Cl": 13, "Li3N": 8}
    for p in planned:
        meta = {"ionflow_campaign": "c", "ionflow_material": p.material.name, "x": (1, 2)}
        wf = flow_to_workflow(p.flow, metadata=meta)
        for fw_id in wf.root_fw_ids:  # what bulk_add_wfs does
            wf.id_fw[fw_id].state = "READY"
            wf.fw_states[fw_id] = "READY"
        ref = {fw.tasks[0]["job"].uuid: fw.to_db_dict() for fw in wf}
        ref_uuid = {fw.fw_id: fw.tasks[0]["job"].uuid for fw in wf}
        wf_doc, docs = workflow_documents(p.flow, meta, 1000)
        uuid = {d["fw_id"]: d["spec"]["_tasks"][0]["job"]["uuid"] for d in docs}
        assert sorted(uuid) == list(range(1000, 1000 + len(docs)))
        for doc in docs:
            a, b = dict(ref[uuid[doc["fw_id"]]]), dict(doc)
            for key in ("fw_id", "created_on", "updated_on"):
                a.pop(key), b.pop(key)
            assert a == b
        ref_wf = wf.to_db_dict()

        def by_uuid(links, names):
            return {names[int(k)]: sorted(names[c] for c in v) for k, v in links.items()}

        assert by_uuid(ref_wf["links"], ref_uuid) == by_uuid(wf_doc["links"], uuid)
        assert by_uuid(ref_wf["parent_links"], ref_uuid) == by_uuid(wf_doc["parent_links"], uuid)
        assert {ref_uuid[int(k)]: s for k, s in ref_wf["fw_states"].items()} == {
            uuid[int(k)]: s for k, s in wf_doc["fw_states"].items()
        }
        for key in ("metadata", "name", "state"):
            assert ref_wf[key] == wf_doc[key], key
        assert len(ref_wf["nodes"]) == len(wf_doc["nodes"]) == len(docs)
        # topological: every parent has a smaller id
        for parent, children in wf_doc["links"].items():
            assert all(int(parent) < c for c in children)


def test_fast_submit_is_a_valid_idempotent_launchpad(db, tmp_path, monkeypatch):
    from ionflow.backends import fw_submit

    spec, planned = _planned(tmp_path)
    monkeypatch.setattr(fw_submit, "_SUBMIT_CHUNK", 1)  # exercise the chunked writer
    lp = db.launchpad()
    lp.add_wf(Firework(ScriptTask.from_str("true"), name="before"))  # ids already in use
    result = fw_submit.submit(lp, planned, spec.campaign)
    assert result["added"] == ["Li6PS5Cl", "Li3N"] and result["reused"] == []
    assert result["extended"] == [] and result["jobs_reused"] == 0
    n = sum(p.n_jobs for p in planned)
    ids = sorted(d["fw_id"] for d in lp.fireworks.find({"spec.ionflow_campaign": spec.campaign}))
    assert ids == list(range(2, 2 + n))
    assert lp.fireworks.count_documents({"state": "READY", "spec._category": "relax"}) == 2
    for p in planned:  # FireWorks loads each workflow and finds its roots and leaves
        wf_doc = lp.workflows.find_one({"metadata.ionflow_material": p.material.name})
        wf = lp.get_wf_by_fw_id(wf_doc["nodes"][0])
        assert len(wf.id_fw) == p.n_jobs and wf.state == "READY"
        assert [wf.id_fw[i].name for i in wf.root_fw_ids] == [f"relax {p.material.name}"]
    mapping = lp.add_wf(Firework(ScriptTask.from_str("true"), name="after"))
    assert list(mapping.values()) == [2 + n]  # the id counter moved past the campaign
    again = fw_submit.submit(lp, planned, spec.campaign)
    assert again["added"] == [] and again["extended"] == []
    assert again["reused"] == ["Li6PS5Cl", "Li3N"]
    assert again["jobs_added"] == 0 and again["jobs_reused"] == n
    assert lp.fireworks.count_documents({"spec.ionflow_campaign": spec.campaign}) == n


def _fw_by_name(lp, campaign):
    return {
        d["name"]: d
        for d in lp.fireworks.find({"spec.ionflow_campaign": campaign}, {"_id": 0, "launches": 0})
    }


def test_added_temperature_appends_only_new_runs(db, tmp_path):
    """[600, 900] → [600, 900, 1200]: new MD/analysis at 1200 K + new fits and summary,
    wired to the existing supercell and analyses; nothing else is added."""
    from ionflow.backends import fw_submit

    spec, planned = _planned(tmp_path)
    lp = db.launchpad()
    fw_submit.submit(lp, planned, spec.campaign)
    before = _fw_by_name(lp, spec.campaign)
    # the supercell of Li6PS5Cl has run: its new children must be READY, the others WAITING
    sc_id = before["supercell Li6PS5Cl"]["fw_id"]
    wf = lp.get_wf_by_fw_id(sc_id)
    for fw_id in (before["relax Li6PS5Cl"]["fw_id"], sc_id):
        wf.id_fw[fw_id].state = "COMPLETED"
    lp.fireworks.update_many(
        {"fw_id": {"$in": [before["relax Li6PS5Cl"]["fw_id"], sc_id]}},
        {"$set": {"state": "COMPLETED"}},
    )
    lp.workflows.update_one(
        {"nodes": sc_id},
        {
            "$set": {
                f"fw_states.{before['relax Li6PS5Cl']['fw_id']}": "COMPLETED",
                f"fw_states.{sc_id}": "COMPLETED",
            }
        },
    )

    spec3, planned3 = _planned(tmp_path, temps="600, 900, 1200")
    res = fw_submit.submit(lp, planned3, spec3.campaign)
    assert res["added"] == [] and res["reused"] == []
    assert res["extended"] == ["Li6PS5Cl", "Li3N"]
    new_li6 = sorted(res["details"]["Li6PS5Cl"]["added"])
    assert new_li6 == sorted(
        [
            "md Li6PS5Cl free 1200K",
            "md Li6PS5Cl pinned 1200K",
            "analysis Li6PS5Cl free 1200K",
            "analysis Li6PS5Cl pinned 1200K",
            "arrhenius Li6PS5Cl free",
            "arrhenius Li6PS5Cl pinned",
            "summary Li6PS5Cl",
        ]
    )
    assert len(res["details"]["Li3N"]["added"]) == 4  # md, analysis, fit, summary
    assert res["jobs_added"] == 11
    assert res["jobs_reused"] == sum(p.n_jobs for p in planned3) - 11
    after = list(lp.fireworks.find({"spec.ionflow_campaign": spec.campaign}, {"_id": 0}))
    assert len(after) == len(before) + 11
    assert lp.workflows.count_documents({}) == 2  # extended, not a second workflow
    uuid = {d["fw_id"]: d["spec"]["ionflow_job_uuid"] for d in after}
    names = {d["fw_id"]: d["name"] for d in after}

    wf = lp.get_wf_by_fw_id(sc_id)  # FireWorks reads the extended workflow back
    parents = {names[c]: sorted(names[p] for p in ps) for c, ps in wf.links.parent_links.items()}
    assert parents["md Li6PS5Cl free 1200K"] == ["supercell Li6PS5Cl"]
    assert parents["analysis Li6PS5Cl pinned 1200K"] == ["md Li6PS5Cl pinned 1200K"]
    new_fits = [i for i in wf.id_fw if names[i] == "arrhenius Li6PS5Cl free"]
    assert len(new_fits) == 2  # the old fit stays (its result is kept), the new one is added
    newest = max(new_fits)
    assert sorted(names[p] for p in wf.links.parent_links[newest]) == [
        "analysis Li6PS5Cl free 1200K",
        "analysis Li6PS5Cl free 600K",
        "analysis Li6PS5Cl free 900K",
    ]
    # the references of the new fit point to the existing analyses' jobs
    fit_job = wf.id_fw[newest].tasks[0]["job"]
    assert {r.uuid for r in fit_job.input_references} == {
        uuid[p] for p in wf.links.parent_links[newest]
    }
    state = {
        names[i]: s for i, s in wf.fw_states.items() if i > max(d["fw_id"] for d in before.values())
    }
    assert state["md Li6PS5Cl free 1200K"] == "READY"  # its supercell is COMPLETED
    assert state["md Li6PS5Cl free 1200K"] == state["md Li6PS5Cl pinned 1200K"]
    assert state["arrhenius Li6PS5Cl free"] == "WAITING"
    li3n_md = lp.fireworks.find_one({"name": "md Li3N free 1200K"})
    assert li3n_md["state"] == "WAITING"  # Li3N's supercell has not run
    assert wf.id_fw[newest].spec["_category"] == "analysis"
    assert (
        wf.id_fw[[i for i in wf.id_fw if names[i] == "md Li6PS5Cl free 1200K"][0]].spec["_category"]
        == "md"
    )
    # once more: nothing to add
    again = fw_submit.submit(lp, planned3, spec3.campaign)
    assert again["reused"] == ["Li6PS5Cl", "Li3N"] and again["jobs_added"] == 0
    assert lp.fireworks.count_documents({"spec.ionflow_campaign": spec.campaign}) == len(after)
    # and back to two temperatures: that summary exists already
    back = fw_submit.submit(lp, planned, spec.campaign)
    assert back["reused"] == ["Li6PS5Cl", "Li3N"] and back["jobs_added"] == 0
    last = fw_submit.last_submission(lp, spec.campaign)
    assert last["jobs_added"] == 0 and last["materials"]["Li3N"]["mode"] == "unchanged"


def test_locked_workflow_is_not_extended(db, tmp_path, monkeypatch):
    from ionflow.backends import fw_submit

    spec, planned = _planned(tmp_path)
    lp = db.launchpad()
    fw_submit.submit(lp, planned[:1], spec.campaign)
    n0 = lp.fireworks.count_documents({})
    lp.workflows.update_many({}, {"$set": {"locked": True}})  # a worker holds the lock
    monkeypatch.setattr(fw_submit, "_LOCK_TIMEOUT_S", 0.5)
    _, planned3 = _planned(tmp_path, temps="600, 900, 1200")
    with pytest.raises(fw_submit.SubmissionError, match=r"Li6PS5Cl.*locked.*lpad admin unlock"):
        fw_submit.submit(lp, planned3[:1], spec.campaign)
    assert lp.fireworks.count_documents({}) == n0  # nothing half-added
    lp.workflows.update_many({}, {"$unset": {"locked": ""}})
    assert fw_submit.submit(lp, planned3[:1], spec.campaign)["extended"] == ["Li6PS5Cl"]


def test_changed_md_settings_reuse_the_relaxation_only(db, tmp_path):
    from ionflow.backends import fw_submit
    from ionflow.campaign import plan_campaign

    spec, planned = _planned(tmp_path)
    lp = db.launchpad()
    fw_submit.submit(lp, planned, spec.campaign)
    n0 = lp.fireworks.count_documents({})
    text = (
        (tmp_path / "workflows.yaml")
        .read_text()
        .replace("production_ps: 0.4", "production_ps: 0.8")
    )
    (tmp_path / "workflows.yaml").write_text(text)
    from ionflow.spec import load_campaign

    spec2, mats2 = load_campaign(tmp_path / "workflows.yaml")
    planned2 = plan_campaign(spec2, mats2, tmp_path / "runs")
    res = fw_submit.submit(lp, planned2, spec2.campaign)
    assert res["extended"] == ["Li6PS5Cl", "Li3N"]
    for name, p in zip(("Li6PS5Cl", "Li3N"), planned2, strict=True):
        assert sorted(res["details"][name]["reused"]) == [f"relax {name}", f"supercell {name}"]
        assert len(res["details"][name]["added"]) == p.n_jobs - 2
    assert lp.fireworks.count_documents({}) == n0 + sum(p.n_jobs - 2 for p in planned2)


def test_incomplete_workflow_of_a_failed_submission_is_replaced(db, tmp_path):
    from ionflow.backends import fw_submit
    from ionflow.backends.base import submission_lines

    spec, planned = _planned(tmp_path)
    lp = db.launchpad()
    fw_submit.submit(lp, planned[:1], spec.campaign)
    # a workflow document written without its fireworks (the database failed in between)
    ghost = {
        "nodes": [9001, 9002],
        "links": {"9001": [9002], "9002": []},
        "parent_links": {"9002": [9001]},
        "fw_states": {"9001": "READY", "9002": "WAITING"},
        "metadata": {
            "ionflow_campaign": spec.campaign,
            "ionflow_material": "Li3N",
            "ionflow_pending": True,
        },
        "name": "ghost",
        "state": "READY",
    }
    lp.workflows.insert_one(ghost)
    res = fw_submit.submit(lp, planned, spec.campaign)
    assert res["dropped"] == ["Li3N"] and res["added"] == ["Li3N"]
    assert res["reused"] == ["Li6PS5Cl"]
    assert lp.workflows.count_documents({"name": "ghost"}) == 0
    assert lp.workflows.count_documents({}) == 2
    assert "interrupted earlier submission: Li3N" in submission_lines(res)[0]
    assert lp.workflows.count_documents({"metadata.ionflow_pending": {"$exists": True}}) == 0
    # an incomplete workflow one of whose fireworks has run is left for a person to look at
    ran = lp.fireworks.find_one({"spec.ionflow_material": "Li3N"})
    lp.fireworks.update_one({"fw_id": ran["fw_id"]}, {"$set": {"state": "COMPLETED"}})
    wf = lp.workflows.find_one({"nodes": ran["fw_id"]})
    lp.workflows.update_one({"_id": wf["_id"]}, {"$set": {"metadata.ionflow_pending": True}})
    with pytest.raises(fw_submit.SubmissionError, match=r"Li3N.*have run"):
        fw_submit.submit(lp, planned, spec.campaign)


def test_campaign_done(db):
    from ionflow.hpc import campaign_done

    lp = db.launchpad()
    ids = _add(lp, "camp", ["relax", "md", "analysis"])
    assert not campaign_done(lp, "camp")  # READY work

    def set_states(*states):
        for fw_id, state in zip(ids, states, strict=True):
            lp.fireworks.update_one({"fw_id": fw_id}, {"$set": {"state": state}})

    set_states("COMPLETED", "RUNNING", "WAITING")
    assert not campaign_done(lp, "camp")
    set_states("COMPLETED", "COMPLETED", "WAITING")  # a child not refreshed yet: not done
    assert not campaign_done(lp, "camp")
    set_states("COMPLETED", "FIZZLED", "WAITING")  # blocked by a failure: done (exit 1)
    assert campaign_done(lp, "camp")
    set_states("COMPLETED", "COMPLETED", "COMPLETED")
    assert campaign_done(lp, "camp") and campaign_done(lp, None)
