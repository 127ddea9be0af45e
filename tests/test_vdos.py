"""Velocities in the stream and the ``vdos`` analysis, against independent truth.

Truths used: analytic harmonic oscillators (peak positions, equipartition), a Debye
spectrum g = 9ν²/ν_D³ built from modes (shape and exponent 2), an Ornstein–Uhlenbeck
velocity process (D = (k_BT/m)·τ, g(0) = 12·m·D/(k_BT) = 12τ, Lorentzian low-frequency
slope), and the MSD diffusivity of the same trajectories and of a real AIMD run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers

from ionflow.analysis import ANALYSES, Diffusion, analyze_file, analyze_in_memory
from ionflow.analysis.readers import open_trajectory
from ionflow.analysis.stream import StreamedAnalysis, analyze_trajectory
from ionflow.analysis.vdos import VDOS, VACFAccumulator, VDOSResult
from ionflow.errors import UserInputError

IONFLOW = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ionflow"
ARGYRODITE_50P = Path("/work/shared/data/argyrodite-morgan2021/Li6PS5I/50p")


def _sigma_a_fs(element: str, temperature_k: float) -> float:
    """√(k_BT/m) per axis, Å/fs."""
    return float(
        np.sqrt(units.kB * temperature_k / atomic_masses[atomic_numbers[element]]) * units.fs
    )


def _write_npz(path, pos, lat, species, velocities=None, dt=2.0, temperature_k=300.0):
    extra = {} if velocities is None else {"velocities": np.asarray(velocities, np.float32)}
    np.savez(
        path, positions=pos, lattice=lat, species=np.array(species),
        time_step_fs=np.float64(dt), temperature_k=np.float64(temperature_k), **extra,
    )  # fmt: skip
    return path


# --------------------------------------------------------------------------- readers


def test_npz_velocities_stream_aligned_with_positions(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 10, (23, 4, 3))
    vel = rng.normal(0, 0.01, (23, 4, 3)).astype(np.float32)
    src = open_trajectory(_write_npz(tmp_path / "v.npz", pos, np.eye(3) * 10, ["Li"] * 4, vel))
    assert src.info.has_velocities
    chunks = list(src.iter_chunks(chunk_frames=7, velocities=True))
    assert [c[0].shape[0] for c in chunks] == [7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), vel)
    np.testing.assert_allclose(np.concatenate([c[0] for c in chunks]), pos)
    # the positions-only stream is what it always was
    assert all(len(c) == 2 for c in src.iter_chunks(chunk_frames=7))
    # segments: velocities only when every segment has them
    b = _write_npz(tmp_path / "b.npz", pos, np.eye(3) * 10, ["Li"] * 4, vel)
    both = open_trajectory([tmp_path / "v.npz", b])
    assert both.info.has_velocities
    v2 = np.concatenate([c[2] for c in both.iter_chunks(chunk_frames=10, velocities=True)])
    np.testing.assert_array_equal(v2, np.concatenate([vel, vel]))
    bare = _write_npz(tmp_path / "bare.npz", pos, np.eye(3) * 10, ["Li"] * 4)
    mixed = open_trajectory([tmp_path / "v.npz", bare])
    assert not mixed.info.has_velocities
    with pytest.raises(UserInputError, match="stores no velocities"):
        next(mixed.iter_chunks(velocities=True))
    _write_npz(tmp_path / "bad.npz", pos, np.eye(3) * 10, ["Li"] * 4, vel[:, :3])
    with pytest.raises(UserInputError, match="'velocities' has shape"):
        open_trajectory(tmp_path / "bad.npz")


@pytest.mark.parametrize("fmt", ["extxyz", "traj", "traj-velocities"])
def test_ase_files_give_velocities_in_a_per_fs(tmp_path, fmt) -> None:
    from ase.io import Trajectory, write

    rng = np.random.default_rng(1)
    v_a_fs = rng.normal(0, 0.01, (5, 3, 3))
    frames = []
    for f in range(5):
        atoms = Atoms("LiSP", positions=rng.uniform(0, 8, (3, 3)), cell=np.eye(3) * 8, pbc=True)
        atoms.set_velocities(v_a_fs[f] / units.fs)  # ASE velocity units
        frames.append(atoms)
    if fmt == "extxyz":
        path = tmp_path / "t.xyz"
        write(path, frames, format="extxyz")
    else:
        path = tmp_path / "t.traj"
        with Trajectory(path, "w") as tr:
            for a in frames:
                tr.write(a)
    src = open_trajectory(path)
    assert src.info.has_velocities
    got = np.concatenate([c[2] for c in src.iter_chunks(chunk_frames=2, velocities=True)])
    np.testing.assert_allclose(got, v_a_fs, rtol=1e-6, atol=1e-12)


def test_formats_without_velocities_say_so(tmp_path) -> None:
    from ase.io import write

    write(tmp_path / "t.xyz", [Atoms("Li", cell=np.eye(3) * 5, pbc=True)] * 3, format="extxyz")
    assert not open_trajectory(tmp_path / "t.xyz").info.has_velocities


class _Probe(StreamedAnalysis):
    """Records what the driver hands over (not registered)."""

    name = "probe"
    result_model = VDOSResult  # unused

    def __init__(self, wants: bool) -> None:
        self.needs_velocities = wants
        self.seen: list = []

    def accumulate(self, chunk) -> None:
        self.seen.append((chunk.start, chunk.positions.copy(), chunk.velocities))

    def conclude(self):
        return None


def test_driver_reads_velocities_only_when_asked_and_keeps_skip_aligned(tmp_path) -> None:
    n = 40
    pos = np.zeros((n, 2, 3))
    pos[:, 0, 0] = 0.01 * np.arange(n)  # frame index encoded in the positions …
    vel = np.zeros((n, 2, 3))
    vel[:, 0, 0] = np.arange(n)  # … and in the velocities
    path = _write_npz(tmp_path / "p.npz", pos, np.eye(3) * 10, ["Li", "S"], vel)
    probe = _Probe(wants=True)
    analyze_trajectory(path, [probe], skip_frames=7, chunk_frames=6)
    frames = np.concatenate([p[:, 0, 0] for _, p, _ in probe.seen]) / 0.01
    v_frames = np.concatenate([v[:, 0, 0] for _, _, v in probe.seen])
    np.testing.assert_allclose(frames, np.arange(7, n), atol=1e-4)
    np.testing.assert_array_equal(v_frames, np.arange(7, n))
    assert [s for s, _, _ in probe.seen][:2] == [0, 5]  # 6 − 7 % 6 … chunks realigned
    no = _Probe(wants=False)
    analyze_trajectory(path, [no], skip_frames=7, chunk_frames=6)
    assert all(v is None for _, _, v in no.seen)


def test_vacf_accumulator_is_the_all_origin_vacf() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(203, 3, 3))
    acc = VACFAccumulator(3, 16)
    for s in range(0, 203, 11):  # odd chunking across blocks
        acc.add(v[s : s + 11])
    acc.finish()
    direct = np.array([[np.sum(v[: 203 - t, a] * v[t:, a]) for t in range(16)] for a in range(3)])
    np.testing.assert_allclose(acc.sums, direct, rtol=1e-5)  # float32 buffer
    np.testing.assert_array_equal(acc.counts(), 203 - np.arange(16))


# --------------------------------------------------------------------------- synthetic truths


def _harmonic(n_frames=4000, dt=2.0, temperature_k=300.0, seed=0):
    """16 Li at 5 THz and 8 S at 12 THz, independent 3-D oscillators with per-axis amplitude
    √2·σ/ω (time-averaged ⟨v²⟩ = k_BT/m per axis: 40 and 96 whole periods), random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None, None] * dt
    xs, vs = [], []
    for el, n, f_thz in (("Li", 16, 5.0), ("S", 8, 12.0)):
        w = 2 * np.pi * f_thz / 1000.0  # rad/fs
        amp = np.sqrt(2) * _sigma_a_fs(el, temperature_k)
        phase = rng.uniform(0, 2 * np.pi, (1, n, 3))
        xs.append(amp / w * np.sin(w * t + phase) + rng.uniform(0, 14, (1, n, 3)))
        vs.append(amp * np.cos(w * t + phase))
    return np.concatenate(xs, 1) % 14, np.concatenate(vs, 1), ["Li"] * 16 + ["S"] * 8


@pytest.mark.parametrize("stored", [True, False])
def test_harmonic_peaks_normalisation_and_equipartition(stored) -> None:
    pos, vel, species = _harmonic()
    r = analyze_in_memory(
        pos, np.eye(3) * 14, species, [VDOS()], temperature_k=300.0, frame_interval_fs=2.0,
        velocities=vel if stored else None, drift_reference="none", chunk_frames=777,
    )["vdos"]  # fmt: skip
    assert r.velocity_source == ("stored" if stored else "finite-difference")
    assert r.max_lag_frames == (1000 if stored else 999)  # a quarter of the velocity frames
    assert r.frequency_step_thz == pytest.approx(0.25, rel=2e-3)
    nu = np.asarray(r.frequency_thz)
    for el, f_true in (("Li", 5.0), ("S", 12.0)):
        assert abs(r.peak_frequencies_thz[el][0] - f_true) <= r.frequency_step_thz
        assert np.trapezoid(r.vdos[el], nu) == pytest.approx(3.0, rel=1e-9)
    t_kin = {s.element: s.kinetic_temperature_k for s in r.species}
    # mid-point differences 2 fs apart damp ⟨v²⟩ by sinc²(πνΔt): 0.9997 (5 THz), 0.9981 (12 THz)
    for el, f_true in (("Li", 5.0), ("S", 12.0)):
        damping = 1.0 if stored else np.sinc(f_true / 1000.0 * 2.0) ** 2
        assert t_kin[el] == pytest.approx(300.0 * damping, rel=2e-4)
    assert any("finite differences" in w for w in r.warnings) != stored
    assert r.nyquist_thz == pytest.approx(250.0)


def test_debye_solid_gives_nu_squared() -> None:
    """Modes on a 0.02 THz grid up to ν_D = 8 THz, velocity power ∝ ν² (equal energy per
    mode, density ∝ ν²): g = 9ν²/ν_D³ per atom, exponent 2."""
    rng = np.random.default_rng(3)
    n, n_frames, dt, t_k, nu_d = 16, 10000, 5.0, 300.0, 8.0
    nus = np.arange(1, 401) * 0.02
    amp = _sigma_a_fs("Na", t_k) * np.sqrt(2 * nus**2 / np.sum(nus**2))
    w = 2 * np.pi * nus / 1000.0
    wt = np.outer(np.arange(n_frames) * dt, w)
    phase = rng.uniform(0, 2 * np.pi, (len(nus), 3 * n))
    c, s = np.cos(wt) * amp, np.sin(wt) * amp
    vel = (c @ np.cos(phase) - s @ np.sin(phase)).reshape(n_frames, n, 3)
    pos = ((s / w) @ np.cos(phase) + (c / w) @ np.sin(phase)).reshape(n_frames, n, 3)
    r = analyze_in_memory(
        pos + 6.0, np.eye(3) * 12, ["Na"] * n, [VDOS()], species="Na", temperature_k=t_k,
        frame_interval_fs=dt, velocities=vel, drift_reference="none",
    )["vdos"]  # fmt: skip
    nu, g = np.asarray(r.frequency_thz), np.asarray(r.vdos["Na"])
    band = (nu >= 1.0) & (nu <= 7.0)
    np.testing.assert_allclose(g[band], 9 * nu[band] ** 2 / nu_d**3, rtol=0.05)
    assert r.low_frequency_exponent == pytest.approx(2.0, abs=0.1)
    assert r.low_frequency_fit_range_thz == pytest.approx((0.4, 2.0))
    assert r.vdos_zero < 1e-3  # a solid: nothing at ν → 0
    assert "not resolved from zero" in " ".join(r.warnings)  # and no diffusion


def _ornstein_uhlenbeck(seed=5, n_frames=20000, dt=2.0, tau_fs=20.0, temperature_k=500.0):
    """32 Li with OU velocities (relaxation τ, per-axis variance k_BT/m) and positions
    integrated by the trapezoid rule; 8 S vibrating at 8 THz as the framework."""
    rng = np.random.default_rng(seed)
    s2 = _sigma_a_fs("Li", temperature_k) ** 2
    a = np.exp(-dt / tau_fs)
    v = np.empty((n_frames, 32, 3))
    v[0] = rng.normal(0, np.sqrt(s2), (32, 3))
    kicks = rng.normal(0, np.sqrt(s2 * (1 - a * a)), (n_frames, 32, 3))
    for i in range(1, n_frames):
        v[i] = a * v[i - 1] + kicks[i]
    x = np.concatenate([np.zeros((1, 32, 3)), np.cumsum(0.5 * (v[1:] + v[:-1]) * dt, 0)])
    w = 2 * np.pi * 8.0 / 1000.0
    amp = np.sqrt(2) * _sigma_a_fs("S", temperature_k)
    t = np.arange(n_frames)[:, None, None] * dt
    ph = rng.uniform(0, 2 * np.pi, (1, 8, 3))
    xs, vs = amp / w * np.sin(w * t + ph), amp * np.cos(w * t + ph)
    box = 15.0
    pos = np.concatenate([x, xs], 1) + rng.uniform(0, box, (1, 40, 3))
    d_true_cm2_s = s2 * tau_fs * 0.1  # Å²/fs → cm²/s
    return pos % box, np.concatenate([v, vs], 1), ["Li"] * 32 + ["S"] * 8, d_true_cm2_s


def test_ornstein_uhlenbeck_green_kubo_matches_true_d_and_msd() -> None:
    pos, vel, species, d_true = _ornstein_uhlenbeck()
    kw = dict(temperature_k=500.0, frame_interval_fs=2.0)
    stored = analyze_in_memory(
        pos, np.eye(3) * 15, species, [VDOS(max_lag_ps=2.0), Diffusion()], velocities=vel, **kw
    )
    fd = analyze_in_memory(pos, np.eye(3) * 15, species, [VDOS(max_lag_ps=2.0)], **kw)["vdos"]
    r, msd = stored["vdos"], stored["diffusion"]
    d, err = r.diffusivity_from_vacf_cm2_s, r.diffusivity_from_vacf_err_cm2_s
    # the truth, within 10 % and within 2σ of the stated error (calibrated on 10 seeds:
    # spread 3.4 %, stated 4.4 %)
    assert abs(d / d_true - 1) < 0.10
    assert abs(d - d_true) < 2 * err
    assert 0.02 < err / d < 0.08
    # the MSD of the same run (independent estimator) agrees within the combined errors
    assert abs(d - msd.diffusivity_cm2_s) < 2 * np.hypot(err, msd.diffusivity_err_cm2_s)
    # g(0) = 12·m·D/(k_BT) = 12τ = 240 fs = 0.24 /THz for stored (equipartition) velocities
    assert r.vdos_zero == pytest.approx(12 * 20.0 / 1000.0, rel=0.1)
    # low-frequency slope of the Lorentzian 1/(1 + (2πντ)²) over the same bins
    nu = np.asarray(r.frequency_thz)
    lo, hi = r.low_frequency_fit_range_thz
    sel = (nu >= lo) & (nu <= hi)
    truth = np.polyfit(np.log(nu[sel]), np.log(1 / (1 + (2 * np.pi * nu[sel] * 0.02) ** 2)), 1)[0]
    assert r.low_frequency_exponent == pytest.approx(
        truth, abs=max(0.1, 3 * r.low_frequency_exponent_err)
    )
    # finite differences of the trapezoid-integrated positions: the same D and the same
    # absolute spectrum ĝ·T_kin at low frequency (the difference filters only high ν)
    assert fd.velocity_source == "finite-difference"
    assert fd.diffusivity_from_vacf_cm2_s == pytest.approx(d, rel=0.01)
    t_s = next(s.kinetic_temperature_k for s in r.species if s.element == "Li")
    t_f = next(s.kinetic_temperature_k for s in fd.species if s.element == "Li")
    low = nu < 2.0
    np.testing.assert_allclose(
        np.asarray(fd.vdos["Li"])[low] * t_f, np.asarray(r.vdos["Li"])[low] * t_s, rtol=0.02
    )
    assert t_f < t_s  # the finite difference resolves less kinetic energy
    assert "Green–Kubo" in r.diffusivity_method
    assert VDOS.describe(r).startswith("VDOS (stored velocities")


def test_registered_and_input_errors() -> None:
    assert ANALYSES["vdos"] is VDOS and VDOS.needs_velocities
    with pytest.raises(UserInputError, match="max lag"):
        VDOS(max_lag_ps=-1)
    pos = np.zeros((20, 1, 3))
    with pytest.raises(UserInputError, match="at least 8"):
        analyze_in_memory(
            pos, np.eye(3) * 5, ["Li"], [VDOS()], temperature_k=300.0, frame_interval_fs=1.0,
            drift_reference="none",
        )  # fmt: skip


# --------------------------------------------------------------------------- CLI, real data


def test_cli_json_plot_and_errors(tmp_path) -> None:
    pos, vel, species = _harmonic(n_frames=1000)
    path = _write_npz(tmp_path / "h.npz", pos, np.eye(3) * 14, species, vel, temperature_k=300.0)
    out = subprocess.run(
        [str(IONFLOW), "vdos", str(path), "--json", "--plot", str(tmp_path / "v.png"), "-q"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["velocity_source"] == "stored" and set(doc["vdos"]) == {"Li", "S"}
    assert abs(doc["peak_frequencies_thz"]["S"][0] - 12.0) <= doc["frequency_step_thz"]
    assert (tmp_path / "v.png").stat().st_size > 0
    table = subprocess.run([str(IONFLOW), "vdos", str(path), "-q"], capture_output=True, text=True)
    assert table.returncode == 0 and "D from VACF" in table.stdout
    bad = subprocess.run(
        [str(IONFLOW), "vdos", str(path), "--max-lag-ps", "-1", "-q"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: max lag must be > 0 ps")


@pytest.mark.skipif(not ARGYRODITE_50P.exists(), reason="shared Li6PS5I data not present")
def test_real_li6ps5i_50p_vacf_d_tracks_msd_d() -> None:
    """Morgan 2021 Li6PS5I 50p, 500 K, 7 consecutive segments, 100 fs per frame: finite
    differences, Nyquist 5 THz. Green–Kubo over a 5 ps window is the MSD's slope near
    2.5–5 ps; on these runs the MSD slope still falls with the lag (local D 6.7e-6 on
    3.5–19 ps, 5.7e-6 on 19–35 ps), so D_VACF is expected above the long-window D*, by
    less than the ~2× window dependence these runs show: tolerance a factor 2."""
    files = [str(ARGYRODITE_50P / f"run{i}" / "actual_XDATCAR.gz") for i in range(1, 8)]
    kw = dict(species="Li", temperature_k=500.0, frame_interval_fs=100.0)
    r = analyze_trajectory(files, [VDOS()], **kw)["vdos"]
    msd = analyze_file(files, **kw)
    assert r.velocity_source == "finite-difference" and r.nyquist_thz == pytest.approx(5.0)
    assert any("Nyquist frequency 1/(2Δt) = 5 THz" in w for w in r.warnings)
    ratio = r.diffusivity_from_vacf_cm2_s / msd.diffusivity_cm2_s
    assert 0.5 < ratio < 2.0
    assert r.vdos_zero > 0.02  # liquid-like Li: g(0) clearly non-zero …
    assert 0.3 < r.low_frequency_exponent < 1.2  # … and sub-Debye (n < 2) below 2 THz
    fw = {s.element: s.resolved_kinetic_fraction for s in r.species}
    assert fw["Li"] < 0.5  # 100 fs frames resolve a fraction of the Li kinetic energy
