"""Isolated-anion descriptors (`ionflow.analysis.anions`, `ionflow anions`) against
independent truth: published crystallography, spglib called directly, geometry, and
pymatgen's EwaldSummation total energy."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import spglib
from pymatgen.analysis.ewald import EwaldSummation
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser

from ionflow.analysis.anions import describe_anions, parse_oxidation_states
from ionflow.errors import UserInputError
from ionflow.structure import classify_anions, load_structure

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IONFLOW = REPO / ".venv" / "bin" / "ionflow"
NEUTRON = REPO.parent / "shared" / "data" / "argyrodite-morgan2021" / "Li6PS5I_Neutron.cif"

# gamma-Li3PO4 (the LISICON parent; every O is in a PO4 tetrahedron): B. Wang,
# B. C. Chakoumakos, B. C. Sales, B. S. Kwak, J. B. Bates, J. Solid State Chem. 115, 313
# (1995), as deposited in the American Mineralogist Crystal Structure Database (AMCSD
# 0013843). Space group Pmnb (No. 62, non-standard setting of Pnma), Z = 4.
LI3PO4_CIF = """data_gamma_Li3PO4
_cell_length_a 6.1113
_cell_length_b 10.4612
_cell_length_c 4.9208
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_chemical_formula_sum 'Li3 P O4'
loop_
_space_group_symop_operation_xyz
'x,y,z'
'1/2-x,y,z'
'1/2+x,-y,-z'
'1/2+x,1/2-y,1/2+z'
'1/2-x,1/2+y,1/2-z'
'x,1/2+y,1/2-z'
'-x,1/2-y,1/2+z'
'-x,-y,-z'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Li1 Li 0.50160 0.16270 0.30080
Li2 Li 0.75000 0.42460 0.20450
P1 P 0.25000 0.41150 0.30790
O1 O 0.04410 0.34180 0.20540
O2 O 0.25000 0.05030 0.29280
O3 O 0.75000 0.08960 0.12230
"""


def _li3po4() -> Structure:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(LI3PO4_CIF).parse_structures(primitive=False)[0]


def _spglib_framework(structure: Structure, mobile: str):
    """spglib's own dataset of the structure without the mobile ions, and the map
    input index → framework index (no ionflow code)."""
    keep = [i for i, s in enumerate(structure) if s.specie.symbol != mobile]
    cell = (
        structure.lattice.matrix,
        structure.frac_coords[keep],
        [structure[i].specie.Z for i in keep],
    )
    data = spglib.get_symmetry_dataset(cell, symprec=0.01)
    return data, {orig: k for k, orig in enumerate(keep)}


def _check_against_spglib(report, structure, mobile="Li"):
    data, where = _spglib_framework(structure, mobile)
    for a in report.anions:
        k = where[a.index]
        assert a.site_symmetry_oriented == data.site_symmetry_symbols[k]
        assert a.wyckoff.endswith(data.wyckoffs[k])
        # the plain point group is spglib's oriented symbol without the orientation dots
        # (true for these cubic/hexagonal sites)
        assert a.site_symmetry == data.site_symmetry_symbols[k].replace(".", "")
    return data, where


# --------------------------------------------------------------------------- Li6PS5Cl


@pytest.fixture(scope="module")
def li6ps5cl() -> Structure:
    return load_structure(EXAMPLES / "Li6PS5Cl.cif")


@pytest.fixture(scope="module")
def li6ps5cl_report(li6ps5cl):
    return describe_anions(li6ps5cl, "Li")


def test_li6ps5cl_isolated_4a_cl_and_4c_4d_s_with_td_symmetry(li6ps5cl, li6ps5cl_report) -> None:
    r = li6ps5cl_report
    _check_against_spglib(r, li6ps5cl)
    by = {}
    for a in r.anions:
        by.setdefault((a.element, a.bonded), []).append(a)
    assert {k: len(v) for k, v in by.items()} == {
        ("S", True): 16,
        ("S", False): 4,
        ("Cl", False): 4,
    }
    assert r.groups == {"PS4": 4}
    assert r.isolated_fraction == pytest.approx(8 / 24)
    assert r.framework_space_group == "F-43m (216)"
    assert r.space_group.startswith("P1 ")  # the ordered Li model: only the framework is cubic
    for a in by[("Cl", False)]:
        assert (a.site_symmetry, a.site_symmetry_schoenflies, a.wyckoff) == ("-43m", "Td", "4a")
        assert a.bonded_to is None
    for a in by[("S", False)]:
        # the 4c/4d label is the hand of the setting (inversion swaps them; see the next test)
        assert a.site_symmetry == "-43m" and a.wyckoff in ("4c", "4d")
        assert a.bonded_to is None
    for a in by[("S", True)]:
        assert (a.site_symmetry, a.wyckoff, a.bonded_to) == ("3m", "16e", "P")
    # the same rule as the pinned control
    cls = classify_anions(li6ps5cl, "Li")
    assert sorted(a.index for a in r.anions if a.bonded) == cls.bonded_indices
    assert sorted(a.index for a in r.anions if not a.bonded) == cls.isolated_indices


def test_li6ps5cl_bonding_and_spacing_from_geometry(li6ps5cl, li6ps5cl_report) -> None:
    s, r = li6ps5cl, li6ps5cl_report
    dist = s.distance_matrix
    p = [i for i, x in enumerate(s) if x.specie.symbol == "P"]
    for a in r.anions:
        nearest_p = dist[a.index, p].min()
        if a.bonded:
            assert nearest_p < 2.2 and a.bonded_to_indices == [p[int(np.argmin(dist[a.index, p]))]]
        else:
            assert nearest_p > 3.5
    a_latt = s.lattice.a
    iso = [a for a in r.anions if not a.bonded]
    # in F-43m the isolated S (4c/4d) and Cl (4a) are a·√3/4 apart; like ones a/√2
    for a in iso:
        assert a.nearest_isolated_anion_distance_a == pytest.approx(a_latt * math.sqrt(3) / 4, 1e-3)
    assert r.isolated_anion_spacing_a["S"] == pytest.approx(a_latt / math.sqrt(2), 1e-3)
    assert r.isolated_anion_spacing_a["Cl"] == pytest.approx(a_latt / math.sqrt(2), 1e-3)


def test_inverted_li6ps5cl_puts_isolated_s_on_4d(li6ps5cl) -> None:
    """Seed 003 / issue setting: S_iso on 4d. Inverting the cell (x → −x) gives it."""
    inv = Structure(li6ps5cl.lattice, li6ps5cl.species, (-li6ps5cl.frac_coords) % 1.0)
    r = describe_anions(inv, "Li")
    data, _ = _check_against_spglib(r, inv)
    s_iso = {a.wyckoff for a in r.anions if a.element == "S" and not a.bonded}
    cl = {a.wyckoff for a in r.anions if a.element == "Cl"}
    original = {
        a.wyckoff
        for a in describe_anions(li6ps5cl, "Li").anions
        if a.element == "S" and not a.bonded
    }
    assert cl == {"4a"} and len(s_iso) == 1 and s_iso != original
    assert s_iso | original == {"4c", "4d"}


def test_ewald_site_energies_sum_to_pymatgen_total(li6ps5cl, li6ps5cl_report) -> None:
    r = li6ps5cl_report
    assert r.oxidation_states == {"Cl": -1.0, "Li": 1.0, "P": 5.0, "S": -2.0}
    assert r.oxidation_states_source.startswith("composition guess")
    decorated = li6ps5cl.copy()
    decorated.add_oxidation_state_by_element(r.oxidation_states)
    total = EwaldSummation(decorated).total_energy  # independent call
    assert r.ewald_total_energy_ev == pytest.approx(total, rel=1e-9)
    assert sum(r.ewald_energy_by_element_ev.values()) == pytest.approx(total, rel=1e-6)
    for el in ("S", "Cl"):
        mine = sum(a.ewald_site_energy_ev for a in r.anions if a.element == el)
        assert mine == pytest.approx(r.ewald_energy_by_element_ev[el], rel=1e-9)
    # seed 003: Li gathers round the anion with the lower Ewald energy: S_iso ≪ Cl_iso
    s_iso = np.mean([a.ewald_site_energy_ev for a in r.anions if a.element == "S" and not a.bonded])
    cl = np.mean([a.ewald_site_energy_ev for a in r.anions if a.element == "Cl"])
    assert s_iso < cl < 0
    given = describe_anions(li6ps5cl, "Li", {"Li": 1, "P": 5, "S": -2, "Cl": -1})
    assert given.oxidation_states_source == "given"
    assert given.ewald_total_energy_ev == pytest.approx(r.ewald_total_energy_ev, rel=1e-12)


def test_describe_is_one_line(li6ps5cl_report) -> None:
    line = li6ps5cl_report.describe()
    assert "\n" not in line and "8/24" in line and "PS4×4" in line and "-43m" in line


# --------------------------------------------------------------------------- Li3N, Li3PO4


def test_li3n_isolated_nitrogen_no_groups() -> None:
    s = load_structure(EXAMPLES / "Li3N.cif")
    r = describe_anions(s, "Li")
    _check_against_spglib(r, s)
    (n,) = r.anions
    assert (n.element, n.bonded, n.bonded_to) == ("N", False, None)
    assert r.groups == {} and r.isolated_fraction == 1.0
    assert n.site_symmetry == "6/mmm" and n.site_symmetry_schoenflies == "D6h"
    # the nearest other N is its image one a-vector away (a < c in α-Li3N)
    assert n.nearest_isolated_anion_distance_a == pytest.approx(min(s.lattice.a, s.lattice.c))
    assert n.ewald_site_energy_ev is not None and n.ewald_site_energy_ev < 0
    assert sum(r.ewald_energy_by_element_ev.values()) == pytest.approx(
        r.ewald_total_energy_ev, 1e-6
    )


def test_polyanion_only_gamma_li3po4_every_oxygen_bonded() -> None:
    s = _li3po4()
    assert s.composition.reduced_formula == "Li3PO4" and len(s) == 32
    r = describe_anions(s, "Li")
    _check_against_spglib(r, s)
    assert r.n_anions == 16 and r.n_isolated == 0 and r.isolated_fraction == 0.0
    assert r.groups == {"PO4": 4}
    assert all(a.bonded and a.bonded_to == "P" for a in r.anions)
    assert all(a.nearest_isolated_anion_distance_a is None for a in r.anions)
    # geometry: every O has exactly one P at a P–O bond length (1.50–1.60 Å)
    dist = s.distance_matrix
    p = [i for i, x in enumerate(s) if x.specie.symbol == "P"]
    for a in r.anions:
        close = [d for d in dist[a.index, p] if d < 2.0]
        assert len(close) == 1 and 1.50 < close[0] < 1.60
    assert sum(r.ewald_energy_by_element_ev.values()) == pytest.approx(
        r.ewald_total_energy_ev, 1e-6
    )


# --------------------------------------------------------------------------- inputs


def test_oxidation_state_strings() -> None:
    assert parse_oxidation_states("Li=1,P=5,S=-2,Cl=-1") == {"Li": 1, "P": 5, "S": -2, "Cl": -1}
    assert parse_oxidation_states(" S = 2- , Li=+1 ") == {"S": -2, "Li": 1}
    for bad in ("", "Li", "Li=one", "Xx=1", "Li=1,Li=1", "Li=1;S=-2"):
        with pytest.raises(UserInputError):
            parse_oxidation_states(bad)


def test_charged_cell_and_incomplete_oxidation_states(li6ps5cl) -> None:
    with pytest.raises(UserInputError, match="missing for Cl"):
        describe_anions(li6ps5cl, "Li", {"Li": 1, "P": 5, "S": -2})
    with pytest.raises(UserInputError, match="not in the structure"):
        describe_anions(li6ps5cl, "Li", {"Li": 1, "P": 5, "S": -2, "Cl": -1, "I": -1})
    r = describe_anions(li6ps5cl, "Li", {"Li": 1, "P": 3, "S": -2, "Cl": -1})
    assert r.ewald_total_energy_ev is None and "not charge-neutral" in r.ewald_note
    assert all(a.ewald_site_energy_ev is None for a in r.anions)


def test_no_anions_and_absent_species() -> None:
    li = Structure(Lattice.cubic(3.51), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UserInputError, match="no anions"):
        describe_anions(li, "Li")
    with pytest.raises(UserInputError, match="not in the structure"):
        describe_anions(load_structure(EXAMPLES / "Li3N.cif"), "Na")


@pytest.mark.skipif(not NEUTRON.exists(), reason="shared argyrodite data not present")
def test_neutron_cif_placeholder_sites_are_flagged() -> None:
    """The Li6PS5I neutron CIF writes the half-occupied Li 48h sites fully occupied and a
    24g Li site as 'Mg': the report must say so; with the oxidation states given the
    bonding and the -43m isolated S (4d) and I (4a) come out."""
    s = load_structure(NEUTRON)
    plain = describe_anions(s, "Li")
    assert any("apart" in w for w in plain.warnings)
    r = describe_anions(s, "Li", {"Li": 1, "Mg": 1, "P": 5, "S": -2, "I": -1})
    assert r.groups == {"PS4": 4}
    iso = {(a.element, a.site_symmetry, a.wyckoff) for a in r.anions if not a.bonded}
    assert iso == {("S", "-43m", "4d"), ("I", "-43m", "4a")}
    assert r.ewald_total_energy_ev is None  # +48 e: not neutral


# --------------------------------------------------------------------------- CLI


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IONFLOW), *args], capture_output=True, text=True, timeout=120)


def test_cli_json_and_table() -> None:
    p = _run("anions", str(EXAMPLES / "Li6PS5Cl.cif"), "--species", "Li", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["groups"] == {"PS4": 4} and out["isolated_fraction"] == pytest.approx(1 / 3)
    site = out["anions"][0]
    for key in (
        "index", "element", "bonded", "bonded_to", "site_symmetry",
        "nearest_isolated_anion_distance_a", "ewald_site_energy_ev",
    ):  # fmt: skip
        assert key in site
    assert "oxidation_states_source" in out and out["symprec"] == 0.01
    p = _run("anions", str(EXAMPLES / "Li6PS5Cl.cif"), "--symprec", "0.05")
    assert p.returncode == 0 and "-43m" in p.stdout and "isolated" in p.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such.cif"], "does not exist"),
        ([str(EXAMPLES / "Li3N.cif"), "--species", "Na"], "not in the structure"),
        ([str(EXAMPLES / "Li3N.cif"), "--oxidation-states", "Li=one"], "ELEMENT=CHARGE"),
        ([str(EXAMPLES / "Li3N.cif"), "--oxidation-states", "Li=1"], "missing for N"),
        ([str(EXAMPLES / "Li3N.cif"), "--symprec", "0"], "--symprec"),
    ],
)
def test_cli_errors_exit_2(args, message) -> None:
    p = _run("anions", *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr


def test_cli_no_anions_exit_2(tmp_path) -> None:
    path = tmp_path / "Li.cif"
    Structure(Lattice.cubic(3.51), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(path)
    )
    p = _run("anions", str(path))
    assert p.returncode == 2 and "no anions" in p.stderr
