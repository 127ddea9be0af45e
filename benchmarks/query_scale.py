"""Query latency of ``ionflow.results`` on 10,000 summaries in a real SecantusDB server.

Starts an embedded server (:meth:`ionflow.store.LocalServer.ensure`) in a temporary
directory, inserts N synthetic but valid :class:`~ionflow.summary.MaterialSummary`
documents (varied compositions, Arrhenius laws → Ea and σ(300 K) with intervals, free and
pinned variants, caged runs, missing pinned controls), then times typical queries
answered by the server's query engine (first without, then with
:func:`ionflow.results.ensure_indexes`) and by ionflow's path, the columnar copy of
:mod:`ionflow.query_index` (in a warm process, and cold: blob fetched and decoded per query,
what each new ``ionflow query`` process pays); it checks that both paths return the same
documents in the same order. For each query it reports the median and 95th percentile
over many repetitions of

* ``raw``: the server round trip (``find_summary_documents``: a pymongo cursor drained into
  dicts), and
* ``models``: :func:`ionflow.results.query_summaries` (the same, plus schema check and
  pydantic validation of every document) -- what ``ionflow query`` pays,

each with ``--limit`` results (default 50, what a person reads) and, for the ``models`` column
of the indexed runs, also without a limit. Target: < 50 ms per limited query (exit status
1 if the cold columnar path misses it).

Run: ``.venv/bin/python benchmarks/query_scale.py [--n 10000] [--repeats 30]``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TARGET_MS = 50.0
TEMPERATURES_K = (600.0, 800.0, 1000.0, 1200.0)

#: Composition templates: (mobile + framework elements, stoichiometry ranges)
TEMPLATES = [
    ("Li", "P", "S"),
    ("Li", "P", "S", "Cl"),
    ("Li", "P", "S", "Br"),
    ("Li", "Ge", "P", "S"),
    ("Li", "Si", "P", "S"),
    ("Li", "Sn", "S"),
    ("Li", "B", "S"),
    ("Li", "La", "Zr", "O"),
    ("Li", "Ti", "P", "O"),
    ("Li", "Al", "Cl"),
    ("Li", "Y", "Cl"),
    ("Li", "In", "Cl"),
    ("Li", "Zr", "Cl"),
    ("Li", "N"),
    ("Li", "B", "H"),
    ("Na", "P", "S"),
    ("Na", "Sb", "S"),
    ("Na", "Zr", "Si", "P", "O"),
]
PINNED_REASONS = (
    "4 PS4 anions pinned (bonded polyanions)",
    "no bonded polyanions (oxide framework)",
    "pinned_control: off",
)


def _formula(rng: np.random.Generator, elements: tuple[str, ...]) -> str:
    counts = rng.integers(1, 13, size=len(elements))
    return "".join(f"{el}{n}" for el, n in zip(elements, counts, strict=True))


def make_summary(i: int, rng: np.random.Generator):
    """One valid MaterialSummary with random composition and an Arrhenius law."""
    from pymatgen.core import Composition

    from ionflow.analysis.arrhenius import BOLTZMANN_EV_K, fit_arrhenius
    from ionflow.summary import RunSummary, VariantSummary, build_summary

    elements = TEMPLATES[rng.integers(len(TEMPLATES))]
    mobile = elements[0]
    comp = Composition(_formula(rng, elements))
    ea = float(rng.uniform(0.12, 0.7))
    d0 = float(10 ** rng.uniform(-3.5, -2.0))
    factor = float(10 ** rng.uniform(10.0, 11.0))  # n q²/k_B in mS·K/cm per cm²/s
    temps = TEMPERATURES_K[: int(rng.integers(2, 5))]
    caged_low = rng.random() < 0.1

    def variant(name: str, ea_v: float) -> VariantSummary:
        runs, ds, errs = [], [], []
        for t in temps:
            caged = caged_low and t == temps[0] and name == "free"
            d = None if caged else d0 * math.exp(-ea_v / (BOLTZMANN_EV_K * t))
            d = None if d is None else d * float(rng.lognormal(0.0, 0.1))
            err = None if d is None else d * float(rng.uniform(0.05, 0.2))
            runs.append(
                RunSummary(
                    temperature_k=t,
                    variant=name,
                    regime="caged" if caged else "diffusive",
                    regime_reason="MSD plateaus" if caged else "MSD linear",
                    diffusivity_cm2_s=d,
                    diffusivity_err_cm2_s=err,
                    conductivity_ms_cm=None if d is None else factor * d / t,
                    conductivity_err_ms_cm=None if d is None else factor * err / t,
                    haven_ratio=None if d is None else (h := float(rng.uniform(0.3, 1.0))),
                    haven_ratio_interval=None if d is None else (h - 0.1, h + 0.1),
                    n_eff_hops=0.0 if d is None else float(rng.uniform(50, 2000)),
                    duration_ps=100.0,
                    fit_window_ps=(5.0, 50.0),
                    analysis_uuid=f"a-{i}-{name}-{t:g}",
                )
            )
            ds.append(d)
            errs.append(err)
        out = VariantSummary(variant=name, runs=runs)
        try:
            fit = fit_arrhenius(temps, ds, errs, sigma_factor_ms_cm_k=factor)
        except ValueError as exc:  # InsufficientDataError: < 2 diffusive temperatures
            out.arrhenius_note = str(exc)
            return out
        out.arrhenius, out.arrhenius_note = fit, "; ".join(fit.warnings) or None
        out.ea_ev, out.ea_err_ev = fit.ea_ev, fit.ea_err_ev
        out.sigma_300k_ms_cm = fit.sigma_at_t_ms_cm
        out.sigma_300k_interval_ms_cm = fit.sigma_at_t_interval_ms_cm
        out.sigma_300k_interval95_ms_cm = fit.sigma_at_t_interval95_ms_cm
        return out

    reason = PINNED_REASONS[int(rng.integers(len(PINNED_REASONS)))]
    has_pinned = not reason.startswith(("no bonded", "pinned_control"))
    free = variant("free", ea)
    pinned = variant("pinned", ea + float(rng.choice([0.0, 0.1, 0.25]))) if has_pinned else None
    return build_summary(
        campaign=f"campaign-{i % 20:02d}",
        material=f"mat-{i:05d}-{comp.reduced_formula}",
        structure=SimpleNamespace(composition=comp),
        mobile_species=mobile,
        engine_md=("chgnet", "mace", "m3gnet", "sevennet")[i % 4],
        engine_relax="chgnet",
        supercell={
            "n_atoms": int(rng.integers(64, 400)),
            "matrix": [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
            "anions": {"bonded_indices": list(range(4 if has_pinned else 0))},
            "anion_summary": "synthetic",
            "pinned_indices": list(range(4 if has_pinned else 0)),
            "pinned_reason": reason,
        },
        free=free,
        pinned=pinned,
    )


QUERIES = {
    "σ(300 K) > 1 mS/cm, by σ": {"sigma_min_ms_cm": 1.0},
    "Ea < 0.3 eV, by σ": {"ea_max_ev": 0.3},
    "chemsys = Li-P-S": {"chemsys": "Li-P-S"},
    "elements ⊇ Li,P,S": {"elements": "Li,P,S"},
    "pinned verdict: lowers": {"pinned_verdict": "lowers"},
    "campaign + Ea range": {"campaign": "campaign-07", "ea_min_ev": 0.2, "ea_max_ev": 0.4},
}


def _time(fn, repeats: int) -> tuple[float, float, int]:
    fn()  # warm-up
    times, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = len(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    return statistics.median(times), p95, n


def run_queries(db, repeats: int, limit: int, unlimited: bool) -> dict[str, dict]:
    from ionflow.results import build_filter, find_summary_documents, query_summaries

    out = {}
    for label, kw in QUERIES.items():
        filt = build_filter(**kw)
        raw = _time(lambda f=filt: find_summary_documents(db, f, limit=limit), repeats)
        models = _time(lambda k=kw: query_summaries(db, **k, limit=limit), repeats)
        row = {"raw": raw, "models": models}
        if unlimited:
            row["models_all"] = _time(lambda k=kw: query_summaries(db, **k), max(3, repeats // 5))
        out[label] = row
    return out


def server_path(enabled: bool):
    """Context: answer queries with the server's engine (the columnar copy switched off)."""
    import contextlib

    from ionflow import query_index

    @contextlib.contextmanager
    def ctx():
        old = query_index.MIN_DOCUMENTS
        query_index.MIN_DOCUMENTS = 10**12 if enabled else old
        try:
            yield
        finally:
            query_index.MIN_DOCUMENTS = old

    return ctx()


def run_cold(db, repeats: int, limit: int) -> dict[str, dict]:
    """Columnar path with the per-process cache emptied before every query (a new
    ``ionflow query`` process: the blob is fetched and decoded each time)."""
    from ionflow import query_index
    from ionflow.results import build_filter, find_summary_documents, query_summaries

    def cold(fn):
        def run():
            query_index._CACHE.clear()
            return fn()

        return run

    out = {}
    for label, kw in QUERIES.items():
        filt = build_filter(**kw)
        raw = _time(cold(lambda f=filt: find_summary_documents(db, f, limit=limit)), repeats)
        models = _time(cold(lambda k=kw: query_summaries(db, **k, limit=limit)), repeats)
        out[label] = {"raw": raw, "models": models}
    return out


def same_answers(db, limit: int) -> None:
    """The columnar path returns exactly the server's documents, in the same order."""
    from ionflow.results import build_filter, find_summary_documents

    for label, kw in QUERIES.items():
        filt = build_filter(**kw)
        for lim in (limit, None):
            with server_path(True):
                ref = find_summary_documents(db, filt, limit=lim)
            got = find_summary_documents(db, filt, limit=lim)
            if got != ref:
                raise SystemExit(f"columnar answer differs from the server's for {label!r}")


def _print(title: str, rows: dict[str, dict], limit: int) -> None:
    print(f"\n{title}")
    head = f"{'query':28s} {'raw med/p95 ms':>16s} {'models med/p95 ms':>19s}  {'n':>4s}"
    has_all = any("models_all" in r for r in rows.values())
    if has_all:
        head += f"  {'unlimited models med/p95 ms (n)':>32s}"
    print(head)
    for label, r in rows.items():
        (rm, rp, n), (mm, mp, _) = r["raw"], r["models"]
        ok = "ok" if mp < TARGET_MS else "SLOW"
        line = f"{label:28s} {rm:7.1f} /{rp:7.1f} {mm:8.1f} /{mp:8.1f}  {n:4d} {ok}"
        if "models_all" in r:
            am, ap, an = r["models_all"]
            line += f"  {am:10.1f} /{ap:8.1f} ({an})"
        print(line)
    print(f"(limit {limit}; target < {TARGET_MS:g} ms for the limited queries)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="summaries to insert")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per query")
    parser.add_argument("--limit", type=int, default=50, help="results per limited query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--skip-server", action="store_true", help="time only ionflow's (columnar) path"
    )
    args = parser.parse_args(argv)

    import pymongo

    from ionflow.results import SUMMARY_COLLECTION, ensure_indexes
    from ionflow.store import LocalServer

    # a killed benchmark still stops its server (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    docs = [make_summary(i, rng).model_dump(mode="json") for i in range(args.n)]
    print(f"built {len(docs)} summaries in {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="ionflow-bench-") as tmp:
        server = LocalServer.ensure(Path(tmp) / "ionflow-data")
        client = pymongo.MongoClient(server.uri)
        try:
            db = client["ionflow"]
            size_mb = sum(len(json.dumps(d)) for d in docs) / 1e6
            t0 = time.perf_counter()
            coll = db[SUMMARY_COLLECTION]
            for k in range(0, len(docs), 1000):
                coll.insert_many(docs[k : k + 1000])
            print(
                f"inserted into SecantusDB in {time.perf_counter() - t0:.1f} s "
                f"(~{size_mb:.0f} MB of JSON, {size_mb * 1e3 / len(docs):.1f} kB/summary)",
                flush=True,
            )
            no_idx = with_idx = None
            if not args.skip_server:
                # a collection scan of N full documents takes seconds: fewer repetitions
                with server_path(True):
                    no_idx = run_queries(db, max(3, args.repeats // 6), args.limit, unlimited=False)
                _print("server engine, without indexes", no_idx, args.limit)
            t0 = time.perf_counter()
            ensure_indexes(db)
            print(f"\nensure_indexes: {time.perf_counter() - t0:.2f} s", flush=True)
            if not args.skip_server:
                with server_path(True):
                    with_idx = run_queries(db, args.repeats, args.limit, unlimited=True)
                _print("server engine, with indexes", with_idx, args.limit)

            from ionflow import query_index
            from ionflow.results import find_summary_documents

            t0 = time.perf_counter()
            find_summary_documents(db, {}, limit=1)  # first query after writes: builds it
            t_build = time.perf_counter() - t0
            blob = db[query_index.INDEX_COLLECTION].find_one({"_id": query_index.COLUMNS_ID})
            print(
                f"\ncolumnar copy built by the first query in {t_build:.2f} s "
                f"({len(blob['blob']) / 1e3:.0f} kB for {blob['n']} summaries)",
                flush=True,
            )
            same_answers(db, args.limit)
            print("columnar answers == server answers for every query (limited and not)")
            columnar = run_queries(db, args.repeats, args.limit, unlimited=not args.skip_server)
            _print("columnar copy (ionflow's path), warm process", columnar, args.limit)
            cold = run_cold(db, args.repeats, args.limit)
            _print(
                "columnar copy, cold process (blob fetched + decoded per query)", cold, args.limit
            )
        finally:
            client.close()
            server.stop(timeout_s=10)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "n": args.n,
                    "server_no_indexes": no_idx,
                    "server_indexes": with_idx,
                    "columnar_build_s": t_build,
                    "columnar_warm": columnar,
                    "columnar_cold": cold,
                },
                indent=2,
            )
        )
    slow = [k for k, r in cold.items() if r["models"][1] >= TARGET_MS]
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
