"""Submit a 1,000-material campaign (~12k jobs) and compare with a naive FireWorks loop.

    .venv/bin/python benchmarks/submit_scale.py                  # 1000 materials, ~2-4 min
    .venv/bin/python benchmarks/submit_scale.py --materials 200  # quicker
    .venv/bin/python benchmarks/submit_scale.py --keep           # keep bench-out/submit_scale

What it does, all in one run against one embedded SecantusDB server (``LocalServer``):

1. writes ``--materials`` small Li3N CIFs with lattice constants 0.05 % apart and a
   ``workflows.yaml`` with 4 temperatures (no pinned control: 12 jobs per material);
2. times ``load_campaign`` and ``plan_campaign`` (the flows, built once and shared);
3. **ionflow**: ``ionflow.backends.fw_submit.submit`` of every material into a fresh FireWorks
   database (documents built directly, ids reserved once, two ``insert_many``), then once
   more to time the idempotent no-op resubmission;
4. **naive**: for the first ``--naive-materials`` materials (default: all), jobflow's
   ``jobflow.managers.fireworks.flow_to_workflow(flow)`` and ``LaunchPad.add_wf(wf)`` one
   material at a time into another fresh database on the same server;
5. unless ``--quick``: what ionflow's submit did before (``fw_tasks.flow_to_workflow`` +
   ``LaunchPad.bulk_add_wfs``), and the *server floor*: inserting the very documents
   ionflow builds, prebuilt, into a fresh FireWorks database (FireWorks' 11 indexes on
   ``fireworks``; SecantusDB spends ~0.7 ms per document and index set, whatever the
   document's size, and serves one request at a time);
6. checks the databases hold the same number of fireworks per material and prints jobs/s,
   the ratio, and how much of each side is client work. Targets: ionflow's submit <= 60 s
   for 1,000 materials and >= 5x the naive loop's jobs/s (``--strict``: exit 1 if missed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "bench-out" / "submit_scale"


def write_campaign(directory: Path, n: int) -> Path:
    """``n`` Li3N CIFs (lattice scaled by 1 + 5e-4 i) and a campaign file listing them."""
    from pymatgen.core import Structure

    base = Structure.from_file(str(HERE.parent / "examples" / "Li3N.cif"))
    cifs = directory / "cifs"
    cifs.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        s = base.copy()
        s.scale_lattice(base.volume * (1 + 5e-4 * i) ** 3)
        name = f"Li3N_{i:04d}"
        s.to(filename=str(cifs / f"{name}.cif"))
        lines.append(f"  - {{name: {name}, structure: cifs/{name}.cif}}")
    spec = directory / "workflows.yaml"
    spec.write_text(
        "campaign: submit-scale\n"
        "mobile_species: Li\n"
        "engine: {relax: toy, md: toy}\n"
        "md:\n"
        "  temperatures_k: [600, 800, 1000, 1200]\n"
        "  time_step_fs: 2.0\n"
        "  equilibration_ps: 1\n"
        "  production_ps: 10\n"
        "  frame_interval_fs: 10\n"
        "  supercell_min_length_a: 7.0\n"
        "  pinned_control: auto\n"
        "materials:\n" + "\n".join(lines) + "\n"
    )
    return spec


def _metadata(spec, p) -> dict:
    return {
        "ionflow_campaign": spec.campaign,
        "ionflow_material": p.material.name,
        "ionflow_fingerprint": p.fingerprint,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--materials", type=int, default=1000)
    ap.add_argument("--naive-materials", type=int, default=None, help="default: all")
    ap.add_argument("--keep", action="store_true", help="keep bench-out/submit_scale")
    ap.add_argument(
        "--quick", action="store_true", help="skip the bulk_add_wfs and server-floor runs"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    from jobflow.managers.fireworks import flow_to_workflow as jobflow_flow_to_workflow

    from ionflow.backends.fw_submit import _shift_ids, submit, workflow_documents
    from ionflow.backends.fw_tasks import flow_to_workflow, reset_launchpad_if_new
    from ionflow.campaign import plan_campaign
    from ionflow.spec import load_campaign
    from ionflow.store import DatabaseSettings, resolve_database

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    server = None
    try:
        spec_file = write_campaign(OUT, args.materials)
        t = time.perf_counter()
        spec, materials = load_campaign(spec_file)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        planned = plan_campaign(spec, materials, OUT / "runs")
        t_plan = time.perf_counter() - t
        n_jobs = sum(p.n_jobs for p in planned)
        print(
            f"{len(planned)} materials, {n_jobs} jobs; load_campaign {t_load:.1f} s, "
            f"plan_campaign {t_plan:.1f} s"
        )

        def fresh_launchpad(name: str):
            db = resolve_database(
                DatabaseSettings(
                    data_dir=OUT / "db", database=name, fireworks_database=f"{name}_fw"
                )
            )
            lp = db.launchpad()
            lp.m_logger.setLevel(logging.WARNING)
            reset_launchpad_if_new(lp)
            return db, lp

        db, lp = fresh_launchpad("ionflow")
        server = db.local_server
        t = time.perf_counter()
        result = submit(lp, planned, spec.campaign)
        t_ionflow = time.perf_counter() - t
        assert len(result["added"]) == len(planned)
        t = time.perf_counter()
        again = submit(lp, planned, spec.campaign)
        t_again = time.perf_counter() - t
        assert len(again["reused"]) == len(planned) and not again["added"]
        n_ionflow = lp.fireworks.count_documents({})
        assert n_ionflow == n_jobs, (n_ionflow, n_jobs)

        naive = planned[: args.naive_materials or len(planned)]
        n_naive_jobs = sum(p.n_jobs for p in naive)
        _, lp_naive = fresh_launchpad("naive")
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            for p in naive:
                wf = jobflow_flow_to_workflow(p.flow, metadata=_metadata(spec, p))
                lp_naive.add_wf(wf)
        t_naive = time.perf_counter() - t
        assert lp_naive.fireworks.count_documents({}) == n_naive_jobs
        # same shape: fireworks per material and READY roots
        for coll_lp in (lp, lp_naive):
            per = coll_lp.fireworks.aggregate(
                [{"$group": {"_id": "$spec.ionflow_material", "n": {"$sum": 1}}}]
            )
            assert {d["n"] for d in per} == {planned[0].n_jobs}
        assert lp.fireworks.count_documents({"state": "READY"}) == len(planned)
        assert lp_naive.fireworks.count_documents({"state": "READY"}) == len(naive)

        t_old = t_floor = t_build = None
        if not args.quick:
            # what ionflow's submit did before: fw_tasks.flow_to_workflow + bulk_add_wfs
            _, lp_old = fresh_launchpad("bulk")
            t = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                wfs = [flow_to_workflow(p.flow, metadata=_metadata(spec, p)) for p in planned]
                lp_old.bulk_add_wfs(wfs)
            t_old = time.perf_counter() - t
            # the server's share: insert the same documents, built beforehand
            t = time.perf_counter()
            built = [workflow_documents(p.flow, _metadata(spec, p), 0) for p in planned]
            t_build = time.perf_counter() - t
            wf_docs, fw_docs = _shift_ids(built, 1)
            _, lp_floor = fresh_launchpad("floor")
            t = time.perf_counter()
            for i in range(0, len(wf_docs), 50):
                lp_floor.workflows.insert_many(wf_docs[i : i + 50], ordered=False)
            for i in range(0, len(fw_docs), 600):
                lp_floor.fireworks.insert_many(fw_docs[i : i + 600], ordered=False)
            t_floor = time.perf_counter() - t

        rate_ionflow = n_jobs / t_ionflow
        rate_naive = n_naive_jobs / t_naive
        ratio = rate_ionflow / rate_naive
        print(
            f"ionflow submit   : {n_jobs:6d} jobs in {t_ionflow:6.1f} s = {rate_ionflow:7.0f} "
            f"jobs/s  (resubmit, nothing added: {t_again:.2f} s)"
        )
        print(
            f"naive add_wf loop: {n_naive_jobs:6d} jobs in {t_naive:6.1f} s = "
            f"{rate_naive:7.0f} jobs/s  ({len(naive)} materials)"
        )
        if t_old is not None:
            print(
                f"bulk_add_wfs     : {n_jobs:6d} jobs in {t_old:6.1f} s = {n_jobs / t_old:7.0f} "
                "jobs/s  (fw_tasks.flow_to_workflow + LaunchPad.bulk_add_wfs)"
            )
            print(
                f"server floor     : inserting the same {n_jobs} prebuilt documents takes "
                f"{t_floor:.1f} s ({100 * t_floor / t_ionflow:.0f} % of ionflow's submit); "
                f"building them {t_build:.1f} s"
            )
            client_naive = max(t_naive * len(planned) / len(naive) - t_floor, 1e-9)
            client_ionflow = max(t_ionflow - t_floor, t_build)
            print(
                f"client-side work : naive {client_naive:.1f} s vs ionflow {client_ionflow:.1f} s "
                f"({client_naive / client_ionflow:.1f}x)"
            )
        print(f"speed-up over the naive loop: {ratio:.1f}x (target >= 5x)")
        print(
            f"whole campaign: submit {t_ionflow:.1f} s (target <= 60 s); with load+plan "
            f"{t_load + t_plan + t_ionflow:.1f} s"
        )
        ok_time, ok_ratio = t_ionflow <= 60 * len(planned) / 1000, ratio >= 5
        print(
            f"targets: submit time {'met' if ok_time else 'MISSED'}, "
            f"speed-up {'met' if ok_ratio else 'MISSED'}"
        )
        return 0 if (ok_time and ok_ratio) or not args.strict else 1
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
