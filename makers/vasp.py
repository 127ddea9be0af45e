"""VASP engine: the seed-003 protocol on atomate2 + custodian, with walltime-safe MD segments.

Makers
------
:class:`VaspRelaxMaker`
    atomate2 ``RelaxMaker`` (``RelaxSetGenerator``) relaxing ions + cell of the primitive
    cell with the protocol INCAR (:func:`ionflow.vasp.relax_incar`). Output: an atomate2
    ``TaskDoc`` (``output.structure`` is the relaxed structure).
:class:`VaspMDSegmentMaker`
    atomate2 ``MDMaker`` (``MDSetGenerator``, PBE, Γ-only) for one MD segment of ``nsteps``
    steps, with custodian's MD handlers plus :class:`StopBeforeWalltimeHandler`.
:class:`VaspMDMaker`
    The MD run of one temperature and variant (free/pinned), with the output contract of
    :class:`ionflow.makers.md.MLMDMaker`. ``make(structure, fixed_indices)`` returns the flow

    ``pin`` (selective dynamics ``F F F`` on ``fixed_indices``) → atomate2
    ``MultiMDMaker`` chain of the planned segments (each starts from the previous CONTCAR
    with velocities, through ``prev_dir``) → ``collect``.

    ``collect`` counts the ionic steps the segments did. A segment stopped early by the
    walltime handler (STOPCAR) is progress, not failure: while steps remain, ``collect``
    replaces itself (jobflow ``Response(replace=...)``) by one more segment of the remaining
    steps (atomate2 ``MultiMDMaker`` again, from the last CONTCAR) and a new ``collect``.
    When the run is complete it chains the segments' production frames
    (:func:`ionflow.vasp.chain_segments`: equilibration excluded, no gap or duplicated frame
    at joins), writes them as one float32 ``.npz`` and stores it in GridFS
    (:mod:`ionflow.trajectories`). Its output has the keys the analysis and summary use:
    ``campaign, material, variant, temperature_k, engine, trajectory`` (+ ``segments``,
    ``md``, ``vasp``).

Inputs without running
-----------------------
:func:`planned_vasp_jobs` lists every VASP job of a material with its atomate2 input-set
generator; ``ionflow inputs`` (:mod:`ionflow.cli.vasp_cmds`) writes them. Job tags:
``relax`` and ``md_<variant>_<T>K_s<NN>`` (job metadata ``ionflow_vasp_tag``).

Traps handled here
------------------
* atomate2's MD input set defaults to PBEsol (``GGA = PS``): the protocol sets ``GGA = PE``.
* emmet marks an MD run with fewer steps than NSW "failed" and atomate2 raises on failed
  runs by default (``VASP_HANDLE_UNSUCCESSFUL = "error"``): segments use
  ``handle_unsuccessful=False`` and ``collect`` decides from the steps actually done.
* Custodian runs the Γ-only MD with ``VASP_GAMMA_CMD`` (``vasp_gam``) when that executable
  exists, else with ``VASP_CMD``; both are resolved when the job runs (below).
* Segments are written with ``from_prev=False``: every INCAR key is explicit, so nothing is
  inherited from the previous run, and the (possibly GB-sized) previous ``vasprun.xml`` is
  not parsed just to write inputs. ``auto_ismear``/``auto_ispin`` are off (a previous
  insulator's band gap would otherwise switch to tetrahedron smearing, invalid at Γ only).

Run-time settings (environment of the worker)
---------------------------------------------
``IONFLOW_VASP_CMD`` / ``IONFLOW_VASP_GAMMA_CMD``
    VASP commands (default: atomate2's ``VASP_CMD`` / ``VASP_GAMMA_CMD`` settings, i.e.
    ``ATOMATE2_VASP_CMD`` or ``~/.atomate2.yaml``). ``python -m ionflow.vasp_standin`` runs
    the stand-in (:mod:`ionflow.vasp_standin`).
``IONFLOW_VASP_POTCAR_SPEC``
    ``1``: write ``POTCAR.spec`` instead of ``POTCAR`` (automatic with the stand-in). Real
    runs need POTCARs: pymatgen's ``PMG_VASP_PSP_DIR``.
``IONFLOW_CUSTODIAN_POLLING_S`` / ``IONFLOW_CUSTODIAN_MONITOR_FREQ``
    Custodian's polling interval (default 10 s) and how many polls between monitor checks
    (default 6: the walltime handler looks every minute).
``IONFLOW_VASP_WALLTIME_S`` / ``IONFLOW_VASP_SECONDS_PER_STEP`` (read when the flow is built)
    Without ``md.segment_steps``, size the segments to fit one allocation
    (:func:`ionflow.vasp.segment_steps_for_walltime`); ``IONFLOW_VASP_WALLTIME_S`` is also the
    time budget the walltime handler gives each segment job.
``IONFLOW_WALLTIME_END``, ``SLURM_JOB_END_TIME``, ``SLURM_JOB_ID``
    Where the walltime handler learns when the allocation ends
    (:func:`ionflow.vasp.allocation_seconds_left`); ``IONFLOW_WALLTIME_BUFFER_S`` (default
    600) is how early it writes the STOPCAR: the last ionic step plus atomate2's parsing of
    the segment's outputs must fit in it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from atomate2.vasp.jobs.base import BaseVaspMaker, vasp_job
from atomate2.vasp.jobs.core import RelaxMaker
from atomate2.vasp.jobs.md import MDMaker
from custodian.custodian import ErrorHandler
from jobflow import Flow, Maker, Response, job
from jobflow.core.job import JobConfig

from ionflow import vasp as iv
from ionflow.plan import md_part_name, plan_material, run_label

__all__ = [
    "STANDIN_COMMAND",
    "StopBeforeWalltimeHandler",
    "VaspMDMaker",
    "VaspMDSegmentMaker",
    "VaspRelaxMaker",
    "md_segment_tag",
    "pin_structure",
    "vasp_commands",
]

#: The command that runs the VASP stand-in with this Python.
STANDIN_COMMAND = f"{shlex.quote(sys.executable)} -m ionflow.vasp_standin"
#: Default time left (s) when the STOPCAR is written: the last ionic step plus atomate2's
#: parsing of the outputs (a long segment's vasprun.xml takes minutes to parse).
DEFAULT_BUFFER_S = 600.0
#: ``ionflow_vasp_tag`` job-metadata key: the stable tag of a VASP job (reference inputs).
TAG_KEY = "ionflow_vasp_tag"
POTCAR_FUNCTIONAL = "PBE_54"
#: Input-set options of every ionflow VASP job: our INCAR as given (see the module docstring).
_SET_OPTIONS = {
    "user_potcar_functional": POTCAR_FUNCTIONAL,
    "auto_ismear": False,
    "auto_ispin": False,
    "inherit_incar": False,
}


def md_segment_tag(variant: str, temperature_k: float, segment: int) -> str:
    """Stable tag of an MD segment job, e.g. ``md_pinned_800K_s02``."""
    return f"md_{variant}_{run_label(temperature_k)}_s{segment:02d}"


# --------------------------------------------------------------------- run time


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def vasp_commands() -> tuple[str, str]:
    """(VASP command, Γ-only VASP command) for this worker (see the module docstring)."""
    from atomate2 import SETTINGS

    cmd = os.environ.get("IONFLOW_VASP_CMD") or os.environ.get("ATOMATE2_VASP_CMD")
    cmd = cmd or SETTINGS.VASP_CMD
    gamma = os.environ.get("IONFLOW_VASP_GAMMA_CMD")
    if not gamma:
        gamma = cmd if os.environ.get("IONFLOW_VASP_CMD") else SETTINGS.VASP_GAMMA_CMD
    return cmd, gamma


def _is_standin(cmd: str) -> bool:
    return "ionflow.vasp_standin" in cmd


def _executable_missing(cmd: str) -> str | None:
    """The first word of ``cmd`` when it is not an executable, else None."""
    words = shlex.split(os.path.expandvars(cmd))
    if not words:
        return cmd
    if os.path.sep in words[0]:
        return None if os.access(words[0], os.X_OK) else words[0]
    return None if shutil.which(words[0]) else words[0]


def _check_potcars() -> None:
    from pymatgen.core import SETTINGS as PMG_SETTINGS

    psp_dir = PMG_SETTINGS.get("PMG_VASP_PSP_DIR")
    if not psp_dir or not Path(psp_dir).expanduser().is_dir():
        raise RuntimeError(
            "VASP needs POTCAR files, and pymatgen's PMG_VASP_PSP_DIR is "
            + ("not set" if not psp_dir else f"{psp_dir!r}, which is not a directory")
            + ": point it at the directory holding POT_GGA_PAW_PBE_54 (e.g. `pmg config "
            "--add PMG_VASP_PSP_DIR /path/to/potcars` or export PMG_VASP_PSP_DIR). "
            "To try the workflow without VASP, set IONFLOW_VASP_CMD="
            "'python -m ionflow.vasp_standin' (writes POTCAR.spec, runs a toy potential)."
        )


def _runtime_maker(maker: BaseVaspMaker, walltime_handler: bool) -> BaseVaspMaker:
    """A copy of ``maker`` with the worker's VASP commands, POTCAR mode and custodian timing."""
    from atomate2.vasp.run import DEFAULT_HANDLERS

    cmd, gamma = vasp_commands()
    standin = _is_standin(cmd)
    missing = _executable_missing(cmd)
    if missing:
        raise RuntimeError(
            f"VASP executable {missing!r} (from the VASP command {cmd!r}) not found on this "
            "worker: set IONFLOW_VASP_CMD (or ATOMATE2_VASP_CMD / ~/.atomate2.yaml), e.g. "
            "'srun vasp_std'; for a dry run without VASP use IONFLOW_VASP_CMD='python -m "
            "ionflow.vasp_standin'"
        )
    if _executable_missing(gamma):
        gamma = cmd  # as custodian does when the Γ-only build is absent
    potcar_spec = standin or _truthy(os.environ.get("IONFLOW_VASP_POTCAR_SPEC"))
    if not potcar_spec:
        _check_potcars()
    run_kwargs = dict(maker.run_vasp_kwargs)
    run_kwargs["vasp_cmd"] = cmd
    run_kwargs["vasp_gamma_cmd"] = gamma
    handlers = list(run_kwargs.get("handlers", DEFAULT_HANDLERS))
    if walltime_handler and not any(isinstance(h, StopBeforeWalltimeHandler) for h in handlers):
        wall = getattr(maker, "walltime_s", None)
        buffer = float(os.environ.get("IONFLOW_WALLTIME_BUFFER_S") or DEFAULT_BUFFER_S)
        handlers.append(StopBeforeWalltimeHandler(wall_time_s=wall, buffer_s=buffer))
    run_kwargs["handlers"] = handlers
    custodian = {
        "polling_time_step": float(os.environ.get("IONFLOW_CUSTODIAN_POLLING_S", "10") or 10),
        "monitor_freq": int(os.environ.get("IONFLOW_CUSTODIAN_MONITOR_FREQ", "6") or 6),
        **dict(run_kwargs.get("custodian_kwargs") or {}),
    }
    run_kwargs["custodian_kwargs"] = custodian
    write_kwargs = {**maker.write_input_set_kwargs, "potcar_spec": potcar_spec}
    return replace(maker, run_vasp_kwargs=run_kwargs, write_input_set_kwargs=write_kwargs)


class StopBeforeWalltimeHandler(ErrorHandler):
    """Custodian monitor: write ``STOPCAR`` (``LSTOP = .TRUE.``) before the allocation ends.

    VASP then finishes the current ionic step and writes complete outputs (vasprun.xml,
    CONTCAR with velocities), so the segment's frames are kept and the next segment
    continues from there. The deadline is the earlier of ``wall_time_s`` after the first
    check and the allocation end (:func:`ionflow.vasp.allocation_seconds_left`); the STOPCAR
    is written when less than ``max(buffer_s, 3 × the slowest ionic step so far)`` is left
    (custodian's ``WalltimeHandler`` rule; steps are timed from the ``LOOP+`` lines of the
    OUTCAR). Unlike custodian's handler it needs no OUTCAR to act, reads only the end of
    the OUTCAR, learns the allocation end from Slurm, and fires once.

    Parameters
    ----------
    wall_time_s
        Time budget of this VASP run, s (None: only the allocation end counts).
    buffer_s
        Minimum time left when the STOPCAR is written, s.
    """

    is_monitor = True
    is_terminating = False  # VASP stops itself at the end of the ionic step
    raises_runtime_error = False

    def __init__(self, wall_time_s: float | None = None, buffer_s: float = 300.0) -> None:
        self.wall_time_s = wall_time_s
        self.buffer_s = buffer_s
        self._start: float | None = None
        self._fired = False
        self._allocation_end: float | None = None
        self._allocation_checked = 0.0

    def _seconds_left(self) -> float | None:
        now = time.time()
        if self._start is None:
            self._start = now
        left = []
        if self.wall_time_s:
            left.append(self.wall_time_s - (now - self._start))
        if now - self._allocation_checked > 300 or self._allocation_end is None:
            alloc = iv.allocation_seconds_left()
            self._allocation_end = None if alloc is None else now + alloc
            self._allocation_checked = now
        if self._allocation_end is not None:
            left.append(self._allocation_end - now)
        return min(left) if left else None

    @staticmethod
    def _slowest_step_s(directory: str) -> float:
        path = Path(directory) / "OUTCAR"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 200_000))
                tail = fh.read().decode("utf-8", "replace")
        except OSError:
            return 0.0
        times = [float(x) for x in re.findall(r"LOOP\+.*real time\s*([\d.]+)", tail)]
        return max(times) if times else 0.0

    def check(self, directory: str = "./") -> bool:
        """True when the run should stop now (once per run)."""
        if self._fired:
            return False
        left = self._seconds_left()
        if left is None:
            return False
        return left < max(self.buffer_s, 3.0 * self._slowest_step_s(directory))

    def correct(self, directory: str = "./") -> dict[str, Any]:
        """Write the STOPCAR; no custodian restart (VASP ends the run cleanly)."""
        Path(directory, "STOPCAR").write_text("LSTOP = .TRUE.\n")
        self._fired = True
        return {"errors": ["Walltime reached: STOPCAR (LSTOP) written"], "actions": None}


# ------------------------------------------------------------------------ relax


@dataclass
class VaspRelaxMaker(RelaxMaker):
    """Relax ions + cell of the primitive cell with the seed-003 protocol (atomate2).

    Parameters
    ----------
    name
        Job name.
    incar_overrides
        ``vasp.incar`` of the campaign/material (top-level keys and ``RELAX: {...}``).
    primitive
        Relax the primitive cell (seed 003) instead of the structure as given.
    tag
        Stable job tag (job metadata ``ionflow_vasp_tag``; reference inputs).
    """

    name: str = "relax"
    incar_overrides: dict = field(default_factory=dict)
    primitive: bool = True
    tag: str = "relax"

    def prepare(self, structure):
        """The structure that is relaxed (the primitive cell when ``primitive``)."""
        return iv.primitive_cell(structure) if self.primitive else structure

    def input_set_generator_for(self, structure):
        """(atomate2 ``RelaxSetGenerator``, override record) for ``structure``."""
        from atomate2.vasp.sets.core import RelaxSetGenerator

        settings, record = iv.relax_incar(structure, self.incar_overrides)
        generator = RelaxSetGenerator(
            user_incar_settings=settings,
            **_SET_OPTIONS,
        )
        return generator, record

    @vasp_job
    def make(self, structure, prev_dir=None):
        """Run the relaxation (``prev_dir`` as in atomate2); output: a TaskDoc."""
        _tag_current_job(self.tag)
        structure = self.prepare(structure)
        generator, record = self.input_set_generator_for(structure)
        maker = replace(
            self,
            input_set_generator=generator,
            task_document_kwargs={
                **self.task_document_kwargs,
                "additional_fields": {"ionflow_vasp": _record(self.tag, "relax", record)},
            },
        )
        maker = _runtime_maker(maker, walltime_handler=False)
        return BaseVaspMaker.make.original(maker, structure, prev_dir)


def _tag_current_job(tag: str) -> None:
    """Put the stable tag in the running job's metadata (stored with its output)."""
    from jobflow import CURRENT_JOB

    if CURRENT_JOB.job is not None:
        CURRENT_JOB.job.metadata[TAG_KEY] = tag


def _record(tag: str, stage: str, overrides: dict, **extra: Any) -> dict:
    return {
        "tag": tag,
        "stage": stage,
        "protocol": iv.PROTOCOL_NAME,
        "incar_overrides": overrides,
        **extra,
    }


# --------------------------------------------------------------------- MD segment


@dataclass
class VaspMDSegmentMaker(MDMaker):
    """One NVT MD segment with the seed-003 protocol (atomate2 ``MDMaker``).

    The INCAR is built when the job runs (spin polarisation depends on the structure):
    :func:`ionflow.vasp.md_incar`, Γ-only KPOINTS, PBE_54 POTCARs. A run stopped early
    (walltime STOPCAR) is not an error here: ``handle_unsuccessful=False``.

    Parameters
    ----------
    name
        Job name.
    temperature_k, time_step_fs, nsteps
        TEBEG = TEEND, POTIM, NSW.
    incar_overrides
        ``vasp.incar`` (top-level keys and ``MD: {...}``).
    walltime_s
        Time budget of the segment for the walltime handler, s (None: allocation end only).
    tag
        Stable job tag.
    """

    name: str = "md segment"
    temperature_k: float = 600.0
    time_step_fs: float = 1.0
    nsteps: int = 1000
    incar_overrides: dict = field(default_factory=dict)
    walltime_s: float | None = None
    tag: str = "md_free_600K_s01"
    stop_children_kwargs: dict = field(default_factory=lambda: {"handle_unsuccessful": False})
    write_input_set_kwargs: dict = field(default_factory=lambda: {"from_prev": False})

    def input_set_generator_for(self, structure):
        """(atomate2 ``MDSetGenerator``, override record) for ``structure``."""
        from atomate2.vasp.sets.core import MDSetGenerator
        from pymatgen.io.vasp import Kpoints

        settings, record = iv.md_incar(
            structure, self.temperature_k, self.time_step_fs, self.nsteps, self.incar_overrides
        )
        generator = MDSetGenerator(
            ensemble="nvt",
            start_temp=float(self.temperature_k),
            end_temp=float(self.temperature_k),
            nsteps=int(self.nsteps),
            time_step=float(self.time_step_fs),
            user_incar_settings=settings,
            user_kpoints_settings=Kpoints.gamma_automatic((1, 1, 1)),
            **_SET_OPTIONS,
        )
        return generator, record

    @vasp_job
    def make(self, structure, prev_dir=None):
        """Run the segment from ``structure`` (velocities and selective dynamics are kept)."""
        _tag_current_job(self.tag)
        generator, record = self.input_set_generator_for(structure)
        maker = replace(
            self,
            input_set_generator=generator,
            task_document_kwargs={
                **self.task_document_kwargs,
                "additional_fields": {
                    "ionflow_vasp": _record(self.tag, "md", record, nsw=int(self.nsteps))
                },
            },
        )
        maker = _runtime_maker(maker, walltime_handler=True)
        return BaseVaspMaker.make.original(maker, structure, prev_dir)


# ---------------------------------------------------------------------- MD run


@job
def pin_structure(structure, fixed_indices: list[int] | None = None, label: str = ""):
    """``structure`` with selective dynamics ``F F F`` on ``fixed_indices`` (``T T T`` else);
    unchanged when there is nothing to fix. ``label`` (e.g. ``"pinned 600K"``) names a run
    that must pin something: an empty ``fixed_indices`` is then an error."""
    from ionflow.structure import with_selective_dynamics

    fixed = sorted({int(i) for i in (fixed_indices or [])})
    if label and not fixed:
        raise ValueError(f"{label}: the pinned MD has no atoms to pin")
    s = structure.copy()
    for key in ("velocities", "selective_dynamics"):
        if key in s.site_properties:
            s.remove_site_property(key)
    return with_selective_dynamics(s, fixed) if fixed else s


@dataclass
class VaspMDMaker(Maker):
    """VASP AIMD at one temperature (free or pinned) in walltime-safe segments.

    Same fields and output contract as :class:`ionflow.makers.md.MLMDMaker` (``engine`` is
    ``"vasp"``); see the module docstring for the flow.

    Parameters
    ----------
    name
        Base name of the jobs.
    engine
        Always ``"vasp"`` (label).
    temperature_k
        TEBEG = TEEND, K.
    time_step_fs
        POTIM, fs.
    equilibration_ps, production_ps
        Lengths, ps; equilibration frames are not stored.
    frame_interval_steps
        Steps between stored production frames.
    thermostat, seed
        Labels for the summary (VASP's Nosé thermostat: MDALGO = 2).
    variant
        "free" or "pinned" (pinning comes from ``fixed_indices``).
    campaign, material
        Labels of the stored trajectory.
    segment_steps
        Steps per segment (None: derived from ``walltime_s`` and ``seconds_per_step`` when
        both are set, else one segment — a walltime stop still splits it).
    walltime_s
        Time budget per segment job, s (walltime handler; the allocation end also counts).
    seconds_per_step
        Expected cost of one MD step, s (segment size from the walltime).
    incar_overrides
        ``vasp.incar`` of the campaign/material.
    max_continuations
        Most segments added at run time before the run is declared stuck.
    """

    name: str = "md"
    engine: str = "vasp"
    temperature_k: float = 600.0
    time_step_fs: float = 1.0
    equilibration_ps: float = 10.0
    production_ps: float = 60.0
    frame_interval_steps: int = 10
    thermostat: str = "nose-hoover"
    seed: int = 0
    variant: str = "free"
    campaign: str = "campaign"
    material: str = "material"
    segment_steps: int | None = None
    walltime_s: float | None = None
    seconds_per_step: float | None = None
    incar_overrides: dict = field(default_factory=dict)
    max_continuations: int = 100

    @property
    def tag(self) -> str:
        """Run label, e.g. ``pinned_800K``."""
        return f"{self.variant}_{run_label(self.temperature_k)}"

    def plan(self) -> iv.MDSegmentPlan:
        """The planned segments (:func:`ionflow.vasp.plan_md_segments`)."""
        return iv.plan_md_segments(
            self.time_step_fs,
            self.equilibration_ps,
            self.production_ps,
            self.frame_interval_steps,
            segment_steps=self.segment_steps,
            walltime_s=self.walltime_s,
            seconds_per_step=self.seconds_per_step,
        )

    def segment_maker(self, nsteps: int, segment: int) -> VaspMDSegmentMaker:
        """The atomate2 maker of segment number ``segment`` (1-based) with ``nsteps`` steps."""
        iv.check_md_overrides(self.incar_overrides)  # fail when the flow is built
        return VaspMDSegmentMaker(
            name=md_part_name(self.name, "segment", segment),
            temperature_k=float(self.temperature_k),
            time_step_fs=float(self.time_step_fs),
            nsteps=int(nsteps),
            incar_overrides=dict(self.incar_overrides),
            walltime_s=self.walltime_s,
            tag=md_segment_tag(self.variant, self.temperature_k, segment),
        )

    def _segments_flow(self, structure, makers, prev_dir=None, prev_traj_ids=None):
        from atomate2.vasp.flows.md import MultiMDMaker

        flow = MultiMDMaker(name=f"{self.name} segments", md_makers=makers).make(
            structure, prev_dir=prev_dir, prev_traj_ids=prev_traj_ids
        )
        seg_jobs = flow.jobs[:-1]
        for maker, seg_job in zip(makers, seg_jobs, strict=True):
            seg_job.name = maker.name
            seg_job.metadata[TAG_KEY] = maker.tag
        flow.jobs[-1].name = md_part_name(self.name, "segments-output")
        return flow, seg_jobs

    def make(self, structure, fixed_indices: list[int] | None = None) -> Flow:
        """The MD flow of ``structure`` (pinned on ``fixed_indices`` when given)."""
        plan = self.plan()
        label = f"{self.material} {self.variant} {run_label(self.temperature_k)}"
        pin = pin_structure(structure, fixed_indices, label if self.variant == "pinned" else "")
        pin.name = md_part_name(self.name, "pin")
        makers = [self.segment_maker(n, i) for i, n in enumerate(plan.segments, start=1)]
        segments, seg_jobs = self._segments_flow(pin.output, makers)
        collect = self.collect([j.output.dir_name for j in seg_jobs], segments.output.full_traj_ids)
        collect.name = md_part_name(self.name, "collect")
        return Flow([pin, segments, collect], output=collect.output, name=self.name)

    @job(config=JobConfig(expose_store=True))
    def collect(
        self,
        segment_dirs: list[str],
        traj_ids: list[str] | None = None,
        n_continuations: int = 0,
    ):
        """Continue the run with a new segment while steps remain; else store the frames.

        ``segment_dirs`` are the run directories of the segments so far (in order),
        ``traj_ids`` atomate2's trajectory job ids (``MultiMDOutput.full_traj_ids``),
        ``n_continuations`` how many segments were added at run time.
        """
        from jobflow import CURRENT_JOB

        plan = self.plan()
        dirs = [str(iv.strip_host(d)) for d in segment_dirs]
        counts = [iv.count_md_steps(d) for d in dirs]
        done = sum(counts)
        remaining = plan.total_steps - done
        if remaining > 0:
            if counts[-1] == 0:
                raise RuntimeError(
                    f"MD segment {len(dirs)} of {self.name} made no progress (0 ionic steps "
                    f"in {dirs[-1]}); see vasp.out and custodian.json there"
                )
            if n_continuations >= self.max_continuations:
                raise RuntimeError(
                    f"{self.name}: {remaining} steps still missing after {n_continuations} "
                    "added segments; raise max_continuations or the walltime"
                )
            structure = iv.read_contcar(dirs[-1])
            if structure is None:
                raise RuntimeError(f"{self.name}: no readable CONTCAR in {dirs[-1]}")
            nsw = min(plan.segment_steps or remaining, remaining)
            maker = self.segment_maker(nsw, len(dirs) + 1)
            segments, seg_jobs = self._segments_flow(
                structure, [maker], prev_dir=dirs[-1], prev_traj_ids=traj_ids
            )
            nxt = self.collect(
                [*dirs, seg_jobs[0].output.dir_name],
                segments.output.full_traj_ids,
                n_continuations + 1,
            )
            nxt.name = f"{self.name} collect"
            return Response(replace=Flow([segments, nxt], output=nxt.output))
        return self._store(dirs, traj_ids, n_continuations, getattr(CURRENT_JOB, "store", None))

    def _store(self, dirs, traj_ids, n_continuations, store) -> dict:
        from jobflow import CURRENT_JOB

        from ionflow.outputs import MDOutput
        from ionflow.trajectories import put_npz, write_npz

        plan = self.plan()
        chain = iv.chain_segments(
            dirs,
            plan.equilibration_steps,
            plan.frame_stride_steps,
            time_step_fs=self.time_step_fs,
            total_steps=plan.total_steps,
        )
        if chain.positions.shape[0] == 0:
            raise RuntimeError(f"{self.name}: no production frames in {dirs}")
        npz = write_npz(
            Path.cwd() / "production.npz",
            chain.positions,
            chain.lattice,
            chain.species,
            chain.frame_interval_fs,
            self.temperature_k,
            chain.fixed_atoms,
        )
        ref = put_npz(
            store,
            npz,
            {
                "campaign": self.campaign,
                "material": self.material,
                "variant": self.variant,
                "temperature_k": self.temperature_k,
                "engine": "vasp",
                "job_uuid": CURRENT_JOB.job.uuid if CURRENT_JOB.job else None,
            },
        )
        temps = [iv.read_md_temperatures(d) for d in dirs]
        prod_t = iv.production_mean(temps, plan.equilibration_steps)
        fixed = (
            [] if chain.fixed_atoms is None else [int(i) for i in chain.fixed_atoms.nonzero()[0]]
        )
        _, overrides = iv.md_incar(
            _composition_stub(chain.species),
            self.temperature_k,
            self.time_step_fs,
            plan.segments[0],
            self.incar_overrides,
        )
        segments = [
            {"dir": d, "steps": c, "tag": md_segment_tag(self.variant, self.temperature_k, i)}
            for i, (d, c) in enumerate(zip(dirs, chain.steps_per_segment, strict=True), start=1)
        ]
        return MDOutput(
            campaign=self.campaign,
            material=self.material,
            variant=self.variant,
            temperature_k=self.temperature_k,
            engine="vasp",
            potential={"engine": "vasp", "potential": "VASP"},  # DFT: no model file
            workdir=str(Path.cwd()),
            trajectory=ref,
            fixed_indices=fixed,
            segments=segments,
            # production actually run (md.target reads it; an extension adds segments)
            production_ps=(chain.steps_done - plan.equilibration_steps) * self.time_step_fs / 1e3,
            compute=_vasp_compute(dirs, len(chain.species), chain.steps_done),
            md={
                "steps_done": chain.steps_done,
                "total_steps": plan.total_steps,
                "equilibration_steps": plan.equilibration_steps,
                "production_steps": plan.production_steps,
                "n_production_frames": int(chain.positions.shape[0]),
                "frame_interval_fs": chain.frame_interval_fs,
                "time_step_fs": self.time_step_fs,
                "planned_segments": list(plan.segments),
                "segments_run": len(dirs),
                "segments_added": n_continuations,
                "duplicate_frames_dropped": chain.duplicates_dropped,
                "mean_temperature_k": prod_t,
                "n_fixed_atoms": len(fixed),
            },
            vasp={
                "protocol": iv.PROTOCOL_NAME,
                "incar_overrides": overrides,
                "traj_ids": list(traj_ids or []),
            },
        ).to_output()


def _vasp_compute(dirs: list[str], n_atoms: int, steps_done: int) -> dict:
    """The run's compute over its segments (:func:`ionflow.vasp.segment_compute`): VASP's
    elapsed time × the cores it ran on; a segment without timing (killed) is counted in
    ``segments_untimed``, not guessed."""
    wall = core_s = 0.0
    untimed = 0
    for d in dirs:
        elapsed, cores = iv.segment_compute(d)
        if elapsed is None:
            untimed += 1
            continue
        wall += elapsed
        core_s += elapsed * (cores or 1)
    return {
        "wall_s": wall,
        "core_hours": core_s / 3600.0,
        "gpu_hours": 0.0,
        "calls": len(dirs),
        "atom_steps": n_atoms * steps_done,
        "segments_untimed": untimed,
    }


def _composition_stub(species: list[str]):
    """A tiny object with ``composition.elements`` (spin settings need only the elements)."""
    from pymatgen.core import Composition

    class _Stub:
        composition = Composition({s: species.count(s) for s in dict.fromkeys(species)})

    return _Stub()


# ------------------------------------------------------------ campaign integration


def vasp_start(spec, mat) -> tuple[Any, list[int]]:
    """(structure the flow of ``mat`` starts from, its pinned site indices) for a VASP relax.

    VASP relaxes the primitive cell (seed 003), so the flow starts from the primitive cell
    of the input structure, and the pinned sites are re-derived on it (input-cell indices do
    not apply to it).
    """
    from ionflow.structure import pinned_indices

    prim = iv.primitive_cell(mat.structure)
    if not mat.has_pinned_control:
        return prim, []
    pinned, _ = pinned_indices(prim, spec.mobile_species, mat.md.pinned_control_arg)
    return prim, [int(i) for i in pinned]


def vasp_relax_maker(spec, mat) -> VaspRelaxMaker:
    """The relaxation maker of ``mat`` (``engine.relax: vasp``)."""
    return VaspRelaxMaker(incar_overrides=dict(mat.vasp_incar))


def vasp_md_maker(spec, mat) -> VaspMDMaker:
    """The MD maker of ``mat`` (``engine.md: vasp``) from its merged ``md`` settings.

    ``IONFLOW_VASP_WALLTIME_S`` / ``IONFLOW_VASP_SECONDS_PER_STEP`` (when both are set and
    ``md.segment_steps`` is not) size the segments to fit one allocation.
    """
    md = mat.md
    walltime_s, seconds_per_step = iv.segment_sizing_from_env()
    maker = VaspMDMaker(
        campaign=spec.campaign,
        material=mat.name,
        time_step_fs=md.time_step_fs,
        equilibration_ps=md.equilibration_ps,
        production_ps=md.production_ps,
        frame_interval_steps=md.frame_stride_steps,
        thermostat=md.thermostat,
        segment_steps=md.segment_steps,
        walltime_s=walltime_s,
        seconds_per_step=seconds_per_step,
        incar_overrides=dict(mat.vasp_incar),
    )
    maker.plan()  # report bad settings when the campaign is planned
    iv.check_md_overrides(maker.incar_overrides)
    return maker


@dataclass
class PlannedVaspJob:
    """One VASP job of a campaign, with its inputs (for ``ionflow inputs``)."""

    tag: str
    stage: str  # "relax" | "md"
    structure: Any  # the structure the inputs are generated for
    generator: Any
    overrides: dict
    poscar: bool = True  # False: the POSCAR is the previous segment's CONTCAR
    note: str = ""
    info: dict = field(default_factory=dict)

    def write(self, directory: str | Path) -> Path:
        """Write INCAR, KPOINTS, POTCAR.spec (+ POSCAR, or a ``POSCAR.from`` note) into
        ``directory`` the way atomate2 writes them (no POTCAR files needed)."""
        from atomate2.vasp.files import write_vasp_input_set

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_vasp_input_set(
            self.structure, self.generator, directory=directory, potcar_spec=True, clean_prev=False
        )
        if not self.poscar:
            (directory / "POSCAR").unlink(missing_ok=True)
            (directory / "POSCAR.from").write_text(self.note + "\n")
        return directory


def planned_vasp_jobs(spec, mat) -> list[PlannedVaspJob]:
    """Every VASP job the campaign runs for ``mat``, with the generator of its inputs: the
    VASP relaxation and MD segments of its plan (:func:`ionflow.plan.plan_material`), in
    flow order.

    The relaxation (``engine.relax: vasp``) is planned on the primitive input cell, the MD
    (``engine.md: vasp``) on the supercell of that cell (the relaxed cell is not known before
    running), pinned as the supercell job would pin it. MD segments after the first start
    from the previous CONTCAR: they have no POSCAR of their own (``poscar=False``).
    """
    from ionflow.structure import make_supercell, pinned_indices, with_selective_dynamics

    plan = plan_material(spec, mat)
    jobs: list[PlannedVaspJob] = []
    start = mat.structure
    if plan.engine_relax == "vasp":
        relax = vasp_relax_maker(spec, mat)
        start = relax.prepare(mat.structure)
        generator, record = relax.input_set_generator_for(start)
        jobs.append(
            PlannedVaspJob(
                relax.tag, "relax", start, generator, record, info={"n_atoms": len(start)}
            )
        )
    if plan.engine_md != "vasp":
        return jobs
    md = vasp_md_maker(spec, mat)
    sc, matrix = make_supercell(start, mat.md.supercell_min_length_a)
    pinned: list[int] = []
    structures = {"free": sc}
    if "pinned" in plan.variants:
        pinned, _ = pinned_indices(sc, spec.mobile_species, mat.md.pinned_control_arg)
        structures["pinned"] = with_selective_dynamics(sc, pinned)
    for planned in plan.jobs:
        if planned.part != "segment":
            continue
        variant, t, i, nsw = planned.variant, planned.temperature_k, planned.segment, planned.nsteps
        structure = structures[variant]
        seg = replace(md, temperature_k=t, variant=variant).segment_maker(nsw, i)
        generator, record = seg.input_set_generator_for(structure)
        jobs.append(
            PlannedVaspJob(
                seg.tag,
                "md",
                structure,
                generator,
                record,
                poscar=i == 1,
                note=""
                if i == 1
                else f"POSCAR = CONTCAR of {md_segment_tag(variant, t, i - 1)} "
                "(positions + velocities)",
                info={
                    "n_atoms": len(structure),
                    "n_pinned": len(pinned) if variant == "pinned" else 0,
                    "supercell_matrix": [[int(x) for x in row] for row in matrix],
                    "nsw": nsw,
                },
            )
        )
    return jobs
