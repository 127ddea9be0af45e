"""ionflow vs kinisi 2.1.0 (a pinned dev peer) on the same data and the same fit window.

* Synthetic: 32 Li hopping as a random walk (known D) through a rattling framework with a
  common drift (:func:`ionflow.analysis.synthetic.hopping_trajectory`). Both tools must find the
  true D within 3 of their own σ, and agree with each other within 15 %.
* Real: the 50p Li6PS5I AIMD of shared/data/argyrodite-morgan2021 (7 consecutive segments,
  100 fs frames, 500 K): ionflow's D within 20 % of kinisi's on ionflow's window.

kinisi is given the structures through ``DiffusionAnalyzer.from_xdatcar`` (it only reads
``.structures``), a ``dt`` grid of every frame lag up to ionflow's window end (kinisi fits up
to its longest ``dt``) and ``start_dt`` = ionflow's window start; its MCMC defaults, seeded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ionflow.analysis import analyze_arrays
from ionflow.analysis.synthetic import hopping_trajectory

pytestmark = pytest.mark.slow

kinisi_analyze = pytest.importorskip("kinisi.analyze", reason="kinisi (dev extra) not installed")
sc = pytest.importorskip("scipp", reason="scipp (kinisi dependency) not installed")

REPO = Path(__file__).resolve().parents[1]
ARGYRODITE = next(
    (
        folder
        for folder in (
            REPO.parent / "shared" / "data" / "argyrodite-morgan2021" / "Li6PS5I",
            Path("/work/shared/data/argyrodite-morgan2021/Li6PS5I"),
        )
        if folder.is_dir()
    ),
    None,
)


def _structures(positions: np.ndarray, lattice: np.ndarray, species: list[str]) -> list:
    from pymatgen.core import Lattice, Structure

    lat = Lattice(np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)[0])
    return [Structure(lat, species, p, coords_are_cartesian=True) for p in positions]


def _kinisi_d(
    structures: list, frame_interval_fs: float, window_ps: tuple[float, float], seed: int = 0
) -> tuple[float, float]:
    """kinisi's posterior mean and std of D (cm²/s) on ``window_ps``."""
    n_end = min(
        int(math.floor(window_ps[1] * 1000.0 / frame_interval_fs + 1e-9)), len(structures) - 1
    )
    dt = sc.arange("time interval", 1, n_end + 1) * sc.scalar(frame_interval_fs, unit="fs")
    kda = kinisi_analyze.DiffusionAnalyzer.from_xdatcar(
        SimpleNamespace(structures=structures),
        specie="Li",
        time_step=sc.scalar(frame_interval_fs, unit="fs"),
        step_skip=sc.scalar(1, unit=sc.units.dimensionless),
        dt=dt,
        progress=False,
    )
    kda.diffusion(
        sc.scalar(float(window_ps[0]), unit="ps"),
        progress=False,
        random_state=np.random.RandomState(seed),
    )
    assert str(kda.D.unit) in ("cm^2/s", "cm**2/s")
    samples = np.asarray(kda.D.values, dtype=np.float64)
    return float(samples.mean()), float(samples.std(ddof=1))


def test_synthetic_random_walk_known_d() -> None:
    traj = hopping_trajectory(n_frames=4000, n_mobile=32, frame_interval_fs=100.0, seed=0)
    d_true = traj.diffusivity_cm2_s
    res = analyze_arrays(
        traj.positions,
        traj.lattice,
        traj.species,
        species="Li",
        temperature_k=traj.temperature_k,
        frame_interval_fs=traj.frame_interval_fs,
    )
    assert res.diffusivity_cm2_s is not None, (res.regime, res.regime_reason)
    d_ion, s_ion = res.diffusivity_cm2_s, res.diffusivity_err_cm2_s
    d_kin, s_kin = _kinisi_d(
        _structures(traj.positions, traj.lattice, traj.species),
        traj.frame_interval_fs,
        tuple(res.fit_window_ps),
    )
    msg = (
        f"true {d_true:.4e}; ionflow {d_ion:.4e} ± {s_ion:.1e}; kinisi {d_kin:.4e} ± {s_kin:.1e} "
        f"on {res.fit_window_ps} ps"
    )
    assert abs(d_ion - d_true) < 3 * s_ion, msg
    assert abs(d_kin - d_true) < 3 * s_kin, msg
    assert abs(d_ion / d_kin - 1.0) < 0.15, msg


@pytest.mark.skipif(ARGYRODITE is None, reason="shared/ argyrodite AIMD data not present")
def test_real_argyrodite_50p_same_window() -> None:
    from ionflow.analysis.readers import open_trajectory

    runs = sorted(
        (ARGYRODITE / "50p").glob("run*/actual_XDATCAR.gz"),
        key=lambda p: int(re.search(r"run(\d+)", p.parent.name).group(1)),
    )
    assert len(runs) == 7
    src = open_trajectory([str(p) for p in runs])
    chunks = list(src.iter_chunks())
    positions = np.concatenate([c[0] for c in chunks])
    lattices = np.concatenate([c[1] for c in chunks])
    species = list(src.info.species)
    assert positions.shape == (700, 416, 3)

    res = analyze_arrays(
        positions, lattices, species, species="Li", temperature_k=500.0, frame_interval_fs=100.0
    )
    assert res.diffusivity_cm2_s is not None, (res.regime, res.regime_reason)
    d_kin, s_kin = _kinisi_d(_structures(positions, lattices, species), 100.0, res.fit_window_ps)
    msg = (
        f"ionflow {res.diffusivity_cm2_s:.4e} ± {res.diffusivity_err_cm2_s:.1e}, kinisi "
        f"{d_kin:.4e} ± {s_kin:.1e} on {res.fit_window_ps} ps"
    )
    assert abs(res.diffusivity_cm2_s / d_kin - 1.0) < 0.20, msg
