"""Real ML potentials offline: SevenNet from the checkpoints inside the sevenn wheel, the
``engine.model`` key (variant name or model file), ``engine.device`` and the potential's
provenance (name, package version, model, SHA-256 of the model file) in every MD output and
summary.

Truth is independent of ionflow's code: sevenn's own ``SevenNetCalculator`` on the same
structure, CHGNet's own pretrained model, ``hashlib`` on the file, ``importlib.metadata``
for versions. Nothing here downloads: the network is refused (``socket.connect`` raises for
anything but loopback) while models load, and model files are written by the tests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ionflow.engines import DEVICES, ENGINES
from ionflow.errors import UserInputError
from ionflow.potentials import (
    check_package,
    file_sha256,
    get_calculator,
    model_identity,
    potential_provenance,
    resolve_device,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
IONFLOW = [sys.executable, "-m", "ionflow.cli"]
HAS_SEVENN = importlib.util.find_spec("sevenn") is not None
needs_sevenn = pytest.mark.skipif(not HAS_SEVENN, reason="sevenn not installed")
#: engines whose packages this project does not install (too large): their missing-package
#: path and model-path validation are tested, not their models
ABSENT = [
    n
    for n in ("mace", "m3gnet", "mattersim", "orb", "fairchem")
    if importlib.util.find_spec(ENGINES[n].module) is None
]

# sitecustomize for subprocesses: any connection but loopback / a Unix socket raises
_NO_NETWORK = """
import socket
_connect = socket.socket.connect
def _guarded(self, address, *a, **k):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
        raise OSError("ionflow test: network refused to " + repr(address))
    return _connect(self, address, *a, **k)
socket.socket.connect = _guarded
"""


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every socket connection but loopback while the test runs."""
    real = socket.socket.connect
    attempts = []

    def guarded(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(address)
            raise OSError(f"network refused to {address!r}")
        return real(self, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a proxy that is not there
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


def _li3n(seed: int = 3):
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    s = Structure.from_file(REPO / "examples" / "Li3N.cif")
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _efs(calc, atoms):
    a = atoms.copy()
    a.calc = calc
    return a.get_potential_energy(), a.get_forces(), a.get_stress()


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ SevenNet offline


@needs_sevenn
def test_sevennet_offline_equals_sevenns_own_calculator(no_network):
    """The default variant (7net-0) loads from the wheel with the network refused, and gives
    the same energy, forces and stress as sevenn's own calculator on the same structure."""
    import torch
    from sevenn.calculator import SevenNetCalculator

    torch.set_num_threads(1)
    atoms = _li3n()
    ours = get_calculator("sevennet")
    theirs = SevenNetCalculator("7net-0", device="cpu")
    e1, f1, s1 = _efs(ours, atoms)
    e2, f2, s2 = _efs(theirs, atoms)
    assert np.isfinite(e1) and abs(e1 - e2) < 1e-6
    assert np.allclose(f1, f2, atol=1e-6) and np.allclose(s1, s2, atol=1e-8)
    assert np.abs(f1).max() > 1e-3  # a rattled cell: real forces, not zeros
    assert str(ours.device) == "cpu"


@needs_sevenn
def test_sevennet_from_a_model_file_and_its_provenance(tmp_path, no_network):
    """A checkpoint copied to a folder of the user's (as on a cluster) loads by path and
    gives the variant's numbers; the provenance names the file and its SHA-256."""
    import torch

    torch.set_num_threads(1)
    shipped = potential_provenance("sevennet")["model_file"]
    assert shipped and Path(shipped).is_file() and "site-packages" in shipped
    copy = tmp_path / "models" / "my-7net.pth"
    copy.parent.mkdir()
    shutil.copyfile(shipped, copy)
    atoms = _li3n(seed=5)
    e1, f1, _ = _efs(get_calculator("sevennet", model=str(copy)), atoms)
    e2, f2, _ = _efs(get_calculator("sevennet", model="7NET-0"), atoms)
    assert abs(e1 - e2) < 1e-6 and np.allclose(f1, f2, atol=1e-6)

    prov = potential_provenance("sevennet", model=str(copy), device="cpu")
    assert prov["engine"] == "sevennet" and prov["potential"] == "SevenNet"
    assert prov["package"] == "sevenn"
    assert prov["package_version"] == importlib.metadata.version("sevenn")
    assert prov["model"] == prov["model_file"] == str(copy.resolve())
    assert prov["model_sha256"] == _sha(copy) == _sha(shipped)
    assert prov["device"] == "cpu"
    # the reuse key's record of the model: its contents, not where it lies
    assert model_identity("sevennet", str(copy)) == f"sha256:{_sha(copy)}"
    assert model_identity("sevennet", "7net-0") == "7net-0"
    assert model_identity("sevennet", None) is None


@needs_sevenn
def test_sevennet_bad_model_file_and_unshipped_variant(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="could not be loaded: .*junk.pth"):
        get_calculator("sevennet", model=str(junk))
    if potential_provenance("sevennet", model="7net-omat")["model_file"] is None:
        # not in the wheel: a clear message instead of sevenn's download
        with pytest.raises(UserInputError, match="is not on this machine"):
            get_calculator("sevennet", model="7net-omat")


# ------------------------------------------------------------------------- CHGNet


def test_chgnet_from_a_model_file_equals_the_shipped_variant(tmp_path, no_network):
    """A CHGNet model saved to disk by the test loads through ``model:`` and gives the
    shipped 0.3.0 numbers; CHGNet's provenance hashes its shipped weights file."""
    import torch
    from chgnet.model import CHGNet

    shipped = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    path = tmp_path / "chgnet-copy.pth.tar"
    torch.save({"model": shipped.as_dict()}, path)
    atoms = _li3n(seed=7)
    e1, f1, _ = _efs(get_calculator("chgnet", model=str(path), device="cpu"), atoms)
    e2, f2, _ = _efs(get_calculator("chgnet"), atoms)
    assert abs(e1 - e2) < 1e-5 and np.allclose(f1, f2, atol=1e-5)

    prov = potential_provenance("chgnet")
    import chgnet

    weights = Path(chgnet.__file__).parent / "pretrained" / "0.3.0"
    (expected,) = weights.glob("*.pth.tar")
    assert prov["model"] == "0.3.0" and prov["model_file"] == str(expected)
    assert prov["model_sha256"] == _sha(expected)
    assert prov["package_version"] == importlib.metadata.version("chgnet")
    assert potential_provenance("chgnet", model=str(path))["model_sha256"] == _sha(path)
    with pytest.raises(UserInputError, match="could not be loaded"):
        bad = tmp_path / "bad.pth.tar"
        bad.write_bytes(b"\0" * 10)
        get_calculator("chgnet", model=str(bad))


# --------------------------------------------------------------- model: and device:


def test_resolve_model_names_paths_and_errors(tmp_path):
    assert resolve_model("sevennet", None) == "7net-0"
    assert resolve_model("sevennet", "7Net-L3I5") == "7net-l3i5"
    assert resolve_model("chgnet", "R2SCAN") == "r2scan"
    (tmp_path / "m.model").write_bytes(b"x")
    # relative paths start at base_dir (the campaign file's folder)
    assert resolve_model("mace", "m.model", base_dir=tmp_path) == str(tmp_path / "m.model")
    with pytest.raises(UserInputError, match=r"model file for 'mace' not found: .*nope\.model"):
        resolve_model("mace", "nope.model", base_dir=tmp_path)
    with pytest.raises(UserInputError, match=r"model file for 'orb' not found"):
        resolve_model("orb", "sub/dir/weights", base_dir=tmp_path)
    with pytest.raises(UserInputError, match="unknown model 'huge' for 'sevennet'.*7net-0"):
        resolve_model("sevennet", "huge")
    with pytest.raises(UserInputError, match="engine 'toy' takes no model"):
        resolve_model("toy", "x.pt")


def test_device_auto_cpu_cuda():
    import torch

    assert DEVICES == ("auto", "cpu", "cuda")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(UserInputError, match="device is cuda but torch sees no GPU"):
            resolve_device("cuda")
        with pytest.raises(UserInputError, match="sees no GPU"):
            get_calculator("chgnet", device="cuda")
    with pytest.raises(UserInputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    prov = potential_provenance("chgnet", device="auto")
    assert prov["device"] == resolve_device("auto")
    assert potential_provenance("toy")["device"] is None


@pytest.mark.parametrize("engine", ABSENT)
def test_absent_package_is_a_one_line_error_from_the_engine_row(engine, tmp_path):
    """Each potential whose package is not installed fails with the row's package and
    install hint, whether asked by name, with a variant, or with a model file."""
    row = ENGINES[engine]
    hint = f"engine '{engine}' needs the {row.package} package: pip install {row.package}"
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"weights")
    for kwargs in ({}, {"model": str(model_file)}, {"device": "cpu"}):
        with pytest.raises(UserInputError, match=hint) as info:
            get_calculator(engine, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match=hint):
        check_package(engine)
    # the model file is still checked without the package (spec time)
    assert resolve_model(engine, "model.pt", base_dir=tmp_path) == str(model_file)
    if row.models:
        assert resolve_model(engine, row.models[-1].upper()) == row.models[-1]


def test_provenance_of_the_toy_and_file_hash(tmp_path):
    prov = potential_provenance("morse", epsilon_ev=0.2)
    assert prov["engine"] == "toy" and prov["package"] == "ase"
    assert "epsilon_ev=0.2" in prov["model"] and prov["model_sha256"] is None
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    f.write_bytes(b"changed")  # a new size/mtime: not the cached digest
    assert file_sha256(f) == hashlib.sha256(b"changed").hexdigest()


# -------------------------------------------------------------------- the spec


def _campaign(tmp_path: Path, engine: str, materials_extra: str = "") -> Path:
    text = f"""
campaign: models
engine: {engine}
md: {{temperatures_k: [600, 800], time_step_fs: 2.0, equilibration_ps: 0.1,
     production_ps: 0.5, supercell_min_length_a: 7.0}}
materials:
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}}}
{materials_extra}"""
    path = tmp_path / "workflows.yaml"
    path.write_text(text)
    return path


def test_spec_model_path_relative_to_the_yaml_and_per_material_engine(tmp_path):
    from ionflow.spec import load_campaign

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.pth").write_bytes(b"w")
    extra = (
        f"  - {{name: B, structure: {REPO / 'examples' / 'Li3N.cif'}, "
        "engine: {md: chgnet, device: cpu}}\n"
        f"  - {{name: C, structure: {REPO / 'examples' / 'Li3N.cif'}, "
        "engine: {model: 7net-l3i5}}\n"
        f"  - {{name: D, structure: {REPO / 'examples' / 'Li3N.cif'}, engine: toy}}\n"
    )
    spec, mats = load_campaign(
        _campaign(
            tmp_path, "{relax: none, md: sevennet, model: models/mine.pth, device: auto}", extra
        )
    )
    assert spec.engine.model == str(tmp_path / "models" / "mine.pth")
    assert spec.engine.device == "auto"
    eng = {m.name: spec.engine_for(m) for m in mats}
    assert eng["Li3N"] == spec.engine
    # another potential: the campaign's model (a SevenNet file) does not follow
    assert (eng["B"].md, eng["B"].model, eng["B"].device) == ("chgnet", None, "cpu")
    assert (eng["C"].md, eng["C"].model) == ("sevennet", "7net-l3i5")
    assert (eng["D"].relax, eng["D"].md, eng["D"].model) == ("toy", "toy", None)
    assert eng["Li3N"].calculator_kwargs("sevennet") == {
        "model": str(tmp_path / "models" / "mine.pth"),
        "device": "auto",
    }
    assert eng["D"].calculator_kwargs("toy") == {}  # the toy takes no device


@pytest.mark.parametrize(
    ("engine", "extra", "expected"),
    [
        (
            "{relax: none, md: sevennet, model: missing.pth}",
            "",
            "engine.model: model file for 'sevennet' not found: {tmp}/missing.pth",
        ),
        (
            "{relax: none, md: sevennet, model: 8net-9}",
            "",
            "engine.model: unknown model '8net-9' for 'sevennet'",
        ),
        (
            "{relax: chgnet, md: sevennet, model: 7net-0}",
            "",
            "engine.model: model belongs to one potential, but relax (chgnet) and md "
            "(sevennet) differ",
        ),
        ("{relax: none, md: toy, model: 7net-0}", "", "engine.model: engine toy takes no model"),
        ("{md: chgnet, device: gpu}", "", "engine.device: unknown device 'gpu'"),
        (
            "{relax: none, md: chgnet}",
            "  - {name: X, structure: %s, engine: {model: /nowhere/x.pth}}\n",
            "materials[1] (X): engine.model: model file for 'chgnet' not found: /nowhere/x.pth",
        ),
        (
            "{relax: none, md: chgnet}",
            "  - {name: X, structure: %s, engine: {md: vasp}}\n",
            "materials[1] (X): engine: vasp is chosen campaign-wide",
        ),
    ],
)
def test_spec_engine_errors_name_the_key_and_exit_2(tmp_path, engine, extra, expected):
    """Each bad engine mapping is one line naming the key (and material), and the CLI exits 2."""
    from ionflow.spec import CampaignSpecError, load_campaign

    if "%s" in extra:
        extra = extra % (REPO / "examples" / "Li3N.cif")
    path = _campaign(tmp_path, engine, extra)
    expected = expected.replace("{tmp}", str(tmp_path))
    with pytest.raises(CampaignSpecError) as info:
        load_campaign(path)
    assert any(expected in line for line in info.value.problems), info.value.problems
    res = subprocess.run(
        [*IONFLOW, "validate", str(path)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert expected in res.stderr + res.stdout


def test_reuse_keys_follow_the_model_contents_not_its_path(tmp_path):
    """No model: keys as before the key existed; a model file enters the relax/MD keys by
    its SHA-256, so a moved copy keeps them and other contents change them."""
    from ionflow.plan import plan_material
    from ionflow.spec import load_campaign

    def keys(engine: str, sub: str):
        d = tmp_path / sub
        d.mkdir(exist_ok=True)
        spec, mats = load_campaign(_campaign(d, engine))
        return plan_material(spec, mats[0]).stage_keys

    for name, data in (("a", b"weights-1"), ("b", b"weights-1"), ("c", b"weights-2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.pth").write_bytes(data)
    plain = keys("{relax: sevennet, md: sevennet}", "p")
    default = keys("{relax: sevennet, md: sevennet, device: cpu}", "q")
    a = keys("{relax: sevennet, md: sevennet, model: a.pth}", "a")
    b = keys("{relax: sevennet, md: sevennet, model: b.pth}", "b")
    c = keys("{relax: sevennet, md: sevennet, model: c.pth}", "c")
    md = ("md", "free", 600.0)
    assert plain == default  # the device is an execution detail
    assert a["relax",] == b["relax",] and a[md] == b[md]
    assert a["relax",] != c["relax",] and a[md] != c[md]
    assert a[md] != plain[md]


@pytest.mark.skipif(not ABSENT, reason="every optional potential is installed")
def test_campaign_submission_refuses_an_absent_package(tmp_path):
    """`ionflow run` with a potential whose package is missing: exit 2 before any job."""
    engine = ABSENT[0]
    row = ENGINES[engine]
    (tmp_path / "model.pt").write_bytes(b"w")
    path = _campaign(tmp_path, f"{{relax: none, md: {engine}, model: model.pt}}")
    res = subprocess.run(
        [*IONFLOW, "run", str(path), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert f"material Li3N: engine.md: engine '{engine}' needs the {row.package} package" in out


# ------------------------------------------------------------------- summaries


def test_summary_records_the_runs_potential():
    from ionflow.outputs import PotentialInfo
    from ionflow.summary import SCHEMA_VERSION, RunSummary, VariantSummary, material_potential

    p = PotentialInfo(
        engine="sevennet", potential="SevenNet", package="sevenn", package_version="0.13.0",
        model="7net-0", model_file="/x.pth", model_sha256="ab" * 32, device="cpu",
    )  # fmt: skip
    run = RunSummary(
        temperature_k=600.0,
        variant="free",
        regime="diffusive",
        regime_reason="-",
        n_eff_hops=10.0,
        duration_ps=5.0,
        fit_window_ps=[1.0, 4.0],
        potential=p,
    )
    assert RunSummary.model_validate(run.model_dump(mode="json")).potential == p
    free = VariantSummary.model_construct(runs=[run, run])
    assert material_potential(free, None) == p
    other = run.model_copy(update={"potential": p.model_copy(update={"model_sha256": "cd" * 32})})
    with pytest.raises(ValueError, match="different potentials"):
        material_potential(VariantSummary.model_construct(runs=[run, other]), None)
    assert material_potential(VariantSummary.model_construct(runs=[]), None) is None
    major, minor = (int(x) for x in SCHEMA_VERSION.split("."))
    assert (major, minor) >= (1, 4)


# ------------------------------------------------------- SevenNet campaign (slow)


@pytest.fixture
def project(tmp_path):
    yield tmp_path
    from ionflow.store import LocalServer

    server = LocalServer.running(tmp_path / "ionflow-data")
    if server is not None:
        server.stop()


@needs_sevenn
@pytest.mark.slow
@pytest.mark.integration
def test_sevennet_campaign_offline_end_to_end(project):
    """relax + MD + the pinned variant with SevenNet from the wheel, the network refused in
    the worker process; every MD output and the summary name the potential and the SHA-256
    of the shipped checkpoint (tiny runs: the physics is not checked beyond the thermostat)."""
    import math

    from ionflow.store import DatabaseSettings, resolve_database

    site = project / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_NETWORK)
    spec = project / "workflows.yaml"
    spec.write_text(
        f"""
campaign: sevennet-campaign
mobile_species: Li
engine: {{relax: sevennet, md: sevennet, model: 7net-0, device: cpu}}
md:
  temperatures_k: [1000, 1200]
  time_step_fs: 2.0
  equilibration_ps: 0.4
  production_ps: 0.1
  frame_interval_fs: 10
  supercell_min_length_a: 7.0
  pinned_control: {{species: [N]}}
materials:
  - {{name: Li3N, structure: {REPO / "examples" / "Li3N.cif"}}}
relax: {{max_steps: 10}}
"""
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two cores shared: oversubscribed torch threads crawl
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    res = subprocess.run(
        [*IONFLOW, "run", str(spec), "--quiet"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    shipped = potential_provenance("sevennet")["model_file"]
    sha = _sha(shipped)
    db = resolve_database(DatabaseSettings(data_dir=project / "ionflow-data"))
    with db.client() as client:
        mdb = client[db.database]
        s = mdb["summaries"].find_one({"campaign": "sevennet-campaign", "material": "Li3N"})
        assert s is not None and s["engine_md"] == "sevennet" and s["engine_relax"] == "sevennet"
        assert s["potential"]["model"] == "7net-0" and s["potential"]["model_sha256"] == sha
        assert s["potential"]["package_version"] == importlib.metadata.version("sevenn")
        assert {r["variant"] for r in s["free"]["runs"]} == {"free"}
        assert s["pinned"] is not None and len(s["pinned"]["runs"]) == 2
        for run in s["free"]["runs"] + s["pinned"]["runs"]:
            assert run["potential"]["model_sha256"] == sha
        md = [d["output"] for d in mdb["outputs"].find({"name": {"$regex": "^md "}})]
        assert len(md) == 4 and {o["variant"] for o in md} == {"free", "pinned"}
        for out in md:
            assert out["engine"] == "sevennet"
            assert out["potential"]["model_file"] == shipped
            assert out["potential"]["model_sha256"] == sha and out["potential"]["device"] == "cpu"
            t, n_dof = out["temperature_k"], out["md"]["n_free_degrees_of_freedom"]
            assert abs(out["md"]["mean_temperature_k"] - t) <= 4 * t * math.sqrt(2 / n_dof)
            if out["variant"] == "pinned":
                assert out["fixed_indices"]
        relax = mdb["outputs"].find_one({"name": {"$regex": "^relax "}})
        assert relax is not None


# ------------------------------------------------------------- MD job provenance


def _run_jobs(jobs):
    from jobflow import Flow, JobStore, run_locally
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    return run_locally(Flow(jobs), store=store, ensure_success=True, log=False)


def _md_maker(engine: str, tmp_path: Path, **kwargs):
    from ionflow.makers.md import MLMDMaker

    return MLMDMaker(
        engine=engine,
        temperature_k=800.0,
        time_step_fs=2.0,
        equilibration_ps=0.02,
        production_ps=0.2,
        frame_interval_steps=5,
        checkpoint_interval_steps=50,
        run_root=str(tmp_path / "runs"),
        calculator_kwargs=kwargs,
    )


def test_md_and_analysis_outputs_record_the_potential(tmp_path, monkeypatch):
    """The MD job's output names its potential and the analysis job passes it on."""
    from pymatgen.core import Structure

    from ionflow.makers.analysis import AnalysisMaker

    monkeypatch.chdir(tmp_path)
    s = Structure.from_file(REPO / "examples" / "Li3N.cif")
    s.make_supercell([2, 2, 2])
    md = _md_maker("toy", tmp_path, epsilon_ev=0.12).make(s)
    an = AnalysisMaker(mobile_species="Li").make(md.output)
    out = _run_jobs([md, an])
    expected = potential_provenance("toy", epsilon_ev=0.12)
    assert out[md.uuid][1].output["potential"] == expected
    assert out[an.uuid][1].output["potential"] == expected
    assert "epsilon_ev=0.12" in expected["model"]


@needs_sevenn
def test_sevennet_md_job_from_a_model_file(tmp_path, monkeypatch, no_network):
    """A SevenNet MD job with engine.model a file: its output has the file's SHA-256, and
    its run directory differs from the default variant's (a model is part of the run)."""
    import torch
    from pymatgen.core import Structure

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "7net.pth"
    shutil.copyfile(potential_provenance("sevennet")["model_file"], copy)
    s = Structure.from_file(REPO / "examples" / "Li3N.cif")
    job = _md_maker("sevennet", tmp_path, model=str(copy), device="cpu").make(s)
    out = _run_jobs([job])[job.uuid][1].output
    assert out["engine"] == "sevennet"
    assert out["potential"]["model_file"] == str(copy.resolve())
    assert out["potential"]["model_sha256"] == _sha(copy)
    assert out["potential"]["package_version"] == importlib.metadata.version("sevenn")
    assert out["md"]["completed"] and out["md"]["n_production_frames"] == 21
    dirs = {p.name for p in (tmp_path / "runs" / "campaign" / "material").iterdir()}
    default = _md_maker("sevennet", tmp_path).make(s)
    _run_jobs([default])
    dirs2 = {p.name for p in (tmp_path / "runs" / "campaign" / "material").iterdir()}
    assert len(dirs) == 1 and len(dirs2) == 2  # same settings, other model: its own directory
