"""VASP engine: protocol INCARs, `ionflow inputs`, the stand-in, custodian's walltime stop,
atomate2 jobs with reference inputs keyed by job tag, and a campaign end to end.

No VASP and no POTCAR here: inputs are written with POTCAR.spec, and VASP is replaced either
by the stand-in executable (``python -m ionflow.vasp_standin``, run by the real custodian) or,
the atomate2 way, by a monkeypatched ``run_vasp`` that first checks the job's inputs against
``tests/vasp_reference/<material>/<tag>/inputs`` (the tag is the job's
``ionflow_vasp_tag`` metadata, not its display name) and then runs the stand-in in-process.

Regenerate the reference inputs after an intended protocol change with
``python tests/test_vasp.py --regenerate``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REF = Path(__file__).resolve().parent / "vasp_reference"
REF_CAMPAIGN = REF / "campaign.yaml"
STANDIN = f"{sys.executable} -m ionflow.vasp_standin"

pytestmark = pytest.mark.filterwarnings("ignore")


# ------------------------------------------------------------------------ helpers


def _structure(name: str):
    from ionflow.structure import load_structure

    return load_structure(REPO / "examples" / name)


def _incar(path: Path) -> dict:
    from pymatgen.io.vasp import Incar

    return dict(Incar.from_file(path))


def _poscar(path: Path):
    from pymatgen.io.vasp import Poscar

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return Poscar.from_str(fh.read())


def _cli(main, args: list[str]) -> int:
    """Exit code of the ionflow CLI run in-process."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def standin_env(monkeypatch):
    """Worker environment: the stand-in as VASP, fast custodian polling."""
    monkeypatch.setenv("IONFLOW_VASP_CMD", STANDIN)
    monkeypatch.delenv("IONFLOW_VASP_GAMMA_CMD", raising=False)
    monkeypatch.setenv("IONFLOW_CUSTODIAN_POLLING_S", "0.05")
    monkeypatch.setenv("IONFLOW_CUSTODIAN_MONITOR_FREQ", "1")
    for key in ("IONFLOW_WALLTIME_END", "SLURM_JOB_END_TIME", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)


def _write_md_inputs(directory: Path, structure, nsw: int, temperature_k=600.0, dt=2.0, extra=None):
    from ionflow.makers.vasp import VaspMDSegmentMaker

    seg = VaspMDSegmentMaker(
        temperature_k=temperature_k, time_step_fs=dt, nsteps=nsw, incar_overrides=extra or {}
    )
    gen, _ = seg.input_set_generator_for(structure)
    gen.get_input_set(structure, potcar_spec=True).write_input(directory)
    return directory


def _li3n_supercell(min_width=5.0):
    from ionflow.structure import make_supercell

    sc, _ = make_supercell(_structure("Li3N.cif"), min_width)
    return sc


# ---------------------------------------------------------------- protocol (pure)


def test_relax_incar_is_the_seed003_protocol_key_by_key():
    from ionflow.vasp import relax_incar

    settings, record = relax_incar(_structure("Li6PS5Cl.cif"))
    expected = {
        "GGA": "PE",
        "ENCUT": 520.0,
        "ENAUG": 780.0,
        "ISIF": 3,
        "IBRION": 2,
        "EDIFF": 1e-5,
        "EDIFFG": -0.01,
        "ISPIN": 1,
        "MAGMOM": None,
    }
    for key, value in expected.items():
        assert settings[key] == value, key
    assert record == {}


def test_md_incar_protocol_and_derived_keys():
    from ionflow.errors import UserInputError
    from ionflow.vasp import md_incar

    settings, _ = md_incar(_structure("Li6PS5Cl.cif"), 800.0, 1.0, 10000)
    expected = {
        "GGA": "PE",
        "ENCUT": 520.0,
        "IBRION": 0,
        "MDALGO": 2,
        "SMASS": 0,
        "ISIF": 2,
        "ISYM": 0,
        "ISPIN": 1,
        "POTIM": 1.0,
        "TEBEG": 800.0,
        "TEEND": 800.0,
        "NSW": 10000,
        "EDIFF": 1e-5,
    }
    for key, value in expected.items():
        assert settings[key] == value, key
    for key in ("NSW", "POTIM", "TEBEG", "TEEND"):
        with pytest.raises(UserInputError, match=key):
            md_incar(_structure("Li3N.cif"), 600.0, 1.0, 10, {key: 5})
        with pytest.raises(UserInputError, match=key):
            md_incar(_structure("Li3N.cif"), 600.0, 1.0, 10, {"MD": {key: 5}})


def test_magnetic_ions_switch_on_spin_polarisation():
    from pymatgen.core import Lattice, Structure

    from ionflow.makers.vasp import VaspMDSegmentMaker, VaspRelaxMaker
    from ionflow.vasp import magnetic_species, spin_settings

    licrcl = Structure(
        Lattice.cubic(5.2),
        ["Li", "Cr", "Cl", "Cl"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]],
    )
    assert magnetic_species(licrcl) == ["Cr"]
    assert spin_settings(licrcl) == {"ISPIN": 2, "MAGMOM": {"Li": 0.0, "Cr": 5.0, "Cl": 0.0}}
    assert spin_settings(_structure("Li6PS5Cl.cif"))["ISPIN"] == 1
    for maker in (VaspRelaxMaker(primitive=False), VaspMDSegmentMaker(nsteps=5)):
        gen, _ = maker.input_set_generator_for(licrcl)
        incar = gen.get_input_set(licrcl, potcar_spec=True)["INCAR"]
        assert incar["ISPIN"] == 2
        order = [site.specie.symbol for site in licrcl.get_sorted_structure()]
        assert incar["MAGMOM"] == [5.0 if s == "Cr" else 0.0 for s in order]


def test_overrides_are_scoped_recorded_and_can_remove_keys():
    from ionflow.errors import UserInputError
    from ionflow.vasp import md_incar, relax_incar, split_incar_overrides

    incar = {"encut": 600, "RELAX": {"nsw": 200}, "MD": {"LREAL": False, "SIGMA": None}}
    common, relax_only, md_only = split_incar_overrides(incar)
    assert common == {"ENCUT": 600} and relax_only == {"NSW": 200}
    assert md_only == {"LREAL": False, "SIGMA": None}
    relax, rec = relax_incar(_structure("Li3N.cif"), incar)
    assert relax["ENCUT"] == 600 and relax["NSW"] == 200 and relax["LREAL"] is False
    assert rec == {
        "ENCUT": {"protocol": 520.0, "value": 600},
        "NSW": {"protocol": 99, "value": 200},
    }
    md, rec = md_incar(_structure("Li3N.cif"), 600.0, 2.0, 10, incar)
    assert md["ENCUT"] == 600 and md["LREAL"] is False and md["SIGMA"] is None
    assert set(rec) == {"ENCUT", "LREAL", "SIGMA"}
    with pytest.raises(UserInputError, match="RELAX"):
        split_incar_overrides({"RELAX": 5})


def test_segment_plans():
    from ionflow.errors import UserInputError
    from ionflow.vasp import plan_md_segments, segment_steps_for_walltime

    plan = plan_md_segments(1.0, 10.0, 60.0, 10, segment_steps=10000)
    assert plan.total_steps == 70000 and plan.equilibration_steps == 10000
    assert plan.segments == (10000,) * 7
    assert plan.n_production_frames == 6000
    assert plan_md_segments(1.0, 10.0, 60.0, segment_steps=30000).segments == (30000, 30000, 10000)
    assert plan_md_segments(1.0, 10.0, 60.0).segments == (70000,)
    # 24 h allocation, 5 s per step, 300 s buffer, 90 % safety → 15498 steps
    assert segment_steps_for_walltime(86400, 5.0) == 15498
    walltime = plan_md_segments(1.0, 10.0, 60.0, walltime_s=86400, seconds_per_step=5.0)
    assert walltime.segments == (15498,) * 4 + (70000 - 4 * 15498,)
    with pytest.raises(UserInputError):
        segment_steps_for_walltime(200, 5.0)


def test_slurm_time_left_parsing_and_sources():
    from ionflow.vasp import allocation_seconds_left, parse_slurm_duration

    assert parse_slurm_duration("1-02:03:04") == 93784
    assert parse_slurm_duration("02:03:04") == 7384
    assert parse_slurm_duration("03:04") == 184
    assert parse_slurm_duration("5") == 300
    assert parse_slurm_duration("UNLIMITED") is None
    assert allocation_seconds_left({"IONFLOW_WALLTIME_END": "1100"}, now=1000.0) == 100.0
    assert allocation_seconds_left({}, now=0.0) is None

    class Out:
        returncode = 0
        stdout = "1:00:00\n"

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return Out()

    assert allocation_seconds_left({"SLURM_JOB_ID": "42"}, now=0.0, run=fake_run) == 3600
    assert calls == [["squeue", "-h", "-j", "42", "-o", "%L"]]


def test_walltime_handler_fires_once_from_deadline_or_step_time(tmp_path, monkeypatch):
    import ionflow.vasp as iv
    from ionflow.makers.vasp import StopBeforeWalltimeHandler

    monkeypatch.setattr(iv, "allocation_seconds_left", lambda *a, **k: None)
    handler = StopBeforeWalltimeHandler(wall_time_s=3600, buffer_s=60)
    assert not handler.check(str(tmp_path))  # plenty of time, no OUTCAR yet
    # the slowest ionic step took 1500 s: 3 × 1500 > 3600 - elapsed → stop now
    (tmp_path / "OUTCAR").write_text("      LOOP+:  cpu time   1500.0: real time   1500.0\n")
    assert handler.check(str(tmp_path))
    result = handler.correct(str(tmp_path))
    assert result["actions"] is None and "Walltime" in result["errors"][0]
    assert "LSTOP = .TRUE." in (tmp_path / "STOPCAR").read_text()
    assert not handler.check(str(tmp_path))  # fires once
    monkeypatch.setattr(iv, "allocation_seconds_left", lambda *a, **k: 10.0)
    assert StopBeforeWalltimeHandler(buffer_s=60).check(str(tmp_path))
    assert StopBeforeWalltimeHandler.from_dict(handler.as_dict()).buffer_s == 60


# ------------------------------------------------------------------- stand-in


def test_standin_outputs_parse_with_pymatgen_and_emmet(tmp_path):
    from emmet.core.tasks import TaskDoc
    from pymatgen.io.vasp import Oszicar, Outcar, Vasprun, Xdatcar

    from ionflow.structure import with_selective_dynamics
    from ionflow.vasp_standin import run

    sc = _li3n_supercell()
    fixed = [i for i, s in enumerate(sc) if s.specie.symbol == "N"]
    _write_md_inputs(tmp_path, with_selective_dynamics(sc, fixed), nsw=8)
    result = run(tmp_path, stdout=open(tmp_path / "vasp.out", "w"))
    assert result.mode == "md" and result.n_ionic_steps == 8 and not result.stopped_by_stopcar
    vr = Vasprun(tmp_path / "vasprun.xml")
    assert len(vr.ionic_steps) == 8 and vr.converged and not vr.is_spin
    assert vr.parameters["NBANDS"] > 0 and vr.eigenvalues and vr.tdos is not None
    assert vr.eigenvalue_band_properties[0] == pytest.approx(2.0)  # fake insulator gap
    assert np.allclose(vr.ionic_steps[0]["structure"].frac_coords, vr.initial_structure.frac_coords)
    out = Outcar(tmp_path / "OUTCAR")
    assert out.data["nbands"] == vr.parameters["NBANDS"] and out.run_stats["Elapsed time (sec)"]
    osz = Oszicar(tmp_path / "OSZICAR")
    assert len(osz.ionic_steps) == 8 and "T" in osz.ionic_steps[0]
    assert len(Xdatcar(tmp_path / "XDATCAR").structures) == 8
    contcar = _poscar(tmp_path / "CONTCAR")
    assert contcar.velocities is not None and np.any(contcar.velocities)
    flags = np.asarray(contcar.structure.site_properties["selective_dynamics"])
    assert not flags[fixed].any() and flags[[i for i in range(len(sc)) if i not in fixed]].all()
    # fixed atoms never moved, never had a velocity
    first = vr.ionic_steps[0]["structure"].frac_coords[fixed]
    assert np.allclose(contcar.structure.frac_coords[fixed], first, atol=1e-9)
    assert np.allclose(np.asarray(contcar.velocities)[fixed], 0.0)
    doc = TaskDoc.from_directory(tmp_path)
    assert doc.task_type.value == "Molecular Dynamics" and doc.run_type.value == "PBE"
    assert "velocities" in doc.structure.site_properties


def test_standin_reads_pymatgen_inputs_like_pymatgen(tmp_path):
    from pymatgen.io.vasp import Incar, Poscar

    from ionflow.structure import free_degrees_of_freedom, with_selective_dynamics
    from ionflow.vasp_standin import _free_dof, _parse_incar, _parse_poscar

    text = "ENCUT = 520 # cutoff\nMAGMOM = 2*5.0 3*0.0; ISPIN = 2\nLREAL = Auto\nLWAVE = .FALSE.\n"
    text += "EDIFF = 1e-05\nGGA = Pe\nLCHARG = False\nNSW = 10\n"
    mine = _parse_incar(text)
    ref = Incar.from_str(text)
    assert mine == {k: ref[k] for k in ref}
    sc = _li3n_supercell()
    fixed = [0, 3, 12]
    poscar = Poscar(
        with_selective_dynamics(sc, fixed), velocities=np.full((len(sc), 3), 0.01).tolist()
    )
    cell, species, types, selective, velocities, _ = _parse_poscar(poscar.get_str(), [])
    assert species == [s.specie.symbol for s in poscar.structure]
    assert np.allclose(cell.frac, poscar.structure.frac_coords)
    assert np.allclose(cell.lattice, poscar.structure.lattice.matrix)
    assert np.flatnonzero(~selective.any(axis=1)).tolist() == fixed
    assert np.allclose(velocities, 0.01)
    for n, k in ((16, 0), (16, 4), (5, 5)):
        assert _free_dof(n, k) == max(free_degrees_of_freedom(n, k), 1)


def test_standin_relaxation(tmp_path):
    from emmet.core.tasks import TaskDoc
    from pymatgen.io.vasp import Vasprun

    from ionflow.makers.vasp import VaspRelaxMaker
    from ionflow.vasp_standin import run

    maker = VaspRelaxMaker()
    li3n = maker.prepare(_structure("Li3N.cif"))
    gen, _ = maker.input_set_generator_for(li3n)
    gen.get_input_set(li3n, potcar_spec=True).write_input(tmp_path)
    result = run(tmp_path, stdout=open(tmp_path / "vasp.out", "w"))
    assert result.mode == "relax" and result.converged and 1 < result.n_ionic_steps < 99
    vr = Vasprun(tmp_path / "vasprun.xml")
    assert vr.converged_ionic and len(vr.ionic_steps) == result.n_ionic_steps
    doc = TaskDoc.from_directory(tmp_path)
    assert doc.state.value == "successful" and doc.task_type.value == "Structure Optimization"
    assert doc.structure.volume != pytest.approx(li3n.volume)  # the cell relaxed too


def test_standin_stops_at_stopcar(tmp_path):
    from pymatgen.io.vasp import Vasprun

    from ionflow.vasp_standin import run

    _write_md_inputs(tmp_path, _li3n_supercell(), nsw=20)
    (tmp_path / "STOPCAR").write_text("LSTOP = .TRUE.\n")
    result = run(tmp_path, stdout=open(tmp_path / "vasp.out", "w"))
    assert result.stopped_by_stopcar and result.n_ionic_steps == 1
    vr = Vasprun(tmp_path / "vasprun.xml")  # complete, valid file
    assert len(vr.ionic_steps) == 1 and not vr.converged_ionic  # emmet: "failed" MD


def test_chained_segments_equal_one_run_no_gap_no_duplicate(tmp_path):
    """NVE (deterministic) 20 steps in one run == 12 + 8 chained through CONTCAR."""
    from ionflow.vasp import chain_segments
    from ionflow.vasp_standin import run

    nve = {"MD": {"SMASS": -3, "MDALGO": 1}}
    sc = _li3n_supercell()
    one = _write_md_inputs(tmp_path / "one", sc, 20, extra=nve)
    run(one, stdout=open(one / "vasp.out", "w"))
    a = _write_md_inputs(tmp_path / "a", sc, 12, extra=nve)
    run(a, stdout=open(a / "vasp.out", "w"))
    b = tmp_path / "b"
    shutil.copytree(
        a, b, ignore=shutil.ignore_patterns("vasprun.xml", "OUTCAR", "OSZICAR", "XDATCAR")
    )
    (b / "CONTCAR").rename(b / "POSCAR")
    incar = (b / "INCAR").read_text().replace("NSW = 12", "NSW = 8")
    (b / "INCAR").write_text(incar)
    run(b, stdout=open(b / "vasp.out", "w"))
    ref = chain_segments([one], equilibration_steps=0, frame_stride_steps=1)
    chained = chain_segments([a, b], equilibration_steps=0, frame_stride_steps=1)
    assert chained.steps_per_segment == [12, 8] and chained.duplicates_dropped == 0
    assert chained.positions.shape == ref.positions.shape == (20, len(sc), 3)
    assert np.abs(chained.positions - ref.positions).max() < 1e-4
    # production selection: stride continuous across the join (steps 5, 8, 11, 14, 17)
    prod = chain_segments([a, b], equilibration_steps=5, frame_stride_steps=3)
    assert prod.frame_steps.tolist() == [5, 8, 11, 14, 17]
    assert np.allclose(prod.positions, ref.positions[[5, 8, 11, 14, 17]], atol=1e-4)
    # a repeated frame at a join (a VASP build writing the last frame twice) is dropped
    dup = tmp_path / "dup"
    shutil.copytree(b, dup)
    text = (a / "vasprun.xml").read_text()
    last_calc = text[text.rindex("<calculation>") : text.rindex("</calculation>") + 14]
    body = (dup / "vasprun.xml").read_text()
    i = body.index("<calculation>")
    (dup / "vasprun.xml").write_text(body[:i] + last_calc + "\n " + body[i:])
    deduped = chain_segments([a, dup], equilibration_steps=0, frame_stride_steps=1)
    assert deduped.duplicates_dropped == 1 and deduped.steps_done == 20


def test_custodian_walltime_stop_keeps_the_segment(tmp_path, standin_env, monkeypatch):
    """Real custodian + the stand-in: the walltime handler's STOPCAR ends VASP early and
    cleanly; custodian does not raise and does not rerun; outputs are complete."""
    from atomate2.vasp.run import run_vasp
    from monty.os import cd
    from pymatgen.io.vasp import Vasprun

    import ionflow.vasp as iv
    from ionflow.makers.vasp import StopBeforeWalltimeHandler, VaspMDSegmentMaker, _runtime_maker

    monkeypatch.setenv("IONFLOW_STANDIN_STEP_DELAY_S", "0.05")
    monkeypatch.setattr(iv, "allocation_seconds_left", lambda *a, **k: 0.0)  # "end of job"
    _write_md_inputs(tmp_path, _li3n_supercell(), nsw=30)
    maker = _runtime_maker(VaspMDSegmentMaker(), walltime_handler=True)
    kwargs = maker.run_vasp_kwargs
    assert any(isinstance(h, StopBeforeWalltimeHandler) for h in kwargs["handlers"])
    with cd(tmp_path):
        run_vasp(**kwargs)
    vr = Vasprun(tmp_path / "vasprun.xml")
    assert 1 <= len(vr.ionic_steps) < 30
    assert (tmp_path / "STOPCAR").exists()
    log = json.loads((tmp_path / "custodian.json").read_text())
    assert len(log) == 1  # one VASP run, no custodian restart
    errors = [e for c in log[0]["corrections"] for e in c["errors"]]
    assert any("Walltime" in e for e in errors)


# -------------------------------------------------------- `ionflow inputs` + references


def _compare_inputs(generated: Path, reference: Path) -> None:
    """INCAR key by key, KPOINTS, POSCAR (species, coordinates, selective dynamics),
    POTCAR.spec; a ``POSCAR.from`` note instead of a POSCAR must match too."""
    assert _incar(generated / "INCAR") == _incar(reference / "INCAR")
    from pymatgen.io.vasp import Kpoints

    kg, kr = Kpoints.from_file(generated / "KPOINTS"), Kpoints.from_file(reference / "KPOINTS")
    assert (kg.style, kg.kpts) == (kr.style, kr.kpts)
    assert (generated / "POTCAR.spec").read_text().split() == (
        reference / "POTCAR.spec"
    ).read_text().split()
    if (reference / "POSCAR").exists():
        pg, pr = _poscar(generated / "POSCAR"), _poscar(reference / "POSCAR")
        assert pg.site_symbols == pr.site_symbols and pg.natoms == pr.natoms
        assert np.allclose(pg.structure.lattice.matrix, pr.structure.lattice.matrix, atol=1e-6)
        assert np.allclose(pg.structure.frac_coords, pr.structure.frac_coords, atol=1e-6)
        sel_g = pg.structure.site_properties.get("selective_dynamics")
        sel_r = pr.structure.site_properties.get("selective_dynamics")
        assert (sel_g is None) == (sel_r is None)
        if sel_r is not None:
            assert np.array_equal(np.asarray(sel_g), np.asarray(sel_r))
    else:
        assert not (generated / "POSCAR").exists()
        assert (generated / "POSCAR.from").read_text() == (reference / "POSCAR.from").read_text()


def test_ionflow_inputs_writes_the_reference_inputs(tmp_path):
    from ionflow.cli import main

    assert _cli(main, ["inputs", str(REF_CAMPAIGN), "--out", str(tmp_path)]) == 0
    tags = sorted(p.name for p in (tmp_path / "Li6PS5Cl").iterdir() if p.is_dir())
    ref_tags = sorted(p.name for p in (REF / "Li6PS5Cl").iterdir() if p.is_dir())
    assert (
        tags
        == ref_tags
        == [
            "md_free_600K_s01",
            "md_free_600K_s02",
            "md_pinned_600K_s01",
            "md_pinned_600K_s02",
            "relax",
        ]
    )
    for tag in tags:
        _compare_inputs(tmp_path / "Li6PS5Cl" / tag, REF / "Li6PS5Cl" / tag / "inputs")
    plan = json.loads((tmp_path / "Li6PS5Cl" / "plan.json").read_text())
    assert [j["nsw"] for j in plan["jobs"] if j["stage"] == "md"] == [35000] * 4


def test_reference_inputs_follow_the_protocol():
    """The committed Li6PS5Cl inputs, key by key: relax, MD, pinned MD, second segment."""
    from pymatgen.io.vasp import Kpoints

    from ionflow.structure import classify_anions, perpendicular_widths

    base = REF / "Li6PS5Cl"
    relax = _incar(base / "relax/inputs/INCAR")
    for key, value in {
        "GGA": "Pe",
        "ENCUT": 520.0,
        "ENAUG": 780.0,
        "ISIF": 3,
        "IBRION": 2,
        "EDIFF": 1e-5,
        "EDIFFG": -0.01,
        "ISPIN": 1,
    }.items():
        assert relax[key] == value, key
    assert "MAGMOM" not in relax and "METAGGA" not in relax
    assert (base / "relax/inputs/POTCAR.spec").read_text().split() == ["Li_sv", "P", "S", "Cl"]
    assert len(_poscar(base / "relax/inputs/POSCAR").structure) == 52  # the primitive cell

    for variant in ("free", "pinned"):
        d = base / f"md_{variant}_600K_s01/inputs"
        md = _incar(d / "INCAR")
        for key, value in {
            "GGA": "Pe",
            "ENCUT": 520.0,
            "IBRION": 0,
            "MDALGO": 2,
            "SMASS": 0,
            "ISIF": 2,
            "ISYM": 0,
            "ISPIN": 1,
            "POTIM": 1.0,
            "TEBEG": 600.0,
            "TEEND": 600.0,
            "NSW": 35000,
        }.items():
            assert md[key] == value, (variant, key)
        kp = Kpoints.from_file(d / "KPOINTS")
        assert kp.style == Kpoints.supported_modes.Gamma and tuple(kp.kpts[0]) == (1, 1, 1)
        s = _poscar(d / "POSCAR").structure
        assert len(s) == 104 and min(perpendicular_widths(s.lattice)) >= 10.0
        flags = s.site_properties.get("selective_dynamics")
        if variant == "free":
            assert flags is None
            continue
        flags = np.asarray(flags)
        fixed = np.flatnonzero(~flags.any(axis=1))
        assert np.array_equal(flags.all(axis=1), ~(~flags).all(axis=1))  # only FFF or TTT
        bonded = sorted(classify_anions(s, "Li").bonded_indices)
        assert fixed.tolist() == bonded and len(bonded) == 32
        assert {s[i].specie.symbol for i in fixed} == {"S"}
    s02 = _incar(base / "md_pinned_600K_s02/inputs/INCAR")
    assert s02 == _incar(base / "md_pinned_600K_s01/inputs/INCAR")
    assert "md_pinned_600K_s01" in (base / "md_pinned_600K_s02/inputs/POSCAR.from").read_text()


def test_inputs_without_vasp_engine_is_a_user_error(tmp_path):
    from ionflow.cli import main

    spec = tmp_path / "c.yaml"
    spec.write_text(
        REF_CAMPAIGN.read_text()
        .replace("engine: {relax: vasp, md: vasp}", "engine: toy")
        .replace("../../examples", str(REPO / "examples"))
    )
    assert _cli(main, ["inputs", str(spec), "--out", str(tmp_path / "out")]) == 2


def test_makers_serialise_under_ionflow_and_replace():
    from ionflow.makers.vasp import VaspMDMaker, VaspMDSegmentMaker, VaspRelaxMaker

    for maker in (VaspRelaxMaker(), VaspMDSegmentMaker(), VaspMDMaker()):
        d = maker.as_dict()
        assert d["@module"] == "ionflow.makers.vasp"
        assert type(maker).from_dict(d).as_dict() == d
    md = replace(
        VaspMDMaker(),
        name="md X pinned 800K",
        temperature_k=800.0,
        variant="pinned",
        campaign="c",
        material="X",
    )
    assert md.segment_maker(10, 3).tag == "md_pinned_800K_s03"


def test_real_runs_say_what_is_missing(monkeypatch):
    from pymatgen.core import SETTINGS as PMG_SETTINGS

    from ionflow.makers.vasp import VaspMDSegmentMaker, _runtime_maker

    monkeypatch.setenv("IONFLOW_VASP_CMD", "no-such-vasp-binary")
    with pytest.raises(RuntimeError, match="IONFLOW_VASP_CMD"):
        _runtime_maker(VaspMDSegmentMaker(), walltime_handler=True)
    monkeypatch.setenv("IONFLOW_VASP_CMD", shutil.which("true"))
    monkeypatch.delenv("IONFLOW_VASP_POTCAR_SPEC", raising=False)
    monkeypatch.setitem(PMG_SETTINGS, "PMG_VASP_PSP_DIR", None)
    with pytest.raises(RuntimeError, match="PMG_VASP_PSP_DIR"):
        _runtime_maker(VaspMDSegmentMaker(), walltime_handler=True)
    monkeypatch.setenv("IONFLOW_VASP_POTCAR_SPEC", "1")
    maker = _runtime_maker(VaspMDSegmentMaker(), walltime_handler=True)
    assert maker.write_input_set_kwargs == {"from_prev": False, "potcar_spec": True}
    assert maker.run_vasp_kwargs["vasp_cmd"] == maker.run_vasp_kwargs["vasp_gamma_cmd"]


def test_campaign_flow_selects_the_vasp_makers():
    from ionflow.campaign import build_material_flow
    from ionflow.makers.vasp import VaspMDMaker, VaspRelaxMaker
    from ionflow.spec import load_campaign

    spec, (mat,) = load_campaign(REF_CAMPAIGN)
    flow = build_material_flow(spec, mat, Path("unused"))
    names = [j.name for j in flow.jobs]
    assert names[0] == "relax Li6PS5Cl" and names[1] == "supercell Li6PS5Cl"
    md_flows = [j for j in flow.jobs if j.name.startswith("md Li6PS5Cl")]
    assert [f.name for f in md_flows] == ["md Li6PS5Cl free 600K", "md Li6PS5Cl pinned 600K"]
    seg_names = [j.name for j in md_flows[1].jobs[1].jobs]
    assert seg_names == [
        "md Li6PS5Cl pinned 600K seg 1",
        "md Li6PS5Cl pinned 600K seg 2",
        "md Li6PS5Cl pinned 600K segments output",
    ]
    tags = [j.metadata.get("ionflow_vasp_tag") for j in md_flows[1].jobs[1].jobs[:-1]]
    assert tags == ["md_pinned_600K_s01", "md_pinned_600K_s02"]
    relax_fn = flow.jobs[0].function
    assert isinstance(relax_fn.__self__, VaspRelaxMaker)
    md_maker = md_flows[0].jobs[-1].function.__self__
    assert isinstance(md_maker, VaspMDMaker) and md_maker.segment_steps == 35000
    assert md_maker.plan().segments == (35000, 35000)


# ------------------------------------------ atomate2 jobs, inputs checked by job tag


@pytest.fixture
def fake_vasp_by_tag(monkeypatch, standin_env):
    """atomate2-style fake VASP: check the inputs against the reference of the job's tag,
    then run the stand-in in-process (a few steps) to produce the outputs."""
    import atomate2.vasp.jobs.base
    import atomate2.vasp.run
    from atomate2.utils.testing.vasp import (
        _check_incar,
        _check_kpoints,
        _check_poscar,
        _check_potcar,
    )
    from jobflow import CURRENT_JOB
    from pymatgen.io.vasp import Incar

    from ionflow.makers.vasp import TAG_KEY
    from ionflow.vasp_standin import run

    seen: list[str] = []

    def fake_run_vasp(*args, **kwargs):
        tag = CURRENT_JOB.job.metadata[TAG_KEY]
        ref = REF / "Li6PS5Cl" / tag
        _check_incar(ref, None, None)
        _check_kpoints(ref)
        _check_potcar(ref)
        if (ref / "inputs" / "POSCAR").exists():
            _check_poscar(ref)
            sel = _poscar(ref / "inputs" / "POSCAR").structure.site_properties.get(
                "selective_dynamics"
            )
            mine = _poscar(Path("POSCAR")).structure.site_properties.get("selective_dynamics")
            assert (sel is None and mine is None) or np.array_equal(sel, mine)
        seen.append(tag)
        incar = Incar.from_file("INCAR")  # a short run of the stand-in for the outputs
        incar["NSW"] = min(int(incar["NSW"]), 3)
        if incar.get("IBRION") == 2:
            incar["EDIFFG"] = -100.0  # the relaxation "converges" at once
        incar.write_file("INCAR")
        with open("vasp.out", "w") as out:
            run(".", stdout=out)

    monkeypatch.setattr(atomate2.vasp.run, "run_vasp", fake_run_vasp)
    monkeypatch.setattr(atomate2.vasp.jobs.base, "run_vasp", fake_run_vasp)
    return seen


def test_atomate2_jobs_write_the_reference_inputs(tmp_path, fake_vasp_by_tag, monkeypatch):
    from jobflow import Flow, JobStore, run_locally
    from maggma.stores import MemoryStore

    from ionflow.makers.vasp import TAG_KEY, vasp_md_maker, vasp_relax_maker
    from ionflow.spec import load_campaign
    from ionflow.structure import make_supercell, pinned_indices, with_selective_dynamics

    spec, (mat,) = load_campaign(REF_CAMPAIGN)
    relax = vasp_relax_maker(spec, mat).make(mat.structure)
    relax.metadata[TAG_KEY] = "relax"
    sc, _ = make_supercell(mat.structure, mat.md.supercell_min_length_a)
    pinned, _ = pinned_indices(sc, "Li", "auto")
    md = replace(vasp_md_maker(spec, mat), temperature_k=600.0)
    jobs = [relax]
    for variant, structure in (("free", sc), ("pinned", with_selective_dynamics(sc, pinned))):
        run = replace(md, variant=variant)
        s1 = run.segment_maker(35000, 1).make(structure)
        s1.metadata[TAG_KEY] = run.segment_maker(35000, 1).tag
        s2 = run.segment_maker(35000, 2).make(s1.output.structure, prev_dir=s1.output.dir_name)
        s2.metadata[TAG_KEY] = run.segment_maker(35000, 2).tag
        jobs += [s1, s2]
    monkeypatch.chdir(tmp_path)
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    run_locally(Flow(jobs), store=store, create_folders=True, ensure_success=True)
    assert sorted(fake_vasp_by_tag) == sorted(
        [
            "relax",
            "md_free_600K_s01",
            "md_free_600K_s02",
            "md_pinned_600K_s01",
            "md_pinned_600K_s02",
        ]
    )
    store.connect()
    s1 = store.query_one({"metadata.ionflow_vasp_tag": "md_pinned_600K_s01"}, load=True)
    s2 = store.query_one({"metadata.ionflow_vasp_tag": "md_pinned_600K_s02"}, load=True)
    doc = s2["output"]
    assert doc["ionflow_vasp"]["tag"] == "md_pinned_600K_s02"  # recorded in the task document
    assert doc["state"] == "successful"
    # segment 2 starts from segment 1's CONTCAR, velocities included
    d1 = Path(s1["output"]["dir_name"].split(":", 1)[-1])
    d2 = Path(doc["dir_name"].split(":", 1)[-1])
    c1 = _poscar(d1 / "CONTCAR.gz")
    p2 = _poscar(d2 / "POSCAR.gz")
    assert np.allclose(c1.structure.frac_coords, p2.structure.frac_coords, atol=1e-8)
    assert np.allclose(np.asarray(c1.velocities), np.asarray(p2.velocities), atol=1e-9)


# ------------------------------------------------------------------- end to end


E2E_SPEC = """
campaign: vasp-standin
mobile_species: Li
engine: {{relax: vasp, md: vasp}}
md:
  temperatures_k: [600, 900]
  time_step_fs: 2.0
  equilibration_ps: 0.01
  production_ps: 0.06
  frame_interval_fs: 4.0
  supercell_min_length_a: 5.0
  pinned_control: {{species: [N]}}
  segment_steps: 20
vasp:
  incar: {{RELAX: {{NSW: 60}}}}
materials:
  - {{name: Li3N, structure: {structure}}}
"""


@pytest.mark.integration
def test_vasp_campaign_end_to_end_through_the_standin(tmp_path, standin_env, monkeypatch):
    """relax → 2 T × free/pinned MD, each in 2 segments of custodian + the stand-in; one
    segment stopped early by the walltime handler and continued; analysis and summary."""
    from jobflow import CURRENT_JOB

    import ionflow.vasp as iv
    from ionflow.dispatch import run_campaign
    from ionflow.store import LocalServer

    stopped_tag = "md_free_600K_s01"

    def allocation_left(*args, **kwargs):  # the allocation of that one job "ends now"
        job = CURRENT_JOB.job
        return (
            0.0 if job is not None and job.metadata.get("ionflow_vasp_tag") == stopped_tag else None
        )

    monkeypatch.setattr(iv, "allocation_seconds_left", allocation_left)
    monkeypatch.setenv("IONFLOW_STANDIN_STEP_DELAY_S", "0.02")
    spec = tmp_path / "workflows.yaml"
    spec.write_text(E2E_SPEC.format(structure=REPO / "examples" / "Li3N.cif"))
    data = tmp_path / "ionflow-data"
    t0 = time.time()
    try:
        result = run_campaign(spec, data_dir=data, progress=False, echo=lambda *a: None)
        db = result["database"]
        lp = db.launchpad()
        states = [
            fw["state"] for fw in lp.fireworks.find({"spec.ionflow_campaign": "vasp-standin"})
        ]
        assert states and set(states) == {"COMPLETED"}, states
        with db.client() as client:
            mdb = client[db.database]
            summary = mdb["summaries"].find_one({"campaign": "vasp-standin"}, {"_id": 0})
            assert summary is not None and summary["pinned"] is not None
            assert [r["temperature_k"] for r in summary["free"]["runs"]] == [600.0, 900.0]
            relax = mdb["outputs"].find_one({"metadata.ionflow_vasp_tag": "relax"})
            rec = relax["output"]["ionflow_vasp"]
            assert rec["incar_overrides"] == {"NSW": {"protocol": 99, "value": 60}}
            collected = [
                d["output"]
                for d in mdb["outputs"].find(
                    {"output.engine": "vasp", "output.trajectory": {"$exists": True}}
                )
            ]
            assert len(collected) == 4
            assert mdb["trajectories.files"].count_documents({}) == 4
            analyses = mdb["outputs"].count_documents({"name": {"$regex": "^analysis "}})
            assert analyses == 4
        for out in collected:
            md = out["md"]
            assert md["steps_done"] == md["total_steps"] == 35
            assert md["n_production_frames"] == out["trajectory"]["n_frames"] == 15
            assert out["trajectory"]["gridfs_id"] is not None
            assert md["duplicate_frames_dropped"] == 0
            steps = [s["steps"] for s in out["segments"]]
            assert len(steps) >= 2 and sum(steps) == 35
            if out["variant"] == "pinned":
                assert md["n_fixed_atoms"] == len(out["fixed_indices"]) > 0
            if out["variant"] == "free" and out["temperature_k"] == 600.0:
                # stopped after a step or two by the STOPCAR, then continued
                assert steps[0] < 20 and md["segments_added"] == 1, steps
            else:
                assert steps == [20, 15] and md["segments_added"] == 0
            _check_joins(out)
    finally:
        server = LocalServer.running(data)
        if server is not None:
            server.stop()
    assert time.time() - t0 < 900


def _check_joins(out: dict) -> None:
    """Every segment starts at the previous CONTCAR; the step across a join is an ordinary
    MD step (not zero: duplicate; not double: gap)."""
    from ionflow.vasp import chain_segments, read_contcar

    dirs = [s["dir"] for s in out["segments"]]
    chain = chain_segments(dirs, equilibration_steps=0, frame_stride_steps=1)
    assert chain.steps_done == 35 and chain.positions.shape[0] == 35
    inv = np.linalg.inv(chain.lattice)
    frac = chain.positions @ inv
    step = frac[1:] - frac[:-1]
    step -= np.round(step)
    size = np.linalg.norm(step @ chain.lattice, axis=2).max(axis=1)  # largest move per step
    joins = np.cumsum(chain.steps_per_segment)[:-1] - 1  # index of the step across each join
    typical = np.median(size)
    for j in joins:
        assert 0.3 * typical < size[j] < 3.0 * typical, (j, size[j], typical)
    for prev, nxt in zip(dirs[:-1], dirs[1:], strict=True):
        contcar = read_contcar(prev)
        first = chain_segments([nxt], equilibration_steps=0).positions[0] @ inv
        d = contcar.frac_coords - first
        d -= np.round(d)
        assert np.abs(d).max() < 1e-6


# ---------------------------------------------------------------- regeneration


def regenerate_reference() -> None:
    """Rewrite tests/vasp_reference/<material>/<tag>/inputs from `ionflow inputs`."""
    import tempfile

    from ionflow.cli.vasp_cmds import write_campaign_inputs

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = write_campaign_inputs(REF_CAMPAIGN, Path(tmp))
        for material, rows in summary.items():
            shutil.rmtree(REF / material, ignore_errors=True)
            for row in rows:
                src = Path(tmp) / material / row["directory"]
                shutil.copytree(src, REF / material / row["tag"] / "inputs")
            print(f"{material}: {len(rows)} jobs → {REF / material}")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate_reference()


def test_ml_md_job_rules_do_not_bind_vasp(tmp_path):
    """Whole saved frames in equilibration is the ML MD job's rule (MDSettings); VASP runs
    its own MD, so the same md block validates for engine vasp and is an error for chgnet."""
    from ionflow.spec import CampaignSpecError, load_campaign

    cif = Path(__file__).resolve().parents[1] / "examples" / "Li3N.cif"

    def spec(engine: str) -> Path:
        path = tmp_path / f"{engine}.yaml"
        path.write_text(
            f"campaign: c\nmobile_species: Li\nengine: {{relax: none, md: {engine}}}\n"
            "md: {temperatures_k: [600], time_step_fs: 2.0, frame_interval_fs: 4.0, "
            "equilibration_ps: 0.01, production_ps: 0.2}\n"
            f"materials:\n  - {{name: Li3N, structure: {cif}}}\n"
        )
        return path

    load_campaign(spec("vasp"))
    with pytest.raises(CampaignSpecError, match="not a whole number of saved frames"):
        load_campaign(spec("chgnet"))
