# ruff: noqa: F811
"""Precision-targeted campaigns end to end (toy engine, FireWorks on the local database):
runs whose first chunk is too short are extended from their checkpoints, the trajectory
stays continuous, the summary says what was decided, a rerun adds nothing, a tighter target
extends the same runs, a looser one runs no MD, and a worker killed with SIGKILL in the
middle of an extension resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_campaign import IONFLOW, REPO, _db, _run, project  # noqa: F401

pytestmark = pytest.mark.integration


def _spec(tmp: Path, target: str, temps=(600, 900), production_ps=0.2, name="adp") -> Path:
    text = f"""
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
  pinned_control: "off"
  target: {target}
materials:
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}}}
"""
    path = tmp / "workflows.yaml"
    path.write_text(text)
    return path


def _outputs(db, pattern: str) -> list[dict]:
    with db.client() as client:
        return list(client[db.database]["outputs"].find({"name": {"$regex": pattern}}))


def _summary(db, campaign: str) -> dict:
    with db.client() as client:
        return client[db.database]["summaries"].find_one({"campaign": campaign}, {"_id": 0})


def _positions(db, ref: dict) -> np.ndarray:
    """The stored (GridFS) frames of one MD job's trajectory."""
    import tempfile

    from ionflow.trajectories import TrajectoryRef, download_npz

    with db.client() as client, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.npz"
        assert download_npz(client[db.database], TrajectoryRef.model_validate(ref), path)
        with np.load(path) as data:
            return np.array(data["positions"])


def test_targeted_campaign_extends_until_the_maximum_and_reuses(project):
    # a target no toy run can meet: every run is extended 0.2 → 0.4 → 0.6 ps (the maximum)
    # and no temperature can be added (max_temperatures = the ladder)
    tgt = (
        "{diffusivity_rel_err: 0.001, extend_ps: 0.2, max_production_ps: 0.6, max_temperatures: 2,"
        " budget_core_hours: 1000}"
    )
    spec = _spec(project, tgt)
    first = _run(["run", str(spec), "--quiet"], cwd=project)
    assert first.returncode == 0, first.stdout + first.stderr
    db = _db(project)
    lp = db.launchpad()
    fws = list(lp.fireworks.find({"spec.ionflow_campaign": "adp"}))
    assert {fw["state"] for fw in fws} == {"COMPLETED"}
    by_name = {fw["name"]: fw for fw in fws}
    for t in (600, 900):
        for to in (0.4, 0.6):
            md = by_name[f"md Li3N free {t}K ext {to:g}ps"]
            assert md["spec"]["_category"] == "md" and md["spec"]["ionflow_stage"] == "md"
            an = by_name[f"analysis Li3N free {t}K ext {to:g}ps"]
            assert an["spec"]["_category"] == "analysis"
    # supercell, 2 MD, 2 analyses, the summary, one fit per round, and per extension one
    # MD job and one analysis (the order of the extensions is the rules' business: of two
    # runs without D the hotter one goes first)
    n_fw = len(fws)
    n_rounds = sum(fw["name"] == "arrhenius Li3N free" for fw in fws)
    n_ext = sum(" ext " in fw["name"] and fw["name"].startswith("md ") for fw in fws)
    assert n_ext == 4 and n_fw == 1 + 2 + 2 + 1 + n_rounds + 2 * n_ext
    # every run ends at the maximum: 0.6 ps / 10 fs + 1 frames, one run directory per run,
    # time continuous (frame count = sum of the chunks, no duplicate)
    final = [d for d in _outputs(db, "^md .* ext 0.6ps$")]
    assert len(final) == 2
    firsts = {d["output"]["temperature_k"]: d["output"] for d in _outputs(db, "^md .*K$")}
    for d in final:
        out = d["output"]
        assert out["trajectory"]["n_frames"] == 61 and out["production_ps"] == pytest.approx(0.6)
        assert out["workdir"] == firsts[out["temperature_k"]]["workdir"]
        assert out["md"]["resumed_from_step"] == 25 + 200  # continued after 0.4 ps
        assert out["compute"]["calls"] == 3 and out["compute"]["core_hours"] > 0
        assert out["compute"]["atom_steps"] == 36 * (25 + 300)
        pos = _positions(db, out["trajectory"])
        first = _positions(db, firsts[out["temperature_k"]]["trajectory"])
        assert pos.shape[0] == 61 and first.shape[0] == 21
        assert np.array_equal(pos[:21], first)  # the same run, continued, not restarted
        step = np.abs(np.diff(pos, axis=0)).max(axis=(1, 2))
        assert (step > 0).all()  # no frame repeated
    s = _summary(db, "adp")
    assert s["schema_version"] == "1.4" and s["target_met"] is False
    runs = s["free"]["runs"]
    assert [r["production_ps"] for r in runs] == pytest.approx([0.6, 0.6])
    assert [r["duration_ps"] for r in runs] == pytest.approx([0.6, 0.6])  # analysis: all of it
    assert all(r["target_met"] is False and r["core_hours"] > 0 for r in runs)
    assert s["core_hours"] == pytest.approx(sum(r["core_hours"] for r in runs))
    ext = sorted(line.split(":")[0] for line in s["decisions"] if " extended " in line)
    assert ext == [
        "600 K extended 0.2 → 0.4 ps",
        "600 K extended 0.4 → 0.6 ps",
        "900 K extended 0.2 → 0.4 ps",
        "900 K extended 0.4 → 0.6 ps",
    ]
    assert s["decisions"][-1].startswith("done without meeting the target")
    status = _run(["status", str(spec)], cwd=project)
    assert status.returncode == 0 and "ext 0.6ps" in status.stdout and "adaptive" in status.stdout
    spent = f"Li3N: MD {s['core_hours']:.3g} core-h of a 1000 core-h budget (free + pinned)"
    assert f"{spent}; target not met" in " ".join(status.stdout.split())

    # a second run adds nothing
    again = _run(["run", str(spec), "--quiet"], cwd=project)
    assert again.returncode == 0, again.stderr
    assert "submitted 0 new job(s)" in " ".join(again.stdout.split())
    assert lp.fireworks.count_documents({}) == n_fw

    # a tighter target (longer maximum) extends the same runs, it does not restart them
    spec = _spec(project, tgt.replace("0.6", "0.8"))
    tighter = _run(["run", str(spec), "--quiet"], cwd=project)
    assert tighter.returncode == 0, tighter.stdout + tighter.stderr
    final = _outputs(db, "^md .* ext 0.8ps$")
    assert len(final) == 2
    for d in final:
        out = d["output"]
        assert out["workdir"] == firsts[out["temperature_k"]]["workdir"]
        assert out["md"]["resumed_from_step"] == 25 + 300  # from the end of 0.6 ps
        assert out["trajectory"]["n_frames"] == 81
    states = {
        p: json.loads(p.read_text())["step"]
        for p in (project / "ionflow-data" / "runs").rglob("md_state.json")
    }
    assert sorted(states.values()) == [25 + 400, 25 + 400]

    # a looser target runs no MD step
    spec = _spec(project, tgt.replace("0.6", "0.4"))
    looser = _run(["run", str(spec), "--quiet"], cwd=project)
    assert looser.returncode == 0, looser.stdout + looser.stderr
    after = {
        p: json.loads(p.read_text())["step"]
        for p in (project / "ionflow-data" / "runs").rglob("md_state.json")
    }
    assert after == states
    s = _summary(db, "adp")
    assert [r["production_ps"] for r in s["free"]["runs"]] == pytest.approx([0.8, 0.8])


def test_killed_worker_mid_extension_resumes(project):
    tgt = (
        "{diffusivity_rel_err: 0.001, extend_ps: 4.0, max_production_ps: 8.0, max_temperatures: 1}"
    )
    spec = _spec(project, tgt, temps=(900,), production_ps=4.0, name="adp-kill")
    proc = subprocess.Popen(
        IONFLOW + ["run", str(spec), "--quiet"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    runs = project / "ionflow-data" / "runs" / "adp-kill"
    first_end = 25 + 2000  # equilibration + the first chunk, steps
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and killed_at is None and proc.poll() is None:
        for state_file in runs.glob("*/*/md_state.json"):
            try:
                state = json.loads(state_file.read_text())
            except ValueError:
                continue
            if first_end + 400 < state["step"] < first_end + 1500:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = state["step"]
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert killed_at is not None, "the kill did not land inside the extension"
    res = _run(["run", str(spec), "--quiet"], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    db = _db(project)
    (ext,) = _outputs(db, "^md .* ext 8ps$")
    out = ext["output"]
    # resumed from a checkpoint of the extension, not from the first chunk or from zero
    assert first_end < out["md"]["resumed_from_step"] <= killed_at
    assert out["trajectory"]["n_frames"] == 801 and out["md"]["completed"]
    assert out["compute"]["calls"] >= 3  # first chunk, killed extension, resumed extension
    s = _summary(db, "adp-kill")
    assert s["free"]["runs"][0]["production_ps"] == pytest.approx(8.0)
    assert "900 K extended 4 → 8 ps" in " ".join(s["decisions"])


def test_a_temperature_is_added_when_too_few_give_d(project):
    """Runs at their maximum from the start (no extension); fewer than 3 temperatures give
    D → the controller adds max(T) + the ladder's spacing, runs and analyses it, refits."""
    tgt = (
        "{diffusivity_rel_err: 0.5, extend_ps: 0.2, max_production_ps: 0.2, "
        "max_temperatures: 3, max_temperature_k: 1200}"
    )
    spec = _spec(project, tgt, name="adp-add")
    res = _run(["run", str(spec), "--quiet"], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    db = _db(project)
    s = _summary(db, "adp-add")
    assert s["temperatures_k"] == [600.0, 900.0, 1200.0]
    added = _outputs(db, "^md Li3N free 1200K added$")
    assert len(added) == 1 and added[0]["output"]["trajectory"]["n_frames"] == 21
    first = s["decisions"][0]
    assert first.startswith("added 1200 K: ") and first.endswith(" of 2 runs " + first.split()[-1])
    n_without = sum(r["regime"] != "diffusive" for r in s["free"]["runs"][:2])
    assert first.split(": ")[1].startswith(f"{n_without} of 2 runs")
    # the fit covers the added temperature
    assert 1200.0 in [r["temperature_k"] for r in s["free"]["runs"]]
    assert s["core_hours"] == pytest.approx(sum(r["core_hours"] for r in s["free"]["runs"]))


def test_pinned_control_follows_the_added_temperature(project):
    """With the pinned control on, the temperature the free controller adds is added to the
    pinned variant too (its controller runs after the free one), so free and pinned compare
    at every temperature; the material's compute is both variants'."""
    tgt = (
        "{diffusivity_rel_err: 0.5, extend_ps: 0.2, max_production_ps: 0.2, "
        "max_temperatures: 3, max_temperature_k: 1200}"
    )
    spec = _spec(project, tgt, name="adp-pin")
    spec.write_text(
        spec.read_text().replace('pinned_control: "off"', "pinned_control: {species: [N]}")
    )
    res = _run(["run", str(spec), "--quiet"], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    db = _db(project)
    s = _summary(db, "adp-pin")
    assert [r["temperature_k"] for r in s["free"]["runs"]] == [600.0, 900.0, 1200.0]
    assert [r["temperature_k"] for r in s["pinned"]["runs"]] == [600.0, 900.0, 1200.0]
    (added,) = _outputs(db, "^md Li3N pinned 1200K added$")
    assert added["output"]["fixed_indices"]  # the pinned run of the added temperature is pinned
    assert (
        "pinned: added 1200 K: a temperature of the free variant (pinned comparison)"
        in s["decisions"]
    )
    per_run = [r["core_hours"] for v in ("free", "pinned") for r in s[v]["runs"]]
    assert all(h > 0 for h in per_run)
    assert s["core_hours"] == pytest.approx(sum(per_run))
