"""`ionflow analyze` and `ionflow arrhenius` run as the user runs them (subprocess)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ionflow.analysis import analyze_arrays
from ionflow.analysis.synthetic import caged_trajectory, hopping_trajectory

IONFLOW = Path("/work/main/.venv/bin/ionflow")
LGPS_JSON = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "pymatgen-analysis-diffusion"
    / "DiffusionAnalyzer.json"
)
K_EV = 8.617333262e-5  # eV/K

# pymatgen-analysis-diffusion's own test asserts these for DiffusionAnalyzer.json
PEER = {
    "diffusivity_cm2_s": 1.16083658794e-06,
    "charge_diffusivity_cm2_s": 3.64565578208e-06,
    "conductivity_ms_cm": 74.165372613735684,
    "haven_ratio": 0.31854161048867402,
}
PEER_COMPONENTS = [7.496e-07, 4.903e-07, 2.246e-06]

ANALYZE_KEYS = {
    "species",
    "temperature_k",
    "n_mobile",
    "duration_ps",
    "regime",
    "diffusivity_cm2_s",
    "diffusivity_err_cm2_s",
    "diffusivity_components_cm2_s",
    "charge_diffusivity_cm2_s",
    "haven_ratio",
    "conductivity_ms_cm",
    "conductivity_err_ms_cm",
    "n_eff_hops",
    "fit_window_ps",
    "diffusivity_rel_err_he2018",
}
ARRHENIUS_KEYS = {
    "ea_ev",
    "ea_err_ev",
    "d0_cm2_s",
    "sigma_at_t_ms_cm",
    "sigma_at_t_interval_ms_cm",
    "sigma_at_t_interval95_ms_cm",
    "n_temperatures",
}

# Arrhenius law of the synthetic hop rate: rate(T) = R0·exp(−EA/kT), D = rate·a²/6
EA_TRUE = 0.25
RATE_600 = 1.0  # 1/ps at 600 K
TEMPS = (600.0, 800.0, 1000.0)


def _rate(t: float) -> float:
    return RATE_600 * math.exp(-EA_TRUE / K_EV * (1.0 / t - 1.0 / 600.0))


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(IONFLOW), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _is_png(path: Path) -> bool:
    return (
        path.exists()
        and path.stat().st_size > 1000
        and path.read_bytes()[:8] == (b"\x89PNG\r\n\x1a\n")
    )


def _assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), proc.stderr
    for frag in fragments:
        assert frag in lines[0], proc.stderr


# ---------------------------------------------------------------------------------------
# analyze on the peer's LGPS run
# ---------------------------------------------------------------------------------------


def test_analyze_pymatgen_mode_json_matches_peer(tmp_path: Path) -> None:
    png = tmp_path / "msd.png"
    proc = _run("analyze", str(LGPS_JSON), "--fit", "pymatgen", "--json", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert isinstance(doc, dict)
    assert ANALYZE_KEYS <= doc.keys()
    assert doc["species"] == "Li" and doc["n_mobile"] == 20
    assert doc["temperature_k"] == 600.0
    assert doc["duration_ps"] == pytest.approx(999 * 0.02)
    for key, ref in PEER.items():
        assert doc[key] == pytest.approx(ref, rel=0.01), key
    np.testing.assert_allclose(doc["diffusivity_components_cm2_s"], PEER_COMPONENTS, rtol=0.2)
    # pymatgen's window: lags from 1 ps (min_dt = 50 frames) on
    assert doc["fit_window_ps"][0] == pytest.approx(1.0)
    assert doc["regime"] == "insufficient"  # ~3 hop equivalents in 20 ps, see test_analysis
    n_eff = doc["n_eff_hops"]
    assert doc["diffusivity_rel_err_he2018"] == pytest.approx(3.43 / math.sqrt(n_eff) + 0.04)
    assert _is_png(png)


# ---------------------------------------------------------------------------------------
# synthetic Arrhenius series: analyze --json ×3 → arrhenius --json
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arrhenius_series(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("series")
    out = {"dir": work, "json": [], "d_true": []}
    for i, t in enumerate(TEMPS):
        traj = hopping_trajectory(
            n_frames=2500,
            n_mobile=32,
            n_framework=16,
            hop_rate_per_ps=_rate(t),
            temperature_k=t,
            seed=40 + i,
        )
        npz = work / f"run_{t:g}K.npz"
        traj.save_npz(npz)
        args = ["analyze", str(npz), "--json", "--species", "Li"]
        if i == 0:
            args += ["--plot", str(work / "msd.png")]
        proc = _run(*args)
        assert proc.returncode == 0, proc.stderr
        js = work / f"run_{t:g}K.json"
        js.write_text(proc.stdout)
        out["json"].append(js)
        out["d_true"].append(traj.diffusivity_cm2_s)
    return out


def test_analyze_synthetic_npz(arrhenius_series) -> None:
    assert _is_png(arrhenius_series["dir"] / "msd.png")
    for js, d_true, t in zip(
        arrhenius_series["json"], arrhenius_series["d_true"], TEMPS, strict=True
    ):
        doc = json.loads(js.read_text())
        assert ANALYZE_KEYS <= doc.keys()
        assert doc["temperature_k"] == t  # read from the file
        assert doc["n_mobile"] == 32
        assert doc["regime"] == "diffusive"
        assert abs(doc["diffusivity_cm2_s"] - d_true) <= 3 * doc["diffusivity_err_cm2_s"]


def test_arrhenius_cli_recovers_activation_energy(arrhenius_series) -> None:
    png = arrhenius_series["dir"] / "arrhenius.png"
    files = [str(p) for p in arrhenius_series["json"]]
    proc = _run("arrhenius", *files, "--json", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert ARRHENIUS_KEYS <= doc.keys()
    assert doc["n_temperatures"] == 3
    assert 0 < doc["ea_err_ev"] < 0.1  # resolved
    assert abs(doc["ea_ev"] - EA_TRUE) <= 3 * doc["ea_err_ev"]
    # D0 = R0·a²/6 with R0 = RATE_600·exp(EA/k·600), a = 2.5 Å (synthetic default)
    d0_true = RATE_600 * math.exp(EA_TRUE / (K_EV * 600.0)) * 2.5**2 / 6 * 1e-4
    assert 0 < doc["ln_d0_err"] < 1.0  # resolved
    assert abs(math.log(doc["d0_cm2_s"] / d0_true)) <= 3 * doc["ln_d0_err"]
    lo, hi = doc["sigma_at_t_interval_ms_cm"]
    lo95, hi95 = doc["sigma_at_t_interval95_ms_cm"]
    assert lo95 < lo < doc["sigma_at_t_ms_cm"] < hi < hi95
    assert _is_png(png)


# ---------------------------------------------------------------------------------------
# bad input: exit 2, one "error:" line, no traceback
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.npz"
    hopping_trajectory(n_frames=300, n_mobile=8, n_framework=8, hop_rate_per_ps=5.0).save_npz(path)
    return path


def test_error_missing_file(tmp_path: Path) -> None:
    _assert_user_error(_run("analyze", str(tmp_path / "nope.npz")), "nope.npz")


def test_error_unknown_format(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.txt"
    bad.write_text("this is not\x00 a trajectory 1 2 3\n%%%\n")
    _assert_user_error(_run("analyze", str(bad), "--temperature-k", "600"), "garbage.txt")


def test_error_no_such_species() -> None:
    _assert_user_error(_run("analyze", str(LGPS_JSON), "--species", "K"), "K")


def test_error_single_frame(tmp_path: Path) -> None:
    one = tmp_path / "one.npz"
    traj = hopping_trajectory(n_frames=1, n_mobile=4, n_framework=4)
    np.savez(
        one,
        positions=traj.positions,
        lattice=traj.lattice,
        species=np.asarray(traj.species),
        time_step_fs=20.0,
        temperature_k=600.0,
    )
    _assert_user_error(_run("analyze", str(one)))


def test_error_negative_temperature(small_npz: Path) -> None:
    _assert_user_error(_run("analyze", str(small_npz), "--temperature-k=-300"), "temperature")


def test_error_negative_time_step(small_npz: Path) -> None:
    _assert_user_error(_run("analyze", str(small_npz), "--time-step-fs=-2"), "time-step")


def test_error_arrhenius_input_not_an_analysis(tmp_path: Path) -> None:
    not_analysis = tmp_path / "other.json"
    not_analysis.write_text(json.dumps({"species": "Li", "hello": 1}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    for p in (not_analysis, garbage):
        _assert_user_error(_run("arrhenius", str(p), str(p)), p.name)
    # the raw peer file is JSON, but not an analysis
    _assert_user_error(_run("arrhenius", str(LGPS_JSON), str(LGPS_JSON)), LGPS_JSON.name)


def test_error_arrhenius_one_usable_temperature(tmp_path: Path) -> None:
    runs = [
        hopping_trajectory(
            n_frames=1500,
            n_mobile=16,
            n_framework=16,
            hop_rate_per_ps=5.0,
            temperature_k=900.0,
            seed=1,
        ),
        caged_trajectory(n_frames=1500, n_mobile=16, n_framework=16, temperature_k=600.0, seed=2),
    ]
    files = []
    for r in runs:
        a = analyze_arrays(
            r.positions,
            r.lattice,
            r.species,
            species="Li",
            temperature_k=r.temperature_k,
            frame_interval_fs=r.frame_interval_fs,
        )
        path = tmp_path / f"{a.regime}.json"
        path.write_text(a.model_dump_json())
        files.append(str(path))
    assert sorted(Path(f).stem for f in files) == ["caged", "diffusive"]
    _assert_user_error(_run("arrhenius", *files, "--json"), "at least 2")
