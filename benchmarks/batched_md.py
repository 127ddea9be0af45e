"""Throughput of N MD replicas batched (one model call per step) vs one after another.

For each potential (CHGNet; SevenNet when ``sevenn`` is installed), each cell (Li6PS5Cl
conventional, 52 atoms, and its 2x1x1 supercell, 104 atoms) and each N (2, 6, 12):

* **sequential** — N lone :func:`ionflow.md.run_md` calls with the engine's ordinary ASE
  calculator, one after another (what ionflow does without batching);
* **batched** — one :func:`ionflow.batched.run_batched_md` call with the N replicas.

Replicas differ in temperature (600-1200 K) and seed; every third one is pinned (P and S
fixed), as in a campaign. Both modes write the same frames and checkpoints. The figure is
atom-steps per second (N x atoms x steps / wall time) and the ratio batched / sequential.
The model is loaded and warmed up before timing. Then a profile of one batched step (N = 6,
52 atoms): time per structure of the model call alone at batch sizes 1 and N, the graph
conversion, and the part of the wall time outside the model (integrator, files).

Run::

    .venv/bin/python benchmarks/batched_md.py                  # full table (CPU: ~5-10 min)
    .venv/bin/python benchmarks/batched_md.py --quick          # 52 atoms, N = 2 and 6
    .venv/bin/python benchmarks/batched_md.py --device cuda    # the same table on a GPU

The machine's load average is printed before and after: on a shared machine the absolute
numbers move with the load, the ratio less so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from ionflow.batched import BatchStats, Replica, run_batched_md
from ionflow.batched_potentials import get_batched_potential, resolve_device
from ionflow.errors import UserInputError
from ionflow.md import MDSettings, run_md
from ionflow.potentials import get_calculator

REPO = Path(__file__).resolve().parents[1]


def cell(n_atoms: int) -> Atoms:
    """Li6PS5Cl (relaxed example): 52 atoms, or the 2x1x1 supercell (104)."""
    atoms = read(REPO / "examples" / "Li6PS5Cl_relaxed.cif")
    return atoms if n_atoms <= 52 else atoms.repeat((2, 1, 1))


def replicas(atoms: Atoms, n: int, steps: int, root: Path) -> list[Replica]:
    temps = np.linspace(600.0, 1200.0, max(n, 2))
    pinned = [a.index for a in atoms if a.symbol in ("P", "S")]
    out = []
    for k in range(n):
        s = MDSettings(
            temperature_k=float(temps[k]),
            time_step_fs=2.0,
            equilibration_steps=0,
            production_steps=steps,
            frame_interval_steps=min(10, steps),
            checkpoint_interval_steps=steps,
            seed=k,
        )
        out.append(Replica(atoms, s, root / f"r{k}", fixed_indices=pinned if k % 3 == 2 else None))
    return out


def lone_kwargs(engine: str, device: str) -> dict:
    return {"use_device": device} if engine == "chgnet" else {"device": device}


def measure(
    engine: str,
    device: str,
    atoms: Atoms,
    n: int,
    steps: int,
    pot,
    root: Path,
    repeats: int,
    flip: bool,
) -> dict:
    """Best (shortest) wall time of each mode over ``repeats``, the order alternating."""
    calc = get_calculator(engine, **lone_kwargs(engine, device))
    best = {"seq": float("inf"), "bat": float("inf")}
    share = 0.0
    for rep in range(repeats):
        order = ("seq", "bat") if (rep + flip) % 2 == 0 else ("bat", "seq")
        for mode in order:
            reps = replicas(atoms, n, steps, root / f"{mode}{rep}")
            t0 = time.perf_counter()
            if mode == "seq":
                for r in reps:
                    run_md(r.prepared_atoms(), calc, r.settings, r.workdir)
            else:
                stats = BatchStats()
                run_batched_md(reps, pot, stats=stats)
            wall = time.perf_counter() - t0
            if wall < best[mode]:
                best[mode] = wall
                if mode == "bat":
                    share = stats.model_time_s / wall
    shutil.rmtree(root, ignore_errors=True)
    work = n * len(atoms) * (steps + 1)  # + the step-0 evaluation
    return {
        "seq": work / best["seq"],
        "bat": work / best["bat"],
        "ratio": best["seq"] / best["bat"],
        "model_share": share,
    }


def profile(engine: str, pot, atoms: Atoms, n: int, rounds: int = 8) -> str:
    """Bare model call per structure at batch size 1 and n, paired to cancel load drift.

    Each round times the n structures one by one and then as one batch, back to back; the
    figure is the median over rounds of the per-round ratio (and the median times).
    """
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0.0, 0.03, a.positions.shape)
        structures.append(a)
    alone, batch = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for a in structures:
            pot.compute([a])
        t1 = time.perf_counter()
        pot.compute(structures)
        t2 = time.perf_counter()
        alone.append((t1 - t0) / n)
        batch.append((t2 - t1) / n)
    ratios = np.array(alone) / np.array(batch)
    extra = ""
    if engine == "chgnet":
        from pymatgen.io.ase import AseAtomsAdaptor

        t0 = time.perf_counter()
        for a in structures:
            pot.model.graph_converter(AseAtomsAdaptor.get_structure(a))
        extra = f"; structure + graph conversion {1e3 * (time.perf_counter() - t0) / n:.1f} ms"
    return (
        f"profile {engine} {len(atoms)} atoms: model call per structure (median of {rounds} "
        f"paired rounds) {1e3 * np.median(alone):.1f} ms alone, {1e3 * np.median(batch):.1f} ms "
        f"in a batch of {n}; paired gain x{np.median(ratios):.2f} "
        f"(range x{ratios.min():.2f}-x{ratios.max():.2f}){extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--engines", default="chgnet,sevennet")
    parser.add_argument("--atoms", default="52,104", help="cell sizes (52 and/or 104)")
    parser.add_argument("--replicas", default="2,6,12", help="N values")
    parser.add_argument("--steps", type=int, default=20, help="MD steps per replica (CHGNet)")
    parser.add_argument(
        "--steps-sevennet",
        type=int,
        default=2,
        help="MD steps per replica for SevenNet (~1.4 s per 52-atom evaluation on a CPU core)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each mode (best)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="52 atoms, N = 2 and 6, few steps")
    args = parser.parse_args()
    if args.quick:
        args.atoms, args.replicas, args.steps, args.steps_sevennet = "52", "2,6", 10, 1
    try:
        device = resolve_device(args.device)
    except UserInputError as exc:
        raise SystemExit(f"batched_md: {exc}") from None
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    engines = []
    for engine in args.engines.split(","):
        try:
            pot = get_batched_potential(engine, device)
        except Exception as exc:  # package missing
            print(f"# {engine}: skipped ({str(exc).splitlines()[0][:100]})")
            continue
        engines.append((engine, pot))
    sizes = [int(x) for x in args.atoms.split(",")]
    ns = [int(x) for x in args.replicas.split(",")]
    print(
        f"# device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
        f"steps per replica: {args.steps} (chgnet), {args.steps_sevennet} (sevennet)"
    )
    print(
        "| potential | atoms | N | sequential atom-steps/s | batched atom-steps/s | ratio | model share |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    root = Path(
        tempfile.mkdtemp(
            prefix="batched-md-", dir=REPO / "bench-out" if (REPO / "bench-out").is_dir() else None
        )
    )
    try:
        for engine, pot in engines:
            for n_atoms in sizes:
                atoms = cell(n_atoms)
                pot.compute([atoms])  # warm-up
                steps = args.steps_sevennet if engine == "sevennet" else args.steps
                repeats = 1 if engine == "sevennet" else args.repeats
                for k, n in enumerate(ns):
                    r = measure(
                        engine,
                        device,
                        atoms,
                        n,
                        steps,
                        pot,
                        root / f"{engine}{n_atoms}_{n}",
                        repeats,
                        flip=bool(k % 2),
                    )
                    print(
                        f"| {engine} | {len(atoms)} | {n} | {r['seq']:.0f} | {r['bat']:.0f} | "
                        f"x{r['ratio']:.2f} | {100 * r['model_share']:.0f} % |",
                        flush=True,
                    )
        for engine, pot in engines:
            print(profile(engine, pot, cell(52), 6))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
