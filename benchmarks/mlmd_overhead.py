"""Overhead of ionflow's streaming, restartable MD versus a bare ASE MD loop.

Two measurements:

1. **Wall time** (CHGNet): :func:`ionflow.md.run_md` (Nosé-Hoover chain, frames appended
   to ``production.traj`` every ``--frame-interval`` steps, ``checkpoint.npz`` every
   ``--checkpoint-interval`` steps) versus a bare ASE ``NoseHooverChainNVT`` loop that,
   like atomate2's ``ForceFieldMDMaker``, keeps its frames (positions, cell, momenta,
   forces, stress, energy) in RAM and writes them to a ``.traj`` at the end. Same
   calculator instance (the CHGNet model is loaded once), same structure (an
   antifluorite Li2O supercell), same time step, thermostat time and number of steps;
   one warm-up calculation first; the order of the two alternates between repeats.
   Target: ratio ionflow / bare <= 1.05.
2. **Memory growth** (toy Morse potential, many frames, 64 atoms): resident set size
   (psutil, after glibc ``malloc_trim(0)`` so that freed-but-retained heap does not
   count) sampled during a long run with a frame every step, each loop in a fresh
   process; the growth per 1,000 frames is the slope of a straight-line fit after the
   first 10 % of the frames, the peak growth is the largest RSS minus the RSS at that
   point. Same for the bare loop for contrast. Target for ionflow: about flat.

Run::

    .venv/bin/python benchmarks/mlmd_overhead.py                       # 96 atoms, 200 steps
    .venv/bin/python benchmarks/mlmd_overhead.py --atoms 24 --steps 40 --growth-steps 5000
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
from ase import Atoms, units
from ase.build import bulk
from ase.io.trajectory import Trajectory
from ase.md.nose_hoover_chain import NoseHooverChainNVT

from ionflow.md import MDSettings, run_md
from ionflow.potentials import get_calculator

_PROC = psutil.Process()


def li2o_supercell(n_atoms: int) -> Atoms:
    """Antifluorite Li2O (a = 4.61 Å, 12 atoms per cubic cell) with about ``n_atoms`` atoms."""
    unit = bulk("OLi2", "fluorite", a=4.61, cubic=True)
    best = min(
        ((i, j, k) for i in range(1, 5) for j in range(1, 5) for k in range(1, 5) if i >= j >= k),
        key=lambda r: (abs(12 * r[0] * r[1] * r[2] - n_atoms), r[0] - r[2]),
    )
    return unit.repeat(best)


def initial_momenta(atoms: Atoms, temperature_k: float, seed: int) -> np.ndarray:
    """Maxwell-Boltzmann momenta, zero total momentum, rescaled to T over 3N - 3 DOF."""
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_k)
    p -= masses * p.sum(axis=0) / masses.sum()
    ekin = 0.5 * np.sum(p**2 / masses)
    return p * np.sqrt(0.5 * (3 * len(atoms) - 3) * units.kB * temperature_k / ekin)


def bare_ase_md(
    atoms: Atoms,
    calc,
    settings: MDSettings,
    out_path: Path,
    rss_probe=None,
) -> float:
    """atomate2-style loop: ASE NoseHooverChainNVT, frames kept in RAM, written at the end."""
    t0 = time.perf_counter()
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.set_momenta(initial_momenta(atoms, settings.temperature_k, settings.seed))
    dyn = NoseHooverChainNVT(
        atoms,
        timestep=settings.time_step_fs * units.fs,
        temperature_K=settings.temperature_k,
        tdamp=settings.thermostat_time_fs * units.fs,
    )
    frames: list[dict] = []

    def observe() -> None:
        frames.append(
            {
                "positions": atoms.get_positions(),
                "cell": atoms.cell.array.copy(),
                "momenta": atoms.get_momenta(),
                "forces": atoms.get_forces(),
                "stress": atoms.get_stress(),
                "energy": atoms.get_potential_energy(),
            }
        )
        if rss_probe is not None:
            rss_probe(len(frames))

    dyn.attach(observe, interval=settings.frame_interval_steps)
    dyn.run(settings.total_steps)
    with Trajectory(str(out_path), "w") as traj:
        for f in frames:
            frame = Atoms(atoms.numbers, positions=f["positions"], cell=f["cell"], pbc=True)
            frame.set_momenta(f["momenta"])
            traj.write(frame, energy=f["energy"], forces=f["forces"], stress=f["stress"])
    return time.perf_counter() - t0


def ionflow_md(atoms: Atoms, calc, settings: MDSettings, workdir: Path, progress=None) -> float:
    t0 = time.perf_counter()
    result = run_md(atoms, calc, settings, workdir, progress=progress)
    assert result.completed
    return time.perf_counter() - t0


class CalcTimer:
    """Accumulate the wall time spent inside ``calc.calculate`` (patched on the instance)."""

    def __init__(self, calc) -> None:
        self.seconds = 0.0
        self.calls = 0
        inner = calc.calculate

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        calc.calculate = timed


def timing(args: argparse.Namespace) -> dict:
    atoms = li2o_supercell(args.atoms)
    print(
        f"structure: Li2O antifluorite, {len(atoms)} atoms; {args.steps} steps of "
        f"{args.time_step_fs} fs at {args.temperature_k} K; frame every "
        f"{args.frame_interval} steps, checkpoint every {args.checkpoint_interval} steps"
    )
    t0 = time.perf_counter()
    calc = get_calculator(args.engine)
    print(f"{args.engine} loaded in {time.perf_counter() - t0:.1f} s")
    timer = CalcTimer(calc)
    warm = atoms.copy()
    warm.rattle(0.01, seed=0)
    warm.calc = calc
    t0 = time.perf_counter()
    warm.get_forces()
    print(f"warm-up calculation: {time.perf_counter() - t0:.2f} s")

    settings = MDSettings(
        temperature_k=args.temperature_k,
        time_step_fs=args.time_step_fs,
        equilibration_steps=0,
        production_steps=args.steps,
        frame_interval_steps=args.frame_interval,
        checkpoint_interval_steps=args.checkpoint_interval,
        thermostat="nose-hoover",
        seed=1,
    )
    runs: dict[str, list[dict]] = {"ionflow": [], "bare": []}
    print(
        f"  {'run':18s} {'wall s':>8s} {'cpu s':>8s} {'calc s':>8s} {'calls':>6s} "
        f"{'outside calc, ms/step':>22s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = ("ionflow", "bare") if rep % 2 == 0 else ("bare", "ionflow")
            for which in order:
                gc.collect()
                timer.seconds, timer.calls = 0.0, 0
                cpu0 = time.process_time()
                if which == "ionflow":
                    wall = ionflow_md(atoms, calc, settings, Path(tmp) / f"ionflow{rep}")
                else:
                    wall = bare_ase_md(atoms, calc, settings, Path(tmp) / f"bare{rep}.traj")
                run = {
                    "wall_s": wall,
                    "cpu_s": time.process_time() - cpu0,
                    "calc_s": timer.seconds,
                    "calc_calls": timer.calls,
                    "outside_calc_ms_per_step": 1e3 * (wall - timer.seconds) / args.steps,
                }
                runs[which].append(run)
                print(
                    f"  repeat {rep} {which:8s} {run['wall_s']:8.2f} {run['cpu_s']:8.2f} "
                    f"{run['calc_s']:8.2f} {run['calc_calls']:6d} "
                    f"{run['outside_calc_ms_per_step']:22.2f}"
                )

    def total(which: str, key: str) -> float:
        return sum(r[key] for r in runs[which])

    wall_ratio = total("ionflow", "wall_s") / total("bare", "wall_s")
    cpu_ratio = total("ionflow", "cpu_s") / total("bare", "cpu_s")
    # load-insensitive estimate: common calculator cost + each loop's own overhead
    calc_per_step = total("bare", "calc_s") / (args.repeats * args.steps)
    out_i = total("ionflow", "wall_s") - total("ionflow", "calc_s")
    out_b = total("bare", "wall_s") - total("bare", "calc_s")
    n = args.repeats * args.steps
    overhead_ratio = (calc_per_step + out_i / n) / (calc_per_step + out_b / n)
    print(
        f"wall-time ratio ionflow / bare ASE: {wall_ratio:.3f}   CPU-time ratio: "
        f"{cpu_ratio:.3f}   (target <= 1.05)"
    )
    print(
        f"time outside the calculator: ionflow {1e3 * out_i / n:.2f} ms/step, bare "
        f"{1e3 * out_b / n:.2f} ms/step, calculator {1e3 * calc_per_step:.1f} ms/step -> "
        f"ratio from overheads {overhead_ratio:.4f}"
    )
    return {
        "n_atoms": len(atoms),
        "steps": args.steps,
        "runs": runs,
        "wall_ratio": wall_ratio,
        "cpu_ratio": cpu_ratio,
        "overhead_ratio": overhead_ratio,
    }


def _growth(samples: list[tuple[int, int]], n_frames: int) -> tuple[float, float]:
    arr = np.array([s for s in samples if s[0] >= 0.1 * n_frames], dtype=float)
    slope = np.polyfit(arr[:, 0], arr[:, 1], 1)[0] * 1000 / 1e6
    peak = (arr[:, 1].max() - arr[0, 1]) / 1e6
    return slope, peak


def _malloc_trim():
    """``malloc_trim(0)`` on glibc (returns freed heap to the OS), else a no-op.

    Without it RSS also follows glibc's high-water mark of *freed* memory, which wanders
    by a few MB whatever the program keeps alive.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return lambda: None


def _memory_worker(which: str, n_steps: int, checkpoint_interval: int, tmp: str) -> dict:
    """One memory run, in a fresh process (so that no freed heap hides the growth)."""
    proc = psutil.Process()
    atoms = bulk("LiCl", "rocksalt", a=5.0, cubic=True).repeat((2, 2, 2))  # 64 atoms
    settings = MDSettings(
        temperature_k=1000.0,
        time_step_fs=2.0,
        equilibration_steps=0,
        production_steps=n_steps,
        frame_interval_steps=1,
        checkpoint_interval_steps=checkpoint_interval,
        seed=1,
    )
    every = max(1, n_steps // 100)
    samples: list[tuple[int, int]] = []

    trim = _malloc_trim()

    def probe(frame: int, *_: int) -> None:
        if frame % every == 0:
            trim()
            samples.append((frame, proc.memory_info().rss))

    t0 = time.perf_counter()
    if which == "ionflow":
        ionflow_md(atoms, get_calculator("toy"), settings, Path(tmp) / "grow", probe)
    else:
        bare_ase_md(atoms, get_calculator("toy"), settings, Path(tmp) / "grow.traj", probe)
    return {"samples": samples, "seconds": time.perf_counter() - t0}


def memory(args: argparse.Namespace) -> dict:
    n = args.growth_steps
    out = {}
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ctx.Pool(1, maxtasksperchild=1) as pool:
        for which in ("ionflow", "bare"):
            res = pool.apply(_memory_worker, (which, n, args.checkpoint_interval, tmp))
            slope, peak = _growth(res["samples"], n)
            out[which] = {"rss_growth_mb_per_1000_frames": slope, "peak_rss_growth_mb": peak}
            print(
                f"  {which:8s} {n} frames of 64 atoms (toy potential, fresh process, "
                f"{res['seconds']:.1f} s): RSS growth {slope:+.3f} MB per 1000 frames, "
                f"peak growth {peak:+.2f} MB"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=96, help="about this many atoms")
    parser.add_argument("--steps", type=int, default=200, help="MD steps per timed run; 0 skips")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (alternating)")
    parser.add_argument("--engine", default="chgnet", help="potential for the timing")
    parser.add_argument("--frame-interval", type=int, default=10)
    parser.add_argument("--checkpoint-interval", type=int, default=100)
    parser.add_argument("--time-step-fs", type=float, default=2.0)
    parser.add_argument("--temperature-k", type=float, default=1000.0)
    parser.add_argument(
        "--growth-steps",
        type=int,
        default=20000,
        help="toy-potential steps (one frame each) for the RSS growth; 0 skips",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.steps % args.frame_interval or args.checkpoint_interval % args.frame_interval:
        parser.error("--steps and --checkpoint-interval must be multiples of --frame-interval")

    warnings.filterwarnings("ignore", category=UserWarning)
    report = {}
    if args.growth_steps:
        print("memory (resident set size, after the first 10 % of the frames):")
        report["memory"] = memory(args)
    if args.steps:
        report["timing"] = timing(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
