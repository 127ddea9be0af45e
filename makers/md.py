"""MD at one temperature with an ML potential (free or pinned), restartable.

The MD itself is :func:`ionflow.md.run_md` (frames streamed to disk, checkpoints of
positions, momenta and thermostat state). This job gives it a *stable* working directory —
``<run_root>/<campaign>/<material>/<variant>_<T>K_<settings hash>`` — so that a job that
dies (walltime, node failure, Ctrl-C) and is rerun by FireWorks resumes from its last
checkpoint instead of from zero. At the end the production frames go to GridFS as a float32
``.npz`` (:mod:`ionflow.trajectories`); the job output holds only a reference.

One writer at a time (:mod:`ionflow.backends.lease`): the job holds the run directory's lock
(:class:`~ionflow.backends.lease.RunDirLock`) while it runs, and every write — frames, checkpoints,
the stored trajectory — first checks that lock and the worker's lease on the firework, so a
worker whose job was taken over stops writing. The stored trajectory replaces earlier files
of the same job (never an orphan in GridFS).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobflow import Maker, job
from jobflow.core.job import JobConfig

from ionflow.names import DEFAULT_DATA_DIR

#: environment variable that overrides where MD working directories live
RUN_ROOT_ENV = "IONFLOW_RUN_ROOT"


def run_directory(run_root: str | None, campaign: str, material: str, tag: str, key: dict) -> Path:
    """Stable MD working directory for (campaign, material, run tag, settings)."""
    default = Path(DEFAULT_DATA_DIR) / "runs"
    root = Path(os.environ.get(RUN_ROOT_ENV) or run_root or default).expanduser()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return (root / campaign / material / f"{tag}_{digest}").resolve()


def _model_key(engine: str, calculator_kwargs: dict) -> dict:
    """The run directory's record of ``engine.model``: nothing when not given (directories
    as before the key existed), else ``{"model": variant or sha256:<hex> of the file}``."""
    model = calculator_kwargs.get("model")
    if model is None:
        return {}
    from ionflow.potentials import model_identity

    return {"model": model_identity(engine, model)}


def _provenance(engine: str, calculator_kwargs: dict) -> dict:
    """:func:`ionflow.potentials.potential_provenance` of the run's potential."""
    from ionflow.potentials import potential_provenance

    return potential_provenance(engine, **calculator_kwargs)


@dataclass
class MLMDMaker(Maker):
    """NVT MD at one temperature with an ML potential; pinned when ``fixed_indices`` given.

    Parameters
    ----------
    name
        Job name.
    engine
        Potential (chgnet, mace, m3gnet, sevennet, toy).
    temperature_k
        Target temperature, K (counted over free degrees of freedom).
    time_step_fs
        Integration step, fs.
    equilibration_ps, production_ps
        Lengths, ps; equilibration frames are stored apart and never analysed.
    frame_interval_steps
        Steps between saved frames.
    checkpoint_interval_steps
        Steps between checkpoints (a multiple of ``frame_interval_steps``).
    thermostat
        nose-hoover | langevin | berendsen.
    seed
        Seed of the Maxwell–Boltzmann start.
    variant
        "free" or "pinned" (labels only; pinning comes from ``fixed_indices``).
    campaign, material
        Labels for the working directory and the stored trajectory.
    run_root
        Root of the MD working directories (``IONFLOW_RUN_ROOT`` overrides).
    calculator_kwargs
        Options of :func:`ionflow.potentials.get_calculator` (``model``, ``device``); the
        output's ``potential`` records which potential, package version and model file
        (SHA-256) ran (:func:`ionflow.potentials.potential_provenance`).
    store_velocities
        Keep the frames' velocities (float32, Å/fs) in the stored trajectory (for the
        vibrational density of states); roughly doubles its size.
    extend_to_ps
        An extension (:mod:`ionflow.adaptive`): run the production to this total length,
        continuing the run of ``production_ps`` in its own run directory from its
        checkpoint (None: the first chunk).

    The output records the compute of the run directory over every call of its job
    (``compute``: wall time, core-hours from the Slurm allocation or the CPU affinity,
    GPU-hours, atom-steps; :class:`ionflow.adaptive.ComputeLog`) and ``production_ps``,
    the production actually run.
    """

    name: str = "md"
    engine: str = "chgnet"
    temperature_k: float = 600.0
    time_step_fs: float = 2.0
    equilibration_ps: float = 1.0
    production_ps: float = 5.0
    frame_interval_steps: int = 10
    checkpoint_interval_steps: int = 100
    thermostat: str = "nose-hoover"
    seed: int = 0
    variant: str = "free"
    campaign: str = "campaign"
    material: str = "material"
    run_root: str | None = None
    calculator_kwargs: dict = field(default_factory=dict)
    store_velocities: bool = True
    extend_to_ps: float | None = None

    @property
    def tag(self) -> str:
        """Stable run label, e.g. ``pinned_800K``."""
        return f"{self.variant}_{self.temperature_k:g}K"

    @job(config=JobConfig(expose_store=True))
    def make(self, structure, fixed_indices: list[int] | None = None):
        """Run (or resume) the MD; output: trajectory reference and run statistics."""
        from ionflow.backends.lease import RunDirLock, current_lease

        atoms, settings, fixed, workdir = self.prepare(structure, fixed_indices)
        workdir.mkdir(parents=True, exist_ok=True)
        steps = lambda ps: int(round(ps * 1000.0 / self.time_step_fs))  # noqa: E731
        lease = current_lease()
        try:
            with RunDirLock(workdir, lease=lease) as dirlock:

                def guard() -> None:
                    if lease is not None:
                        lease.check()
                    dirlock.check()

                total = steps(self.extend_to_ps) if self.extend_to_ps else None
                return self._run_locked(workdir, atoms, settings, fixed, guard, total)
        except OSError as exc:  # name the directory when the OS did not (disk full)
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, exc.strerror, str(workdir)) from exc
            raise

    def prepare(self, structure, fixed_indices: list[int] | None = None):
        """The run's ASE atoms (pinned atoms fixed), MD settings, fixed indices and stable
        working directory (also used by :mod:`ionflow.makers.batched_md`)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        from ionflow.md import MDSettings
        from ionflow.structure import with_selective_dynamics

        fixed = sorted(int(i) for i in (fixed_indices or []))
        if self.variant == "pinned" and not fixed:
            raise ValueError(
                f"{self.material}: pinned MD at {self.temperature_k:g} K has no atoms to pin"
            )
        if fixed:
            structure = with_selective_dynamics(structure, fixed)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        steps = lambda ps: int(round(ps * 1000.0 / self.time_step_fs))  # noqa: E731
        ckpt = max(self.frame_interval_steps, self.checkpoint_interval_steps)
        ckpt -= ckpt % self.frame_interval_steps
        settings = MDSettings(
            temperature_k=self.temperature_k,
            time_step_fs=self.time_step_fs,
            equilibration_steps=steps(self.equilibration_ps),
            production_steps=steps(self.production_ps),
            frame_interval_steps=self.frame_interval_steps,
            checkpoint_interval_steps=ckpt,
            thermostat=self.thermostat,
            seed=self.seed,
        )
        key = {
            "settings": settings.model_dump(mode="json"),
            "engine": self.engine,
            **_model_key(self.engine, self.calculator_kwargs),
            "fixed": fixed,
            "structure": [
                [s.species_string, *map(lambda x: round(x, 4), s.frac_coords)] for s in structure
            ],
        }
        workdir = run_directory(self.run_root, self.campaign, self.material, self.tag, key)
        return atoms, settings, fixed, workdir

    def _run_locked(
        self, workdir: Path, atoms, settings, fixed: list[int], guard, total: int | None = None
    ):
        """The MD, the trajectory file and its upload, holding the run directory's lock."""
        from jobflow import CURRENT_JOB

        from ionflow.adaptive import ComputeLog
        from ionflow.md import run_md
        from ionflow.outputs import MDOutput
        from ionflow.potentials import get_calculator, numerical_environment
        from ionflow.trajectories import put_npz, traj_to_npz

        progress_file = workdir / "progress.json"
        last = [0.0]
        compute = ComputeLog(workdir)

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 1.0 or done == total:
                last[0] = now
                compute.tick()
                tmp = progress_file.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "tag": self.tag,
                            "material": self.material,
                            "step": done,
                            "total": total,
                            "time": time.time(),
                        }
                    )
                )
                tmp.replace(progress_file)

        calc = get_calculator(self.engine, **self.calculator_kwargs)
        result = run_md(
            atoms,
            calc,
            settings,
            workdir,
            progress=progress,
            guard=guard,
            production_steps_total=total,
        )
        compute.tick()
        frame_fs = self.time_step_fs * self.frame_interval_steps
        guard()
        npz = traj_to_npz(
            Path(result.production_trajectory),
            workdir / "production.npz",
            frame_fs,
            self.temperature_k,
            velocities=self.store_velocities,
        )
        store = getattr(CURRENT_JOB, "store", None)
        ref = put_npz(
            store,
            npz,
            {
                "campaign": self.campaign,
                "material": self.material,
                "variant": self.variant,
                "temperature_k": self.temperature_k,
                "job_uuid": CURRENT_JOB.job.uuid if CURRENT_JOB.job else None,
                "workdir": str(workdir),
            },
            guard=guard,
        )
        return MDOutput(
            campaign=self.campaign,
            material=self.material,
            variant=self.variant,
            temperature_k=self.temperature_k,
            engine=self.engine,
            potential=_provenance(self.engine, self.calculator_kwargs),
            workdir=str(workdir),
            trajectory=ref,
            fixed_indices=fixed,
            md=result.model_dump(mode="json"),
            production_ps=(result.n_production_frames - 1) * frame_fs / 1000.0,
            compute={**compute.totals(), "atom_steps": len(atoms) * result.steps_done},
            numerics=numerical_environment(),  # CPU, BLAS kernel/threads: what sets last bits
        ).to_output()
