"""The campaign spine end to end: workflows.yaml → flows → FireWorks on a real SecantusDB
server → MD (toy potential; CHGNet in the slow test) → analysis → summaries.

Assertions are about what must hold whatever the numbers are (every job completed, one
summary per material, pinned runs exactly where polyanions exist, trajectories in GridFS
and not in documents, resubmission adds nothing, an interrupted run resumes from its MD
checkpoint with exactly the planned number of frames).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IONFLOW = [sys.executable, "-m", "ionflow.cli"]
pytestmark = pytest.mark.integration


def _spec(
    tmp: Path,
    *,
    engine="toy",
    temps=(600, 900),
    production_ps=0.4,
    extra_li3n="",
    name="toy-campaign",
    eq_ps=0.05,
    relax=None,
) -> Path:
    text = f"""
campaign: {name}
mobile_species: Li
engine: {{relax: {relax or engine}, md: {engine}}}
md:
  temperatures_k: [{", ".join(str(t) for t in temps)}]
  time_step_fs: 2.0
  equilibration_ps: {eq_ps}
  production_ps: {production_ps}
  frame_interval_fs: 10
  supercell_min_length_a: 9.0
materials:
  - {{name: Li6PS5Cl, structure: {REPO / "examples" / "Li6PS5Cl.cif"}}}
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}, md: {{supercell_min_length_a: 7.0{extra_li3n}}}}}
relax: {{max_steps: 20}}
"""
    path = tmp / "workflows.yaml"
    path.write_text(text)
    return path


def _run(args, cwd, timeout=900, **kw):
    return subprocess.run(
        IONFLOW + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture
def project(tmp_path):
    yield tmp_path
    from ionflow.store import LocalServer

    server = LocalServer.running(tmp_path / "ionflow-data")
    if server is not None:
        server.stop()


def _db(project: Path):
    from ionflow.store import DatabaseSettings, resolve_database

    return resolve_database(DatabaseSettings(data_dir=project / "ionflow-data"))


def test_every_maker_serialises_under_ionflow():
    from jobflow import Maker

    from ionflow.flows.campaign import MaterialCampaignMaker
    from ionflow.makers.analysis import AnalysisMaker, ArrheniusMaker, SummaryMaker
    from ionflow.makers.md import MLMDMaker
    from ionflow.makers.relax import RelaxMaker
    from ionflow.makers.supercell import SupercellMaker

    makers = [
        MaterialCampaignMaker(),
        AnalysisMaker(),
        ArrheniusMaker(),
        SummaryMaker(),
        MLMDMaker(),
        RelaxMaker(),
        SupercellMaker(),
    ]
    for maker in makers:
        d = maker.as_dict()
        assert d["@module"].startswith("ionflow."), d["@module"]
        again = type(maker).from_dict(d)
        assert isinstance(again, Maker) and again.as_dict() == d


def test_flow_documents_reference_only_ionflow_modules(tmp_path):
    """No job function or maker may serialise as bare `makers.x` / `flows.x`."""
    from ionflow.campaign import plan_campaign
    from ionflow.spec import load_campaign

    spec, mats = load_campaign(_spec(tmp_path))
    planned = plan_campaign(spec, mats, tmp_path / "runs")
    modules = set()

    def walk(obj):
        if isinstance(obj, dict):
            if "@module" in obj:
                modules.add(obj["@module"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for p in planned:
        walk(p.flow.as_dict())
    ours = {m for m in modules if m.split(".")[0] in ("makers", "flows", "ionflow")}
    assert ours and all(m.startswith("ionflow.") for m in ours), ours
    assert {p.material.name: p.n_jobs for p in planned} == {
        "Li6PS5Cl": 13,
        "Li3N": 8,
    }  # 1+1+2T·2+2T·2+2+1; 1+1+2+2+1+1


def test_invalid_campaign_starts_and_submits_nothing(tmp_path):
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("time_step_fs: 2.0", "time_step_fs: 9.0"))
    res = _run(["run", str(spec)], cwd=tmp_path)
    assert res.returncode == 2
    assert "md.time_step_fs" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "ionflow-data").exists()


def test_toy_campaign_end_to_end_and_idempotent(project):
    # no relaxation: the toy Morse potential would tear the PS4 groups apart
    spec = _spec(project, relax="none")
    first = _run(["run", str(spec), "--quiet"], cwd=project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted 19 new job(s) (2 new material(s), 0 extended)" in first.stdout.replace(
        "\n", " "
    )

    db = _db(project)
    lp = db.launchpad()
    states = [fw["state"] for fw in lp.fireworks.find({"spec.ionflow_campaign": "toy-campaign"})]
    assert len(states) == 19 and set(states) == {"COMPLETED"}
    with db.client() as client:
        mdb = client[db.database]
        summaries = {d["material"]: d for d in mdb["summaries"].find({}, {"_id": 0})}
        assert set(summaries) == {"Li6PS5Cl", "Li3N"}
        li6 = summaries["Li6PS5Cl"]
        assert li6["pinned"] is not None and li6["pinned_indices_count"] == 16
        assert [r["temperature_k"] for r in li6["free"]["runs"]] == [600.0, 900.0]
        assert li6["n_bonded_anions"] == 16 and li6["n_isolated_anions"] == 8
        li3n = summaries["Li3N"]
        assert li3n["pinned"] is None and "no polyanion" in li3n["pinned_reason"]
        assert li3n["n_atoms_supercell"] == 36
        # 6 MD runs → 6 trajectories in GridFS; documents stay small
        assert mdb["trajectories.files"].count_documents({}) == 6
        biggest = max(len(json.dumps(d, default=str)) for d in mdb["outputs"].find({}))
        assert biggest < 1_000_000
        md_docs = list(mdb["outputs"].find({"name": {"$regex": "^md "}}))
        frames = {d["output"]["trajectory"]["n_frames"] for d in md_docs}
        assert frames == {41}  # 0.4 ps / 10 fs + the starting frame

    again = _run(["run", str(spec), "--quiet"], cwd=project)
    assert again.returncode == 0, again.stderr
    out = " ".join(again.stdout.split())
    assert "submitted 0 new job(s) (0 new material(s), 0 extended); reused 19 job(s)" in out
    assert lp.fireworks.count_documents({}) == 19
    with db.client() as client:
        mdb = client[db.database]
        assert mdb["summaries"].count_documents({}) == 2
        assert mdb["trajectories.files"].count_documents({}) == 6
        md_done = {
            d["uuid"]: d["completed_at"] for d in mdb["outputs"].find({"name": {"$regex": "^md "}})
        }
    status = _run(["status", str(spec)], cwd=project)
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    assert "added 0 job(s) and reused 19" in " ".join(status.stdout.split())

    # one more temperature: only its runs, new fits and new summaries are added and run
    spec = _spec(project, relax="none", temps=(600, 900, 1200))
    more = _run(["run", str(spec), "--quiet"], cwd=project)
    assert more.returncode == 0, more.stdout + more.stderr
    out = " ".join(more.stdout.split())
    assert "submitted 11 new job(s) (0 new material(s), 2 extended); reused 14 job(s)" in out
    assert lp.fireworks.count_documents({}) == 30
    assert lp.workflows.count_documents({}) == 2
    assert {fw["state"] for fw in lp.fireworks.find({})} == {"COMPLETED"}
    with db.client() as client:
        mdb = client[db.database]
        md_now = {
            d["uuid"]: d["completed_at"] for d in mdb["outputs"].find({"name": {"$regex": "^md "}})
        }
        assert (
            len(md_now) == 9 and mdb["outputs"].count_documents({"name": {"$regex": "^md "}}) == 9
        )
        assert {u: md_now[u] for u in md_done} == md_done  # the old runs were not redone
        assert mdb["trajectories.files"].count_documents({}) == 9
        summaries = {d["material"]: d for d in mdb["summaries"].find({}, {"_id": 0})}
        assert len(summaries) == 2
        for s in summaries.values():
            assert s["temperatures_k"] == [600.0, 900.0, 1200.0]
        li6 = summaries["Li6PS5Cl"]
        assert [r["temperature_k"] for r in li6["pinned"]["runs"]] == [600.0, 900.0, 1200.0]
        # the new summary reuses the existing analyses (their job uuids)
        old_analyses = {
            d["uuid"]
            for d in mdb["outputs"].find({"name": {"$regex": "^analysis Li6PS5Cl free (600|900)K"}})
        }
        assert old_analyses <= {r["analysis_uuid"] for r in li6["free"]["runs"]}
    status = _run(["status", str(spec)], cwd=project)
    text = " ".join(status.stdout.split())
    assert "added 11 job(s) and reused 14" in text
    assert "Li3N: extended — added md Li3N free 1200K" in text
    assert "5 job(s) are superseded" in text  # the first plan's 3 fits and 2 summaries

    # back to the first temperature list: nothing to run; its summaries are current again
    spec = _spec(project, relax="none")
    back = _run(["run", str(spec), "--quiet"], cwd=project)
    assert back.returncode == 0, back.stdout + back.stderr
    out = " ".join(back.stdout.split())
    assert "submitted 0 new job(s)" in out and "unchanged, reused whole: Li6PS5Cl, Li3N" in out
    assert "summaries of the submitted plan restored (they had run before): Li6PS5Cl, Li3N" in out
    assert lp.fireworks.count_documents({}) == 30
    with db.client() as client:
        for s in client[db.database]["summaries"].find({}):
            assert s["temperatures_k"] == [600.0, 900.0]
    status = _run(["status", str(spec)], cwd=project)
    assert "11 job(s) are superseded" in " ".join(status.stdout.split())  # the 1200 K plan's


def test_interrupted_run_resumes_from_checkpoint(project):
    # long-ish toy MD so that the interrupt lands inside a production run
    spec = _spec(project, temps=(700,), production_ps=6.0, name="resume-campaign")
    proc = subprocess.Popen(
        IONFLOW + ["run", str(spec), "--quiet"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = project / "ionflow-data" / "runs" / "resume-campaign"
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and ckpt is None:
        for c in runs.glob("*/*/checkpoint.npz"):
            state = json.loads((c.parent / "md_state.json").read_text())
            if state["step"] > state["equilibration_steps"] + 200:
                ckpt = c
        time.sleep(0.5)
    assert ckpt is not None, "no MD checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    interrupted = json.loads((ckpt.parent / "md_state.json").read_text())
    assert not interrupted["completed"]

    res = _run(["run", str(spec), "--quiet"], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming 1 interrupted job" in res.stdout
    db = _db(project)
    with db.client() as client:
        mdb = client[db.database]
        md_docs = list(mdb["outputs"].find({"name": {"$regex": "^md "}}))
        resumed = [d for d in md_docs if d["output"]["workdir"] == str(ckpt.parent)]
        assert len(resumed) == 1  # one output per job, never duplicated
        md = resumed[0]["output"]["md"]
        assert md["resumed_from_step"] is not None and md["resumed_from_step"] > 0
        assert md["completed"] and md["n_production_frames"] == 601
        assert mdb["summaries"].count_documents({"campaign": "resume-campaign"}) == 2


@pytest.mark.slow
def test_chgnet_campaign_end_to_end(project):
    """The real ML potential through the same path (tiny runs: the numbers are not checked)."""
    spec = _spec(
        project,
        engine="chgnet",
        temps=(1000, 1200),
        production_ps=0.1,
        eq_ps=0.4,  # 4 Nosé-Hoover times: the MB start at minimum positions equipartitions to T/2
        name="chgnet-campaign",
    )
    text = spec.read_text()
    # Li3N only: the CHGNet cost of the argyrodite runs is the demo's job
    spec.write_text(
        text[: text.index("  - {name: Li6PS5Cl")] + text[text.index("  - {name: Li3N") :]
    )
    res = _run(["run", str(spec), "--quiet"], cwd=project, timeout=1500)
    assert res.returncode == 0, res.stdout + res.stderr
    db = _db(project)
    with db.client() as client:
        mdb = client[db.database]
        s = mdb["summaries"].find_one({"campaign": "chgnet-campaign", "material": "Li3N"})
        assert s is not None and s["engine_md"] == "chgnet"
        md = [d["output"] for d in mdb["outputs"].find({"name": {"$regex": "^md "}})]
        assert len(md) == 2
        for out in md:
            assert out["engine"] == "chgnet"
            # canonical ensemble: the instantaneous free-DOF temperature has a relative SD
            # of √(2/n_dof); after equilibration the production mean lies within 3 of those
            # (a run without a working thermostat stays near T/2 and fails this)
            t, n_dof = out["temperature_k"], out["md"]["n_free_degrees_of_freedom"]
            assert abs(out["md"]["mean_temperature_k"] - t) <= 3 * t * math.sqrt(2 / n_dof)
    assert os.path.exists(project / "ionflow-data" / "runs" / "chgnet-campaign" / "Li3N")


def test_extra_analysis_runs_in_the_same_pass_and_reaches_the_report(project):
    """`analysis: {analyses: [framework-msd]}`: the analysis job stores the extra result by
    kind, the results layer parses it through the registry, the report shows it."""
    spec = _spec(project, temps=(900,), production_ps=0.2, name="extra-analysis")
    text = spec.read_text()
    text = text[: text.index("  - {name: Li6PS5Cl")] + text[text.index("  - {name: Li3N") :]
    spec.write_text(text + "analysis: {analyses: [framework-msd]}\n")
    res = _run(["run", str(spec), "--quiet"], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    from ionflow.analysis.framework_msd import FrameworkMSDResult
    from ionflow.results import fetch_run_analyses, load_summaries, parse_summary

    db = _db(project)
    (doc,) = load_summaries(db, "extra-analysis")
    summary = parse_summary(doc)
    (run,) = fetch_run_analyses(db, summary)
    assert set(run.results) == {"framework-msd"}
    fw = run.results["framework-msd"]
    assert isinstance(fw, FrameworkMSDResult)
    assert [x.element for x in fw.species] == ["N"]  # Li3N: N is the whole framework
    assert fw.n_frames == run.analysis.n_frames == 21  # 0.2 ps at 10 fs per frame
    # independent truth: the exported frames, unwrapped by minimum-image steps, N drift
    # (the whole framework) removed, MSD over all origins at half the run, by brute force
    import ase.io
    import numpy as np

    xyz = project / "run.extxyz"
    exp = _run(
        ["export-trajectory", "--campaign", "extra-analysis", "--material", "Li3N",
         "--temperature-k", "900", "--out", str(xyz)],
        cwd=project,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    frames = ase.io.read(xyz, index=":")
    cell = np.asarray(frames[0].cell)
    pos = np.array([f.positions for f in frames])
    n_idx = [i for i, el in enumerate(frames[0].get_chemical_symbols()) if el == "N"]
    frac = np.diff(pos @ np.linalg.inv(cell), axis=0)
    steps = (frac - np.round(frac)) @ cell
    disp = np.concatenate([np.zeros((1, pos.shape[1], 3)), np.cumsum(steps, axis=0)])[:, n_idx]
    disp -= disp.mean(axis=1, keepdims=True)
    lag = len(frames) // 2
    msd = np.mean(np.sum((disp[lag:] - disp[:-lag]) ** 2, axis=2))
    assert fw.species[0].msd_half_run_a2 == pytest.approx(msd, rel=1e-4)
    # the supercell stage describes the isolated anions (Li3N: N on 1b, -6m2/6/mmm, alone)
    with db.client() as client:
        sc = client[db.database]["outputs"].find_one({"name": {"$regex": "^supercell"}})
    desc = sc["output"]["anion_descriptors"]
    assert desc["isolated_fraction"] == 1.0 and desc["groups"] == {}
    assert [a["element"] for a in desc["anions"]] == ["N"]
    out = project / "report"
    rep = _run(["report", "--out", str(out)], cwd=project)
    assert rep.returncode == 0, rep.stderr
    assert "framework-msd: framework MSD at T/2" in (out / "report.md").read_text()


def test_default_analyses_mechanism_end_to_end(project):
    """The default analyses (diffusion, rotation, vdos, density, jumps) run on every MD run
    of a toy campaign; the density CHGCAR is in GridFS and export-density writes it back
    (pymatgen reads it, integral = the number of Li); the summary carries the mechanism
    fields, a query on them finds the material, the report and the run table show the
    verdict. Structure, not chemistry: the toy potential may tear PS4 apart."""
    spec = _spec(project, temps=(900,), production_ps=0.5, name="mechanism")
    text = spec.read_text()
    spec.write_text(text[: text.index("  - {name: Li3N")] + text[text.index("relax: {max") :])
    res = _run(["run", str(spec)], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Li6PS5Cl mechanism: " in res.stdout
    from ionflow.results import fetch_run_analyses, load_summaries, parse_summary

    db = _db(project)
    (doc,) = load_summaries(db, "mechanism")
    s = parse_summary(doc)
    assert s.schema_version == "1.4" and s.mechanism_verdict
    assert s.rotation_coupled in (True, False)
    assert s.isolated_fraction is not None and 0 <= s.isolated_fraction <= 1
    runs = fetch_run_analyses(db, s)
    assert {(r.variant, r.temperature_k) for r in runs} == {("free", 900.0), ("pinned", 900.0)}
    with db.client() as client:
        out_docs = list(client[db.database]["outputs"].find({"name": {"$regex": "^analysis "}}))
        files = list(client[db.database]["densities.files"].find({}))
    assert len(out_docs) == 2 and len(files) == 2
    for d in out_docs:
        entries = d["output"]["results"]
        assert set(entries) == {"rotation", "vdos", "density", "jumps"}
        for kind, e in entries.items():  # a result, or the reason it has none
            assert ("result" in e) != ("error" in e), (kind, e)
        assert entries["density"].get("result") is not None
        ref = d["output"]["density_file"]
        assert ref["bucket"] == "densities" and ref["gridfs_id"] in {str(f["_id"]) for f in files}
        assert len(json.dumps(d["output"])) < 2_000_000  # no volumetric data in documents
    for v in (s.free, s.pinned):
        (r,) = v.runs
        assert r.density_file and r.percolation_dimension in (0, 1, 2, 3)
        assert r.jump_rate_per_ps is not None or any("jumps" in n for n in r.mechanism_notes)
        assert r.tau_p2_ps is not None or r.tau_p2_reason
    # export-density: a CHGCAR whose integral is the number of Li
    chg = project / "free.CHGCAR"
    exp = _run(["export-density", "--campaign", "mechanism", "--material", "Li6PS5Cl",
                "--temperature-k", "900", "--out", str(chg)], cwd=project)  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    from pymatgen.io.vasp import Chgcar

    c = Chgcar.from_file(str(chg))
    n_li = sum(1 for site in c.structure if site.specie.symbol == "Li")
    assert c.data["total"].mean() == pytest.approx(n_li, rel=1e-6)  # ∫ρ dV = mean(ρV)
    bad = _run(["export-density", "--campaign", "mechanism", "--material", "Li6PS5Cl",
                "--temperature-k", "950", "--out", str(project / "x.CHGCAR")], cwd=project)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert not (project / "x.CHGCAR").exists() and not (project / "x.CHGCAR.part").exists()
    # query by the new flat fields (server path; the columnar path is tested in test_results)
    flag = "--rotation-coupled" if s.rotation_coupled else "--not-rotation-coupled"
    q = _run(["query", "--format", "json", flag, "--isolated-fraction-min",
              f"{s.isolated_fraction:.6f}", "--percolation-dimension",
              str(s.percolation_dimension)], cwd=project)  # fmt: skip
    assert q.returncode == 0, q.stderr
    assert [x["material"] for x in json.loads(q.stdout)] == ["Li6PS5Cl"]
    rep = _run(["report", "--out", str(project / "report")], cwd=project)
    assert rep.returncode == 0, rep.stderr
    md = (project / "report" / "report.md").read_text()
    assert "### Mechanism" in md and "ionflow export-density --campaign mechanism" in md
    assert s.mechanism_verdict.split(";")[0] in md
    # the pathway figures of the free run: its density (read back from GridFS) and, when the
    # jumps analysis found sites, its jump network; the mechanism numbers against T
    from PIL import Image, ImageStat

    figs = {f.name: f for f in (project / "report" / "figures").iterdir()}
    free = next(r for r in runs if r.variant == "free")
    wanted = ["_density.png", "_mechanism_vs_t.png"]
    wanted += ["_jumps.png"] if free.results.get("jumps") is not None else []
    for suffix in wanted:
        (name,) = [n for n in figs if n.endswith(suffix)]
        assert name in md
        img = Image.open(figs[name]).convert("L")
        assert max(ImageStat.Stat(img).stddev) > 10  # drawn, not blank
    assert not any(n.endswith("_jumps.png") for n in figs) or "_jumps.png" in wanted
