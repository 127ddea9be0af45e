"""md.target with the VASP engine (through the project's VASP stand-in): an extension adds
segments after the run's last one and the stored trajectory chains them all."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_vasp import REPO, _check_joins, standin_env  # noqa: F401

SPEC = """
campaign: vasp-adaptive
mobile_species: Li
engine: {{relax: none, md: vasp}}
md:
  temperatures_k: [900]
  time_step_fs: 2.0
  equilibration_ps: 0.01
  production_ps: 0.06
  frame_interval_fs: 4.0
  supercell_min_length_a: 5.0
  pinned_control: "off"
  segment_steps: 20
  target: {{diffusivity_rel_err: 0.001, extend_ps: 0.04, max_production_ps: 0.1,
           max_temperatures: 1}}
materials:
  - {{name: Li3N, structure: {structure}}}
"""


@pytest.mark.integration
def test_vasp_extension_adds_segments(tmp_path, standin_env, monkeypatch):  # noqa: F811
    from ionflow.dispatch import run_campaign
    from ionflow.store import LocalServer

    monkeypatch.setenv("IONFLOW_STANDIN_STEP_DELAY_S", "0.0")
    spec = tmp_path / "workflows.yaml"
    spec.write_text(SPEC.format(structure=REPO / "examples" / "Li3N.cif"))
    data = tmp_path / "ionflow-data"
    try:
        result = run_campaign(spec, data_dir=data, progress=False, echo=lambda *a: None)
        db = result["database"]
        lp = db.launchpad()
        states = [
            fw["state"] for fw in lp.fireworks.find({"spec.ionflow_campaign": "vasp-adaptive"})
        ]
        assert states and set(states) == {"COMPLETED"}, states
        with db.client() as client:
            mdb = client[db.database]
            outs = {
                d["name"]: d["output"]
                for d in mdb["outputs"].find(
                    {"output.engine": "vasp", "output.trajectory": {"$exists": True}}
                )
            }
            summary = mdb["summaries"].find_one({"campaign": "vasp-adaptive"}, {"_id": 0})
        first = next(o for n, o in outs.items() if "ext" not in n)
        ext = next(o for n, o in outs.items() if "ext 0.1ps" in n)
        # first chunk: 5 + 30 steps in 2 segments (20 + 15); the extension adds 20 steps
        assert first["md"]["steps_done"] == 35 and [s["steps"] for s in first["segments"]] == [
            20,
            15,
        ]
        steps = [s["steps"] for s in ext["segments"]]
        assert sum(steps) == ext["md"]["steps_done"] == 55 and len(steps) == 3
        # the same segment directories, continued (not rerun)
        assert [s["dir"] for s in ext["segments"][:2]] == [s["dir"] for s in first["segments"]]
        # production frames, one every 2 steps: 30/2 = 15, then 50/2 = 25 (15 + 10 more)
        assert first["trajectory"]["n_frames"] == 15
        assert ext["trajectory"]["n_frames"] == 25 and ext["md"]["duplicate_frames_dropped"] == 0
        assert ext["production_ps"] == pytest.approx(0.1)
        _check_joins_any(ext)
        run = summary["free"]["runs"][0]
        assert run["production_ps"] == pytest.approx(0.1)
        assert run["duration_ps"] == pytest.approx(24 * 0.004)  # the analysis covers all 25
        assert any("900 K extended 0.06 → 0.1 ps" in line for line in summary["decisions"])
        # compute: VASP's elapsed time × cores over every segment (the stand-in: 1 core)
        from ionflow.vasp import segment_compute

        timed = [segment_compute(seg["dir"]) for seg in ext["segments"]]
        assert all(e is not None and c == 1 for e, c in timed)
        assert ext["compute"]["core_hours"] == pytest.approx(sum(e for e, _ in timed) / 3600)
        assert (
            ext["compute"]["atom_steps"]
            == ext["md"]["steps_done"] * first["compute"]["atom_steps"] / first["md"]["steps_done"]
        )
        assert run["core_hours"] == pytest.approx(ext["compute"]["core_hours"])
    finally:
        server = LocalServer.running(data)
        if server is not None:
            server.stop()


def _check_joins_any(out: dict) -> None:
    """Every segment starts at the previous CONTCAR (no gap, no duplicated step)."""
    from ionflow.vasp import chain_segments, read_contcar

    dirs = [s["dir"] for s in out["segments"]]
    chain = chain_segments(dirs, equilibration_steps=0, frame_stride_steps=1)
    inv = np.linalg.inv(chain.lattice)
    for prev, nxt in zip(dirs[:-1], dirs[1:], strict=True):
        contcar = read_contcar(prev)
        start = chain_segments([nxt], equilibration_steps=0).positions[0] @ inv
        d = contcar.frac_coords - start
        d -= np.round(d)
        assert np.abs(d).max() < 1e-6


def test_segment_compute_reads_vasp_timing(tmp_path):
    """Known answer: 1800 s on 64 cores = 32 core-h; gzipped OUTCAR; a killed run (no
    timing) is None, not guessed."""
    import gzip

    from ionflow.vasp import segment_compute

    run = tmp_path / "run"
    run.mkdir()
    with gzip.open(run / "OUTCAR.gz", "wt") as fh:
        fh.write(" running on   64 total cores\n ...\n")
        fh.write("                         Elapsed time (sec):     1800.000\n")
    elapsed, cores = segment_compute(run)
    assert (elapsed, cores) == (1800.0, 64) and elapsed * cores / 3600 == 32
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "OUTCAR").write_text(" running on    8 total cores\n")
    assert segment_compute(killed) == (None, 8)
    assert segment_compute(tmp_path / "missing") == (None, None)
