"""``ionflow density`` and ``ionflow jumps``: where the mobile ions go, and how they hop."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app
from ionflow.cli.analysis_cmds import (
    DriftOpt,
    FormatOpt,
    JsonOpt,
    QuietOpt,
    SkipFramesOpt,
    SpeciesOpt,
    StepSkipOpt,
    StructureOpt,
    TemperatureOpt,
    TimeStepOpt,
    TrajArg,
    run_streamed,
)
from ionflow.errors import UserInputError

SpacingOpt = Annotated[float, typer.Option(help="Density grid spacing, Å")]
SmoothOpt = Annotated[
    float, typer.Option(help="σ of the Gaussian smoothing for sites, Å (0: none)")
]
MergeOpt = Annotated[float, typer.Option(help="Density maxima closer than this merge, Å")]
MinRatioOpt = Annotated[
    float, typer.Option(help="A site's smoothed density is at least this × the mean density")
]


def _positive(name: str, value: float | None, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if zero_ok else value > 0
    if not (math.isfinite(value) and ok):
        raise UserInputError(f"{name} must be {'≥' if zero_ok else '>'} 0, got {value:g}")


def read_fractional(path: Path, species: str | None = None, what: str = "sites"):
    """Fractional coordinates from a file: a text file (3 numbers a line, ``#`` comments,
    commas or spaces), a JSON list of triples or an object with ``sites_frac`` (the
    ``ionflow density --json`` output), or a structure file (POSCAR, CIF, …: the sites of
    ``species``). Returns (array (n, 3), lattice or None, description)."""
    import numpy as np

    if not path.exists():
        raise UserInputError(f"{path}: no such file")
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, expected a file of {what}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        text = None
    if text is not None and text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        rows = doc.get("sites_frac") if isinstance(doc, dict) else doc
        if rows is None:
            raise UserInputError(f"{path}: JSON without 'sites_frac' (expected {what})")
        try:
            arr = np.asarray(rows, dtype=float)
        except (TypeError, ValueError):
            raise UserInputError(f"{path}: 'sites_frac' is not a list of 3 numbers each") from None
        if arr.size == 0:
            raise UserInputError(f"{path}: no {what}")
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise UserInputError(f"{path}: expected rows of 3 fractional coordinates")
        return arr, None, f"{len(arr)} {what} from {path}"
    if text is not None:
        rows, bad = [], None
        for no, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            parts = line.split()
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                bad = no
                break
            if len(vals) != 3:
                bad = no
                break
            rows.append(vals)
        if bad is None and rows:
            arr = np.asarray(rows)
            if not np.all(np.isfinite(arr)):
                raise UserInputError(f"{path}: non-finite coordinate")
            return arr, None, f"{len(arr)} {what} from {path}"
    # a structure file
    try:
        import warnings

        from pymatgen.core import Structure

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            struct = Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 (pymatgen raises anything on a bad file)
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserInputError(
            f"{path}: neither 3 fractional coordinates a line, JSON with 'sites_frac', nor a "
            f"structure file ({detail})"
        ) from None
    if species is None:
        raise UserInputError(f"{path}: a structure file needs a species")
    idx = [i for i, s in enumerate(struct) if species in {e.symbol for e in s.species}]
    if not idx:
        raise UserInputError(f"{path}: no {species} sites in the structure")
    arr = np.array([struct[i].frac_coords for i in idx]) % 1.0
    return arr, np.array(struct.lattice.matrix), f"the {len(arr)} {species} sites of {path}"


@app.command("density")
def density_cmd(
    traj: TrajArg,
    species: SpeciesOpt = "Li",
    out: Annotated[
        Path | None, typer.Option(help="Write the density as VASP CHGCAR (VESTA, pymatgen)")
    ] = None,
    grid_spacing_a: SpacingOpt = 0.2,
    smooth_a: SmoothOpt = 0.3,
    merge_radius_a: MergeOpt = 1.0,
    site_min_ratio: MinRatioOpt = 3.0,
    iso_level: Annotated[
        float, typer.Option(help="Iso-level of the percolation dimension, × the mean density")
    ] = 1.0,
    temperature_k: TemperatureOpt = None,
    time_step_fs: TimeStepOpt = None,
    step_skip: StepSkipOpt = 1,
    drift_reference: DriftOpt = "auto",
    skip_frames: SkipFramesOpt = 0,
    structure: StructureOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a density projection with the sites (PNG/PDF/SVG)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Time-averaged probability density of the mobile ions: sites, pathway percolation,
    and a CHGCAR to look at."""
    from ionflow.analysis.density import Density, plot_density

    _positive("--grid-spacing-a", grid_spacing_a)
    _positive("--smooth-a", smooth_a, zero_ok=True)
    _positive("--merge-radius-a", merge_radius_a)
    _positive("--site-min-ratio", site_min_ratio, zero_ok=True)
    _positive("--iso-level", iso_level)
    if out is not None and out.is_dir():
        raise UserInputError(f"--out {out}: is a directory, expected a file name")
    if out is not None and not out.parent.exists():
        raise UserInputError(f"--out {out}: directory {out.parent} does not exist")
    analysis = Density(
        out=out,
        grid_spacing_a=grid_spacing_a,
        smooth_a=smooth_a,
        merge_radius_a=merge_radius_a,
        site_min_ratio=site_min_ratio,
        iso_level=iso_level,
    )
    res = run_streamed(
        traj, [analysis], species=species, temperature_k=temperature_k,
        time_step_fs=time_step_fs, step_skip=step_skip, skip_frames=skip_frames,
        drift_reference=drift_reference, structure=structure, fmt=fmt, quiet=quiet,
    )["density"]  # fmt: skip
    if plot is not None:
        plot_density(res, analysis.smoothed_rel, analysis.lattice0, plot)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if as_json:
        typer.echo(json.dumps(res.model_dump(mode="json"), indent=1))
        return
    lv = ", ".join(
        f"{d}-D up to {v:.3g}ρ̄"
        + (
            f" ({res.percolation_barriers_ev[d]:.3f} eV)"
            if res.percolation_barriers_ev.get(d) is not None
            else ""
        )
        if v is not None
        else f"{d}-D not above the noise floor"
        for d, v in res.percolation_levels.items()
    )
    typer.echo(
        f"{res.species} density of {res.n_frames} frames on a {'×'.join(map(str, res.grid))} grid"
        + (f" → {res.file}" if res.file else " (no --out: no file written)")
    )
    typer.echo(
        f"sites: {res.n_sites} (maxima ≥ {res.site_min_ratio:g}ρ̄, merged within "
        f"{res.merge_radius_a:g} Å; peak density {res.max_density_rel:.3g}ρ̄)"
    )
    typer.echo(
        f"percolation: {res.percolation_dimension}-D at {res.iso_level:g}ρ̄; {lv} "
        f"(noise floor {res.noise_floor_rel:.2g}ρ̄)"
    )


@app.command("jumps")
def jumps_cmd(
    traj: TrajArg,
    species: SpeciesOpt = "Li",
    sites: Annotated[
        Path | None,
        typer.Option(
            help="Sites: fractional coordinates (text, 3 a line), `ionflow density --json` "
            "output, or a structure file (its --species sites); default: density maxima"
        ),
    ] = None,
    site_radius_a: Annotated[
        float | None,
        typer.Option(help="One site radius, Å (default per site: min(1 Å, 0.4 × nearest site))"),
    ] = None,
    cage_centers: Annotated[
        Path | None,
        typer.Option(
            help="Cage centres (fractional, same formats as --sites): classify jumps as "
            "intra-/inter-cage by the nearest centre (default: the isolated anions)"
        ),
    ] = None,
    auto_cages: Annotated[
        bool,
        typer.Option(
            "--auto-cages/--no-auto-cages",
            help="Without --cage-centers: cages around the isolated anions of the first frame "
            "(anions bonded to no framework cation, the pinned control's rule)",
        ),
    ] = True,
    tracer_diffusivity_cm2_s: Annotated[
        float | None, typer.Option(help="D* for f (default: the MSD of this run)")
    ] = None,
    tracer_diffusivity_err_cm2_s: Annotated[
        float | None, typer.Option(help="1σ of the given D*")
    ] = None,
    grid_spacing_a: SpacingOpt = 0.2,
    smooth_a: SmoothOpt = 0.3,
    merge_radius_a: MergeOpt = 1.0,
    site_min_ratio: MinRatioOpt = 3.0,
    temperature_k: TemperatureOpt = None,
    time_step_fs: TimeStepOpt = None,
    step_skip: StepSkipOpt = 1,
    drift_reference: DriftOpt = "auto",
    skip_frames: SkipFramesOpt = 0,
    structure: StructureOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write the jump network and jump lengths (PNG/PDF/SVG)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Jumps between sites: rate, length, jump diffusivity, correlation factor f = D*/D_jump."""
    from ionflow.analysis.jumps import Jumps, plot_jumps

    _positive("--site-radius-a", site_radius_a)
    _positive("--grid-spacing-a", grid_spacing_a)
    _positive("--smooth-a", smooth_a, zero_ok=True)
    _positive("--merge-radius-a", merge_radius_a)
    _positive("--site-min-ratio", site_min_ratio, zero_ok=True)
    _positive("--tracer-diffusivity-cm2-s", tracer_diffusivity_cm2_s)
    _positive("--tracer-diffusivity-err-cm2-s", tracer_diffusivity_err_cm2_s, zero_ok=True)
    if (tracer_diffusivity_cm2_s is None) != (tracer_diffusivity_err_cm2_s is None):
        raise UserInputError(
            "give --tracer-diffusivity-cm2-s and --tracer-diffusivity-err-cm2-s together"
        )
    sites_frac = sites_lattice = sites_desc = None
    if sites is not None:
        sites_frac, sites_lattice, sites_desc = read_fractional(sites, species, "sites")
    centres = None
    if cage_centers is not None:
        centres, _, _ = read_fractional(cage_centers, None, "cage centres")
    analysis = Jumps(
        sites_frac=sites_frac,
        sites_source=sites_desc,
        sites_lattice=sites_lattice,
        site_radius_a=site_radius_a,
        cage_centers_frac=centres,
        auto_cages=auto_cages,
        tracer_diffusivity_cm2_s=tracer_diffusivity_cm2_s,
        tracer_diffusivity_err_cm2_s=tracer_diffusivity_err_cm2_s,
        grid_spacing_a=grid_spacing_a,
        smooth_a=smooth_a,
        merge_radius_a=merge_radius_a,
        site_min_ratio=site_min_ratio,
    )
    res = run_streamed(
        traj, [analysis], species=species, temperature_k=temperature_k,
        time_step_fs=time_step_fs, step_skip=step_skip, skip_frames=skip_frames,
        drift_reference=drift_reference, structure=structure, fmt=fmt, quiet=quiet,
    )["jumps"]  # fmt: skip
    if plot is not None:
        plot_jumps(res, analysis.lattice0, plot)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if as_json:
        typer.echo(json.dumps(res.model_dump(mode="json"), indent=1))
        return

    def pm(x, e, spec=".3g"):
        return "—" if x is None else format(x, spec) + ("" if e is None else f" ± {e:.2g}")

    typer.echo(
        f"{res.species}: {res.n_jumps} jumps between {res.n_sites} sites in {res.duration_ps:.3g} ps "
        f"({res.n_mobile} ions; on a site {res.fraction_on_site:.0%} of the time)"
    )
    typer.echo(f"jump rate Γ = {pm(res.jump_rate_per_ps, res.jump_rate_err_per_ps)} /ps per ion; "
               f"residence {pm(res.residence_time_ps, None)} ps")  # fmt: skip
    typer.echo(
        f"jump length ⟨a⟩ = {pm(res.mean_jump_length_a, None)} Å; D_jump = Γ⟨a²⟩/6 = "
        f"{pm(res.jump_diffusivity_cm2_s, res.jump_diffusivity_err_cm2_s)} cm²/s"
    )
    typer.echo(
        f"D* = {pm(res.tracer_diffusivity_cm2_s, res.tracer_diffusivity_err_cm2_s)} cm²/s "
        f"({res.tracer_diffusivity_source})"
    )
    typer.echo(
        f"correlation factor f = {pm(res.correlation_factor, res.correlation_factor_err, '.3f')}"
        + (
            ""
            if res.correlation_factor is not None or res.tracer_diffusivity_cm2_s is None
            else f" ({res.correlation_factor_reason})"
        )
    )
    if res.n_inter_cage_jumps is not None:
        typer.echo(
            f"cages: {res.n_inter_cage_jumps} inter-cage, {res.n_intra_cage_jumps} intra-cage "
            f"jumps ({res.inter_cage_jump_rate_per_ps:.3g} / {res.intra_cage_jump_rate_per_ps:.3g} "
            f"per ion per ps); {res.n_cages} centres: {res.cage_source}"
        )
