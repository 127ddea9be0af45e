"""Analysis and summary jobs: thin wrappers around :mod:`ionflow.analysis` and
:mod:`ionflow.summary`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job
from jobflow.core.job import JobConfig

from ionflow.names import META_KEY, SUMMARY_COLLECTION


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
        runners += [_Guarded(get_analysis(n)()) for n in self.analyses if n != "diffusion"]
        pymatgen = self.fit == "pymatgen"
        ref = "framework" if (pymatgen or self.drift_reference == "all") else self.drift_reference
        store = getattr(CURRENT_JOB, "store", None)
        uuid = CURRENT_JOB.job.uuid if CURRENT_JOB.job else None
        density_file = None
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
            density = next((r for r in runners[1:] if r.name == "density"), None)
            if density is not None and density.error is None:
                density_file = _store_density(density.inner, md, uuid, store, Path(tmp))
        res = results["diffusion"]
        res.source = md.label
        others = {r.name: r.entry(results.get(r.name)) for r in runners[1:]}
        return AnalysisOutput(
            material=md.material,
            variant=md.variant,
            temperature_k=md.temperature_k,
            analysis_uuid=uuid,
            # which MD run this is (find_md_output matches the current summary's runs by it)
            trajectory_sha256=md.trajectory.sha256,
            potential=md.potential,  # which potential made this D (provenance)
            analysis=res.model_dump(mode="json"),
            results=others or None,
            density_file=density_file,
        ).to_output()


class _Guarded:
    """An optional analysis of the campaign's pass: its failure (too few frames, no sites,
    …) is recorded as ``results[kind] = {schema_version, error}`` instead of losing the
    run's diffusion result; the other analyses go on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_velocities = getattr(inner, "needs_velocities", False)
        self.error: str | None = None

    def _call(self, method: str, *args):
        if self.error is not None:
            return None
        try:
            return getattr(self.inner, method)(*args)
        except Exception as exc:  # noqa: BLE001 — stored as the kind's error, run goes on
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            return None

    def prepare(self, ctx, unwrapper) -> None:
        self._call("prepare", ctx, unwrapper)

    def accumulate(self, chunk) -> None:
        self._call("accumulate", chunk)

    def conclude(self):
        return self._call("conclude")

    def entry(self, result) -> dict:
        version = self.inner.schema_version
        if self.error is not None or result is None:
            return {"schema_version": version, "error": self.error or "no result"}
        return {"schema_version": version, "result": result.model_dump(mode="json")}


def _store_density(density, md, uuid: str | None, store, tmp: Path) -> dict | None:
    """Write the run's density CHGCAR (next to the MD run when its directory is here, else
    in ``tmp``) and put it into the GridFS bucket ``densities``; the reference, or None when
    it cannot be written."""
    from ionflow.names import DENSITY_BUCKET, META_JOB_UUID
    from ionflow.trajectories import put_file

    name = f"{md.material}_{md.variant}_{md.temperature_k:g}K_{density.ctx.mobile_species}.CHGCAR"
    workdir = Path(md.workdir) if md.workdir else None
    folder = workdir if workdir is not None and workdir.is_dir() else tmp
    try:
        path = density.write(folder / name)
    except OSError:
        path = density.write(tmp / name)
    meta = {
        "job_uuid": uuid,
        META_JOB_UUID: uuid,
        "campaign": md.campaign,
        "material": md.material,
        "variant": md.variant,
        "temperature_k": md.temperature_k,
        "kind": "density",
    }
    ref = put_file(store, path, meta, DENSITY_BUCKET)
    if path.parent == tmp:
        ref.local_path = None  # the temporary copy is gone after the job
    return ref.model_dump(mode="json")


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
        from ionflow.summary import mechanism_fields, variant_summary

        outs = [AnalysisOutput.model_validate(d) for d in analyses]
        parsed = [o.diffusion() for o in outs]
        ids = [
            {
                "analysis_uuid": o.analysis_uuid,
                "potential": o.potential,
                **mechanism_fields(o.parsed_results(), o.result_errors(), o.density_file),
            }
            for o in outs
        ]
        return variant_summary(self.variant, parsed, ids, self.at_temperature_k).model_dump(
            mode="json"
        )


@dataclass
class SummaryMaker(Maker):
    """Arrhenius fits per variant + free/pinned comparison → one summary document.

    The summary is the job output and is also upserted into the ``summaries`` collection of
    the JobStore database (keyed by campaign + material) for ``ionflow query`` — unless
    a later submission made another summary the material's current one (see
    :func:`ionflow.results.store_summary`). ``provenance.summary_key`` is the job's
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
            from ionflow.results import store_summary

            store_summary(db[SUMMARY_COLLECTION], doc)
        return doc


def _own_key() -> str | None:
    """``metadata.ionflow_key`` of the running job (None outside a campaign)."""
    from jobflow import CURRENT_JOB

    job = CURRENT_JOB.job
    return job.metadata.get(META_KEY) if job is not None else None
