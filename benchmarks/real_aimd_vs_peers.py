"""Benchmark: ionflow vs kinisi vs pymatgen-analysis-diffusion on real Li6PS5I AIMD.

Data: ``shared/data/argyrodite-morgan2021`` (B. J. Morgan, Chem. Mater. 33, 2004 (2021), MIT):
Li6PS5I at 500 K, three S/I site-disorder levels ``0p``, ``50p``, ``100p``; the ``runN`` of a
level are consecutive segments of one trajectory (POTIM 2 fs, a frame every 50 steps = 100 fs,
416 atoms, 192 Li, ~70 ps per level). Each level is read ONCE with ionflow's reader (all
segments, in numeric run order); every tool below works on that one reading, except ionflow's
headline row, which is the documented ``analyze_file(list_of_paths, ...)`` call (and is checked
against ``analyze_arrays`` on the shared reading).

Per level:

1. **Same window** (ionflow's default window for the run):

   * ``ionflow``  - ``analyze_file(paths, species="Li", temperature_k=500,
     frame_interval_fs=100)``: regime, D, total error and its statistical/systematic parts (when
     the installed ionflow reports them), fit window, ``local_diffusivities``. A non-diffusive
     regime (no D) prints the regime, the reason and the local D's instead of failing.
   * ``kinisi``   - kinisi 2.1.0 ``DiffusionAnalyzer.from_xdatcar`` on the same structures
     (``time_step`` 2 fs, ``step_skip`` 50, so one frame = 100 fs), ``dt`` grid = every frame lag
     from 100 fs up to ionflow's window end (kinisi fits up to the longest ``dt`` it computes),
     ``diffusion(start_dt=window start)``. D = posterior mean, error = posterior std, plus the
     68 % credible interval (16th-84th percentiles). kinisi's MCMC defaults are used
     (32 walkers x 1000 samples after 500 burn-in, thinning 10 -> 3,200 samples; ~2 s per fit
     here, so nothing cheaper is needed).
   * ``kinisi·T`` - the same kinisi fit, but its MSD computed on the full ``dt`` grid (up to the
     run length, kinisi's default) and cut at the window end before the fit. kinisi counts the
     independent samples of a lag as ``N_ions x dt_max / dt`` with ``dt_max`` the longest lag
     *of the grid*, so a grid that stops at the window end shrinks that count and widens the
     posterior; this row shows by how much (the point estimate barely moves).
     Every kinisi fit also prints how many eigenvalues of kinisi's covariance model are negative
     before its reconditioning and the condition number after; a fit whose posterior ran away
     (median > 10x the OLS slope of kinisi's own MSD) is flagged DIVERGED and left out of ratios.
   * ``pymatgen`` - ``pymatgen.analysis.diffusion.analyzer.DiffusionAnalyzer.from_structures``
     (``smoothed="max"``, its own lag choice: 1 ps to the whole run, 1/t weights); its error is
     an OLS slope error of correlated points, not an error bar.
   * ``pmg-OLS``  - an unweighted OLS of pymatgen's own ``msd`` array restricted to ionflow's
     window (numpy), with the OLS slope error (again not an error bar).

2. **Window dependence**: D on 2-20 ps and on 20-35 ps by each tool (ionflow with
   ``fit_window_ps``, kinisi with its ``dt`` grid ending at the window end, pymatgen as an OLS
   of its ``msd`` on the window), with their errors, and the z-score of the difference.

3. **Four blocks**: the level's frames split into 4 consecutive blocks, each analysed by ionflow
   with its default window: block D's, their reported errors, chi^2/dof of the block D's about
   their inverse-variance weighted mean, and std(block D) / mean(reported block error)
   (~1 when the reported errors are honest for runs of the block length).

Run from the repository root::

    .venv/bin/python benchmarks/real_aimd_vs_peers.py                # all 3 levels, ~1.5 min
    .venv/bin/python benchmarks/real_aimd_vs_peers.py --levels 50p   # one level
    .venv/bin/python benchmarks/real_aimd_vs_peers.py --skip-kinisi  # ionflow + pymatgen only

Prints only; writes nothing. Exit status 1 if a level could not be read or ionflow failed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "argyrodite-morgan2021" / "Li6PS5I"
FALLBACK_DATA = Path("/work/shared/data/argyrodite-morgan2021/Li6PS5I")

SPECIES = "Li"
TEMPERATURE_K = 500.0
POTIM_FS = 2.0
STEP_SKIP = 50
FRAME_FS = POTIM_FS * STEP_SKIP  # 100 fs between stored frames
WINDOWS_PS = ((2.0, 20.0), (20.0, 35.0))


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def level_paths(data_dir: Path, level: str) -> list[Path]:
    """``runN/actual_XDATCAR.gz`` of one level, in numeric run order (run10 after run9)."""
    runs = [p for p in (data_dir / level).glob("run*/actual_XDATCAR.gz")]
    return sorted(runs, key=lambda p: int(re.search(r"run(\d+)", p.parent.name).group(1)))


def read_level(paths: list[Path]):
    """One reading with ionflow's reader: positions (frames, atoms, 3) Å, lattices, species."""
    import numpy as np

    from ionflow.analysis.readers import open_trajectory

    src = open_trajectory([str(p) for p in paths])
    pos, lat = [], []
    for p, lt in src.iter_chunks(chunk_frames=4096):
        pos.append(p)
        lat.append(lt)
    return np.concatenate(pos), np.concatenate(lat), list(src.info.species)


def to_structures(positions, lattices, species):
    from pymatgen.core import Lattice, Structure

    lat0 = Lattice(lattices[0])
    same = bool((lattices == lattices[0]).all())
    return [
        Structure(lat0 if same else Lattice(lattices[i]), species, positions[i],
                  coords_are_cartesian=True)
        for i in range(positions.shape[0])
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# the three tools
# --------------------------------------------------------------------------------------------


def ionflow_summary(res) -> dict:
    """The fields this benchmark prints; new/optional fields read with getattr."""
    return {
        "regime": str(getattr(res, "regime", "?")),
        "reason": getattr(res, "regime_reason", ""),
        "D": getattr(res, "diffusivity_cm2_s", None),
        "err": getattr(res, "diffusivity_err_cm2_s", None),
        "stat": getattr(res, "diffusivity_stat_err_cm2_s", None),
        "sys": getattr(res, "diffusivity_sys_err_cm2_s", None),
        "window": tuple(float(x) for x in res.fit_window_ps),
        "alpha": getattr(res, "msd_exponent", None),
        "window_z": getattr(res, "window_z", None),
        "local": [
            (tuple(float(x) for x in ld.window_ps), ld.diffusivity_cm2_s, ld.diffusivity_err_cm2_s)
            for ld in (getattr(res, "local_diffusivities", None) or [])
        ],
        "warnings": list(getattr(res, "warnings", []) or []),
        "duration_ps": getattr(res, "duration_ps", None),
    }


def ionflow_arrays(positions, lattices, species, window=None) -> dict:
    from ionflow.analysis import analyze_arrays

    kw = {} if window is None else {"fit_window_ps": tuple(window)}
    try:
        res = analyze_arrays(
            positions, lattices, species, species=SPECIES, temperature_k=TEMPERATURE_K,
            frame_interval_fs=FRAME_FS, **kw,
        )  # fmt: skip
    except Exception as exc:  # report, never crash the benchmark
        return {"error": f"{type(exc).__name__}: {exc}", "window": window}
    return ionflow_summary(res)


def lag_frames(t_ps: float, mode: str) -> int:
    x = t_ps * 1000.0 / FRAME_FS
    return int(math.ceil(x - 1e-9)) if mode == "ceil" else int(math.floor(x + 1e-9))


def kinisi_fit(structures, window, args, full_grid: bool = False) -> dict:
    """kinisi 2.1.0 on ``window`` (ps): dt grid ends at the window end (or at the run end for
    ``full_grid``, with the MSD cut at the window end before the fit)."""
    import numpy as np
    import scipp as sc
    from kinisi.analyze import DiffusionAnalyzer

    n_frames = len(structures)
    n_end = min(lag_frames(window[1], "floor"), n_frames - 1)
    n_grid = n_frames - 1 if full_grid else n_end
    dt = sc.arange("time interval", 1, n_grid + 1) * sc.scalar(FRAME_FS, unit="fs")
    t0 = time.perf_counter()
    try:
        kda = DiffusionAnalyzer.from_xdatcar(
            SimpleNamespace(structures=structures),  # what from_xdatcar reads of an Xdatcar
            specie=SPECIES,
            time_step=sc.scalar(POTIM_FS, unit="fs"),
            step_skip=sc.scalar(STEP_SKIP, unit=sc.units.dimensionless),
            dt=dt,
            progress=False,
        )
        if full_grid:
            dg = kda.dg
            kda._dg = sc.DataGroup(
                {"da": dg["da"]["time interval", :n_end], "dimensionality": dg["dimensionality"]}
            )
        kda.diffusion(
            sc.scalar(float(window[0]), unit="ps"),
            n_samples=args.kinisi_samples,
            n_walkers=args.kinisi_walkers,
            n_burn=args.kinisi_burn,
            n_thin=args.kinisi_thin,
            progress=False,
            random_state=np.random.RandomState(args.seed),
        )
        d = np.asarray(kda.D.values, dtype=np.float64)
        unit = str(kda.D.unit)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "window": tuple(window)}
    if unit not in ("cm^2/s", "cm**2/s", "cm2/s"):
        return {"error": f"unexpected kinisi D unit {unit!r}", "window": tuple(window)}
    da = kda.dg["da"]
    t_fs = np.asarray(da.coords["time interval"].values, dtype=np.float64)
    i0 = int(np.argmax(t_fs >= window[0] * 1000.0 - 1e-6))
    diag = kinisi_diagnostics(
        t_fs[i0:], da.values[i0:], da.variances, da.coords["n_samples"].values, i0,
        kda.diff.covariance_matrix.values,
    )  # fmt: skip
    p16, p50, p84 = np.percentile(d, [16, 50, 84])
    ref = abs(diag["ols_D"])
    diverged = (not np.isfinite(d).all()) or p50 > 10.0 * ref or p84 > 100.0 * ref
    return {
        "D": float(d.mean()),
        "err": float(d.std(ddof=1)),
        "median": float(p50),
        "ci68": (float(p16), float(p84)),
        "window": (float(t_fs[i0] / 1000.0), float(t_fs[-1] / 1000.0)),
        "n_samples": int(d.size),
        "seconds": time.perf_counter() - t0,
        "diverged": bool(diverged),
        **diag,
    }


def kinisi_diagnostics(t_fs, msd, variances, n_samples, i0, cov_used) -> dict:
    """What kinisi's fit rests on: its covariance model before and after its reconditioning.

    kinisi 2.1.0 models Cov[MSD(t_i), MSD(t_j)] = var_i · n_i / n_j (i ≤ j), var_i the variance of
    the mean squared displacement at lag i and n_i = N_ions · dt_max / dt_i. That matrix is
    positive definite only while var_i grows about as fast as t² (Brownian); where the squared
    displacements saturate (caged / sub-diffusive ions) it is indefinite, kinisi's reconditioning
    (minimum-eigenvalue method + nearest PSD matrix) leaves it numerically singular, and the
    likelihood is flat along the null directions: the MCMC walkers run away.
    Also returns the unweighted OLS D of kinisi's own MSD on the window (a sanity reference).
    """
    import numpy as np

    v = np.asarray(variances, dtype=np.float64)
    n = np.asarray(n_samples, dtype=np.float64)
    model = np.triu(v[:, None] * n[:, None] / n[None, :])
    model = model + model.T - np.diag(np.diag(model))
    ev = np.linalg.eigvalsh(model[i0:, i0:])
    slope = np.polyfit(t_fs, msd, 1)[0]  # Å²/fs
    return {
        "ols_D": float(slope * 0.1 / 6.0),  # Å²/fs = 0.1 cm²/s; 3D
        "n_lags": int(ev.size),
        "neg_eig": int((ev < 0).sum()),
        "cond": float(np.linalg.cond(cov_used)),
    }


def pymatgen_analyzer(structures) -> dict:
    import numpy as np
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer

    t0 = time.perf_counter()
    try:
        da = DiffusionAnalyzer.from_structures(
            structures, SPECIES, TEMPERATURE_K, POTIM_FS, STEP_SKIP, smoothed="max"
        )
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    dt_ps = np.asarray(da.dt, dtype=np.float64) / 1000.0
    return {
        "D": float(da.diffusivity),
        "err": float(da.diffusivity_std_dev),
        "window": (float(dt_ps[0]), float(dt_ps[-1])),
        "dt_ps": dt_ps,
        "msd": np.asarray(da.msd, dtype=np.float64),
        "seconds": time.perf_counter() - t0,
    }


def ols_on_window(dt_ps, msd, window) -> dict:
    """Unweighted OLS of MSD = 6 D t + c on the points of ``dt_ps`` inside ``window``."""
    import numpy as np

    sel = (dt_ps >= window[0] - 1e-9) & (dt_ps <= window[1] + 1e-9)
    if sel.sum() < 3:
        return {"error": f"{int(sel.sum())} pymatgen lags in {window} ps", "window": window}
    coef, cov = np.polyfit(dt_ps[sel], msd[sel], 1, cov=True)
    scale = 1e-4 / 6.0  # Å²/ps -> cm²/s, 3D
    return {
        "D": float(coef[0] * scale),
        "err": float(math.sqrt(cov[0, 0]) * scale),
        "window": (float(dt_ps[sel][0]), float(dt_ps[sel][-1])),
        "n_points": int(sel.sum()),
    }


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------


def kinisi_diag_text(r: dict) -> str:
    txt = (
        f"covariance model: {r['neg_eig']}/{r['n_lags']} eigenvalues < 0 before reconditioning, "
        f"condition number {r['cond']:.1e} after; OLS of its MSD {fmt_d(r['ols_D'])}"
    )
    return ("DIVERGED (improper posterior) — " + txt) if r.get("diverged") else txt


def fmt_d(x) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def fmt_w(w) -> str:
    return "n/a" if not w else f"{w[0]:5.2f}–{w[1]:5.2f} ps"


def ionflow_err_text(s: dict) -> str:
    if s.get("err") is None:
        return "n/a"
    parts = []
    if s.get("stat") is not None:
        parts.append(f"stat {s['stat']:.2e}")
    if s.get("sys") is not None:
        parts.append(f"sys {s['sys']:.2e}")
    return f"{s['err']:.2e}" + (f" ({', '.join(parts)})" if parts else "")


def print_local(s: dict, indent: str = "      ") -> None:
    if s.get("local"):
        for w, d, e in s["local"]:
            print(f"{indent}local D on {fmt_w(w)}: {fmt_d(d)} ± {fmt_d(e)} cm²/s")
    else:
        print(f"{indent}(no local_diffusivities reported by this ionflow)")


def row(level: str, tool: str, r: dict, d_ref, err_text: str | None = None) -> None:
    if "error" in r:
        print(f"  {level:<5} {tool:<9} {fmt_w(r.get('window')):<17} FAILED: {r['error']}")
        return
    d = r.get("D")
    ratio = f"{d / d_ref:6.3f}" if (d is not None and d_ref and not r.get("diverged")) else "   n/a"
    if r.get("diverged"):
        err_text = "DIVERGED: improper posterior (singular covariance), D meaningless"
    err = (
        err_text if err_text is not None else ("n/a" if r.get("err") is None else f"{r['err']:.2e}")
    )
    print(f"  {level:<5} {tool:<9} {fmt_w(r.get('window')):<17} {fmt_d(d):>10}  {ratio}  {err}")


def z_diff(a: dict, b: dict):
    if any(x.get(k) is None for x in (a, b) for k in ("D", "err")):
        return None
    s = math.hypot(a["err"], b["err"])
    return (a["D"] - b["D"]) / s if s > 0 else None


# --------------------------------------------------------------------------------------------
# per level
# --------------------------------------------------------------------------------------------


def run_level(level: str, paths: list[Path], args) -> dict:
    import numpy as np

    from ionflow.analysis import analyze_file

    out: dict = {"level": level}
    t0 = time.perf_counter()
    positions, lattices, species = read_level(paths)
    t_read = time.perf_counter() - t0
    n_frames = positions.shape[0]
    n_li = sum(1 for s in species if s == SPECIES)
    print(
        f"\n== {level}: {len(paths)} segments ({', '.join(p.parent.name for p in paths)}), "
        f"{n_frames} frames x {len(species)} atoms ({n_li} {SPECIES}), "
        f"{(n_frames - 1) * FRAME_FS / 1000:.1f} ps; read in {t_read:.1f} s =="
    )

    # (a) ionflow, the documented call
    t0 = time.perf_counter()
    try:
        res = analyze_file(
            [str(p) for p in paths], species=SPECIES, temperature_k=TEMPERATURE_K,
            frame_interval_fs=FRAME_FS,
        )  # fmt: skip
        ion = ionflow_summary(res)
    except Exception as exc:
        print(f"  ionflow analyze_file FAILED: {type(exc).__name__}: {exc}")
        out["failed"] = True
        return out
    t_ion = time.perf_counter() - t0
    out["ionflow"] = ion
    window = ion["window"]
    alpha = "n/a" if ion["alpha"] is None else f"{ion['alpha']:.2f}"
    print(
        f"  ionflow ({t_ion:.1f} s): regime {ion['regime']} — {ion['reason']}; "
        f"window {fmt_w(window)}; MSD log-log slope α = {alpha}"
        + ("" if ion["window_z"] is None else f"; window z = {ion['window_z']:+.2f}")
    )
    if ion["D"] is None:
        print("    no D reported (regime not diffusive); local diffusivities:")
    print_local(ion, indent="    ")
    for w in ion["warnings"]:
        print(f"    warning: {w}")
    same = ionflow_arrays(positions, lattices, species)
    if "error" not in same and same["D"] is not None and ion["D"] is not None:
        print(
            f"    check: analyze_arrays on the shared reading gives D = {fmt_d(same['D'])} "
            f"(rel. diff {same['D'] / ion['D'] - 1:+.1e}), window {fmt_w(same['window'])}"
        )

    need_structures = not (args.skip_kinisi and args.skip_pymatgen)
    structures = None
    if need_structures:
        t0 = time.perf_counter()
        structures = to_structures(positions, lattices, species)
        print(
            f"    {len(structures)} pymatgen Structures built in {time.perf_counter() - t0:.1f} s"
        )

    # (b) kinisi on the same window
    if not args.skip_kinisi:
        out["kinisi"] = kinisi_fit(structures, window, args)
        out["kinisi_T"] = kinisi_fit(structures, window, args, full_grid=True)
        for key in ("kinisi", "kinisi_T"):
            r = out[key]
            if "error" not in r:
                print(
                    f"    {key.replace('_T', '·T'):<8} ({r['seconds']:.1f} s, {r['n_samples']} "
                    f"posterior samples): median {fmt_d(r['median'])}, 68 % CI "
                    f"[{fmt_d(r['ci68'][0])}, {fmt_d(r['ci68'][1])}] cm²/s; {kinisi_diag_text(r)}"
                )

    # (c) pymatgen
    if not args.skip_pymatgen:
        out["pymatgen"] = pmg = pymatgen_analyzer(structures)
        if "error" not in pmg:
            print(
                f"    pymatgen ({pmg['seconds']:.1f} s): smoothed='max', {len(pmg['dt_ps'])} lags "
                f"{fmt_w(pmg['window'])}"
            )
            out["pmg_ols"] = ols_on_window(pmg["dt_ps"], pmg["msd"], window)

    # table: same window
    d_ref = ion["D"]
    print(f"\n  {'level':<5} {'tool':<9} {'window':<17} {'D cm²/s':>10}  {'/ionfl':>6}  error (1σ)")
    row(level, "ionflow", ion, d_ref, ionflow_err_text(ion))
    if ion["D"] is None:
        print(f"  {'':<5} {'':<9} regime {ion['regime']}: {ion['reason']}")
    if "kinisi" in out:
        for key, label in (("kinisi", "kinisi"), ("kinisi_T", "kinisi·T")):
            r = out[key]
            txt = None if "error" in r else (
                f"{r['err']:.2e} (posterior std; 68 % CI {fmt_d(r['ci68'][0])}–{fmt_d(r['ci68'][1])})"
            )  # fmt: skip
            row(level, label, r, d_ref, txt)
    if "pymatgen" in out:
        pmg = out["pymatgen"]
        row(
            level,
            "pymatgen",
            pmg,
            d_ref,
            None if "error" in pmg else f"{pmg['err']:.2e} (OLS σ, not an error bar)",
        )
        if "pmg_ols" in out:
            r = out["pmg_ols"]
            row(
                level,
                "pmg-OLS",
                r,
                d_ref,
                None
                if "error" in r
                else f"{r['err']:.2e} (OLS σ of {r['n_points']} correlated points)",
            )

    # window dependence
    print("\n  window dependence (D on 2–20 ps vs 20–35 ps):")
    wd: dict = {}
    for w in WINDOWS_PS:
        wd[("ionflow", w)] = ionflow_arrays(positions, lattices, species, w)
        if not args.skip_kinisi:
            wd[("kinisi", w)] = kinisi_fit(structures, w, args)
        if not args.skip_pymatgen and "error" not in out.get("pymatgen", {"error": 1}):
            wd[("pmg-OLS", w)] = ols_on_window(out["pymatgen"]["dt_ps"], out["pymatgen"]["msd"], w)
    for tool in ("ionflow", "kinisi", "pmg-OLS"):
        rs = [wd.get((tool, w)) for w in WINDOWS_PS]
        if rs[0] is None:
            continue
        cells = []
        for w, r in zip(WINDOWS_PS, rs, strict=True):
            if "error" in r:
                cells.append(f"{w[0]:g}–{w[1]:g}: FAILED ({r['error']})")
            elif r.get("diverged"):
                cells.append(f"{w[0]:g}–{w[1]:g}: DIVERGED (posterior median {fmt_d(r['median'])})")
            elif r.get("D") is None:
                loc = "; ".join(
                    f"{fmt_w(lw)} {fmt_d(ld)}±{fmt_d(le)}" for lw, ld, le in r.get("local", [])
                )
                cells.append(
                    f"{w[0]:g}–{w[1]:g}: no D, regime {r.get('regime')} ({r.get('reason')})"
                    + (f" [local: {loc}]" if loc else "")
                )
            else:
                err = ionflow_err_text(r) if tool == "ionflow" else f"{r['err']:.2e}"
                cells.append(f"{w[0]:g}–{w[1]:g}: {fmt_d(r['D'])} ± {err}")
        ratio = ""
        if all("error" not in r and r.get("D") and not r.get("diverged") for r in rs):
            z = z_diff(rs[1], rs[0])
            ratio = f"  late/early {rs[1]['D'] / rs[0]['D']:.2f}" + (
                "" if z is None else f" (z {z:+.1f})"
            )
        print(f"    {tool:<8} " + " | ".join(cells) + ratio)
    if not args.skip_pymatgen:
        print("    (pmg-OLS errors are OLS slope errors of correlated points, not error bars)")
    out["windows"] = wd

    # blocks
    nb = args.blocks
    print(f"\n  {nb}-block analysis (ionflow, default window per block):")
    edges = np.linspace(0, n_frames, nb + 1).astype(int)
    blocks = []
    for b in range(nb):
        sl = slice(edges[b], edges[b + 1])
        r = ionflow_arrays(positions[sl], lattices[sl], species)
        blocks.append(r)
        if "error" in r:
            print(f"    block {b + 1}: frames {edges[b]}–{edges[b + 1] - 1}: FAILED {r['error']}")
            continue
        line = (
            f"    block {b + 1}: frames {edges[b]:>3}–{edges[b + 1] - 1:<3} window {fmt_w(r['window'])}"
            f"  regime {r['regime']:<12} D = {fmt_d(r['D'])} ± {ionflow_err_text(r)}"
        )
        print(line)
        if r["D"] is None:
            print(f"      reason: {r['reason']}")
            print_local(r, indent="      ")
    good = [r for r in blocks if "error" not in r and r["D"] is not None and r["err"]]
    if len(good) >= 2:
        d = np.array([r["D"] for r in good])
        e = np.array([r["err"] for r in good])
        w = 1.0 / e**2
        mean_w = float((w * d).sum() / w.sum())
        chi2 = float((((d - mean_w) / e) ** 2).sum())
        dof = len(d) - 1
        ratio = float(d.std(ddof=1) / e.mean())
        print(
            f"    {len(good)} blocks with D: weighted mean {mean_w:.3e} ± {w.sum() ** -0.5:.1e}; "
            f"χ²/dof = {chi2:.2f}/{dof} = {chi2 / dof:.2f}; std(block D) / mean(reported error) "
            f"= {d.std(ddof=1):.2e} / {e.mean():.2e} = {ratio:.2f}"
        )
        out["blocks"] = {"chi2_dof": chi2 / dof, "std_over_err": ratio, "mean_w": mean_w}
    else:
        print(f"    only {len(good)} block(s) with a D: no χ² test")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the Li6PS5I folder (default: shared/data/argyrodite-morgan2021/Li6PS5I)",
    )
    parser.add_argument("--levels", nargs="+", default=["0p", "50p", "100p"])
    parser.add_argument("--skip-kinisi", action="store_true")
    parser.add_argument("--skip-pymatgen", action="store_true")
    parser.add_argument("--blocks", type=int, default=4, help="consecutive blocks per level")
    parser.add_argument(
        "--kinisi-samples", type=int, default=1000, help="kinisi n_samples (default as kinisi)"
    )
    parser.add_argument(
        "--kinisi-walkers", type=int, default=32, help="kinisi n_walkers (default as kinisi)"
    )
    parser.add_argument(
        "--kinisi-burn", type=int, default=500, help="kinisi n_burn (default as kinisi)"
    )
    parser.add_argument(
        "--kinisi-thin", type=int, default=10, help="kinisi n_thin (default as kinisi)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of kinisi's MCMC")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
    args = parser.parse_args(argv)  # fmt: skip

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy is imported

    data_dir = args.data_dir or (DEFAULT_DATA if DEFAULT_DATA.is_dir() else FALLBACK_DATA)
    if not data_dir.is_dir():
        print(f"data folder not found: {data_dir}")
        return 1
    if not args.skip_kinisi:
        try:
            import kinisi
        except ImportError:
            print(
                "kinisi is not installed (pip install -c constraints.txt -e '.[dev]'): skipping it"
            )
            args.skip_kinisi = True
        else:
            print(f"kinisi {kinisi.__version__}; MCMC: {args.kinisi_walkers} walkers x "
                  f"{args.kinisi_samples} samples, burn-in {args.kinisi_burn}, thin "
                  f"{args.kinisi_thin}, seed {args.seed}")  # fmt: skip
    if not args.skip_pymatgen:
        from importlib.metadata import version

        print(f"pymatgen-analysis-diffusion {version('pymatgen-analysis-diffusion')}")
    print(f"data: {data_dir}; T = {TEMPERATURE_K:g} K, frame interval {FRAME_FS:g} fs "
          f"(POTIM {POTIM_FS:g} fs x {STEP_SKIP})")  # fmt: skip

    status = 0
    results = []
    t_all = time.perf_counter()
    for level in args.levels:
        paths = level_paths(data_dir, level)
        if not paths:
            print(f"\n== {level}: no run*/actual_XDATCAR.gz under {data_dir / level} ==")
            status = 1
            continue
        try:
            r = run_level(level, paths, args)
        except Exception as exc:  # keep going with the other levels
            print(f"\n== {level}: FAILED: {type(exc).__name__}: {exc} ==")
            status = 1
            continue
        if r.get("failed"):
            status = 1
        results.append(r)

    # summary across levels
    print("\n== summary (same window = ionflow's default window) ==")
    print(f"  {'level':<5} {'tool':<9} {'window':<17} {'D cm²/s':>10}  {'/ionfl':>6}  error (1σ)")
    for r in results:
        if "ionflow" not in r:
            continue
        ion = r["ionflow"]
        row(
            r["level"],
            "ionflow",
            ion,
            ion["D"],
            ionflow_err_text(ion) + ("" if ion["D"] is not None else f"  [regime {ion['regime']}]"),
        )
        for key, label in (
            ("kinisi", "kinisi"),
            ("kinisi_T", "kinisi·T"),
            ("pymatgen", "pymatgen"),
            ("pmg_ols", "pmg-OLS"),
        ):
            if key in r:
                row(r["level"], label, r[key], ion["D"])
    print("\n  window dependence, D(20–35 ps) / D(2–20 ps):")
    for r in results:
        cells = []
        for tool in ("ionflow", "kinisi", "pmg-OLS"):
            a, b = (r.get("windows", {}).get((tool, w)) for w in WINDOWS_PS)
            ok = [x and "error" not in x and x.get("D") and not x.get("diverged") for x in (a, b)]
            if all(ok):
                cells.append(f"{tool} {b['D'] / a['D']:.2f}")
            elif a and b:
                cells.append(f"{tool} n/a")
        blk = r.get("blocks")
        btxt = (
            f"; blocks χ²/dof {blk['chi2_dof']:.2f}, std/err {blk['std_over_err']:.2f}"
            if blk
            else ""
        )
        print(f"    {r['level']:<5} " + ", ".join(cells) + btxt)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
