"""Streaming trajectory readers: every format round-trips known positions.

Each format is written by its own ecosystem (ase for extxyz/traj, pymatgen for
XDATCAR and Trajectory JSON, pymatgen-analysis-diffusion for DiffusionAnalyzer JSON,
numpy for npz/npy) or, for vasprun.xml, by a small writer below that pymatgen's
own ``Vasprun`` parser accepts.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ionflow.analysis.readers import (
    SUPPORTED_FORMATS,
    TrajectoryInfo,
    TruncatedTrajectoryWarning,
    open_trajectory,
)
from ionflow.errors import UserInputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pymatgen-analysis-diffusion"
SPECIES = ["Li", "Li", "P", "O", "O", "O", "Li", "S"]  # non-contiguous Li groups
N_ATOMS = len(SPECIES)
N_FRAMES = 7
LATTICE0 = np.array([[6.0, 0.0, 0.0], [0.4, 6.2, 0.0], [0.3, -0.2, 6.5]])


# --------------------------------------------------------------------------- data


def _trajectory(npt: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unwrapped Cartesian positions (F, N, 3) and lattices (F, 3, 3)."""
    rng = np.random.default_rng(seed)
    frac0 = rng.random((N_ATOMS, 3))
    pos = frac0 @ LATTICE0 + np.cumsum(rng.normal(0, 0.4, (N_FRAMES, N_ATOMS, 3)), axis=0)
    pos[0] = frac0 @ LATTICE0
    if npt:
        scale = 1.0 + 0.02 * np.sin(np.arange(N_FRAMES))
        lat = LATTICE0[None] * scale[:, None, None]
    else:
        lat = np.repeat(LATTICE0[None], N_FRAMES, axis=0)
    return pos, lat


def _assert_same_mod_lattice(a: np.ndarray, b: np.ndarray, lat: np.ndarray, atol: float) -> None:
    """Equal up to lattice translations (the format wraps into the cell)."""
    d = np.einsum("fnj,fji->fni", a - b, np.linalg.inv(lat))
    d -= np.round(d)
    cart = np.einsum("fni,fij->fnj", d, lat)
    assert np.abs(cart).max() < atol


def _atoms_list(pos, lat, info=None, fixed=None):
    from ase import Atoms
    from ase.constraints import FixAtoms

    images = []
    for p, m in zip(pos, lat, strict=True):
        a = Atoms(SPECIES, positions=p, cell=m, pbc=True)
        if info:
            a.info.update(info)
        if fixed is not None:
            a.set_constraint(FixAtoms(indices=fixed))
        images.append(a)
    return images


def write_extxyz(path, pos, lat, **info):
    import ase.io

    ase.io.write(path, _atoms_list(pos, lat, info, fixed=[2]), format="extxyz")


def write_traj(path, pos, lat, description=None, fixed=(2, 5)):
    from ase.io.trajectory import Trajectory

    t = Trajectory(str(path), "w")
    if description:
        t.set_description(description)
    for a in _atoms_list(pos, lat, fixed=list(fixed)):
        t.write(a)
    t.close()


def _pmg_trajectory(pos, lat, constant=True, **kwargs):
    from pymatgen.core import Structure
    from pymatgen.core.trajectory import Trajectory

    structs = [
        Structure(m, SPECIES, p, coords_are_cartesian=True, site_properties=kwargs.pop("sp", None))
        for p, m in zip(pos, lat, strict=True)
    ]
    return Trajectory.from_structures(structs, constant_lattice=constant, **kwargs)


def write_xdatcar(path, pos, lat, constant=True):
    _pmg_trajectory(pos, lat, constant=constant).write_Xdatcar(str(path), significant_figures=8)


def write_vasprun(
    path,
    pos,
    lat,
    *,
    potim=2.0,
    tebeg=600.0,
    selective=None,
    params=None,
    version="6.4.3",
    ml_top_level=False,
    finish=True,
):
    """A minimal but realistically laid-out vasprun.xml (gzipped when path ends .gz)."""
    p = {"IBRION": "0", "POTIM": f"{potim:.8f}", "TEBEG": f"{tebeg:.8f}", "TEEND": f"{tebeg:.8f}"}
    p.update({"NSW": str(len(pos)), "ISIF": "2", "NBLOCK": "10", "SMASS": "0.0"})
    p.update(params or {})

    def vecs(rows, fmt="{:16.8f}"):
        return "\n".join("    <v>" + " ".join(fmt.format(x) for x in r) + " </v>" for r in rows)

    def crystal(m):
        return (
            '  <crystal>\n   <varray name="basis" >\n'
            + vecs(m)
            + f'\n   </varray>\n   <i name="volume">{abs(np.linalg.det(m)):.8f}</i>\n'
            + '   <varray name="rec_basis" >\n'
            + vecs(np.linalg.inv(m).T)
            + "\n   </varray>\n  </crystal>\n"
        )

    def structure(p_cart, m, name=None):
        frac = p_cart @ np.linalg.inv(m)
        attr = f' name="{name}"' if name else ""
        out = f" <structure{attr} >\n" + crystal(m)
        out += '  <varray name="positions" >\n' + vecs(frac) + "\n  </varray>\n"
        if selective is not None:
            flags = [" ".join("T" if f else "F" for f in row) for row in selective]
            out += '  <varray type="logical" name="selective" >\n'
            out += "\n".join(f'    <v type="logical" > {f} </v>' for f in flags)
            out += "\n  </varray>\n"
        return out + " </structure>\n"

    types = list(dict.fromkeys(SPECIES))
    lines = ['<?xml version="1.0" encoding="ISO-8859-1"?>', "<modeling>", " <generator>"]
    lines += [
        '  <i name="program" type="string">vasp </i>',
        f'  <i name="version" type="string">{version}  </i>',
        '  <i name="subversion" type="string">(build Jan 01 2024) complex serial </i>',
        '  <i name="platform" type="string">LinuxIFC </i>',
        '  <i name="date" type="string">2024 01 01 </i>',
        '  <i name="time" type="string">12:00:00 </i>',
        " </generator>",
        " <incar>",
        '  <i type="string" name="SYSTEM">test</i>',
    ]
    lines += [f'  <i name="{k}">{v}</i>' for k, v in p.items()]
    lines += [
        " </incar>",
        " <kpoints>",
        '  <generation param="Gamma">',
        '   <v type="int" name="divisions">       1        1        1 </v>',
        '   <v name="usershift">      0.00000000       0.00000000       0.00000000 </v>',
        "  </generation>",
        '  <varray name="kpointlist" >',
        "   <v>       0.00000000       0.00000000       0.00000000 </v>",
        "  </varray>",
        '  <varray name="weights" >',
        "   <v>       1.00000000 </v>",
        "  </varray>",
        " </kpoints>",
        " <parameters>",
        '  <separator name="general" >',
        '   <i type="string" name="SYSTEM">test</i>',
        "  </separator>",
        '  <separator name="electronic" >',
        '   <i type="int" name="NELM">     60</i>',
        '   <i name="EDIFF">      0.00001000</i>',
        "  </separator>",
        '  <separator name="ionic" >',
        f'   <i type="int" name="NSW">{p["NSW"]}</i>',
        '   <i name="EDIFFG">      0.00010000</i>',
        f'   <i type="int" name="IBRION">{p["IBRION"]}</i>',
        f'   <i name="POTIM">{p["POTIM"]}</i>',
        f'   <i type="int" name="ISIF">{p["ISIF"]}</i>',
        "  </separator>",
        '  <separator name="molecular dynamics" >',
        f'   <i name="TEBEG">{p["TEBEG"]}</i>',
        f'   <i name="TEEND">{p["TEEND"]}</i>',
        f'   <i name="SMASS">{p["SMASS"]}</i>',
        f'   <i type="int" name="NBLOCK">{p["NBLOCK"]}</i>',
        "  </separator>",
        " </parameters>",
        " <atominfo>",
        f"  <atoms>{len(SPECIES):8d} </atoms>",
        f"  <types>{len(types):8d} </types>",
        '  <array name="atoms" >',
        '   <dimension dim="1">ion</dimension>',
        '   <field type="string">element</field>',
        '   <field type="int">atomtype</field>',
        "   <set>",
    ]
    lines += [f"    <rc><c>{s:2s}</c><c>{types.index(s) + 1:4d}</c></rc>" for s in SPECIES]
    lines += [
        "   </set>",
        "  </array>",
        '  <array name="atomtypes" >',
        '   <dimension dim="1">type</dimension>',
        '   <field type="int">atomspertype</field>',
        '   <field type="string">element</field>',
        "   <field>mass</field>",
        "   <field>valence</field>",
        '   <field type="string">pseudopotential</field>',
        "   <set>",
    ]
    lines += [
        f"    <rc><c>{SPECIES.count(s):4d}</c><c>{s:2s}</c><c> 1.0</c><c> 1.0</c>"
        f"<c>  PAW_PBE {s} 01Jan2000</c></rc>"
        for s in types
    ]
    lines += ["   </set>", "  </array>", " </atominfo>"]
    text = "\n".join(lines) + "\n" + structure(pos[0], lat[0], "initialpos")
    for i, (pc, m) in enumerate(zip(pos, lat, strict=True)):
        energy = (
            ' <energy>\n  <i name="e_fr_energy">   -10.0 </i>\n'
            '  <i name="e_wo_entrp">   -10.0 </i>\n  <i name="e_0_energy">   -10.0 </i>\n'
            " </energy>\n"
        )
        forces = ' <varray name="forces" >\n' + vecs(np.zeros((N_ATOMS, 3))) + "\n </varray>\n"
        forces += ' <varray name="stress" >\n' + vecs(np.zeros((3, 3))) + "\n </varray>\n"
        if ml_top_level and i % 2 == 1:  # MLFF-predicted step: bare top-level blocks
            text += structure(pc, m) + forces + energy
            continue
        text += " <calculation>\n  <scstep>\n   <energy>\n"
        text += '    <i name="e_fr_energy">   -10.0 </i>\n   </energy>\n  </scstep>\n'
        text += structure(pc, m) + forces + energy
        text += ' <time name="totalsc">    0.10    0.10</time>\n </calculation>\n'
    if finish:
        text += structure(pos[-1], lat[-1], "finalpos") + "</modeling>\n"
    data = text.encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    Path(path).write_bytes(data)


def write_npz(path, pos, lat, compressed=False, **extra):
    save = np.savez_compressed if compressed else np.savez
    arrays = {"positions": pos, "lattice": lat, "species": np.array(SPECIES)}
    arrays.update(extra)
    save(path, **arrays)


def _read(src, chunk=4096):
    return src.read_all(chunk)


# --------------------------------------------------------------------------- per-format


@pytest.fixture
def nvt():
    return _trajectory(npt=False)


@pytest.fixture
def npt():
    return _trajectory(npt=True, seed=1)


def _check_common(info: TrajectoryInfo, fmt: str, lat: np.ndarray):
    assert info.format == fmt
    assert info.species == SPECIES
    assert info.n_frames == N_FRAMES
    assert info.n_atoms == N_ATOMS
    np.testing.assert_allclose(info.lattice, lat[0], atol=1e-6)


def test_supported_formats_listed():
    assert set(SUPPORTED_FORMATS) == {
        "extxyz",
        "ase-traj",
        "xdatcar",
        "vasprun",
        "pymatgen-trajectory",
        "diffusion-analyzer",
        "npz",
        "npy",
    }


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz"])
def test_extxyz_roundtrip(tmp_path, nvt, suffix):
    pos, lat = nvt
    path = tmp_path / f"md{suffix}"
    write_extxyz(path, pos, lat, temperature_k=650.0, frame_interval_fs=2.5)
    src = open_trajectory(path)
    _check_common(src.info, "extxyz", lat)
    assert src.info.frame_interval_fs == 2.5
    assert src.info.temperature_k == 650.0
    assert src.info.constant_lattice
    assert src.info.fixed_atoms.tolist() == [i == 2 for i in range(N_ATOMS)]
    p, m = _read(src)
    np.testing.assert_allclose(p, pos, atol=1e-7)  # unwrapped positions kept as written
    np.testing.assert_allclose(m, lat, atol=1e-7)


def test_extxyz_npt_and_time_step_alias(tmp_path, npt):
    pos, lat = npt
    path = tmp_path / "npt.xyz"
    write_extxyz(path, pos, lat, time_step_fs=1.0)
    src = open_trajectory(path)
    assert not src.info.constant_lattice
    assert src.info.frame_interval_fs == 1.0
    assert src.info.temperature_k is None
    p, m = _read(src, 3)
    np.testing.assert_allclose(m, lat, atol=1e-7)
    np.testing.assert_allclose(p, pos, atol=1e-7)


def test_traj_roundtrip(tmp_path, npt):
    pos, lat = npt
    path = tmp_path / "md.traj"
    write_traj(path, pos, lat, {"frame_interval_fs": 4.0, "temperature_k": 800})
    src = open_trajectory(path)
    _check_common(src.info, "ase-traj", lat)
    assert src.info.frame_interval_fs == 4.0
    assert src.info.temperature_k == 800.0
    assert not src.info.constant_lattice
    assert np.flatnonzero(src.info.fixed_atoms).tolist() == [2, 5]
    p, m = _read(src)
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(m, lat)


def test_traj_without_description(tmp_path, nvt):
    pos, lat = nvt
    path = tmp_path / "md.traj"
    write_traj(path, pos, lat)
    info = open_trajectory(path).info
    assert info.frame_interval_fs is None and info.temperature_k is None
    assert info.constant_lattice


@pytest.mark.parametrize("cut", [10, 60, 200])
def test_traj_truncated_last_frame_skipped(tmp_path, nvt, cut):
    pos, lat = nvt
    good = tmp_path / "good.traj"
    write_traj(good, pos, lat)
    data = good.read_bytes()
    bad = tmp_path / "killed.traj"
    bad.write_bytes(data[:-cut])
    with pytest.warns(TruncatedTrajectoryWarning, match="killed.traj"):
        src = open_trajectory(bad)
    assert src.info.n_frames == N_FRAMES - 1
    p, _ = _read(src, 2)
    np.testing.assert_array_equal(p, pos[:-1])


@pytest.mark.parametrize("constant", [True, False])
def test_xdatcar_roundtrip(tmp_path, nvt, npt, constant):
    pos, lat = nvt if constant else npt
    path = tmp_path / "XDATCAR"
    write_xdatcar(path, pos, lat, constant=constant)
    text = path.read_text()
    assert text.count("Direct configuration=") == N_FRAMES
    assert text.count("Li P O Li S") == (1 if constant else N_FRAMES)  # header repeats for NPT
    src = open_trajectory(path)
    _check_common(src.info, "xdatcar", lat)
    assert src.info.frame_interval_fs is None and src.info.temperature_k is None
    assert src.info.constant_lattice is constant
    assert src.info.metadata["variable_cell_format"] is (not constant)
    p, m = _read(src, 2)
    np.testing.assert_allclose(m, lat, atol=1e-7)
    _assert_same_mod_lattice(p, pos, lat, atol=1e-6)


def test_xdatcar_vasp_style_header_and_truncation(tmp_path):
    """VASP's own layout: POTCAR-style names, scale ≠ 1, no trailing labels, cut file."""
    frac = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.9, 0.95, 0.05]])
    body = [
        "Li2O",
        "   2.00000000000000",
        "     3.0000000000    0.0000000000    0.0000000000",
        "     0.0000000000    3.0000000000    0.0000000000",
        "     0.0000000000    0.0000000000    3.0000000000",
        "   Li_sv/abc123  O",
        "     2     1",
    ]
    for i in range(3):
        body.append(f"Direct configuration=     {i + 1}")
        body += [" " + " ".join(f"{x + 0.01 * i:.8f}" for x in row) for row in frac]
    path = tmp_path / "run1.XDATCAR"
    path.write_text("\n".join(body) + "\n")
    src = open_trajectory(path)
    assert src.info.species == ["Li", "Li", "O"]
    assert src.info.n_frames == 3
    np.testing.assert_allclose(src.info.lattice, 6.0 * np.eye(3))
    p, _ = _read(src)
    np.testing.assert_allclose(p[2], (frac + 0.02) * 6.0)
    # killed mid-frame
    cut = tmp_path / "XDATCAR_cut"
    cut.write_text("\n".join(body[:-1]) + "\n")
    with pytest.warns(TruncatedTrajectoryWarning, match="XDATCAR_cut"):
        src = open_trajectory(cut)
    assert src.info.n_frames == 2
    assert _read(src)[0].shape == (2, 3, 3)


@pytest.mark.parametrize("name", ["vasprun.xml", "vasprun.xml.gz"])
def test_vasprun_roundtrip(tmp_path, nvt, name):
    pos, lat = nvt
    selective = [[False] * 3 if i == 3 else [True, True, i != 4] for i in range(N_ATOMS)]
    path = tmp_path / name
    write_vasprun(path, pos, lat, potim=1.5, tebeg=900.0, selective=selective)
    src = open_trajectory(path)
    _check_common(src.info, "vasprun", lat)
    # NBLOCK=10 is in the file but thins only XDATCAR: vasprun has every ionic step
    assert src.info.frame_interval_fs == 1.5
    assert src.info.metadata["NBLOCK"] == 10
    assert src.info.temperature_k == 900.0
    assert src.info.constant_lattice
    assert np.flatnonzero(src.info.fixed_atoms).tolist() == [3]  # only the F F F atom
    p, m = _read(src)
    np.testing.assert_allclose(p, pos, atol=1e-6)
    np.testing.assert_allclose(m, lat, atol=1e-7)


def test_vasprun_is_what_pymatgen_reads(tmp_path, npt):
    """The hand-written file is valid vasprun for pymatgen; both readers agree."""
    from pymatgen.io.vasp.outputs import Vasprun

    pos, lat = npt
    path = tmp_path / "vasprun.xml"
    write_vasprun(path, pos, lat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vr = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    ours = open_trajectory(path)
    assert not ours.info.constant_lattice
    p, m = _read(ours)
    assert len(vr.structures) == ours.info.n_frames
    for j, s in enumerate(vr.structures):
        np.testing.assert_allclose(s.cart_coords, p[j], atol=1e-6)
        np.testing.assert_allclose(s.lattice.matrix, m[j], atol=1e-7)
        assert [str(x) for x in s.species] == ours.info.species
    assert float(vr.parameters["POTIM"]) == ours.info.frame_interval_fs


def test_vasprun_mlff_stride_and_non_md(tmp_path, nvt):
    pos, lat = nvt
    path = tmp_path / "vasprun.xml"
    params = {"ML_LMLFF": "T", "ML_MODE": "run", "ML_OUTBLOCK": "5"}
    write_vasprun(path, pos, lat, potim=2.0, params=params, ml_top_level=True)
    src = open_trajectory(path)
    assert src.info.n_frames == N_FRAMES  # top-level (ML) structures are frames too
    assert src.info.frame_interval_fs == 10.0
    np.testing.assert_allclose(_read(src)[0], pos, atol=1e-6)
    # before 6.4.3 ML_OUTBLOCK did not thin vasprun.xml
    write_vasprun(path, pos, lat, potim=2.0, params=params, version="6.4.2")
    assert open_trajectory(path).info.frame_interval_fs == 2.0
    # a relaxation is not MD: no time step, no temperature
    write_vasprun(path, pos, lat, params={"IBRION": "2"})
    info = open_trajectory(path).info
    assert info.frame_interval_fs is None and info.temperature_k is None


def test_vasprun_killed_mid_write(tmp_path, nvt):
    pos, lat = nvt
    full = tmp_path / "full.xml"
    write_vasprun(full, pos, lat, finish=False)
    text = full.read_text()
    cut_at = text.rfind("<calculation>") + 200  # inside the last ionic step
    killed = tmp_path / "vasprun.xml"
    killed.write_text(text[:cut_at])
    with pytest.warns(TruncatedTrajectoryWarning, match="vasprun.xml"):
        src = open_trajectory(killed)
    assert src.info.n_frames == N_FRAMES - 1
    np.testing.assert_allclose(_read(src, 2)[0], pos[:-1], atol=1e-6)


@pytest.mark.parametrize("displacement", [False, True])
@pytest.mark.parametrize("constant", [True, False])
def test_pymatgen_trajectory_json(tmp_path, nvt, npt, displacement, constant):
    from monty.serialization import dumpfn

    pos, lat = nvt if constant else npt
    sel = [[True] * 3 if i != 1 else [False] * 3 for i in range(N_ATOMS)]
    traj = _pmg_trajectory(
        pos, lat, constant=constant, time_step=2.0, sp={"selective_dynamics": sel}
    )
    if displacement:
        traj.to_displacements()
    path = tmp_path / "traj.json"
    dumpfn(traj, path)  # pymatgen/monty's own encoding (numpy arrays as monty dicts)
    src = open_trajectory(path)
    _check_common(src.info, "pymatgen-trajectory", lat)
    assert src.info.frame_interval_fs == 2.0
    assert src.info.temperature_k is None
    assert src.info.constant_lattice is constant
    assert src.info.metadata["coords_are_displacement"] is displacement
    assert np.flatnonzero(src.info.fixed_atoms).tolist() == [1]
    p, m = _read(src, 3)
    np.testing.assert_allclose(m, lat, atol=1e-10)
    # pymatgen's own frames (its displacement mode wraps steps by minimum image)
    ref = Path(tmp_path / "ref.json")
    ref.write_text(traj.to_json())
    from pymatgen.core.trajectory import Trajectory

    back = Trajectory.from_dict(json.loads(ref.read_text()))
    back.to_positions()
    expect = np.array([back.get_structure(i).cart_coords for i in range(N_FRAMES)])
    _assert_same_mod_lattice(p, expect, lat, atol=1e-9)
    _assert_same_mod_lattice(p, pos, lat, atol=1e-9)
    if not displacement:  # positions mode keeps the (unwrapped) coordinates as given
        np.testing.assert_allclose(p, pos, atol=1e-9)


def test_pymatgen_trajectory_oxidation_species(tmp_path, nvt):
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.trajectory import Trajectory

    s = Structure(Lattice.cubic(5), ["Li+", "O2-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "t.json"
    path.write_text(Trajectory.from_structures([s, s]).to_json())
    info = open_trajectory(path).info
    assert info.species == ["Li", "O"]
    assert info.frame_interval_fs is None


def test_diffusion_analyzer_real_file():
    path = DATA / "DiffusionAnalyzer.json"
    src = open_trajectory(path)
    info = src.info
    assert info.format == "diffusion-analyzer"
    assert info.n_frames == 1000
    assert info.n_atoms == 50
    assert Counter(info.species) == {"Li": 20, "Ge": 2, "P": 4, "S": 24}
    assert info.frame_interval_fs == 20.0
    assert info.temperature_k == 600.0
    assert info.constant_lattice
    assert info.metadata["specie"] == "Li"
    assert info.metadata["min_obs"] == 30
    assert info.metadata["step_skip"] == 10 and info.metadata["time_step"] == 2
    p, m = _read(src, 333)
    d = json.loads(path.read_text())
    disp = np.array(d["displacements"])
    np.testing.assert_allclose(p - p[0], disp.transpose(1, 0, 2), atol=1e-12)
    np.testing.assert_allclose(m[0], d["structure"]["lattice"]["matrix"])


def test_diffusion_analyzer_roundtrip_through_pymatgen(tmp_path, nvt, npt):
    """Our frames fed back to DiffusionAnalyzer.from_structures give its displacements."""
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
    from pymatgen.core import Structure

    for pos, lat in (nvt, npt):
        structs = [
            Structure(m, SPECIES, p, coords_are_cartesian=True)
            for p, m in zip(pos, lat, strict=True)
        ]
        da = DiffusionAnalyzer.from_structures(structs, "Li", 700, 2, 5, smoothed=False)
        path = tmp_path / "da.json"
        path.write_text(json.dumps(da.as_dict()))
        src = open_trajectory(path)
        info = src.info
        assert info.species == SPECIES and info.n_frames == N_FRAMES
        assert info.frame_interval_fs == 10.0 and info.temperature_k == 700.0
        p, m = _read(src, 2)
        # lattices: one matrix (NVT) or a leading duplicate that must be dropped (NPT)
        np.testing.assert_allclose(m, lat, atol=1e-12)
        assert info.constant_lattice is (lat is nvt[1])
        back = [
            Structure(mm, SPECIES, pp, coords_are_cartesian=True)
            for pp, mm in zip(p, m, strict=True)
        ]
        da2 = DiffusionAnalyzer.from_structures(back, "Li", 700, 2, 5, smoothed=False)
        np.testing.assert_allclose(da2.disp, da.disp, atol=1e-9)
        _assert_same_mod_lattice(p, pos, lat, atol=1e-9)  # the original frames, NVT or NPT


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_npz_roundtrip(tmp_path, nvt, compressed, dtype):
    pos, lat = nvt
    path = tmp_path / "md.npz"
    fixed = np.zeros(N_ATOMS, bool)
    fixed[[0, 7]] = True
    write_npz(
        path,
        pos.astype(dtype),
        lat[0],
        compressed=compressed,
        time_step_fs=np.float64(5.0),
        temperature_k=1000.0,
        fixed_atoms=fixed,
    )
    src = open_trajectory(path)
    _check_common(src.info, "npz", lat)
    assert src.info.frame_interval_fs == 5.0
    assert src.info.temperature_k == 1000.0
    assert src.info.fixed_atoms.tolist() == fixed.tolist()
    p, m = _read(src, 3)
    assert p.dtype == np.float64
    np.testing.assert_array_equal(p, pos.astype(dtype).astype(np.float64))
    np.testing.assert_array_equal(m, lat)


def test_npz_per_frame_lattice_atomic_numbers(tmp_path, npt):
    pos, lat = npt
    path = tmp_path / "npt.npz"
    numbers = np.array([{"Li": 3, "P": 15, "O": 8, "S": 16}[s] for s in SPECIES])
    np.savez_compressed(path, positions=pos, lattice=lat, species=numbers, frame_interval_fs=2.0)
    src = open_trajectory(path)
    assert src.info.species == SPECIES
    assert not src.info.constant_lattice
    assert src.info.frame_interval_fs == 2.0
    p, m = _read(src, 2)
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(m, lat)


def test_npz_integer_lattice_bytes_species(tmp_path):
    path = tmp_path / "int.npz"
    pos = np.zeros((2, 2, 3), dtype=np.float32)
    np.savez(path, positions=pos, lattice=np.diag([8, 8, 8]), species=np.array([b"Li", b"O"]))
    info = open_trajectory(path).info
    assert info.species == ["Li", "O"]
    np.testing.assert_array_equal(info.lattice, 8.0 * np.eye(3))


def test_npy_real_na3ps4_with_cif():
    src = open_trajectory(DATA / "cNa3PS4_trajectories.npy", structure=DATA / "cNa3PS4.cif")
    info = src.info
    assert info.format == "npy"
    assert info.n_frames == 200 and info.n_atoms == 128
    assert Counter(info.species) == {"Na": 48, "P": 16, "S": 64}
    assert info.metadata["coords"] == "fractional"  # wrapped fractional (values in [0, 1))
    assert info.frame_interval_fs is None and info.temperature_k is None
    p, m = _read(src, 64)
    raw = np.load(DATA / "cNa3PS4_trajectories.npy")
    np.testing.assert_allclose(p, raw @ info.lattice, atol=1e-10)
    from pymatgen.core import Structure

    cif = Structure.from_file(DATA / "cNa3PS4.cif")
    np.testing.assert_allclose(p[0], cif.cart_coords, atol=1e-4)  # frame 0 = the CIF


def test_npy_cartesian_with_poscar(tmp_path, nvt):
    from pymatgen.core import Structure

    pos, lat = nvt
    poscar = tmp_path / "POSCAR"
    Structure(lat[0], SPECIES, pos[0], coords_are_cartesian=True).to(filename=str(poscar))
    npy = tmp_path / "pos.npy"
    np.save(npy, pos.astype(np.float32))
    src = open_trajectory(npy, structure=poscar)
    assert src.info.metadata["coords"] == "cartesian"
    np.testing.assert_allclose(_read(src, 3)[0], pos, atol=1e-5)
    # explicit fractional
    np.save(npy, pos @ np.linalg.inv(lat[0]))
    src = open_trajectory(npy, structure=poscar, coords="fractional")
    np.testing.assert_allclose(_read(src)[0], pos, atol=1e-9)


# --------------------------------------------------------------------------- generic behaviour


def _write_format(fmt, tmp_path, pos, lat):
    if fmt == "extxyz":
        path = tmp_path / "a.xyz"
        write_extxyz(path, pos, lat)
    elif fmt == "ase-traj":
        path = tmp_path / "a.traj"
        write_traj(path, pos, lat)
    elif fmt == "xdatcar":
        path = tmp_path / "XDATCAR"
        write_xdatcar(path, pos, lat, constant=False)
    elif fmt == "vasprun":
        path = tmp_path / "vasprun.xml.gz"
        write_vasprun(path, pos, lat)
    elif fmt == "pymatgen-trajectory":
        path = tmp_path / "t.json"
        path.write_text(_pmg_trajectory(pos, lat, constant=False).to_json())
    elif fmt == "diffusion-analyzer":
        from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer
        from pymatgen.core import Structure

        structs = [
            Structure(m, SPECIES, p, coords_are_cartesian=True)
            for p, m in zip(pos, lat, strict=True)
        ]
        da = DiffusionAnalyzer.from_structures(structs, "Li", 700, 2, 5, smoothed=False)
        path = tmp_path / "da.json"
        path.write_text(json.dumps(da.as_dict()))
    elif fmt == "npz":
        path = tmp_path / "a.npz"
        write_npz(path, pos, lat, compressed=True)
    else:
        return None
    return path


FILE_FORMATS = [f for f in SUPPORTED_FORMATS if f != "npy"]


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_chunking_identical_and_reiterable(tmp_path, npt, fmt):
    pos, lat = npt
    path = _write_format(fmt, tmp_path, pos, lat)
    src = open_trajectory(path)
    assert src.info.format == fmt
    ref_p, ref_l = _read(src, N_FRAMES)
    for chunk in (1, 3, N_FRAMES, 100):
        sizes = []
        p, m = src.read_all(chunk) if chunk != 3 else (None, None)
        if chunk == 3:
            parts = list(src.iter_chunks(chunk_frames=3, progress=sizes.append))
            assert [len(x[0]) for x in parts] == [3, 3, 1]
            assert sizes == [3, 3, 1]
            for pp, mm in parts:
                assert pp.dtype == np.float64 and pp.flags.c_contiguous
                assert pp.shape[1:] == (N_ATOMS, 3) and mm.shape == (len(pp), 3, 3)
            p = np.concatenate([x[0] for x in parts])
            m = np.concatenate([x[1] for x in parts])
        np.testing.assert_array_equal(p, ref_p)
        np.testing.assert_array_equal(m, ref_l)
    # two passes interleaved (each re-opens the file)
    for (p1, m1), (p2, m2) in zip(src.iter_chunks(2), src.iter_chunks(2), strict=True):
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(ref_l, lat, atol=1e-6)
    _assert_same_mod_lattice(ref_p, pos, lat, atol=1e-5)


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_truncated_files_raise_only_user_errors(tmp_path, nvt, fmt):
    """Any prefix of any file: a clean read (maybe with a warning) or UserInputError."""
    pos, lat = nvt
    path = _write_format(fmt, tmp_path, pos, lat)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    for frac in (0.0, 0.03, 0.3, 0.55, 0.8, 0.97):
        cut = path.with_name("cut_" + path.name.removesuffix(".gz"))
        cut.write_bytes(data[: int(len(data) * frac)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                src = open_trajectory(cut, format=fmt)
                p, _ = _read(src, 2)
            except UserInputError as exc:
                assert cut.name in str(exc)
                assert "\n" not in str(exc)
            else:
                assert 1 <= len(p) <= N_FRAMES
                _assert_same_mod_lattice(p, pos[: len(p)], lat[: len(p)], atol=1e-5)


def test_sniff_by_content_and_aliases(tmp_path, nvt):
    pos, lat = nvt
    written = {fmt: _write_format(fmt, tmp_path, pos, lat) for fmt in FILE_FORMATS}
    for fmt, path in written.items():
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        mystery = tmp_path / f"mystery_{fmt}.bin"
        mystery.write_bytes(data)
        assert open_trajectory(mystery).info.format == fmt
    for alias, fmt in [("xyz", "extxyz"), ("traj", "ase-traj"), ("XML", "vasprun")]:
        path = tmp_path / f"mystery_{fmt}.bin"
        assert open_trajectory(path, format=alias).info.format == fmt
    json_path = tmp_path / "mystery_diffusion-analyzer.bin"
    assert open_trajectory(json_path, format="json").info.format == "diffusion-analyzer"
    _raises(json_path.name, json_path, format="pymatgen-trajectory", match="'Trajectory'")


def test_non_finite_coordinates(tmp_path, nvt):
    pos, lat = nvt
    pos = pos.copy()
    pos[5, 1, 0] = np.nan
    path = tmp_path / "nan.npz"
    write_npz(path, pos, lat[0])
    _raises("nan.npz", path, match="frames 4-5")


def test_concatenated_segments(tmp_path, nvt):
    pos, lat = nvt
    a, b = tmp_path / "seg1.traj", tmp_path / "seg2.xyz"
    write_traj(a, pos[:4], lat[:4], {"frame_interval_fs": 2.0, "temperature_k": 600})
    write_extxyz(b, pos[4:], lat[4:], frame_interval_fs=2.0)  # atom 2 fixed
    with pytest.raises(UserInputError, match="seg1.traj.*fix different atoms"):
        open_trajectory([a, b])
    write_traj(a, pos[:4], lat[:4], {"frame_interval_fs": 2.0, "temperature_k": 600}, fixed=[2])
    src = open_trajectory([a, str(b)])
    info = src.info
    assert info.n_frames == N_FRAMES
    assert info.frame_interval_fs == 2.0 and info.temperature_k == 600.0
    assert info.format == "ase-traj+extxyz"
    assert str(a) in info.path and str(b) in info.path
    assert [s["n_frames"] for s in info.metadata["segments"]] == [4, 3]
    for chunk in (1, 3, 10):
        p, m = src.read_all(chunk)
        np.testing.assert_allclose(p, pos, atol=1e-7)
        np.testing.assert_allclose(m, lat, atol=1e-7)
    assert [len(c[0]) for c in src.iter_chunks(3)] == [3, 3, 1]


def test_concatenated_segment_mismatch(tmp_path, nvt):
    pos, lat = nvt
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    write_npz(a, pos, lat[0], frame_interval_fs=2.0)
    np.savez(b, positions=pos[:, :-1], lattice=lat[0], species=np.array(SPECIES[:-1]))
    with pytest.raises(UserInputError, match="b.npz.*7 atoms"):
        open_trajectory([a, b])
    np.savez(b, positions=pos, lattice=lat[0], species=np.array(SPECIES[::-1]))
    with pytest.raises(UserInputError, match="b.npz.*species differ"):
        open_trajectory([a, b])
    write_npz(c, pos, lat[0], frame_interval_fs=1.0)
    with pytest.raises(UserInputError, match="different frame intervals"):
        open_trajectory([a, c])


def test_npz_streaming_memory_is_bounded(tmp_path):
    n_frames, n_atoms = 2100, 1000  # 50.4 MB of float64 positions
    rng = np.random.default_rng(0)
    pos = rng.random((n_frames, n_atoms, 3)) * 10.0
    species = np.array(["Li"] * n_atoms)
    path = tmp_path / "big.npz"
    np.savez(path, positions=pos, lattice=10.0 * np.eye(3), species=species)
    checksum = float(pos[:, 123].sum())
    size = pos.nbytes
    del pos
    src = open_trajectory(path)
    tracemalloc.start()
    try:
        total, acc = 0, 0.0
        for p, _ in src.iter_chunks(chunk_frames=50):
            total += len(p)
            acc += float(p[:, 123].sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n_frames
    assert acc == pytest.approx(checksum, rel=1e-12)
    chunk_bytes = 50 * n_atoms * 3 * 8
    assert peak < 8 * chunk_bytes < size / 4, (peak, size)


# --------------------------------------------------------------------------- errors


def _raises(path_in_msg: str, *args, match: str | None = None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserInputError) as ei:
            src = open_trajectory(*args, **kwargs)
            src.read_all(2)
    msg = str(ei.value)
    assert path_in_msg in msg, msg
    assert "\n" not in msg
    if match:
        assert match in msg, msg
    return msg


def test_error_missing_file(tmp_path):
    _raises("nope.xyz", tmp_path / "nope.xyz", match="no such file")
    good = tmp_path / "x.npz"
    write_npz(good, *_trajectory())
    _raises("gone.traj", [good, tmp_path / "gone.traj"])


def test_error_unknown_format(tmp_path):
    path = tmp_path / "run.dat"
    path.write_text("hello\nworld\n")
    msg = _raises("run.dat", path)
    assert all(f in msg for f in SUPPORTED_FORMATS)
    _raises("run.dat", path, format="lammps-dump", match="unknown format")
    js = tmp_path / "other.json"
    js.write_text(json.dumps({"@class": "Structure"}))
    _raises("other.json", js, match="Structure")


def test_error_corrupt_content(tmp_path):
    cases = {
        "bad.xyz": '3\nLattice="1 0 0 0 1 0 0 0 1"\nLi 0 0\n',
        "bad.traj": "this is not an ulm file at all" * 10,
        "vasprun.xml": "<modeling><atominfo><array name='atoms'><set><rc><c>Li</c>",
        "XDATCAR": "system\n1.0\n1 0 0\n0 1 0\n",
        "bad.json": "{not json",
        "bad.npz": "PK but not really a zip",
        "notxml.xml": "plain text",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        _raises(name, path)
    gz = tmp_path / "vasprun.xml.gz"
    gz.write_bytes(gzip.compress(b"<modeling>")[:-8])
    _raises("vasprun.xml.gz", gz)
    xd = tmp_path / "XDATCAR2"
    xd.write_text("s\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi\n1\nDirect configuration= 1\n 0.1 abc 0.3\n")
    _raises("XDATCAR2", xd, match="bad coordinates")
    vasp4 = tmp_path / "XDATCAR3"
    vasp4.write_text("s\n1.0\n5 0 0\n0 5 0\n0 0 5\n1\nDirect configuration= 1\n 0.1 0.2 0.3\n")
    _raises("XDATCAR3", vasp4, match="element names")


def test_error_zero_frames(tmp_path):
    from ase.io.trajectory import Trajectory

    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    _raises("empty.xyz", empty)
    t = tmp_path / "empty.traj"
    Trajectory(str(t), "w").close()
    _raises("empty.traj", t, match="zero frames")
    npz = tmp_path / "empty.npz"
    np.savez(
        npz, positions=np.zeros((0, 2, 3)), lattice=np.eye(3) * 5, species=np.array(["Li", "O"])
    )
    _raises("empty.npz", npz, match="zero frames")
    vr = tmp_path / "vasprun.xml"
    text = "<modeling><atominfo><array name='atoms'><set><rc><c>Li</c></rc></set></array>"
    vr.write_text(text + "</atominfo></modeling>")
    _raises("vasprun.xml", vr, match="zero ionic steps")


def test_error_inconsistent_atom_counts(tmp_path):
    import ase.io
    from ase import Atoms

    path = tmp_path / "mixed.xyz"
    a = Atoms("Li2O", positions=np.eye(3), cell=5 * np.eye(3), pbc=True)
    b = Atoms("Li2", positions=np.eye(3)[:2], cell=5 * np.eye(3), pbc=True)
    ase.io.write(path, [a, a, b], format="extxyz")
    _raises("mixed.xyz", path, match="frame 2 has 2 atoms")
    t = tmp_path / "mixed.traj"
    ase.io.write(t, [a, b], format="traj")
    _raises("mixed.traj", t, match="frame 1")
    xd = tmp_path / "XDATCAR"
    head = "s\n1.0\n5 0 0\n0 5 0\n0 0 5\nLi O\n{}\nDirect configuration= 1\n"
    xd.write_text(head.format("1 1") + "0 0 0\n.5 .5 .5\n" + head.format("2 1") + "0 0 0\n" * 3)
    _raises("XDATCAR", xd, match="atom counts change")


def test_error_npz_keys_and_shapes(tmp_path):
    pos, lat = _trajectory()
    path = tmp_path / "x.npz"
    np.savez(path, lattice=lat[0], species=np.array(SPECIES))
    _raises("x.npz", path, match="missing key 'positions' (frames × atoms × 3")
    np.savez(path, positions=pos, species=np.array(SPECIES))
    _raises("x.npz", path, match="missing key 'lattice' (3, 3)")
    np.savez(path, positions=pos, lattice=lat[0])
    _raises("x.npz", path, match="missing key 'species' (atoms,)")
    np.savez(path, positions=pos[..., :2], lattice=lat[0], species=np.array(SPECIES))
    _raises("x.npz", path, match="expected (frames, atoms, 3)")
    np.savez(path, positions=pos, lattice=lat[0], species=np.array(SPECIES[:3]))
    _raises("x.npz", path, match="'species' has shape (3,)")
    np.savez(path, positions=pos, lattice=lat[:2], species=np.array(SPECIES))
    _raises("x.npz", path, match="'lattice' has shape (2, 3, 3)")
    np.savez(path, positions=np.asfortranarray(pos), lattice=lat[0], species=np.array(SPECIES))
    _raises("x.npz", path, match="Fortran order")
    np.savez(path, positions=pos.astype(int), lattice=lat[0], species=np.array(SPECIES))
    _raises("x.npz", path, match="float32 or float64")
    np.savez(path, positions=pos, lattice=lat[0], species=np.array(SPECIES, dtype=object))
    _raises("x.npz", path, match="object array")
    np.savez(path, positions=pos, lattice=np.zeros((3, 3)), species=np.array(SPECIES))
    _raises("x.npz", path, match="degenerate")
    np.savez(path, positions=pos, lattice=lat[0], species=np.array(SPECIES), fixed_atoms=[1, 2])
    _raises("x.npz", path, match="fixed_atoms")
    np.savez(path, positions=pos, lattice=lat[0], species=np.array(["Li"] * 7 + ["Qq"]))
    _raises("x.npz", path, match="'Qq' is not an element")
    np.savez(path, positions=pos, lattice=lat[0], species=np.array(SPECIES), time_step_fs=[1, 2])
    _raises("x.npz", path, match="time_step_fs")


def test_error_json_shapes(tmp_path):
    d = json.loads((DATA / "DiffusionAnalyzer.json").read_text())
    d["displacements"] = [row[:5] for row in d["displacements"][:10]]
    path = tmp_path / "da.json"
    path.write_text(json.dumps(d))
    _raises("da.json", path, match="displacements has shape (10, 5, 3)")
    del d["structure"]
    path.write_text(json.dumps(d))
    _raises("da.json", path, match="no 'structure'")
    t = {"@class": "Trajectory", "species": ["Li"], "coords": [[[0, 0, 0], [1, 1, 1]]]}
    t["lattice"] = np.eye(3).tolist()
    path.write_text(json.dumps(t))
    _raises("da.json", path, match="species has 1 entries")
    t.update(species=["Li", "O"], lattice=None, charge=0)
    path.write_text(json.dumps(t))
    _raises("da.json", path, match="Molecule")


def test_error_npy_needs_structure(tmp_path):
    npy = tmp_path / "pos.npy"
    np.save(npy, np.zeros((3, 2, 3)))
    _raises("pos.npy", npy, match="structure")
    cif = DATA / "cNa3PS4.cif"
    _raises("pos.npy", npy, structure=cif, match="128 sites")
    _raises("DiffusionAnalyzer.json", DATA / "DiffusionAnalyzer.json", structure=cif)
    bad_struct = tmp_path / "bad.cif"
    bad_struct.write_text("garbage")
    _raises("bad.cif", npy, structure=bad_struct)
