"""One plan of a material's jobs, read by the flows, the reuse keys, ``validate``, ``inputs``
and ``status``.

The reuse keys are pinned: existing databases find their jobs by these keys, so no change
to the planning code may alter a single one of them. The values below were computed by the
code as it was before :mod:`ionflow.plan` existed and are hard-coded on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The toy campaign of tests/test_campaign.py (its ``_spec`` defaults).
TOY_YAML = """
campaign: toy-campaign
mobile_species: Li
engine: {{relax: toy, md: toy}}
md:
  temperatures_k: [600, 900]
  time_step_fs: 2.0
  equilibration_ps: 0.05
  production_ps: 0.4
  frame_interval_fs: 10
  supercell_min_length_a: 9.0
materials:
  - {{name: Li6PS5Cl, structure: {ps4}}}
  - {{name: Li3N, structure: {li3n}, md: {{supercell_min_length_a: 7.0}}}}
relax: {{max_steps: 20}}
"""


def _toy(tmp: Path) -> Path:
    path = tmp / "toy.yaml"
    path.write_text(
        TOY_YAML.format(ps4=REPO / "examples" / "Li6PS5Cl.cif", li3n=REPO / "examples" / "Li3N.cif")
    )
    return path


# ------------------------------------------------------------------ pinned reuse keys
# stage_keys(spec, material) of every material, as computed before ionflow.plan existed.

DEMO = {
    "Li6PS5Cl": {
        ("relax",): "0a2e9ea9564e4908aeceed0d",
        ("supercell",): "f1096e81dbcf2a67ce79d124",
        ("md", "free", 1000.0): "e039c450045aca6556026116",
        ("analysis", "free", 1000.0): "091a3943cd308a6c55df5ce5",
        ("md", "free", 1150.0): "2708b540a25142c765213588",
        ("analysis", "free", 1150.0): "573cf73a4f746f7eadaf622d",
        ("md", "free", 1300.0): "d8cb8b48838e496a58440b28",
        ("analysis", "free", 1300.0): "337fac5386a2b0c4e0d798d8",
        ("arrhenius", "free"): "005b572e2ef73908da0b256e",
        ("md", "pinned", 1000.0): "746fc3c37e50193435134c25",
        ("analysis", "pinned", 1000.0): "119ae9025adce33378c68183",
        ("md", "pinned", 1150.0): "27f9baac7df2eaf564125632",
        ("analysis", "pinned", 1150.0): "889ea6bb957906b85cad3ba5",
        ("md", "pinned", 1300.0): "03aa484d5c2e137de5ed1e99",
        ("analysis", "pinned", 1300.0): "3ed468217b7d02748ef680cc",
        ("arrhenius", "pinned"): "7d2e70dbf51febcef106b5c9",
        ("summary",): "3ca756fab461e05204149ac5",
    },
    "Li3N": {
        ("relax",): "ceaa0dfee52f08192b6d4c7a",
        ("supercell",): "f003c88e5c7cc7eae17c3c0c",
        ("md", "free", 900.0): "da9bac457a67a17a1936b8dd",
        ("analysis", "free", 900.0): "3c40018bb707c3bafdb6fbe5",
        ("md", "free", 1000.0): "6d2ad2801d8769252f081008",
        ("analysis", "free", 1000.0): "56fd623b6eb44f462e20f781",
        ("md", "free", 1100.0): "471a6e995ab8c5bb2f2ef39c",
        ("analysis", "free", 1100.0): "86382b17d1fd5a480517e54c",
        ("arrhenius", "free"): "6809a758099f1dc64fa15435",
        ("summary",): "bd2c03dd72e9f53685989e03",
    },
}

VASP_REFERENCE = {
    "Li6PS5Cl": {
        ("relax",): "467c99a823748026265259d8",
        ("supercell",): "dc2ef9239501d3a906052b6f",
        ("md", "free", 600.0): "eeab6ad0bd3e5e4ba79c8c00",
        ("analysis", "free", 600.0): "3695be43d1af39a7123a0b39",
        ("arrhenius", "free"): "3d73f2f42a237e676dd47deb",
        ("md", "pinned", 600.0): "e7d5a81404980e448976b516",
        ("analysis", "pinned", 600.0): "6154f673106636b359f1001b",
        ("arrhenius", "pinned"): "c921e19a98dda29234782850",
        ("summary",): "14bbe20954ac84ccc1a70c4d",
    },
}

TOY = {
    "Li6PS5Cl": {
        ("relax",): "9623f21f3edea10b17009bb9",
        ("supercell",): "e64e6cd1d54c291e1f0c2902",
        ("md", "free", 600.0): "9c2eadc91ff8475d654aa40c",
        ("analysis", "free", 600.0): "769b185a17764456cffa27ba",
        ("md", "free", 900.0): "6a336b37ce45b1b4a47ccc3d",
        ("analysis", "free", 900.0): "2bd56d66479a27d0ae937e31",
        ("arrhenius", "free"): "28283d6ead1d4cdc1e420c51",
        ("md", "pinned", 600.0): "1a57ad5839d43852d4f6e395",
        ("analysis", "pinned", 600.0): "94773a0f8c30ce65dbbeb416",
        ("md", "pinned", 900.0): "8411933828e2bc54100cd28a",
        ("analysis", "pinned", 900.0): "2abf8dd623d634ba8e20679d",
        ("arrhenius", "pinned"): "8eeec3e851124f924ba1c24f",
        ("summary",): "ba84ad85e1a042a1f6cf0b99",
    },
    "Li3N": {
        ("relax",): "332b2f041af5ecc4cb9a8281",
        ("supercell",): "4ce8e5ee7dfe9725c68f062a",
        ("md", "free", 600.0): "1f4255d4fdff5327288390f5",
        ("analysis", "free", 600.0): "47f124e6a9a29154815d954b",
        ("md", "free", 900.0): "9b84f771c2352951ab246ca0",
        ("analysis", "free", 900.0): "d5a1701f2286f530b8efbf55",
        ("arrhenius", "free"): "c360a50d1fbd5cd979c375f7",
        ("summary",): "b54e84d0dd03c9e4b5e30eab",
    },
}


#: Every job of the VASP reference campaign's flow in flow order: (name, reuse key). A
#: VASP MD run is a sub-flow (pin, segments, their output, collect) whose jobs are
#: numbered ``<stage key>.<position>``.
VASP_REFERENCE_JOBS = [
    ("relax Li6PS5Cl", "467c99a823748026265259d8"),
    ("supercell Li6PS5Cl", "dc2ef9239501d3a906052b6f"),
    ("md Li6PS5Cl free 600K pin", "eeab6ad0bd3e5e4ba79c8c00.0"),
    ("md Li6PS5Cl free 600K seg 1", "eeab6ad0bd3e5e4ba79c8c00.1"),
    ("md Li6PS5Cl free 600K seg 2", "eeab6ad0bd3e5e4ba79c8c00.2"),
    ("md Li6PS5Cl free 600K segments output", "eeab6ad0bd3e5e4ba79c8c00.3"),
    ("md Li6PS5Cl free 600K collect", "eeab6ad0bd3e5e4ba79c8c00.4"),
    ("analysis Li6PS5Cl free 600K", "3695be43d1af39a7123a0b39"),
    ("md Li6PS5Cl pinned 600K pin", "e7d5a81404980e448976b516.0"),
    ("md Li6PS5Cl pinned 600K seg 1", "e7d5a81404980e448976b516.1"),
    ("md Li6PS5Cl pinned 600K seg 2", "e7d5a81404980e448976b516.2"),
    ("md Li6PS5Cl pinned 600K segments output", "e7d5a81404980e448976b516.3"),
    ("md Li6PS5Cl pinned 600K collect", "e7d5a81404980e448976b516.4"),
    ("analysis Li6PS5Cl pinned 600K", "6154f673106636b359f1001b"),
    ("arrhenius Li6PS5Cl free", "3d73f2f42a237e676dd47deb"),
    ("arrhenius Li6PS5Cl pinned", "c921e19a98dda29234782850"),
    ("summary Li6PS5Cl", "14bbe20954ac84ccc1a70c4d"),
]


@pytest.mark.parametrize(
    "campaign, pinned",
    [
        ("workflows.yaml", DEMO),
        ("tests/vasp_reference/campaign.yaml", VASP_REFERENCE),
        ("toy", TOY),
    ],
)
def test_reuse_keys_are_pinned(campaign, pinned, tmp_path):
    from ionflow.campaign import stage_keys
    from ionflow.spec import load_campaign

    path = _toy(tmp_path) if campaign == "toy" else REPO / campaign
    spec, materials = load_campaign(path)
    assert {m.name: stage_keys(spec, m) for m in materials} == pinned


def test_vasp_job_keys_are_pinned(tmp_path, monkeypatch):
    """Every job the VASP reference campaign submits keeps its name and reuse key."""
    from ionflow.campaign import _flat_jobs, plan_campaign
    from ionflow.spec import load_campaign

    monkeypatch.delenv("IONFLOW_VASP_WALLTIME_S", raising=False)
    monkeypatch.delenv("IONFLOW_VASP_SECONDS_PER_STEP", raising=False)
    spec, materials = load_campaign(REPO / "tests" / "vasp_reference" / "campaign.yaml")
    (planned,) = plan_campaign(spec, materials, tmp_path / "runs")
    jobs = [(j.name, planned.keys[j.uuid]) for j in _flat_jobs(planned.flow)]
    assert jobs == VASP_REFERENCE_JOBS
    assert planned.fingerprint == VASP_REFERENCE["Li6PS5Cl"][("summary",)]


# ----------------------------------------------- validate counts what submit creates


def _test_module(name: str):
    """A test module of this directory, loaded by path (for the campaigns its tests run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_plan_{name}", REPO / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _campaign_files() -> list[Path]:
    """Every campaign file in the repository: workflows.yaml, examples/ and tests/."""
    import yaml

    found = []
    for path in sorted(
        [*REPO.glob("*.y*ml"), *REPO.glob("examples/**/*.y*ml"), *REPO.glob("tests/**/*.y*ml")]
    ):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "campaign" in data and "materials" in data:
            found.append(path)
    return found


def _variants(tmp: Path) -> dict[str, tuple[Path, dict]]:
    """Campaigns the repository's tests run (ML: tests/test_campaign.py; VASP: the
    end-to-end campaign of tests/test_vasp.py), and variants that plan other job shapes: no
    relaxation, VASP segments sized from the walltime environment."""
    ref = (REPO / "tests" / "vasp_reference" / "campaign.yaml").read_text()
    ref = ref.replace("../../examples/", f"{REPO / 'examples'}/")
    (tmp / "toy").mkdir()
    toy = _test_module("test_campaign")._spec(tmp / "toy").read_text()
    standin = _test_module("test_vasp").E2E_SPEC.format(structure=REPO / "examples" / "Li3N.cif")
    texts = {
        "toy": (toy, {}),
        "toy, relax none": (toy.replace("{relax: toy, md: toy}", "{relax: none, md: toy}"), {}),
        "vasp-standin": (standin, {}),
        "vasp reference, MD only": (
            ref.replace("{relax: vasp, md: vasp}", "{relax: none, md: vasp}"),
            {},
        ),
        "vasp reference, segments from the walltime": (
            ref.replace("  segment_steps: 35000\n", ""),
            {"IONFLOW_VASP_WALLTIME_S": "86400", "IONFLOW_VASP_SECONDS_PER_STEP": "5"},
        ),
    }
    out = {}
    for i, (name, (text, env)) in enumerate(texts.items()):
        path = tmp / f"campaign{i}.yaml"
        path.write_text(text)
        out[name] = (path, env)
    return out


def _submitted_jobs(planned) -> list[str]:
    """The fireworks ``submit`` writes for a new material, by counted kind."""
    from ionflow.campaign import workflow_documents

    _, fw_docs = workflow_documents(planned.flow, {}, 0)
    kinds = []
    for doc in fw_docs:
        stage, variant = doc["spec"]["ionflow_stage"], doc["spec"].get("ionflow_variant")
        kinds.append("pinned_md" if stage == "md" and variant == "pinned" else stage)
    return kinds


def test_validate_counts_equal_submitted_jobs(tmp_path, monkeypatch, capsys):
    """For every campaign file of the repository and the campaigns the tests run, ML and
    VASP: ``ionflow validate --json`` counts, by kind, exactly the fireworks ``submit``
    creates from the flows ``plan_campaign`` builds (sub-flow jobs and segments included)."""
    import json
    from collections import Counter

    from ionflow.campaign import plan_campaign
    from ionflow.cli import main
    from ionflow.spec import load_campaign

    files = _campaign_files()
    assert {p.relative_to(REPO).as_posix() for p in files} >= {
        "workflows.yaml",
        "tests/vasp_reference/campaign.yaml",
    }
    cases = {p.relative_to(REPO).as_posix(): (p, {}) for p in files} | _variants(tmp_path)
    seen = {}
    for name, (path, env) in cases.items():
        for key in ("IONFLOW_VASP_WALLTIME_S", "IONFLOW_VASP_SECONDS_PER_STEP"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            main(["validate", "--json", str(path)])
        except SystemExit as exc:
            assert not exc.code, f"{name}: validate exited {exc.code}"
        report = json.loads(capsys.readouterr().out)
        spec, materials = load_campaign(path)
        planned = plan_campaign(spec, materials, tmp_path / "runs")
        assert len(planned) == len(report["materials"]) == len(materials), name
        for row, p in zip(report["materials"], planned, strict=True):
            submitted = Counter(_submitted_jobs(p))
            counted = Counter({k: n for k, n in row["jobs"].items() if n})
            assert counted == submitted, f"{name} / {row['name']}"
            assert row["n_jobs"] == p.n_jobs == sum(submitted.values()), name
        assert report["n_jobs"] == sum(p.n_jobs for p in planned), name
        seen[name] = report["n_jobs"]
    # the shapes planned: segments from the walltime (5 of ≤ 15498 steps) and no relaxation
    assert seen["tests/vasp_reference/campaign.yaml"] == 17  # 1+1+2·(pin+2 seg+out+collect)+2+2+1
    assert seen["vasp reference, segments from the walltime"] == 1 + 1 + 2 * 8 + 2 + 2 + 1
    assert seen["vasp reference, MD only"] == 16
    assert seen["workflows.yaml"] == 27
    assert seen["toy"] == 21 and seen["toy, relax none"] == 19
    assert seen["vasp-standin"] == 1 + 1 + 2 * 2 * 5 + 4 + 2 + 1  # 2 T × free/pinned, 2 segments


def test_validate_refuses_a_plan_of_too_many_segments(tmp_path, monkeypatch, capsys):
    """A VASP run cut into more segments than ionflow.vasp.MAX_MD_SEGMENTS is one line at
    validate time (exit 2, quick), from md.segment_steps or from the walltime environment."""
    import time

    from ionflow.cli import main
    from ionflow.vasp import MAX_MD_SEGMENTS

    ref = (REPO / "tests" / "vasp_reference" / "campaign.yaml").read_text()
    ref = ref.replace("../../examples/", f"{REPO / 'examples'}/")
    monkeypatch.delenv("IONFLOW_VASP_WALLTIME_S", raising=False)
    cases = {
        "  segment_steps: 1\n": ({}, "md.segment_steps: 1 steps per segment"),
        "": (
            {"IONFLOW_VASP_WALLTIME_S": "301", "IONFLOW_VASP_SECONDS_PER_STEP": "0.01"},
            "IONFLOW_VASP_WALLTIME_S",
        ),
    }
    for steps, (env, fragment) in cases.items():
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        path = tmp_path / "campaign.yaml"
        path.write_text(ref.replace("  segment_steps: 35000\n", steps).replace("60.0", "100000.0"))
        t0 = time.monotonic()
        with pytest.raises(SystemExit) as exc:
            main(["validate", str(path)])
        assert exc.value.code == 2 and time.monotonic() - t0 < 20
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert "material Li6PS5Cl" in err and fragment in err, err
        assert f"at most {MAX_MD_SEGMENTS}" in err, err
