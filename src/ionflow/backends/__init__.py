"""Dispatch: how a campaign's planned jobs get run — one package, one small protocol.

Layout
------
``base``
    The protocol (:class:`~ionflow.backends.base.Backend`: ``submit``, ``run``, ``status``,
    ``recover``, ``close``), its reports (:class:`~ionflow.backends.base.RunReport`,
    :class:`~ionflow.backends.base.CampaignStatus`,
    :class:`~ionflow.backends.base.RecoveryReport`) and ``ionflow run`` on top of it
    (:func:`~ionflow.backends.base.run_campaign`). Backend-neutral: no FireWorks, no jobflow.
``fireworks_local``
    :class:`FireWorksLocal` (``"fireworks-local"``): a FireWorks LaunchPad; a worker in this
    process runs the campaign to completion.
``fireworks_slurm``
    :class:`FireWorksSlurm` (``"fireworks-slurm"``): the same LaunchPad; Slurm jobs of
    ``rlaunch`` workers run it (profiles, queue launches, lost runs from Slurm's view).
``fw_tasks``, ``fw_submit``
    What both FireWorks backends share: the firetask (its stored FireWorks name
    ``{{ionflow.store.IonflowJobFiretask}}`` is kept), flow conversion, LaunchPad / FWorker
    / worker files; submission with reuse by key (appends under ``WFLock``) and the
    ``ionflow_submissions`` record.
``lease``
    Job ownership across workers: leases on FireWorks launches, fencing, the run-directory
    lock the MD engines take.

Imports: FireWorks and jobflow are imported only in this package (and by the makers and
flows, which are jobflow by nature); the database layer :mod:`ionflow.store` imports
neither at module level. This module and :mod:`~ionflow.backends.base` import neither.

Adding a backend (jobflow-remote, say) is one module and one line:

1. ``backends/jobflow_remote.py`` with a class that has ``name = "jobflow-remote"``, an
   ``__init__(self, db, data_dir=None, **options)`` and the verbs of
   :class:`~ionflow.backends.base.Backend` (subclass
   :class:`~ionflow.backends.base.BackendBase` for ``with``). ``submit`` receives the same
   plan (:class:`ionflow.campaign.PlannedMaterial`: the material's jobflow flow, every job's
   reuse key in ``metadata.ionflow_key``) and must reuse jobs by that key; job outputs go to
   ``db.jobstore()``, which is where summaries and results are read from. ``status`` reports
   states in the names of :data:`~ionflow.backends.base.STATES`.
2. one entry in :data:`BACKENDS` below: ``"jobflow-remote":
   "ionflow.backends.jobflow_remote:JobflowRemote"``.

Nothing else changes: ``run_campaign(..., backend="jobflow-remote")`` and every command
that opens a backend by name use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ionflow.backends.base import (
    STATES,
    Backend,
    BackendBase,
    CampaignStatus,
    JobRecord,
    Project,
    RecoveryReport,
    RunReport,
    run_campaign,
)
from ionflow.errors import UserInputError

if TYPE_CHECKING:
    from pathlib import Path

    from ionflow.store import ResolvedDatabase

__all__ = [
    "BACKENDS",
    "STATES",
    "Backend",
    "BackendBase",
    "CampaignStatus",
    "JobRecord",
    "Project",
    "RecoveryReport",
    "RunReport",
    "open_backend",
    "run_campaign",
]

#: Backend name → ``"module:Class"`` (imported when opened).
BACKENDS: dict[str, str] = {
    "fireworks-local": "ionflow.backends.fireworks_local:FireWorksLocal",
    "fireworks-slurm": "ionflow.backends.fireworks_slurm:FireWorksSlurm",
    "jobflow-remote": "ionflow.backends.jobflow_remote:JobflowRemote",
}


def open_backend(
    name: str, db: ResolvedDatabase, *, data_dir: Path | str | None = None, **options: Any
) -> Backend:
    """Open the backend ``name`` on ``db`` (and the project ``data_dir``).

    Raises
    ------
    UserInputError
        Unknown backend name.
    """
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UserInputError(
            f"unknown backend {name!r} (known: {', '.join(sorted(BACKENDS))})"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(db, data_dir, **options)
