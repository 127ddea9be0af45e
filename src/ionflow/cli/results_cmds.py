"""``ionflow query``, ``ionflow report``, ``ionflow export``, ``ionflow export-trajectory``
and ``ionflow export-density``.

All four read an existing project's database: ``--data-dir`` (default ``./ionflow-data``;
its embedded server is started if it is not running, but a directory without a database
is an error, never silently initialised), or ``--uri`` / ``--launchpad``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app, text_cell
from ionflow.errors import UserInputError, printable
from ionflow.uris import check_mongo_uri

DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Project data directory with the embedded database (default ./ionflow-data)"),
]
UriOpt = Annotated[
    str | None,
    typer.Option(
        envvar="IONFLOW_DB_URI", help="MongoDB URI (default: the embedded server)", show_envvar=True
    ),
]
LaunchpadOpt = Annotated[Path | None, typer.Option(help="FireWorks my_launchpad.yaml")]
CampaignOpt = Annotated[str | None, typer.Option(help="Only this campaign")]

OUTPUT_FORMATS = ("table", "json", "csv")
#: Largest ``query --limit`` (omit the option for every match).
MAX_QUERY_LIMIT = 1_000_000_000
_URI_KEY = "--uri / IONFLOW_DB_URI"


def _ensure_indexes(db) -> None:
    from pymongo.errors import OperationFailure

    from ionflow import results

    try:
        results.ensure_indexes(db)
    except OperationFailure:  # e.g. a read-only account: queries still work, only slower
        pass


def _open(data_dir: Path | None, uri: str | None, launchpad: Path | None):
    """The project's ResolvedDatabase (JobStore access) with the summaries' indexes."""
    from ionflow import results

    if uri is not None:
        check_mongo_uri(uri, _URI_KEY)
    db = results.open_database(data_dir, uri, launchpad)
    _ensure_indexes(db)
    return db


@contextmanager
def _open_summaries(data_dir: Path | None, uri: str | None, launchpad: Path | None):
    """(Database, description) for summary-only commands: the fast connection path."""
    from ionflow import results

    if uri is not None:
        check_mongo_uri(uri, _URI_KEY)
    db, description, client = results.open_query_database(data_dir, uri, launchpad)
    try:
        _ensure_indexes(db)
        yield db, description
    finally:
        client.close()


def _no_match_message(db, campaign: str | None, where: str) -> str:
    from ionflow import results

    campaigns = results.known_campaigns(db)
    if not campaigns:
        return f"no summaries stored in {where} yet (a campaign's summary job writes them)"
    if campaign is not None and campaign not in campaigns:
        return f"no summaries of campaign {campaign!r}; campaigns: {', '.join(campaigns)}"
    return "no material matches the filters"


def _out_file(out: Path | None, what: str, example: str) -> None:
    """``--out`` must name a file to (over)write: not a directory, in a directory that
    exists or can be created. Checked before the database is opened (nothing written)."""
    if out is None:
        return
    if out.is_dir():
        raise UserInputError(
            f"--out {printable(str(out), 200)}: is a directory; expected a file name for "
            f"{what} (e.g. {printable(str(out / example), 200)})"
        )
    _creatable_parent(out)


def _out_dir(out: Path) -> None:
    """``--out`` must be a directory or a path where one can be created."""
    if out.exists() and not out.is_dir():
        raise UserInputError(
            f"--out {printable(str(out), 200)}: is a file; expected a directory for the "
            "report (index.html, report.md and figures/ are written in it)"
        )
    _creatable_parent(out)


def _creatable_parent(out: Path) -> None:
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(
            f"--out {printable(str(out), 200)}: {printable(str(parent), 200)} is not a directory"
        )


def _fmt_pm(x: float | None, e: float | None, spec: str) -> str:
    if x is None:
        return "—"
    return f"{x:{spec}}" + (f" ± {e:{spec}}" if e is not None else "")


def _sigma_text(s) -> str:
    from ionflow.results import format_number, sigma_300k_note, sigma_300k_quoted

    if not sigma_300k_quoted(s):
        note = sigma_300k_note(s)
        return f"— ({note})" if note else "—"
    text = format_number(s.sigma_300k_ms_cm)
    if s.sigma_300k_low_ms_cm is not None and s.sigma_300k_high_ms_cm is not None:
        lo, hi = format_number(s.sigma_300k_low_ms_cm, 2), format_number(s.sigma_300k_high_ms_cm, 2)
        text += f" [{lo}, {hi}]"
    return text


def results_table(summaries, title: str):
    """Rich table of query results (one row per material)."""
    from rich.table import Table
    from rich.text import Text

    from ionflow.results import regimes_text

    bases = sorted({s.sigma_basis for s in summaries})
    tab = Table(title=title, caption=Text("σ quoted: " + "; ".join(bases)) if bases else None)
    for col, kw in (
        ("material", {"style": "bold", "no_wrap": True}),
        ("formula", {}),
        ("campaign", {}),
        ("engine", {}),
        ("Ea (eV)", {"justify": "right"}),
        ("σ(300 K) mS/cm [68 %]", {"justify": "right"}),
        ("regimes (free)", {}),
        ("pinned verdict", {"overflow": "fold"}),
    ):
        tab.add_column(col, **kw)
    for s in summaries:
        # text read back from the database: Text, never Rich markup ("[/]" would crash,
        # "[red]" would restyle), control characters escaped
        tab.add_row(
            *(text_cell(x) for x in (s.material, s.formula, s.campaign, s.engine_md)),
            _fmt_pm(s.ea_ev, s.ea_err_ev, ".3f"),
            *(text_cell(x) for x in (_sigma_text(s), regimes_text(s), s.pinned_verdict)),
        )
    return tab


def subdiffusive_notes(summaries) -> list[str]:
    """One line per subdiffusive run (no D/σ reported) with the reason."""
    return [
        f"{s.material} ({s.campaign}) {v.variant} {r.temperature_k:g} K subdiffusive: "
        f"{r.regime_reason}"
        for s in summaries
        for v in (s.free, s.pinned)
        if v is not None
        for r in v.runs
        if r.regime == "subdiffusive"
    ]


def _write_text(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _serialise(summaries, fmt: str) -> str:
    import io

    from ionflow import results

    buf = io.StringIO()
    if fmt == "csv":
        results.summaries_to_csv(summaries, buf)
    else:
        results.summaries_to_json(summaries, buf)
    return buf.getvalue()


@app.command("query")
def query_cmd(
    campaign: CampaignOpt = None,
    formula: Annotated[str | None, typer.Option(help="Reduced formula, e.g. Li3PS4")] = None,
    chemsys: Annotated[str | None, typer.Option(help="Exact chemical system, e.g. Li-P-S")] = None,
    elements: Annotated[
        str | None, typer.Option(help="Elements that must all be present, e.g. Li,P,S")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="MD engine, e.g. chgnet")] = None,
    sigma_min_ms_cm: Annotated[
        float | None,
        typer.Option(
            help="Minimum σ(300 K), mS/cm (free variant; quoted only when Ea is resolved)"
        ),
    ] = None,
    sigma_max_ms_cm: Annotated[float | None, typer.Option(help="Maximum σ(300 K), mS/cm")] = None,
    ea_min_ev: Annotated[float | None, typer.Option(help="Minimum Ea, eV")] = None,
    ea_max_ev: Annotated[float | None, typer.Option(help="Maximum Ea, eV")] = None,
    regime: Annotated[
        str | None,
        typer.Option(
            help="A free run has this regime: diffusive | subdiffusive | caged | insufficient"
        ),
    ] = None,
    pinned_verdict: Annotated[
        str | None,
        typer.Option(
            help="lowers | mixed | raises | no significant | none | inconclusive, or any text "
            "in the free-vs-pinned verdict"
        ),
    ] = None,
    isolated_fraction_min: Annotated[
        float | None,
        typer.Option(help="Minimum isolated-anion fraction (0–1) of the input cell"),
    ] = None,
    percolation_dimension: Annotated[
        int | None,
        typer.Option(help="Highest percolation dimension (0–3) of the free runs' Li density"),
    ] = None,
    rotation_coupled: Annotated[
        bool | None,
        typer.Option(
            "--rotation-coupled/--not-rotation-coupled",
            help="Polyanions reorient and pinning them lowers D significantly (or not)",
            show_default=False,
        ),
    ] = None,
    target_met: Annotated[
        bool | None,
        typer.Option(
            "--target-met/--target-not-met",
            help="The free variant met md.target (or not)",
            show_default=False,
        ),
    ] = None,
    core_hours_min: Annotated[
        float | None, typer.Option(help="Minimum MD compute of the material, core-hours")
    ] = None,
    core_hours_max: Annotated[
        float | None, typer.Option(help="Maximum MD compute of the material, core-hours")
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            help="Sort field: sigma_300k_ms_cm (sigma), ea_ev (ea), pinned_ea_ev, material, "
            "formula, chemsys, campaign, engine_md (engine), … (a wrong name lists them all)"
        ),
    ] = "sigma_300k_ms_cm",
    asc: Annotated[bool, typer.Option("--asc", help="Ascending (default: descending)")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many materials")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Find materials by composition, engine, σ(300 K), Ea, regime, pinned verdict or
    mechanism (isolated anions, percolation, rotation coupling)."""
    from ionflow import results

    fmt = fmt.lower()
    if fmt not in OUTPUT_FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
    filters = dict(
        campaign=campaign,
        formula=formula,
        chemsys=chemsys,
        elements=elements,
        engine=engine,
        sigma_min_ms_cm=sigma_min_ms_cm,
        sigma_max_ms_cm=sigma_max_ms_cm,
        ea_min_ev=ea_min_ev,
        ea_max_ev=ea_max_ev,
        regime=regime,
        pinned_verdict=pinned_verdict,
        isolated_fraction_min=isolated_fraction_min,
        percolation_dimension=percolation_dimension,
        rotation_coupled=rotation_coupled,
        target_met=target_met,
        core_hours_min=core_hours_min,
        core_hours_max=core_hours_max,
    )
    # validate everything before touching (or starting) a database
    results.build_filter(**filters)
    results.resolve_sort(sort)
    if limit is not None and not 1 <= limit <= MAX_QUERY_LIMIT:
        shown = str(limit) if abs(limit) < 10**30 else "a number of more than 30 digits"
        raise UserInputError(
            f"--limit must be between 1 and {MAX_QUERY_LIMIT} (omit it for every match), "
            f"got {shown}"
        )
    with _open_summaries(data_dir, uri, launchpad) as (db, where):
        found = results.query_summaries(db, **filters, sort=sort, descending=not asc, limit=limit)
        if not found:
            print(printable(_no_match_message(db, campaign, where), 2000), file=sys.stderr)
    if fmt != "table":
        _write_text(_serialise(found, fmt), None)
        return
    if found:
        from rich.console import Console

        order = "ascending" if asc else "descending"
        title = f"{len(found)} material(s), by {results.resolve_sort(sort)} {order}"
        con = Console()
        con.print(results_table(found, title))
        for note in subdiffusive_notes(found):
            con.print(f"• {printable(note, 1000)}", highlight=False, markup=False)


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Option(help="Output directory (index.html, report.md, figures/)")],
    campaign: CampaignOpt = None,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Write an HTML + Markdown report: summary table, Arrhenius and MSD plots, notes."""
    from ionflow.report import write_report

    _out_dir(out)
    db = _open(data_dir, uri, launchpad)
    paths = write_report(db, out, campaign=campaign)
    print(
        f"report of {paths.n_materials} material(s): {paths.html} (self-contained), {paths.markdown}"
    )


@app.command("export")
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="csv (flat columns) | json (full)")] = "csv",
    campaign: CampaignOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output file (default: stdout)")] = None,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Export the summaries (all, or one campaign's) as CSV or JSON."""
    from ionflow import results

    fmt = fmt.lower()
    if fmt not in ("csv", "json"):
        raise UserInputError(f"--format must be csv or json; got {printable(fmt, 40)!r}")
    _out_file(out, f"the {fmt.upper()} export", f"summaries.{fmt}")
    with _open_summaries(data_dir, uri, launchpad) as (db, where):
        found = results.query_summaries(db, campaign=campaign, sort="campaign", descending=False)
        if not found:
            print(printable(_no_match_message(db, campaign, where), 2000), file=sys.stderr)
    _write_text(_serialise(found, fmt), out)
    if out is not None:
        print(f"wrote {len(found)} summaries to {out}", file=sys.stderr)


@app.command("export-trajectory")
def export_trajectory_cmd(
    campaign: Annotated[str, typer.Option(help="Campaign")],
    material: Annotated[str, typer.Option(help="Material name")],
    temperature_k: Annotated[float, typer.Option(help="Run temperature, K")],
    out: Annotated[Path, typer.Option(help="Output .extxyz file")],
    variant: Annotated[str, typer.Option(help="free | pinned")] = "free",
    every: Annotated[int, typer.Option(help="Write every N-th frame")] = 1,
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Convert one MD run's stored trajectory to extended XYZ (streamed frame by frame)."""
    from ionflow import results
    from ionflow.plan import run_label

    if variant not in ("free", "pinned"):
        raise UserInputError(f"--variant must be free or pinned; got {printable(variant, 40)!r}")
    if every < 1:
        raise UserInputError(f"--every must be ≥ 1, got {every}")
    _out_file(out, "the extended XYZ trajectory", f"{material}_{run_label(temperature_k)}.extxyz")
    if uri is not None:
        check_mongo_uri(uri, _URI_KEY)
    db = results.open_database(data_dir, uri, launchpad)
    n = results.export_trajectory_extxyz(
        db,
        out,
        campaign=campaign,
        material=material,
        variant=variant,
        temperature_k=temperature_k,
        every=every,
    )
    print(f"wrote {n} frames to {out}")


@app.command("export-density")
def export_density_cmd(
    campaign: Annotated[str, typer.Option(help="Campaign")],
    material: Annotated[str, typer.Option(help="Material name")],
    temperature_k: Annotated[float, typer.Option(help="Run temperature, K")],
    out: Annotated[Path, typer.Option(help="Output CHGCAR file")],
    variant: Annotated[str, typer.Option(help="free | pinned")] = "free",
    data_dir: DataDirOpt = None,
    uri: UriOpt = None,
    launchpad: LaunchpadOpt = None,
) -> None:
    """Write one MD run's mobile-ion density (VASP CHGCAR, VESTA-readable; integral = the
    number of mobile ions) from the database."""
    from ionflow import results
    from ionflow.plan import run_label

    if variant not in ("free", "pinned"):
        raise UserInputError(f"--variant must be free or pinned; got {printable(variant, 40)!r}")
    _out_file(out, "the density CHGCAR", f"{material}_{run_label(temperature_k)}.CHGCAR")
    if uri is not None:
        check_mongo_uri(uri, _URI_KEY)
    db = results.open_database(data_dir, uri, launchpad)
    path, ref = results.export_density(
        db, out, campaign=campaign, material=material, variant=variant, temperature_k=temperature_k
    )
    print(f"wrote {path} ({ref['size_bytes'] / 1e6:.1f} MB, {ref['filename']})")
