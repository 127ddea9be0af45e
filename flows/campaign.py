"""The campaign flow of one material:

relax → supercell → {MD(T), pinned MD(T)} for every T → analysis per run → summary
(Arrhenius per variant, free/pinned comparison).

The graph is decided up front from the validated spec (temperatures, whether the material
has a pinned control); every MD/analysis job of a material runs in parallel once the
supercell exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Flow, Maker

from ionflow.makers.analysis import AnalysisMaker, ArrheniusMaker, SummaryMaker
from ionflow.makers.md import MLMDMaker
from ionflow.makers.relax import RelaxMaker
from ionflow.makers.supercell import SupercellMaker


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
        Temperatures of the series.
    pinned_control
        Whether to run the pinned variant (decided at submit time from the structure).
    engine_relax
        Relaxation engine (recorded in the summary).

    Every job carries ``metadata.ionflow_stage`` (relax, supercell, md, analysis,
    arrhenius, summary); MD, analysis and Arrhenius jobs also ``ionflow_variant`` and MD
    and analysis jobs ``ionflow_temperature_k``. :mod:`ionflow.campaign` keys each job by
    these to reuse what an earlier submission already has.
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

    def make(self, structure, material: str, metadata: dict | None = None) -> Flow:
        """The flow of ``material`` starting from ``structure``."""
        from dataclasses import replace

        jobs, md_jobs, relax_job = [], [], None
        if self.relax_maker is not None:
            relax = relax_job = self.relax_maker.make(structure)
            relax.append_name(f" {material}")
            relax.update_metadata({"ionflow_stage": "relax"})
            jobs.append(relax)
            start = relax.output.structure
        else:
            start = structure
        sc = self.supercell_maker.make(start)
        sc.append_name(f" {material}")
        sc.update_metadata({"ionflow_stage": "supercell"})
        jobs.append(sc)
        variants = ["free", "pinned"] if self.pinned_control else ["free"]
        analyses: dict[str, list] = {v: [] for v in variants}
        for t in self.temperatures_k:
            for v in variants:
                mdm = replace(
                    self.md_maker,
                    name=f"md {material} {v} {t:g}K",
                    temperature_k=float(t),
                    variant=v,
                    campaign=self.campaign,
                    material=material,
                )
                md = mdm.make(
                    sc.output.structure, sc.output.pinned_indices if v == "pinned" else None
                )
                an = replace(self.analysis_maker, name=f"analysis {material} {v} {t:g}K").make(
                    md.output
                )
                md.update_metadata({"ionflow_stage": "md"})
                an.update_metadata({"ionflow_stage": "analysis"})
                for j in (md, an):
                    j.update_metadata({"ionflow_variant": v, "ionflow_temperature_k": float(t)})
                jobs += [md, an]
                md_jobs.append(md)
                analyses[v].append(an.output)
        fits = {}
        for v in variants:
            fit = ArrheniusMaker(name=f"arrhenius {material} {v}", variant=v).make(analyses[v])
            fit.update_metadata({"ionflow_stage": "arrhenius", "ionflow_variant": v})
            jobs.append(fit)
            fits[v] = fit.output
        summary = SummaryMaker(
            name=f"summary {material}",
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
        summary.update_metadata({"ionflow_stage": "summary"})
        jobs.append(summary)
        kinds = {id(relax_job): "relax", **{id(m): "md" for m in md_jobs}}
        for j in jobs:
            j.update_metadata({"ionflow_material": material, **(metadata or {})})
            # FireWorks category per job kind: each Slurm profile's worker pulls only its kind
            j.update_config({"manager_config": {"_category": kinds.get(id(j), "analysis")}})
        return Flow(jobs, output=summary.output, name=f"{self.campaign}: {material}")
