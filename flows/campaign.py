"""The campaign flow of one material:

relax → supercell → {MD(T), pinned MD(T)} for every T → analysis per run → summary
(Arrhenius per variant, free/pinned comparison).

The graph is decided up front: the runs (variant × temperature) and the job names come from
the material's plan (:mod:`ionflow.plan`), which :func:`ionflow.campaign.key_jobs` checks the
flow against job by job; every MD/analysis job of a material runs in parallel once the
supercell exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Flow, Maker

from ionflow.makers.analysis import AnalysisMaker, ArrheniusMaker, SummaryMaker
from ionflow.makers.md import MLMDMaker
from ionflow.makers.relax import RelaxMaker
from ionflow.makers.supercell import SupercellMaker
from ionflow.names import META_STAGE, META_VARIANT
from ionflow.plan import Run, category, job_name, plan_runs


@dataclass
class MaterialCampaignMaker(Maker):
    """Build the flow of one material from composed makers.

    Parameters
    ----------
    name
        Flow name (the material name is appended).
    campaign
        Campaign name.
    relax_maker
        Relaxation maker, or None to skip the relaxation.
    supercell_maker
        Supercell + pinning decision.
    md_maker
        MD maker; temperature, variant and labels are set per run.
    analysis_maker
        Analysis maker.
    temperatures_k
        Temperatures of the series (the runs when :meth:`make` is given none).
    pinned_control
        Whether to run the pinned variant (decided at submit time from the structure).
    engine_relax
        Relaxation engine (recorded in the summary).
    target
        Precision target (:meth:`ionflow.adaptive.Target.as_dict`), or None for the fixed
        protocol. With a target each variant's Arrhenius job is its controller: it gets
        the supercell, the pinned atoms and the run makers, and extends runs / adds
        temperatures by replacing itself (:class:`ionflow.makers.analysis.ArrheniusMaker`).
    batch_md
        Advance all MD runs of the material together, one batched potential call per step
        (``md: {batch: auto}``; :mod:`ionflow.makers.batched_md`): same jobs, names, keys
        and outputs, the first MD job runs every replica and the others wait for it.
    batch_device
        Device of the batched potential: auto, cpu or cuda.

    Every job carries ``metadata.ionflow_stage`` (relax, supercell, md, analysis,
    arrhenius, summary); MD, analysis and Arrhenius jobs also ``ionflow_variant`` and MD
    and analysis jobs ``ionflow_temperature_k`` (read back by results and reports). Jobs
    are named as the plan names them (:func:`ionflow.plan.job_name`); their reuse keys come
    from the plan, matched job by job (:func:`ionflow.campaign.key_jobs`), not from this
    metadata.
    """

    name: str = "ionflow campaign"
    campaign: str = "campaign"
    relax_maker: RelaxMaker | None = field(default_factory=RelaxMaker)
    supercell_maker: SupercellMaker = field(default_factory=SupercellMaker)
    md_maker: MLMDMaker = field(default_factory=MLMDMaker)
    analysis_maker: AnalysisMaker = field(default_factory=AnalysisMaker)
    temperatures_k: tuple[float, ...] = (600.0, 800.0, 1000.0)
    pinned_control: bool = True
    engine_relax: str = "chgnet"
    target: dict | None = None
    batch_md: bool = False
    batch_device: str = "auto"

    def make(
        self,
        structure,
        material: str,
        metadata: dict | None = None,
        runs: tuple[Run, ...] | None = None,
    ) -> Flow:
        """The flow of ``material`` starting from ``structure``: one MD run and its analysis
        per run of ``runs`` (default: :func:`ionflow.plan.plan_runs` of ``temperatures_k``
        and ``pinned_control``), in that order."""
        from dataclasses import replace

        if runs is None:
            runs = plan_runs(self.temperatures_k, self.pinned_control)
        stages: list[tuple[str, object]] = []  # (kind, job or sub-flow), in flow order
        if self.relax_maker is not None:
            relax = replace(self.relax_maker, name=job_name("relax", material)).make(structure)
            relax.update_metadata({META_STAGE: "relax"})
            stages.append(("relax", relax))
            start = relax.output.structure
        else:
            start = structure
        sc = replace(self.supercell_maker, name=job_name("supercell", material)).make(start)
        sc.update_metadata({META_STAGE: "supercell"})
        stages.append(("supercell", sc))
        analyses: dict[str, list] = {}
        leader = None  # the batched MD job of the material (batch_md)
        md_outputs: dict[str, list] = {}
        for run in runs:
            v, t = run.variant, float(run.temperature_k)
            mdm = replace(
                self.md_maker,
                name=job_name("md", material, run),
                temperature_k=t,
                variant=v,
                campaign=self.campaign,
                material=material,
            )
            fixed = sc.output.pinned_indices if v == "pinned" else None
            if self.batch_md and len(runs) > 1:  # one job advances every run (makers/batched_md)
                from ionflow.makers.batched_md import batched_md_job

                md = batched_md_job(mdm, runs, sc.output, fixed, leader, self.batch_device)
                leader = leader or md
            else:
                md = mdm.make(sc.output.structure, fixed)
            an = replace(self.analysis_maker, name=job_name("analysis", material, run)).make(
                md.output
            )
            md.update_metadata({META_STAGE: "md"})
            an.update_metadata({META_STAGE: "analysis"})
            for j in (md, an):
                j.update_metadata({"ionflow_variant": v, "ionflow_temperature_k": t})
            stages += [("md", md), ("analysis", an)]
            analyses.setdefault(v, []).append(an.output)
            md_outputs.setdefault(v, []).append(md.output)
        fits = {}
        # free first: with a target the pinned controller follows the free one's outcome
        for v, outputs in sorted(analyses.items(), key=lambda item: item[0] != "free"):
            name = job_name("arrhenius", material, variant=v)
            if self.target is None:
                fit = ArrheniusMaker(name=name, variant=v).make(outputs)
            else:
                fit = ArrheniusMaker(
                    name=name,
                    variant=v,
                    target=self.target,
                    md_maker=replace(
                        self.md_maker, campaign=self.campaign, material=material, variant=v
                    ),
                    analysis_maker=self.analysis_maker,
                    material=material,
                    add_temperatures=v == "free",
                    # the free controller counts the pinned control's starting runs as spent
                    companion_temperatures=(
                        tuple(float(r.temperature_k) for r in runs if r.variant == "pinned")
                        if v == "free"
                        else ()
                    ),
                ).make(
                    outputs,
                    sc.output.structure,
                    sc.output.pinned_indices if v == "pinned" else None,
                    md_outputs=md_outputs[v],
                    reference=fits.get("free") if v == "pinned" else None,
                )
            fit.update_metadata({META_STAGE: "arrhenius", META_VARIANT: v})
            stages.append(("arrhenius", fit))
            fits[v] = fit.output
        summary = SummaryMaker(
            name=job_name("summary", material),
            campaign=self.campaign,
            material=material,
            mobile_species=self.analysis_maker.mobile_species,
            engine_md=self.md_maker.engine,
            engine_relax=self.engine_relax,
        ).make(
            start,
            sc.output,
            fits["free"],
            fits.get("pinned"),
            {
                "md_settings": {
                    k: getattr(self.md_maker, k)
                    for k in (
                        "engine",
                        "time_step_fs",
                        "equilibration_ps",
                        "production_ps",
                        "frame_interval_steps",
                        "thermostat",
                        "seed",
                    )
                },
                "analysis": {
                    "fit": self.analysis_maker.fit,
                    "drift_reference": self.analysis_maker.drift_reference,
                },
            },
        )
        summary.update_metadata({META_STAGE: "summary"})
        stages.append(("summary", summary))
        for kind, j in stages:
            j.update_metadata({"ionflow_material": material, **(metadata or {})})
            # FireWorks category per job kind: each Slurm profile's worker pulls only its kind
            j.update_config({"manager_config": {"_category": category(kind)}})
        return Flow(
            [j for _, j in stages], output=summary.output, name=f"{self.campaign}: {material}"
        )
