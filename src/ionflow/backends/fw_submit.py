"""Submission to a FireWorks LaunchPad: a campaign's plan in, what was added and reused out.

One FireWorks workflow per material. Every firework carries ``spec.ionflow_campaign`` /
``ionflow_material`` (and the other metadata keys of :mod:`ionflow.names`) so workers,
status and recovery can select a campaign.

Reuse is decided per job, by the reuse key ``spec.ionflow_key`` each planned job carries
(:mod:`ionflow.campaign` / :mod:`ionflow.plan` compute them; this module only looks them up).
:func:`submit` looks the planned keys up: a material whose summary key exists is reused
whole; a material with none of its keys is added as a new workflow; otherwise only the jobs
whose keys are new are appended to the material's existing workflow (under FireWorks'
``WFLock``), wired to the outputs (and fireworks) of the jobs they reuse — so adding a
temperature adds that temperature's MD + analysis runs and a new Arrhenius fit and summary,
and recomputes nothing else. Each call is recorded in the ``ionflow_submissions``
collection (what was added and what was reused) for ``ionflow status``.

A plan here is a list of planned materials (:class:`ionflow.campaign.PlannedMaterial`):
``material.name``, ``flow`` (a jobflow Flow), ``fingerprint`` (the key of the summary job),
``keys`` (job uuid → key) and ``n_jobs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ionflow.errors import UserInputError
from ionflow.names import (
    META_CAMPAIGN,
    META_JOB_UUID,
    META_KEY,
    META_MATERIAL,
    META_SUBMITTED,
    SUBMISSIONS_COLLECTION,
    WF_FINGERPRINT,
    WF_PENDING,
)

if TYPE_CHECKING:
    from ionflow.campaign import PlannedMaterial

__all__ = [
    "SUBMISSIONS_COLLECTION",
    "SubmissionError",
    "last_submission",
    "submit",
    "workflow_documents",
]


class SubmissionError(UserInputError):
    """The LaunchPad holds something submission cannot reconcile (one line, exit 2)."""


#: Firework states whose job can be reused (a defused or archived one cannot).
_UNUSABLE_STATES = ("DEFUSED", "ARCHIVED")


def _flat_jobs(item) -> list:
    """The jobs of a job or (nested) flow, in flow order (the planning code's rule)."""
    from ionflow.campaign import _flat_jobs

    return _flat_jobs(item)


def _fw_jsonable(obj):
    """``obj`` as FireWorks stores it (``recursive_dict``), via the C JSON encoder.

    FireWorks' ``to_db_dict`` walks every nested dict in Python twice (firetask, then
    firework); encoding with :mod:`json` and falling back to FireWorks' own ``recursive_dict``
    only for objects JSON cannot encode gives the same document several times faster.
    """
    import json

    return json.loads(json.dumps(obj, default=_fw_default))


def _fw_default(obj):
    """One step of FireWorks' ``recursive_dict`` for an object JSON cannot encode."""
    from fireworks.utilities.fw_serializers import ENCODE_MONTY, recursive_dict

    if ENCODE_MONTY and hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return recursive_dict(obj)


def _reference_uuids(obj, out: list[str]) -> list[str]:
    """uuids of the jobflow ``OutputReference`` dicts inside a JSON-like ``obj``."""
    if isinstance(obj, dict):
        if obj.get("@class") == "OutputReference" and "uuid" in obj:
            if obj["uuid"] not in out:
                out.append(obj["uuid"])
            return out
        for value in obj.values():
            _reference_uuids(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _reference_uuids(value, out)
    return out


def workflow_documents(flow, metadata: dict, first_fw_id: int, now=None) -> tuple[dict, list]:
    """The ``workflows`` and ``fireworks`` documents FireWorks would store for ``flow``.

    The same documents as ``fw_tasks.flow_to_workflow(flow, metadata=metadata)`` added
    with ``LaunchPad.bulk_add_wfs`` (tested against it, up to the numbering of the ids), built
    without FireWorks objects: one :class:`~ionflow.backends.fw_tasks.IonflowJobFiretask` per job, no store
    in any document. Each job is serialised once; its parents are the jobs its serialised
    arguments reference (jobflow's ``iterflow`` finds them by sanitising every argument again,
    which is most of the cost of the usual path).

    Parameters
    ----------
    flow
        A jobflow Flow (or Job). Nested flows are supported (via ``iterflow``).
    metadata
        Workflow metadata.
    first_fw_id
        Id of the first firework; the others follow in topological order.
    now
        Creation time (UTC datetime); default now.

    Returns
    -------
    workflow document, list of firework documents
    """
    import datetime

    from jobflow import Flow, Job
    from jobflow.core.reference import OnMissing

    from ionflow.backends.fw_tasks import FIRETASK_FW_NAME

    now = now or datetime.datetime.now(datetime.UTC)
    if isinstance(flow, Job):
        flow = Flow([flow])
    stamp = now.isoformat()
    flat = all(isinstance(j, Job) for j in flow.jobs)
    pairs = [(job, None) for job in flow.jobs] if flat else list(flow.iterflow())
    docs: dict[str, dict] = {}
    parents_of: dict[str, list[str]] = {}
    order: list[str] = []
    for job, parents in pairs:
        spec = {"_add_launchpad_and_fw_id": True}
        if job.config.on_missing_references != OnMissing.ERROR:
            spec["_allow_fizzled_parents"] = True
        spec.update(job.config.manager_config)
        spec.update(job.metadata)
        spec["_tasks"] = [{"job": job, "_fw_name": FIRETASK_FW_NAME}]
        doc = _fw_jsonable({"spec": spec, "created_on": stamp, "updated_on": stamp})
        if parents is None:
            task_job = doc["spec"]["_tasks"][0]["job"]
            found: list[str] = []
            _reference_uuids(task_job.get("function_args"), found)
            _reference_uuids(task_job.get("function_kwargs"), found)
            parents = [u for u in found if u != job.uuid]
        docs[job.uuid] = doc
        parents_of[job.uuid] = list(parents)
        order.append(job.uuid)
    unknown = {u for ps in parents_of.values() for u in ps} - set(docs)
    if unknown:
        raise ValueError(f"flow {flow.name!r} references jobs outside it: {sorted(unknown)}")
    # topological order, stable with respect to the flow's job order
    ids: dict[str, int] = {}
    remaining = list(order)
    while remaining:
        ready = [u for u in remaining if all(p in ids for p in parents_of[u])]
        if not ready:
            raise ValueError(f"flow {flow.name!r} has a dependency cycle")
        for u in ready:
            ids[u] = first_fw_id + len(ids)
        remaining = [u for u in remaining if u not in ids]
    links: dict[int, list[int]] = {ids[u]: [] for u in sorted(ids, key=ids.get)}
    parent_links: dict[int, list[int]] = {}
    for u in order:
        for p in parents_of[u]:
            links[ids[p]].append(ids[u])
            parent_links.setdefault(ids[u], []).append(ids[p])
    fw_docs, states = [], {}
    for u in sorted(ids, key=ids.get):
        fw_id = ids[u]
        states[fw_id] = "WAITING" if parents_of[u] else "READY"
        doc = docs[u]
        job_name = doc["spec"]["_tasks"][0]["job"]["name"]
        fw_docs.append(
            {
                "spec": doc["spec"],
                "fw_id": fw_id,
                "created_on": stamp,
                "updated_on": stamp,
                "name": job_name,
                "launches": [],
                "archived_launches": [],
                "state": states[fw_id],
            }
        )
    wf_doc = {
        "links": {str(k): v for k, v in links.items()},
        "parent_links": {str(k): v for k, v in parent_links.items()},
        "nodes": list(links),
        "metadata": metadata,
        "state": "READY",
        "name": flow.name,
        "created_on": now,
        "updated_on": now,
        "fw_states": {str(k): v for k, v in states.items()},
    }
    return wf_doc, fw_docs


_SUBMIT_CHUNK = 50


def _shift_ids(built: list[tuple[dict, list]], offset: int) -> tuple[list, list]:
    """Move the 0-based firework ids of each built workflow to consecutive blocks."""
    wf_docs, fw_docs = [], []
    for wf_doc, docs in built:
        shift = {str(i): str(i + offset) for i in range(len(docs))}
        wf_doc["links"] = {shift[k]: [c + offset for c in v] for k, v in wf_doc["links"].items()}
        wf_doc["parent_links"] = {
            shift[k]: [c + offset for c in v] for k, v in wf_doc["parent_links"].items()
        }
        wf_doc["nodes"] = [n + offset for n in wf_doc["nodes"]]
        wf_doc["fw_states"] = {shift[k]: v for k, v in wf_doc["fw_states"].items()}
        for doc in docs:
            doc["fw_id"] += offset
        offset += len(docs)
        wf_docs.append(wf_doc)
        fw_docs.extend(docs)
    return wf_docs, fw_docs


def _drop_incomplete_workflows(lp, campaign: str) -> list[str]:
    """Delete this campaign's workflows whose fireworks were never (fully) inserted.

    :func:`submit` writes a workflow (flagged ``metadata.ionflow_pending``) before its
    fireworks and clears the flag once they are written; if the database failed in between,
    the flag stays. Such a workflow is removed (with those of its fireworks that exist, none
    of which has run) so that this submission adds the material again. Returns the
    materials concerned.

    Raises
    ------
    SubmissionError
        An incomplete workflow already has a firework that ran (needs a person to look).
    """
    pending = list(
        lp.workflows.find(
            {f"metadata.{META_CAMPAIGN}": campaign, f"metadata.{WF_PENDING}": True},
            {"nodes": 1, f"metadata.{META_MATERIAL}": 1},
        )
    )
    dropped = []
    for wf in pending:
        nodes = wf.get("nodes") or []
        present = {
            d["fw_id"]: d["state"]
            for d in lp.fireworks.find({"fw_id": {"$in": nodes}}, {"fw_id": 1, "state": 1})
        }
        material = (wf.get("metadata") or {}).get(META_MATERIAL, "?")
        ran = sorted(n for n, state in present.items() if state not in ("WAITING", "READY"))
        if ran:
            raise SubmissionError(
                f"workflow of material {material!r} (campaign {campaign!r}) was not fully "
                f"written by an earlier submission, and fireworks {ran} of it have run; "
                f"inspect it with `lpad get_wflows -i {nodes[0]} -d more` before submitting "
                "again"
            )
        if present:
            lp.fireworks.delete_many({"fw_id": {"$in": sorted(present)}})
        lp.workflows.delete_one({"_id": wf["_id"]})
        dropped.append(material)
    return dropped


#: How long to wait for a workflow's FireWorks lock before giving up (s).
_LOCK_TIMEOUT_S = 300.0

#: Keys per ``$in`` query (SecantusDB's ``$in`` slows down superlinearly with its length).
_LOOKUP_CHUNK = 200


def _existing_jobs(lp, keys: list[str]) -> dict[str, tuple[int, str, str]]:
    """key → (fw_id, job uuid, state) of the newest usable firework with that key."""
    found: dict[str, tuple[int, str, str]] = {}
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        for d in lp.fireworks.find(
            {
                f"spec.{META_KEY}": {"$in": keys[i : i + _LOOKUP_CHUNK]},
                "state": {"$nin": list(_UNUSABLE_STATES)},
            },
            {"fw_id": 1, "state": 1, f"spec.{META_KEY}": 1, f"spec.{META_JOB_UUID}": 1},
        ):
            key = d["spec"][META_KEY]
            if key not in found or d["fw_id"] > found[key][0]:
                found[key] = (d["fw_id"], d["spec"][META_JOB_UUID], d["state"])
    return found


def _lookup_planned(lp, planned: list[PlannedMaterial]) -> dict[str, tuple[int, str, str]]:
    """The existing jobs with the planned keys, found in up to three indexed rounds.

    1. the summary keys (a material whose summary exists is reused whole);
    2. for the others, the key of the flow's first job (relax, or supercell): every other
       key of a material is derived from it, so without it the material is new;
    3. all keys of the materials that have their first job but not their summary.
    """
    existing = _existing_jobs(lp, [p.fingerprint for p in planned])
    rest = [p for p in planned if p.fingerprint not in existing]
    roots = {p.material.name: next(iter(p.keys.values())) for p in rest if p.keys}
    existing.update(_existing_jobs(lp, list(roots.values())))
    partial = [p for p in rest if roots.get(p.material.name) in existing]
    existing.update(_existing_jobs(lp, [k for p in partial for k in p.keys.values()]))
    return existing


def _remap_references(obj, mapping: dict[str, str]):
    """``obj`` with every OutputReference to a uuid in ``mapping`` pointing to its image."""
    from jobflow import OutputReference

    if isinstance(obj, OutputReference):
        if obj.uuid in mapping:
            return OutputReference(mapping[obj.uuid], obj.attributes, obj.output_schema)
        return obj
    if isinstance(obj, list):
        return [_remap_references(o, mapping) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_remap_references(o, mapping) for o in obj)
    if isinstance(obj, dict):
        return {k: _remap_references(v, mapping) for k, v in obj.items()}
    return obj


def _extend_workflow(
    lp, p: PlannedMaterial, existing: dict, submitted: str
) -> tuple[list[str], list[str]]:
    """Append the jobs of ``p`` whose keys are new to the material's existing workflow.

    A top-level stage (a job, or a VASP run's sub-flow) is reused when all its jobs' keys
    exist; references of the new jobs to reused jobs are redirected to the existing jobs'
    uuids, and their fireworks become parents of the new ones (FireWorks' own append path:
    the workflow is loaded and written back under its lock, states refreshed).

    Returns
    -------
    names of the added jobs, names of the reused jobs
    """
    from fireworks.core.launchpad import LockedWorkflowError, WFLock

    from ionflow.backends.fw_tasks import job_to_firework

    mapping: dict[str, str] = {}  # planned uuid -> existing uuid
    fw_of: dict[str, int] = {}  # existing uuid -> fw_id
    new_jobs, reused_names = [], []
    for item in p.flow.jobs:
        jobs = _flat_jobs(item)
        hits = [existing.get(p.keys[j.uuid]) for j in jobs]
        if all(hits):
            for j, (fw_id, uuid, _) in zip(jobs, hits, strict=True):
                mapping[j.uuid] = uuid
                fw_of[uuid] = fw_id
            reused_names.append(item.name)
        else:
            new_jobs.extend(jobs)
    for job in new_jobs:
        job.function_args = _remap_references(tuple(job.function_args), mapping)
        job.function_kwargs = _remap_references(dict(job.function_kwargs), mapping)
    new_uuids = {j.uuid for j in new_jobs}
    external = {u for j in new_jobs for u in j.input_uuids if u not in new_uuids}
    missing = external - set(fw_of)
    if missing:
        raise SubmissionError(
            f"material {p.material.name!r}: new jobs reference jobs that are neither planned "
            f"nor on the LaunchPad: {sorted(missing)}"
        )
    parent_fws = sorted({fw_of[u] for u in external})
    wf_ids = {str(d["_id"]) for d in lp.workflows.find({"nodes": {"$in": parent_fws}}, {"_id": 1})}
    if len(wf_ids) != 1:
        raise SubmissionError(
            f"material {p.material.name!r}: the jobs to reuse are in {len(wf_ids)} workflows "
            f"(fireworks {parent_fws}); expected one"
        )
    anchor = parent_fws[0]
    fws = {}
    for job in new_jobs:
        job.metadata[META_SUBMITTED] = submitted
        fws[job.uuid] = job_to_firework(job)
    try:
        with WFLock(lp, anchor, expire_secs=_LOCK_TIMEOUT_S, kill=False):
            _append_fireworks(lp, anchor, new_jobs, fws, fw_of)
    except LockedWorkflowError:
        raise SubmissionError(
            f"material {p.material.name!r}: its workflow (firework {anchor}) stayed locked "
            f"for {_LOCK_TIMEOUT_S:g} s (a worker updating it, or a stale lock of a killed "
            f"process: `lpad admin unlock -i {anchor}`); nothing was added for it — submit "
            "again once it is unlocked"
        ) from None
    return [j.name for j in new_jobs], reused_names


def _append_fireworks(lp, anchor: int, new_jobs: list, fws: dict, fw_of: dict) -> None:
    """Add ``fws`` (one per job of ``new_jobs``) to the workflow of firework ``anchor``.

    Parents: the new fireworks of the jobs a job references, else the existing fireworks
    ``fw_of`` maps their uuids to. Must run under the workflow's ``WFLock``.
    """
    wf = lp.get_wf_by_fw_id_lzyfw(anchor)
    for fw in fws.values():
        wf.id_fw[fw.fw_id] = fw
        wf.links[fw.fw_id] = []
        wf.fw_states[fw.fw_id] = "WAITING"
    for job in new_jobs:
        child = fws[job.uuid].fw_id
        for u in dict.fromkeys(job.input_uuids):
            parent = fws[u].fw_id if u in fws else fw_of[u]
            wf.links[parent].append(child)
    updated: set = set()
    for job in new_jobs:  # flow order is a topological order
        updated = wf.refresh(fws[job.uuid].fw_id, updated)
    lp._update_wf(wf, updated | {fw.fw_id for fw in fws.values()})


def submit(lp, planned: list[PlannedMaterial], campaign: str) -> dict:
    """Add what is not on the LaunchPad yet; return what was added, extended and reused.

    One indexed query finds which planned job keys exist already. Materials with none are
    written as new workflows (:func:`workflow_documents`, the same documents
    ``LaunchPad.bulk_add_wfs`` writes) in chunks of 50 materials: ids reserved with one
    update per chunk, then ``insert_many`` of the workflows and of their fireworks (workflows
    first, so that no firework is checked out before its workflow exists), in a writer
    thread while the next chunk is built. See ``benchmarks/submit_scale.py``. Materials
    with some of their keys get only their new jobs (:func:`_extend_workflow`); materials
    whose summary key exists are reused whole.

    Returns
    -------
    dict
        ``added`` / ``extended`` / ``reused`` (material names), ``jobs_added``,
        ``jobs_reused`` (counts), ``details`` (material → added and reused job names) and
        ``dropped`` (materials whose incomplete workflow from an earlier failure was removed).
    """
    import datetime

    lp.fireworks.create_index(f"spec.{META_KEY}")
    dropped = _drop_incomplete_workflows(lp, campaign)
    existing = _lookup_planned(lp, planned)
    now = datetime.datetime.now(datetime.UTC)
    added, extended, reused, fresh = [], [], [], []
    details: dict[str, dict] = {}
    jobs_added = jobs_reused = 0
    seen: set[str] = set()
    for p in planned:
        name = p.material.name
        if p.fingerprint in existing or p.fingerprint in seen:
            reused.append(name)
            jobs_reused += p.n_jobs
            details[name] = {"mode": "unchanged", "added": [], "n_reused": p.n_jobs}
        elif not any(k in existing for k in p.keys.values()):
            fresh.append(p)
            added.append(name)
            jobs_added += p.n_jobs
            details[name] = {"mode": "new", "added": [], "n_reused": 0}
        else:
            new_names, reused_names = _extend_workflow(lp, p, existing, now.isoformat())
            extended.append(name)
            jobs_added += len(new_names)
            jobs_reused += p.n_jobs - len(new_names)
            details[name] = {
                "mode": "extended",
                "added": new_names,
                "reused": reused_names,
                "n_reused": p.n_jobs - len(new_names),
            }
        seen.add(p.fingerprint)
    _insert_workflows(lp, fresh, campaign, now)
    record = {
        "campaign": campaign,
        "submitted_at": now,
        "submitted": now.isoformat(),  # the jobs' spec.ionflow_submitted (full precision)
        "jobs_added": jobs_added,
        "jobs_reused": jobs_reused,
        "materials": details,
        "dropped_incomplete": dropped,
    }
    lp.db[SUBMISSIONS_COLLECTION].insert_one(dict(record))
    return {
        "added": added,
        "extended": extended,
        "reused": reused,
        "jobs_added": jobs_added,
        "jobs_reused": jobs_reused,
        "details": details,
        "dropped": dropped,
    }


def last_submission(lp, campaign: str) -> dict | None:
    """The newest :data:`SUBMISSIONS_COLLECTION` record of ``campaign`` (or None)."""
    docs = list(
        lp.db[SUBMISSIONS_COLLECTION]
        .find({"campaign": campaign}, {"_id": 0})
        .sort("submitted_at", -1)
        .limit(1)
    )
    return docs[0] if docs else None


def _insert_workflows(lp, fresh: list[PlannedMaterial], campaign: str, now) -> None:
    """Write the new workflows (see :func:`submit`)."""
    import queue
    import threading

    from pymongo import ReturnDocument

    if not fresh:
        return
    for p in fresh:
        for job in _flat_jobs(p.flow):
            job.metadata[META_SUBMITTED] = now.isoformat()
    # Build the documents of chunk k+1 while a thread writes chunk k: the server's index
    # maintenance and the client's serialisation take about as long as each other.
    errors: list[BaseException] = []
    todo: queue.Queue = queue.Queue(maxsize=2)

    def writer() -> None:
        while (item := todo.get()) is not None:
            if errors:
                continue
            try:
                lp.workflows.insert_many(item[0], ordered=False)
                lp.fireworks.insert_many(item[1], ordered=False)
                lp.workflows.update_many(  # complete: see _drop_incomplete_workflows
                    {"_id": {"$in": [w["_id"] for w in item[0]]}},
                    {"$unset": {f"metadata.{WF_PENDING}": ""}},
                )
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    thread = threading.Thread(target=writer, name="ionflow-submit-writer", daemon=True)
    thread.start()
    try:
        for i in range(0, len(fresh), _SUBMIT_CHUNK):
            built = [
                workflow_documents(
                    p.flow,
                    {
                        META_CAMPAIGN: campaign,
                        META_MATERIAL: p.material.name,
                        WF_FINGERPRINT: p.fingerprint,
                        WF_PENDING: True,
                    },
                    0,
                    now,
                )
                for p in fresh[i : i + _SUBMIT_CHUNK]
            ]
            if errors:
                break
            n_fws = sum(len(docs) for _, docs in built)
            counter = lp.fw_id_assigner.find_one_and_update(
                {}, {"$inc": {"next_fw_id": n_fws}}, return_document=ReturnDocument.BEFORE
            )
            todo.put(_shift_ids(built, counter["next_fw_id"]))
    finally:
        todo.put(None)
        thread.join()
    if errors:
        raise errors[0]
