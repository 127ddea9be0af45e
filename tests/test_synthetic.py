"""Validation of the synthetic-trajectory generator against its own analytic truth.

The MSD here is computed with a few lines of numpy (minimum-image unwrapping, framework-
referenced drift removal, direct lag differences), independently of ionflow's analysis.
"""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

from ionflow.analysis.synthetic import (
    SyntheticTrajectory,
    caged_trajectory,
    hopping_trajectory,
    write_large_npz,
)


def _unwrapped_displacements(positions: np.ndarray, box_a: float) -> np.ndarray:
    """Unwrapped displacement from frame 0, ``(n_frames, n_atoms, 3)`` float64."""
    step = np.diff(positions.astype(np.float64), axis=0)
    step -= box_a * np.round(step / box_a)
    disp = np.zeros(positions.shape, dtype=np.float64)
    np.cumsum(step, axis=0, out=disp[1:])
    return disp


def _drift_free_mobile(traj: SyntheticTrajectory) -> np.ndarray:
    """Mobile-ion displacements relative to the framework centre of mass."""
    disp = _unwrapped_displacements(traj.positions, traj.lattice[0, 0])
    mobile = traj.mobile_indices
    framework = np.setdiff1d(np.arange(disp.shape[1]), mobile)
    return disp[:, mobile] - disp[:, framework].mean(axis=1, keepdims=True)


def _msd(disp: np.ndarray, lag: int) -> float:
    """Time-origin and ion averaged MSD at one lag (frames), Angstrom^2."""
    d = disp[lag:] - disp[:-lag]
    return float(np.mean(np.sum(d * d, axis=-1)))


def test_hop_count_matches_poisson_rate() -> None:
    traj = hopping_trajectory(n_frames=5001, n_mobile=40, hop_rate_per_ps=3.0, seed=11)
    duration_ps = (traj.n_frames - 1) * traj.frame_interval_fs * 1e-3
    expected = 3.0 * 40 * duration_ps
    assert abs(traj.n_hops - expected) < 4.0 * np.sqrt(expected)


def test_true_diffusivity_formula() -> None:
    traj = hopping_trajectory(n_frames=2, hop_length_a=2.0, hop_rate_per_ps=1.5)
    assert traj.diffusivity_cm2_s == pytest.approx(1.5 * 2.0**2 / 6 * 1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_ensemble_msd_slope_recovers_true_diffusivity(seed: int) -> None:
    traj = hopping_trajectory(
        n_frames=10_000, n_mobile=128, n_framework=32, frame_interval_fs=100.0, seed=seed
    )
    disp = _drift_free_mobile(traj)
    lags = np.arange(20, 101, 10)  # 2 .. 10 ps, far beyond the 0.05 ps rattle time
    t_ps = lags * traj.frame_interval_fs * 1e-3
    msd = np.array([_msd(disp, int(lag)) for lag in lags])
    slope, _ = np.polyfit(t_ps, msd, 1)
    d_fit_cm2_s = slope / 6.0 * 1e-4
    assert d_fit_cm2_s == pytest.approx(traj.diffusivity_cm2_s, rel=0.04)


def test_short_time_regime_is_rattling() -> None:
    traj = hopping_trajectory(n_frames=4000, n_mobile=64, hop_rate_per_ps=0.2, seed=5)
    disp = _drift_free_mobile(traj)
    # beyond the 0.05 ps correlation time but before hops matter: MSD ~ 6 rattle_a^2
    short = _msd(disp, 10)  # 0.2 ps
    d_a2_ps = 0.2 * 2.5**2 / 6
    assert short == pytest.approx(6 * 0.3**2 + 6 * d_a2_ps * 0.2, rel=0.15)
    # sub-linear below: one frame (20 fs) is much less than 10x smaller
    assert _msd(disp, 1) > 0.2 * short


def test_drift_is_common_and_removed_by_framework_reference() -> None:
    traj = hopping_trajectory(
        n_frames=20_000, n_mobile=8, n_framework=64, drift_a_per_sqrt_ps=0.5, seed=2
    )
    disp = _unwrapped_displacements(traj.positions, traj.lattice[0, 0])
    framework_com = disp[:, 8:].mean(axis=1)
    # Brownian drift: per-axis variance of 1 ps increments ~ 0.5**2 * 1 = 0.25 A^2
    lag = 50
    inc = framework_com[lag::lag] - framework_com[:-lag:lag]
    assert np.mean(inc**2) == pytest.approx(0.25, rel=0.15)
    # each framework atom relative to the framework COM stays within its rattling
    rel = disp[:, 8:] - framework_com[:, None, :]
    assert np.abs(rel).max() < 1.0


def test_correlated_pairs_keep_tracer_d_and_scale_collective_motion() -> None:
    f = 0.5
    traj = hopping_trajectory(
        n_frames=10_000,
        n_mobile=128,
        n_framework=32,
        frame_interval_fs=100.0,
        correlated_fraction=f,
        seed=4,
    )
    disp = _drift_free_mobile(traj)
    lag = 100  # 10 ps
    d = disp[lag:] - disp[:-lag]
    tracer = np.mean(np.sum(d * d, axis=-1))
    assert tracer / (6 * 10.0) * 1e-4 == pytest.approx(traj.diffusivity_cm2_s, rel=0.05)
    pair_sum = d[:, 0::2] + d[:, 1::2]
    ratio = np.mean(np.sum(pair_sum**2, axis=-1)) / (2 * tracer)
    assert ratio == pytest.approx(1.0 + f, rel=0.05)  # => Haven ratio 1 / (1 + f)


def test_correlated_fraction_needs_even_mobile_count() -> None:
    with pytest.raises(ValueError, match="even"):
        hopping_trajectory(n_frames=10, n_mobile=3, correlated_fraction=0.3)


@pytest.mark.parametrize("n_cage_sites", [2, 4])
def test_caged_msd_plateaus(n_cage_sites: int) -> None:
    traj = caged_trajectory(
        n_frames=20_000,
        n_mobile=64,
        n_framework=32,
        frame_interval_fs=50.0,
        n_cage_sites=n_cage_sites,
        seed=7,
    )
    assert traj.diffusivity_cm2_s == 0.0
    assert traj.n_hops > 0
    disp = _drift_free_mobile(traj)
    plateau = (n_cage_sites - 1) / n_cage_sites * 2.0**2 + 6 * 0.3**2
    msd = [_msd(disp, lag) for lag in (200, 1000, 4000)]  # 10, 50, 200 ps
    assert msd == pytest.approx([plateau] * 3, rel=0.08)
    assert msd[-1] < 1.05 * msd[0]


def test_cage_geometry() -> None:
    traj = caged_trajectory(
        n_frames=3000, n_mobile=16, rattle_a=0.0, framework_rattle_a=0.0,
        drift_a_per_sqrt_ps=0.0, cage_edge_a=2.0, seed=3,
    )  # fmt: skip
    disp = _unwrapped_displacements(traj.positions, traj.lattice[0, 0])[:, :16]
    dist = np.linalg.norm(disp, axis=-1)
    # only 0 (same corner) or the edge length (another corner of the tetrahedron)
    assert np.all(np.isclose(dist, 0.0, atol=1e-9) | np.isclose(dist, 2.0, atol=1e-9))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_positions_are_wrapped_inside_box(dtype: type) -> None:
    traj = hopping_trajectory(n_frames=3000, drift_a_per_sqrt_ps=2.0, seed=9, dtype=dtype)
    assert traj.positions.dtype == dtype
    assert traj.positions.min() >= 0.0
    assert traj.positions.max() < 12.0
    assert traj.species[:32] == ["Li"] * 32
    assert set(traj.species[32:]) == {"P", "S"}


def test_deterministic_from_seed() -> None:
    a = hopping_trajectory(n_frames=500, seed=42)
    b = hopping_trajectory(n_frames=500, seed=42)
    c = hopping_trajectory(n_frames=500, seed=43)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.n_hops == b.n_hops
    assert not np.array_equal(a.positions, c.positions)


def test_save_npz_roundtrip(tmp_path) -> None:
    traj = hopping_trajectory(n_frames=50, n_mobile=4, n_framework=8, seed=1)
    path = tmp_path / "t.npz"
    traj.save_npz(path, compressed=True)
    with np.load(path) as data:
        assert set(data.files) == {
            "positions",
            "lattice",
            "species",
            "time_step_fs",
            "temperature_k",
        }
        np.testing.assert_array_equal(data["positions"], traj.positions)
        assert list(data["species"]) == traj.species
        assert float(data["time_step_fs"]) == 20.0
        assert float(data["temperature_k"]) == 600.0


def test_write_large_npz_matches_in_memory_generator(tmp_path) -> None:
    path = tmp_path / "large.npz"
    d = write_large_npz(path, n_frames=2500, n_atoms=30, n_mobile=10, seed=8, box_a=10.0)
    ref = hopping_trajectory(
        n_frames=2500, n_mobile=10, n_framework=20, box_a=10.0, seed=8, dtype=np.float32
    )
    assert d == ref.diffusivity_cm2_s
    with np.load(path) as data:
        assert set(data.files) == {
            "positions",
            "lattice",
            "species",
            "time_step_fs",
            "temperature_k",
        }
        pos = data["positions"]
        assert pos.dtype == np.float32
        np.testing.assert_array_equal(pos, ref.positions)
        np.testing.assert_array_equal(data["lattice"], np.eye(3) * 10.0)
        assert list(data["species"]) == ref.species
    with zipfile.ZipFile(path) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def test_write_large_npz_chunk_boundaries_are_continuous(tmp_path) -> None:
    path = tmp_path / "chunks.npz"
    write_large_npz(
        path, n_frames=3001, n_atoms=40, n_mobile=20, chunk_frames=700, seed=2,
        temperature_k=900.0, mobile_species="Na", frame_interval_fs=10.0,
    )  # fmt: skip
    with np.load(path) as data:
        pos = data["positions"]
        assert pos.shape == (3001, 40, 3)
        assert float(data["temperature_k"]) == 900.0
        assert float(data["time_step_fs"]) == 10.0
        assert list(data["species"][:20]) == ["Na"] * 20
    step = np.diff(pos.astype(np.float64), axis=0)
    step -= 12.0 * np.round(step / 12.0)
    # the framework only rattles: no jump anywhere, in particular not at chunk boundaries
    assert np.abs(step[:, 20:]).max() < 0.5


def test_write_large_npz_memory_is_bounded(tmp_path) -> None:
    path = tmp_path / "big.npz"
    n_frames, n_atoms = 200_000, 20
    file_bytes = n_frames * n_atoms * 3 * 4  # 48 MB of float32 positions
    tracemalloc.start()
    try:
        write_large_npz(path, n_frames=n_frames, n_atoms=n_atoms, n_mobile=4, chunk_frames=2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < file_bytes / 4
    assert path.stat().st_size > file_bytes
    with np.load(path) as data:
        assert data["positions"].shape == (n_frames, n_atoms, 3)


def test_write_large_npz_rejects_unknown_keyword(tmp_path) -> None:
    with pytest.raises(TypeError, match="bogus"):
        write_large_npz(tmp_path / "x.npz", n_frames=10, n_atoms=4, n_mobile=2, bogus=1)
