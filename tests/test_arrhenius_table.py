"""`ionflow arrhenius --table`: D(T) tables from papers and other codes.

Run in-process through ``ionflow.cli.main`` (the user's entry point: UserInputError →
one ``error:`` line, exit 2) so that every bad-table case stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ionflow.analysis.tables import read_diffusivity_table
from ionflow.cli import main
from ionflow.errors import UserInputError

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# CODATA 2018 exact values, written out here rather than taken from ionflow
K_EV = 8.617333262e-5  # eV/K
K_J = 1.380649e-23  # J/K
E_C = 1.602176634e-19  # C

EA, D0 = 0.30, 1.5e-3  # eV, cm²/s
TEMPS = np.array([500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0])
REL = 0.10  # stated 1σ relative error of each D


def _noisy_table(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = D0 * np.exp(-EA / (K_EV * TEMPS)) * np.exp(rng.normal(0.0, REL, TEMPS.size))
    return d, REL * d


def _write(path: Path, header: list[str], cols: list, delim: str = ",") -> Path:
    rows = [delim.join(header)]
    for vals in zip(*cols, strict=True):
        rows.append(delim.join(f"{v:.10g}" for v in vals))
    path.write_text("\n".join(rows) + "\n")
    return path


def _cli(capsys, *args: str) -> tuple[dict | str, str]:
    """Run `ionflow arrhenius ARGS`; (stdout JSON or text, stderr) on success."""
    main(["arrhenius", *args])
    out, err = capsys.readouterr()
    return (json.loads(out) if "--json" in args else out), err


def _cli_error(capsys, *args: str) -> str:
    """Run `ionflow arrhenius ARGS` expecting a user error: exit 2, exactly one clean line."""
    with pytest.raises(SystemExit) as exc:
        main(["arrhenius", *args])
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    return lines[0]


# -------------------------------------------------------------------- synthetic tables


@pytest.fixture()
def canonical(tmp_path: Path) -> Path:
    d, e = _noisy_table()
    header = ["temperature_k", "diffusivity_cm2_s", "diffusivity_err_cm2_s"]
    return _write(tmp_path / "canonical.csv", header, [TEMPS, d, e])


def test_synthetic_table_recovers_ea_and_sigma(capsys, canonical: Path) -> None:
    n_cm3 = 2.5e22
    fit, err = _cli(capsys, "--table", str(canonical), "--number-density-cm3", "2.5e22", "--json")
    assert abs(fit["ea_ev"] - EA) < 2 * fit["ea_err_ev"], (fit["ea_ev"], fit["ea_err_ev"])
    assert 0 < fit["ea_err_ev"] < 0.05
    assert fit["weighted"] is True and fit["n_temperatures"] == TEMPS.size
    # σ(300 K) = n q² D(300 K) / (k_B T), computed here from CODATA constants, not ionflow
    d300 = fit["d_at_t_cm2_s"]
    sigma_ms_cm = n_cm3 * E_C**2 * d300 / (K_J * 300.0) * 1e3
    assert fit["sigma_at_t_ms_cm"] == pytest.approx(sigma_ms_cm, rel=1e-9)
    lo, hi = fit["sigma_at_t_interval_ms_cm"]
    assert lo < fit["sigma_at_t_ms_cm"] < hi
    # same keys as the analyses form, plus the table block
    for key in ("ea_ev", "ea_err_ev", "d0_cm2_s", "sigma_at_t_interval95_ms_cm", "covariance"):
        assert key in fit
    tab = fit["table"]
    assert tab["columns_used"] == {
        "temperature_k": "temperature_k",
        "diffusivity_cm2_s": "diffusivity_cm2_s",
        "diffusivity_err_cm2_s": "diffusivity_err_cm2_s",
    }
    assert tab["number_density_cm3"] == n_cm3
    assert tab["density_source"] == "--number-density-cm3"
    assert tab["ion_charge"] == 1.0
    assert "table: temperature_k <- 'temperature_k'" in err
    assert "table: diffusivity_err_cm2_s <- 'diffusivity_err_cm2_s'" in err
    # the extrapolation note is one clean line
    assert any(ln.startswith("warning: extrapolated") for ln in err.splitlines())


def test_no_density_no_sigma_and_a_note(capsys, canonical: Path) -> None:
    fit, err = _cli(capsys, "--table", str(canonical), "--json")
    assert fit["sigma_at_t_ms_cm"] is None and fit["sigma_at_t_interval_ms_cm"] is None
    assert fit["table"]["number_density_cm3"] is None
    assert fit["table"]["density_source"] is None
    assert any(ln.startswith("note: no mobile-ion density") for ln in err.splitlines())
    text, _ = _cli(capsys, "--table", str(canonical))
    assert text.startswith("Ea = ") and "D(300 K) = " in text and "σ(" not in text


@pytest.mark.parametrize(
    ("header", "delim", "expected"),
    [
        (["T", "D", "D_error"], ",", ("T", "D", "D_error")),
        (["T (K)", "D (cm2/s)", "dD"], "\t", ("T (K)", "D (cm2/s)", "dD")),
        (["temp", "D*", "sigma_D"], ";", ("temp", "D*", "sigma_D")),
        (["T_K", "D_cm2_s", "D_std"], " ", ("T_K", "D_cm2_s", "D_std")),
        (["T [K]", "D [cm^2 s^-1]", "err"], "\t", ("T [K]", "D [cm^2 s^-1]", "err")),
        (["Temperature/K", "Diffusivity (cm²/s)", "D_sd"], ",", None),
    ],
)
def test_header_spellings_give_the_same_fit(capsys, tmp_path, canonical, header, delim, expected):
    d, e = _noisy_table()
    path = _write(tmp_path / "spelled.txt", header, [TEMPS, d, e], delim)
    ref, _ = _cli(capsys, "--table", str(canonical), "--json")
    fit, err = _cli(capsys, "--table", str(path), "--json")
    assert fit["ea_ev"] == pytest.approx(ref["ea_ev"], rel=1e-9)
    assert fit["ea_err_ev"] == pytest.approx(ref["ea_err_ev"], rel=1e-9)
    used = fit["table"]["columns_used"]
    want = expected or tuple(header)
    assert (
        used["temperature_k"],
        used["diffusivity_cm2_s"],
        used["diffusivity_err_cm2_s"],
    ) == want
    assert f"table: diffusivity_cm2_s <- {want[1]!r}" in err


def test_whitespace_table_with_spaced_units_comments_and_blank_rows(tmp_path, canonical):
    d, e = _noisy_table()
    lines = ["# from somewhere", "", "T (K)   D (cm2/s)   D_err (cm2/s)"]
    for t, di, ei in zip(TEMPS, d, e, strict=True):
        lines += [f"{t:g}   {di:.10g}   {ei:.10g}", "", "# a comment between rows"]
    path = tmp_path / "spaced.dat"
    path.write_text("\r\n".join(lines) + "\r\n")
    tab = read_diffusivity_table(path)
    ref = read_diffusivity_table(canonical)
    assert tab.delimiter == "whitespace"
    assert tab.columns_used["diffusivity_err_cm2_s"] == "D_err (cm2/s)"
    assert tab.temperatures_k == ref.temperatures_k
    assert tab.diffusivities_cm2_s == pytest.approx(ref.diffusivities_cm2_s, rel=1e-9)
    assert tab.errors_cm2_s == pytest.approx(ref.errors_cm2_s, rel=1e-9)
    assert tab.line_numbers[0] == 4


def test_numpy_savetxt_header_and_extra_columns(tmp_path, canonical):
    d, e = _noisy_table()
    path = tmp_path / "savetxt.dat"
    np.savetxt(path, np.c_[TEMPS, d, e, 2 * d], header="T D D_err sigma_mS_cm")
    tab = read_diffusivity_table(path)
    assert tab.columns_used == {
        "temperature_k": "T",
        "diffusivity_cm2_s": "D",
        "diffusivity_err_cm2_s": "D_err",
    }
    assert tab.ignored_columns == ["sigma_mS_cm"]
    assert tab.diffusivities_cm2_s == pytest.approx(
        read_diffusivity_table(canonical).diffusivities_cm2_s
    )


def test_unweighted_without_error_column_matches_polyfit(capsys, tmp_path) -> None:
    d, _ = _noisy_table(seed=3)
    path = _write(tmp_path / "no_err.csv", ["T", "D"], [TEMPS, d])
    fit, err = _cli(capsys, "--table", str(path), "--json")
    slope, intercept = np.polyfit(1.0 / TEMPS, np.log(d), 1)
    assert fit["weighted"] is False
    assert fit["ea_ev"] == pytest.approx(-slope * K_EV, rel=1e-9)
    assert fit["d0_cm2_s"] == pytest.approx(math.exp(intercept), rel=1e-9)
    assert fit["ea_err_ev"] > 0  # from the scatter
    assert "warning: no error column: unweighted fit, errors from the scatter" in err.splitlines()
    assert "table: diffusivity_err_cm2_s <- (no column)" in err
    assert fit["table"]["columns_used"] == {"temperature_k": "T", "diffusivity_cm2_s": "D"}


def test_unweighted_flag_ignores_the_error_column(capsys, canonical: Path) -> None:
    d, _ = _noisy_table()
    fit, _ = _cli(capsys, "--table", str(canonical), "--unweighted", "--json")
    slope, _ = np.polyfit(1.0 / TEMPS, np.log(d), 1)
    assert fit["weighted"] is False
    assert fit["ea_ev"] == pytest.approx(-slope * K_EV, rel=1e-9)


def test_structure_gives_the_number_density(capsys, canonical: Path) -> None:
    from pymatgen.core import Structure

    cif = EXAMPLES / "Li6PS5Cl.cif"
    s = Structure.from_file(str(cif))
    n_li = sum(1 for site in s if site.specie.symbol == "Li")
    n_cm3 = n_li / (s.volume * 1e-24)
    fit, err = _cli(capsys, "--table", str(canonical), "--structure", str(cif), "--json")
    assert fit["table"]["number_density_cm3"] == pytest.approx(n_cm3, rel=1e-12)
    assert fit["table"]["density_source"] == "structure"
    assert fit["table"]["structure"] == str(cif)
    sigma = n_cm3 * E_C**2 * fit["d_at_t_cm2_s"] / (K_J * 300.0) * 1e3
    assert fit["sigma_at_t_ms_cm"] == pytest.approx(sigma, rel=1e-9)
    assert "table: n(Li) = " in err and "Li6PS5Cl.cif" in err
    # --ion-charge 2 quadruples σ (q²), --at-temperature-k moves it
    fit2, _ = _cli(
        capsys, "--table", str(canonical), "--structure", str(cif), "--ion-charge", "2", "--json"
    )
    assert fit2["sigma_at_t_ms_cm"] == pytest.approx(4 * fit["sigma_at_t_ms_cm"], rel=1e-9)


def test_plot_and_text_output(capsys, tmp_path, canonical: Path) -> None:
    png = tmp_path / "arr.png"
    text, _ = _cli(
        capsys, "--table", str(canonical), "--number-density-cm3", "1e22", "--plot", str(png)
    )
    assert text.startswith("Ea = 0.") and "σ(300 K) = " in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- a published table


def test_published_table_li5crcl8_yang2025(capsys) -> None:
    """Li5CrCl8 row of Table 2 in Yang et al., npj Comput. Mater. (2025),
    doi:10.1038/s41524-025-01559-9: D = 1.42e-14 cm²/s (300 K), 1.29e-5 cm²/s (1000 K);
    σ = 1.61e-6 mS/cm (300 K), 440.8 mS/cm (1000 K). The paper states no Ea for it, so Ea
    is checked against the two-point slope computed here; σ(300 K) against the paper's own
    value, with the ion density backed out of the paper's 1000 K row (σ = n q² D / kT)."""
    path = DATA / "li5crcl8_yang2025_table2.csv"
    t = np.array([300.0, 1000.0])
    d = np.array([1.42e-14, 1.29e-5])
    ea_two_point = K_EV * math.log(d[1] / d[0]) / (1 / t[0] - 1 / t[1])
    fit, err = _cli(capsys, "--table", str(path), "--json")
    assert fit["ea_ev"] == pytest.approx(ea_two_point, rel=1e-9)
    assert fit["ea_ev"] == pytest.approx(0.762, abs=5e-4)
    assert fit["d_at_t_cm2_s"] == pytest.approx(1.42e-14, rel=1e-9)
    assert fit["ea_err_ev"] is None  # two points, no errors: no error bar is claimed
    assert "no error column and only 2 temperatures" in err
    n_cm3 = 440.8e-3 * K_J * 1000.0 / (E_C**2 * 1.29e-5)  # from the paper's 1000 K row
    fit, _ = _cli(capsys, "--table", str(path), "--number-density-cm3", f"{n_cm3:.6g}", "--json")
    assert fit["sigma_at_t_ms_cm"] == pytest.approx(1.61e-6, rel=0.01)  # paper: 1.61e-6


# ------------------------------------------------------------------------- bad tables


BAD_TABLES = [
    # (name, content, fragments that the one error line must contain)
    ("missing_d.csv", "T,X\n600,1\n700,2\n", ["line 1", "no diffusivity column", "'T', 'X'", "D*"]),
    ("missing_t.csv", "D,D_err\n1e-6,1e-7\n2e-6,1e-7\n", ["no temperature column", "'D', 'D_err'"]),
    ("nonnum.csv", "T,D\n600,1e-6\n800,abc\n", ["line 3", "data row 2", "column 'D'", "'abc'"]),
    ("t_zero.csv", "T,D\n600,1e-6\n0,2e-6\n", ["line 3", "column 'T'", "> 0 K"]),
    ("t_neg.csv", "T,D\n-600,1e-6\n800,2e-6\n", ["line 2", "column 'T'", "> 0 K"]),
    ("d_zero.csv", "T,D\n600,0\n800,2e-6\n", ["line 2", "column 'D'", "> 0 cm²/s"]),
    ("d_neg.csv", "T,D\n600,1e-6\n800,-2e-6\n", ["line 3", "column 'D'", "> 0"]),
    ("d_nan.csv", "T,D\n600,nan\n800,2e-6\n", ["line 2", "column 'D'", "finite"]),
    ("d_inf.csv", "T,D\n600,1e-6\n800,inf\n", ["line 3", "column 'D'", "finite"]),
    ("err_neg.csv", "T,D,D_err\n600,1e-6,-1e-7\n800,2e-6,1e-7\n", ["line 2", "'D_err'", "≥ 0"]),
    ("err_nan.csv", "T,D,err\n600,1e-6,1e-7\n800,2e-6,nan\n", ["line 3", "'err'", "finite"]),
    ("err_empty.csv", "T,D,err\n600,1e-6,1e-7\n800,2e-6,\n", ["line 3", "'err'", "empty"]),
    (
        "err_zero.csv",
        "T,D,D_err\n600,1e-6,0\n800,2e-6,1e-7\n",
        ["line 2", "error 0", "--unweighted"],
    ),
    ("dup.csv", "T,D,D\n600,1e-6,1e-6\n800,2e-6,2e-6\n", ["line 1", "duplicated header 'D'"]),
    ("two_d.csv", "T,D,diffusivity\n600,1,1\n800,2,2\n", ["'D' and 'diffusivity'", "keep one"]),
    ("one_row.csv", "T,D\n600,1e-6\n", ["1 data row", "at least 2"]),
    ("no_rows.csv", "T,D\n\n# nothing\n", ["0 data rows"]),
    ("same_t.csv", "T,D\n600,1e-6\n600,2e-6\n", ["600 K", "2 different temperatures"]),
    ("empty.csv", "", ["empty file"]),
    ("comments.csv", "# only\n# comments\n\n", ["empty table"]),
    ("no_header.csv", "600,1e-6\n800,2e-6\n", ["line 1", "no header row"]),
    ("celsius.csv", "T (C),D\n300,1e-6\n500,2e-6\n", ["'T (C)'", "expected K", "273.15"]),
    ("degc.csv", "T (°C),D\n300,1e-6\n500,2e-6\n", ["'T (°C)'", "expected K"]),
    ("t_c.csv", "T_C,D\n300,1e-6\n500,2e-6\n", ["'T_C'", "expected K"]),
    ("m2s.csv", "T,D (m2/s)\n600,1e-10\n800,2e-10\n", ["'D (m2/s)'", "expected cm²/s"]),
    ("d_m2_s.csv", "T,D_m2_s\n600,1e-10\n800,2e-10\n", ["'D_m2_s'", "expected cm²/s"]),
    ("scaled.csv", "T,D (1e-5 cm2/s)\n600,1\n800,2\n", ["'D (1e-5 cm2/s)'", "expected cm²/s"]),
    ("a2ps.csv", "T,D,D_err (A^2/ps)\n600,1e-6,1\n800,2e-6,1\n", ["'D_err (A^2/ps)'", "cm²/s"]),
    ("short_row.csv", "T,D,D_err\n600,1e-6,1e-7\n800,2e-6\n", ["line 3", "2 fields", "has 3"]),
    ("comma.csv", "T;D\n600;1,5e-6\n800;2e-6\n", ["line 2", "'1,5e-6'", "decimal comma"]),
]


@pytest.mark.parametrize(
    ("name", "content", "fragments"), BAD_TABLES, ids=[b[0] for b in BAD_TABLES]
)
def test_bad_table_is_one_line_error(capsys, tmp_path, name, content, fragments) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    line = _cli_error(capsys, "--table", str(path))
    assert str(path) in line
    for frag in fragments:
        assert frag in line, (frag, line)


def test_binary_undecodable_directory_missing(capsys, tmp_path) -> None:
    binary = tmp_path / "table.xlsx"
    binary.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    assert "binary file" in _cli_error(capsys, "--table", str(binary))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("T (°C),D\n300,1e-6\n".encode("latin-1"))
    line = _cli_error(capsys, "--table", str(latin1))
    assert "latin1.csv" in line and "not UTF-8" in line
    line = _cli_error(capsys, "--table", str(tmp_path))
    assert str(tmp_path) in line and "directory" in line
    line = _cli_error(capsys, "--table", str(tmp_path / "nope.csv"))
    assert "nope.csv: no such file" in line


def test_cell_with_control_characters_is_escaped(capsys, tmp_path) -> None:
    path = tmp_path / "ctrl.csv"
    path.write_text("T,D\n600,\x1b[2J1e-6\n800,1e-6\n")
    line = _cli_error(capsys, "--table", str(path))
    assert "\x1b" not in line and "'\\x1b[2J1e-6'" in line


def test_utf16_and_bom_tables_are_read(tmp_path, canonical) -> None:
    text = canonical.read_text()
    for enc, name in (("utf-16", "u16.csv"), ("utf-8-sig", "bom.csv")):
        path = tmp_path / name
        path.write_text(text, encoding=enc)
        tab = read_diffusivity_table(path)
        assert tab.temperatures_k == list(TEMPS)
        assert tab.columns_used["temperature_k"] == "temperature_k"


def test_reader_raises_user_input_error_directly(tmp_path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("T,D\n600,x\n700,1\n")
    with pytest.raises(UserInputError, match=r"line 2 \(data row 1\), column 'D'"):
        read_diffusivity_table(p)


# --------------------------------------------------------------------- option errors


def test_option_errors(capsys, tmp_path, canonical: Path) -> None:
    cif = str(EXAMPLES / "Li6PS5Cl.cif")
    t = str(canonical)
    assert "not both" in _cli_error(capsys, "a.json", "--table", t)
    assert "nothing to fit" in _cli_error(capsys)
    line = _cli_error(capsys, "--table", t, "--structure", cif, "--number-density-cm3", "1e22")
    assert "not both" in line
    assert "--number-density-cm3 must be > 0" in _cli_error(
        capsys, "--table", t, "--number-density-cm3", "-1"
    )
    assert "--ion-charge" in _cli_error(
        capsys, "--table", t, "--number-density-cm3", "1e22", "--ion-charge", "0"
    )
    line = _cli_error(capsys, "--table", t, "--structure", cif, "--species", "Na")
    assert "Li6PS5Cl.cif" in line and "no Na" in line
    assert "not a chemical element" in _cli_error(
        capsys, "--table", t, "--structure", cif, "--species", "Xq"
    )
    bad_cif = tmp_path / "broken.cif"
    bad_cif.write_text("data_x\n_cell_length_a 1\nloop_\n_atom_site_label\n")
    line = _cli_error(capsys, "--table", t, "--structure", str(bad_cif))
    assert "broken.cif" in line and "cannot read a structure" in line
    assert "no such file" in _cli_error(
        capsys, "--table", t, "--structure", str(tmp_path / "POSCAR")
    )
    line = _cli_error(capsys, t, t, "--structure", cif)
    assert "--structure goes with --table" in line
    assert "--at-temperature-k" in _cli_error(capsys, "--table", t, "--at-temperature-k", "0")


def test_analysis_inputs_binary_devnull_directory(capsys, tmp_path) -> None:
    """`arrhenius A.json B.json` on files that are not JSON: one line, no traceback."""
    binary = tmp_path / "run.json"
    binary.write_bytes(bytes(range(256)))
    line = _cli_error(capsys, str(binary), str(binary))
    assert "run.json" in line and "binary file" in line
    line = _cli_error(capsys, "/dev/null", "/dev/null")
    assert "/dev/null" in line and "not an `ionflow analyze --json` output (Invalid JSON" in line
    line = _cli_error(capsys, str(tmp_path), str(tmp_path))
    assert "is a directory" in line
