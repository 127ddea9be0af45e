"""From a validated campaign spec to keyed jobflow flows, one per material (the plan).

Every job carries ``metadata.ionflow_campaign`` / ``ionflow_material`` so workers, status
and recovery can select a campaign, and ``ionflow_key``, a hash of everything its result
depends on (its stage's key, :func:`ionflow.plan.stage_keys`, in the material's plan
:func:`ionflow.plan.plan_material`): the relaxation of the structure and its settings; the
supercell of that relaxation and its settings; the MD run of that supercell at one
temperature and variant with its MD settings; the analysis of that run; the Arrhenius fit of
a variant's set of analyses; the summary of the fits.

Nothing here submits: a backend (:mod:`ionflow.backends`) takes the plan and reuses every
job whose key it already holds — for FireWorks, :func:`ionflow.backends.fw_submit.submit`:
a material whose summary key exists is reused whole, one with none of its keys is added as
a new workflow, otherwise only the jobs whose keys are new are appended to the material's
existing workflow — so adding a temperature adds that temperature's MD + analysis runs and
a new Arrhenius fit and summary, and recomputes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ionflow.engines import ML_ENGINES
from ionflow.errors import UserInputError
from ionflow.plan import MaterialPlan, plan_material
from ionflow.plan import stage_keys as stage_keys
from ionflow.spec import CampaignSpec, ResolvedMaterial


@dataclass
class PlannedMaterial:
    """A material's flow, its fingerprint (= the key of its summary), its job keys and the
    plan the flow was built from."""

    material: ResolvedMaterial
    flow: object
    fingerprint: str
    keys: dict[str, str] = field(default_factory=dict)  # job uuid -> ionflow_key
    plan: MaterialPlan | None = None

    @property
    def n_jobs(self) -> int:
        """Jobs of the flow (nested flows counted by their jobs)."""
        return len(self.keys)


def build_material_flow(
    spec: CampaignSpec, mat: ResolvedMaterial, run_root: Path, plan: MaterialPlan | None = None
):
    """The jobflow Flow of one material (see :mod:`ionflow.flows.campaign`): one stage per
    job or run of ``plan`` (default: :func:`ionflow.plan.plan_material`)."""
    from ionflow.flows.campaign import MaterialCampaignMaker
    from ionflow.makers.analysis import AnalysisMaker
    from ionflow.makers.md import MLMDMaker
    from ionflow.makers.relax import RelaxMaker
    from ionflow.makers.supercell import SupercellMaker

    eng = spec.engine_for(mat)
    if eng.md not in (*ML_ENGINES, "vasp"):
        raise UserInputError(
            f"engine.md: {eng.md!r} is not available in this version of ionflow "
            f"(ML potentials: {', '.join(ML_ENGINES)}; or vasp)"
        )
    if eng.relax not in (*ML_ENGINES, "vasp", "none"):
        raise UserInputError(f"engine.relax: {eng.relax!r} is not available in this version")
    from ionflow.potentials import check_package

    for role, name in (("relax", eng.relax), ("md", eng.md)):
        if name in ML_ENGINES:
            try:  # on the submitting machine, before any job exists
                check_package(name)
            except UserInputError as exc:
                raise UserInputError(f"material {mat.name}: engine.{role}: {exc}") from None
    md = mat.md
    analysis = mat.analysis or spec.analysis  # the material's merged over the campaign's
    stride = md.frame_stride_steps
    ckpt = md.checkpoint_interval_steps  # as checked by `validate` (MDSpec.md_settings)
    relax = None
    if eng.relax == "vasp":
        from ionflow.makers.vasp import vasp_relax_maker

        relax = vasp_relax_maker(spec, mat)
    elif eng.relax != "none":
        relax = RelaxMaker(
            engine=eng.relax,
            calculator_kwargs=eng.calculator_kwargs(eng.relax),
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
            calculator_kwargs=eng.calculator_kwargs(eng.md) if eng.md in ML_ENGINES else {},
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
            fit=analysis.fit,
            drift_reference=analysis.drift_reference,
            analyses=tuple(analysis.analyses),
        ),
        temperatures_k=tuple(md.temperatures_k),
        pinned_control=mat.has_pinned_control,
        engine_relax=eng.relax,
        target=None if md.target is None else md.adaptive_target().as_dict(),
        batch_md=md.batch == "auto" and eng.md in ML_ENGINES,
        batch_device=eng.device or "cpu",
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
    if plan is None:
        plan = plan_material(spec, mat)
    return maker.make(start, mat.name, metadata=meta, runs=plan.runs)


def _flat_jobs(item) -> list:
    """The jobs of a job or (nested) flow, in flow order."""
    from jobflow import Flow

    if isinstance(item, Flow):
        return [j for sub in item.jobs for j in _flat_jobs(sub)]
    return [item]


def key_jobs(flow, plan: MaterialPlan) -> dict[str, str]:
    """Give every job of a material flow its planned reuse key; return uuid → key.

    The flow must be the plan, job for job (flow order, names): a flow that drifted from
    the plan (a job more or less, another order) is a bug and raises, so ``validate``,
    ``inputs`` and ``status``, which read the plan, always describe what ``submit`` adds.
    Sets ``metadata.ionflow_key`` and ``ionflow_job_uuid`` (also a replacement's: same uuid).
    """
    jobs = _flat_jobs(flow)
    names = [j.name for j in jobs]
    planned = [j.label for j in plan.jobs]
    if names != planned:
        raise RuntimeError(
            f"the flow of material {plan.material!r} is not its plan: flow jobs {names}, "
            f"planned {planned}"
        )
    out: dict[str, str] = {}
    for job, record in zip(jobs, plan.jobs, strict=True):
        job.metadata["ionflow_key"] = record.key
        job.metadata["ionflow_job_uuid"] = job.uuid
        out[job.uuid] = record.key
    return out


def plan_campaign(spec: CampaignSpec, materials: list[ResolvedMaterial], run_root: Path):
    """Flows of every material, every job keyed (nothing is submitted)."""
    out = []
    for mat in materials:
        plan = plan_material(spec, mat)
        flow = build_material_flow(spec, mat, run_root, plan)
        out.append(PlannedMaterial(mat, flow, plan.fingerprint, key_jobs(flow, plan), plan))
    return out


# The submission half of this module moved to the FireWorks backend
# (ionflow.backends.fw_submit; submission_lines to ionflow.backends.base). These names are
# handed over lazily for callers of the old paths (tests, benchmarks), without importing
# the backend when this module is imported.
_MOVED = {
    "SUBMISSIONS_COLLECTION": "ionflow.backends.fw_submit",
    "SubmissionError": "ionflow.backends.fw_submit",
    "last_submission": "ionflow.backends.fw_submit",
    "submit": "ionflow.backends.fw_submit",
    "workflow_documents": "ionflow.backends.fw_submit",
    "submission_lines": "ionflow.backends.base",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
