"""The plan of a campaign: every job ``submit`` creates for a material, as typed records.

:func:`plan_material` enumerates a material's runs (variant × temperature) once, and from
them every job of its flow in flow order: the relaxation (unless ``engine.relax: none``),
the supercell, per run the MD job(s) — for VASP the run's sub-flow: pin, one job per
segment, the segments' output, collect — and the analysis, per variant the Arrhenius fit,
and the summary. Each record carries its kind, variant, temperature, position in its stage,
job name and reuse key. Everything that needs to know a material's jobs reads this plan:

- the flow builder (:func:`ionflow.campaign.build_material_flow` →
  :class:`ionflow.flows.campaign.MaterialCampaignMaker`) builds one stage per planned run,
  named as planned, and :func:`ionflow.campaign.key_jobs` checks job by job that the flow
  is the plan before it gives each job its planned key;
- the reuse keys (:func:`stage_keys`, one per stage; a job of a multi-job stage gets
  ``<stage key>.<position>``);
- ``ionflow validate`` (:meth:`MaterialPlan.counts`, via :func:`ionflow.spec.planned_jobs`);
- ``ionflow inputs`` (:func:`ionflow.makers.vasp.planned_vasp_jobs`: the planned VASP
  relaxation and MD segments);
- ``ionflow status`` (the planned stage keys tell current jobs from superseded ones).

Pure: a validated spec and a resolved material in, frozen records out; no jobflow,
FireWorks or atomate2 import (the VASP segment sizes come from :mod:`ionflow.vasp`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ionflow.errors import UserInputError

if TYPE_CHECKING:
    from ionflow.spec import CampaignSpec, MDSpec, ResolvedMaterial

__all__ = [
    "COUNT_KINDS",
    "MaterialPlan",
    "PlannedJob",
    "Run",
    "category",
    "job_name",
    "md_part_name",
    "plan_material",
    "plan_runs",
    "run_label",
    "stage_keys",
    "vasp_md_segments",
]

JobKind = Literal["relax", "supercell", "md", "analysis", "arrhenius", "summary"]
#: Parts of a VASP MD run's sub-flow (:class:`ionflow.makers.vasp.VaspMDMaker`), in order.
MDPart = Literal["pin", "segment", "segments-output", "collect"]

#: The kinds ``ionflow validate`` counts (``materials[i].jobs``), in this order; MD jobs of
#: the pinned variant are counted as ``pinned_md``.
COUNT_KINDS = ("relax", "supercell", "md", "pinned_md", "analysis", "arrhenius", "summary")


# ------------------------------------------------------------------------ labels


def run_label(temperature_k: float) -> str:
    """The label of a temperature in job names, tags and file names: ``600K``, ``1150K``."""
    return f"{float(temperature_k):g}K"


@dataclass(frozen=True)
class Run:
    """One MD run of a material: a variant at a temperature."""

    variant: str  # "free" | "pinned"
    temperature_k: float

    @property
    def label(self) -> str:
        """``free 600K``."""
        return f"{self.variant} {run_label(self.temperature_k)}"


def plan_runs(temperatures_k: Iterable[float], pinned_control: bool) -> tuple[Run, ...]:
    """A material's runs in flow order: per temperature the free run, then the pinned run
    (when the material has a pinned control)."""
    variants = ("free", "pinned") if pinned_control else ("free",)
    return tuple(Run(v, float(t)) for t in temperatures_k for v in variants)


def job_name(kind: str, material: str, run: Run | None = None, variant: str | None = None) -> str:
    """The name of a stage's job (or sub-flow): ``relax Li3N``, ``md Li3N free 900K``,
    ``analysis Li3N free 900K``, ``arrhenius Li3N free``, ``summary Li3N``."""
    if run is not None:
        return f"{kind} {material} {run.label}"
    if variant is not None:
        return f"{kind} {material} {variant}"
    return f"{kind} {material}"


def md_part_name(base: str, part: str, segment: int | None = None) -> str:
    """The name of one job of a VASP MD run's sub-flow named ``base``: ``<base> pin``,
    ``<base> seg 2``, ``<base> segments output``, ``<base> collect``."""
    if part == "segment":
        return f"{base} seg {segment}"
    return f"{base} {part.replace('-', ' ')}"


def category(kind: str) -> str:
    """The FireWorks category of a job kind (each Slurm profile's worker pulls its own):
    ``relax``, ``md`` (every job of an MD run), else ``analysis``."""
    return kind if kind in ("relax", "md") else "analysis"


# -------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PlannedJob:
    """One job ``submit`` creates for a material."""

    kind: str  # JobKind
    label: str  # the job's name
    stage: tuple  # its stage: the key of :func:`stage_keys`
    key: str  # reuse key (``spec.ionflow_key`` of its firework)
    variant: str | None = None
    temperature_k: float | None = None
    index: int | None = None  # position in a multi-job stage (the ``.<index>`` of the key)
    part: str | None = None  # MDPart of a VASP MD sub-flow job
    segment: int | None = None  # VASP MD segment number (1-based)
    nsteps: int | None = None  # MD steps of that segment

    @property
    def count_kind(self) -> str:
        """The kind ``ionflow validate`` counts this job under (:data:`COUNT_KINDS`)."""
        return "pinned_md" if self.kind == "md" and self.variant == "pinned" else self.kind

    @property
    def category(self) -> str:
        """Its FireWorks category (:func:`category`)."""
        return category(self.kind)


@dataclass(frozen=True)
class MaterialPlan:
    """Every job of a material's flow, in flow order, with the stages' reuse keys."""

    material: str
    engine_relax: str
    engine_md: str
    runs: tuple[Run, ...]
    stage_keys: Mapping[tuple, str] = field(hash=False)
    jobs: tuple[PlannedJob, ...] = ()

    @property
    def variants(self) -> tuple[str, ...]:
        """``("free",)`` or ``("free", "pinned")``."""
        return tuple(dict.fromkeys(r.variant for r in self.runs))

    @property
    def fingerprint(self) -> str:
        """The summary's key: equal fingerprints mean the same material result."""
        return self.stage_keys["summary",]

    @property
    def n_jobs(self) -> int:
        return len(self.jobs)

    def counts(self) -> dict[str, int]:
        """Jobs by kind (every kind of :data:`COUNT_KINDS`, zeros included)."""
        out = dict.fromkeys(COUNT_KINDS, 0)
        for job in self.jobs:
            out[job.count_kind] += 1
        return out


# ----------------------------------------------------------------------- reuse keys


def _key(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _canonical_structure(structure: Any) -> dict[str, Any]:
    """Lattice and sites rounded to 1e-6 (fractional coordinates wrapped into [0, 1)): the
    structure part of the relaxation's key."""

    def num(x: float) -> str:
        value = round(float(x), 6) + 0.0
        return f"{value:.6f}"

    def frac(x: float) -> str:
        value = float(x) % 1.0
        if value > 1.0 - 5e-7:
            value = 0.0
        return num(value)

    return {
        "lattice_a": [[num(x) for x in row] for row in structure.lattice.matrix],
        "sites": [
            [site.species_string, *(frac(x) for x in site.frac_coords)] for site in structure
        ],
    }


def _model_keys(eng: Any) -> dict[str, dict[str, str]]:
    """``{engine: {"model": identity}}`` for the engine ``engine.model`` belongs to (the
    variant name, or ``sha256:<hex>`` of a model file: moving the file keeps the keys,
    changing its contents changes them); empty without a model, so that keys stay as they
    were before the key existed. ``engine.device`` never enters a key."""
    if getattr(eng, "model", None) is None or eng.model_engine is None:
        return {}
    from ionflow.potentials import model_identity

    return {eng.model_engine: {"model": model_identity(eng.model_engine, eng.model)}}


def _stage_keys(spec: CampaignSpec, mat: ResolvedMaterial, runs: tuple[Run, ...]) -> dict:
    """The reuse key of every stage for ``runs`` (see :func:`stage_keys`)."""
    eng = spec.engine_for(mat)
    models = _model_keys(eng)
    md = mat.md.model_dump(mode="json")
    del md["temperatures_k"]  # each run's key has its own temperature
    # the target decides how far runs go, not what their first chunk is: MD and analysis
    # keys stay those of the fixed protocol (a tighter target extends the same runs), and
    # the target enters from the Arrhenius step on (its controller, ionflow.adaptive)
    target = md.pop("target", None)
    md.pop("batch", None)  # an execution setting (ionflow.batched): never in a key
    relax = _key(
        {
            "campaign": spec.campaign,
            "material": mat.name,
            "structure": _canonical_structure(mat.structure),
            "engine": eng.relax,
            **models.get(eng.relax, {}),
            "relax": spec.relax.model_dump(mode="json") if eng.relax != "none" else None,
            "incar": mat.vasp_incar if eng.relax == "vasp" else None,
        }
    )
    supercell = _key(
        {
            "relax": relax,
            "mobile_species": spec.mobile_species,
            "matrix": mat.supercell_matrix,
            "min_length_a": md["supercell_min_length_a"],
            "pinned_control": md["pinned_control"],
            "pinned": list(mat.pinned_indices),
            "variants": mat.has_pinned_control,
        }
    )
    from ionflow.spec import DEFAULT_ANALYSES

    analysis = (mat.analysis or spec.analysis).model_dump(mode="json")
    if set(analysis.get("analyses") or ()) == set(DEFAULT_ANALYSES):
        del analysis["analyses"]  # the default: keys as before the list existed
    keys: dict[tuple, str] = {("relax",): relax, ("supercell",): supercell}
    by_variant: dict[str, list[str]] = {}
    for run in runs:
        v, t = run.variant, run.temperature_k
        keys["md", v, t] = _key(
            {
                "supercell": supercell,
                "engine": eng.md,
                **models.get(eng.md, {}),
                "md": md,
                "incar": mat.vasp_incar if eng.md == "vasp" else None,
                "variant": v,
                "temperature_k": t,
            }
        )
        keys["analysis", v, t] = _key(
            {"md": keys["md", v, t], "mobile": spec.mobile_species, "analysis": analysis}
        )
        by_variant.setdefault(v, []).append(keys["analysis", v, t])
    for v, analyses in by_variant.items():
        payload: dict[str, Any] = {"variant": v, "analyses": sorted(analyses)}
        if target is not None:
            payload["target"] = mat.md.adaptive_target().as_dict()
        keys["arrhenius", v] = _key(payload)
    keys["summary",] = _key(
        {"supercell": supercell, "fits": [keys["arrhenius", v] for v in by_variant]}
    )
    return keys


def stage_keys(spec: CampaignSpec, mat: ResolvedMaterial) -> dict[tuple, str]:
    """The reuse key of every stage of a material's flow.

    Keys chain: each includes the key of the stage it consumes, so equal keys mean equal
    inputs all the way up to the structure file's content. Names of files and execution
    settings are not part of any key. Existing databases find their jobs by these keys:
    they must not change (tests/test_plan.py pins them).

    Returns
    -------
    dict
        ``("relax",)``, ``("supercell",)``, ``("md", variant, T)``,
        ``("analysis", variant, T)``, ``("arrhenius", variant)`` and ``("summary",)`` →
        key (hex).
    """
    return _stage_keys(spec, mat, plan_runs(mat.md.temperatures_k, mat.has_pinned_control))


# ------------------------------------------------------------------------- the plan


def vasp_md_segments(md: MDSpec) -> tuple[int, ...]:
    """Steps of each planned segment of a VASP MD run with these settings
    (:func:`ionflow.vasp.plan_md_segments`, sized from ``md.segment_steps`` or else the
    ``IONFLOW_VASP_WALLTIME_S`` / ``IONFLOW_VASP_SECONDS_PER_STEP`` environment)."""
    from ionflow import vasp as iv

    walltime_s, seconds_per_step = iv.segment_sizing_from_env()
    return iv.plan_md_segments(
        md.time_step_fs,
        md.equilibration_ps,
        md.production_ps,
        md.frame_stride_steps,
        segment_steps=md.segment_steps,
        walltime_s=walltime_s,
        seconds_per_step=seconds_per_step,
    ).segments


def _md_jobs(run: Run, base: str, key: str, segments: tuple[int, ...] | None) -> list:
    """The planned jobs of one MD run: one job, or the parts of a VASP run's sub-flow."""
    common = {"kind": "md", "stage": ("md", run.variant, run.temperature_k)}
    common |= {"variant": run.variant, "temperature_k": run.temperature_k}
    if segments is None:
        return [PlannedJob(label=base, key=key, **common)]
    parts: list[tuple[str, int | None, int | None]] = [("pin", None, None)]
    parts += [("segment", i, n) for i, n in enumerate(segments, start=1)]
    parts += [("segments-output", None, None), ("collect", None, None)]
    return [
        PlannedJob(
            label=md_part_name(base, part, segment),
            key=f"{key}.{i}",
            index=i,
            part=part,
            segment=segment,
            nsteps=nsteps,
            **common,
        )
        for i, (part, segment, nsteps) in enumerate(parts)
    ]


def plan_material(spec: CampaignSpec, mat: ResolvedMaterial) -> MaterialPlan:
    """Every job the campaign creates for ``mat``, in flow order (see the module docstring).

    Raises
    ------
    ionflow.errors.UserInputError
        VASP MD segments that cannot be planned (a walltime too short for one step, more
        than :data:`ionflow.vasp.MAX_MD_SEGMENTS` segments per run).
    """
    name, eng = mat.name, spec.engine_for(mat)
    runs = plan_runs(mat.md.temperatures_k, mat.has_pinned_control)
    keys = _stage_keys(spec, mat, runs)
    segments = None
    if eng.md == "vasp":
        try:
            segments = vasp_md_segments(mat.md)
        except UserInputError as exc:
            raise UserInputError(f"material {mat.name}: {exc}") from None
    jobs: list[PlannedJob] = []
    if eng.relax != "none":
        jobs.append(PlannedJob("relax", job_name("relax", name), ("relax",), keys["relax",]))
    jobs.append(
        PlannedJob("supercell", job_name("supercell", name), ("supercell",), keys["supercell",])
    )
    for run in runs:
        v, t = run.variant, run.temperature_k
        jobs += _md_jobs(run, job_name("md", name, run), keys["md", v, t], segments)
        stage = ("analysis", v, t)
        jobs.append(
            PlannedJob("analysis", job_name("analysis", name, run), stage, keys[stage], v, t)
        )
    for v in dict.fromkeys(r.variant for r in runs):
        stage = ("arrhenius", v)
        jobs.append(
            PlannedJob("arrhenius", job_name("arrhenius", name, variant=v), stage, keys[stage], v)
        )
    jobs.append(PlannedJob("summary", job_name("summary", name), ("summary",), keys["summary",]))
    return MaterialPlan(name, eng.relax, eng.md, runs, keys, tuple(jobs))
