"""Benchmark: the cost of the ``vdos`` analysis next to ``diffusion`` alone.

Writes the synthetic 70,000-frame × 200-atom trajectory of ``analysis_vs_pymatgen.py``
(60 hopping Li, 140 P/S, 20 fs per frame, float32 ``.npz``, no velocities) with
:func:`ionflow.analysis.synthetic.write_large_npz`, and a copy with a ``velocities``
member (thermal Gaussian velocities, float32 Å/fs — the numbers do not matter for the
cost, the extra 168 MB read does). Then runs, each in a fresh interpreter (reading the
file included, imports excluded), :func:`ionflow.analysis.analyze_trajectory` with

* ``diffusion``                   — the baseline;
* ``vdos``                        — finite-difference velocities from the positions;
* ``diffusion + vdos``            — one streamed pass, both analyses;
* ``vdos (stored)`` and ``diffusion + vdos (stored)`` on the file with velocities.

Printed: wall time (the fastest of ``--repeat`` runs: the machine is shared), peak RSS of the child (``ru_maxrss`` via :func:`os.wait4`), and the
ratios to ``diffusion`` alone. No targets are asserted (issue 13 asks for the one-pass
run of *all* analyses ≤ 3× diffusion alone).

Run from the repository root::

    .venv/bin/python benchmarks/vdos_cost.py                 # 70k frames, ~1 min, ~0.6 GB disk
    .venv/bin/python benchmarks/vdos_cost.py --frames 20000  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MARK = "VDOS-BENCH "

RUNS = {
    "diffusion": ("plain", ["diffusion"]),
    "vdos": ("plain", ["vdos"]),
    "diffusion + vdos": ("plain", ["diffusion", "vdos"]),
    "vdos (stored)": ("velocities", ["vdos"]),
    "diffusion + vdos (stored)": ("velocities", ["diffusion", "vdos"]),
}


def child(path: str, names: list[str]) -> None:
    from ionflow.analysis import analyze_trajectory, get_analysis

    analyses = [get_analysis(n)() for n in names]
    t0 = time.perf_counter()
    res = analyze_trajectory(path, analyses, species="Li")
    wall = time.perf_counter() - t0
    out = {"wall_s": wall}
    if "diffusion" in res:
        out["d_msd_cm2_s"] = res["diffusion"].diffusivity_cm2_s
    if "vdos" in res:
        v = res["vdos"]
        out |= {
            "d_vacf_cm2_s": v.diffusivity_from_vacf_cm2_s,
            "velocity_source": v.velocity_source,
            "max_lag_frames": v.max_lag_frames,
        }
    print(MARK + json.dumps(out), flush=True)


def _add_velocities(src: Path, dst: Path, chunk: int = 10_000) -> None:
    """Copy ``src`` and stream a float32 ``velocities`` member into it."""
    from numpy.lib import format as npy_format

    from ionflow.analysis.readers import open_trajectory

    shutil.copy(src, dst)
    info = open_trajectory(src).info
    masses = np.array([{"Li": 6.94, "P": 30.97, "S": 32.06}[s] for s in info.species])
    sigma = np.sqrt(8.617e-5 * 600.0 / masses)[None, :, None] * 0.09822694  # Å/fs
    header = npy_format.header_data_from_array_1_0(np.empty((0, info.n_atoms, 3), np.float32))
    header["shape"] = (info.n_frames, info.n_atoms, 3)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(dst, "a", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("velocities.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_2_0(member, header)
            for a in range(0, info.n_frames, chunk):
                k = min(chunk, info.n_frames - a)
                v = (rng.standard_normal((k, info.n_atoms, 3)) * sigma).astype(np.float32)
                member.write(memoryview(np.ascontiguousarray(v)))


def _run_child(path: Path, names: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), *names]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child {names} failed ({proc.returncode})")
    line = next(x for x in out.splitlines() if x.startswith(MARK))
    return json.loads(line[len(MARK) :]) | {"peak_rss_mb": usage.ru_maxrss / 1024.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=70_000)
    ap.add_argument("--atoms", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep bench-out/ files")
    ap.add_argument("--repeat", type=int, default=3, help="runs per analysis; the fastest counts")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    from ionflow.analysis.synthetic import write_large_npz

    out = REPO_ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    plain = out / f"vdos_{args.frames}x{args.atoms}.npz"
    withv = out / f"vdos_{args.frames}x{args.atoms}_velocities.npz"
    t0 = time.perf_counter()
    d_true = write_large_npz(plain, n_frames=args.frames, n_atoms=args.atoms, n_mobile=60)
    _add_velocities(plain, withv)
    print(
        f"data: {args.frames} frames × {args.atoms} atoms, 20 fs/frame, true D {d_true:.4g} "
        f"cm²/s; written in {time.perf_counter() - t0:.1f} s "
        f"({plain.stat().st_size / 1e6:.0f} MB, {withv.stat().st_size / 1e6:.0f} MB with velocities)"
    )
    rows = {}
    for label, (which, names) in RUNS.items():
        runs = [_run_child(plain if which == "plain" else withv, names) for _ in range(args.repeat)]
        rows[label] = min(runs, key=lambda r: r["wall_s"])
        r = rows[label]
        extra = ", ".join(
            f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
            for k in ("d_msd_cm2_s", "d_vacf_cm2_s", "velocity_source", "max_lag_frames")
            if r.get(k) is not None
        )
        print(
            f"{label:28s} {r['wall_s']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB"
            f"  ×{r['wall_s'] / rows['diffusion']['wall_s']:.2f} time"
            f"  ×{r['peak_rss_mb'] / rows['diffusion']['peak_rss_mb']:.2f} RSS   {extra}"
        )
    if not args.keep:
        plain.unlink()
        withv.unlink()


if __name__ == "__main__":
    main()
