"""Polyanion rotation (`ionflow.analysis.rotation`, `ionflow rotation`) against independent
truth: rigid tetrahedra under rotational diffusion with a known D_r, frozen tetrahedra, a
brute-force Legendre average, and the real Li6PS5I AIMD (Morgan 2021)."""

from __future__ import annotations

import glob
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ionflow.analysis import ANALYSES, analyze_in_memory, analyze_trajectory
from ionflow.analysis import rotation as rotation_mod
from ionflow.analysis.rotation import RotationAnalysis, orientational_acf, plot_rotation
from ionflow.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
IONFLOW = REPO / ".venv" / "bin" / "ionflow"
REAL = REPO.parent / "shared" / "data" / "argyrodite-morgan2021" / "Li6PS5I"

#: ideal tetrahedron directions
TET = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)


def _rotation_matrices(w: np.ndarray) -> np.ndarray:
    """exp([w]×) for rotation vectors w (..., 3), Rodrigues' formula."""
    th = np.linalg.norm(w, axis=-1)
    k = w / np.where(th > 0, th, 1.0)[..., None]
    kx = np.zeros(w.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx[..., 1, 0], kx[..., 2, 0], kx[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    th = th[..., None, None]
    return np.eye(3) + np.sin(th) * kx + (1 - np.cos(th)) * (kx @ kx)


def tetrahedra(
    d_r_per_ps: float,
    *,
    n_frames: int = 4000,
    dt_fs: float = 50.0,
    n_groups: int = 32,
    bond_a: float = 1.9,
    box_a: float = 24.0,
    vibration_a: float = 0.0,
    seed: int = 0,
):
    """Rigid PS4-like tetrahedra (P + 4 S at ``bond_a``) under isotropic rotational diffusion.

    Each frame every group turns by exp([ω]×) with the rotation vector ω drawn from
    N(0, 2 D_r Δt) per Cartesian component. Derivation: for a unit vector u,
    u·R(ω)u = 1 − |ω × u|²/2 + O(ω⁴), and ⟨|ω × u|²⟩ = ⟨|ω|²⟩ − ⟨(ω·u)²⟩ = 6 D_r Δt − 2 D_r Δt,
    so ⟨u(0)·u(Δt)⟩ = 1 − 2 D_r Δt ≈ exp(−2 D_r Δt), the l = 1 rotational-diffusion decay; the
    rotation angle has ⟨θ²⟩ = 6 D_r Δt and each bond's angular step ⟨θ_u²⟩ = 4 D_r Δt
    (2-D diffusion on the sphere). Then C_l(t) = exp(−l(l+1) D_r t): τ1 = 1/(2 D_r),
    τ2 = 1/(6 D_r). The centres also random-walk and everything is wrapped into the cubic
    box (groups straddle the boundary), with 3 Li per group (the mobile species).
    """
    rng = np.random.default_rng(seed)
    dt_ps = dt_fs / 1000.0
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(2)], float)
    centres = (grid * np.array([box_a / 4, box_a / 4, box_a / 2]))[:n_groups]
    rot, _ = np.linalg.qr(rng.normal(size=(n_groups, 3, 3)))  # random initial orientations
    n_li = 3 * n_groups
    li = rng.uniform(0, box_a, (n_li, 3))
    pos = np.empty((n_frames, 5 * n_groups + n_li, 3))
    for f in range(n_frames):
        lig = centres[:, None, :] + bond_a * np.einsum("gij,kj->gki", rot, TET)
        pos[f] = np.concatenate([centres, lig.reshape(-1, 3), li])
        if d_r_per_ps > 0:
            w = rng.normal(0.0, math.sqrt(2 * d_r_per_ps * dt_ps), (n_groups, 3))
            rot = _rotation_matrices(w) @ rot
        centres = centres + rng.normal(0, 0.05, centres.shape)
        li = li + rng.normal(0, 0.1, li.shape)
    if vibration_a:
        pos += rng.normal(0, vibration_a, pos.shape)
    pos %= box_a
    species = ["P"] * n_groups + ["S"] * (4 * n_groups) + ["Li"] * n_li
    return pos, np.eye(3) * box_a, species, dt_fs


def _rotation(pos, lat, species, dt_fs, **kw):
    return analyze_in_memory(
        pos, lat, species, [RotationAnalysis(**kw)], temperature_k=None, frame_interval_fs=dt_fs
    )["rotation"]


D_R = 0.05  # ps⁻¹: τ1 = 10 ps, τ2 = 3.33 ps; the run is 200 ps


@pytest.fixture(scope="module")
def diffusing():
    return tetrahedra(D_R, seed=1)


def test_registered() -> None:
    assert ANALYSES["rotation"] is RotationAnalysis


def test_fft_acf_equals_brute_force_legendre_average() -> None:
    rng = np.random.default_rng(3)
    u = rng.normal(size=(60, 5, 3))
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    c1, c2 = orientational_acf(u.astype(np.float32))
    for k in (0, 1, 7, 30, 59):
        x = np.sum(u[: 60 - k] * u[k:], axis=2)  # every origin
        assert np.allclose(c1[k], x.mean(axis=0), atol=1e-6)
        assert np.allclose(c2[k], (1.5 * x**2 - 0.5).mean(axis=0), atol=1e-6)


def test_rotational_diffusion_gives_tau1_tau2_of_known_d_r(diffusing) -> None:
    res = _rotation(*diffusing)
    (g,) = res.groups
    assert (g.formula, g.n_groups, g.n_bonds) == ("PS4", 32, 128)
    assert g.mean_bond_length_a == pytest.approx(1.9, abs=1e-6)  # unwrapped, minimum image
    assert g.tau_p1_ps == pytest.approx(1 / (2 * D_R), rel=0.15)
    assert g.tau_p2_ps == pytest.approx(1 / (6 * D_R), rel=0.15)
    assert g.rotational_diffusion_from_p2_ps_inv == pytest.approx(D_R, rel=0.15)
    # errors: finite, and the truth within 4 of them
    for tau, err, truth in (
        (g.tau_p1_ps, g.tau_p1_err_ps, 10.0),
        (g.tau_p2_ps, g.tau_p2_err_ps, 10 / 3),
    ):
        assert err is not None and 0 < err < 0.2 * tau
        assert abs(tau - truth) < 4 * err
    assert g.p1_fit.beta == pytest.approx(1.0, abs=0.15) and g.p2_fit.beta == pytest.approx(
        1.0, abs=0.15
    )
    # the curves themselves: C_l(t) = exp(−l(l+1) D_r t)
    t = np.asarray(g.time_ps)
    sel = t <= 10
    assert np.allclose(np.asarray(g.p1_acf)[sel], np.exp(-2 * D_R * t[sel]), atol=0.04)
    assert np.allclose(np.asarray(g.p2_acf)[sel], np.exp(-6 * D_R * t[sel]), atol=0.04)
    # small-angle diffusion on the sphere: ⟨θ⟩(t) ≈ √(π D_r t)  (Rayleigh, ⟨θ²⟩ = 4 D_r t)
    assert g.reorientation_angle_lag_ps == pytest.approx(1.0)
    assert g.mean_reorientation_angle_deg == pytest.approx(
        math.degrees(math.sqrt(math.pi * D_R)), rel=0.05
    )
    assert res.duration_ps == pytest.approx(199.95) and res.max_lag_ps == pytest.approx(
        99.95, abs=0.06
    )
    line = RotationAnalysis.describe(res)
    assert "\n" not in line and "PS4 ×32" in line and "τ2 = 3." in line


def test_explicit_centre_and_ligand_same_groups(diffusing) -> None:
    auto = _rotation(*diffusing)
    given = _rotation(*diffusing, center="P", ligand="S")
    assert given.groups[0].formula == "PS4" and given.groups[0].n_groups == 32
    assert given.groups[0].tau_p2_ps == pytest.approx(auto.groups[0].tau_p2_ps, rel=1e-9)
    assert "given centre P" in given.detection and "pinned-control" in auto.detection


def test_frozen_tetrahedra_do_not_reorient() -> None:
    res = _rotation(*tetrahedra(0.0, n_frames=1000, vibration_a=0.05, seed=2))
    (g,) = res.groups
    assert g.tau_p1_ps is None and g.tau_p2_ps is None
    assert "no reorientation within the run" in g.tau_p1_reason
    assert "no reorientation within the run" in g.tau_p2_reason
    assert g.p2_at_max_lag > 0.95 and g.mean_reorientation_angle_deg < 5
    assert "no reorientation" in RotationAnalysis.describe(res)


def test_long_runs_are_strided_to_bounded_memory(monkeypatch, diffusing) -> None:
    monkeypatch.setattr(rotation_mod, "MAX_FRAMES", 1000)
    res = _rotation(*diffusing)
    assert res.frame_stride == 4 and res.n_frames == 1000 and res.frame_interval_fs == 200.0
    assert res.groups[0].tau_p2_ps == pytest.approx(1 / (6 * D_R), rel=0.15)


def test_no_groups_is_a_note_or_an_error() -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 8, (20, 8, 3))
    species = ["Li"] * 6 + ["N"] * 2
    res = _rotation(pos, np.eye(3) * 8, species, 100.0)
    assert res.groups == [] and "no polyanion groups" in res.note
    assert RotationAnalysis.describe(res).startswith("rotation: no polyanion groups")
    with pytest.raises(UserInputError, match="nothing rotates"):
        _rotation(pos, np.eye(3) * 8, species, 100.0, require_groups=True)
    with pytest.raises(UserInputError, match="both --center and --ligand"):
        RotationAnalysis(center="P")


# --------------------------------------------------------------------------- real data


def _segments(level: str) -> list[str]:
    files = glob.glob(str(REAL / level / "run*" / "actual_XDATCAR.gz"))
    return sorted(files, key=lambda p: int(Path(p).parent.name[3:]))


@pytest.fixture(scope="module")
def real_50p():
    files = _segments("50p")
    if not files:
        pytest.skip(f"real data not found under {REAL}")
    return files


def test_real_li6ps5i_50p_ps4(real_50p, tmp_path) -> None:
    res = analyze_trajectory(
        real_50p, [RotationAnalysis()], species="Li", temperature_k=500.0, frame_interval_fs=100.0
    )["rotation"]
    (g,) = res.groups
    assert (g.formula, g.n_groups, g.n_bonds) == ("PS4", 32, 128)
    assert 1.95 < g.mean_bond_length_a < 2.15  # P–S in PS4
    assert res.n_frames == 700 and res.duration_ps == pytest.approx(69.9)
    # no fixed truth for τ2: finite, or null with the no-reorientation reason
    assert (g.tau_p2_ps is not None and math.isfinite(g.tau_p2_ps)) or (
        "no reorientation within the run" in g.tau_p2_reason
    )
    assert 0 < g.mean_reorientation_angle_deg < 90
    plot_rotation(res, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(IONFLOW), *args], capture_output=True, text=True, timeout=120)


def test_cli_rotation_real_json_and_plot(real_50p, tmp_path) -> None:
    png = tmp_path / "rot.png"
    p = _run(
        "rotation",
        *real_50p,
        "--species",
        "Li",
        "--time-step-fs",
        "100",
        "--json",
        "--plot",
        str(png),
        "-q",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (g,) = out["groups"]
    for key in (
        "formula", "n_groups", "time_ps", "p1_acf", "p2_acf", "tau_p1_ps", "tau_p2_ps",
        "mean_reorientation_angle_deg",
    ):  # fmt: skip
        assert key in g
    assert g["n_groups"] == 32 and len(g["time_ps"]) == len(g["p2_acf"])
    assert png.stat().st_size > 1000
    p = _run(
        "rotation",
        *real_50p,
        "--center",
        "P",
        "--ligand",
        "S",
        "--time-step-fs",
        "2",
        "--step-skip",
        "50",
        "-q",
    )
    assert p.returncode == 0 and "PS4" in p.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--center", "P"], "both --center and --ligand"),
        (["--center", "Zr", "--ligand", "S"], "--center Zr is not in the trajectory"),
        (["--center", "I", "--ligand", "S"], "nothing rotates"),
        (["--center", "Qq", "--ligand", "S"], "not an element symbol"),
        (["--time-step-fs", "-1"], "--time-step-fs"),
    ],
)
def test_cli_rotation_errors_exit_2(real_50p, extra, message) -> None:
    args = ["rotation", real_50p[0], "-q"]
    if "--time-step-fs" not in extra:
        args += ["--time-step-fs", "100"]
    p = _run(*args, *extra)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr


def test_cli_rotation_missing_file_and_time_step(real_50p) -> None:
    p = _run("rotation", "/no/such/XDATCAR", "--time-step-fs", "100", "-q")
    assert p.returncode == 2 and "no such file" in p.stderr
    p = _run("rotation", real_50p[0], "-q")
    assert p.returncode == 2 and "time step" in p.stderr
