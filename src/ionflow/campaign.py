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


def submit(lp, planned: list[PlannedMaterial], campaign: str) -> dict[str, list[str]]:
    """Add the workflows that are not on the LaunchPad yet; return what was added/reused."""
    from ionflow.store import flow_to_workflow

    added, reused = [], []
    workflows = [
        flow_to_workflow(
            p.flow,
            metadata={
                "ionflow_campaign": campaign,
                "ionflow_material": p.material.name,
                "ionflow_fingerprint": p.fingerprint,
            },
        )
        for p in planned
        if lp.workflows.find_one({"metadata.ionflow_fingerprint": p.fingerprint}, {"_id": 1})
        is None
    ]
    fresh = {wf.metadata["ionflow_material"] for wf in workflows}
    for p in planned:
        (added if p.material.name in fresh else reused).append(p.material.name)
    if workflows:
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # FireWorks draws a tqdm bar here
            lp.bulk_add_wfs(workflows)
    return {"added": added, "reused": reused}
