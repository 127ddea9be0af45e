"""Tests for the campaign file (ionflow.spec) and ``ionflow validate``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from ionflow.cli import main
from ionflow.errors import UserInputError
from ionflow.spec import (
    CampaignSpecError,
    MDSpec,
    PinnedSpecies,
    load_campaign,
    planned_jobs,
)

# --------------------------------------------------------------------------- fixtures


def _licl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _nacl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _li3ps4_toy() -> Structure:
    """An ordered Li3PS4-like toy: one PS4 tetrahedron (P-S 2.05 Å) and 3 Li in a 6 Å cube."""
    d = 2.05 / 3**0.5 / 6.0
    s_sites = [
        [0.5 + sx * d, 0.5 + sy * d, 0.5 + sz * d]
        for sx, sy, sz in [(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)]
    ]
    return Structure(
        Lattice.cubic(6.0),
        ["Li", "Li", "Li", "P", "S", "S", "S", "S"],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0.5, 0.5, 0.5], *s_sites],
    )


def _li3n() -> Structure:
    return Structure(
        Lattice.hexagonal(3.65, 3.88),
        ["Li", "Li", "Li", "N"],
        [[0, 0, 0.5], [1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0], [0, 0, 0]],
    )


def _disordered() -> Structure:
    return Structure(
        Lattice.cubic(5.13),
        [{"Li": 0.5}, "Cl"],
        [[0, 0, 0], [0.5, 0.5, 0.5]],
    )


@pytest.fixture(scope="session")
def _structure_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("structures")
    _licl().to(filename=str(root / "LiCl.cif"))
    _licl().to(filename=str(root / "POSCAR"), fmt="poscar")
    (root / "LiCl.json").write_text(_licl().to_json())
    _nacl().to(filename=str(root / "NaCl.cif"))
    _li3ps4_toy().to(filename=str(root / "Li3PS4.cif"))
    _li3n().to(filename=str(root / "Li3N.cif"))
    _disordered().to(filename=str(root / "disordered.cif"))
    (root / "garbage.cif").write_text("this is not a CIF file\n")
    return root


@pytest.fixture
def camp(tmp_path: Path, _structure_files: Path):
    """Write a campaign YAML (structures in ``structures/`` next to it); returns its path."""
    shutil.copytree(_structure_files, tmp_path / "structures")

    def write(text: str, name: str = "workflows.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


GOOD = """\
    campaign: toy-demo
    engine: {relax: toy, md: toy}
    md:
      temperatures_k: [1000, 600, 800]
      time_step_fs: 2.0
      equilibration_ps: 0.5
      production_ps: 2.0
      supercell_min_length_a: 10.0
      pinned_control: auto
    materials:
      - {name: Li3PS4, structure: structures/Li3PS4.cif}
      - name: Li3N
        structure: structures/Li3N.cif
        md: {temperatures_k: [500, 700]}
      - {name: LiCl, structure: structures/POSCAR, md: {pinned_control: {species: [Cl]}}}
    """


def _problems(path: Path) -> list[str]:
    with pytest.raises(CampaignSpecError) as info:
        load_campaign(path)
    exc = info.value
    assert isinstance(exc, UserInputError)
    assert str(exc).splitlines() == exc.problems
    return exc.problems


def _has(lines: list[str], *fragments: str) -> str:
    """The one line containing every fragment (fails with all lines shown otherwise)."""
    hits = [line for line in lines if all(f in line for f in fragments)]
    assert hits, f"no line with {fragments!r} in:\n" + "\n".join(lines)
    return hits[0]


def _minimal(md: str = "{temperatures_k: [600]}", extra: str = "", mats: str = "") -> str:
    mats = mats or "  - {name: LiCl, structure: structures/LiCl.cif}\n"
    return f"campaign: c\nmd: {md}\nmaterials:\n{mats}{extra}"


# ------------------------------------------------------------------------ valid files


def test_valid_campaign_parsed_with_merged_overrides(camp, tmp_path, monkeypatch):
    path = camp(GOOD)
    monkeypatch.chdir(Path("/"))  # structure paths are relative to the YAML, not the cwd
    spec, mats = load_campaign(path)
    assert spec.campaign == "toy-demo"
    assert spec.mobile_species == "Li"
    assert (spec.engine.relax, spec.engine.md) == ("toy", "toy")
    assert spec.md.temperatures_k == [600.0, 800.0, 1000.0]  # sorted
    assert spec.execution.mode == "local"
    assert spec.relax.fmax_ev_a == 0.05 and spec.relax.relax_cell is True
    assert [m.name for m in mats] == ["Li3PS4", "Li3N", "LiCl"]

    ps4, li3n, licl = mats
    assert ps4.structure_path == (tmp_path / "structures" / "Li3PS4.cif").resolve()
    assert ps4.md == spec.md
    assert len(ps4.structure) == 8 and ps4.formula == "Li3PS4"
    # per-material override merged field by field: only the temperatures change
    assert li3n.md.temperatures_k == [500.0, 700.0]
    assert li3n.md.time_step_fs == 2.0
    assert li3n.md.production_ps == 2.0
    assert li3n.md.equilibration_ps == 0.5
    assert li3n.md.pinned_control == "auto"
    assert isinstance(licl.md.pinned_control, PinnedSpecies)
    assert licl.md.pinned_control_arg == ["Cl"]
    assert licl.md.temperatures_k == [600.0, 800.0, 1000.0]

    # physical setup computed with ionflow.structure
    assert ps4.supercell_matrix == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert ps4.n_sites_supercell == 64
    assert sorted(ps4.structure[i].specie.symbol for i in ps4.pinned_indices) == ["S"] * 4
    assert li3n.pinned_indices == [] and "isolated" in li3n.pinned_reason
    assert [licl.structure[i].specie.symbol for i in licl.pinned_indices] == ["Cl"] * 4

    # the structure is not part of dumps
    assert "structure" not in ps4.model_dump()
    json.dumps(ps4.model_dump(mode="json"))


def test_defaults_and_derived_md_quantities(camp):
    spec, (mat,) = load_campaign(camp(_minimal()))
    md = mat.md
    assert (md.time_step_fs, md.equilibration_ps, md.production_ps) == (2.0, 1.0, 5.0)
    assert md.supercell_min_length_a == 10.0
    assert md.thermostat == "nose-hoover" and md.segment_steps is None
    assert md.frame_interval_fs is None and md.frame_interval_effective_fs == 20.0
    assert md.frame_stride_steps == 10
    assert md.production_steps == 2500 and md.equilibration_steps == 500
    assert md.n_production_frames == 250
    assert (spec.engine.relax, spec.engine.md) == ("chgnet", "chgnet")
    assert spec.analysis.drift_reference == "auto" and spec.analysis.fit == "ionflow"


def test_optional_sections_and_shorthands(camp):
    text = _minimal(
        md="{temperatures_k: [600], frame_interval_fs: 4, thermostat: langevin, "
        "pinned_control: off, segment_steps: 1000}",
        extra=(
            "engine: {relax: none, md: toy}\n"
            "relax: {fmax_ev_a: 0.02, max_steps: 100, relax_cell: false}\n"
            "analysis: {drift_reference: framework, fit: pymatgen}\n"
            "vasp: {incar: {encut: 520, ISMEAR: 0}}\n"
            "execution: {mode: fireworks, db_uri_env: IONFLOW_DB, profile: cpu}\n"
        ),
        mats="  - {name: LiCl, structure: structures/LiCl.cif, vasp: {incar: {ENCUT: 600}}}\n",
    )
    spec, (mat,) = load_campaign(camp(text))
    assert spec.engine.relax == "none"
    assert mat.md.pinned_control == "off"  # YAML reads a bare `off` as false
    assert mat.pinned_indices == []
    assert mat.md.frame_stride_steps == 2 and mat.md.thermostat == "langevin"
    assert mat.md.segment_steps == 1000
    assert spec.relax.max_steps == 100 and spec.relax.relax_cell is False
    assert mat.vasp_incar == {"ENCUT": 600, "ISMEAR": 0}
    assert spec.execution.mode == "fireworks" and spec.execution.db_uri_env == "IONFLOW_DB"

    # `engine: toy` means both; `pinned_control: [Cl]` means {species: [Cl]}
    spec, (mat,) = load_campaign(
        camp(_minimal(md="{temperatures_k: [600], pinned_control: [Cl]}", extra="engine: toy\n"))
    )
    assert (spec.engine.relax, spec.engine.md) == ("toy", "toy")
    assert mat.md.pinned_control_arg == ["Cl"]


@pytest.mark.parametrize("filename", ["LiCl.cif", "POSCAR", "LiCl.json"])
def test_structure_formats(camp, filename):
    _, (mat,) = load_campaign(
        camp(_minimal(mats=f"  - {{name: LiCl, structure: structures/{filename}}}\n"))
    )
    assert mat.formula == "LiCl" and mat.n_sites == 8


def test_launchpad_path_relative_to_yaml(camp, tmp_path):
    (tmp_path / "my_launchpad.yaml").write_text("host: localhost\n")
    spec, _ = load_campaign(
        camp(_minimal(extra="execution: {mode: fireworks, launchpad: my_launchpad.yaml}\n"))
    )
    assert Path(spec.execution.launchpad) == (tmp_path / "my_launchpad.yaml").resolve()
    lines = _problems(camp(_minimal(extra="execution: {mode: fireworks, launchpad: nope.yaml}\n")))
    _has(lines, "execution.launchpad: launchpad file not found", "nope.yaml")


def test_other_mobile_species(camp):
    text = _minimal(mats="  - {name: NaCl, structure: structures/NaCl.cif}\n")
    spec, (mat,) = load_campaign(camp(text + "mobile_species: Na\n"))
    assert spec.mobile_species == "Na" and mat.formula == "NaCl"


# ------------------------------------------------------------------ file-level errors


def test_yaml_syntax_error_has_line_number(camp):
    path = camp("campaign: c\nmd: {temperatures_k: [600]\nmaterials: []\n")
    (line,) = _problems(path)
    assert line.startswith(f"{path}: line 3")
    assert "YAML syntax error" in line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("- a\n- b\n", "got a list"), ("just a string\n", "got a str"), ("", "empty")],
)
def test_top_level_must_be_mapping(camp, text, fragment):
    path = camp(text)
    (line,) = _problems(path)
    assert line.startswith(f"{path}: ")
    assert fragment in line
    if text:
        assert "top level must be a mapping" in line


def test_missing_file():
    with pytest.raises(UserInputError, match="nope.yaml: file not found"):
        load_campaign("nope.yaml")


def test_duplicate_yaml_keys(camp):
    lines = _problems(camp(_minimal() + "campaign: again\n"))
    _has(lines, "line 5: duplicate key 'campaign'")


def test_message_format_with_relative_path(camp, tmp_path, monkeypatch):
    camp(
        _minimal(
            mats="  - {name: Li3N, structure: structures/Li3N.cif, "
            "md: {temperatures_k: [500, 500]}}\n"
        )
    )
    monkeypatch.chdir(tmp_path)
    assert _problems(Path("workflows.yaml")) == [
        "workflows.yaml: materials[0] (Li3N): md.temperatures_k: temperatures must be unique, "
        "got [500, 500]"
    ]


# ---------------------------------------------------------------- key-level errors


def test_unknown_keys_everywhere_with_did_you_mean(camp):
    text = """\
        campaign: c
        mobile_specie: Li
        engine: {relax: toy, mdd: toy}
        md: {temperatures_k: [600], time_stepfs: 2.0, pinned_control: {specis: [Cl]}}
        materials:
          - {name: LiCl, structure: structures/LiCl.cif, md: {temprature_k: [700]}}
          - {name: LiCl2, strucure: structures/LiCl.cif}
        execution: {mode: local, launchpd: x.yaml}
        relax: {fmax: 0.1}
        zzzzzz: 1
        """
    path = camp(text)
    lines = _problems(path)
    assert all(line.startswith(f"{path}: ") for line in lines)
    _has(lines, "mobile_specie: unknown key; did you mean 'mobile_species'?")
    _has(lines, "engine.mdd: unknown key; did you mean 'md'?")
    _has(lines, "md.time_stepfs: unknown key; did you mean 'time_step_fs'?")
    _has(lines, "md.pinned_control.specis: unknown key; did you mean 'species'?")
    _has(
        lines,
        "materials[0] (LiCl): md.temprature_k: unknown key; did you mean 'temperatures_k'?",
    )
    _has(lines, "materials[1] (LiCl2): strucure: unknown key; did you mean 'structure'?")
    _has(lines, "materials[1] (LiCl2): structure: missing required key")
    _has(lines, "execution.launchpd: unknown key; did you mean 'launchpad'?")
    _has(lines, "relax.fmax: unknown key; did you mean 'fmax_ev_a'?")
    _has(lines, "zzzzzz: unknown key; allowed keys: campaign,")


def test_missing_required_keys(camp):
    lines = _problems(camp("mobile_species: Li\n"))
    _has(lines, "campaign: missing required key")
    _has(lines, "materials: missing required key")
    _has(lines, "md: missing required key")

    lines = _problems(camp(_minimal(mats="  - {structure: structures/LiCl.cif}\n  - {name: B}\n")))
    _has(lines, "materials[0]: name: missing required key")
    _has(lines, "materials[1] (B): structure: missing required key")

    _has(_problems(camp(_minimal(md="{time_step_fs: 1.0}"))), "md.temperatures_k: missing")
    _has(
        _problems(camp("campaign: c\nmd: {temperatures_k: [600]}\nmaterials: []\n")),
        "materials: must not be empty",
    )


def test_wrong_types(camp):
    text = _minimal(
        md="{temperatures_k: 600, time_step_fs: fast, equilibration_ps: [1]}",
        extra="relax: {max_steps: 2.5, relax_cell: maybe}\nengine: 5\ncampaign2: x\n",
        mats="  - {name: LiCl, structure: 42}\n  - just-a-string\n",
    )
    lines = _problems(camp(text))
    _has(lines, "md.temperatures_k: expected a list, got 600")
    _has(lines, "md.time_step_fs: expected a number, got 'fast'")
    _has(lines, "md.equilibration_ps: expected a number, got [1]")
    _has(lines, "relax.max_steps: expected a whole number, got 2.5")
    _has(lines, "relax.relax_cell: expected true or false, got 'maybe'")
    _has(lines, "engine: expected a mapping, got 5")
    _has(lines, "materials[0] (LiCl): structure: expected a string, got 42")
    _has(lines, "materials[1]: expected a mapping, got 'just-a-string'")


def test_yaml_boolean_gotcha_is_explained(camp):
    lines = _problems(camp(_minimal(extra="mobile_species: no\n")))
    _has(lines, "mobile_species: expected an element symbol, got false", "quote")


# ----------------------------------------------------------------- value rules


@pytest.mark.parametrize(
    ("md", "key", "message"),
    [
        ("{temperatures_k: [600, -5, 0]}", "md.temperatures_k", "must be > 0 K, got [-5, 0]"),
        ("{temperatures_k: [600, 600]}", "md.temperatures_k", "must be unique, got [600, 600]"),
        ("{temperatures_k: []}", "md.temperatures_k", "at least one temperature"),
        (
            "{temperatures_k: [600], time_step_fs: 7.0}",
            "md.time_step_fs",
            "must be > 0 and ≤ 5 fs, got 7.0",
        ),
        (
            "{temperatures_k: [600], time_step_fs: 0}",
            "md.time_step_fs",
            "must be > 0 and ≤ 5 fs, got 0.0",
        ),
        ("{temperatures_k: [600], time_step_fs: -1}", "md.time_step_fs", "must be > 0 and ≤ 5 fs"),
        (
            "{temperatures_k: [600], production_ps: 0}",
            "md.production_ps",
            "must be > 0 and ≤ 100000 ps, got 0",
        ),
        (
            "{temperatures_k: [600], equilibration_ps: -1}",
            "md.equilibration_ps",
            "must be ≥ 0 and ≤ 100000 ps, got -1",
        ),
        (
            "{temperatures_k: [600], supercell_min_length_a: 0}",
            "md.supercell_min_length_a",
            "must be > 0 and ≤ 100 Å, got 0",
        ),
        (
            "{temperatures_k: [600], frame_interval_fs: 15}",
            "md.frame_interval_fs",
            "must be a positive multiple of time_step_fs (2 fs), got 15",
        ),
        (
            "{temperatures_k: [600], frame_interval_fs: -20}",
            "md.frame_interval_fs",
            "must be > 0 fs, got -20",
        ),
        (
            "{temperatures_k: [600], frame_interval_fs: 1}",
            "md.frame_interval_fs",
            "positive multiple of time_step_fs",
        ),
        (
            "{temperatures_k: [600], production_ps: 0.1}",
            "md.production_ps",
            "gives 5 frames; need ≥ 10",
        ),
        (
            "{temperatures_k: [600], production_ps: 1, frame_interval_fs: 200}",
            "md.production_ps",
            "gives 5 frames; need ≥ 10",
        ),
        (
            "{temperatures_k: [600], thermostat: nose_hover}",
            "md.thermostat",
            "unknown thermostat 'nose_hover'; did you mean 'nose-hoover'?",
        ),
        (
            "{temperatures_k: [600], segment_steps: 0}",
            "md.segment_steps",
            "must be > 0 and ≤ 1000000000, got 0",
        ),
        (
            "{temperatures_k: [600], pinned_control: atuo}",
            "md.pinned_control",
            "did you mean 'auto'?",
        ),
        (
            "{temperatures_k: [600], pinned_control: {species: []}}",
            "md.pinned_control.species",
            "list at least one element",
        ),
        (
            "{temperatures_k: [600], pinned_control: {species: [Xx]}}",
            "md.pinned_control.species[0]",
            "'Xx' is not an element symbol",
        ),
    ],
)
def test_md_value_rules(camp, md, key, message):
    path = camp(_minimal(md=md))
    lines = _problems(path)
    line = _has(lines, f"{key}: ", message)
    assert line.startswith(f"{path}: {key}: ")


def test_md_rules_apply_to_overrides_and_merged_settings(camp):
    mats = (
        "  - {name: A, structure: structures/LiCl.cif, md: {temperatures_k: [0]}}\n"
        # valid on its own, but with the campaign's 20 fs frames only 5 frames
        "  - {name: B, structure: structures/LiCl.cif, md: {production_ps: 0.1}}\n"
        "  - {name: C, structure: structures/LiCl.cif, md: {time_step_fs: 3.0}}\n"
    )
    lines = _problems(
        camp(_minimal(md="{temperatures_k: [600], frame_interval_fs: 20}", mats=mats))
    )
    _has(lines, "materials[0] (A): md.temperatures_k: temperatures must be > 0 K, got [0]")
    _has(lines, "materials[1] (B): md.production_ps:", "gives 5 frames")
    _has(
        lines,
        "materials[2] (C): md.frame_interval_fs: must be a positive multiple of "
        "time_step_fs (3 fs), got 20",
    )
    assert len(lines) == 3


def test_material_names_unique_and_filesystem_safe(camp):
    mats = (
        "  - {name: LiCl, structure: structures/LiCl.cif}\n"
        "  - {name: licl, structure: structures/LiCl.cif}\n"
        "  - {name: 'Li/Cl', structure: structures/LiCl.cif}\n"
        "  - {name: '', structure: structures/LiCl.cif}\n"
    )
    lines = _problems(camp(_minimal(mats=mats)))
    _has(lines, "materials[1] (licl): name: duplicate material name 'licl' (also materials[0])")
    _has(lines, "materials[2] (Li/Cl): name:", "not filesystem-safe")
    _has(lines, "materials[3]: name:", "not filesystem-safe")
    lines = _problems(camp(_minimal().replace("campaign: c", "campaign: 'my campaign'")))
    _has(lines, "campaign: campaign name 'my campaign' is not filesystem-safe")


def test_engine_names(camp):
    lines = _problems(camp(_minimal(extra="engine: {relax: chgnett, md: none}\n")))
    _has(lines, "engine.relax: unknown engine 'chgnett'; did you mean 'chgnet'?")
    _has(lines, "engine.md: unknown engine 'none'", "allowed: chgnet, mace, m3gnet, sevennet")
    lines = _problems(camp(_minimal(extra="engine: {md: mace-mp}\n")))
    _has(lines, "engine.md: unknown engine 'mace-mp'; did you mean 'mace'?")
    spec, _ = load_campaign(camp(_minimal(extra="engine: {relax: CHGNet, md: SevenNet}\n")))
    assert (spec.engine.relax, spec.engine.md) == ("chgnet", "sevennet")


def test_mobile_species_must_be_an_element(camp):
    _has(
        _problems(camp(_minimal(extra="mobile_species: Lx\n"))),
        "mobile_species: 'Lx' is not an element symbol",
    )
    _has(
        _problems(camp(_minimal(extra="mobile_species: na\n"))),
        "mobile_species: 'na' is not an element symbol; did you mean 'Na'?",
    )


def test_execution_rules(camp):
    lines = _problems(camp(_minimal(extra="execution: {mode: firework}\n")))
    _has(lines, "execution.mode: unknown execution mode 'firework'; did you mean 'fireworks'?")
    lines = _problems(
        camp(
            _minimal(extra="execution: {mode: fireworks, db_uri: mongodb://h/db, db_uri_env: B}\n")
        )
    )
    _has(lines, "execution.db_uri_env: give at most one of launchpad, db_uri, db_uri_env")
    lines = _problems(camp(_minimal(extra="analysis: {fit: pymatgn, drift_reference: 3}\n")))
    _has(lines, "analysis.fit: unknown fit backend 'pymatgn'; did you mean 'pymatgen'?")
    _has(lines, "analysis.drift_reference: expected one of auto, framework, none, got 3")


# ---------------------------------------------------------------- structure checks


def test_structure_file_problems_name_material_and_file(camp):
    mats = (
        "  - {name: Missing, structure: structures/nope.cif}\n"
        "  - {name: Garbage, structure: structures/garbage.cif}\n"
        "  - {name: Disordered, structure: structures/disordered.cif}\n"
        "  - {name: NaCl, structure: structures/NaCl.cif}\n"
    )
    path = camp(_minimal(mats=mats))
    lines = _problems(path)
    assert len(lines) == 4
    _has(lines, f"{path}: materials[0] (Missing): structure: ", "nope.cif", "does not exist")
    _has(lines, "materials[1] (Garbage): structure: ", "garbage.cif")
    line = _has(lines, "materials[2] (Disordered): structure: ", "disordered.cif")
    assert "partial occupancy" in line and "ordered" in line
    _has(lines, "materials[3] (NaCl): structure: ", "NaCl.cif contains no Li", "Cl, Na")


def test_pinned_control_species_checks(camp):
    mats = (
        "  - {name: LiCl, structure: structures/LiCl.cif}\n"
        "  - {name: Li3N, structure: structures/Li3N.cif, md: {pinned_control: {species: [N]}}}\n"
        "  - {name: PS4, structure: structures/Li3PS4.cif, md: {pinned_control: [Li, S]}}\n"
    )
    lines = _problems(
        camp(_minimal(md="{temperatures_k: [600], pinned_control: {species: [S]}}", mats=mats))
    )
    _has(
        lines,
        "materials[0] (LiCl): md.pinned_control.species: S not in this structure",
        "elements: Cl, Li",
    )
    _has(lines, "materials[2] (PS4): md.pinned_control.species: cannot pin the mobile species Li")
    assert not any("Li3N" in line for line in lines)
    assert len(lines) == 2

    lines = _problems(camp(_minimal(md="{temperatures_k: [600], pinned_control: [Li]}")))
    assert lines == [
        f"{lines[0].split(': ')[0]}: md.pinned_control.species: cannot pin the mobile species Li"
    ]


def test_many_problems_reported_together(camp):
    text = """\
        campaign: c
        mobile_species: Li
        engine: {relax: toy, md: tyo}
        md:
          temperatures_k: [600, 800]
          time_step_fs: 7.0
          pinned_control: auto
        materials:
          - {name: LiCl, structure: structures/LiCl.cif, md: {temprature_k: [700]}}
          - {name: Li3N, structure: structures/Li3N.cif, md: {temperatures_k: [500, 500]}}
          - {name: Dis, structure: structures/disordered.cif}
        """
    path = camp(text)
    lines = _problems(path)
    assert all(line.startswith(f"{path}: ") for line in lines)
    expected = [
        "engine.md: unknown engine 'tyo'; did you mean 'toy'?",
        "md.time_step_fs: must be > 0 and ≤ 5 fs, got 7.0",
        "materials[0] (LiCl): md.temprature_k: unknown key; did you mean 'temperatures_k'?",
        "materials[1] (Li3N): md.temperatures_k: temperatures must be unique, got [500, 500]",
        "materials[2] (Dis): structure: ",
    ]
    for fragment in expected:
        _has(lines, fragment)
    assert len(lines) == len(expected)
    # top-level problems first, then materials in file order
    assert [i for i, line in enumerate(lines) if "materials[" in line] == [2, 3, 4]


# ------------------------------------------------------------ planning / fingerprint


def test_planned_jobs(camp):
    spec, (ps4, li3n, licl) = load_campaign(camp(GOOD))
    assert planned_jobs(spec, ps4) == {
        "relax": 1,
        "supercell": 1,
        "md": 3,
        "pinned_md": 3,
        "analysis": 6,
        "arrhenius": 2,
        "summary": 1,
    }
    # Li3N: only isolated N, so no pinned control
    assert planned_jobs(spec, li3n) == {
        "relax": 1,
        "supercell": 1,
        "md": 2,
        "pinned_md": 0,
        "analysis": 2,
        "arrhenius": 1,
        "summary": 1,
    }
    spec, (mat,) = load_campaign(camp(_minimal(extra="engine: {relax: none, md: toy}\n")))
    assert planned_jobs(spec, mat)["relax"] == 0


def test_stage_keys_are_stable_and_chained(camp):
    """Each stage's reuse key changes exactly when something it depends on changes."""
    from ionflow.campaign import stage_keys

    def keys(text, i=0):
        spec, mats = load_campaign(camp(text))
        return stage_keys(spec, mats[i])

    base = keys(GOOD)
    assert base == keys(GOOD)  # stable across loads
    assert base != keys(GOOD, 1)
    mds = {k for k in base if k[0] == "md"}
    assert mds == {("md", v, t) for v in ("free", "pinned") for t in (600.0, 800.0, 1000.0)}
    assert len(set(base.values())) == len(base)  # every stage its own key

    def changed(other):
        return {k for k in base if k in other and other[k] != base[k]}

    # MD settings: relaxation and supercell reused, everything downstream new
    longer = keys(GOOD.replace("production_ps: 2.0", "production_ps: 3.0"))
    assert changed(longer) == set(base) - {("relax",), ("supercell",)}
    # one more temperature: the existing runs keep their keys; fits and summary change
    more = keys(GOOD.replace("[1000, 600, 800]", "[1000, 600, 800, 1200]"))
    assert changed(more) == {("arrhenius", "free"), ("arrhenius", "pinned"), ("summary",)}
    assert ("md", "free", 1200.0) in more and ("md", "free", 1200.0) not in base
    # analysis settings: MD runs reused
    drift = keys(GOOD + "analysis: {drift_reference: none}\n")
    assert changed(drift) == {k for k in base if k[0] in ("analysis", "arrhenius", "summary")}
    # MD engine: the relaxation and the supercell are reused
    chg = keys(GOOD.replace("md: toy}", "md: chgnet}"))
    assert changed(chg) == set(base) - {("relax",), ("supercell",)}
    # the relaxation settings change everything
    relax = keys(GOOD + "relax: {fmax_ev_a: 0.01}\n")
    assert changed(relax) == set(base)
    # keys are scoped to (campaign, material): a renamed material is a new material
    assert changed(keys(GOOD.replace("name: Li3PS4", "name: Other"))) == set(base)


def test_mdspec_usable_directly():
    md = MDSpec(temperatures_k=[800, 600])
    assert md.temperatures_k == [600.0, 800.0]
    with pytest.raises(ValueError, match="production_ps"):
        MDSpec(temperatures_k=[600], production_ps=0.01)


# ------------------------------------------------------------------------- CLI


def _run_main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_validate_good_file(camp, capsys):
    path = camp(GOOD)
    assert _run_main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    for text in (
        "Li3PS4",
        "Li3N",
        "LiCl",
        "2×2×2",
        "600, 800, 1000",
        "500, 700",
        "4 S (bonded)",
        "4 Cl (listed)",
        "none: ",
        "total: 3 materials",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    # 1 relax + 1 supercell + 3 MD + 3 pinned + 6 analysis + 2 Arrhenius + 1 summary
    assert " 17 " in out


def test_cli_validate_json(camp, capsys):
    path = camp(GOOD)
    assert _run_main(["validate", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["campaign"] == "toy-demo"
    assert [m["name"] for m in data["materials"]] == ["Li3PS4", "Li3N", "LiCl"]
    first = data["materials"][0]
    assert first["n_atoms_input"] == 8 and first["n_atoms_supercell"] == 64
    assert first["supercell_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert first["pinned_control"]["by_element_input_cell"] == {"S": 4}
    assert first["n_jobs"] == 17
    assert data["n_jobs"] == sum(m["n_jobs"] for m in data["materials"])


def test_cli_validate_bad_file_exit_2(camp, capsys):
    path = camp(
        GOOD.replace("time_step_fs: 2.0", "time_step_fs: 7.0").replace(
            "temperatures_k: [500, 700]", "temperatures_k: [500, 500]"
        )
    )
    assert _run_main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.count("error:") == 1 and err.startswith("error: ")
    assert "md.time_step_fs: must be > 0 and ≤ 5 fs, got 7.0" in err
    assert "materials[1] (Li3N): md.temperatures_k: temperatures must be unique" in err
    assert "Traceback" not in err


def test_cli_subprocess_no_traceback(camp):
    exe = Path(sys.executable).parent / "ionflow"
    if not exe.exists():
        pytest.skip("ionflow console script not installed")
    env = {**os.environ, "COLUMNS": "200"}
    bad = camp(_minimal(md="{temperatures_k: [600, 600]}"), name="bad.yaml")
    result = subprocess.run(
        [str(exe), "validate", str(bad)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1
    assert "md.temperatures_k: temperatures must be unique, got [600, 600]" in result.stderr
    assert "Traceback" not in result.stderr

    good = camp(GOOD, name="good.yaml")
    result = subprocess.run(
        [str(exe), "validate", str(good)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Li3PS4" in result.stdout and "Li3N" in result.stdout
