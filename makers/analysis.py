"""Analysis and summary jobs: thin wrappers around :mod:`ionflow.analysis` and
:mod:`ionflow.summary`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobflow import Maker, job
from jobflow.core.job import JobConfig

from ionflow.names import META_KEY, SUMMARY_COLLECTION

#: Most decision rounds of one md.target controller (a guard; the rules stop far earlier).
MAX_ROUNDS = 200


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
            production_ps=getattr(md, "production_ps", None),
            md_compute=getattr(md, "compute", None),
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
    """Arrhenius fit of one variant's runs (or the reason there is none); with a precision
    target, also the variant's controller (:mod:`ionflow.adaptive`).

    Parameters
    ----------
    name
        Job name.
    variant
        free | pinned.
    at_temperature_k
        Extrapolation temperature of σ, K.
    target
        :meth:`ionflow.adaptive.Target.as_dict` (None: the fixed protocol, one fit).
    md_maker, analysis_maker
        The makers of the variant's runs (set with ``target``): extensions and added
        temperatures are made by them, in the same run directories.
    material
        Material name (job names of extensions).
    add_temperatures
        Whether this controller may add temperatures by the material rule (the free
        variant's does; the pinned control extends its runs and adds the free variant's
        temperatures it lacks, from ``reference``).
    companion_temperatures
        (free controller) The pinned control's starting temperatures: their first chunks
        count as spent against the material's budget.
    round
        How many decision rounds came before this one.

    With a target, each round decides (:func:`ionflow.adaptive.decide_material`) and either
    finishes — the :class:`~ionflow.summary.VariantSummary` with ``decisions``,
    ``core_hours`` and ``target_met`` — or replaces itself (jobflow ``Response``) by the
    extension MD jobs (same run directory, continued from the checkpoint), the new
    temperatures' MD jobs, their analyses and the next round, which takes over this job's
    uuid, so the summary that waits on this job gets the last round's output. The new jobs
    carry the campaign's metadata and their FireWorks category, so every backend runs
    them like planned jobs, and a killed worker's job is recovered like any other.
    """

    name: str = "arrhenius"
    variant: str = "free"
    at_temperature_k: float = 300.0
    target: dict | None = None
    md_maker: Any = None
    analysis_maker: Any = None
    material: str = "material"
    add_temperatures: bool = True
    companion_temperatures: tuple[float, ...] = ()
    round: int = 0

    @job(config=JobConfig(pass_manager_config=False))
    def make(
        self,
        analyses: list[dict],
        structure=None,
        fixed_indices: list[int] | None = None,
        state: dict | None = None,
        md_outputs: list[dict] | None = None,
        reference: dict | None = None,
    ):
        """Output: a :class:`~ionflow.summary.VariantSummary` document (or, with a target
        not yet met, the next round)."""
        from ionflow.outputs import AnalysisOutput
        from ionflow.summary import mechanism_fields, variant_summary

        outs = [AnalysisOutput.model_validate(d) for d in analyses]
        parsed = [o.diffusion() for o in outs]
        ids = [
            {
                "analysis_uuid": o.analysis_uuid,
                "potential": o.potential,
                **mechanism_fields(o.parsed_results(), o.result_errors(), o.density_file),
                **_compute_ids(o),
            }
            for o in outs
        ]
        summary = variant_summary(self.variant, parsed, ids, self.at_temperature_k)
        if self.target is None:
            return summary.model_dump(mode="json")
        mds = {float(m["temperature_k"]): m for m in (md_outputs or []) if m}
        return self._decide(
            outs, summary, structure, fixed_indices, dict(state or {}), mds, reference
        )

    def _decide(
        self, outs, summary, structure, fixed_indices, state: dict, mds: dict, reference=None
    ):
        """One round of the controller (see the class docstring)."""
        from dataclasses import replace

        from jobflow import CURRENT_JOB, Flow, Response

        from ionflow.adaptive import (
            RunState,
            Target,
            decide_material,
            decide_run,
            extension_line,
            first_chunks_core_hours,
        )
        from ionflow.summary import VariantSummary

        target = Target.from_mapping(self.target)
        runs = [_run_state(o) for o in outs]
        lines = list(state.get("decisions", []))
        pending = state.get("pending", {})
        for r in runs:
            before = pending.get(f"{r.temperature_k:g}")
            if before is not None:
                asked = before.pop("to_ps", None)
                if asked is not None and r.production_ps < asked * (1 - 1e-3):
                    raise RuntimeError(
                        f"{self.material} {self.variant} {r.temperature_k:g} K: the extension "
                        f"to {asked:g} ps ran only {r.production_ps:g} ps"
                    )
                lines.append(extension_line(RunState(**before), r))
        quoted = summary.ea_resolved is True
        interval = summary.sigma_300k_interval_ms_cm if quoted else None
        # the budget is the material's: the free controller counts the pinned control's
        # starting runs as spent; the pinned one (which runs after it) what free spent
        own = float(sum(r.core_hours for r in runs))
        follow: list[float] = []
        if reference is not None:
            ref = VariantSummary.model_validate(reference)
            other = ref.core_hours
            if other is None:
                other = sum(r.core_hours or 0.0 for r in ref.runs)
            follow = [r.temperature_k for r in ref.runs]
        else:
            other = first_chunks_core_hours(runs, self.companion_temperatures, target)
        dec = decide_material(
            runs, target, interval, add_temperatures=self.add_temperatures,
            spent_core_hours=own + other, follow_temperatures=follow,
        )  # fmt: skip
        if not dec.done and self.round >= MAX_ROUNDS:
            dec = replace(dec, actions=(), lines=(*dec.lines, f"stop: {MAX_ROUNDS} rounds"))
        if dec.done:
            lines += dec.lines
            per_run = {d.temperature_k: d for d in (decide_run(r, target) for r in runs)}
            for run in summary.runs:
                d = per_run.get(run.temperature_k)
                run.target_met = d.target_met if d is not None else None
            summary.decisions = lines
            summary.core_hours = own
            summary.target_met = dec.target_met
            summary.budget_core_hours = target.budget_core_hours
            return summary.model_dump(mode="json")
        lines += [a.line for a in dec.actions if a.kind == "add"]
        lines += [line for line in dec.lines if line not in lines]  # once, not every round
        by_t = {r.temperature_k: (r, o) for r, o in zip(runs, outs, strict=True)}
        current = CURRENT_JOB.job
        base_meta = {
            k: v
            for k, v in (current.metadata if current is not None else {}).items()
            if k not in ("ionflow_key", "ionflow_job_uuid", "fw_id")
        }
        jobs, next_analyses, next_mds = [], [], []
        changed = {a.temperature_k for a in dec.actions}
        for t, (_, o) in sorted(by_t.items()):
            if t not in changed:
                next_analyses.append(o.to_output())
                next_mds.append(mds.get(t))
        new_pending = {}
        for act in dec.actions:
            t = act.temperature_k
            run_tag = f"{self.variant} {t:g}K"
            if act.kind == "extend":
                new_pending[f"{t:g}"] = {**_as_dict(by_t[t][0]), "to_ps": act.to_ps}
                suffix = f" ext {act.to_ps:g}ps"
                extend_to = act.to_ps
            else:
                suffix = " added"
                extend_to = None
            md_name = f"md {self.material} {run_tag}{suffix}"
            mdm = replace(self.md_maker, name=md_name, temperature_k=float(t), variant=self.variant)
            if extend_to is not None and hasattr(mdm, "collect"):
                # VASP: more segments after the run's last one (from its CONTCAR); the output
                # chains every segment's production frames, as for a walltime stop
                prev = mds.get(t) or {}
                dirs = [s["dir"] for s in prev.get("segments", [])]
                if not dirs:
                    raise RuntimeError(f"{md_name}: the VASP run to extend has no segments")
                md = replace(mdm, production_ps=extend_to).collect(dirs, None, 0)
                md.name = f"{md_name} collect"
            else:
                if hasattr(mdm, "extend_to_ps"):
                    mdm = replace(mdm, extend_to_ps=extend_to)
                md = mdm.make(structure, fixed_indices if self.variant == "pinned" else None)
            an = replace(
                self.analysis_maker, name=f"analysis {self.material} {run_tag}{suffix}"
            ).make(md.output)
            for j, stage in ((md, "md"), (an, "analysis")):
                j.update_metadata(
                    {
                        **base_meta,
                        "ionflow_stage": stage,
                        "ionflow_variant": self.variant,
                        "ionflow_temperature_k": float(t),
                        "ionflow_adaptive": act.kind,
                    }
                )
                j.update_config(
                    {"manager_config": {"_category": stage if stage == "md" else "analysis"}}
                )
            jobs += [md, an]
            next_analyses.append(an.output)
            next_mds.append(md.output)
        nxt = replace(self, round=self.round + 1).make(
            next_analyses,
            structure,
            fixed_indices,
            {"decisions": lines, "pending": new_pending},
            md_outputs=next_mds,
            reference=reference,
        )
        if current is not None:
            # the flow's updates of this job (stage "arrhenius", category "analysis") must not
            # be applied to the new MD and analysis jobs: they carry their own
            current.metadata_updates = []
            current.config_updates = []
            # the next round takes over this job (uuid, key, metadata, category)
            nxt.set_uuid(current.uuid)
            nxt.index = current.index + 1
            nxt.metadata = dict(current.metadata)
            nxt.config.manager_config = dict(current.config.manager_config)
        jobs.append(nxt)
        return Response(replace=Flow(jobs, name=f"{self.name} round {self.round + 1}"))


def _compute_ids(o) -> dict:
    """The run-level compute fields of a summary run from its analysis output."""
    comp = o.md_compute or {}
    return {"production_ps": o.production_ps, "core_hours": comp.get("core_hours")}


def _run_state(o):
    """The :class:`ionflow.adaptive.RunState` of one analysis output."""
    from ionflow.adaptive import RunState

    a = o.diffusion()
    prod = o.production_ps if o.production_ps is not None else a.duration_ps
    return RunState(
        temperature_k=float(o.temperature_k),
        regime=a.regime,
        production_ps=float(prod),
        diffusivity_cm2_s=a.diffusivity_cm2_s,
        diffusivity_err_cm2_s=a.diffusivity_err_cm2_s,
        core_hours=float((o.md_compute or {}).get("core_hours") or 0.0),
    )


def _as_dict(run) -> dict:
    from dataclasses import asdict

    return asdict(run)


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
