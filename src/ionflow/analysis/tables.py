"""Read a D(T) table (T, D, D error) from a paper or another code.

The table is CSV, TSV, semicolon- or whitespace-separated text (the delimiter is
sniffed from the header row), with ``#`` comment lines, blank rows ignored and a
header row required. Columns are found by name, case-insensitively:

- temperature, K: ``temperature_k``, ``T``, ``temperature``, ``temp``, ``T_K``,
  ``T (K)``, ``T [K]``, ``T/K`` ...
- tracer diffusivity, cm²/s: ``diffusivity_cm2_s``, ``D``, ``diffusivity``, ``D*``,
  ``D_cm2_s``, ``D (cm2/s)``, ``D [cm^2 s^-1]`` ...
- optional 1σ error of D, cm²/s: ``diffusivity_err_cm2_s``, ``D_err``, ``D_error``,
  ``dD``, ``err``, ``error``, ``sigma_D``, ``D_std``, ``D_sd`` ...

Units are never guessed: a unit written in a header must be K (temperature) or
cm²/s (D and its error), anything else (°C, m²/s, Å²/ps, ``1e-5 cm2/s``) is an
error, as is every malformed cell, each named by file, line and column. Other
columns are ignored and listed. A header commented out by ``numpy.savetxt``
(``# T D D_err`` right above the numbers) is used when no plain header row exists.

Standard library only: no numpy needed, no jobflow, no database.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ionflow.errors import UserInputError, printable
from ionflow.rules import temperature_problem

TEMPERATURE, DIFFUSIVITY, ERROR = "temperature_k", "diffusivity_cm2_s", "diffusivity_err_cm2_s"

# normalised header names (lower case, separators → "_") → quantity; a unit suffix
# (T_K, D_cm2_s, D_err_cm2_s) is split off and checked by _split_header_cell
_TEMPERATURE_NAMES = ("temperature_k", "t", "temperature", "temp", "tk")
_DIFFUSIVITY_NAMES = (
    "diffusivity_cm2_s", "d", "diffusivity", "d*", "d_star", "dstar", "d_tracer", "d_self",
    "diffusion_coefficient", "diffusion_coeff", "tracer_diffusivity",
    "self_diffusivity", "self_diffusion_coefficient",
)  # fmt: skip
_ERROR_NAMES = (
    "diffusivity_err_cm2_s", "d_err", "d_error", "derr", "dd", "δd", "delta_d", "err", "error",
    "sigma_d", "d_sigma", "sigmad", "σ_d", "σd", "d_std", "d_sd", "d_stderr", "std", "sd",
    "stderr", "d_uncertainty", "uncertainty", "d*_err", "d*_error", "d*_std", "d_star_err",
    "diffusivity_err", "diffusivity_error", "diffusivity_std", "diffusivity_sd",
    "diffusivity_uncertainty", "±", "+/-", "+-",
)  # fmt: skip
_ALIASES: dict[str, str] = {
    **dict.fromkeys(_TEMPERATURE_NAMES, TEMPERATURE),
    **dict.fromkeys(_DIFFUSIVITY_NAMES, DIFFUSIVITY),
    **dict.fromkeys(_ERROR_NAMES, ERROR),
}

_LABEL = {TEMPERATURE: "temperature", DIFFUSIVITY: "diffusivity", ERROR: "diffusivity error"}
_EXPECTED = {
    TEMPERATURE: "temperature_k, T, temperature, temp, T_K, 'T (K)'",
    DIFFUSIVITY: "diffusivity_cm2_s, D, diffusivity, D*, D_cm2_s, 'D (cm2/s)'",
}
_OK_UNITS = {
    TEMPERATURE: {"k", "kelvin"},
    DIFFUSIVITY: {"cm2/s", "cm2/sec", "cm2pers"},
}
# a unit glued to the name with "_" (T_C, D_m2_s): unit part, then the name must be known
_SUFFIX_UNIT = re.compile(
    r"^(?P<name>.+?)_(?P<unit>k|kelvin|c|degc|celsius|f|degf"
    r"|(?:cm|m|mm|um|µm|nm|a|å|ang|angstrom)\^?2_?(?:per_)?(?:s|sec|ps|ns|fs)(?:_?-?1)?)$"
)
_BRACKET_UNIT = re.compile(r"^(?P<name>.*?)\s*[(\[{]\s*(?P<unit>.*?)\s*[)\]}]\s*$")
_WS_TOKEN = re.compile(r'"[^"]*"|\S+')
_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d*(?:[eE][-+]?\d+)?")
_DELIM_NAME = {"\t": "tab", ",": "comma", ";": "semicolon", "whitespace": "whitespace"}


@dataclass
class DiffusivityTable:
    """A D(T) table as read from ``path`` (one entry per data row)."""

    path: str
    temperatures_k: list[float]
    diffusivities_cm2_s: list[float]
    errors_cm2_s: list[float] | None
    columns_used: dict[str, str]
    """quantity (temperature_k, diffusivity_cm2_s, diffusivity_err_cm2_s) → header text"""
    ignored_columns: list[str] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    """1-based line of each data row in the file"""
    delimiter: str = ","
    """the sniffed delimiter: comma, semicolon, tab or "whitespace" """


def quoted(text: str, limit: int = 60) -> str:
    """A header or cell from the file, quoted, on one line, safe for a terminal."""
    return "'" + printable(text, limit) + "'"


def _norm_name(text: str) -> str:
    key = text.strip().strip('"').strip("'").strip().lower()
    if key in ("+/-", "+-", "±"):
        return key
    key = re.sub(r"[\s\-.]+", "_", key)
    return key.strip("_")


def _norm_unit(unit: str) -> str:
    u = unit.strip().lower()
    for a, b in (("²", "2"), ("⁻", "-"), ("¹", "1"), ("−", "-")):
        u = u.replace(a, b)
    u = re.sub(r"[\s_^·*.]+", "", u)
    u = u.replace("s-1", "/s").replace("//", "/")
    u = re.sub(r"2s$", "2/s", u)  # cm2_s, m2_s
    if u.startswith(("°", "º")):
        u = "deg" + u[1:]
    return u


def _split_header_cell(cell: str) -> tuple[str, str | None]:
    """'T (K)' → ('t', 'K'); 'D/cm2 s-1' → ('d', 'cm2 s-1'); 'D_cm2_s' → ('d', 'cm2_s')."""
    raw = cell.strip().strip('"').strip("'").strip()
    whole = _norm_name(raw)
    if whole in _ALIASES:
        return whole, None
    m = _BRACKET_UNIT.match(raw)
    if m and m.group("name").strip():
        return _norm_name(m.group("name")), m.group("unit")
    if "/" in raw:
        name, unit = raw.split("/", 1)
        if name.strip() and unit.strip():
            return _norm_name(name), unit
    m = _SUFFIX_UNIT.match(whole)
    if m and m.group("name") in _ALIASES:
        return m.group("name"), m.group("unit")
    return whole, None


def _check_unit(where: str, header: str, quantity: str, unit: str | None) -> None:
    if unit is None:
        return
    kind = TEMPERATURE if quantity == TEMPERATURE else DIFFUSIVITY
    norm = _norm_unit(unit)
    if norm in _OK_UNITS[kind]:
        return
    want = "K" if kind == TEMPERATURE else "cm²/s"
    hint = ""
    if kind == TEMPERATURE and norm in ("c", "degc", "celsius", "f", "degf"):
        hint = " (convert to kelvin: T[K] = T[°C] + 273.15)"
    elif kind == DIFFUSIVITY and norm in ("m2/s",):
        hint = " (1 m²/s = 1e4 cm²/s)"
    raise UserInputError(
        f"{where}: column {quoted(header)} is in {quoted(unit.strip())}, expected {want}{hint}; "
        "units are not converted, write the column in " + want
    )


def _decode(path: Path) -> str:
    if not path.exists():
        raise UserInputError(f"{path}: no such file")
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, expected a table file (CSV/TSV)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 ("Unicode text" export)
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    elif b"\x00" not in data:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UserInputError(
                f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                "expected a CSV/TSV table of T, D[, D error]"
            ) from None
    raise UserInputError(f"{path}: binary file, expected a CSV/TSV text table of T, D[, D error]")


def _sniff(header_line: str) -> str:
    for delim in ("\t", ";", ","):
        if delim in header_line:
            return delim
    return "whitespace"


def _split(line: str, delim: str) -> list[str]:
    if delim == "whitespace":
        toks = [t.strip('"') for t in _WS_TOKEN.findall(line)]
        merged: list[str] = []
        for t in toks:  # 'T (K)' written with a space: glue the unit back to its name
            if merged and re.fullmatch(r"[(\[{].*[)\]}]", t):
                merged[-1] = f"{merged[-1]} {t}"
            else:
                merged.append(t)
        return merged
    return [c.strip() for c in next(csv.reader([line], delimiter=delim), [])]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_diffusivity_table(path: str | Path) -> DiffusivityTable:
    """Parse a D(T) table; every problem is a one-line :class:`UserInputError`."""
    path = Path(path)
    text = _decode(path)
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)]
    content = [(i, ln) for i, ln in lines if ln and not ln.startswith("#")]
    content = [(i, ln) for i, ln in content if ln.strip(",;\t ")]  # ",,," rows from Excel
    if not content:
        what = "empty table (only comments)" if text.strip() else "empty file"
        raise UserInputError(
            f"{path}: {what}, expected a header row "
            "(e.g. T,D,D_err with T in K and D in cm²/s) and at least 2 data rows"
        )
    (hline, header_text), data_rows = content[0], content[1:]
    delim = _sniff(header_text)
    header = _split(header_text, delim)
    while len(header) > 1 and not header[-1]:  # 'T,D,' (trailing delimiter)
        header.pop()
    if all(_is_number(c) for c in header if c):
        # numpy.savetxt writes its header as a comment: '# T D D_err' right above the numbers
        prev = [(i, ln) for i, ln in lines if i < hline and ln]
        cand_line, cand = prev[-1] if prev and prev[-1][1].startswith("#") else (0, "")
        cand_cells = _split(cand.lstrip("#").strip(), delim) if cand else []
        found = {_ALIASES.get(_split_header_cell(c)[0]) for c in cand_cells}
        if len(cand_cells) == len(header) and {TEMPERATURE, DIFFUSIVITY} <= found:
            header, data_rows, hline = cand_cells, content, cand_line
        else:
            raise UserInputError(
                f"{path} line {hline}: no header row, the first row is numbers; add a header "
                "such as 'T,D,D_err' (T in K, D and its error in cm²/s)"
            )
    where = f"{path} line {hline}"
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        key = h.strip().lower()
        if not key:
            continue
        if key in seen:
            raise UserInputError(
                f"{where}: duplicated header {quoted(h)} (columns {seen[key] + 1} and {j + 1})"
            )
        seen[key] = j
    cols: dict[str, int] = {}
    ignored: list[str] = []
    for j, h in enumerate(header):
        if not h.strip():
            continue
        name, unit = _split_header_cell(h)
        quantity = _ALIASES.get(name)
        if quantity is None:
            ignored.append(h)
            continue
        if quantity in cols:
            raise UserInputError(
                f"{where}: columns {quoted(header[cols[quantity]])} and {quoted(h)} both name the "
                f"{_LABEL[quantity]}; keep one"
            )
        _check_unit(where, h, quantity, unit)
        cols[quantity] = j
    for quantity in (TEMPERATURE, DIFFUSIVITY):
        if quantity not in cols:
            names = [quoted(h) for h in header if h.strip()]
            found = ", ".join(names[:12]) + (
                f", … ({len(names)} in all)" if len(names) > 12 else ""
            )
            raise UserInputError(
                f"{where}: no {_LABEL[quantity]} column (headers found: {found}; expected "
                f"one of {_EXPECTED[quantity]})"
            )
    temps: list[float] = []
    ds: list[float] = []
    errs: list[float] = []
    line_numbers: list[int] = []
    n_cols = len(header)
    for row_no, (i, ln) in enumerate(data_rows, start=1):
        cells = _split(ln, delim)
        while len(cells) > n_cols and not cells[-1]:  # trailing delimiter
            cells.pop()
        at = f"{path} line {i} (data row {row_no})"
        if len(cells) != n_cols:
            raise UserInputError(
                f"{at}: {len(cells)} field{'s' if len(cells) != 1 else ''}, the header "
                f"(line {hline}) has {n_cols} (delimiter: {_DELIM_NAME.get(delim, delim)})"
            )
        values = {}
        for quantity, j in cols.items():
            cell = cells[j]
            col = f"column {quoted(header[j])}"
            if not cell:
                hint = ""
                if quantity == ERROR:
                    hint = "; give an error on every row, or drop the column (unweighted fit)"
                raise UserInputError(f"{at}, {col}: empty cell{hint}")
            try:
                v = float(cell)
            except ValueError:
                hint = ""
                if _DECIMAL_COMMA.fullmatch(cell):
                    hint = " (decimal comma? write 1.5e-6, not 1,5e-6)"
                raise UserInputError(
                    f"{at}, {col}: value {quoted(cell)} is not a number{hint}"
                ) from None
            if quantity == TEMPERATURE and temperature_problem(v):
                raise UserInputError(
                    f"{at}, {col}: temperature {cell} must be a finite number > 0 K (kelvin)"
                )
            if quantity == DIFFUSIVITY and not (math.isfinite(v) and v > 0):
                raise UserInputError(
                    f"{at}, {col}: diffusivity {cell} must be a finite number > 0 cm²/s "
                    "(drop rows of caged or non-diffusive runs)"
                )
            if quantity == ERROR and not (math.isfinite(v) and v >= 0):
                raise UserInputError(f"{at}, {col}: error {cell} must be a finite number ≥ 0 cm²/s")
            values[quantity] = v
        temps.append(values[TEMPERATURE])
        ds.append(values[DIFFUSIVITY])
        if ERROR in cols:
            errs.append(values[ERROR])
        line_numbers.append(i)
    if len(temps) < 2:
        raise UserInputError(
            f"{path}: {len(temps)} data row{'s' if len(temps) != 1 else ''}, an Arrhenius fit "
            "needs at least 2 (one per temperature)"
        )
    if len(set(temps)) < 2:
        raise UserInputError(
            f"{path}: every row is at {temps[0]:g} K, an Arrhenius fit needs at least 2 "
            "different temperatures"
        )
    return DiffusivityTable(
        path=str(path),
        temperatures_k=temps,
        diffusivities_cm2_s=ds,
        errors_cm2_s=errs if ERROR in cols else None,
        columns_used={q: header[j] for q, j in cols.items()},
        ignored_columns=ignored,
        line_numbers=line_numbers,
        delimiter=delim,
    )
