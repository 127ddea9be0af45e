"""Precision-targeted campaigns: the decision rules (pure).

A campaign with ``md.target`` does not guess how long to run: after each chunk of MD the
analysis result of every run and the Arrhenius fit of the material decide what to do
next. This module holds those rules and nothing else — plain data in, plain decisions and
readable lines out; no jobflow, FireWorks or database import. The jobs that act on the
decisions are :class:`ionflow.makers.analysis.ArrheniusMaker` (the per-variant controller)
and :class:`ionflow.makers.md.MLMDMaker` (``extend_to_ps``: the same run directory,
continued from its checkpoint).

Per run (:func:`decide_run`)
    ``diffusive`` with err(D*)/D* ≤ ``diffusivity_rel_err`` → done (target met);
    ``diffusive`` above the target, ``subdiffusive``, ``insufficient`` or ``caged`` below
    ``max_production_ps`` → extend by ``extend_ps`` (capped at the maximum); at the
    maximum → done with the verdict it has (target not met).

Per material (:func:`decide_material`), one round at a time
    1. the runs' own decisions (extensions) — with two economies of the material rule: of
       the runs without D only the hottest is extended (a colder one cannot give D before
       it does), and once 3 temperatures give D runs without D are no longer extended
       (they add nothing to the fit); the pinned control (``add_temperatures=False``)
       follows the per-run rule alone, since "caged at the maximum" is its answer, and adds
       the free variant's temperatures it lacks (``follow_temperatures``: the temperatures
       the free controller added), so that free and pinned compare at every temperature;
    2. fewer than 3 temperatures give D, counting the insufficient/subdiffusive runs
       extended this round (they may still give it: adding in parallel would spend
       core-hours to save a round; a caged run is not counted on)
       → add a higher temperature (``max(T) + step``,
       step = max(100 K, the ladder's smallest spacing), ≤ ``max_temperature_k``) while
       fewer than ``max_temperatures`` exist;
    3. ≥ 3 temperatures give D, no run extension pending, and the 68 % interval of
       σ(300 K) is wider than ×/÷ ``sigma_at_t_factor`` (or σ(300 K) is not quoted) →
       one step chosen by expected gain per core-hour (the model below): extend one
       diffusive run by ``extend_ps``, or add one temperature;
    4. budget (per material, both variants): actions are kept in order while spent +
       expected ≤ ``budget_core_hours``; the rest are dropped with a line saying so. The
       free controller decides first; it counts the pinned control's starting runs as
       committed (their first chunks, costed like the free runs at the same temperatures:
       the same force calls), and the pinned controller, which runs after it, counts what
       the free variant actually spent (``spent_core_hours``).
    The material is done when a round has no action.

The gain model (step 3)
    The weighted least-squares Arrhenius fit in (1/T, ln D) with point variances
    s_i² = (err_i/D_i)² gives var ln D(300 K) = xᵀ(XᵀWX)⁻¹x with x = (1, 1/300).
    Extending run i by Δ ps scales s_i by √(p_i/(p_i + Δ)) (err ∝ 1/√(time), the N_eff
    scaling of He et al. 2018); adding a temperature T adds a point whose s is the
    precision of the nearest diffusive run moved to T and to the first chunk's length
    (err ∝ 1/√(D·time), D(T) from the current line; candidates every 50 K from 200 K below
    the lowest temperature to ``max_temperature_k``, ≥ 100 K from every run). The
    expected gain of a step is the drop of var ln D(300 K); its cost is the run's measured
    core-hours per ps times the ps it adds (for a new temperature: the nearest run's cost
    per ps × the first chunk). The step with the largest gain per core-hour is taken.
    The model decides only what to try; the stop uses the real fit's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Action",
    "MaterialDecision",
    "RunDecision",
    "RunState",
    "Target",
    "decide_material",
    "decide_run",
    "extension_line",
    "first_chunks_core_hours",
    "sigma_factor",
]

#: Temperatures that give D below which a higher temperature is added (step 2).
MIN_TEMPERATURES_WITH_D = 3
#: Smallest spacing between an added temperature and every other one, K.
MIN_STEP_K = 100.0
#: Grid of candidate temperatures for step 3, K.
CANDIDATE_GRID_K = 50.0
#: How far below the lowest temperature step 3 may add one, K.
LOWER_REACH_K = 200.0
#: Default headroom above the starting ladder for added temperatures, K.
DEFAULT_HEADROOM_K = 300.0
#: Relative tolerance on lengths (ps) compared with the maximum.
_PS_TOL = 1e-6


@dataclass(frozen=True)
class Target:
    """The precision target of a campaign (``md.target`` of workflows.yaml).

    Parameters
    ----------
    diffusivity_rel_err
        Per run: extend until err(D*)/D* ≤ this.
    extend_ps
        Production added per extension, ps.
    max_production_ps
        Longest production of one run, ps.
    sigma_at_t_factor
        Per material: the 68 % interval of σ(300 K) within ×/÷ this (None: no σ target;
        the material only needs 3 temperatures that give D).
    max_temperatures
        Most temperatures per material (starting ladder included).
    budget_core_hours
        Most core-hours of a material's MD, free and pinned together (None: no budget).
    max_temperature_k
        Highest temperature that may be added, K (None: the highest temperature so far
        + 300 K).
    first_chunk_ps
        Production of a new run's first chunk, ps (the spec's ``production_ps``).
    """

    diffusivity_rel_err: float = 0.15
    extend_ps: float = 20.0
    max_production_ps: float = 200.0
    sigma_at_t_factor: float | None = None
    max_temperatures: int = 6
    budget_core_hours: float | None = None
    max_temperature_k: float | None = None
    first_chunk_ps: float = 20.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Target:
        """A target from a plain mapping (the spec's dump; unknown keys ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RunState:
    """What the analysis of one run says after its latest chunk.

    Parameters
    ----------
    temperature_k
        Temperature, K.
    regime
        diffusive | subdiffusive | caged | insufficient.
    production_ps
        Production actually run so far, ps.
    diffusivity_cm2_s, diffusivity_err_cm2_s
        D* and its 1σ (None unless diffusive).
    core_hours
        Compute spent on the run so far (all chunks), core-hours.
    """

    temperature_k: float
    regime: str
    production_ps: float
    diffusivity_cm2_s: float | None = None
    diffusivity_err_cm2_s: float | None = None
    core_hours: float = 0.0

    @property
    def has_d(self) -> bool:
        """Diffusive with a positive D."""
        return self.regime == "diffusive" and (self.diffusivity_cm2_s or 0.0) > 0.0

    @property
    def rel_err(self) -> float | None:
        """err(D*)/D*, or None without D or error."""
        if not self.has_d or self.diffusivity_err_cm2_s is None:
            return None
        return float(self.diffusivity_err_cm2_s) / float(self.diffusivity_cm2_s)

    @property
    def core_hours_per_ps(self) -> float | None:
        """Measured cost of one ps of this run (None before any is measured)."""
        if self.production_ps > 0 and self.core_hours > 0:
            return self.core_hours / self.production_ps
        return None


@dataclass(frozen=True)
class RunDecision:
    """The per-run rule's verdict on one run."""

    temperature_k: float
    action: Literal["done", "extend"]
    production_ps: float
    to_ps: float | None
    target_met: bool
    line: str


@dataclass(frozen=True)
class Action:
    """One step a round takes: extend a run to ``to_ps``, or add a temperature."""

    kind: Literal["extend", "add"]
    temperature_k: float
    to_ps: float
    expected_core_hours: float
    line: str


@dataclass(frozen=True)
class MaterialDecision:
    """One round of the per-material rule."""

    actions: tuple[Action, ...]
    lines: tuple[str, ...]
    target_met: bool
    spent_core_hours: float
    run_decisions: tuple[RunDecision, ...] = field(default=())

    @property
    def done(self) -> bool:
        """No action: the material's MD is finished."""
        return not self.actions


def _ps(x: float) -> str:
    return f"{x:g}"


def _t(x: float) -> str:
    return f"{x:g} K"


def decide_run(run: RunState, target: Target) -> RunDecision:
    """The per-run rule (see the module docstring)."""
    t, p = run.temperature_k, run.production_ps
    rel = run.rel_err
    if rel is not None and rel <= target.diffusivity_rel_err:
        line = f"{_t(t)} done at {_ps(p)} ps: err {rel:.2f} ≤ {target.diffusivity_rel_err:g}"
        return RunDecision(t, "done", p, None, True, line)
    state = f"err {rel:.2f}" if rel is not None else run.regime
    if p >= target.max_production_ps * (1 - _PS_TOL):
        line = f"{_t(t)} stopped at the maximum {_ps(target.max_production_ps)} ps: {state}"
        return RunDecision(t, "done", p, None, False, line)
    to = min(p + target.extend_ps, target.max_production_ps)
    line = f"{_t(t)} to extend {_ps(p)} → {_ps(to)} ps: {state}"
    return RunDecision(t, "extend", p, to, False, line)


def extension_line(before: RunState, after: RunState) -> str:
    """The readable line of a finished extension: ``1000 K extended 20 → 40 ps: err
    0.22 → 0.13`` (a regime where there is no error yet)."""

    def state(r: RunState) -> str:
        return f"err {r.rel_err:.2f}" if r.rel_err is not None else r.regime

    change = f"{state(before)} → {state(after)}"
    if before.rel_err is not None and after.rel_err is not None:
        change = f"err {before.rel_err:.2f} → {after.rel_err:.2f}"
    return (
        f"{_t(after.temperature_k)} extended {_ps(before.production_ps)} → "
        f"{_ps(after.production_ps)} ps: {change}"
    )


def sigma_factor(interval: Sequence[float] | None) -> float | None:
    """×/÷ width of a 68 % interval (lo, hi): √(hi/lo); None without an interval."""
    if not interval or len(interval) != 2:
        return None
    lo, hi = float(interval[0]), float(interval[1])
    if not (lo > 0 and hi >= lo and math.isfinite(hi)):
        return None
    return math.sqrt(hi / lo)


# ---------------------------------------------------------------- the gain model


def var_ln_d_at(
    temperatures_k: Sequence[float], rel_errs: Sequence[float], at_temperature_k: float = 300.0
) -> float:
    """var ln D(T*) of the weighted Arrhenius fit with point variances ``rel_errs²``
    (inf with fewer than 2 distinct temperatures)."""
    t = np.asarray(temperatures_k, dtype=float)
    s = np.asarray(rel_errs, dtype=float)
    if len(np.unique(t)) < 2:
        return math.inf
    x = np.column_stack([np.ones_like(t), 1.0 / t])
    w = 1.0 / np.maximum(s, 1e-12) ** 2
    try:
        cov = np.linalg.inv(x.T @ (x * w[:, None]))
    except np.linalg.LinAlgError:
        return math.inf
    v = np.array([1.0, 1.0 / at_temperature_k])
    return float(v @ cov @ v)


def _unit_cost(runs: Sequence[RunState], t: float) -> float:
    """Core-hours per ps at temperature ``t``: the nearest run with a measured cost (0 when
    nothing is measured)."""
    known = [r for r in runs if r.core_hours_per_ps is not None]
    if not known:
        return 0.0
    return min(known, key=lambda r: abs(r.temperature_k - t)).core_hours_per_ps or 0.0


def first_chunks_core_hours(
    runs: Sequence[RunState], temperatures_k: Sequence[float], target: Target
) -> float:
    """Expected compute of first chunks at ``temperatures_k`` (e.g. the pinned control's
    starting runs, counted by the free controller), each costed like the nearest measured
    run (same cell, same force calls), core-hours."""
    return float(sum(_unit_cost(runs, t) * target.first_chunk_ps for t in temperatures_k))


def _ln_d_line(runs: Sequence[RunState]) -> tuple[float, float]:
    """Weighted line ln D = intercept + slope/T through the runs with D."""
    t = np.array([r.temperature_k for r in runs], dtype=float)
    y = np.log([float(r.diffusivity_cm2_s) for r in runs])
    w = 1.0 / np.maximum([r.rel_err or 1.0 for r in runs], 1e-6) ** 2
    if len(np.unique(t)) < 2:
        return 0.0, float(y.mean())
    x = np.column_stack([np.ones_like(t), 1.0 / t])
    beta = np.linalg.solve(x.T @ (x * w[:, None]), x.T @ (w * y))
    return float(beta[1]), float(beta[0])


def _best_step(runs: Sequence[RunState], target: Target, max_t: float) -> Action | None:
    """Step 3: the extension or addition with the largest expected gain per core-hour."""
    dif = [r for r in runs if r.has_d and r.rel_err is not None]
    temps = [r.temperature_k for r in dif]
    errs = [max(r.rel_err or 0.0, 1e-6) for r in dif]
    base = var_ln_d_at(temps, errs)
    options: list[tuple[float, Action]] = []
    for i, r in enumerate(dif):
        if r.production_ps >= target.max_production_ps * (1 - _PS_TOL):
            continue
        to = min(r.production_ps + target.extend_ps, target.max_production_ps)
        new = list(errs)
        new[i] = errs[i] * math.sqrt(r.production_ps / to)
        gain = base - var_ln_d_at(temps, new)
        cost = _unit_cost(runs, r.temperature_k) * (to - r.production_ps)
        line = f"{_t(r.temperature_k)} to extend {_ps(r.production_ps)} → {_ps(to)} ps"
        options.append((gain, Action("extend", r.temperature_k, to, cost, line)))
    if len(runs) < target.max_temperatures and dif:
        existing = [r.temperature_k for r in runs]
        lo = max(min(existing) - LOWER_REACH_K, CANDIDATE_GRID_K)
        grid = np.arange(lo, max_t + 1e-9, CANDIDATE_GRID_K)
        slope, intercept = _ln_d_line(dif)
        for t in grid:
            t = float(t)
            if min(abs(t - e) for e in existing) < MIN_STEP_K - 1e-9:
                continue
            near = min(dif, key=lambda r: abs(r.temperature_k - t))
            # err ∝ 1/√(N_eff) ∝ 1/√(D·time): the nearest run's precision moved to D(T)
            d_ratio = math.exp(
                slope * (1.0 / t - 1.0 / near.temperature_k)
            )  # D(t)/D(near) on the current line
            s_new = (near.rel_err or 1.0) * math.sqrt(
                near.production_ps / target.first_chunk_ps / max(d_ratio, 1e-12)
            )
            gain = base - var_ln_d_at([*temps, t], [*errs, s_new])
            cost = _unit_cost(runs, t) * target.first_chunk_ps
            line = f"added {_t(t)}: σ(300 K) interval too wide"
            options.append((gain, Action("add", t, target.first_chunk_ps, cost, line)))
    if not options:
        return None

    def merit(item: tuple[float, Action]) -> float:
        gain, act = item
        if not math.isfinite(gain):
            gain = 1e300
        return gain / act.expected_core_hours if act.expected_core_hours > 0 else gain * 1e12

    gain, best = max(options, key=merit)
    return best if gain > 0 else None


# ---------------------------------------------------------------- the material rule


def decide_material(
    runs: Sequence[RunState],
    target: Target,
    sigma_interval: Sequence[float] | None = None,
    *,
    spent_core_hours: float | None = None,
    add_temperatures: bool = True,
    follow_temperatures: Sequence[float] = (),
) -> MaterialDecision:
    """One round of the per-material rule (see the module docstring).

    Parameters
    ----------
    runs
        The state of every run of the variant after its latest chunk.
    target
        The precision target.
    sigma_interval
        The 68 % interval of σ(300 K) of the current fit (None when not quoted).
    spent_core_hours
        Compute spent so far (default: the runs' sum).
    add_temperatures
        False: only the per-run rule (e.g. the pinned control, which follows the free
        variant's temperatures).
    follow_temperatures
        Temperatures this variant must have (the pinned control: the free variant's);
        those it lacks are added, budget permitting.

    Returns
    -------
    MaterialDecision
        The actions of this round (none: done), the lines to record, and whether the
        target is met.
    """
    runs = sorted(runs, key=lambda r: r.temperature_k)
    spent = float(sum(r.core_hours for r in runs) if spent_core_hours is None else spent_core_hours)
    decisions = tuple(decide_run(r, target) for r in runs)
    by_t = {r.temperature_k: r for r in runs}
    lines: list[str] = []
    actions: list[Action] = []
    n_d = sum(r.has_d for r in runs)
    factor = sigma_factor(sigma_interval)
    if target.sigma_at_t_factor is not None and add_temperatures:
        sigma_met = factor is not None and factor <= target.sigma_at_t_factor
    else:
        sigma_met = n_d >= MIN_TEMPERATURES_WITH_D or not add_temperatures
    runs_met = all(d.target_met for d in decisions if by_t[d.temperature_k].has_d)
    no_d = [d.temperature_k for d in decisions if d.action == "extend"]
    no_d = [t for t in no_d if not by_t[t].has_d]
    hottest_no_d = max(no_d, default=None)
    for d in decisions:
        if d.action != "extend":
            continue
        run = by_t[d.temperature_k]
        if add_temperatures and not run.has_d and n_d >= MIN_TEMPERATURES_WITH_D:
            why = "the material's target is met" if sigma_met else (f"{n_d} temperatures give D")
            lines.append(
                f"{_t(d.temperature_k)} left at {_ps(d.production_ps)} ps ({run.regime}): "
                f"not needed, {why}"
            )
            continue
        if add_temperatures and not run.has_d and d.temperature_k != hottest_no_d:
            lines.append(
                f"{_t(d.temperature_k)} left at {_ps(d.production_ps)} ps ({run.regime}): "
                f"{_t(hottest_no_d)} has no D yet either"
            )
            continue
        cost = _unit_cost(runs, d.temperature_k) * (d.to_ps - d.production_ps)
        actions.append(Action("extend", d.temperature_k, d.to_ps, cost, d.line))
    for t in sorted({float(x) for x in follow_temperatures} - set(by_t)):
        cost = _unit_cost(runs, t) * target.first_chunk_ps
        line = f"added {_t(t)}: a temperature of the free variant (pinned comparison)"
        actions.append(Action("add", t, target.first_chunk_ps, cost, line))
    max_t = target.max_temperature_k
    if max_t is None:
        max_t = max(by_t) + DEFAULT_HEADROOM_K
    # insufficient/subdiffusive runs extended this round may still give D: add only what
    # they cannot (a caged run — an MSD plateau — is not counted on)
    pending_no_d = sum(
        1
        for a in actions
        if a.kind == "extend"
        and not by_t[a.temperature_k].has_d
        and by_t[a.temperature_k].regime in ("insufficient", "subdiffusive")
    )
    if add_temperatures and n_d + pending_no_d < MIN_TEMPERATURES_WITH_D:
        temps = sorted(by_t)
        spacing = min((b - a for a, b in zip(temps, temps[1:], strict=False)), default=MIN_STEP_K)
        new_t = temps[-1] + max(MIN_STEP_K, spacing)
        without = [r for r in runs if not r.has_d]
        regimes = sorted({r.regime for r in without})
        what = regimes[0] if len(regimes) == 1 else "without D"
        if len(runs) >= target.max_temperatures:
            lines.append(
                f"no temperature added: {len(runs)} of at most {target.max_temperatures} "
                f"already ({n_d} give D)"
            )
        elif new_t > max_t + 1e-9:
            lines.append(
                f"no temperature added: {_t(new_t)} would exceed the maximum {_t(max_t)} "
                f"({n_d} give D)"
            )
        else:
            cost = _unit_cost(runs, new_t) * target.first_chunk_ps
            line = f"added {_t(new_t)}: {len(without)} of {len(runs)} runs {what}"
            actions.append(Action("add", new_t, target.first_chunk_ps, cost, line))
    elif (
        add_temperatures and target.sigma_at_t_factor is not None and not sigma_met and not actions
    ):
        step = _best_step(runs, target, max_t)
        if step is None:
            lines.append("σ(300 K) interval too wide, but no step left (maximum length/count)")
        else:
            wide = f"×/÷{factor:.2g}" if factor is not None else "not quoted"
            if step.kind == "extend":
                line = f"{step.line}: σ(300 K) {wide}, target ×/÷{target.sigma_at_t_factor:g}"
            else:
                line = f"added {_t(step.temperature_k)}: σ(300 K) {wide}, target ×/÷" + (
                    f"{target.sigma_at_t_factor:g}"
                )
            actions.append(
                Action(step.kind, step.temperature_k, step.to_ps, step.expected_core_hours, line)
            )
    kept: list[Action] = []
    if target.budget_core_hours is not None:
        planned = spent
        for act in actions:
            if planned + act.expected_core_hours > target.budget_core_hours + 1e-12:
                lines.append(
                    f"stop: budget {target.budget_core_hours:g} core-h — spent {spent:.3g}, "
                    f"{act.line.split(':')[0]} needs ~{act.expected_core_hours:.3g} more"
                )
                continue
            planned += act.expected_core_hours
            kept.append(act)
    else:
        kept = actions
    if target.sigma_at_t_factor is not None and add_temperatures:
        met = sigma_met and runs_met
    else:
        met = runs_met and (n_d >= MIN_TEMPERATURES_WITH_D or not add_temperatures)
    if not kept:
        if met:
            what = (
                f"σ(300 K) within ×/÷{factor:.2g} (target ×/÷{target.sigma_at_t_factor:g})"
                if target.sigma_at_t_factor is not None and factor is not None
                else "every run with D within its error target"
            )
            lines.append(f"target met: {what}")
        else:
            lines.append(f"done without meeting the target ({n_d} temperatures give D)")
    return MaterialDecision(tuple(kept), tuple(lines), met, spent, decisions)


# ---------------------------------------------------------------- compute accounting

#: File in an MD run directory recording the compute of every call of its job.
COMPUTE_NAME = "compute.json"


def allocated_cores(env: Mapping[str, str] | None = None) -> int:
    """CPU cores this process may use: Slurm's allocation (``SLURM_CPUS_PER_TASK``, else
    ``SLURM_CPUS_ON_NODE``), else the CPU affinity mask, else ``os.cpu_count()``."""
    import os

    env = os.environ if env is None else env
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = str(env.get(name, "")).strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def allocated_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs visible to this process (``CUDA_VISIBLE_DEVICES``, else ``SLURM_GPUS_ON_NODE``;
    0 when neither says)."""
    import os

    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [x for x in str(cvd).split(",") if x.strip() and x.strip() != "-1"]
        return len(ids)
    value = str(env.get("SLURM_GPUS_ON_NODE", "")).strip()
    return int(value) if value.isdigit() else 0


class ComputeLog:
    """The compute of one MD run directory, over every call of its job (kills included).

    Each call appends an entry ``{wall_s, cores, gpus}`` to ``compute.json`` and
    :meth:`tick` rewrites it (atomically) as the call goes on, so a killed worker loses at
    most the time since its last tick. :meth:`totals` sums the entries.
    """

    def __init__(self, workdir: Any, cores: int | None = None, gpus: int | None = None):
        import time
        from pathlib import Path

        self.path = Path(workdir) / COMPUTE_NAME
        self.entries = self._read()
        self.start = time.monotonic()
        self.entry = {
            "wall_s": 0.0,
            "cores": int(cores or allocated_cores()),
            "gpus": int(allocated_gpus() if gpus is None else gpus),
        }
        self.entries.append(self.entry)

    def _read(self) -> list[dict[str, Any]]:
        import json

        try:
            data = json.loads(self.path.read_text())
            return [e for e in data.get("calls", []) if isinstance(e, dict)]
        except (OSError, ValueError, AttributeError):
            return []

    def tick(self) -> None:
        """Record the time of this call so far."""
        import json
        import os
        import time

        self.entry["wall_s"] = time.monotonic() - self.start
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"calls": self.entries}))
        os.replace(tmp, self.path)

    def totals(self) -> dict[str, float]:
        """``wall_s``, ``core_hours``, ``gpu_hours`` and ``calls`` over every call."""
        wall = sum(float(e.get("wall_s", 0.0)) for e in self.entries)
        core_h = sum(float(e.get("wall_s", 0.0)) * int(e.get("cores", 1)) for e in self.entries)
        gpu_h = sum(float(e.get("wall_s", 0.0)) * int(e.get("gpus", 0)) for e in self.entries)
        return {
            "wall_s": wall,
            "core_hours": core_h / 3600.0,
            "gpu_hours": gpu_h / 3600.0,
            "calls": len(self.entries),
        }
