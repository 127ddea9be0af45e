"""Tests of ionflow.md (streaming, restartable MD) and ionflow.potentials.

The fast tests use the toy Morse potential; the CHGNet test is marked ``slow``.
"""

from __future__ import annotations

import contextlib
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
from ase.constraints import FixAtoms, FixCom
from ase.io import write
from ase.io.trajectory import Trajectory
from pydantic import ValidationError

from ionflow.errors import UserInputError
from ionflow.md import (
    CHECKPOINT_NAME,
    PRODUCTION_NAME,
    MDSettings,
    read_md_metadata,
    run_md,
)
from ionflow.potentials import KNOWN_POTENTIALS, get_calculator

# ----------------------------------------------------------------- helpers


def licl(repeat: tuple[int, int, int] = (2, 1, 1)) -> Atoms:
    """Rocksalt 'LiCl' with a 2.5 Å Li-Cl distance (the toy potential's minimum)."""
    return bulk("LiCl", "rocksalt", a=5.0, cubic=True).repeat(repeat)


def pinned(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.set_constraint(FixAtoms(indices=[a.index for a in atoms if a.symbol == "Cl"]))
    return atoms


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


def read_frames(path) -> list[Atoms]:
    with Trajectory(str(path)) as traj:
        return [traj[i] for i in range(len(traj))]


def free_temperature(frame: Atoms, n_dof: int) -> float:
    return 2.0 * frame.get_kinetic_energy() / (n_dof * units.kB)


class Crash(RuntimeError):
    pass


# ----------------------------------------------------------------- potentials


def test_potential_names_and_toy():
    assert {"chgnet", "mace", "m3gnet", "sevennet", "toy"} <= set(KNOWN_POTENTIALS)
    atoms = licl()
    atoms.rattle(0.05, seed=1)
    atoms.calc = get_calculator("TOY")
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert np.isfinite(energy) and np.all(np.isfinite(forces))
    assert np.allclose(forces.sum(axis=0), 0.0, atol=1e-10)
    # the fast neighbour list reproduces ASE's MorsePotential with its own neighbour list
    from ase.calculators.morse import MorsePotential

    ref = atoms.copy()
    ref.calc = MorsePotential(epsilon=0.1, r0=2.5, rho0=4.0, rcut1=1.6, rcut2=2.0)
    assert np.isclose(ref.get_potential_energy(), energy, atol=1e-10)
    assert np.allclose(ref.get_forces(), forces, atol=1e-10)
    assert type(get_calculator("morse")).__name__ == "MorsePotential"


def test_potential_errors():
    with pytest.raises(UserInputError, match="unknown potential"):
        get_calculator("lammps")
    with pytest.raises(UserInputError, match="toy potential"):
        get_calculator("toy", sigma=3.0)
    for name, package in (("mace", "mace-torch"), ("m3gnet", "matgl"), ("sevennet", "sevenn")):
        module = {"mace": "mace", "m3gnet": "matgl", "sevennet": "sevenn"}[name]
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(UserInputError, match=f"engine '{name}' needs the {package}"):
                get_calculator(name.upper())


# ----------------------------------------------------------------- settings


def test_settings_validation():
    with pytest.raises(ValidationError, match="checkpoint_interval_steps"):
        settings(checkpoint_interval_steps=25)
    with pytest.raises(ValidationError, match="production_steps"):
        settings(production_steps=105)
    with pytest.raises(ValidationError, match="equilibration_steps"):
        settings(equilibration_steps=5)
    with pytest.raises(ValidationError):
        settings(temperature_k=-1)
    with pytest.raises(ValidationError):
        settings(thermostat="andersen")
    s = settings()
    assert s.frame_interval_fs == 20.0
    assert s.n_equilibration_frames == 5 and s.n_production_frames == 11


def test_unsupported_constraint(tmp_path):
    atoms = licl()
    atoms.set_constraint(FixCom())
    with pytest.raises(UserInputError, match="only FixAtoms"):
        run_md(atoms, get_calculator("toy"), settings(), tmp_path)
    atoms.set_constraint(FixAtoms(indices=range(len(atoms))))
    with pytest.raises(UserInputError, match="every atom is fixed"):
        run_md(atoms, get_calculator("toy"), settings(), tmp_path)


# ----------------------------------------------------------------- frames and metadata


def test_frame_counts_and_metadata(tmp_path):
    s = settings()
    seen: list[tuple[int, int]] = []
    result = run_md(
        licl(), get_calculator("toy"), s, tmp_path, progress=lambda i, n: seen.append((i, n))
    )
    assert result.completed and result.resumed_from_step is None
    assert result.steps_done == 140
    assert result.n_equilibration_frames == 5 and result.n_production_frames == 11
    eq = read_frames(result.equilibration_trajectory)
    prod = read_frames(result.production_trajectory)
    assert len(eq) == 5 and len(prod) == 11
    # production frame 0 is the last equilibration state: no gap, same positions
    assert np.array_equal(prod[0].positions, eq[-1].positions)
    assert np.array_equal(prod[0].get_momenta(), eq[-1].get_momenta())
    for frame in (eq[0], prod[0], prod[-1]):  # every frame carries energy and forces
        assert np.isfinite(frame.get_potential_energy())
    assert prod[-1].get_forces().shape == (len(prod[-1]), 3)
    # frames carry no internal constraint (FixCom is only used while integrating)
    assert prod[0].constraints == []
    # progress is called at every frame (step 40 is shared by both trajectories)
    assert [i for i, _ in seen] == list(range(0, 141, 10))
    assert all(n == 140 for _, n in seen)
    # metadata: sidecar json and the trajectories' description
    meta = read_md_metadata(tmp_path)
    assert meta["frame_interval_fs"] == pytest.approx(20.0)
    assert meta["temperature_k"] == 1000.0
    assert meta["completed"] is True and meta["n_production_frames"] == 11
    with Trajectory(result.production_trajectory) as traj:
        assert traj.description["frame_interval_fs"] == pytest.approx(20.0)
        assert traj.description["temperature_k"] == 1000.0
        assert traj.description["stage"] == "production"
    os.remove(tmp_path / "md_state.json")
    assert read_md_metadata(result.production_trajectory)["frame_interval_fs"] == 20.0
    assert result.frame_interval_fs == 20.0 and result.n_free_degrees_of_freedom == 3 * 16 - 3


def test_zero_equilibration(tmp_path):
    result = run_md(licl(), get_calculator("toy"), settings(equilibration_steps=0), tmp_path)
    assert result.n_equilibration_frames == 1 and result.n_production_frames == 11
    eq = read_frames(result.equilibration_trajectory)
    prod = read_frames(result.production_trajectory)
    assert np.array_equal(eq[0].positions, prod[0].positions)


# ----------------------------------------------------------------- initial velocities, pinning


@pytest.mark.parametrize("pin", [False, True])
def test_maxwell_boltzmann_start_is_exactly_at_target(tmp_path, pin):
    atoms = pinned(licl((2, 2, 1))) if pin else licl((2, 2, 1))
    s = settings(temperature_k=850.0, seed=7)
    result = run_md(atoms, get_calculator("toy"), s, tmp_path)
    n_fixed = 16 if pin else 0
    n_dof = 3 * (32 - n_fixed) - (0 if pin else 3)
    assert result.n_free_degrees_of_freedom == n_dof
    assert result.fixed_indices == ([a.index for a in atoms if a.symbol == "Cl"] if pin else [])
    frame0 = read_frames(result.equilibration_trajectory)[0]
    assert free_temperature(frame0, n_dof) == pytest.approx(850.0, rel=1e-12)
    p = frame0.get_momenta()
    if pin:
        assert np.all(p[result.fixed_indices] == 0.0)
        # ASE counts the same degrees of freedom for a FixAtoms-constrained frame
        assert frame0.get_temperature() == pytest.approx(850.0, rel=1e-12)
    else:
        assert np.allclose(p.sum(axis=0), 0.0, atol=1e-12)
    # the seed fixes the start: same seed -> same momenta
    again = run_md(atoms, get_calculator("toy"), s, tmp_path / "again")
    assert np.array_equal(read_frames(again.equilibration_trajectory)[0].get_momenta(), p)


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin", "berendsen"])
def test_fixed_atoms_never_move(tmp_path, thermostat):
    atoms = pinned(licl())
    result = run_md(atoms, get_calculator("toy"), settings(thermostat=thermostat), tmp_path)
    fixed = result.fixed_indices
    assert len(fixed) == 8
    free = [i for i in range(len(atoms)) if i not in fixed]
    frames = read_frames(result.equilibration_trajectory) + read_frames(
        result.production_trajectory
    )
    for frame in frames:
        assert np.array_equal(frame.positions[fixed], atoms.positions[fixed])
        assert np.all(frame.get_momenta()[fixed] == 0.0)
        assert isinstance(frame.constraints[0], FixAtoms)
    assert not np.allclose(frames[-1].positions[free], atoms.positions[free])


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin", "berendsen"])
def test_pinned_run_mean_temperature_near_target(tmp_path, thermostat):
    """The thermostat targets the free-DOF temperature, not 3N (ASE's NHC default).

    With ASE 3.29's NoseHooverChainNVT and FixAtoms on the 32 Cl the free atoms of this
    cell average ~130 K for 1200 K asked (its internal momenta of the fixed atoms pick up
    force impulses and count in the thermostat); here the mean is within a few percent.
    """
    s = settings(
        temperature_k=1200.0,
        equilibration_steps=300,
        production_steps=2000,
        frame_interval_steps=20,
        checkpoint_interval_steps=500,
        thermostat=thermostat,
        seed=3,
    )
    result = run_md(pinned(licl((2, 2, 2))), get_calculator("toy"), s, tmp_path)
    assert result.n_free_degrees_of_freedom == 96
    assert result.mean_temperature_k == pytest.approx(1200.0, rel=0.08)
    temps = [free_temperature(f, 96) for f in read_frames(result.production_trajectory)]
    assert np.mean(temps) == pytest.approx(1200.0, rel=0.1)


# ----------------------------------------------------------------- resume


def test_resume_of_finished_run_does_nothing(tmp_path):
    s = settings()
    first = run_md(licl(), get_calculator("toy"), s, tmp_path)
    stamps = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}

    def explode(*args, **kwargs):
        raise AssertionError("a finished run must not compute anything")

    calc = get_calculator("toy")
    calc.calculate = explode
    again = run_md(licl(), calc, s, tmp_path)
    assert again.completed and again.steps_done == first.steps_done
    assert again.n_production_frames == first.n_production_frames
    assert again.mean_temperature_k == first.mean_temperature_k
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()} == stamps


def test_checkpoint_of_another_run_is_refused(tmp_path):
    run_md(licl(), get_calculator("toy"), settings(), tmp_path)
    with pytest.raises(UserInputError, match="different MD run.*fresh workdir"):
        run_md(licl(), get_calculator("toy"), settings(temperature_k=1100.0), tmp_path)
    with pytest.raises(UserInputError, match="different MD run"):
        run_md(pinned(licl()), get_calculator("toy"), settings(), tmp_path)
    other = licl()
    other.symbols[0] = "Na"
    with pytest.raises(UserInputError, match="different MD run"):
        run_md(other, get_calculator("toy"), settings(), tmp_path)


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin", "berendsen"])
def test_crash_after_checkpoint_then_resume_is_identical(tmp_path, thermostat):
    """A crash leaves frames newer than the checkpoint and a half-written frame.

    Resuming drops both and regenerates them: the trajectories equal an uninterrupted run.
    """
    s = settings(
        equilibration_steps=60,
        production_steps=200,
        frame_interval_steps=5,
        checkpoint_interval_steps=50,
        thermostat=thermostat,
    )
    atoms = pinned(licl()) if thermostat == "langevin" else licl()
    ref = run_md(atoms, get_calculator("toy"), s, tmp_path / "ref")

    def crash_at_step_185(step, total):
        if step == 185:
            raise Crash

    workdir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run_md(atoms, get_calculator("toy"), s, workdir, progress=crash_at_step_185)
    # last checkpoint: step 150 -> production frames at steps 60..150 = 19 frames;
    # frames 155..185 were written after it
    with Trajectory(str(workdir / PRODUCTION_NAME)) as traj:
        assert len(traj) == 26
    with open(workdir / PRODUCTION_NAME, "ab") as fh:  # a frame cut short by the kill
        fh.write(b"\x00garbage-of-an-unfinished-frame" * 10)

    resumed = run_md(atoms, get_calculator("toy"), s, workdir)
    assert resumed.completed and resumed.resumed_from_step == 150
    assert resumed.n_production_frames == ref.n_production_frames == 41
    for name in ("equilibration_trajectory", "production_trajectory"):
        a = read_frames(getattr(ref, name))
        b = read_frames(getattr(resumed, name))
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert np.array_equal(fa.positions, fb.positions)
            assert np.array_equal(fa.get_momenta(), fb.get_momenta())
    assert resumed.mean_temperature_k == pytest.approx(ref.mean_temperature_k, rel=1e-12)


def test_checkpoint_counting_more_frames_than_on_disk_is_an_error(tmp_path):
    s = settings()

    def crash_at_step_100(step, total):
        if step == 100:
            raise Crash

    with pytest.raises(Crash):
        run_md(licl(), get_calculator("toy"), s, tmp_path, progress=crash_at_step_100)
    (tmp_path / PRODUCTION_NAME).unlink()
    with pytest.raises(UserInputError, match="cannot be resumed"):
        run_md(licl(), get_calculator("toy"), s, tmp_path)


_WORKER = textwrap.dedent(
    """
    import sys, time
    from ase.io import read
    from ionflow.md import MDSettings, run_md
    from ionflow.potentials import get_calculator

    atoms = read(sys.argv[1])
    settings = MDSettings.model_validate_json(sys.argv[2])
    # slow the frames down so that the parent can kill us mid-production
    run_md(atoms, get_calculator("toy"), settings, sys.argv[3],
           progress=lambda i, n: time.sleep(0.01))
    """
)


def _start_worker(tmp_path: Path, atoms: Atoms, s: MDSettings, workdir: Path) -> subprocess.Popen:
    """The MD of ``atoms`` with ``s`` into ``workdir`` in a subprocess (:data:`_WORKER`)."""
    start = tmp_path / "start.traj"
    write(start, atoms)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), str(start), s.model_dump_json(), str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_mid_production(tmp_path: Path, atoms: Atoms, s: MDSettings) -> tuple[Path, int]:
    """Run the MD in a subprocess and SIGKILL it mid-production.

    Returns the workdir and the number of production frames on disk at the kill.
    """
    workdir = tmp_path / "killed"
    proc = _start_worker(tmp_path, atoms, s, workdir)
    ckpt_path = workdir / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError("worker ended before it could be killed: " + err)
            assert time.monotonic() < deadline, "worker too slow"
            time.sleep(0.02)
            try:
                with np.load(ckpt_path) as ck:
                    step, n_ckpt = int(ck["step"]), int(ck["n_production_frames"])
                if step < s.equilibration_steps + 2 * s.checkpoint_interval_steps:
                    continue
                with Trajectory(str(workdir / PRODUCTION_NAME)) as traj:
                    n_disk = len(traj)
            except (OSError, ValueError, KeyError, EOFError):
                continue  # not there yet / being replaced
            if n_disk > n_ckpt:  # frames newer than the checkpoint are on disk
                os.kill(proc.pid, signal.SIGKILL)
                break
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        raise
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return workdir, n_disk


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_kill_9_and_resume(tmp_path, thermostat):
    s = settings(
        equilibration_steps=100,
        production_steps=1000,
        frame_interval_steps=5,
        checkpoint_interval_steps=50,
        thermostat=thermostat,
        seed=11,
    )
    atoms = licl()
    workdir, n_at_kill = _kill_mid_production(tmp_path, atoms, s)
    with np.load(workdir / CHECKPOINT_NAME) as ck:
        ckpt_step, ckpt_frames = int(ck["step"]), int(ck["n_production_frames"])
        assert not bool(ck["completed"])
    assert n_at_kill > ckpt_frames

    resumed = run_md(atoms, get_calculator("toy"), s, workdir)
    assert resumed.completed and resumed.resumed_from_step == ckpt_step
    assert resumed.steps_done == 1100
    assert resumed.n_production_frames == s.n_production_frames == 201
    frames = read_frames(resumed.production_trajectory)
    assert len(frames) == 201

    reference = run_md(atoms, get_calculator("toy"), s, tmp_path / "reference")
    ref_frames = read_frames(reference.production_trajectory)
    if thermostat == "nose-hoover":  # deterministic: frame-by-frame identical
        for fa, fb in zip(ref_frames, frames, strict=True):
            assert np.allclose(fa.positions, fb.positions, rtol=0, atol=1e-8)
    # continuity at the join (and no duplicated frame: every step moves the atoms)
    steps = np.array(
        [
            np.abs(b.positions - a.positions).max()
            for a, b in zip(frames[:-1], frames[1:], strict=True)
        ]
    )
    assert np.all(steps > 0)
    join = ckpt_frames - 1  # displacement from the last checkpointed frame to the next
    assert steps[join] < 3 * np.median(steps)
    assert steps[join] > np.median(steps) / 3
    # with its RNG state checkpointed, even Langevin reproduces the reference
    for fa, fb in zip(ref_frames, frames, strict=True):
        assert np.allclose(fa.positions, fb.positions, rtol=0, atol=1e-8)


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_sigterm_checkpoints_where_it_is_then_dies_of_the_signal(tmp_path, thermostat):
    """Slurm's walltime/scancel SIGTERM: the MD writes a checkpoint after the step it is in
    (not at the last periodic one, 500 steps apart here), then dies of SIGTERM; the rerun
    resumes there and equals the uninterrupted run frame by frame."""
    s = settings(
        equilibration_steps=100,
        production_steps=2000,
        frame_interval_steps=5,
        checkpoint_interval_steps=500,
        thermostat=thermostat,
        seed=5,
    )
    atoms = licl()
    workdir = tmp_path / "term"
    proc = _start_worker(tmp_path, atoms, s, workdir)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "worker too slow"
            time.sleep(0.02)
            try:
                with np.load(workdir / CHECKPOINT_NAME) as ck:
                    periodic = int(ck["step"])
                with Trajectory(str(workdir / PRODUCTION_NAME)) as traj:
                    n_disk = len(traj)
            except (OSError, ValueError, KeyError, EOFError):
                continue
            if periodic == 500 and n_disk > 81 + 10:  # well past the periodic checkpoint
                os.kill(proc.pid, signal.SIGTERM)
                break
    finally:
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGTERM, err
    with np.load(workdir / CHECKPOINT_NAME) as ck:
        ckpt_step, ckpt_frames = int(ck["step"]), int(ck["n_production_frames"])
        assert not bool(ck["completed"])
    assert f"SIGTERM at step {ckpt_step} of 2100: checkpoint written" in err, err
    with Trajectory(str(workdir / PRODUCTION_NAME)) as traj:
        on_disk = len(traj)
    assert ckpt_frames >= n_disk and on_disk == ckpt_frames  # no step lost, none to drop
    assert 550 <= ckpt_step < 2100 and ckpt_step % 500 != 0

    resumed = run_md(atoms, get_calculator("toy"), s, workdir)
    assert resumed.completed and resumed.resumed_from_step == ckpt_step
    assert resumed.n_production_frames == s.n_production_frames == 401
    frames = read_frames(resumed.production_trajectory)
    reference = run_md(atoms, get_calculator("toy"), s, tmp_path / "reference")
    ref_frames = read_frames(reference.production_trajectory)
    assert len(frames) == len(ref_frames) == 401
    for fa, fb in zip(ref_frames, frames, strict=True):
        assert np.array_equal(fa.positions, fb.positions)
        assert np.array_equal(fa.get_momenta(), fb.get_momenta())


def test_sigterm_handler_restored_after_run(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    s = settings(equilibration_steps=10, production_steps=20, frame_interval_steps=5,
                 checkpoint_interval_steps=10)  # fmt: skip
    run_md(licl(), get_calculator("toy"), s, tmp_path / "md")
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------- memory


def test_memory_does_not_grow_with_frames(tmp_path):
    """2500 steps of a 64-atom cell, a frame every step: RSS stays flat.

    Keeping the frames in RAM (atomate2 style) would cost at least 4.6 MB per 1000
    frames here (positions, momenta and forces alone). The only O(frames) memory left is
    ASE's ULM frame index (8 bytes per frame, in blocks of 42, 1764, 74088 entries).
    """
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    s = settings(
        equilibration_steps=0,
        production_steps=2500,
        frame_interval_steps=1,
        checkpoint_interval_steps=100,
    )
    samples: list[tuple[int, int]] = []

    def probe(step, total):
        if step % 100 == 0:
            samples.append((step, proc.memory_info().rss))

    run_md(licl((2, 2, 2)), get_calculator("toy"), s, tmp_path, progress=probe)
    arr = np.array([x for x in samples if x[0] >= 500], dtype=float)
    slope_mb_per_1000 = np.polyfit(arr[:, 0], arr[:, 1], 1)[0] * 1000 / 1e6
    growth_mb = (arr[:, 1].max() - arr[0, 1]) / 1e6
    frames_in_ram_mb_per_1000 = 64 * 3 * 8 * 3 * 1000 / 1e6
    assert slope_mb_per_1000 < 0.25 * frames_in_ram_mb_per_1000, slope_mb_per_1000
    assert growth_mb < 2 * 0.25 * frames_in_ram_mb_per_1000, growth_mb


# ----------------------------------------------------------------- CHGNet


@pytest.mark.slow
def test_chgnet_short_md(tmp_path):
    atoms = bulk("OLi2", "fluorite", a=4.61, cubic=True).repeat((1, 1, 2))  # Li16O8
    assert len(atoms) == 24
    s = MDSettings(
        temperature_k=800.0,
        time_step_fs=2.0,
        equilibration_steps=0,
        production_steps=20,
        frame_interval_steps=5,
        checkpoint_interval_steps=10,
    )
    result = run_md(atoms, get_calculator("chgnet"), s, tmp_path)
    assert result.completed and result.n_production_frames == 5
    frames = read_frames(result.production_trajectory)
    energies = np.array([f.get_potential_energy() for f in frames])
    assert np.all(np.isfinite(energies))
    assert np.all(np.isfinite(frames[-1].get_forces()))
    assert -8.0 < energies[0] / len(atoms) < -3.0  # Li2O: about -4.7 eV/atom in CHGNet
    # starts exactly at 800 K; starting from the ideal lattice, equipartition takes about
    # half of the kinetic energy within a few tens of fs
    assert 200.0 < result.mean_temperature_k < 1600.0
    assert json.loads((tmp_path / "md_state.json").read_text())["completed"] is True


def test_stored_trajectory_keeps_velocities_consistent_with_positions(tmp_path):
    """The .npz velocities (Å/fs) are the MD's own: with frames every step, they match the
    central finite difference of the unwrapped positions to O(Δt²)."""
    from ionflow.trajectories import traj_to_npz

    s = settings(frame_interval_steps=1, checkpoint_interval_steps=10, production_steps=60)
    result = run_md(licl(), get_calculator("toy"), s, tmp_path)
    npz = traj_to_npz(
        Path(result.production_trajectory), tmp_path / "p.npz", s.time_step_fs, s.temperature_k
    )
    data = np.load(npz)
    vel, pos, lat = data["velocities"], data["positions"].astype(float), data["lattice"]
    assert vel.dtype == np.float32 and vel.shape == pos.shape
    frac = np.diff(pos @ np.linalg.inv(lat), axis=0)
    steps = (frac - np.round(frac)) @ lat  # unwrapped steps, Å
    central = (steps[1:] + steps[:-1]) / (2 * s.time_step_fs)  # Å/fs at frames 1..n-2
    scale = np.abs(vel[1:-1]).mean()
    assert np.abs(central - vel[1:-1]).mean() < 0.05 * scale
    plain = traj_to_npz(
        Path(result.production_trajectory), tmp_path / "q.npz", s.time_step_fs,
        s.temperature_k, velocities=False,
    )  # fmt: skip
    assert "velocities" not in np.load(plain)
