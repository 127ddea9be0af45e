"""Hostile input: every case ends in one ``error: ...`` line naming the thing, exit 2, no
traceback, within a time bound, and nothing written.

A corpus of what a careless or hostile user can hand ``ionflow``: YAML alias bombs (under
several keys, of lists and of mappings, recursive), nesting 50,000 deep in flow and block
style, oversized files and material lists, files that are not files (FIFO, device, directory,
symlink loop, binary), names with line breaks, tabs, NUL, terminal escapes, bidirectional
overrides and non-ASCII letters, numbers that are NaN, infinite, negative zero, huge or YAML
text, degenerate structures, supercells of millions of atoms, MongoDB URIs with a bad port or
an unescaped ``@``, and output paths of the wrong kind. Also: the password of
``execution.db_uri`` is never printed, ``launch --dry-run`` writes no credential file, text
read back from the database is never Rich markup nor raw HTML/Markdown, and every rule the
MD job enforces is checked by ``validate``.

Most cases run ``ionflow.cli.main`` in-process (fast); the worst ones also run the real
``ionflow`` executable in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ionflow.cli import main

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "ionflow"
PASSWORD = "Sup3rS3cretPW"

# --------------------------------------------------------------------------- helpers


def _files(root: Path) -> set[str]:
    """Every path under ``root`` (relative), directories included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run(argv: list[str], capsys, *, seconds: float = 5.0) -> tuple[int, str, str]:
    """``ionflow ARGV`` in-process: (exit status, stdout, stderr), within ``seconds``."""
    start = time.monotonic()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert elapsed < seconds, f"{argv[:2]} took {elapsed:.1f} s (bound {seconds} s)"
    return code, out, err


def one_line(code: int, err: str, *fragments: str, status: int = 2) -> str:
    """Assert exit ``status`` and a single printable ``error:`` line with ``fragments``."""
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err[:2000]}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert line.isprintable(), repr(line)  # no raw ESC, NUL, RTL override, ...
    assert len(line) < 3000, len(line)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert code == status, (code, line)
    return line


@pytest.fixture
def work(tmp_path: Path, monkeypatch):
    """A campaign directory with Li3N.cif; returns (dir, write(text, name) -> path)."""
    shutil.copy(REPO / "examples" / "Li3N.cif", tmp_path / "Li3N.cif")
    monkeypatch.chdir(tmp_path)
    for env in ("IONFLOW_MAX_SPEC_BYTES", "IONFLOW_MAX_MATERIALS", "IONFLOW_MAX_SUPERCELL_ATOMS"):
        monkeypatch.delenv(env, raising=False)

    def write(text: str, name: str = "workflows.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return tmp_path, write


def spec(md: str = "{temperatures_k: [600]}", name: str = "Li3N", extra: str = "") -> str:
    return (
        "campaign: c\nengine: {relax: toy, md: toy}\n"
        f"md: {md}\nmaterials:\n  - {{name: {name}, structure: Li3N.cif}}\n{extra}"
    )


def validate_fails(work, capsys, text: str, *fragments: str, seconds: float = 5.0) -> str:
    """``validate`` of ``text``: one line with ``fragments``, exit 2, nothing written."""
    root, write = work
    path = write(text)
    before = _files(root)
    code, out, err = run(["validate", path], capsys, seconds=seconds)
    assert out == ""
    line = one_line(code, err, "workflows.yaml", *fragments)
    assert _files(root) == before
    return line


def _bomb(levels: int = 10, width: int = 9, kind: str = "list", prefix: str = "x") -> str:
    """Anchors ``x0..x{levels-1}``, each holding ``width`` aliases of the previous."""
    if kind == "list":
        lines = [f"{prefix}0: &{prefix}0 [" + ", ".join(["600"] * width) + "]"]
        for i in range(1, levels):
            lines.append(
                f"{prefix}{i}: &{prefix}{i} [" + ", ".join([f"*{prefix}{i - 1}"] * width) + "]"
            )
    else:
        lines = [f"{prefix}0: &{prefix}0 {{" + ", ".join(f"k{j}: 1" for j in range(width)) + "}"]
        for i in range(1, levels):
            items = ", ".join(f"k{j}: *{prefix}{i - 1}" for j in range(width))
            lines.append(f"{prefix}{i}: &{prefix}{i} {{{items}}}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ YAML structure


def test_alias_bomb_under_md_temperatures(work, capsys):
    """The issue's case: anchors nested 10 deep, used under md.temperatures_k."""
    text = "campaign: c\nengine: toy\n" + _bomb() + "md: {temperatures_k: *x9}\n"
    text += "materials: [{name: A, structure: Li3N.cif}]\n"
    validate_fails(work, capsys, text, "more than 2,000,000 values", "alias", seconds=2)


@pytest.mark.parametrize(
    "text",
    [
        # anchors inside md, used in a material's override
        "campaign: c\nmd:\n  temperatures_k: &t [600, 700]\n  b: &b0 [*t, *t, *t, *t, *t, *t, *t, *t]\n"
        + "".join(
            f"  b{i}: &b{i} [" + ", ".join([f"*b{i - 1}" if i > 1 else "*b0"] * 8) + "]\n"
            for i in range(1, 10)
        )
        + "materials: [{name: A, structure: Li3N.cif, md: {temperatures_k: *b9}}]\n",
        # under vasp.incar, where any value is accepted
        "campaign: c\nmd: {temperatures_k: [600]}\nmaterials: [{name: A, structure: Li3N.cif}]\n"
        "vasp:\n  incar:\n" + "".join(f"    {line}\n" for line in _bomb(prefix="I").splitlines()),
        # a bomb of mappings
        "campaign: c\n" + _bomb(kind="map") + "md: *x9\nmaterials: []\n",
        # under the material name and the campaign name
        _bomb(prefix="n") + "campaign: *n9\nmd: {temperatures_k: [600]}\n"
        "materials: [{name: *n9, structure: Li3N.cif}]\n",
    ],
    ids=["in-md-override", "vasp-incar", "mappings", "names"],
)
def test_alias_bombs_under_other_keys(work, capsys, text):
    validate_fails(work, capsys, text, "more than 2,000,000 values", seconds=2)


def test_recursive_alias(work, capsys):
    validate_fails(
        work,
        capsys,
        "campaign: c\nmd: &m {temperatures_k: [600], x: *m}\nmaterials: []\n",
        "line 2",
        "recursive alias",
        seconds=2,
    )


def test_small_aliases_are_fine(work, capsys):
    root, write = work
    text = (
        "campaign: c\nengine: toy\nmd: &md {temperatures_k: [600, 800]}\n"
        "materials:\n  - {name: A, structure: Li3N.cif, md: *md}\n"
        "  - {name: B, structure: Li3N.cif, md: *md}\n"
    )
    code, out, err = run(["validate", write(text)], capsys)
    assert code == 0, err
    assert "total: 2 materials" in out


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("[" * 50_000 + "]" * 50_000, 3),
        ("{a: " * 50_000 + "1" + "}" * 50_000, 3),
        ("[{a: " * 25_000 + "1" + "}]" * 25_000, 3),
    ],
    ids=["flow-lists", "flow-mappings", "mixed"],
)
def test_nesting_50000_deep(work, capsys, body, line):
    validate_fails(
        work,
        capsys,
        f"campaign: c\nmd: {{temperatures_k: [600]}}\nx: {body}\n",
        f"line {line}",
        "nested more than 64 deep",
        seconds=2,
    )


def test_block_nesting_over_the_limit(work, capsys):
    text = "campaign: c\nx:\n" + "".join(f"{' ' * (i + 1)}k{i}:\n" for i in range(70)) + "\n"
    validate_fails(work, capsys, text, "nested more than 64 deep")


def test_50000_deep_in_the_real_executable(work):
    """No RecursionError, no traceback, answered fast by the installed console script."""
    if not EXE.exists():
        pytest.skip("ionflow console script not installed")
    root, write = work
    for body in ("[" * 50_000 + "]" * 50_000, "{a: " * 50_000 + "1" + "}" * 50_000):
        path = write(f"campaign: c\nmd: {body}\n", "deep.yaml")
        start = time.monotonic()
        proc = subprocess.run(
            [str(EXE), "validate", str(path)], capture_output=True, text=True, timeout=60
        )
        assert time.monotonic() - start < 20
        one_line(proc.returncode, proc.stderr, "nested more than 64 deep")


def test_alias_bomb_in_the_real_executable(work):
    if not EXE.exists():
        pytest.skip("ionflow console script not installed")
    root, write = work
    path = write(
        "campaign: c\n" + _bomb() + "md: {temperatures_k: *x9}\nmaterials: []\n", "bomb.yaml"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [str(EXE), "validate", "--json", str(path)], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - start < 20
    one_line(proc.returncode, proc.stderr, "bomb.yaml", "alias")
    assert proc.stdout == ""


def test_file_size_limit_and_override(work, capsys, monkeypatch):
    root, write = work
    text = spec() + "description: '" + "x" * 5000 + "'\n"
    monkeypatch.setenv("IONFLOW_MAX_SPEC_BYTES", "4096")
    validate_fails(work, capsys, text, "more than a campaign file may have", "4,096 bytes",
                   "IONFLOW_MAX_SPEC_BYTES")  # fmt: skip
    monkeypatch.setenv("IONFLOW_MAX_SPEC_BYTES", "100000")
    code, _, err = run(["validate", write(text)], capsys)
    assert code == 0, err


def test_materials_limit_listed_and_through_an_alias(work, capsys, monkeypatch):
    monkeypatch.setenv("IONFLOW_MAX_MATERIALS", "3")
    mats = "".join(f"  - {{name: M{i}, structure: Li3N.cif}}\n" for i in range(5))
    text = "campaign: c\nengine: toy\nmd: {temperatures_k: [600]}\nmaterials:\n" + mats
    validate_fails(work, capsys, text, "more than 3 materials", "IONFLOW_MAX_MATERIALS")
    aliased = (
        "campaign: c\nengine: toy\nmd: {temperatures_k: [600]}\n"
        f"x: &m [{', '.join(f'{{name: M{i}, structure: Li3N.cif}}' for i in range(5))}]\n"
        "materials: *m\n"
    )
    validate_fails(work, capsys, aliased, "5 materials, more than 3", "IONFLOW_MAX_MATERIALS")
    monkeypatch.setenv("IONFLOW_MAX_MATERIALS", "many")  # a bad override: named, one line
    code, _, err = run(["validate", work[1](text)], capsys)
    one_line(code, err, "IONFLOW_MAX_MATERIALS: expected a whole number ≥ 1, got 'many'")


def test_many_materials_answer_fast(work, capsys, monkeypatch):
    """250,000 materials (10 MB): refused at the 10,001st, without reading the rest."""
    monkeypatch.setenv("IONFLOW_MAX_SPEC_BYTES", str(100 * 1024 * 1024))
    mats = "".join(f"  - {{name: M{i}, structure: Li3N.cif}}\n" for i in range(250_000))
    text = "campaign: c\nmd: {temperatures_k: [600]}\nmaterials:\n" + mats
    validate_fails(work, capsys, text, "more than 10,000 materials", seconds=3)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "not a regular file"),  # must not block reading it
        (lambda p: p.symlink_to(p), "symbolic link loop"),
        (lambda p: p.symlink_to(p.with_name("missing.yaml")), "symbolic link to a missing file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 100), "not UTF-8"),
        (lambda p: p.write_text("campaign: c\x1b[2J\n"), "not allowed in YAML"),
        (lambda p: p.write_text("campaign: c\nmd: " + "9" * 5000 + "\n"), "more than 4300 digits"),
        (lambda p: p.write_text("campaign: c\n---\ncampaign: d\n"), "single document"),
        (lambda p: p.write_text("a: !!python/object:os.system x\n"), "YAML syntax error"),
    ],
    ids=["dir", "fifo", "loop", "dangling", "binary", "escape", "huge-int", "two-docs", "tag"],
)
def test_campaign_file_that_is_not_a_yaml_file(work, capsys, make, fragment):
    root, _ = work
    path = root / "workflows.yaml"
    make(path)
    before = _files(root)
    code, out, err = run(["validate", path], capsys)
    one_line(code, err, "workflows.yaml", fragment)
    assert _files(root) == before


def test_device_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["validate", os.devnull], capsys)
    one_line(code, err, os.devnull, "not a regular file")


# ------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ('"Li3N\\n"', "ends with a line break"),  # the issue's case
        ('"Li3N\\r"', "ends with a line break"),
        ('" Li3N"', "starts with whitespace"),
        ('"Li3N "', "ends with whitespace"),
        ('"Li\\tN"', "\\x09"),
        ('"Li\\0N"', "\\x00"),
        ('"Li\\e[31mN"', "\\x1b"),  # a terminal escape: echoed escaped, never raw
        ('"Li\\u202eN"', "\\u202e"),  # right-to-left override
        ('"Li\\u200bN"', "\\u200b"),  # zero-width space
        ("'../Li3N'", "path separator '/'"),
        ("'Li\\N'", "path separator"),
        ("'.hidden'", "starts with '.'"),
        ("'-rf'", "starts with '-'"),
        ("'" + "A" * 65 + "'", "65 characters"),
        ("'LiαN'", "contains 'α'"),
        ("'Li₃N'", "did you mean 'Li3N'?"),
        ("'Li N'", "contains whitespace"),
        ("''", "empty"),
    ],
)
def test_bad_material_names(work, capsys, name, fragment):
    line = validate_fails(
        work, capsys, spec(name=name), "name:", "is not filesystem-safe", fragment
    )
    assert "ASCII letters, digits" in line


def test_names_that_are_fine_and_unicode_elsewhere(work, capsys):
    root, write = work
    text = spec(name="Li3N_v2.0-a") + 'description: "Li₃N — ortho/hexa ✓ 日本語 \\u00e9"\n'
    code, out, err = run(["validate", write(text)], capsys)
    assert code == 0, err
    assert "Li3N_v2.0-a" in out
    assert not list(root.glob("Li3N*/"))  # validate creates no run directory


def test_campaign_name_with_escape_and_huge_name(work, capsys):
    validate_fails(
        work, capsys, spec().replace("campaign: c", 'campaign: "x\\e]0;pwned\\a"'), "\\x1b"
    )
    line = validate_fails(work, capsys, spec(name="'" + "N" * 1_000_000 + "'"), "characters")
    assert len(line) < 1000  # the name is cut before it is rendered


def test_unknown_key_with_escape_is_echoed_escaped(work, capsys):
    validate_fails(work, capsys, spec() + '"\\e[2Jx": 1\n', "\\x1b[2Jx", "unknown key")


# ---------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("md", "key", "fragment"),
    [
        ("{temperatures_k: [.nan]}", "md.temperatures_k", "> 0 K, got [nan]"),
        ("{temperatures_k: [.inf]}", "md.temperatures_k", "got [inf]"),
        ("{temperatures_k: [-.inf]}", "md.temperatures_k", "got [-inf]"),
        ("{temperatures_k: [-0.0]}", "md.temperatures_k", "> 0 K"),
        ("{temperatures_k: [1.0e+30]}", "md.temperatures_k", "≤ 5000 K, got [1e+30]"),
        ("{temperatures_k: [5001]}", "md.temperatures_k", "≤ 5000 K"),
        ("{temperatures_k: [99999999999999999999999]}", "md.temperatures_k", "≤ 5000 K"),
        ("{temperatures_k: [1.0e30]}", "md.temperatures_k[0]", "write 1.0e+30"),
        ("{temperatures_k: [600], production_ps: 1e3}", "md.production_ps", "write 1.0e+3"),
        (
            "{temperatures_k: [" + ", ".join(str(300 + i) for i in range(60)) + "]}",
            "md.temperatures_k",
            "at most 50 temperatures, got 60",
        ),
        ("{temperatures_k: [600], time_step_fs: 1.0e-300}", "md.time_step_fs", "≥ 0.05 and ≤ 5 fs"),
        ("{temperatures_k: [600], time_step_fs: -0.0}", "md.time_step_fs", "> 0 and ≤ 5 fs"),
        ("{temperatures_k: [600], time_step_fs: .nan}", "md.time_step_fs", "got nan"),
        ("{temperatures_k: [600], production_ps: 1.0e+300}", "md.production_ps", "≤ 100000 ps"),
        ("{temperatures_k: [600], production_ps: .inf}", "md.production_ps", "got inf"),
        ("{temperatures_k: [600], equilibration_ps: .nan}", "md.equilibration_ps", "got nan"),
        (
            "{temperatures_k: [600], supercell_min_length_a: 1.0e+6}",  # the issue's case
            "md.supercell_min_length_a",
            "≤ 100 Å, got 1000000",
        ),
        ("{temperatures_k: [600], supercell_min_length_a: 300.0}", "md.supercell_min_length_a", "≤ 100 Å"),
        ("{temperatures_k: [600], segment_steps: 99999999999999999999999}", "md.segment_steps", "≤ 1000000000"),
        ("{temperatures_k: [600], frame_interval_fs: .inf}", "md.frame_interval_fs", "got inf"),
    ],
)  # fmt: skip
def test_numbers_out_of_bounds(work, capsys, md, key, fragment):
    validate_fails(work, capsys, spec(md=md), f"{key}: ", fragment)


def test_supercell_atoms_counted_before_any_supercell_is_built(work, capsys, monkeypatch):
    # 100 Å around a 4-atom, 45 Å³ cell: ~90,000 atoms, refused from the volume alone
    line = validate_fails(
        work, capsys, spec(md="{temperatures_k: [600], supercell_min_length_a: 100.0}"),
        "materials[0] (Li3N): md.supercell_min_length_a:", "at least 89,568 atoms",
        "the limit is 20,000 atoms", "IONFLOW_MAX_SUPERCELL_ATOMS", seconds=3,
    )  # fmt: skip
    assert "Li3N.cif" in line
    # the exact count once the supercell is found, and the override
    monkeypatch.setenv("IONFLOW_MAX_SUPERCELL_ATOMS", "30")  # below the volume bound (92)
    validate_fails(work, capsys, spec(), "at least 92 atoms", "limit is 30 atoms")
    monkeypatch.setenv("IONFLOW_MAX_SUPERCELL_ATOMS", "100")  # above it, below the 112 found
    validate_fails(work, capsys, spec(), "gives a supercell of 112 atoms", "limit is 100 atoms")
    monkeypatch.setenv("IONFLOW_MAX_SUPERCELL_ATOMS", "112")
    root, write = work
    code, _, err = run(["validate", write(spec())], capsys)
    assert code == 0, err


def test_relax_max_steps_bound(work, capsys):
    validate_fails(
        work, capsys, spec(extra="relax: {max_steps: 99999999999999}\n"), "relax.max_steps"
    )


# ------------------------------------------------------------ validate = MD job


def test_equilibration_not_whole_frames_is_refused_at_validate(work, capsys):
    """The issue's case: 0.05 ps at 2 fs is 25 steps; frames every 10 steps. `validate` says
    what the MD job (ionflow.md.MDSettings) would refuse, in the file's own keys."""
    line = validate_fails(
        work,
        capsys,
        spec(md="{temperatures_k: [600], time_step_fs: 2.0, equilibration_ps: 0.05}"),
        "md.equilibration_ps: 0.05 ps is 25 steps of 2 fs",
        "not a whole number of saved frames",
        "MD job refuses",
        "e.g. 0.04 or 0.06",
    )
    assert "equilibration_steps=25" not in line  # said in ps, not in the job's field names


def test_production_not_whole_frames_in_a_material_override(work, capsys):
    text = spec().replace("structure: Li3N.cif}", "structure: Li3N.cif, md: {production_ps: 2.01}}")
    validate_fails(
        work, capsys, text, "materials[0] (Li3N): md.production_ps: 2.01 ps is 1005 steps"
    )


@pytest.mark.parametrize(
    ("dt", "eq", "prod", "frame"),
    [(2.0, 1.0, 5.0, None), (4.0, 0.2, 3.2, 20.0), (1.0, 10.0, 60.0, 10.0), (0.5, 0.0, 1.0, 5.0)],
)
def test_validated_settings_are_what_the_md_job_builds(dt, eq, prod, frame):
    """A spec that validates gives MDSettings the job accepts, with the job's step counts."""
    from ionflow.md import MDSettings
    from ionflow.spec import MDSpec

    md = MDSpec(
        temperatures_k=[800.0], time_step_fs=dt, equilibration_ps=eq, production_ps=prod,
        frame_interval_fs=frame,
    )  # fmt: skip
    settings = md.md_settings(800.0)
    assert isinstance(settings, MDSettings)
    # the MD maker's conversion (makers/md.py): int(round(ps * 1000 / dt))
    assert settings.equilibration_steps == int(round(eq * 1000.0 / dt))
    assert settings.production_steps == int(round(prod * 1000.0 / dt))
    assert settings.checkpoint_interval_steps % settings.frame_interval_steps == 0


# ------------------------------------------------------------------- structures


POSCAR_ZERO = """zero volume
1.0
3.0 0.0 0.0
6.0 0.0 0.0
0.0 0.0 3.0
Li N
3 1
Direct
0 0 0.5
0.33 0.66 0
0.66 0.33 0
0 0 0
"""


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.write_text(POSCAR_ZERO), "zero volume"),  # the issue's case
        (
            lambda p: p.write_text(POSCAR_ZERO.replace("6.0 0.0 0.0", "0.0 0.001 0.0")),
            "degenerate",
        ),
        (lambda p: p.symlink_to(p), "symbolic link loop"),
        (lambda p: p.symlink_to(p.with_name("gone")), "symbolic link to a missing file"),
        (lambda p: os.mkfifo(p), "is not a file"),
        (lambda p: p.mkdir(), "is not a file"),
        (lambda p: p.write_bytes(os.urandom(3000)), "cannot read"),
    ],
    ids=["zero-volume", "flat", "loop", "dangling", "fifo", "dir", "binary"],
)
def test_bad_structure_files(work, capsys, make, fragment):
    root, _ = work
    make(root / "POSCAR")
    text = spec().replace("Li3N.cif", "POSCAR")
    validate_fails(work, capsys, text, "materials[0] (Li3N): structure:", "POSCAR", fragment)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_structure_json_with_nan_lattice(work, capsys):
    from pymatgen.core import Structure

    root, _ = work
    data = Structure.from_file(root / "Li3N.cif").as_dict()
    data["lattice"]["matrix"][0][0] = float("nan")
    (root / "nan.json").write_text(json.dumps(data))
    validate_fails(work, capsys, spec().replace("Li3N.cif", "nan.json"), "nan.json")


def test_structure_path_with_nul_and_escape(work, capsys):
    validate_fails(work, capsys, spec().replace("Li3N.cif", '"Li3N\\0.cif"'), "structure:", "\\x00")
    validate_fails(
        work, capsys, spec().replace("Li3N.cif", '"\\e[31mLi3N.cif"'), "structure:", "\\x1b"
    )


def test_symlink_loop_campaign_in_the_real_executable(work):
    if not EXE.exists():
        pytest.skip("ionflow console script not installed")
    root, _ = work
    (root / "a.yaml").symlink_to(root / "b.yaml")
    (root / "b.yaml").symlink_to(root / "a.yaml")
    proc = subprocess.run(
        [str(EXE), "validate", str(root / "a.yaml")], capture_output=True, text=True, timeout=60
    )
    one_line(proc.returncode, proc.stderr, "a.yaml", "symbolic link loop")


# ------------------------------------------------------------------- secrets


URI = f"mongodb://alice:{PASSWORD}@db.example.org:27017/ionflow?authSource=admin"


def test_validate_json_masks_the_password(work, capsys):
    root, write = work
    path = write(spec(extra=f'execution: {{mode: fireworks, db_uri: "{URI}"}}\n'))
    code, out, err = run(["validate", "--json", path], capsys)
    assert code == 0, err
    assert PASSWORD not in out + err
    data = json.loads(out)
    assert data["execution"]["db_uri"] == (
        "mongodb://alice:***@db.example.org:27017/ionflow?authSource=admin"
    )
    code, out, err = run(["validate", path], capsys)  # the table neither
    assert code == 0 and PASSWORD not in out + err


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        (URI.replace(f"{PASSWORD}@", f"{PASSWORD}@x@"), "unescaped '@'"),
        (URI.replace(":27017", ":99999"), "port 99999 of host 'db.example.org' must be 1–65535"),
        (URI.replace(":27017", ":80x"), "must be a whole number"),
        (URI.replace(":27017", ":0"), "port 0"),
        (URI.replace("mongodb://", "mongodb+srv://"), "no port"),
        (URI.replace("db.example.org:27017", ""), "no host"),
        (URI.replace(f"{PASSWORD}@", f"{PASSWORD}/x@"), "unescaped"),
        (URI.replace(f"{PASSWORD}@", f"{PASSWORD} @"), "whitespace"),
        (f"postgres://alice:{PASSWORD}@h/db", "starting with 'mongodb://'"),
    ],
)
def test_bad_uri_in_the_campaign(work, capsys, uri, fragment):
    line = validate_fails(
        work,
        capsys,
        spec(extra=f'execution: {{mode: fireworks, db_uri: "{uri}"}}\n'),
        "execution.db_uri:",
        fragment,
    )
    assert PASSWORD not in line


@pytest.mark.parametrize(
    "argv",
    [
        ["query"],
        ["export", "--format", "json"],
        ["report", "--out", "rep"],
        ["export-trajectory", "--campaign", "c", "--material", "m", "--temperature-k", "600",
         "--out", "t.extxyz"],
        ["launch", "--dry-run"],
        ["recover", "--dry-run"],
        ["status", "workflows.yaml"],
    ],
    ids=lambda a: a[0],
)  # fmt: skip
@pytest.mark.parametrize(
    "uri", [URI.replace(":27017", ":99999"), URI.replace(f"{PASSWORD}@", f"{PASSWORD}@x@")]
)
def test_bad_uri_on_the_command_line(work, capsys, argv, uri):
    root, write = work
    if argv[0] == "status":
        write(spec())
    before = _files(root)
    code, out, err = run([*argv, "--uri", uri, "--data-dir", root / "data"], capsys)
    line = one_line(code, err, "uri")
    assert PASSWORD not in out + err
    assert "port 99999" in line or "unescaped '@'" in line
    assert _files(root) == before


def test_launch_dry_run_writes_no_credential_file(work, capsys):
    """A real embedded server; `launch --dry-run` counts and writes no worker file."""
    from ionflow.store import LocalServer

    root, write = work
    write(spec())
    data = root / "data"
    try:
        code, out, err = run(
            ["launch", "workflows.yaml", "--dry-run", "--profile", "md", "--data-dir", data,
             "--profiles-dir", REPO / "slurm" / "local" / "profiles"],
            capsys, seconds=60,
        )  # fmt: skip
        assert code == 0, err
        assert "would submit 0 job(s)" in out
        assert "Traceback" not in err
        written = {p.name for p in root.rglob("*")}
        for secret in ("my_launchpad.yaml", "jobstore.json", "my_fworker.yaml", "jobflow.yaml"):
            assert secret not in written
        assert not (data / "hpc").exists()
    finally:
        server = LocalServer.running(data)
        if server is not None:
            server.stop(timeout_s=10)


# --------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["query", "--limit", "99999999999999999999"], "--limit must be between 1 and 1000000000"),
        (["query", "--limit", "0"], "--limit must be between 1"),
        (["query", "--limit", "-3"], "--limit must be between 1"),
        (["query", "--limit", "1" * 5000], "--limit"),
        (["export", "--out", "adir"], "--out adir: is a directory"),
        (["export", "--out", "afile/x.csv"], "afile is not a directory"),
        (["report", "--out", "afile"], "--out afile: is a file"),
        (["report", "--out", "afile/sub"], "afile is not a directory"),
        (["export-trajectory", "--campaign", "c", "--material", "m", "--temperature-k", "600",
          "--out", "adir"], "--out adir: is a directory"),
        (["export-trajectory", "--campaign", "c", "--material", "m", "--temperature-k", "600",
          "--out", "x.extxyz", "--every", "0"], "--every must be ≥ 1"),
        (["query", "--format", "\x1b[31mxml"], "\\x1b[31mxml"),
    ],
)  # fmt: skip
def test_output_paths_and_options(work, capsys, argv, fragment):
    """Checked before any database is opened: nothing is written (no existing_dir.part)."""
    root, _ = work
    (root / "adir").mkdir()
    (root / "afile").write_text("keep me\n")
    before = _files(root)
    code, out, err = run([*argv, "--data-dir", root / "nodb"], capsys)
    one_line(code, err, fragment)
    assert _files(root) == before
    assert (root / "afile").read_text() == "keep me\n"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x00\x01\x02\xff\xfe\xfd" * 1000, "binary file"),
        (b"", "not an `ionflow analyze --json` output"),
        (b"[1, 2, 3]", "not an `ionflow analyze --json` output"),
        (b'{"a": ' * 10000 + b"1" + b"}" * 10000, "not an `ionflow analyze --json` output"),
    ],
    ids=["binary", "empty", "list", "deep-json"],
)
def test_arrhenius_on_files_that_are_not_analyses(work, capsys, content, fragment):
    root, _ = work
    (root / "a.json").write_bytes(content)
    code, _, err = run(["arrhenius", root / "a.json", root / "a.json"], capsys)
    one_line(code, err, "a.json", fragment)


def test_arrhenius_on_a_directory(work, capsys):
    root, _ = work
    code, _, err = run(["arrhenius", root, root], capsys)
    one_line(code, err, "is a directory")


# ---------------------------------------------------- text read back from the DB


def _results_helpers():
    name = "_ionflow_test_results_helpers"
    if name not in sys.modules:
        spec_ = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("test_results.py")
        )
        module = importlib.util.module_from_spec(spec_)
        sys.modules[name] = module
        spec_.loader.exec_module(module)
    return sys.modules[name]


HOSTILE_TEXT = {
    "material": "[/]Li[red]3N",
    "engine_md": "[bold]chgnet[/bold]",
    "pinned_verdict": "<script>alert(1)</script> [x](javascript:alert(1)) \x1b[2J",
}


@pytest.fixture
def hostile_db(monkeypatch):
    """A mongomock database holding one summary whose text fields are hostile."""
    from types import SimpleNamespace

    import mongomock

    import ionflow.results as results

    h = _results_helpers()
    summary, _ = h.build_material(h.SPECS[0])
    bad = summary.model_copy(update=HOSTILE_TEXT)
    db = mongomock.MongoClient()["ionflow"]
    h.insert_all(db, [(bad, ())])
    client = SimpleNamespace(close=lambda: None)
    monkeypatch.setattr(results, "open_query_database", lambda *a, **k: (db, "mongomock", client))
    monkeypatch.setattr(results, "open_database", lambda *a, **k: db)
    return db


def test_query_table_shows_database_text_literally(hostile_db, work, capsys, monkeypatch):
    """Rich markup in a stored field (the issue: `[/]` crashed `ionflow query`)."""
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = run(["query"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "[/]Li[red]3N" in out and "[bold]chgnet[/bold]" in out
    assert "\x1b[2J" not in out and "\\x1b[2J" in out


def test_report_markdown_and_html_are_inert(hostile_db, work, capsys):
    root, _ = work
    code, out, err = run(["report", "--out", root / "rep"], capsys, seconds=60)
    assert code == 0, err
    md = (root / "rep" / "report.md").read_text()
    html = (root / "rep" / "index.html").read_text()
    assert "<script>" not in md and "&lt;script>" in md
    assert not re.search(r"(?<!\\)\]\(javascript", md)  # the link is escaped: \](
    assert "\x1b" not in md
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["run"],
        ["status"],
        ["submit"],
        ["launch", "--dry-run"],
        ["inputs", "--out", "o"],
    ],
    ids=lambda a: a[0],
)
def test_symlink_loop_campaign_for_every_command(work, capsys, argv):
    root, _ = work
    (root / "a.yaml").symlink_to(root / "b.yaml")
    (root / "b.yaml").symlink_to(root / "a.yaml")
    before = _files(root)
    code, _, err = run([argv[0], "a.yaml", *argv[1:]], capsys)
    one_line(code, err, "a.yaml", "symbolic link loop")
    assert _files(root) == before


def test_run_summary_table_shows_database_text_literally():
    """`ionflow run`'s closing table and notes read summaries back: never markup."""
    from rich.console import Console

    from ionflow.cli.run_cmds import print_summaries

    h = _results_helpers()
    summary, _ = h.build_material(h.SPECS[0])
    bad = summary.model_copy(update=HOSTILE_TEXT).model_dump(mode="json")
    bad["free"]["runs"][0]["regime"] = "[red]diffusive"
    con = Console(record=True, width=400, force_terminal=False)
    print_summaries(con, [bad])  # a markup error would raise here
    text = con.export_text()
    assert "[/]Li[red]3N" in text and "[red]diffusive" in text
    assert "\x1b[2J" not in text and "\\x1b[2J" in text
