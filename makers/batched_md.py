"""The MD runs of one material advanced together (``md: {batch: auto}``).

With batching, the flow keeps one MD job per run (variant × temperature: same names, reuse
keys, outputs, trajectories in GridFS and analysis jobs as without it). The first MD job of
the material is a :class:`BatchedMDLeaderMaker`: it runs *every* run of the material as
replicas of one :func:`ionflow.batched.run_batched_md` (one batched potential call per MD
step), each in the run directory its own job uses, under that directory's lock, then
returns its own run's output. The other MD jobs are :class:`BatchedMDFollowerMaker`: they
wait for the leader (its output is an input they ignore) and are then ordinary
:class:`~ionflow.makers.md.MLMDMaker` jobs whose run directory holds a completed run, so
they only convert and store the trajectory. A batch is an execution detail, not a new kind
of result.

Killed mid-run, the leader's rerun resumes every replica from its own checkpoint. Should a
follower run before its replica completed (a leader that failed and was forced through),
it simply continues the run alone from the replica's checkpoint.

The compute record of each run directory (``compute.json``) gets the batch's wall time
divided by the number of replicas, so that core-hours add up to what the job used; its entry
also says ``batched_replicas`` and the step the replica resumed from (``resumed_from_step``,
null for a fresh start).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from jobflow import job
from jobflow.core.job import JobConfig

from ionflow.makers.md import MLMDMaker


@dataclass
class BatchedMDLeaderMaker(MLMDMaker):
    """First MD job of a material with batching: runs all of the material's runs at once.

    Parameters
    ----------
    runs
        ``(variant, temperature_k)`` of every run of the material (this job's included).
    device
        ``auto``, ``cpu`` or ``cuda`` for the batched potential (``calculator_kwargs``'
        own device setting wins when given).

    The other parameters are those of :class:`~ionflow.makers.md.MLMDMaker` (this job's
    own run is ``variant`` at ``temperature_k``).
    """

    runs: tuple[tuple[str, float], ...] = ()
    device: str = "auto"

    @job(config=JobConfig(expose_store=True))
    def make(self, structure, fixed_indices=None, pinned_indices=None):
        """Advance every run of the material together, then output this job's own run.

        ``pinned_indices`` are the atoms the pinned runs fix (``fixed_indices`` those of
        this job's own run, as for :class:`~ionflow.makers.md.MLMDMaker`).
        """
        self.run_batch(structure, pinned_indices)
        return MLMDMaker.make.original(self, structure, fixed_indices)

    def run_batch(self, structure, pinned_indices) -> None:
        """All the runs as replicas of one batched MD, each under its directory's lock."""
        from ionflow.backends.lease import RunDirLock, current_lease
        from ionflow.batched import Replica, run_batched_md
        from ionflow.batched_potentials import get_batched_potential

        runs = list(self.runs) or [(self.variant, self.temperature_k)]
        lease = current_lease()
        with contextlib.ExitStack() as stack:
            replicas = []
            logs = []
            for variant, temperature_k in runs:
                maker = replace(self, variant=variant, temperature_k=float(temperature_k))
                fixed = pinned_indices if variant == "pinned" else None
                atoms, settings, fixed, workdir = MLMDMaker.prepare(maker, structure, fixed)
                workdir.mkdir(parents=True, exist_ok=True)
                dirlock = stack.enter_context(RunDirLock(workdir, lease=lease))
                log = _SharedComputeLog(workdir, share=len(runs))
                logs.append(log)
                replicas.append(
                    Replica(
                        atoms,
                        settings,
                        workdir,
                        guard=_guard(lease, dirlock),
                        progress=_progress_writer(maker, workdir, log),
                    )
                )
            kwargs = dict(self.calculator_kwargs)
            own = [kwargs.pop(k, None) for k in ("device", "use_device")]
            device = next((d for d in own if d), None) or self.device
            potential = get_batched_potential(self.engine, device, **kwargs)
            results = run_batched_md(replicas, potential)
            for log, result in zip(logs, results, strict=True):
                log.log.entry["resumed_from_step"] = result.resumed_from_step
                log.tick()


@dataclass
class BatchedMDFollowerMaker(MLMDMaker):
    """An MD job of a batched material other than the leader: waits for the leader."""

    @job(config=JobConfig(expose_store=True))
    def make(self, structure, fixed_indices=None, batch=None):
        """As :meth:`MLMDMaker.make`; ``batch`` (the leader's output) only orders the jobs."""
        return MLMDMaker.make.original(self, structure, fixed_indices)


class _SharedComputeLog:
    """A :class:`ionflow.adaptive.ComputeLog` entry worth ``1 / share`` of the wall time."""

    def __init__(self, workdir: Path, share: int) -> None:
        from ionflow.adaptive import ComputeLog

        self.log = ComputeLog(workdir)
        self.log.entry["batched_replicas"] = share
        self.share = share

    def tick(self) -> None:
        log = self.log
        elapsed = time.monotonic() - log.start
        log.tick()  # sets wall_s to the elapsed time and writes; rewrite with the share
        log.entry["wall_s"] = elapsed / self.share
        tmp = log.path.with_name(log.path.name + ".tmp")
        tmp.write_text(json.dumps({"calls": log.entries}))
        tmp.replace(log.path)


def _guard(lease, dirlock):
    def guard() -> None:
        if lease is not None:
            lease.check()
        dirlock.check()

    return guard


def _progress_writer(maker: MLMDMaker, workdir: Path, log: _SharedComputeLog):
    """``progress.json`` of one replica, as :class:`MLMDMaker` writes it (about 1/s)."""
    progress_file = workdir / "progress.json"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or done == total:
            last[0] = now
            log.tick()
            tmp = progress_file.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "tag": maker.tag,
                        "material": maker.material,
                        "step": done,
                        "total": total,
                        "time": time.time(),
                        "batched": True,
                    }
                )
            )
            tmp.replace(progress_file)

    return progress


def batched_md_job(maker: MLMDMaker, runs, supercell, fixed_indices, leader=None, device="auto"):
    """The MD job of one run of a batched material (see the module doc).

    Parameters
    ----------
    maker
        The run's :class:`~ionflow.makers.md.MLMDMaker` (name, temperature, variant set).
    runs
        Every run of the material (:class:`ionflow.plan.Run`), in flow order.
    supercell
        The supercell job's output (``structure``, ``pinned_indices``).
    fixed_indices
        This run's fixed atoms (the pinned indices for a pinned run, else None).
    leader
        The material's leader job, or None to make this run's job the leader.
    device
        Device of the batched potential (``auto``, ``cpu``, ``cuda``).
    """
    from dataclasses import fields

    base = {f.name: getattr(maker, f.name) for f in fields(MLMDMaker)}
    if leader is None:
        return BatchedMDLeaderMaker(
            **base,
            runs=tuple((r.variant, float(r.temperature_k)) for r in runs),
            device=device,
        ).make(supercell.structure, fixed_indices, supercell.pinned_indices)
    return BatchedMDFollowerMaker(**base).make(supercell.structure, fixed_indices, leader.output)
