"""Tests of ``ionflow report``: synthetic campaigns in a real SecantusDB server, the report
rendered by a real headless Chromium.

The summaries and the analysis job outputs (with their MSD curves) come from
``test_results.build_material`` (synthetic trajectories analysed by ionflow itself).
Chromium is Debian's ``chromium`` package: without it the browser test is skipped, except
in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from ionflow.errors import UserInputError
from ionflow.report import write_report


def _helpers():
    """The synthetic-campaign builders of test_results.py (pytest runs in importlib mode)."""
    name = "_ionflow_test_results_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("test_results.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_h = _helpers()
all_materials, insert_all, run_cli = _h.all_materials, _h.insert_all, _h.run_cli

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class _Page(HTMLParser):
    """Collects <img> attributes, table classes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append(a.get("class", ""))
        for key in ("href", "src"):
            if key in a:
                self.links.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def parse(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


def png_of(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert len(data) > 5000  # a real plot, not a placeholder
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def sane(img: Image.Image) -> None:
    assert img.format == "PNG"
    w, h = img.size
    assert 300 <= w <= 3000 and 200 <= h <= 3000, img.size
    # not blank: a plot has dark lines on white
    assert ImageStat.Stat(img.convert("L")).stddev[0] > 10


#: matplotlib's colours of the series the report draws
TAB_BLUE, TAB_RED, TAB_PURPLE = (31, 119, 180), (214, 39, 40), (148, 103, 189)
TAB_ORANGE = (255, 127, 14)


def pixels_of(img: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels are within ``tol`` of the colour ``rgb`` (anti-aliasing tolerated)."""
    import numpy as np

    a = np.asarray(img.convert("RGB"), dtype=int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


def _mechanism_series(summary) -> dict[str, int]:
    """Per variant, how many (run, mechanism field) values the vs-T figure can draw."""
    from ionflow.report import MECHANISM_SERIES

    out = {}
    for v in (summary.free, summary.pinned):
        if v is None:
            continue
        n = sum(getattr(r, f) is not None for r in v.runs for f, *_ in MECHANISM_SERIES)
        if n:
            out[v.variant] = n
    return out


def draws(img: Image.Image, data_file: str, summary) -> None:
    """The figure shows its series: the Arrhenius plot one colour per fitted variant (free
    and pinned: blue then red, in that order); an MSD grid the MSCD curves (purple); the
    mechanism-vs-T panels blue for free and orange for pinned values."""
    if data_file.endswith("_mechanism_vs_t.png"):
        drawn = _mechanism_series(summary)
        assert (pixels_of(img, TAB_BLUE) > 20) == ("free" in drawn), data_file
        assert (pixels_of(img, TAB_ORANGE) > 20) == ("pinned" in drawn), data_file
    elif data_file.endswith("_arrhenius.png"):
        fits = [v for v in (summary.free, summary.pinned) if v is not None and v.arrhenius]
        assert pixels_of(img, TAB_BLUE) > 40, data_file
        assert (pixels_of(img, TAB_RED) > 40) == (len(fits) == 2), data_file
    else:
        assert pixels_of(img, TAB_PURPLE) > 40, data_file


@pytest.fixture(scope="module")
def campaign_db(tmp_path_factory):
    """A real server holding every synthetic material; one material lacks its MSD outputs."""
    import pymongo

    from ionflow.store import DatabaseSettings, LocalServer, resolve_database

    data_dir = tmp_path_factory.mktemp("report") / "ionflow-data"
    server = LocalServer.ensure(data_dir)
    try:
        materials = all_materials()
        # Li7P3S11's analysis outputs are "lost": the report must say so
        materials = [(s, () if s.material == "Li7P3S11" else o) for s, o in materials]
        client = pymongo.MongoClient(server.uri)
        try:
            insert_all(client["ionflow"], materials)
        finally:
            client.close()
        yield resolve_database(DatabaseSettings(data_dir=data_dir)), data_dir
    finally:
        server.stop(timeout_s=10)


@pytest.fixture(scope="module")
def report(campaign_db, tmp_path_factory):
    db, _ = campaign_db
    out = tmp_path_factory.mktemp("out") / "report"
    paths = write_report(db, out)
    return paths, out


@pytest.mark.integration
def test_report_files_and_content(report):
    paths, out = report
    summaries = [s for s, _ in all_materials()]
    assert paths.n_materials == len(summaries)
    assert paths.html == out / "index.html" and paths.markdown == out / "report.md"
    html_text = paths.html.read_text()
    page = parse(html_text)
    assert "summary" in page.tables and "runs" in page.tables
    text = " ".join(page.text)
    for s in summaries:
        assert s.material in text and s.pinned_verdict in text
    # self-contained: no external resource, every image inline
    assert not [u for u in page.links if re.match(r"^(https?:)?//", u)]
    assert "<script" not in html_text and "<link" not in html_text
    # per material: Arrhenius plot if a variant has a fit, one MSD grid per variant with runs
    expected = []
    for s in sorted(summaries, key=lambda s: (s.campaign, s.material)):  # the report's order
        stem = f"{s.campaign}_{s.material}"
        if s.free.arrhenius or (s.pinned and s.pinned.arrhenius):
            expected.append(f"figures/{stem}_arrhenius.png")
        if s.material != "Li7P3S11":
            expected += [
                f"figures/{stem}_msd_{v}.png" for v in ("free", "pinned")[: 1 + bool(s.pinned)]
            ]
        if _mechanism_series(s):
            expected.append(f"figures/{stem}_mechanism_vs_t.png")
    assert [img["data-file"] for img in page.images] == expected
    assert sorted(p.relative_to(out).as_posix() for p in paths.figures) == sorted(expected)
    by_stem = {f"figures/{s.campaign}_{s.material}": s for s in summaries}
    for img in page.images:
        inline = png_of(img["src"])
        sane(inline)
        stem = re.sub(
            r"_(arrhenius|msd_free|msd_pinned|mechanism_vs_t)\.png$", "", img["data-file"]
        )
        draws(inline, img["data-file"], by_stem[stem])
        assert (out / img["data-file"]).read_bytes() == base64.b64decode(img["src"].split(",")[1])
        assert img["alt"]
    # the 300 K extrapolation with its intervals, from the stored fit
    lps = next(s for s in summaries if (s.campaign, s.material) == ("alpha", "LPS-beta"))
    assert "σ(300 K) = " in text and "68 % [" in text and "95 % [" in text
    assert f"{lps.free.arrhenius.n_temperatures} temperatures" in text


@pytest.mark.integration
def test_report_notes(report):
    paths, _ = report
    text = " ".join(parse(paths.html.read_text()).text)
    assert "No pinned control: no bonded polyanions (oxide framework)." in text
    assert re.search(r"free 600 K is caged: MSD plateaus", text)  # Li6PS5Cl and Li3PO4
    assert "free: no Arrhenius fit — Arrhenius fit needs at least 2 temperatures" in text
    assert "MSD curves not found in the JobStore for: free 600 K" in text  # Li7P3S11
    # the subdiffusive run is listed with its reason, not silently dropped
    sub = next(s for s, _ in all_materials() if s.material == "Li3YCl6")
    reason = sub.free.runs[0].regime_reason
    assert f"free 600 K is subdiffusive: {reason} (no D or σ reported" in text
    md = paths.markdown.read_text()
    assert f"free 600 K is subdiffusive: {reason}" in md


@pytest.mark.integration
def test_report_sigma_quoting(report):
    """σ basis stated; no extrapolated σ(300 K) where Ea is not resolved (Li3InCl6)."""
    from ionflow.results import format_number

    paths, _ = report
    html_text = paths.html.read_text()
    text = " ".join(parse(html_text).text)
    assert "σ quoted: tracer: Nernst–Einstein from D* (H_R = 1 assumed)" in text
    flat = next(s for s, _ in all_materials() if s.material == "Li3InCl6")
    fit = flat.free.arrhenius
    assert fit is not None and abs(fit.ea_ev) <= 2 * fit.ea_err_ev
    assert "free: Ea = " in text and "D(300 K), σ(300 K) — (Ea not resolved)" in text
    row = re.search(r"<tr><td[^>]*><a href=\"#beta_Li3InCl6\">.*?</tr>", html_text).group(0)
    assert "— (Ea not resolved)" in row
    assert format_number(fit.sigma_at_t_ms_cm) not in row
    assert (
        f"σ(300 K) not quoted: Ea not resolved ({fit.ea_ev:.2f} ± {fit.ea_err_ev:.2f} eV)" in text
    )
    assert "— (Ea not resolved)" in paths.markdown.read_text()


def test_run_and_comparison_cells():
    """Run table: D* error split, D_σ or its bound, Haven ratio with its 68 % interval;
    comparison table: the ratio's 68 % and 95 % intervals (no ±)."""
    from ionflow.report import COMPARISON_COLUMNS, RUN_COLUMNS, _comparison_cells, _run_cells
    from ionflow.summary import PinnedComparison, RunSummary

    base = {"variant": "free", "regime": "diffusive", "regime_reason": "MSD linear",
            "n_eff_hops": 120.0, "duration_ps": 100.0, "fit_window_ps": (5.0, 50.0)}  # fmt: skip
    resolved = RunSummary(
        **base, temperature_k=800.0, diffusivity_cm2_s=2.0e-5, diffusivity_err_cm2_s=5.0e-6,
        diffusivity_stat_err_cm2_s=3.0e-6, diffusivity_sys_err_cm2_s=4.0e-6,
        charge_diffusivity_cm2_s=4.0e-5, charge_diffusivity_err_cm2_s=1.0e-5,
        conductivity_ms_cm=50.0, conductivity_err_ms_cm=12.0, charge_conductivity_ms_cm=100.0,
        charge_conductivity_err_ms_cm=25.0, haven_ratio=0.5, haven_ratio_interval=(0.38, 0.71),
    )  # fmt: skip
    bound = RunSummary(
        **base, temperature_k=1000.0, diffusivity_cm2_s=3.0e-5, diffusivity_err_cm2_s=4.0e-6,
        charge_diffusivity_err_cm2_s=2.0e-5, charge_diffusivity_upper_cm2_s=6.1e-5,
    )  # fmt: skip
    s = next(m for m, _ in all_materials() if m.material == "LPS-beta")
    s = s.model_copy(
        update={
            "free": s.free.model_copy(update={"runs": [resolved, bound]}),
            "pinned": None,
            "comparisons": [
                PinnedComparison(temperature_k=1000.0, ratio=2.0, ratio_err=1.15,
                                 ratio_interval=(1.12, 3.56), ratio_interval95=(0.64, 6.2),
                                 z_score=1.2, verdict="inconclusive: …")
            ],
        }
    )  # fmt: skip
    rows = [dict(zip(RUN_COLUMNS, r, strict=True)) for r in _run_cells(s)]
    assert rows[0]["D* (cm²/s)"] == "2.00e-05 ± 5.0e-06"
    assert rows[0]["D* err stat / sys"] == "3.0e-06 / 4.0e-06"
    assert rows[0]["D_σ (cm²/s)"] == "4.00e-05 ± 1.0e-05"
    assert rows[0]["σ from D_σ (mS/cm)"] == "100 ± 25"
    assert rows[0]["Haven [68 %]"] == "0.50 [0.38, 0.71]"
    assert rows[1]["D_σ (cm²/s)"] == "< 6.1e-05 (not resolved)"
    assert rows[1]["Haven [68 %]"] == "—" and rows[1]["σ from D_σ (mS/cm)"] == "—"
    (comp,) = [dict(zip(COMPARISON_COLUMNS, r, strict=True)) for r in _comparison_cells(s)]
    assert comp["D_free / D_pinned [68 %]"] == "2.00 [1.1, 3.6]"
    assert comp["95 % interval"] == "[0.64, 6.2]" and comp["z"] == "1.2"


@pytest.mark.integration
def test_markdown_version(report):
    paths, out = report
    md = paths.markdown.read_text()
    assert md.startswith("# ionflow report — 2 campaigns")
    assert "| material | formula | campaign |" in md
    refs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert refs and all((out / r).is_file() for r in refs)
    assert sorted(refs) == sorted(p.relative_to(out).as_posix() for p in paths.figures)
    for r in refs:
        with Image.open(out / r) as img:
            sane(img)


@pytest.mark.integration
def test_report_campaign_filter_and_cli(campaign_db, tmp_path, capsys):
    db, data_dir = campaign_db
    paths = write_report(db, tmp_path / "beta", campaign="beta")
    beta = [s for s, _ in all_materials() if s.campaign == "beta"]
    assert paths.n_materials == len(beta)
    assert "campaign beta" in paths.markdown.read_text().splitlines()[0]
    with pytest.raises(
        UserInputError, match="no summaries of campaign 'gamma'; campaigns: alpha, beta"
    ):
        write_report(db, tmp_path / "gamma", campaign="gamma")
    code, out, err = run_cli(
        [
            "report",
            "--data-dir",
            str(data_dir),
            "--campaign",
            "alpha",
            "--out",
            str(tmp_path / "cli"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "index.html (self-contained)" in out
    assert (tmp_path / "cli" / "index.html").is_file()


# ----------------------------------------------------------------------------- browser


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is required in CI (Debian package 'chromium') but is not installed")
    pytest.skip("chromium not installed (apt-get install chromium); required when CI=true")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural", img.complete + ":" + img.naturalWidth + "x" + img.naturalHeight);
  }
  document.body.setAttribute("data-probed", String(document.images.length));
});
</script>"""


@pytest.mark.integration
def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    paths, out = report
    # zip-and-move check: render a copy in another directory
    copy = tmp_path / "moved"
    shutil.copytree(out, copy)
    index = copy / "index.html"
    # 1) the browser decodes every image: a probe copy records each <img>'s natural size
    probe = copy / "probe.html"
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium(
        browser, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    page = parse(dom)
    assert "summary" in page.tables
    n_images = len(parse(index.read_text()).images)
    assert f'data-probed="{n_images}"' in dom
    assert len(page.images) == n_images > 0
    for img in page.images:
        complete, size = img["data-natural"].split(":")
        w, h = (int(x) for x in size.split("x"))
        assert complete == "true" and (w, h) == png_of(img["src"]).size, img["data-file"]
    text = " ".join(page.text)
    for s, _ in all_materials():
        assert s.material in text
    # 2) a real screenshot of the unmodified page
    shot = tmp_path / "shot.png"
    res = _chromium(
        browser,
        tmp_path / "profile2",
        f"--screenshot={shot}",
        "--window-size=1200,3000",
        "--hide-scrollbars",
        index.as_uri(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1200, 3000)
        gray = img.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 20  # text, tables and plots, not a blank page
        # the lower part of the page (plots) is rendered too
        assert ImageStat.Stat(gray.crop((0, 1500, 1200, 3000))).stddev[0] > 20
