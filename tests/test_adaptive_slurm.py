"""md.target through the real Slurm of the test suite (tests/test_slurm.py): the extension
jobs a controller adds are dispatched like planned ones — each by a worker of its own
category's profile, in its own Slurm job — and the run continues in its run directory."""

# ruff: noqa: F811
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ionflow.hpc import campaign_done
from ionflow.store import DatabaseSettings, resolve_database
from tests.test_slurm import EXAMPLES, cli, data, drive, slurm  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_extension_dispatched_through_slurm(slurm, tmp_path, data):
    spec = tmp_path / "workflows.yaml"
    spec.write_text(
        f"""campaign: slurm-adaptive
mobile_species: Li
engine: {{relax: none, md: toy}}
md:
  temperatures_k: [900]
  time_step_fs: 2.0
  equilibration_ps: 0.1
  production_ps: 0.4
  frame_interval_fs: 10
  supercell_min_length_a: 7.0
  pinned_control: "off"
  target: {{diffusivity_rel_err: 0.001, extend_ps: 0.4, max_production_ps: 0.8,
           max_temperatures: 1}}
materials:
  - {{name: Li3N, structure: {EXAMPLES / "Li3N.cif"}}}
"""
    )
    cli("submit", str(spec), "--data-dir", str(data), cwd=tmp_path)
    db = resolve_database(DatabaseSettings(data_dir=data))
    lp = db.launchpad()
    drive(db, data, "slurm-adaptive", lambda: campaign_done(lp, "slurm-adaptive"), timeout=400)
    fws = list(lp.fireworks.find({"spec.ionflow_campaign": "slurm-adaptive"}))
    assert {fw["state"] for fw in fws} == {"COMPLETED"}
    names = [fw["name"] for fw in fws]
    assert "md Li3N free 900K ext 0.8ps" in names and "analysis Li3N free 900K ext 0.8ps" in names
    kinds = Counter()
    for fw in fws:
        launch_doc = lp.launches.find_one({"launch_id": fw["launches"][-1]})
        assert launch_doc["fworker"]["category"] == fw["spec"]["_category"], fw["name"]
        kinds[fw["spec"]["_category"]] += 1
    # supercell, fit ×2 rounds, summary, 2 analyses → analysis; the MD and its extension → md
    assert kinds == {"analysis": 6, "md": 2}
    with db.client() as client:
        mdb = client[db.database]
        first = mdb["outputs"].find_one({"name": "md Li3N free 900K"})["output"]
        ext = mdb["outputs"].find_one({"name": "md Li3N free 900K ext 0.8ps"})["output"]
        summary = mdb["summaries"].find_one({"campaign": "slurm-adaptive"})
    assert Path(ext["workdir"]) == Path(first["workdir"])
    assert ext["md"]["resumed_from_step"] == 50 + 200 and ext["trajectory"]["n_frames"] == 81
    assert ext["compute"]["calls"] == 2 and ext["compute"]["core_hours"] > 0
    assert summary["free"]["runs"][0]["production_ps"] == pytest.approx(0.8)
    assert any(line.startswith("900 K extended 0.4 → 0.8 ps") for line in summary["decisions"])
