"""Several MD replicas advanced together, one batched model evaluation per step.

:func:`run_batched_md` runs N NVT MD replicas (different temperatures, free or pinned,
different seeds; the same or different structures) with **one** call of the potential per
MD step for all of them (:mod:`ionflow.batched_potentials`: CHGNet's batched
``predict_graph``, a SevenNet ``torch_geometric`` batch).

Design
------
Each replica *is* a :func:`ionflow.md.run_md` run: its own thermostat state, temperature,
fixed atoms, Maxwell-Boltzmann start and random stream (seed), streamed
``equilibration.traj`` / ``production.traj``, ``checkpoint.npz`` generations and
``md_state.json`` in its own working directory. Each runs in a thread of this process with
a stand-in ASE calculator; when the integrator asks that calculator for forces, the replica
waits until every unfinished replica has asked too; then the calling thread (the only one
that ever runs the model, so torch's thread settings apply and one intra-op pool does the
work) evaluates all the structures in one batched call and hands each its results. So

* the physics of a replica is exactly that of a lone run (same integrator code, same
  thermostat, same degrees-of-freedom rule); only the numbers coming out of the model can
  differ, by the model's floating-point reduction order in a batch;
* a replica's directory is indistinguishable from a lone run's: the stand-in calculator
  records the lone calculator's name (``ionflow_calculator_name``), so a later
  :func:`~ionflow.md.run_md` with the ordinary calculator on that directory recognises the
  run (resumes it, or returns at once when it is complete), and vice versa;
* after ``kill -9`` calling :func:`run_batched_md` again resumes every replica from its
  own checkpoint, with no gap and no duplicated frame (:mod:`ionflow.md` guarantees that
  per directory); replicas that had completed return at once;
* replicas with different step counts simply leave the batch when they finish; the batch
  is always "one structure from every replica still running", in replica order, so a run
  is deterministic given the seeds.

The integrator's Python work (a few NumPy operations on N x 3 arrays) is serialised by the
GIL between the threads; it costs well under a millisecond per replica and step, against
tens of milliseconds for a CHGNet evaluation of a 50-atom cell on a CPU.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms

from ionflow.batched_potentials import BatchedPotential, get_batched_potential
from ionflow.errors import UserInputError
from ionflow.md import MDRunResult, MDSettings, run_md

__all__ = ["BatchStats", "Replica", "run_batched_md"]


@dataclass
class Replica:
    """One MD run of a batch.

    Parameters
    ----------
    atoms
        Starting structure (not modified). ``FixAtoms`` constraints on it are kept.
    settings
        Its MD settings (temperature, seed, thermostat, step counts, ...).
    workdir
        Its own working directory (frames, checkpoints, ``md_state.json``).
    fixed_indices
        Atoms held fixed (the pinned control), added to any ``FixAtoms`` on ``atoms``.
    guard
        Called before every write to ``workdir`` (see :func:`ionflow.md.run_md`).
    progress
        Called as ``progress(steps_done, total_steps)`` for this replica.
    """

    atoms: Atoms
    settings: MDSettings
    workdir: Path | str
    fixed_indices: Sequence[int] | None = None
    guard: Callable[[], None] | None = None
    progress: Callable[[int, int], None] | None = None

    def prepared_atoms(self) -> Atoms:
        """``atoms`` with ``fixed_indices`` added as a ``FixAtoms`` constraint."""
        atoms = self.atoms.copy()
        if self.fixed_indices is not None and len(self.fixed_indices):
            fixed = {int(i) for i in self.fixed_indices}
            for c in atoms.constraints:
                if isinstance(c, FixAtoms):
                    fixed.update(int(i) for i in c.get_indices())
            others = [c for c in atoms.constraints if not isinstance(c, FixAtoms)]
            atoms.set_constraint([*others, FixAtoms(indices=sorted(fixed))])
        return atoms


@dataclass
class BatchStats:
    """How the batched evaluations went (for benchmarks and logs)."""

    evaluations: int = 0  #: batched model calls
    structures: int = 0  #: structures evaluated in total
    model_time_s: float = 0.0  #: wall time inside the potential's compute()

    @property
    def mean_batch_size(self) -> float:
        """Structures per model call."""
        return self.structures / self.evaluations if self.evaluations else 0.0


class _Cancelled(RuntimeError):
    """The batch was cancelled (another thread was interrupted)."""


class _Coordinator:
    """Collects one structure from every running replica; the serving thread evaluates them.

    The model is always called from the thread that runs :meth:`serve` (the caller of
    :func:`run_batched_md`): torch's intra-op thread settings (``torch.set_num_threads``,
    OpenMP) are per calling thread, and one pool, not one per replica thread, must run it.
    """

    def __init__(self, potential: BatchedPotential, n: int) -> None:
        self.potential = potential
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._active = set(range(n))
        self._pending: dict[int, Atoms] = {}
        self._results: dict[int, Any] = {}
        self._cancelled = False

    def request(self, index: int, atoms: Atoms) -> dict[str, Any]:
        with self._cond:
            if self._cancelled:
                raise _Cancelled("batched MD cancelled")
            self._pending[index] = atoms
            self._cond.notify_all()
            while index not in self._results:
                if self._cancelled:
                    self._pending.pop(index, None)
                    raise _Cancelled("batched MD cancelled")
                self._cond.wait()
            result = self._results.pop(index)
        if isinstance(result, BaseException):
            raise result
        return result

    def leave(self, index: int) -> None:
        with self._cond:
            self._active.discard(index)
            self._pending.pop(index, None)
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def serve(self) -> None:
        """Evaluate batches until every replica has left (run in the calling thread)."""
        while True:
            with self._cond:
                while self._active and not (self._pending and self._active.issubset(self._pending)):
                    self._cond.wait(0.5)
                if not self._active:
                    return
                order = sorted(self._pending)
                structures = [self._pending[i] for i in order]
                self._pending.clear()
            # every running replica waits for its result: evaluate without the lock
            t0 = time.perf_counter()
            try:
                results: list[Any] = self.potential.compute(structures)
                if len(results) != len(order):  # pragma: no cover - adapter bug
                    raise RuntimeError("batched potential returned the wrong number of results")
            except Exception as exc:  # every waiting replica gets the error
                results = [exc] * len(order)
            with self._cond:
                self.stats.model_time_s += time.perf_counter() - t0
                self.stats.evaluations += 1
                self.stats.structures += len(order)
                for i, res in zip(order, results, strict=True):
                    self._results[i] = res
                self._cond.notify_all()


class _ReplicaCalculator(Calculator):
    """ASE calculator of one replica: its results come from the batched evaluation."""

    def __init__(self, coordinator: _Coordinator, index: int) -> None:
        ref = coordinator.potential.reference
        super().__init__()
        self.implemented_properties = list(ref.implemented_properties)
        self._name = ref.name
        self.parameters = dict(ref.todict()) if hasattr(ref, "todict") else {}
        self.ionflow_calculator_name = coordinator.potential.calculator_name
        self._coordinator = coordinator
        self._index = index

    @property
    def name(self) -> str:  # what a trajectory frame records, as the lone calculator
        return self._name

    def todict(self) -> dict[str, Any]:  # what a trajectory frame records
        return dict(self.parameters)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        self.results = dict(self._coordinator.request(self._index, self.atoms))


def run_batched_md(
    replicas: Sequence[Replica],
    potential: BatchedPotential | str,
    *,
    device: str = "auto",
    potential_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats: BatchStats | None = None,
) -> list[MDRunResult]:
    """Run (or resume) several MD replicas with one batched potential call per step.

    Parameters
    ----------
    replicas
        The runs; each has its own structure, settings (temperature, seed, thermostat,
        step counts), working directory and fixed atoms. Working directories must differ.
    potential
        A :class:`~ionflow.batched_potentials.BatchedPotential`, or an engine name
        (``"chgnet"``, ``"sevennet"``, ``"toy"``, ...) to build one.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` when ``potential`` is a name.
    potential_kwargs
        Engine options when ``potential`` is a name.
    progress
        Called as ``progress(steps_done, total_steps)`` summed over all replicas, at most
        about once a second and at the end.
    stats
        Filled in with the number of batched calls and the time spent in the model.

    Returns
    -------
    list of MDRunResult
        One per replica, in the order given (as :func:`ionflow.md.run_md` returns).

    Raises
    ------
    UserInputError
        No replicas, two replicas sharing a working directory, or what
        :func:`ionflow.md.run_md` raises for a replica.
    Exception
        The first replica's failure, once every other replica has stopped (replicas that
        did not fail run to their end and are complete on disk).
    """
    replicas = list(replicas)
    if not replicas:
        raise UserInputError("run_batched_md: no replicas")
    dirs = [Path(r.workdir).resolve() for r in replicas]
    if len(set(dirs)) != len(dirs):
        raise UserInputError("run_batched_md: two replicas share a working directory")
    if isinstance(potential, str):
        potential = get_batched_potential(potential, device, **(potential_kwargs or {}))
    coordinator = _Coordinator(potential, len(replicas))

    totals = [r.settings.total_steps for r in replicas]
    done = [0] * len(replicas)
    progress_lock = threading.Lock()
    last_report = [0.0]

    def replica_progress(index: int) -> Callable[[int, int], None]:
        def report(steps: int, total: int) -> None:
            own = replicas[index].progress
            if own is not None:
                own(steps, total)
            if progress is None:
                return
            with progress_lock:
                done[index] = steps
                now = time.monotonic()
                finished = sum(done) == sum(totals)
                if finished or now - last_report[0] >= 1.0:
                    last_report[0] = now
                    progress(sum(done), sum(totals))

        return report

    results: list[MDRunResult | None] = [None] * len(replicas)
    errors: list[BaseException | None] = [None] * len(replicas)

    def work(index: int) -> None:
        replica = replicas[index]
        try:
            results[index] = run_md(
                replica.prepared_atoms(),
                _ReplicaCalculator(coordinator, index),
                replica.settings,
                Path(replica.workdir),
                progress=replica_progress(index),
                guard=replica.guard,
            )
        except BaseException as exc:  # reported after every replica has stopped
            errors[index] = exc
        finally:
            coordinator.leave(index)

    threads = [
        threading.Thread(target=work, args=(i,), name=f"ionflow-replica-{i}", daemon=True)
        for i in range(len(replicas))
    ]
    # run_md's own warnings filter is not thread-safe: restore the global state here
    with warnings.catch_warnings():
        try:
            for t in threads:
                t.start()
            coordinator.serve()  # the model runs in this thread
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C / SystemExit in the main thread: stop every replica
            coordinator.cancel()
            for t in threads:
                t.join()
            raise
    if stats is not None:
        stats.evaluations = coordinator.stats.evaluations
        stats.structures = coordinator.stats.structures
        stats.model_time_s = coordinator.stats.model_time_s
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    if failed:
        index, first = failed[0]
        first.add_note(
            f"batched MD: replica {index} ({replicas[index].workdir}) failed"
            + (f"; {len(failed) - 1} other replica(s) failed too" if len(failed) > 1 else "")
        )
        raise first
    return [r for r in results if r is not None]
