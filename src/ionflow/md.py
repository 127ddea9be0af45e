"""Restartable NVT molecular dynamics that streams frames to disk.

:func:`run_md` runs equilibration then production MD with any ASE calculator (CHGNet,
the toy Morse potential, ...). Unlike atomate2's ``ForceFieldMDMaker``, which keeps the
whole trajectory in memory and writes it at the end, it

* appends a frame to ``equilibration.traj`` / ``production.traj`` (ASE ``Trajectory``)
  every ``frame_interval_steps`` steps, so frames are on disk as they are produced;
* writes ``checkpoint.npz`` (positions, momenta, cell, step, thermostat state, random
  generator state, running sums, number of frames in each trajectory) atomically every
  ``checkpoint_interval_steps`` steps;
* on ``SIGTERM`` (what Slurm sends at the walltime and on ``scancel``, ``KillWait``
  seconds before ``SIGKILL``) finishes the step it is in, writes a checkpoint there and
  then dies of the signal as if it had no handler (the scheduler and the workflow manager
  see the same killed job), so a walltime kill loses no steps; when ``run_md`` runs
  outside the main thread (batched replicas) only the periodic checkpoints count;
* resumes from the checkpoint when called again on the same ``workdir`` (after
  ``kill -9``, a Slurm ``scancel`` or a walltime kill). Frames written after the
  checkpoint are dropped and regenerated, so the final trajectory has no gap and no
  duplicated frame. With Nosé-Hoover or Berendsen (deterministic) and with Langevin (its
  random generator state is checkpointed) a resumed run is identical, frame by frame, to
  an uninterrupted one;
* keeps nothing in memory that grows with the number of steps.

Files in ``workdir``
--------------------
``equilibration.traj``
    Steps ``0, f, 2f, ..., E`` (``E / f + 1`` frames; ``f`` = ``frame_interval_steps``,
    ``E`` = ``equilibration_steps``). Frame 0 is the initial structure with its
    Maxwell-Boltzmann velocities.
``production.traj``
    Steps ``E, E + f, ..., E + P`` (``P / f + 1`` frames). Production frame 0 is the last
    equilibration frame (the same state), so there is no gap between the two.
``checkpoint.npz``
    Restart state (see above).
``checkpoint.prev.npz``
    The previous checkpoint generation (a hard link to the file ``checkpoint.npz`` replaced).
    When ``checkpoint.npz`` cannot be read (corrupted, truncated, or counting more frames
    than the trajectories hold) the run resumes from this generation instead, moves the
    unreadable file aside as ``checkpoint.unreadable.npz`` and says so
    (``MDRunResult.recovery_note`` and a warning in the job's log). When neither generation
    is usable the run fails with :class:`UnusableCheckpointError`, naming the directory
    and what to do.
``md_state.json``
    Human-readable metadata and progress: ``frame_interval_fs``, ``temperature_k``,
    ``time_step_fs``, ``thermostat``, ``fixed_indices``, ``n_free_degrees_of_freedom``,
    frame counts, ``completed``. Use :func:`read_md_metadata`.

Each trajectory also carries the same metadata in its ASE ``description`` (written with
its first frame: ASE only stores a description in a trajectory's first item, so
``set_description`` has no effect when appending to a non-empty file). Frames carry
positions, momenta, cell, the user's ``FixAtoms`` constraint and the calculator results
(energy, forces, stress when computed).

Degrees of freedom and temperature
----------------------------------
ASE's ``Atoms.get_temperature()`` divides ``2 E_kin / k_B`` by
``get_number_of_degrees_of_freedom() = 3 N - sum(c.get_removed_dof())``: a ``FixAtoms``
constraint removes 3 per fixed atom, nothing removes the centre-of-mass (COM) motion. ASE's
``NoseHooverChainNVT`` ignores constraints altogether: it drives ``sum p^2/m`` towards
``3 N k_B T`` over *all* atoms, and with ``FixAtoms`` it even accumulates force impulses
in the internal momenta of the fixed atoms (only the copy stored on the ``Atoms`` is
zeroed), so a pinned run with it is far colder than asked for in its free atoms.

ionflow uses one definition everywhere: the temperature is ``2 E_kin / (n_dof k_B)``
over the **free** degrees of freedom,

* pinned run (``FixAtoms`` on some atoms): ``n_dof = 3 N_free``; the fixed atoms
  anchor the cell, so the COM is not conserved and no COM degree is removed;
* unpinned run: ``n_dof = 3 N - 3``; the COM momentum is set to zero at the start and
  kept there.

and every thermostat targets that temperature:

* ``"nose-hoover"``: ionflow's own velocity-Verlet + Nosé-Hoover-chain integrator
  (ASE's ``NoseHooverChainThermostat``, chain length 3, Suzuki-Yoshida order 4) whose
  first chain variable targets ``n_dof k_B T``; forces on fixed atoms are zeroed (they
  never move, their momenta stay exactly 0) and, for unpinned runs, the net force is
  removed so that the COM momentum stays zero. The calculator sees the atoms without
  constraints (pymatgen-based calculators such as CHGNet would otherwise convert them at
  every step);
* ``"langevin"``: ASE ``Langevin`` (``fixcm=False``, friction ``1 / thermostat_time_fs``):
  it thermalises each free degree of freedom independently; fixed atoms are held by the
  ``FixAtoms`` constraint and, for unpinned runs, the COM by an ``ase.constraints.FixCom``
  added to the working copy of the atoms (ASE's recommended replacement of
  ``fixcm=True``), which ASE's DOF count sees too;
* ``"berendsen"``: ASE ``NVTBerendsen`` (``fixcm=False``, ``taut = thermostat_time_fs``,
  ``FixAtoms`` / ``FixCom`` as for Langevin), which rescales using
  ``Atoms.get_temperature()`` and therefore the same ``n_dof``.

The initial momenta are Maxwell-Boltzmann at ``temperature_k`` from
``numpy.random.default_rng(seed)``, zero on fixed atoms, with the COM momentum removed
when nothing is fixed, then rescaled so that the free-DOF temperature equals
``temperature_k`` exactly. Frames written to disk carry only the user's constraints (the
internal ``FixCom`` is not written: it would shift every atom when a reader unwraps
positions with ``set_positions``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.constraints import FixAtoms, FixCom
from ase.io.trajectory import Trajectory
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ionflow.errors import UserInputError


class UnusableCheckpointError(UserInputError):
    """No checkpoint generation of an MD run directory can be resumed from."""


__all__ = [
    "CHECKPOINT_NAME",
    "EQUILIBRATION_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "PRODUCTION_NAME",
    "STATE_NAME",
    "MDRunResult",
    "MDSettings",
    "UnusableCheckpointError",
    "read_md_metadata",
    "run_md",
]

EQUILIBRATION_NAME = "equilibration.traj"
PRODUCTION_NAME = "production.traj"
CHECKPOINT_NAME = "checkpoint.npz"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.npz"
UNREADABLE_CHECKPOINT_NAME = "checkpoint.unreadable.npz"
STATE_NAME = "md_state.json"
_CHECKPOINT_FORMAT = 1
_NHC_CHAIN_LENGTH = 3


class MDSettings(BaseModel):
    """Settings of one NVT MD run (equilibration followed by production).

    Immutable (use ``settings.model_copy(update={...})`` for a variant); unknown keys are
    rejected. Step counts and the checkpoint interval must be multiples of
    ``frame_interval_steps``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature_k: float = Field(gt=0, description="Target temperature, K.")
    time_step_fs: float = Field(gt=0, description="Integration time step, fs.")
    equilibration_steps: int = Field(
        ge=0, description="Number of equilibration steps (a multiple of frame_interval_steps)."
    )
    production_steps: int = Field(
        gt=0, description="Number of production steps (a multiple of frame_interval_steps)."
    )
    frame_interval_steps: int = Field(
        default=10, gt=0, description="Save a frame every this many steps."
    )
    checkpoint_interval_steps: int = Field(
        default=100,
        gt=0,
        description="Write checkpoint.npz every this many steps (a multiple of "
        "frame_interval_steps).",
    )
    thermostat: Literal["nose-hoover", "langevin", "berendsen"] = Field(
        default="nose-hoover", description="Thermostat (NVT ensemble)."
    )
    thermostat_time_fs: float = Field(
        default=100.0,
        gt=0,
        description="Thermostat time constant, fs: Nosé-Hoover tdamp, Berendsen taut, "
        "inverse Langevin friction.",
    )
    seed: int = Field(
        default=0, ge=0, description="Seed of the initial velocities and of the Langevin noise."
    )

    @model_validator(mode="after")
    def _check_intervals(self) -> MDSettings:
        f = self.frame_interval_steps
        for name in ("equilibration_steps", "production_steps", "checkpoint_interval_steps"):
            value = getattr(self, name)
            if value % f:
                raise ValueError(f"{name}={value} must be a multiple of frame_interval_steps={f}")
        return self

    @property
    def frame_interval_fs(self) -> float:
        """Time between two saved frames, fs."""
        return self.time_step_fs * self.frame_interval_steps

    @property
    def total_steps(self) -> int:
        """Equilibration plus production steps."""
        return self.equilibration_steps + self.production_steps

    @property
    def n_equilibration_frames(self) -> int:
        """Frames in a complete ``equilibration.traj`` (both ends included)."""
        return self.equilibration_steps // self.frame_interval_steps + 1

    @property
    def n_production_frames(self) -> int:
        """Frames in a complete ``production.traj`` (both ends included)."""
        return self.production_steps // self.frame_interval_steps + 1


class MDRunResult(BaseModel):
    """What :func:`run_md` did and where the output is."""

    workdir: str = Field(description="Directory holding the trajectories and checkpoint.")
    production_trajectory: str = Field(description="Path of production.traj.")
    equilibration_trajectory: str = Field(description="Path of equilibration.traj.")
    n_production_frames: int = Field(description="Frames in production.traj.")
    n_equilibration_frames: int = Field(description="Frames in equilibration.traj.")
    steps_done: int = Field(description="MD steps completed in total (all calls).")
    resumed_from_step: int | None = Field(
        description="Step of the checkpoint this call resumed from; None for a fresh start."
    )
    frame_interval_fs: float = Field(description="Time between saved frames, fs.")
    temperature_k: float = Field(description="Target temperature, K.")
    mean_temperature_k: float = Field(
        description="Mean instantaneous free-DOF temperature over the production steps, K."
    )
    fixed_indices: list[int] = Field(description="Indices of atoms held by FixAtoms.")
    n_free_degrees_of_freedom: int = Field(
        description="Degrees of freedom the temperature is computed over (see module doc)."
    )
    wall_time_s: float = Field(description="Wall time of this call, s.")
    completed: bool = Field(description="True when all steps are done.")
    recovery_note: str | None = Field(
        default=None,
        description="Set when this call resumed from the previous checkpoint generation "
        "because the newest one was unreadable (what happened).",
    )


# ============================================================== public functions


def run_md(
    atoms: Atoms,
    calculator: Any,
    settings: MDSettings,
    workdir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    guard: Callable[[], None] | None = None,
    production_steps_total: int | None = None,
) -> MDRunResult:
    """Run (or resume) NVT equilibration + production MD, streaming frames to disk.

    Parameters
    ----------
    atoms
        Starting structure. It may carry ``FixAtoms`` constraints (pinned-anion control
        runs); other constraint types are rejected. Not modified; its momenta are ignored
        (fresh Maxwell-Boltzmann velocities are drawn).
    calculator
        ASE calculator, e.g. from :func:`ionflow.potentials.get_calculator`.
    settings
        Temperature, time step, step counts, intervals, thermostat and seed.
    workdir
        Output directory (created if needed). If it holds a checkpoint of the same run
        (same species, fixed atoms, settings and calculator type) the run resumes from
        it; a completed run returns at once. A checkpoint of a different run raises.
        Without a checkpoint, stale trajectories from an earlier attempt are replaced.
    progress
        Called as ``progress(steps_done, total_steps)`` each time a frame is saved.
    guard
        Called before every write to ``workdir`` (frames, checkpoints); it raises to stop
        the run without writing (the fencing of :mod:`ionflow.lease`).
    production_steps_total
        Extend the run (:mod:`ionflow.adaptive`): production steps to reach in total, more
        than ``settings.production_steps``. The run is still identified by ``settings``
        (its first chunk): a completed or interrupted run of the same settings in
        ``workdir`` continues from its checkpoint — ``production.traj`` grows, no frame is
        repeated or skipped — and a directory already at or past this length returns at
        once with what it holds.

    Returns
    -------
    MDRunResult

    Raises
    ------
    UserInputError
        Unsupported constraints, all atoms fixed, or a ``workdir`` holding a checkpoint
        of a different run.
    UnusableCheckpointError
        Neither checkpoint generation can be resumed from (unreadable, or trajectories
        shorter than it counts); the message names the directory and what to do.
    OSError
        A write failed (e.g. disk full); ``filename`` names the file.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fixed = _fixed_indices(atoms)
    n_atoms = len(atoms)
    if len(fixed) >= n_atoms:
        raise UserInputError("run_md: every atom is fixed; nothing can move")

    work = atoms.copy()
    work.calc = calculator
    user_constraints = list(work.constraints)
    n_dof = 3 * (n_atoms - len(fixed)) - (0 if fixed else 3)
    if settings.thermostat == "nose-hoover":
        md_constraints: list[Any] = []  # the integrator applies them itself
    else:
        md_constraints = list(user_constraints) if fixed else [FixCom()]
    work.set_constraint(md_constraints)
    if md_constraints and work.get_number_of_degrees_of_freedom() != n_dof:  # pragma: no cover
        raise RuntimeError("internal error: degrees-of-freedom count mismatch")

    fingerprint = _fingerprint(work, fixed, settings, calculator)
    if production_steps_total is not None and production_steps_total > settings.production_steps:
        settings = settings.model_copy(update={"production_steps": int(production_steps_total)})
        MDSettings.model_validate(settings.model_dump())  # the same rules for the new length
    paths = _Paths(workdir)
    meta = _metadata(settings, fixed, n_dof, calculator, n_atoms)

    ckpt, recovery_note = _usable_checkpoint(paths, fingerprint, guard)

    total = settings.total_steps
    if ckpt is not None and (bool(ckpt["completed"]) and int(ckpt["step"]) >= total):
        return _result(
            paths,
            settings,
            fixed,
            n_dof,
            ckpt,
            resumed_from=int(ckpt["step"]),
            wall_time_s=time.perf_counter() - t_start,
            recovery_note=recovery_note,
        )

    md_state = dict(meta)
    if guard is not None:
        guard()
    if ckpt is None:
        for path in (paths.equilibration, paths.production, paths.previous):
            path.unlink(missing_ok=True)
        _initialize_momenta(work, fixed, settings.temperature_k, n_dof, settings.seed)
        counters = _Counters(step=0, n_eq=0, n_prod=0, t_sum=0.0, t_count=0)
        resumed_from = None
    else:
        _truncate_trajectory(paths.equilibration, int(ckpt["n_equilibration_frames"]))
        _truncate_trajectory(paths.production, int(ckpt["n_production_frames"]))
        work.set_cell(ckpt["cell"], scale_atoms=False, apply_constraint=False)
        work.set_positions(ckpt["positions"], apply_constraint=False)
        work.set_momenta(ckpt["momenta"], apply_constraint=False)
        counters = _Counters(
            step=int(ckpt["step"]),
            n_eq=int(ckpt["n_equilibration_frames"]),
            n_prod=int(ckpt["n_production_frames"]),
            t_sum=float(ckpt["temperature_sum_k"]),
            t_count=int(ckpt["temperature_count"]),
        )
        resumed_from = counters.step

    integrator = _make_integrator(work, settings, fixed, n_dof)
    if ckpt is not None:
        integrator.set_state(ckpt)

    runner = _Runner(
        work=work,
        integrator=integrator,
        settings=settings,
        paths=paths,
        counters=counters,
        fingerprint=fingerprint,
        md_state=md_state,
        user_constraints=user_constraints,
        md_constraints=md_constraints,
        n_dof=n_dof,
        progress=progress,
        guard=guard,
    )
    with runner, warnings.catch_warnings():
        # CHGNet converts the atoms with pymatgen, which warns about FixCom at each step.
        warnings.filterwarnings("ignore", message="Only FixAtoms and FixCartesian")
        with _CheckpointOnTerm() as term:
            if ckpt is None:
                runner.on_step_done()  # frame 0 and the step-0 checkpoint
            while runner.counters.step < total:
                integrator.step()
                runner.counters.step += 1
                runner.on_step_done()
                if term.signum is not None:
                    if runner.counters.step < total:  # (the last step checkpointed itself)
                        runner.checkpoint(completed=False)
                    print(  # in the batch job's error file
                        f"ionflow MD: {signal.Signals(term.signum).name} at step "
                        f"{runner.counters.step} of {total}: checkpoint written in {workdir}; "
                        "stopping (a rerun resumes from here)",
                        file=sys.stderr,
                        flush=True,
                    )
                    term.die()

    final = _load_checkpoint(paths.checkpoint)
    return _result(
        paths,
        settings,
        fixed,
        n_dof,
        final,
        resumed_from=resumed_from,
        wall_time_s=time.perf_counter() - t_start,
        recovery_note=recovery_note,
    )


def read_md_metadata(path: str | Path) -> dict[str, Any]:
    """Return the metadata of an ionflow MD run.

    Parameters
    ----------
    path
        The run's ``workdir`` (reads ``md_state.json``) or one of its trajectories
        (reads ``md_state.json`` next to it if present, else the trajectory's ASE
        description).

    Returns
    -------
    dict
        At least ``frame_interval_fs``, ``temperature_k``, ``time_step_fs``,
        ``frame_interval_steps``, ``thermostat``, ``fixed_indices`` and
        ``n_free_degrees_of_freedom``.

    Raises
    ------
    UserInputError
        If no ionflow metadata is found.
    """
    path = Path(path)
    state_path = path / STATE_NAME if path.is_dir() else path.with_name(STATE_NAME)
    if state_path.is_file():
        with open(state_path) as fh:
            return json.load(fh)
    if path.is_file():
        with Trajectory(str(path)) as traj:
            description = traj.description if len(traj) else None
        if description and "frame_interval_fs" in description:
            return dict(description)
    raise UserInputError(f"{path}: no ionflow MD metadata ({STATE_NAME} or trajectory description)")


# ============================================================== internals


class _Paths:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.equilibration = workdir / EQUILIBRATION_NAME
        self.production = workdir / PRODUCTION_NAME
        self.checkpoint = workdir / CHECKPOINT_NAME
        self.previous = workdir / PREVIOUS_CHECKPOINT_NAME
        self.unreadable = workdir / UNREADABLE_CHECKPOINT_NAME
        self.state = workdir / STATE_NAME


class _Counters:
    def __init__(self, step: int, n_eq: int, n_prod: int, t_sum: float, t_count: int) -> None:
        self.step = step
        self.n_eq = n_eq
        self.n_prod = n_prod
        self.t_sum = t_sum
        self.t_count = t_count


def _fixed_indices(atoms: Atoms) -> list[int]:
    fixed: set[int] = set()
    for constraint in atoms.constraints:
        if not isinstance(constraint, FixAtoms):
            raise UserInputError(
                f"run_md supports only FixAtoms constraints, got {type(constraint).__name__}"
            )
        fixed.update(int(i) for i in constraint.get_indices())
    return sorted(fixed)


def _calculator_name(calculator: Any) -> str:
    # A stand-in that returns another calculator's results (ionflow.batched's replica
    # calculators) names that calculator, so a batched replica is the same run as a lone one.
    name = getattr(calculator, "ionflow_calculator_name", None)
    if isinstance(name, str):
        return name
    return f"{type(calculator).__module__}.{type(calculator).__qualname__}"


def _fingerprint(work: Atoms, fixed: list[int], settings: MDSettings, calculator: Any) -> str:
    payload = {
        "numbers": [int(z) for z in work.numbers],
        "fixed": fixed,
        "settings": settings.model_dump(mode="json"),
        "calculator": _calculator_name(calculator),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _metadata(
    settings: MDSettings, fixed: list[int], n_dof: int, calculator: Any, n_atoms: int
) -> dict[str, Any]:
    return {
        "ionflow_md": 1,
        "frame_interval_fs": settings.frame_interval_fs,
        "frame_interval_steps": settings.frame_interval_steps,
        "time_step_fs": settings.time_step_fs,
        "temperature_k": settings.temperature_k,
        "thermostat": settings.thermostat,
        "thermostat_time_fs": settings.thermostat_time_fs,
        "equilibration_steps": settings.equilibration_steps,
        "production_steps": settings.production_steps,
        "seed": settings.seed,
        "n_atoms": n_atoms,
        "fixed_indices": fixed,
        "n_free_degrees_of_freedom": n_dof,
        "calculator": _calculator_name(calculator),
    }


def _initialize_momenta(
    work: Atoms, fixed: list[int], temperature_k: float, n_dof: int, seed: int
) -> None:
    """Maxwell-Boltzmann momenta rescaled to exactly ``temperature_k`` over ``n_dof``."""
    rng = np.random.default_rng(seed)
    masses = work.get_masses()[:, None]
    kt = units.kB * temperature_k
    momenta = rng.standard_normal((len(work), 3)) * np.sqrt(masses * kt)
    momenta[fixed] = 0.0
    if not fixed:
        momenta -= masses * (momenta.sum(axis=0) / masses.sum())
    kinetic = 0.5 * float(np.sum(momenta**2 / masses))
    momenta *= np.sqrt(0.5 * n_dof * kt / kinetic)
    work.set_momenta(momenta, apply_constraint=False)


def _free_temperature_k(work: Atoms, n_dof: int) -> float:
    return 2.0 * work.get_kinetic_energy() / (n_dof * units.kB)


# ---------------------------------------------------------------- integrators


class _NoseHooverChain:
    """Velocity Verlet + Nosé-Hoover chain over the free degrees of freedom.

    Same splitting as ASE's ``NoseHooverChainNVT`` (thermostat half step, velocity
    Verlet, thermostat half step), but the chain's first variable targets
    ``n_dof k_B T`` instead of ``3 N k_B T``, forces on fixed atoms are zeroed and, when
    ``remove_net_force`` is set, the net force is removed (COM momentum conserved).
    Positions and momenta live on the ``Atoms`` object, so the whole state is
    ``(positions, momenta, eta, p_eta)``.
    """

    def __init__(
        self,
        atoms: Atoms,
        dt: float,
        temperature_k: float,
        tdamp: float,
        n_dof: int,
        fixed: list[int],
        remove_net_force: bool,
    ) -> None:
        from ase.md.nose_hoover_chain import NoseHooverChainThermostat

        self.atoms = atoms
        self.dt = dt
        self.masses = atoms.get_masses()[:, None]
        self.fixed = np.asarray(fixed, dtype=int)
        self.remove_net_force = remove_net_force
        # ASE's thermostat targets 3 * num_atoms_global * kT: pass n_dof / 3 "atoms".
        self.thermostat = NoseHooverChainThermostat(
            num_atoms_global=n_dof / 3.0,
            masses=self.masses,
            temperature_K=temperature_k,
            tdamp=tdamp,
            tchain=_NHC_CHAIN_LENGTH,
            tloop=1,
        )

    def _forces(self, positions: np.ndarray) -> np.ndarray:
        self.atoms.set_positions(positions, apply_constraint=False)
        forces = self.atoms.get_forces(md=True)
        if self.fixed.size:
            forces[self.fixed] = 0.0
        if self.remove_net_force:
            forces -= self.masses * (forces.sum(axis=0) / self.masses.sum())
        return forces

    def step(self) -> None:
        dt2 = 0.5 * self.dt
        q = self.atoms.get_positions()
        p = self.atoms.get_momenta()
        p = self.thermostat.integrate_nhc(p, dt2)
        p += dt2 * self._forces(q)
        q += self.dt * p / self.masses
        p += dt2 * self._forces(q)
        p = self.thermostat.integrate_nhc(p, dt2)
        self.atoms.set_momenta(p, apply_constraint=False)

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "nhc_eta": np.array(self.thermostat._eta, dtype=float),
            "nhc_p_eta": np.array(self.thermostat._p_eta, dtype=float),
        }

    def set_state(self, state: Any) -> None:
        self.thermostat._eta[:] = state["nhc_eta"]
        self.thermostat._p_eta[:] = state["nhc_p_eta"]


class _AseDynamics:
    """ASE ``Langevin`` / ``NVTBerendsen`` wrapper with get/set of the RNG state."""

    def __init__(self, dyn: Any, rng: np.random.Generator | None) -> None:
        self.dyn = dyn
        self.rng = rng

    def step(self) -> None:
        self.dyn.step()
        self.dyn.nsteps += 1

    def get_state(self) -> dict[str, np.ndarray]:
        if self.rng is None:
            return {}
        return {"rng_state": np.array(json.dumps(self.rng.bit_generator.state))}

    def set_state(self, state: Any) -> None:
        if self.rng is not None:
            self.rng.bit_generator.state = json.loads(str(state["rng_state"]))


def _make_integrator(
    work: Atoms, settings: MDSettings, fixed: list[int], n_dof: int
) -> _NoseHooverChain | _AseDynamics:
    dt = settings.time_step_fs * units.fs
    tau = settings.thermostat_time_fs * units.fs
    if settings.thermostat == "nose-hoover":
        return _NoseHooverChain(
            work, dt, settings.temperature_k, tau, n_dof, fixed, remove_net_force=not fixed
        )
    if settings.thermostat == "langevin":
        from ase.md.langevin import Langevin

        rng = np.random.default_rng([settings.seed, 1])
        dyn = Langevin(
            work,
            dt,
            temperature_K=settings.temperature_k,
            friction=1.0 / tau,
            fixcm=False,
            rng=rng,
        )
        return _AseDynamics(dyn, rng)
    from ase.md.nvtberendsen import NVTBerendsen

    dyn = NVTBerendsen(work, dt, temperature_K=settings.temperature_k, taut=tau, fixcm=False)
    return _AseDynamics(dyn, None)


# ---------------------------------------------------------------- the loop


class _Runner:
    """Frame writing, checkpointing and progress for one call of :func:`run_md`."""

    def __init__(
        self,
        *,
        work: Atoms,
        integrator: _NoseHooverChain | _AseDynamics,
        settings: MDSettings,
        paths: _Paths,
        counters: _Counters,
        fingerprint: str,
        md_state: dict[str, Any],
        user_constraints: list[Any],
        md_constraints: list[Any],
        n_dof: int,
        progress: Callable[[int, int], None] | None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.guard = guard
        self.work = work
        self.integrator = integrator
        self.settings = settings
        self.paths = paths
        self.counters = counters
        self.fingerprint = fingerprint
        self.md_state = md_state
        self.user_constraints = user_constraints
        self.md_constraints = md_constraints
        self.n_dof = n_dof
        self.progress = progress
        self._writers: dict[str, Any] = {}

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
        self._writers.clear()

    def _writer(self, stage: str) -> Any:
        writer = self._writers.get(stage)
        if writer is None:
            path = self.paths.equilibration if stage == "equilibration" else self.paths.production
            writer = Trajectory(str(path), mode="a")
            # Only stored when the file is new: ASE writes the description with frame 0.
            writer.set_description({**self.md_state, "stage": stage})
            self._writers[stage] = writer
        return writer

    def _close_writer(self, stage: str) -> None:
        writer = self._writers.pop(stage, None)
        if writer is not None:
            writer.close()

    def _write_frame(self, stage: str) -> None:
        # Make sure energy/forces are computed for this state (only the step-0 frame of a
        # fresh run is not already computed by the integrator; otherwise a cache hit).
        self.work.get_forces(md=True)
        if self.guard is not None:
            self.guard()
        path = self.paths.equilibration if stage == "equilibration" else self.paths.production
        with _naming(path):
            writer = self._writer(stage)
            # Write the user's constraints only (not the internal FixCom).
            self.work.constraints = self.user_constraints
            try:
                writer.write(self.work)
            finally:
                self.work.constraints = self.md_constraints

    def on_step_done(self) -> None:
        s = self.settings
        c = self.counters
        step = c.step
        eq_steps = s.equilibration_steps
        if step > eq_steps:
            c.t_sum += _free_temperature_k(self.work, self.n_dof)
            c.t_count += 1
        if step % s.frame_interval_steps == 0:
            if step <= eq_steps:
                self._write_frame("equilibration")
                c.n_eq += 1
                if step == eq_steps:
                    self._close_writer("equilibration")
            if step >= eq_steps:
                self._write_frame("production")
                c.n_prod += 1
            if self.progress is not None:
                self.progress(step, s.total_steps)
        if step % s.checkpoint_interval_steps == 0 or step == s.total_steps:
            self.checkpoint(completed=step == s.total_steps)

    def checkpoint(self, completed: bool) -> None:
        if self.guard is not None:
            self.guard()
        # Frames first (flushed and synced), then the checkpoint that counts them.
        for writer in self._writers.values():
            _fsync_trajectory(writer)
        if completed:
            self.__exit__()
        c = self.counters
        arrays: dict[str, Any] = {
            "format": np.array(_CHECKPOINT_FORMAT),
            "fingerprint": np.array(self.fingerprint),
            "step": np.array(c.step),
            "completed": np.array(completed),
            "positions": self.work.get_positions(),
            "momenta": self.work.get_momenta(),
            "cell": self.work.cell.array.copy(),
            "numbers": self.work.numbers.copy(),
            "n_equilibration_frames": np.array(c.n_eq),
            "n_production_frames": np.array(c.n_prod),
            "temperature_sum_k": np.array(c.t_sum),
            "temperature_count": np.array(c.t_count),
        }
        arrays.update(self.integrator.get_state())
        _atomic_savez(self.paths.checkpoint, arrays, previous=self.paths.previous)
        mean_t = c.t_sum / c.t_count if c.t_count else None
        self.md_state.update(
            step=c.step,
            total_steps=self.settings.total_steps,
            n_equilibration_frames=c.n_eq,
            n_production_frames=c.n_prod,
            mean_temperature_k=mean_t,
            completed=completed,
        )
        with _naming(self.paths.state):
            _atomic_write_text(self.paths.state, json.dumps(self.md_state, indent=1))


class _CheckpointOnTerm:
    """Within: ``SIGTERM`` only marks the request (``signum``); the MD loop then writes a
    checkpoint after the step it is in and calls :meth:`die`, which restores the previous
    handler and sends the signal again, so the process ends as it would have without this
    (killed by ``SIGTERM``: no result, rerun from the checkpoint). A no-op outside the main
    thread, where Python cannot install signal handlers."""

    SIGNALS = (signal.SIGTERM,)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> _CheckpointOnTerm:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def die(self) -> None:
        signum = int(self.signum or signal.SIGTERM)
        self.__exit__()
        os.kill(os.getpid(), signum)  # the previous handler (by default: termination)
        raise SystemExit(128 + signum)  # a previous Python handler that returned


# ---------------------------------------------------------------- files


@contextlib.contextmanager
def _naming(path: Path):
    """Re-raise an ``OSError`` without a file name (ENOSPC from ``write``) naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def _fsync_trajectory(writer: Any) -> None:
    """Make the frames written so far durable (ASE's ULM backend flushes on each frame)."""
    fd = getattr(getattr(writer, "backend", None), "fd", None)
    if fd is None:  # pragma: no cover - other ASE versions
        return
    with contextlib.suppress(OSError, ValueError):
        fd.flush()
        os.fsync(fd.fileno())


def _atomic_savez(path: Path, arrays: dict[str, Any], previous: Path | None = None) -> None:
    """Write ``path`` atomically; the file it replaces becomes ``previous`` (a hard link)."""
    tmp = path.with_name(path.name + ".tmp")
    with _naming(path):
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if previous is not None and path.exists():
            link = previous.with_name(previous.name + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # no hard links on this file system: copy
                import shutil

                shutil.copyfile(path, link)
            os.replace(link, previous)
        os.replace(tmp, path)


def _usable_checkpoint(
    paths: _Paths, fingerprint: str, guard: Callable[[], None] | None
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The newest checkpoint generation that can be resumed from, and a note if not the newest.

    ``(None, None)``: no checkpoint at all (a fresh start). A readable checkpoint of another
    run raises :class:`UserInputError`; when no generation is usable,
    :class:`UnusableCheckpointError` names the directory and what to do.
    """
    if not paths.checkpoint.exists() and not paths.previous.exists():
        return None, None
    problems: list[str] = []
    for path in (paths.checkpoint, paths.previous):
        if not path.exists():
            problems.append(f"{path.name}: missing")
            continue
        try:
            ckpt = _read_checkpoint(path)
        except ValueError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if str(ckpt["fingerprint"]) != fingerprint:
            raise UserInputError(
                f"{path} belongs to a different MD run (other structure, fixed "
                "atoms, settings or calculator); use a fresh workdir or delete that directory"
            )
        short = _short_trajectory(paths, ckpt)
        if short is not None:
            problems.append(f"{path.name}: {short}")
            continue
        if path == paths.checkpoint:
            return ckpt, None
        note = (
            f"{paths.checkpoint} was unusable ({problems[0].split(': ', 1)[-1]}); resumed from "
            f"the previous checkpoint generation (step {int(ckpt['step'])}); the unusable "
            f"file was kept as {paths.unreadable.name}"
        )
        if guard is not None:
            guard()
        if paths.checkpoint.exists():
            os.replace(paths.checkpoint, paths.unreadable)
        with _naming(paths.checkpoint):
            import shutil

            tmp = paths.checkpoint.with_name(paths.checkpoint.name + ".tmp")
            shutil.copyfile(paths.previous, tmp)
            os.replace(tmp, paths.checkpoint)
        warnings.warn(note, RuntimeWarning, stacklevel=3)
        import logging

        logging.getLogger("ionflow.md").warning(note)
        return ckpt, note
    raise UnusableCheckpointError(
        f"MD run directory {paths.workdir}: no usable checkpoint, the run cannot be resumed; "
        f"delete that directory to restart this MD from step 0 (rm -r '{paths.workdir}') and "
        f"run again ({'; '.join(problems)})"
    )


def _short_trajectory(paths: _Paths, ckpt: dict[str, np.ndarray]) -> str | None:
    """Why the trajectories on disk cannot back ``ckpt`` (fewer frames), or ``None``."""
    for path, key in (
        (paths.equilibration, "n_equilibration_frames"),
        (paths.production, "n_production_frames"),
    ):
        need = int(ckpt[key])
        if need == 0:
            continue
        count = _count_frames(path) if path.exists() else None
        if count is None or count < need:
            return f"{path.name} has {count or 0} readable frames but it counts {need}"
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_CHECKPOINT_KEYS = (
    "fingerprint",
    "step",
    "completed",
    "positions",
    "momenta",
    "cell",
    "n_equilibration_frames",
    "n_production_frames",
    "temperature_sum_k",
    "temperature_count",
)


def _read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint; ``ValueError`` saying why it cannot be used."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ValueError(f"unreadable ({exc.strerror})") from exc
    if magic != b"PK\x03\x04":
        raise ValueError("unreadable (not an .npz archive: corrupted or overwritten)")
    try:
        with np.load(path, allow_pickle=False) as data:
            ckpt = {key: data[key] for key in data.files}
    except Exception as exc:  # truncated, bad CRC, ...
        text = " ".join(str(exc).split())[:120]
        raise ValueError(f"unreadable ({type(exc).__name__}: {text})") from exc
    if int(ckpt.get("format", -1)) != _CHECKPOINT_FORMAT:
        raise ValueError("unknown checkpoint format")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"incomplete (no {', '.join(missing)})")
    return ckpt


def _load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    try:
        return _read_checkpoint(path)
    except ValueError as exc:  # a checkpoint is only ever replaced atomically
        raise UserInputError(f"{path}: checkpoint {exc}; use a fresh workdir") from exc


def _count_frames(path: Path) -> int | None:
    """Number of complete frames in ``path``; None if it cannot be read at all."""
    try:
        with Trajectory(str(path)) as traj:
            return len(traj)
    except Exception:
        return None


def _truncate_trajectory(path: Path, n_frames: int) -> None:
    """Keep the first ``n_frames`` frames of ``path`` (the ones the checkpoint counts).

    Frames appended after the checkpoint would be regenerated (duplicates otherwise).
    A frame cut short by a kill is not counted by ASE's ULM format (the frame count in
    the header is updated last) and is dropped here as well. Files with exactly
    ``n_frames`` frames are kept as they are (trailing bytes of an unfinished frame are
    harmless: new frames are indexed by absolute offsets); otherwise the first
    ``n_frames`` frames are copied, one at a time, to a new file that replaces the old
    one atomically.
    """
    if n_frames == 0:
        path.unlink(missing_ok=True)
        return
    count = _count_frames(path) if path.exists() else None
    if count is None or count < n_frames:
        raise UserInputError(
            f"{path} has {count or 0} readable frames but the checkpoint counts "
            f"{n_frames}; the run cannot be resumed: use a fresh workdir"
        )
    if count == n_frames:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with Trajectory(str(path)) as reader:
        description = reader.description
        writer = Trajectory(str(tmp), mode="w")
        try:
            if description:
                writer.set_description(description)
            for i in range(n_frames):
                writer.write(reader[i])
            _fsync_trajectory(writer)
        finally:
            writer.close()
    os.replace(tmp, path)


def _result(
    paths: _Paths,
    settings: MDSettings,
    fixed: list[int],
    n_dof: int,
    ckpt: dict[str, np.ndarray],
    *,
    resumed_from: int | None,
    wall_time_s: float,
    recovery_note: str | None = None,
) -> MDRunResult:
    t_count = int(ckpt["temperature_count"])
    mean_t = float(ckpt["temperature_sum_k"]) / t_count if t_count else float("nan")
    return MDRunResult(
        workdir=str(paths.workdir),
        production_trajectory=str(paths.production),
        equilibration_trajectory=str(paths.equilibration),
        n_production_frames=int(ckpt["n_production_frames"]),
        n_equilibration_frames=int(ckpt["n_equilibration_frames"]),
        steps_done=int(ckpt["step"]),
        resumed_from_step=resumed_from,
        frame_interval_fs=settings.frame_interval_fs,
        temperature_k=settings.temperature_k,
        mean_temperature_k=mean_t,
        fixed_indices=fixed,
        n_free_degrees_of_freedom=n_dof,
        wall_time_s=wall_time_s,
        completed=bool(ckpt["completed"]),
        recovery_note=recovery_note,
    )
