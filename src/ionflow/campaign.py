"""From a validated campaign spec to FireWorks workflows on a LaunchPad (idempotently).

One FireWorks workflow per material. Every firework carries ``spec.ionflow_campaign`` /
``ionflow_material`` so workers, status and recovery can select a campaign, and every
workflow carries ``metadata.ionflow_fingerprint`` — a hash of the material's structure,
engines, MD and analysis settings — so that submitting the same file again adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ionflow.errors import UserInputError
from ionflow.spec import CampaignSpec, ResolvedMaterial, campaign_fingerprint

ML_ENGINES = ("chgnet", "mace", "m3gnet", "sevennet", "toy")


@dataclass
class PlannedMaterial:
    """A material's flow and its fingerprint."""

    material: ResolvedMaterial
    flow: object
    fingerprint: str
    n_jobs: int


def material_fingerprint(spec: CampaignSpec, mat: ResolvedMaterial) -> str:
    """Hash of everything that determines a material's results in this campaign."""
    extra = {
        "campaign": spec.campaign,
        "material": mat.name,
        "analysis": spec.analysis.model_dump(mode="json"),
    }
    return campaign_fingerprint(spec, mat, extra)[:20]


def build_material_flow(spec: CampaignSpec, mat: ResolvedMaterial, run_root: Path):
    """The jobflow Flow of one material (see :mod:`ionflow.flows.campaign`)."""
    from ionflow.flows.campaign import MaterialCampaignMaker
    from ionflow.makers.analysis import AnalysisMaker
    from ionflow.makers.md import MLMDMaker
    from ionflow.makers.relax import RelaxMaker
    from ionflow.makers.supercell import SupercellMaker

    eng = spec.engine
    if eng.md not in (*ML_ENGINES, "vasp"):
        raise UserInputError(
            f"engine.md: {eng.md!r} is not available in this version of ionflow "
            f"(ML potentials: {', '.join(ML_ENGINES)}; or vasp)"
        )
    if eng.relax not in (*ML_ENGINES, "vasp", "none"):
        raise UserInputError(f"engine.relax: {eng.relax!r} is not available in this version")
    md = mat.md
    stride = md.frame_stride_steps
    ckpt = stride * max(1, -(-100 // stride))
    relax = None
    if eng.relax == "vasp":
        from ionflow.makers.vasp import vasp_relax_maker

        relax = vasp_relax_maker(spec, mat)
    elif eng.relax != "none":
        relax = RelaxMaker(
            engine=eng.relax,
            fmax_ev_a=spec.relax.fmax_ev_a,
            max_steps=spec.relax.max_steps,
            relax_cell=spec.relax.relax_cell,
        )
    maker = MaterialCampaignMaker(
        campaign=spec.campaign,
        relax_maker=relax,
        supercell_maker=SupercellMaker(
            min_width_a=md.supercell_min_length_a,
            mobile_species=spec.mobile_species,
            pinned_control=md.pinned_control_arg,
            pinned_sites=list(mat.pinned_indices),
        ),
        md_maker=MLMDMaker(
            engine=eng.md,
            time_step_fs=md.time_step_fs,
            equilibration_ps=md.equilibration_ps,
            production_ps=md.production_ps,
            frame_interval_steps=stride,
            checkpoint_interval_steps=ckpt,
            thermostat=md.thermostat,
            run_root=str(run_root),
        ),
        analysis_maker=AnalysisMaker(
            mobile_species=spec.mobile_species,
            fit=spec.analysis.fit,
            drift_reference=spec.analysis.drift_reference,
        ),
        temperatures_k=tuple(md.temperatures_k),
        pinned_control=mat.has_pinned_control,
        engine_relax=eng.relax,
    )
    start = mat.structure
    if "vasp" in (eng.relax, eng.md):
        from ionflow.makers import vasp as vasp_makers

        if eng.md == "vasp":
            maker.md_maker = vasp_makers.vasp_md_maker(spec, mat)
        if eng.relax == "vasp":
            # VASP relaxes the primitive cell (seed 003): start from it, pin its sites
            start, pinned = vasp_makers.vasp_start(spec, mat)
            if getattr(maker.supercell_maker, "pinned_sites", None) is not None:
                maker.supercell_maker.pinned_sites = pinned
    meta = {"ionflow_campaign": spec.campaign}
    return maker.make(start, mat.name, metadata=meta)


def plan_campaign(spec: CampaignSpec, materials: list[ResolvedMaterial], run_root: Path):
    """Flows of every material (nothing is submitted)."""
    out = []
    for mat in materials:
        flow = build_material_flow(spec, mat, run_root)
        out.append(PlannedMaterial(mat, flow, material_fingerprint(spec, mat), len(flow.jobs)))
    return out


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

    The same documents as ``ionflow.store.flow_to_workflow(flow, metadata=metadata)`` added
    with ``LaunchPad.bulk_add_wfs`` (tested against it, up to the numbering of the ids), built
    without FireWorks objects: one :class:`~ionflow.store.IonflowJobFiretask` per job, no store
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

    from ionflow.store import IonflowJobFiretask

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
        spec["_tasks"] = [{"job": job, "_fw_name": IonflowJobFiretask._fw_name}]
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


def submit(lp, planned: list[PlannedMaterial], campaign: str) -> dict[str, list[str]]:
    """Add the workflows that are not on the LaunchPad yet; return what was added/reused.

    One query finds the fingerprints already submitted (indexed). The new workflows are
    written as documents (:func:`workflow_documents`, the same documents
    ``LaunchPad.bulk_add_wfs`` writes) in chunks of 50 materials: ids reserved with one
    update per chunk, then ``insert_many`` of the workflows and of their fireworks (workflows
    first, so that no firework is checked out before its workflow exists), in a writer
    thread while the next chunk is built. See ``benchmarks/submit_scale.py``.
    """
    import datetime
    import queue
    import threading

    from pymongo import ReturnDocument

    lp.workflows.create_index("metadata.ionflow_fingerprint")
    known: set[str] = set()
    fingerprints = [p.fingerprint for p in planned]
    for i in range(0, len(fingerprints), 5000):
        known.update(
            d["metadata"]["ionflow_fingerprint"]
            for d in lp.workflows.find(
                {"metadata.ionflow_fingerprint": {"$in": fingerprints[i : i + 5000]}},
                {"metadata.ionflow_fingerprint": 1},
            )
        )
    added, reused, fresh = [], [], []
    for p in planned:
        if p.fingerprint in known:
            reused.append(p.material.name)
        else:
            known.add(p.fingerprint)  # the same material twice in one call: once
            added.append(p.material.name)
            fresh.append(p)
    if not fresh:
        return {"added": added, "reused": reused}
    now = datetime.datetime.now(datetime.UTC)
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
                        "ionflow_campaign": campaign,
                        "ionflow_material": p.material.name,
                        "ionflow_fingerprint": p.fingerprint,
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
    return {"added": added, "reused": reused}
