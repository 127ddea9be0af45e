"""FireWorks plumbing shared by the FireWorks backends: the firetask, flow conversion, and
the LaunchPad / FWorker / worker files of a :class:`~ionflow.store.ResolvedDatabase`.

How a FireWorks worker finds the JobStore
-----------------------------------------
jobflow's own :class:`jobflow.managers.fireworks.JobFiretask` takes the store from exactly two
places (``run_task``): the ``store`` embedded in the firetask by
``flow_to_workflow(flow, store=...)`` -- serialised into the ``fireworks`` collection, i.e.
the URI *with its password* ends up in every workflow document -- or, when that is ``None``,
``jobflow.SETTINGS.JOB_STORE``, a module global built once at ``import jobflow`` from
``JOBFLOW_CONFIG_FILE`` / ``~/.jobflow.yaml`` / ``JOBFLOW_*`` variables. It never reads the
FWorker ``env``. The ``SETTINGS`` route has a nasty failure mode: a worker without the config
silently writes every output to an in-memory store and marks the firework COMPLETED.

ionflow therefore uses its own firetask, :class:`IonflowJobFiretask` (a subclass of
``JobFiretask`` producing the same job execution), created by this module's
:func:`flow_to_workflow`. It stores *no* store in the workflow and takes the JobStore from the
FWorker ``env`` key ``"ionflow_jobstore"`` (FireWorks hands the env to every task as
``fw_spec["_fw_env"]``); a worker without it makes the firework FIZZLE with a clear message
instead of losing data. The env value is either

* a :class:`~jobflow.JobStore` object -- :func:`fworker`, for in-process ``rapidfire``.
  FireWorks records the FWorker (including ``env``) in every ``launches`` document, so that
  FWorker is a subclass whose ``to_dict`` replaces the store with a placeholder: the secret
  stays in memory;
* a path to a ``jobstore.json`` file (mode 0600) -- :func:`write_worker_files`, for
  ``rlaunch -l my_launchpad.yaml -w my_fworker.yaml rapidfire`` in another process or a
  Slurm job. Only the path is recorded in ``launches``; the file must be readable where the
  worker runs (shared file system).

Dynamic flows (``Response(replace=..., addition=..., detour=...)``) are converted with the
same firetask, so they stay secret-free as well.

The firetask's FireWorks name
-----------------------------
Every stored firework names its task class: ``_fw_name`` is
``"{{ionflow.store.IonflowJobFiretask}}"``, where the class lived before this package
existed. The name is kept as it was so that existing databases keep working: FireWorks
resolves it by importing :mod:`ionflow.store` and reading ``IonflowJobFiretask`` there,
which that module hands over (lazily) from here. Never change it.

Gotchas
-------
* Workflows made with jobflow's own ``flow_to_workflow`` (``store=None``) would run on these
  workers with ``jobflow.SETTINGS.JOB_STORE`` (in-memory unless configured): always convert
  with this module's :func:`flow_to_workflow`.
* The LaunchPad config (:attr:`ResolvedDatabase.launchpad_config`) and the worker files
  contain credentials; never log them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from fireworks import Firework, FWAction, FWorker, LaunchPad, Workflow
from fireworks.utilities.fw_serializers import DATETIME_HANDLER, recursive_serialize
from jobflow import JobStore
from jobflow.managers.fireworks import JobFiretask

from ionflow.names import JOBSTORE_ENV_KEY
from ionflow.store import _write_private, connection_error

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import jobflow

    from ionflow.store import ResolvedDatabase

__all__ = [
    "FIRETASK_FW_NAME",
    "JOBSTORE_ENV_KEY",
    "IonflowJobFiretask",
    "flow_to_workflow",
    "fworker",
    "job_to_firework",
    "launchpad",
    "open_launchpad",
    "reset_launchpad_if_new",
    "worker_jobstore",
    "write_worker_files",
]

#: The ``_fw_name`` of :class:`IonflowJobFiretask` in every stored firework (see the module
#: notes: unchanged since the class lived in :mod:`ionflow.store`).
FIRETASK_FW_NAME = "{{ionflow.store.IonflowJobFiretask}}"


# ----------------------------------------------------------------------------- LaunchPad


def launchpad(db: ResolvedDatabase) -> LaunchPad:
    """Return a FireWorks LaunchPad on ``db``'s FireWorks database."""
    return LaunchPad.from_dict(json.loads(json.dumps(db.launchpad_config)))


@contextlib.contextmanager
def open_launchpad(db: ResolvedDatabase, lp: LaunchPad | None = None) -> Iterator[LaunchPad]:
    """``lp``, or a new LaunchPad on ``db`` (FireWorks' log at WARNING) closed afterwards."""
    if lp is not None:
        yield lp
        return
    own = launchpad(db)
    own.m_logger.setLevel(logging.WARNING)
    try:
        yield own
    finally:
        with contextlib.suppress(Exception):
            own.connection.close()


def reset_launchpad_if_new(lp: LaunchPad) -> bool:
    """Initialise the FireWorks collections on first use; never deletes anything.

    ``LaunchPad.add_wf`` needs the ``fw_id_assigner`` counter document that ``lp.reset``
    creates, but ``reset`` wipes every workflow. This creates the counter only if it is
    missing (atomically, so concurrent callers are safe) and builds FireWorks' indexes.

    Parameters
    ----------
    lp
        The LaunchPad.

    Returns
    -------
    bool
        Whether the LaunchPad was initialised now.

    Raises
    ------
    RuntimeError
        If the counter is missing although fireworks already exist (refuses to guess ids).
    """
    from pymongo.errors import DuplicateKeyError

    if lp.fw_id_assigner.find_one({}) is not None:
        return False
    if lp.fireworks.find_one({}, {"_id": 1}) is not None:
        raise RuntimeError(
            f"LaunchPad database {lp.name!r} has fireworks but no fw_id_assigner counter; "
            "refusing to initialise it (repair it or use another database)"
        )
    try:
        lp.fw_id_assigner.update_one(
            {"_id": -1},
            {"$setOnInsert": {"next_fw_id": 1, "next_launch_id": 1}},
            upsert=True,
        )
    except DuplicateKeyError:  # a concurrent caller won
        return False
    lp.tuneup(bkground=True)
    return True


# ----------------------------------------------------------------------------- workers


class _InProcessFWorker(FWorker):
    """FWorker whose serialised form (stored in ``launches``) omits JobStore objects."""

    @recursive_serialize
    def to_dict(self) -> dict[str, Any]:
        env = {
            k: ("<in-process JobStore, not serialised>" if isinstance(v, JobStore) else v)
            for k, v in self.env.items()
        }
        return {
            "name": self.name,
            "category": self.category,
            "query": json.dumps(self._query, default=DATETIME_HANDLER),
            "env": env,
        }


def _category(category: str | Sequence[str] | None) -> str | list[str]:
    category = "" if category is None else category
    return list(category) if not isinstance(category, str) else category


def fworker(
    db: ResolvedDatabase,
    name: str = "ionflow",
    category: str | Sequence[str] | None = None,
    query: dict[str, Any] | None = None,
) -> FWorker:
    """Return an FWorker for in-process ``rapidfire`` that carries ``db``'s JobStore.

    The store travels in ``env["ionflow_jobstore"]`` as an object; the FWorker's
    ``to_dict`` (what FireWorks writes into ``launches``) replaces it with a placeholder.

    Parameters
    ----------
    db
        The database.
    name
        FWorker name (matched by ``spec._fworker``).
    category
        Category or categories to pull (``spec._category``); ``None`` pulls any.
    query
        Extra FireWorks query restricting which fireworks run.
    """
    return _InProcessFWorker(
        name=name,
        category=_category(category),
        query=query,
        env={JOBSTORE_ENV_KEY: db.jobstore()},
    )


def write_worker_files(
    db: ResolvedDatabase,
    directory: Path | str,
    *,
    name: str = "ionflow",
    category: str | Sequence[str] | None = None,
    query: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the files a separate worker process needs, each with mode 0600.

    Parameters
    ----------
    db
        The database.
    directory
        Where to write (created if missing). Must be readable by the workers.
    name, category, query
        As for :func:`fworker`.

    Returns
    -------
    dict of str to Path
        ``"launchpad"``: ``my_launchpad.yaml`` (contains the credentials);
        ``"jobstore"``: ``jobstore.json`` (contains the credentials);
        ``"fworker"``: ``my_fworker.yaml`` (env holds only the path of jobstore.json);
        ``"jobflow_config"``: ``jobflow.yaml`` with ``JOB_STORE: <jobstore.json>``, for
        plain-jobflow tools via ``JOBFLOW_CONFIG_FILE`` (ionflow's workers do not need it).
        Run a worker with ``rlaunch -l <launchpad> -w <fworker> rapidfire``.
    """
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "launchpad": directory / "my_launchpad.yaml",
        "jobstore": directory / "jobstore.json",
        "fworker": directory / "my_fworker.yaml",
        "jobflow_config": directory / "jobflow.yaml",
    }
    from monty.json import MontyEncoder

    _write_private(
        paths["jobstore"], json.dumps(db.jobstore().as_dict(), cls=MontyEncoder, indent=2)
    )
    _write_private(
        paths["launchpad"],
        "# Written by ionflow: FireWorks LaunchPad. Contains credentials; keep private.\n"
        + yaml.safe_dump(json.loads(json.dumps(db.launchpad_config)), sort_keys=False),
    )
    worker = FWorker(
        name=name,
        category=_category(category),
        query=query,
        env={JOBSTORE_ENV_KEY: str(paths["jobstore"])},
    )
    write_fworker_file(paths["fworker"], worker)
    _write_private(paths["jobflow_config"], yaml.safe_dump({"JOB_STORE": str(paths["jobstore"])}))
    return paths


def write_fworker_file(path: Path, worker: FWorker) -> None:
    """Write ``my_fworker.yaml`` (mode 0600) for a worker whose env names ``jobstore.json``."""
    _write_private(
        path,
        "# Written by ionflow: the JobStore is read from the file named in env.\n"
        + yaml.safe_dump(worker.to_dict(), sort_keys=False),
    )


_FILE_STORES: dict[tuple[str, int], JobStore] = {}


def worker_jobstore(fw_spec: dict[str, Any]) -> JobStore:
    """The JobStore named by the FWorker env in ``fw_spec["_fw_env"]["ionflow_jobstore"]``.

    Parameters
    ----------
    fw_spec
        The spec FireWorks passes to ``run_task``.

    Returns
    -------
    JobStore
        Connected. Stores loaded from a file are cached per process.

    Raises
    ------
    RuntimeError
        If the FWorker env has no usable ``ionflow_jobstore``.
    """
    ref = (fw_spec.get("_fw_env") or {}).get(JOBSTORE_ENV_KEY)
    if isinstance(ref, JobStore):
        ref.connect()
        return ref
    if isinstance(ref, str | Path):
        path = Path(ref).expanduser()
        try:
            key = (str(path.resolve()), path.stat().st_mtime_ns)
        except OSError as exc:
            raise RuntimeError(
                f"FWorker env {JOBSTORE_ENV_KEY!r} names {path}, which cannot be read on this "
                f"host ({exc.strerror})"
            ) from None
        store = _FILE_STORES.get(key)
        if store is None:
            store = JobStore.from_file(path)
            _FILE_STORES[key] = store
        store.connect()
        return store
    raise RuntimeError(
        f"this FireWorks worker has no JobStore: its FWorker env lacks {JOBSTORE_ENV_KEY!r}. "
        "Run ionflow fireworks with ionflow.backends.fw_tasks.fworker(db) (in-process) or "
        "with `rlaunch -w my_fworker.yaml` from ionflow.backends.fw_tasks.write_worker_files()."
    )


# ----------------------------------------------------------------------------- firetask


class IonflowJobFiretask(JobFiretask):
    """Run a jobflow job with the JobStore of the worker (FWorker env), not of the workflow.

    Other Parameters
    ----------------
    job : Job
        The job to run.
    """

    _fw_name = FIRETASK_FW_NAME
    required_params = ("job",)

    def run_task(self, fw_spec: dict[str, Any]) -> FWAction:
        """Run the job; dynamic replacements/additions/detours use this firetask too."""
        from jobflow import initialize_logger

        store = worker_jobstore(fw_spec)
        job: jobflow.Job = self.get("job")

        fw_tags = fw_spec.get("tags", None)
        if fw_tags is not None:
            if "tags" in job.metadata:
                if isinstance(job.metadata["tags"], list):
                    job.metadata["tags"].extend(fw_tags)
                else:
                    job.metadata["tags"] = [job.metadata["tags"], *fw_tags]
                job.metadata["tags"] = list(dict.fromkeys(job.metadata["tags"]))
            else:
                job.metadata.update({"tags": fw_tags})
        if hasattr(self, "fw_id"):
            job.metadata.update({"fw_id": self.fw_id})

        initialize_logger()
        # the lease (heartbeat + fencing, see ionflow.backends.lease): a worker whose claim on
        # this firework was taken over stops writing, and its output write is refused
        from ionflow.backends.lease import fenced_store, task_lease

        lp = getattr(self, "launchpad", None)
        try:
            with (
                task_lease(lp, getattr(self, "fw_id", None)) as lease,
                fenced_store(store, lease),
            ):
                response = job.run(store=store)
        except Exception as exc:
            if lp is not None and connection_error(exc) is not None:
                # The database is gone: FireWorks would now ping and complete the launch,
                # waiting the client timeout for each. Closing the LaunchPad's client makes
                # those fail at once; the worker stops with this error (see
                # ionflow.backends.fireworks_local.work_until_done) and the launch is
                # recovered as lost.
                with contextlib.suppress(Exception):
                    lp.connection.close()
            raise

        detours = None
        additions = None
        if response.replace is not None:
            detours = [flow_to_workflow(response.replace)]
        if response.addition is not None:
            additions = [flow_to_workflow(response.addition)]
        if response.detour is not None:
            detours = (detours or []) + [flow_to_workflow(response.detour)]

        return FWAction(
            stored_data=response.stored_data,
            detours=detours,
            additions=additions,
            defuse_workflow=response.stop_jobflow,
            defuse_children=response.stop_children,
        )


def job_to_firework(
    job: jobflow.Job,
    parents: Sequence[str] | None = None,
    parent_mapping: dict[str, Firework] | None = None,
    **kwargs: Any,
) -> Firework:
    """Convert a job to a Firework running :class:`IonflowJobFiretask` (no store embedded).

    Same spec handling as :func:`jobflow.managers.fireworks.job_to_firework`:
    ``job.config.manager_config`` and ``job.metadata`` are merged into the spec.
    """
    from jobflow.core.reference import OnMissing

    if (parents is None) is not (parent_mapping is None):
        raise ValueError("Both or neither of parents and parent_mapping must be set.")
    task = IonflowJobFiretask(job=job)
    job_parents = None
    if parents is not None and parent_mapping is not None:
        job_parents = [parent_mapping[parent] for parent in parents] if parents else None
    spec: dict[str, Any] = {"_add_launchpad_and_fw_id": True}
    if job.config.on_missing_references != OnMissing.ERROR:
        spec["_allow_fizzled_parents"] = True
    spec.update(job.config.manager_config)
    spec.update(job.metadata)
    fw = Firework([task], spec=spec, name=job.name, parents=job_parents, **kwargs)
    if parent_mapping is not None:
        parent_mapping[job.uuid] = fw
    return fw


def flow_to_workflow(
    flow: jobflow.Flow | jobflow.Job | list[jobflow.Job],
    allow_external_references: bool = False,
    **kwargs: Any,
) -> Workflow:
    """Convert a flow to a FireWorks workflow whose documents hold no store or credentials.

    Use this instead of :func:`jobflow.managers.fireworks.flow_to_workflow`; run the result
    with :func:`fworker` or the files of :func:`write_worker_files`.

    Parameters
    ----------
    flow
        A flow, a job or a list of jobs.
    allow_external_references
        Allow references to outputs of jobs outside the flow.
    **kwargs
        Passed to :class:`fireworks.Workflow` (e.g. ``metadata``; ``name`` defaults to the
        flow name).
    """
    from jobflow.core.flow import get_flow

    parent_mapping: dict[str, Firework] = {}
    flow = get_flow(flow, allow_external_references=allow_external_references)
    fireworks = [
        job_to_firework(job, parents=parents, parent_mapping=parent_mapping)
        for job, parents in flow.iterflow()
    ]
    return Workflow(fireworks, name=kwargs.pop("name", flow.name), **kwargs)
