"""Benchmark: the campaign's one-pass analysis with ALL default analyses vs diffusion alone.

Issue 13's target: the one streamed pass of ``diffusion, rotation, vdos, density, jumps``
(the campaign default, :data:`ionflow.spec.DEFAULT_ANALYSES`) over a 70,000-frame ×
200-atom trajectory stays ≤ 3× the time of the diffusion analysis alone, memory bounded.

Reuses ``vdos_cost.py``: the same synthetic file (60 hopping Li, 140 P/S, 20 fs per frame,
float32 ``.npz``) with a stored ``velocities`` member (as ML MD trajectories have), and the
same fresh-interpreter child (reading the file included, imports excluded; peak RSS of the
child from :func:`os.wait4`). Printed: wall time (fastest of ``--repeat``), peak RSS, and
the ratios to diffusion alone. No targets are asserted.

Run from the repository root::

    .venv/bin/python benchmarks/all_analyses_cost.py                 # 70k frames
    .venv/bin/python benchmarks/all_analyses_cost.py --frames 20000  # quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vdos_cost  # noqa: E402
from vdos_cost import MARK, REPO_ROOT, _add_velocities  # noqa: E402

ALL = ["diffusion", "rotation", "vdos", "density", "jumps"]


def child(path: str, names: list[str]) -> None:
    """As the campaign's analysis job: the optional analyses guarded (a failure — e.g. no
    density maxima to jump between on this synthetic walk — is recorded, the pass goes on)."""
    import json

    from ionflow.analysis import analyze_trajectory, get_analysis
    from ionflow.makers.analysis import _Guarded

    analyses = [get_analysis(n)() if n == "diffusion" else _Guarded(get_analysis(n)())
                for n in names]  # fmt: skip
    t0 = time.perf_counter()
    analyze_trajectory(path, analyses, species="Li")
    wall = time.perf_counter() - t0
    failed = {a.name: a.error for a in analyses if getattr(a, "error", None)}
    print(MARK + json.dumps({"wall_s": wall, "failed": failed}), flush=True)


def _run_child(path: Path, names: list[str]) -> dict:
    vdos_cost.__file__ = __file__  # the child runs this script's child()
    return vdos_cost._run_child(path, names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=70_000)
    ap.add_argument("--atoms", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    ap.add_argument("--keep", action="store_true", help="keep bench-out/ files")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    from ionflow.analysis.synthetic import write_large_npz
    from ionflow.spec import DEFAULT_ANALYSES

    assert list(DEFAULT_ANALYSES) == ALL, DEFAULT_ANALYSES
    out = REPO_ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    plain = out / f"all_{args.frames}x{args.atoms}.npz"
    withv = out / f"all_{args.frames}x{args.atoms}_velocities.npz"
    t0 = time.perf_counter()
    write_large_npz(plain, n_frames=args.frames, n_atoms=args.atoms, n_mobile=60)
    _add_velocities(plain, withv)
    plain.unlink()
    print(
        f"data: {args.frames} frames × {args.atoms} atoms with velocities, "
        f"{withv.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t0:.1f} s"
    )
    rows = {}
    for label, names in (("diffusion", ["diffusion"]), ("all five (one pass)", ALL)):
        runs = [_run_child(withv, names) for _ in range(args.repeat)]
        rows[label] = r = min(runs, key=lambda r: r["wall_s"])
        base = rows["diffusion"]
        print(
            f"{label:22s} {r['wall_s']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB"
            f"  ×{r['wall_s'] / base['wall_s']:.2f} time"
            f"  ×{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} RSS"
            + (f"  (failed: {r['failed']})" if r.get("failed") else "")
        )
    if not args.keep:
        withv.unlink()


if __name__ == "__main__":
    main()
