"""Tests of ionflow.batched (several MD replicas, one batched potential call per step).

The peers are independent of the batching code: a lone :func:`ionflow.md.run_md` of the
same replica (frame by frame where the potential is deterministic, statistically with other
seeds), the canonical-ensemble fluctuation of the kinetic temperature
(``σ_T = T √(2 / n_dof)``), energy conservation without a thermostat, and the diffusion
coefficient of lone runs. The CHGNet tests are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.io import read, write
from ase.io.trajectory import Trajectory

from ionflow.batched import BatchStats, Replica, run_batched_md
from ionflow.batched_potentials import get_batched_potential, resolve_device
from ionflow.errors import UserInputError
from ionflow.md import CHECKPOINT_NAME, PRODUCTION_NAME, STATE_NAME, MDSettings, run_md
from ionflow.potentials import get_calculator

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------- helpers


def licl(repeat: tuple[int, int, int] = (2, 1, 1)) -> Atoms:
    """Rocksalt 'LiCl' with a 2.5 Å Li-Cl distance (the toy potential's minimum)."""
    return bulk("LiCl", "rocksalt", a=5.0, cubic=True).repeat(repeat)


def cl_indices(atoms: Atoms) -> list[int]:
    return [a.index for a in atoms if a.symbol == "Cl"]


def settings(**kw) -> MDSettings:
    base = dict(
        temperature_k=1000.0,
        time_step_fs=2.0,
        equilibration_steps=40,
        production_steps=100,
        frame_interval_steps=10,
        checkpoint_interval_steps=20,
    )
    base.update(kw)
    return MDSettings(**base)


def frames(path: str | Path) -> list[Atoms]:
    with Trajectory(str(path)) as traj:
        return [traj[i] for i in range(len(traj))]


def free_temperature(atoms: Atoms, n_dof: int) -> float:
    return 2.0 * atoms.get_kinetic_energy() / (n_dof * units.kB)


def assert_same_frames(dir_a: Path, dir_b: Path) -> None:
    for name in ("equilibration.traj", PRODUCTION_NAME):
        fa, fb = frames(dir_a / name), frames(dir_b / name)
        assert len(fa) == len(fb)
        for a, b in zip(fa, fb, strict=True):
            assert np.array_equal(a.positions, b.positions)
            assert np.array_equal(a.get_momenta(), b.get_momenta())
            assert a.get_potential_energy() == b.get_potential_energy()


# ------------------------------------------------- a replica is the lone run


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin", "berendsen"])
def test_each_replica_is_its_lone_run(tmp_path, thermostat):
    """Same frames, checkpoint fingerprint and metadata as run_md alone (toy: exact)."""
    atoms = licl()
    replicas = [
        Replica(
            atoms, settings(temperature_k=600.0, seed=1, thermostat=thermostat), tmp_path / "a"
        ),
        Replica(
            atoms,
            settings(temperature_k=1200.0, seed=2, thermostat=thermostat, production_steps=60),
            tmp_path / "b",
            fixed_indices=cl_indices(atoms),
        ),
        Replica(
            atoms, settings(temperature_k=900.0, seed=3, thermostat=thermostat), tmp_path / "c"
        ),
    ]
    stats = BatchStats()
    results = run_batched_md(replicas, "toy", stats=stats)
    assert [r.completed for r in results] == [True, True, True]
    assert [r.temperature_k for r in results] == [600.0, 1200.0, 900.0]
    assert results[1].fixed_indices == cl_indices(atoms)
    # one evaluation per step for all replicas still running (+ the step-0 frame)
    assert stats.evaluations == 141
    assert stats.structures == 141 + 101 + 141

    for i, replica in enumerate(replicas):
        lone_dir = tmp_path / f"lone{i}"
        lone = run_md(replica.prepared_atoms(), get_calculator("toy"), replica.settings, lone_dir)
        assert_same_frames(Path(replica.workdir), lone_dir)
        with (
            np.load(Path(replica.workdir) / CHECKPOINT_NAME) as a,
            np.load(lone_dir / CHECKPOINT_NAME) as b,
        ):
            assert str(a["fingerprint"]) == str(b["fingerprint"])
            assert sorted(a.files) == sorted(b.files)
        state_a = json.loads((Path(replica.workdir) / STATE_NAME).read_text())
        state_b = json.loads((lone_dir / STATE_NAME).read_text())
        assert state_a == state_b
        assert results[i].mean_temperature_k == lone.mean_temperature_k
        # a lone run_md with the ordinary calculator recognises the batched directory
        again = run_md(
            replica.prepared_atoms(), get_calculator("toy"), replica.settings, replica.workdir
        )
        assert again.completed and again.resumed_from_step == replica.settings.total_steps


def test_lone_run_resumes_a_batched_replica_and_vice_versa(tmp_path):
    """A batch stopped mid-run is continued by run_md alone (and the other way round)."""
    atoms = licl()
    s = settings(production_steps=200, checkpoint_interval_steps=40, seed=5)
    calls = [0]

    def stop_after_a_while() -> None:
        calls[0] += 1
        if calls[0] > 12:  # a few frames and checkpoints in
            raise KeyboardInterrupt

    replicas = [
        Replica(atoms, s, tmp_path / "a", guard=stop_after_a_while),
        Replica(atoms, s.model_copy(update={"seed": 6}), tmp_path / "b"),
    ]
    with pytest.raises(KeyboardInterrupt) as info:
        run_batched_md(replicas, "toy")
    assert "replica 0" in "".join(getattr(info.value, "__notes__", []))
    with np.load(tmp_path / "a" / CHECKPOINT_NAME) as ck:
        stopped_at = int(ck["step"])
    assert 0 < stopped_at < s.total_steps
    resumed = run_md(atoms, get_calculator("toy"), s, tmp_path / "a")
    assert resumed.resumed_from_step == stopped_at and resumed.completed
    reference = run_md(atoms, get_calculator("toy"), s, tmp_path / "ref")
    assert resumed.n_production_frames == reference.n_production_frames
    assert_same_frames(tmp_path / "a", tmp_path / "ref")
    # replica b was not stopped by a's failure: it ran to its end
    assert json.loads((tmp_path / "b" / STATE_NAME).read_text())["completed"] is True

    # the other way round: a lone run stopped mid-run is continued in a batch
    lone_calls = [0]

    def stop_lone() -> None:
        lone_calls[0] += 1
        if lone_calls[0] > 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_md(atoms, get_calculator("toy"), s, tmp_path / "c", guard=stop_lone)
    out = run_batched_md([Replica(atoms, s, tmp_path / "c")], "toy")
    assert out[0].completed and out[0].resumed_from_step is not None
    assert_same_frames(tmp_path / "c", tmp_path / "ref")


def test_deterministic_given_seeds(tmp_path):
    atoms = licl()
    make = lambda root: [  # noqa: E731
        Replica(atoms, settings(seed=k, thermostat="langevin"), root / f"r{k}") for k in range(3)
    ]
    run_batched_md(make(tmp_path / "one"), "toy")
    run_batched_md(make(tmp_path / "two"), "toy")
    for k in range(3):
        assert_same_frames(tmp_path / "one" / f"r{k}", tmp_path / "two" / f"r{k}")
    # different seeds give different runs
    a = frames(tmp_path / "one" / "r0" / PRODUCTION_NAME)[-1].positions
    b = frames(tmp_path / "one" / "r1" / PRODUCTION_NAME)[-1].positions
    assert not np.allclose(a, b)


# ---------------------------------------------------------- statistical physics


def test_per_replica_temperatures_canonical_fluctuations_and_pinning(tmp_path):
    """Each replica holds its own temperature with canonical kinetic-energy fluctuations.

    For NVT the instantaneous free-DOF temperature has a standard deviation
    ``T √(2 / n_dof)`` (canonical ensemble: E_kin is Γ-distributed with n_dof / 2 degrees).
    The pinned replica's fixed atoms never move, in the same batch as free ones.
    """
    atoms = licl((2, 2, 2))  # 64 atoms
    cl = cl_indices(atoms)
    base = dict(
        equilibration_steps=400,
        production_steps=3000,
        frame_interval_steps=10,
        checkpoint_interval_steps=1000,
    )
    replicas = [
        Replica(atoms, settings(temperature_k=500.0, seed=1, **base), tmp_path / "t500"),
        Replica(atoms, settings(temperature_k=1000.0, seed=2, **base), tmp_path / "t1000"),
        Replica(
            atoms,
            settings(temperature_k=1000.0, seed=3, **base),
            tmp_path / "t1000p",
            fixed_indices=cl,
        ),
    ]
    results = run_batched_md(replicas, "toy")
    for replica, result in zip(replicas, results, strict=True):
        target = replica.settings.temperature_k
        n_dof = result.n_free_degrees_of_freedom
        temps = np.array([free_temperature(f, n_dof) for f in frames(result.production_trajectory)])
        # block standard error of the mean (10 blocks) as the tolerance scale
        blocks = temps[: len(temps) // 10 * 10].reshape(10, -1).mean(axis=1)
        sem = blocks.std(ddof=1) / np.sqrt(len(blocks))
        assert abs(temps.mean() - target) < max(4 * sem, 0.02 * target), (target, temps.mean())
        canonical = target * np.sqrt(2.0 / n_dof)
        assert temps.std() == pytest.approx(canonical, rel=0.15), (target, temps.std(), canonical)
    assert results[0].mean_temperature_k < 0.6 * results[1].mean_temperature_k
    # pinned atoms stay exactly fixed, momenta exactly zero; the free ones move
    assert results[2].fixed_indices == cl
    free = [i for i in range(len(atoms)) if i not in cl]
    pinned_frames = frames(results[2].equilibration_trajectory) + frames(
        results[2].production_trajectory
    )
    for f in pinned_frames:
        assert np.array_equal(f.positions[cl], atoms.positions[cl])
        assert np.all(f.get_momenta()[cl] == 0.0)
    assert not np.allclose(pinned_frames[-1].positions[free], atoms.positions[free])
    # the free replicas keep their centre of mass (net force removed)
    for f in frames(results[1].production_trajectory):
        assert np.allclose(f.get_momenta().sum(axis=0), 0.0, atol=1e-10)


def test_energy_drift_without_thermostat_matches_lone_run(tmp_path):
    """With the thermostat decoupled (τ = 10^12 fs) E_pot + E_kin is conserved alike."""
    atoms = licl((2, 2, 1))
    nve = dict(
        temperature_k=800.0,
        thermostat_time_fs=1e12,
        equilibration_steps=0,
        production_steps=2000,
        frame_interval_steps=20,
        checkpoint_interval_steps=1000,
        time_step_fs=1.0,
    )
    replicas = [Replica(atoms, settings(seed=k, **nve), tmp_path / f"b{k}") for k in range(2)]
    run_batched_md(replicas, "toy")

    def drift(directory: Path) -> tuple[float, float]:
        fs = frames(directory / PRODUCTION_NAME)
        e = np.array([f.get_potential_energy() + f.get_kinetic_energy() for f in fs])
        e /= len(atoms)
        slope = np.polyfit(np.arange(len(e)), e, 1)[0] * len(e)
        return slope, float(np.ptp(e))

    for k, replica in enumerate(replicas):
        lone_dir = tmp_path / f"lone{k}"
        run_md(atoms, get_calculator("toy"), replica.settings, lone_dir)
        slope_b, spread_b = drift(Path(replica.workdir))
        slope_l, spread_l = drift(lone_dir)
        assert abs(slope_b) < 2e-3 and spread_b < 5e-3  # eV/atom over 2 ps
        assert slope_b == pytest.approx(slope_l, abs=1e-4)
        assert spread_b == pytest.approx(spread_l, abs=5e-4)


def test_diffusion_batched_and_lone_agree_within_errors(tmp_path):
    """D of Li (toy Li3N, 1000 K): batched replicas vs lone runs with other seeds."""
    from ionflow.analysis.diffusion import analyze_file

    atoms = read(REPO / "examples" / "Li3N.cif").repeat((2, 2, 2))
    s = MDSettings(
        temperature_k=1000.0,
        time_step_fs=2.0,
        equilibration_steps=200,
        production_steps=3000,
        frame_interval_steps=10,
        checkpoint_interval_steps=1000,
    )
    batched = run_batched_md(
        [Replica(atoms, s.model_copy(update={"seed": k}), tmp_path / f"b{k}") for k in (1, 2)],
        "toy",
    )
    lone = [
        run_md(atoms, get_calculator("toy"), s.model_copy(update={"seed": k}), tmp_path / f"l{k}")
        for k in (3, 4)
    ]

    def mean_d(results) -> tuple[float, float]:
        ds = [analyze_file(r.production_trajectory) for r in results]
        assert all(d.regime == "diffusive" for d in ds)
        values = np.array([d.diffusivity_cm2_s for d in ds])
        errors = np.array([d.diffusivity_err_cm2_s for d in ds])
        return values.mean(), float(np.sqrt(np.sum(errors**2))) / len(ds)

    d_b, e_b = mean_d(batched)
    d_l, e_l = mean_d(lone)
    assert d_b > 0 and d_l > 0
    assert abs(d_b - d_l) < 3.0 * np.hypot(e_b, e_l), (d_b, e_b, d_l, e_l)


# ----------------------------------------------------------------- kill -9

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from ase.io import read
    from ionflow.batched import Replica, run_batched_md
    from ionflow.md import MDSettings

    atoms = read(sys.argv[1])
    spec = json.loads(sys.argv[2])
    replicas = [
        Replica(atoms, MDSettings(**r["settings"]), r["workdir"], fixed_indices=r["fixed"])
        for r in spec
    ]
    run_batched_md(replicas, "toy", progress=lambda i, n: time.sleep(0.005))
    """
)


def _replica_specs(atoms: Atoms, root: Path) -> list[dict]:
    common = dict(
        time_step_fs=2.0,
        equilibration_steps=100,
        production_steps=1000,
        frame_interval_steps=5,
        checkpoint_interval_steps=50,
    )
    return [
        {
            "settings": dict(common, temperature_k=700.0, seed=11),
            "workdir": str(root / "r0"),
            "fixed": None,
        },
        {
            "settings": dict(common, temperature_k=1100.0, seed=12, thermostat="langevin"),
            "workdir": str(root / "r1"),
            "fixed": None,
        },
        {
            "settings": dict(common, temperature_k=1100.0, seed=13),
            "workdir": str(root / "r2"),
            "fixed": cl_indices(atoms),
        },
    ]


def test_kill_9_resumes_every_replica(tmp_path):
    atoms = licl()
    start = tmp_path / "start.traj"
    write(start, atoms)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    spec = _replica_specs(atoms, tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(start), json.dumps(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    dirs = [Path(r["workdir"]) for r in spec]
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError("worker ended before it could be killed: " + err)
            assert time.monotonic() < deadline, "worker too slow"
            time.sleep(0.02)
            try:
                steps, beyond = [], False
                for d in dirs:
                    with np.load(d / CHECKPOINT_NAME) as ck:
                        steps.append(int(ck["step"]))
                        n_ckpt = int(ck["n_production_frames"])
                    with Trajectory(str(d / PRODUCTION_NAME)) as traj:
                        beyond |= len(traj) > n_ckpt
            except (OSError, ValueError, KeyError, EOFError):
                continue
            if min(steps) >= 200 and beyond:
                os.kill(proc.pid, signal.SIGKILL)
                break
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        raise
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ckpt_steps = []
    for d in dirs:
        with np.load(d / CHECKPOINT_NAME) as ck:
            assert not bool(ck["completed"])
            ckpt_steps.append(int(ck["step"]))

    replicas = [
        Replica(atoms, MDSettings(**r["settings"]), r["workdir"], fixed_indices=r["fixed"])
        for r in spec
    ]
    resumed = run_batched_md(replicas, "toy")
    assert [r.resumed_from_step for r in resumed] == ckpt_steps
    assert all(r.completed and r.n_production_frames == 201 for r in resumed)

    reference_spec = _replica_specs(atoms, tmp_path / "reference")
    reference = [
        Replica(atoms, MDSettings(**r["settings"]), r["workdir"], fixed_indices=r["fixed"])
        for r in reference_spec
    ]
    run_batched_md(reference, "toy")
    for d, r in zip(dirs, reference_spec, strict=True):
        # frame by frame identical to an uninterrupted batch: no gap, no duplicate
        assert_same_frames(d, Path(r["workdir"]))
        fs = frames(d / PRODUCTION_NAME)
        moves = [
            np.abs(b.positions - a.positions).max() for a, b in zip(fs[:-1], fs[1:], strict=True)
        ]
        assert min(moves) > 0


# ----------------------------------------------------------------- errors, devices


def test_errors_and_devices(tmp_path):
    with pytest.raises(UserInputError, match="no replicas"):
        run_batched_md([], "toy")
    with pytest.raises(UserInputError, match="share a working directory"):
        run_batched_md(
            [Replica(licl(), settings(), tmp_path), Replica(licl(), settings(seed=1), tmp_path)],
            "toy",
        )
    with pytest.raises(UserInputError, match="unknown device"):
        resolve_device("tpu")
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(UserInputError, match="unknown potential"):
        get_batched_potential("nonsense")


def test_model_failure_reaches_every_replica(tmp_path):
    pot = get_batched_potential("toy")
    original = pot.compute
    count = [0]

    def failing(structures):
        count[0] += 1
        if count[0] == 30:
            raise FloatingPointError("model blew up")
        return original(structures)

    pot.compute = failing  # type: ignore[method-assign]
    replicas = [Replica(licl(), settings(seed=k), tmp_path / f"r{k}") for k in range(3)]
    with pytest.raises(FloatingPointError, match="model blew up") as info:
        run_batched_md(replicas, pot)
    assert "2 other replica(s) failed too" in "".join(info.value.__notes__)
    # everything up to the last checkpoint is usable: the rerun completes
    pot.compute = original  # type: ignore[method-assign]
    out = run_batched_md(replicas, pot)
    assert all(r.completed and r.resumed_from_step == 20 for r in out)


# ----------------------------------------------------------------- CHGNet


@pytest.mark.slow
def test_chgnet_batched_matches_calculator_and_lone_run(tmp_path):
    """One predict_graph for 3 structures = CHGNetCalculator on each; replicas = lone runs."""
    atoms = bulk("OLi2", "fluorite", a=4.61, cubic=True).repeat((1, 1, 2))  # Li16O8
    pot = get_batched_potential("chgnet", "cpu")
    assert pot.batched and pot.calculator_name == "chgnet.model.dynamics.CHGNetCalculator"
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(3):
        a = atoms.copy()
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        structures.append(a)
    calc = get_calculator("chgnet")
    for a, res in zip(structures, pot.compute(structures), strict=True):
        calc.calculate(a)
        assert res["energy"] == pytest.approx(calc.results["energy"], abs=1e-5)
        assert np.allclose(res["forces"], calc.results["forces"], atol=1e-5)
        assert np.allclose(res["stress"], calc.results["stress"], atol=1e-6)

    o = [a.index for a in atoms if a.symbol == "O"]
    s = MDSettings(
        temperature_k=800.0,
        time_step_fs=2.0,
        equilibration_steps=0,
        production_steps=20,
        frame_interval_steps=5,
        checkpoint_interval_steps=10,
    )
    replicas = [
        Replica(atoms, s, tmp_path / "free"),
        Replica(atoms, s.model_copy(update={"temperature_k": 1200.0, "seed": 1}), tmp_path / "hot"),
        Replica(atoms, s.model_copy(update={"seed": 2}), tmp_path / "pinned", fixed_indices=o),
    ]
    stats = BatchStats()
    results = run_batched_md(replicas, pot, stats=stats)
    assert stats.evaluations == 21 and stats.mean_batch_size == 3.0
    assert all(r.completed and r.n_production_frames == 5 for r in results)
    for f in frames(results[2].production_trajectory):
        assert np.array_equal(f.positions[o], atoms.positions[o])
    for replica in replicas:
        lone_dir = tmp_path / f"lone_{Path(replica.workdir).name}"
        run_md(replica.prepared_atoms(), get_calculator("chgnet"), replica.settings, lone_dir)
        fa = frames(Path(replica.workdir) / PRODUCTION_NAME)
        fb = frames(lone_dir / PRODUCTION_NAME)
        for a, b in zip(fa, fb, strict=True):
            assert np.allclose(a.positions, b.positions, atol=1e-5)
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-4)
        # and the lone calculator recognises the batched directory as its own run
        again = run_md(
            replica.prepared_atoms(), get_calculator("chgnet"), replica.settings, replica.workdir
        )
        assert again.completed and again.resumed_from_step == 20


@pytest.mark.slow
def test_sevennet_batched_matches_calculator_and_lone_run(tmp_path):
    """One SevenNet call on a batch = SevenNetCalculator on each (float32 noise)."""
    pytest.importorskip("sevenn")
    atoms = bulk("OLi2", "fluorite", a=4.61, cubic=True)  # Li8O4
    pot = get_batched_potential("sevennet", "cpu")
    assert pot.batched and pot.calculator_name == "sevenn.calculator.SevenNetCalculator"
    rng = np.random.default_rng(1)
    structures = []
    for repeat in ((1, 1, 1), (1, 1, 1), (2, 1, 1)):  # different sizes in one batch
        a = atoms.repeat(repeat)
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        structures.append(a)
    calc = get_calculator("sevennet")
    for a, res in zip(structures, pot.compute(structures), strict=True):
        calc.calculate(a)
        assert set(res) == set(calc.results)
        assert res["energy"] == pytest.approx(calc.results["energy"], abs=1e-4)
        assert np.allclose(res["forces"], calc.results["forces"], atol=1e-5)
        assert np.allclose(res["stress"], calc.results["stress"], atol=1e-6)
        assert res["num_edges"] == calc.results["num_edges"]

    s = MDSettings(
        temperature_k=900.0,
        time_step_fs=2.0,
        equilibration_steps=0,
        production_steps=10,
        frame_interval_steps=5,
        checkpoint_interval_steps=5,
    )
    o = [a.index for a in atoms if a.symbol == "O"]
    replicas = [
        Replica(atoms, s, tmp_path / "free"),
        Replica(atoms, s.model_copy(update={"seed": 1}), tmp_path / "pinned", fixed_indices=o),
    ]
    results = run_batched_md(replicas, pot)
    assert all(r.completed and r.n_production_frames == 3 for r in results)
    for f in frames(results[1].production_trajectory):
        assert np.array_equal(f.positions[o], atoms.positions[o])
    lone = run_md(atoms, get_calculator("sevennet"), s, tmp_path / "lone")
    for a, b in zip(
        frames(results[0].production_trajectory), frames(lone.production_trajectory), strict=True
    ):
        assert np.allclose(a.positions, b.positions, atol=1e-4)
    again = run_md(atoms, get_calculator("sevennet"), s, tmp_path / "free")
    assert again.completed and again.resumed_from_step == 10


# ----------------------------------------------------------------- campaign (md.batch)


def _campaign_spec(tmp: Path, name: str, batch: str, production_ps: float = 0.4) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""
campaign: {name}
mobile_species: Li
engine: {{relax: none, md: toy}}
md:
  temperatures_k: [600, 900]
  time_step_fs: 2.0
  equilibration_ps: 0.05
  production_ps: {production_ps}
  frame_interval_fs: 10
  supercell_min_length_a: 9.0
  batch: {batch}
materials:
  - {{name: Li6PS5Cl, structure: {REPO / "examples" / "Li6PS5Cl.cif"}}}
"""
    )
    return path


#: short leases so that a killed worker's job is recovered within seconds
FAST_LEASE = {"IONFLOW_LEASE_PING_S": "0.5", "IONFLOW_LEASE_S": "3", "IONFLOW_DB_TIMEOUT_S": "3"}


def _ionflow(args, cwd, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "ionflow.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **FAST_LEASE},
    )


@pytest.fixture
def project(tmp_path):
    yield tmp_path
    from ionflow.store import LocalServer

    server = LocalServer.running(tmp_path / "ionflow-data")
    if server is not None:
        server.stop()


def _md_outputs(project: Path, campaign: str) -> list[dict]:
    from ionflow.store import DatabaseSettings, resolve_database

    db = resolve_database(DatabaseSettings(data_dir=project / "ionflow-data"))
    with db.client() as client:
        mdb = client[db.database]
        docs = list(mdb["outputs"].find({"name": {"$regex": "^md "}}))
        assert mdb["trajectories.files"].count_documents({}) == len(docs)
        assert mdb["summaries"].count_documents({"campaign": campaign}) == 1
    states = {fw["state"] for fw in db.launchpad().fireworks.find({})}
    assert states == {"COMPLETED"}
    return [d["output"] for d in docs]


def test_batched_makers_serialise_under_ionflow():
    from jobflow import Maker

    from ionflow.makers.batched_md import BatchedMDFollowerMaker, BatchedMDLeaderMaker

    for maker in (
        BatchedMDLeaderMaker(runs=(("free", 600.0), ("pinned", 600.0)), device="cpu"),
        BatchedMDFollowerMaker(),
    ):
        d = maker.as_dict()
        assert d["@module"] == "ionflow.makers.batched_md", d["@module"]
        again = type(maker).from_dict(d)
        assert isinstance(again, Maker) and again.as_dict() == d


def test_batch_is_not_part_of_any_reuse_key(tmp_path):
    from ionflow.plan import plan_material
    from ionflow.spec import load_campaign

    keys = {}
    for batch in ("auto", "off"):
        spec, materials = load_campaign(_campaign_spec(tmp_path, "keys", batch))
        assert spec.md.batch == batch
        plan = plan_material(spec, materials[0])
        keys[batch] = [(j.label, j.key) for j in plan.jobs]
    assert keys["auto"] == keys["off"]


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_batched_campaign_runs_every_md_in_one_job_and_resumes(project, sig):
    """md.batch: auto — 4 MD runs (600/900 K × free/pinned) advance in the first MD job;
    every run keeps its own job, output, trajectory and analysis; interrupted (Ctrl-C) or
    killed (kill -9) mid-run, the rerun resumes every replica from its own checkpoint."""
    spec = _campaign_spec(project, "batched", "auto", production_ps=6.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ionflow.cli", "run", str(spec), "--quiet"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **FAST_LEASE},
    )
    runs = project / "ionflow-data" / "runs" / "batched"
    deadline = time.time() + 300
    states = []
    while time.time() < deadline:
        try:
            states = [json.loads(p.read_text()) for p in runs.glob("*/*/md_state.json")]
        except (OSError, ValueError):
            continue
        if len(states) == 4 and all(s["step"] > s["equilibration_steps"] + 200 for s in states):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
    assert len(states) == 4, "the four replicas did not all start in the first MD job"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out + err
    if sig == signal.SIGKILL:
        time.sleep(4)  # the dead worker's lease (3 s) runs out
    at_interrupt = {}
    for p in runs.glob("*/*/md_state.json"):
        state = json.loads(p.read_text())
        assert not state["completed"]
        at_interrupt[str(p.parent)] = state["step"]
    assert len(at_interrupt) == 4

    res = _ionflow(["run", spec, "--quiet"], project)
    assert res.returncode == 0, res.stdout + res.stderr
    outputs = _md_outputs(project, "batched")
    assert len(outputs) == 4
    assert {(o["variant"], o["temperature_k"]) for o in outputs} == {
        (v, t) for v in ("free", "pinned") for t in (600.0, 900.0)
    }
    assert {o["workdir"] for o in outputs} == set(at_interrupt)
    for o in outputs:
        md = o["md"]
        # every job found its run complete: the batch (rerun of the first MD job) did the MD
        assert md["completed"] and md["resumed_from_step"] == md["steps_done"]
        assert md["n_production_frames"] == 601 and o["trajectory"]["n_frames"] == 601
        with Trajectory(str(Path(o["workdir"]) / PRODUCTION_NAME)) as traj:
            assert len(traj) == 601
        compute = json.loads((Path(o["workdir"]) / "compute.json").read_text())["calls"]
        batched = [c for c in compute if c.get("batched_replicas") == 4]
        assert len(batched) == 2  # the interrupted call and the rerun
        # the rerun resumed this replica from its last checkpoint before the interrupt
        resumed = batched[1]["resumed_from_step"]
        assert resumed is not None and 0 < resumed <= at_interrupt[o["workdir"]]
        assert batched[0]["wall_s"] > 0
        if o["variant"] == "pinned":
            assert len(o["fixed_indices"]) == 16
    # the pinned replicas' anions never moved
    pinned = [o for o in outputs if o["variant"] == "pinned"]
    for o in pinned:
        fs = frames(Path(o["workdir"]) / PRODUCTION_NAME)
        idx = o["fixed_indices"]
        assert all(np.array_equal(f.positions[idx], fs[0].positions[idx]) for f in fs)
