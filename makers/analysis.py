"""Analysis and summary jobs: thin wrappers around :mod:`ionflow.analysis` and
:mod:`ionflow.summary`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job
from jobflow.core.job import JobConfig

from ionflow.summary import SUMMARY_COLLECTION


@dataclass
class AnalysisMaker(Maker):
    """The analyses of one MD run (production frames only), in one streamed pass.

    Parameters
    ----------
    name
        Job name.
    mobile_species
        Species analysed.
    fit
        "ionflow" or "pymatgen" (the diffusion analysis).
    drift_reference
        "auto" uses the pinned atoms for pinned runs and the framework otherwise.
    analyses
        Registered analysis names (:data:`ionflow.analysis.ANALYSES`); "diffusion" always
        runs. Each other kind's result is stored under ``results[kind]`` with its schema
        version (:func:`ionflow.results.run_result` reads it back through the registry).
    """

    name: str = "analysis"
    mobile_species: str = "Li"
    fit: str = "ionflow"
    drift_reference: str = "auto"
    analyses: tuple[str, ...] = ("diffusion",)

    @job(config=JobConfig(expose_store=True))
    def make(self, md_output: dict):
        """Output: the :class:`~ionflow.analysis.DiffusionAnalysis` document plus labels
        (``analysis``) and the other analyses' results by kind (``results``)."""
        from jobflow import CURRENT_JOB

        from ionflow.analysis import Diffusion, analyze_trajectory, get_analysis
        from ionflow.outputs import AnalysisOutput, MDOutput
        from ionflow.trajectories import fetch_npz

        md = MDOutput.model_validate(md_output)

        runners = [Diffusion(fit=self.fit)]
        runners += [get_analysis(n)() for n in self.analyses if n != "diffusion"]
        pymatgen = self.fit == "pymatgen"
        ref = "framework" if (pymatgen or self.drift_reference == "all") else self.drift_reference
        store = getattr(CURRENT_JOB, "store", None)
        with tempfile.TemporaryDirectory() as tmp:
            path = fetch_npz(md.trajectory, Path(tmp) / "production.npz", store)
            results = analyze_trajectory(
                str(path),
                runners,
                species=self.mobile_species,
                drift_reference=ref,
                mass_weighted=not pymatgen,
                require_temperature=True,
            )
        res = results["diffusion"]
        res.source = md.label
        others = {
            r.name: {
                "schema_version": r.schema_version,
                "result": results[r.name].model_dump(mode="json"),
            }
            for r in runners[1:]
        }
        return AnalysisOutput(
            material=md.material,
            variant=md.variant,
            temperature_k=md.temperature_k,
            analysis_uuid=CURRENT_JOB.job.uuid if CURRENT_JOB.job else None,
            # which MD run this is (find_md_output matches the current summary's runs by it)
            trajectory_sha256=md.trajectory.sha256,
            analysis=res.model_dump(mode="json"),
            results=others or None,
        ).to_output()


@dataclass
class ArrheniusMaker(Maker):
    """Arrhenius fit of one variant's runs (or the reason there is none)."""

    name: str = "arrhenius"
    variant: str = "free"
    at_temperature_k: float = 300.0

    @job
    def make(self, analyses: list[dict]):
        """Output: a :class:`~ionflow.summary.VariantSummary` document."""
        from ionflow.outputs import AnalysisOutput
        from ionflow.summary import variant_summary

        outs = [AnalysisOutput.model_validate(d) for d in analyses]
        parsed = [o.diffusion() for o in outs]
        ids = [{"analysis_uuid": o.analysis_uuid} for o in outs]
        return variant_summary(self.variant, parsed, ids, self.at_temperature_k).model_dump(
            mode="json"
        )


@dataclass
class SummaryMaker(Maker):
    """Arrhenius fits per variant + free/pinned comparison → one summary document.

    The summary is the job output and is also upserted into the ``summaries`` collection of
    the JobStore database (keyed by campaign + material) for ``ionflow query`` — unless
    a later submission made another summary the material's current one (see
    :func:`ionflow.summary.store_summary`). ``provenance.summary_key`` is the job's
    ``ionflow_key``.
    """

    name: str = "summary"
    campaign: str = "campaign"
    material: str = "material"
    mobile_species: str = "Li"
    engine_md: str = "chgnet"
    engine_relax: str = "chgnet"

    @job(config=JobConfig(expose_store=True))
    def make(self, structure, supercell: dict, free: dict, pinned: dict | None, provenance: dict):
        """Output: the :class:`~ionflow.summary.MaterialSummary` document."""
        from jobflow import CURRENT_JOB

        from ionflow.summary import VariantSummary, build_summary
        from ionflow.trajectories import _database

        summary = build_summary(
            campaign=self.campaign,
            material=self.material,
            structure=structure,
            mobile_species=self.mobile_species,
            engine_md=self.engine_md,
            engine_relax=self.engine_relax,
            supercell=supercell,
            free=VariantSummary.model_validate(free),
            pinned=VariantSummary.model_validate(pinned) if pinned else None,
            provenance={**provenance, "summary_key": _own_key()},
        )
        doc = summary.model_dump(mode="json")
        store = getattr(CURRENT_JOB, "store", None)
        db = _database(store) if store is not None else None
        if db is not None:
            from ionflow.summary import store_summary

            store_summary(db[SUMMARY_COLLECTION], doc)
        return doc


def _own_key() -> str | None:
    """``metadata.ionflow_key`` of the running job (None outside a campaign)."""
    from jobflow import CURRENT_JOB

    job = CURRENT_JOB.job
    return job.metadata.get("ionflow_key") if job is not None else None
