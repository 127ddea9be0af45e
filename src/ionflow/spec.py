"""The campaign file (``workflows.yaml``): schema, loading and validation.

One YAML file describes a whole diffusion campaign: which materials, which engine, which
MD settings (with per-material overrides) and where the jobs run. :func:`load_campaign`
reads it, validates every key, loads every structure and runs the physical checks, and
reports *every* problem it finds in one :class:`CampaignSpecError` (a
:class:`~ionflow.errors.UserInputError`), one problem per line, each naming the file,
the material (when relevant) and the key path::

    workflows.yaml: materials[1] (Li3N): md.temperatures_k: temperatures must be unique, got [500, 500]
    workflows.yaml: md.time_step_fs: must be > 0 and ≤ 5 fs, got 7.0

Example file::

    campaign: argyrodite-demo
    mobile_species: Li
    engine: {relax: chgnet, md: chgnet}
    md:
      temperatures_k: [600, 800, 1000]
      time_step_fs: 2.0
      equilibration_ps: 1.0
      production_ps: 5.0
      supercell_min_length_a: 10.0
      pinned_control: auto
    materials:
      - {name: Li6PS5Cl, structure: examples/Li6PS5Cl.cif}
      - {name: Li3N, structure: examples/Li3N.cif, md: {temperatures_k: [500, 700]}}
    execution: {mode: local}

Structure paths (and ``execution.launchpad``) are relative to the YAML file's directory.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
import types
import typing
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ionflow.engines import DEVICES, ENGINES, MD_ENGINES, ML_ENGINES, RELAX_ENGINES
from ionflow.errors import MAX_MESSAGE_LINE, UserInputError, printable
from ionflow.rules import check_temperature_k, temperature_problem  # noqa: F401
from ionflow.uris import redact_uri, uri_problem

__all__ = [
    "ALLOWED_ENGINES",
    "AnalysisSpec",
    "CampaignSpec",
    "CampaignSpecError",
    "EngineSpec",
    "ExecutionSpec",
    "MDOverrides",
    "MDSpec",
    "TargetSpec",
    "MaterialSpec",
    "PinnedSpecies",
    "RelaxSpec",
    "ResolvedMaterial",
    "VaspSpec",
    "check_temperature_k",
    "load_campaign",
    "planned_jobs",
    "temperature_problem",
]

#: Engines that can run MD (``toy`` is a cheap analytic test potential).
ALLOWED_ENGINES: tuple[str, ...] = MD_ENGINES
#: Engines that can relax a structure; ``none`` skips the relaxation.
ALLOWED_RELAX_ENGINES: tuple[str, ...] = RELAX_ENGINES
ALLOWED_THERMOSTATS: tuple[str, ...] = ("nose-hoover", "langevin", "berendsen")

MIN_PRODUCTION_FRAMES = 10
DEFAULT_FRAME_INTERVAL_STEPS = 10
#: ``analysis.analyses`` when the spec does not say: every mechanism analysis that applies
#: (rotation reports "no polyanion groups" itself where there are none). The analysis reuse
#: key leaves ``analyses`` out when it equals this list (ionflow.plan.stage_keys).
DEFAULT_ANALYSES = ("diffusion", "rotation", "vdos", "density", "jumps")

# ---- limits (README.md, "workflows.yaml" → "Limits"); each error message states its limit.
# Those a user may legitimately need to raise read an environment variable (LIMIT_ENV).
#: Largest campaign file, bytes (``IONFLOW_MAX_SPEC_BYTES``).
MAX_SPEC_BYTES = 8 * 1024 * 1024
#: Most materials in one campaign file (``IONFLOW_MAX_MATERIALS``).
MAX_MATERIALS = 10_000
#: Most atoms in one MD supercell (``IONFLOW_MAX_SUPERCELL_ATOMS``); checked from the cell
#: volume before any supercell is searched or built.
MAX_SUPERCELL_ATOMS = 20_000
#: Deepest nesting of YAML lists/mappings (a campaign file needs 5).
MAX_YAML_DEPTH = 64
#: Most YAML values (scalars, lists, mappings) after expanding aliases (``*name``).
MAX_YAML_NODES = 2_000_000
#: Most temperatures of one material.
MAX_TEMPERATURES = 50
#: Highest MD temperature, K.
MAX_TEMPERATURE_K = 5000.0
#: Time-step range, fs.
MIN_TIME_STEP_FS = 0.05
MAX_TIME_STEP_FS = 5.0
#: Longest equilibration or production, ps (100 ns).
MAX_DURATION_PS = 100_000.0
#: Largest ``supercell_min_length_a``, Å.
MAX_SUPERCELL_MIN_LENGTH_A = 100.0
#: Largest ``segment_steps`` and ``relax.max_steps``.
MAX_STEPS_SETTING = 1_000_000_000
#: Environment variables that raise the overridable limits.
LIMIT_ENV = {
    "MAX_SPEC_BYTES": "IONFLOW_MAX_SPEC_BYTES",
    "MAX_MATERIALS": "IONFLOW_MAX_MATERIALS",
    "MAX_SUPERCELL_ATOMS": "IONFLOW_MAX_SUPERCELL_ATOMS",
}

#: Names (campaign, materials): ASCII letters, digits, '.', '_', '-'; 1–64 characters,
#: the first a letter or digit. They become directory names, database keys, FireWorks and
#: report file names, so they are kept identical on every file system and unambiguous.
NAME_RULE = (
    "use 1–64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no spaces, path separators, control or non-ASCII characters)"
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch
_ERROR_TYPE = "ionflow"  # pydantic error type of our own single-problem errors
_MULTI_ERROR_TYPE = "ionflow_multi"  # ... and of our cross-field errors (ctx["problems"])


class CampaignSpecError(UserInputError):
    """One or more problems in a campaign file.

    ``str(exc)`` lists every problem, one per line; :attr:`problems` holds the same
    lines as a list (each names the file, the material when relevant and the key path).
    """

    def __init__(self, problems: Sequence[str]):
        # each line printable (no raw escape sequence from the file reaches a terminal)
        # and bounded, whatever the file holds
        self.problems = [printable(p, MAX_MESSAGE_LINE) for p in problems]
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> PydanticCustomError:
    """A pydantic error whose message is exactly ``message`` (no format placeholders)."""
    return PydanticCustomError(_ERROR_TYPE, "{detail}", {"detail": message})


def limit(name: str) -> int:
    """The value of limit ``name`` (e.g. ``"MAX_MATERIALS"``): its environment variable
    (:data:`LIMIT_ENV`) when set, else the module constant."""
    default = int(globals()[name])
    env = LIMIT_ENV.get(name)
    raw = os.environ.get(env, "").strip() if env else ""
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserInputError(f"{env}: expected a whole number ≥ 1, got {printable(raw, 40)!r}")
    return value


def _fmt_int(value: int) -> str:
    if abs(value) < 10**15:
        return str(value)
    digits = int(value.bit_length() * 0.30103) + 1  # no str(): huge ints are refused by it
    if digits < 300:
        return f"{float(value):.3g}"
    return f"{'-' if value < 0 else ''}a number with ~{digits} digits"


def _fmt_num(value: Any) -> str:
    """Compact number: ``500.0`` → ``500``, ``2.5`` → ``2.5``; other values via :func:`_show`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return _fmt_int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return _show(value)


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line rendering of a user value for a message, at most ~``limit``
    characters: cut *before* rendering (an alias-expanded list or a megabyte string costs
    no more than a short one), non-printable characters escaped (``\\x1b``)."""
    out: list[str] = []
    budget = [max(limit, 8)]

    def emit(text: str) -> bool:
        if budget[0] <= 0:
            return False
        if len(text) > budget[0]:
            text = text[: budget[0]] + "…"
        out.append(text)
        budget[0] -= len(text)
        return budget[0] > 0

    def walk(v: Any, depth: int) -> bool:
        if v is None:
            return emit("null")
        if isinstance(v, bool | int | float):
            return emit(_fmt_num(v))
        if isinstance(v, str):
            return emit("'" + printable(v, max(budget[0] - 2, 4)) + "'")
        if isinstance(v, bytes | bytearray):
            return emit(printable(repr(bytes(v[: budget[0]])), budget[0] + 1))
        if isinstance(v, dict | list | tuple | set | frozenset):
            if depth > 8:
                return emit("…")
            is_map = isinstance(v, dict)
            if not emit("{" if is_map else "["):
                return False
            for i, item in enumerate(v.items() if is_map else v):
                if i and not emit(", "):
                    return False
                if is_map:
                    if not (walk(item[0], depth + 1) and emit(": ")):
                        return False
                    item = item[1]
                if not walk(item, depth + 1):
                    return False
            return emit("}" if is_map else "]")
        return emit(printable(type(v).__name__, 40))

    walk(value, 0)
    text = "".join(out)
    return text if budget[0] > 0 or text.endswith("…") else text + "…"


def _fmt_list(values: Sequence[Any]) -> str:
    return _show(list(values))


def _suggest(word: Any, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` when a close match exists, else ``""``."""
    if not isinstance(word, str) or len(word) > 100:
        return ""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _choice(kind: str, allowed: Sequence[str]):
    """Before-validator: a string from ``allowed`` (case-insensitive, ``_`` = ``-``), with a
    did-you-mean message otherwise; null/false mean ``none`` when that is allowed."""

    def check(value: Any) -> Any:
        if (value is None or value is False) and "none" in allowed:
            return "none"
        if not isinstance(value, str):
            raise _fail(
                f"expected one of {', '.join(allowed)}, got {_fmt_num(value)}"
                + _yaml_bool_hint(value)
            )
        key = value.strip().lower()
        if key not in allowed:
            alt = key.replace("_", "-").replace(" ", "-")
            key = alt if alt in allowed else key
        if key not in allowed:
            raise _fail(
                f"unknown {kind} {_show(value)}{_suggest(key, allowed)} "
                f"(allowed: {', '.join(allowed)})"
            )
        return key

    return BeforeValidator(check)


_YAML11_TEXT_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][0-9]+")


def _yaml_number_hint(value: Any) -> str:
    """YAML 1.1 reads ``1e3`` and ``1.0e30`` as text: the exponent needs a sign."""
    if isinstance(value, str) and len(value) < 40 and _YAML11_TEXT_NUMBER.fullmatch(value.strip()):
        mantissa, _, exponent = value.strip().lower().partition("e")
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e+{exponent}"
        return f" (YAML reads {value.strip()} as text; write {fixed})"
    return ""


def _yaml_bool_hint(value: Any) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off as booleans; quote the value)"
    return ""


def _check_element(symbol: Any) -> str:
    from pymatgen.core import Element

    if not isinstance(symbol, str):
        raise _fail(f"expected an element symbol, got {_fmt_num(symbol)}{_yaml_bool_hint(symbol)}")
    sym = symbol.strip()
    if len(sym) > 3 or not Element.is_valid_symbol(sym):
        if len(sym) <= 3 and Element.is_valid_symbol(sym.capitalize()):
            raise _fail(
                f"{_show(symbol)} is not an element symbol; did you mean '{sym.capitalize()}'?"
            )
        raise _fail(f"{_show(symbol)} is not an element symbol")
    return sym


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid campaign/material name (:data:`NAME_RULE`), or None."""
    if _SAFE_NAME.fullmatch(value):
        return None
    if not value:
        return "empty"
    if len(value) > 64:
        return f"{len(value)} characters"
    if value != value.strip():
        end = value[-1] if value[-1].isspace() else value[0]
        where = "ends" if value[-1].isspace() else "starts"
        return f"{where} with {'a line break' if end in chr(10) + chr(13) else 'whitespace'}"
    bad = next((ch for ch in value if ch not in _NAME_CHARS), None)
    if bad is not None:
        if not bad.isprintable():
            return f"contains the control/invisible character {printable(bad)}"
        if bad in "/\\":
            return f"contains the path separator {bad!r}"
        if bad.isspace():
            return "contains whitespace"
        return f"contains {bad!r}"
    return f"starts with {value[0]!r}"


def _check_safe_name(kind: str):
    def check(value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            hint = ""
            ascii_form = unicodedata.normalize("NFKC", value).strip()
            if ascii_form != value and _SAFE_NAME.fullmatch(ascii_form):
                hint = f"; did you mean '{ascii_form}'?"
            raise _fail(
                f"{kind} {_show(value)} is not filesystem-safe ({problem}): {NAME_RULE}{hint}"
            )
        return value

    return AfterValidator(check)


def _path_check(value: str) -> str:
    if not value:
        raise _fail("empty path")
    if len(value) > 4096:
        raise _fail(f"a path of {len(value):,} characters (at most 4096)")
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise _fail(
            f"path {_show(value)} contains the control/invisible character {printable(bad)}"
        )
    return value


_check_path = AfterValidator(_path_check)


def _check_uri(value: str) -> str:
    problem = uri_problem(value)
    if problem is not None:
        raise _fail(problem)
    return value


def _range_text(lower: str, upper: float | None, unit: str) -> str:
    """``"> 0 ps"`` or ``"> 0 and ≤ 100000 ps"`` (the unit once, at the end)."""
    unit = f" {unit}" if unit else ""
    if upper is None:
        return f"{lower}{unit}"
    return f"{lower} and ≤ {_fmt_num(upper)}{unit}"


def _positive(unit: str, upper: float | None = None):
    def check(value: float) -> float:
        if not math.isfinite(value) or value <= 0 or (upper is not None and value > upper):
            raise _fail(f"must be {_range_text('> 0', upper, unit)}, got {_fmt_num(value)}")
        return value

    return AfterValidator(check)


def _non_negative(unit: str, upper: float | None = None):
    def check(value: float) -> float:
        if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
            raise _fail(f"must be {_range_text('≥ 0', upper, unit)}, got {_fmt_num(value)}")
        return value

    return AfterValidator(check)


def _check_time_step(value: float) -> float:
    if not math.isfinite(value) or not MIN_TIME_STEP_FS <= value <= MAX_TIME_STEP_FS:
        if math.isfinite(value) and 0 < value < MIN_TIME_STEP_FS:
            raise _fail(
                f"must be ≥ {_fmt_num(MIN_TIME_STEP_FS)} and ≤ {_fmt_num(MAX_TIME_STEP_FS)} fs, "
                f"got {value!r}"
            )
        raise _fail(f"must be > 0 and ≤ {_fmt_num(MAX_TIME_STEP_FS)} fs, got {value!r}")
    return value


def _check_temperatures(values: list[float]) -> list[float]:
    if not values:
        raise _fail("give at least one temperature, got []")
    if len(values) > MAX_TEMPERATURES:
        raise _fail(f"at most {MAX_TEMPERATURES} temperatures, got {len(values)}")
    bad = [v for v in values if temperature_problem(v)]
    if bad:
        raise _fail(f"temperatures {temperature_problem(bad[0])}, got {_fmt_list(bad)}")
    hot = [v for v in values if v > MAX_TEMPERATURE_K]
    if hot:
        raise _fail(f"temperatures must be ≤ {_fmt_num(MAX_TEMPERATURE_K)} K, got {_fmt_list(hot)}")
    if len(set(values)) != len(values):
        raise _fail(f"temperatures must be unique, got {_fmt_list(values)}")
    return sorted(values)


def _expand_auto_temperatures(value: Any) -> Any:
    """``{auto: {min, max, count}}`` → ``count`` temperatures evenly spaced over
    [min, max] K (whole kelvin); anything else passes unchanged to the list checks."""
    if not isinstance(value, dict):
        return value
    if set(value) != {"auto"} or not isinstance(value["auto"], dict):
        raise _fail(f"give a list of temperatures or {{auto: {{min, max, count}}}}, got {value!r}")
    auto = value["auto"]
    if set(auto) != {"min", "max", "count"}:
        missing = sorted({"min", "max", "count"} - set(auto))
        extra = sorted(set(auto) - {"min", "max", "count"})
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise _fail(f"auto: needs exactly min, max and count ({what})")
    lo, hi, count = auto["min"], auto["max"], auto["count"]
    for name, x in (("min", lo), ("max", hi)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or temperature_problem(x):
            raise _fail(f"auto.{name}: must be a temperature > 0 K, got {x!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise _fail(f"auto.count: must be a whole number ≥ 1, got {count!r}")
    if count > 1 and not hi > lo:
        raise _fail(f"auto.max: must be > auto.min ({_fmt_num(lo)} K), got {_fmt_num(hi)}")
    if count == 1:
        return [float(lo)]
    return [float(round(lo + i * (hi - lo) / (count - 1))) for i in range(count)]


class TargetSpec(BaseModel):
    """Precision target of the MD (``md.target``): runs extend until D is known, the
    material adds temperatures until σ(300 K) is (see :mod:`ionflow.adaptive`)."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    diffusivity_rel_err: Annotated[StrictFloat, _positive("", 10.0)] = Field(
        0.15, description="Per run: extend until err(D*)/D* ≤ this (no unit, > 0 and ≤ 10)."
    )
    extend_ps: Annotated[StrictFloat, _positive("ps", MAX_DURATION_PS)] | None = Field(
        None,
        description="Production added per extension in picoseconds (default production_ps; a "
        "whole number of saved frames).",
    )
    max_production_ps: Annotated[StrictFloat, _positive("ps", MAX_DURATION_PS)] = Field(
        200.0, description="Longest production of one run in picoseconds (≥ production_ps)."
    )
    sigma_at_t_factor: Annotated[StrictFloat, _positive("", 1e6)] | None = Field(
        None,
        description="Per material: 68 % interval of σ(300 K) within ×/÷ this (no unit, > 1); "
        "null: only 3 temperatures with D are required.",
    )
    max_temperatures: Annotated[StrictInt, _positive("", MAX_TEMPERATURES)] = Field(
        6, description="Most temperatures per material, starting ladder included (no unit)."
    )
    budget_core_hours: Annotated[StrictFloat, _positive("core-h")] | None = Field(
        None,
        description="Most core-hours of a material's MD, free and pinned runs together "
        "(core-h); null: none.",
    )
    max_temperature_k: Annotated[StrictFloat, _positive("K", MAX_TEMPERATURE_K)] | None = Field(
        None,
        description="Highest temperature that may be added in kelvin (default: the highest "
        "starting temperature + 300 K).",
    )

    @model_validator(mode="after")
    def _factor_above_one(self) -> TargetSpec:
        if self.sigma_at_t_factor is not None and self.sigma_at_t_factor <= 1.0:
            raise _fail(f"sigma_at_t_factor: must be > 1, got {_fmt_num(self.sigma_at_t_factor)}")
        return self


# ------------------------------------------------------------------- field types

PositiveFloat_fs = Annotated[StrictFloat, _positive("fs")]
EngineName = Annotated[Literal[ALLOWED_ENGINES], _choice("engine", ALLOWED_ENGINES)]
RelaxEngineName = Annotated[
    Literal[ALLOWED_RELAX_ENGINES], _choice("engine", ALLOWED_RELAX_ENGINES)
]
ElementSymbol = Annotated[str, BeforeValidator(_check_element)]


class _Model(BaseModel):
    """Base: unknown keys are errors; values are not silently coerced from strings."""

    model_config = ConfigDict(extra="forbid", validate_default=False)


class PinnedSpecies(_Model):
    """Explicit pinned-control species, e.g. ``{species: [S]}``."""

    species: list[ElementSymbol] = Field(
        description="Element symbols whose atoms are held fixed (pinned) in the control MD "
        "(dimensionless element symbols, e.g. [S] or [P, S]).",
    )

    @model_validator(mode="after")
    def _check(self) -> PinnedSpecies:
        if not self.species:
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE,
                "{detail}",
                {
                    "detail": "species: list at least one element (or use pinned_control: off)",
                    "problems": [
                        ("species", "list at least one element (or use pinned_control: off)")
                    ],
                },
            )
        dupes = sorted({s for s in self.species if self.species.count(s) > 1})
        if dupes:
            msg = f"duplicate species {dupes}"
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE, "{detail}", {"detail": msg, "problems": [("species", msg)]}
            )
        return self


def _pinned_mode(value: Any) -> Any:
    if value is False or value is None:  # YAML reads an unquoted `off` as false
        return "off"
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("auto", "off"):
            return low
        raise _fail(
            f"expected auto, off or {{species: [...]}}, got {value!r}{_suggest(low, ['auto', 'off'])}"
        )
    if isinstance(value, list):  # shorthand: pinned_control: [S]
        return value
    raise _fail(f"expected auto, off or {{species: [...]}}, got {_fmt_num(value)}")


def _pinned_discriminator(value: Any) -> str:
    if isinstance(value, dict | PinnedSpecies):
        return "<species>"
    return "<mode>"


def _pinned_shorthand(value: Any) -> Any:
    if value is False or value is None:
        return "off"
    if isinstance(value, list):
        return {"species": value}
    return value


PinnedControl = Annotated[
    Union[  # noqa: UP007 - tagged union members need typing.Union
        Annotated[Literal["auto", "off"], BeforeValidator(_pinned_mode), Tag("<mode>")],
        Annotated[PinnedSpecies, Tag("<species>")],
    ],
    Discriminator(_pinned_discriminator),
    BeforeValidator(_pinned_shorthand),
]


_PINNED_ADAPTER: TypeAdapter[Any] = TypeAdapter(PinnedControl)

# ------------------------------------------------------------------------- models


def _batch_choice(value: Any) -> Any:
    """``md.batch``: YAML's ``off``/``on`` arrive as booleans."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return _choice("batch", ("auto", "off")).func(value)


class MDSpec(_Model):
    """Molecular-dynamics settings (campaign-wide; materials may override any field)."""

    temperatures_k: Annotated[
        list[StrictFloat],
        BeforeValidator(_expand_auto_temperatures),
        AfterValidator(_check_temperatures),
    ] = Field(
        description="MD temperatures in kelvin; each > 0 and ≤ 5000 K, unique, 1–50 of them "
        "(sorted ascending), or {auto: {min, max, count}} (count evenly spaced, whole K).",
    )
    time_step_fs: Annotated[StrictFloat, AfterValidator(_check_time_step)] = Field(
        2.0, description="Integration time step in femtoseconds (0.05 ≤ dt ≤ 5 fs)."
    )
    equilibration_ps: Annotated[StrictFloat, _non_negative("ps", MAX_DURATION_PS)] = Field(
        1.0,
        description="Equilibration length in picoseconds, discarded from analysis (0–100000 ps, "
        "a whole number of saved frames).",
    )
    production_ps: Annotated[StrictFloat, _positive("ps", MAX_DURATION_PS)] = Field(
        5.0,
        description="Production length in picoseconds, analysed for diffusion (> 0 and "
        f"≤ 100000 ps, a whole number of saved frames, ≥ {MIN_PRODUCTION_FRAMES} of them).",
    )
    supercell_min_length_a: Annotated[StrictFloat, _positive("Å", MAX_SUPERCELL_MIN_LENGTH_A)] = (
        Field(
            10.0,
            description="Minimum perpendicular width of the MD supercell in ångström (> 0 and "
            "≤ 100 Å; the supercell may hold at most 20000 atoms, IONFLOW_MAX_SUPERCELL_ATOMS).",
        )
    )
    pinned_control: PinnedControl = Field(
        "auto",
        description="Pinned-anion control run: 'auto' (pin the bonded framework anions), 'off', "
        "or {species: [element symbols]} to pin every atom of those elements (no unit).",
    )
    frame_interval_fs: PositiveFloat_fs | None = Field(
        None,
        description="Interval between saved frames in femtoseconds; a positive multiple of "
        f"time_step_fs (default {DEFAULT_FRAME_INTERVAL_STEPS} × time_step_fs).",
    )
    thermostat: Annotated[
        Literal["nose-hoover", "langevin", "berendsen"], _choice("thermostat", ALLOWED_THERMOSTATS)
    ] = Field(
        "nose-hoover", description="NVT thermostat (no unit): nose-hoover, langevin or berendsen."
    )
    segment_steps: Annotated[StrictInt, _positive("", MAX_STEPS_SETTING)] | None = Field(
        None,
        description="MD steps per restartable segment in steps (VASP); null = one segment.",
    )
    target: TargetSpec | None = Field(
        None,
        description="Precision target (no unit): runs are extended and temperatures added "
        "until D and σ(300 K) are known this well (ionflow.adaptive); null: fixed lengths.",
    )
    batch: Annotated[Literal["auto", "off"], BeforeValidator(_batch_choice)] = Field(
        "off",
        description="Batched replicas (no unit): 'auto' advances every MD run of a material "
        "(each temperature, free and pinned) in one job with one batched potential call per "
        "step (ML engines; meant for GPUs, where one small cell leaves the device idle; "
        "on a CPU it is no faster, benchmarks/batched_md.py); 'off' (default): one job each. "
        "An execution setting: no reuse key depends on it.",
    )

    #: set when validated for the VASP engine (kept when pydantic re-runs the check on an
    #: instance placed in another model, which passes no context)
    _for_vasp: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> MDSpec:
        # the ML MD job's own rules (MDSettings) do not bind VASP, which runs its own MD
        ctx = info.context or {}
        if "engine_md" in ctx:
            self._for_vasp = ctx["engine_md"] == "vasp"
        problems = self.cross_field_problems(md_job_rules=not self._for_vasp)
        if problems:
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE,
                "{detail}",
                {"detail": "; ".join(f"{k}: {m}" for k, m in problems), "problems": problems},
            )
        return self

    def cross_field_problems(self, md_job_rules: bool = True) -> list[tuple[str, str]]:
        """Problems that involve several fields, as ``(field, message)`` pairs; with
        ``md_job_rules`` also what the ML MD job would refuse (:meth:`md_job_problems`)."""
        problems: list[tuple[str, str]] = []
        dt = self.time_step_fs
        interval = self.frame_interval_effective_fs
        ratio = interval / dt
        if self.frame_interval_fs is not None and (
            round(ratio) < 1 or abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio)
        ):
            problems.append(
                (
                    "frame_interval_fs",
                    f"must be a positive multiple of time_step_fs ({_fmt_num(dt)} fs), "
                    f"got {_fmt_num(self.frame_interval_fs)}",
                )
            )
            return problems
        problems += self.target_problems()
        n_frames = self.n_production_frames
        if n_frames < MIN_PRODUCTION_FRAMES:
            need_ps = MIN_PRODUCTION_FRAMES * interval / 1000.0
            problems.append(
                (
                    "production_ps",
                    f"{_fmt_num(self.production_ps)} ps with a frame every {_fmt_num(interval)} fs "
                    f"gives {n_frames} frames; need ≥ {MIN_PRODUCTION_FRAMES} "
                    f"(production_ps ≥ {need_ps:g} or a smaller frame_interval_fs)",
                )
            )
            return problems
        return problems + (self.md_job_problems() if md_job_rules else [])

    def target_problems(self) -> list[tuple[str, str]]:
        """Problems of ``target`` against the other settings, as ``(field, message)``."""
        tg = self.target
        if tg is None:
            return []
        out: list[tuple[str, str]] = []
        if tg.max_production_ps < self.production_ps:
            out.append(
                (
                    "target",
                    f"max_production_ps: must be ≥ production_ps ({_fmt_num(self.production_ps)}"
                    f" ps), got {_fmt_num(tg.max_production_ps)}",
                )
            )
        frame_ps = self.frame_stride_steps * self.time_step_fs / 1000.0
        for key in ("extend_ps", "max_production_ps"):
            value = getattr(tg, key)
            if value is None:
                continue
            frames = value / frame_ps
            if abs(frames - round(frames)) > 1e-6 * max(1.0, frames):
                out.append(
                    (
                        "target",
                        f"{key}: must be a whole number of saved frames ({frame_ps:.6g} ps "
                        f"each), got {_fmt_num(value)}",
                    )
                )
        if tg.max_temperature_k is not None and tg.max_temperature_k < max(self.temperatures_k):
            out.append(
                (
                    "target",
                    f"max_temperature_k: must be ≥ the highest temperature "
                    f"({_fmt_num(max(self.temperatures_k))} K), got "
                    f"{_fmt_num(tg.max_temperature_k)}",
                )
            )
        return out

    def adaptive_target(self) -> Any:
        """The :class:`ionflow.adaptive.Target` of these settings (None without target)."""
        if self.target is None:
            return None
        from ionflow.adaptive import DEFAULT_HEADROOM_K, Target

        tg = self.target.model_dump()
        tg["extend_ps"] = tg["extend_ps"] or self.production_ps
        if tg["max_temperature_k"] is None:
            tg["max_temperature_k"] = max(self.temperatures_k) + DEFAULT_HEADROOM_K
        return Target.from_mapping({**tg, "first_chunk_ps": self.production_ps})

    def md_settings(self, temperature_k: float | None = None) -> Any:
        """The :class:`ionflow.md.MDSettings` an MD job of these settings builds (the job's
        own model and rules); raises its ``ValidationError`` where the job would."""
        from ionflow.md import MDSettings

        return MDSettings(
            temperature_k=temperature_k if temperature_k is not None else self.temperatures_k[0],
            time_step_fs=self.time_step_fs,
            equilibration_steps=self.equilibration_steps,
            production_steps=self.production_steps,
            frame_interval_steps=self.frame_stride_steps,
            checkpoint_interval_steps=self.checkpoint_interval_steps,
            thermostat=self.thermostat,
        )

    def md_job_problems(self) -> list[tuple[str, str]]:
        """What the MD job would refuse in these settings, as ``(field, message)`` pairs:
        :meth:`md_settings` validated by the job's model, its errors said in this file's
        keys (one rule, checked by ``validate`` and enforced by the job)."""
        try:
            self.md_settings()
        except ValidationError as exc:
            return [self._md_job_problem(err) for err in exc.errors(include_url=False)]
        return []

    def _md_job_problem(self, err: Any) -> tuple[str, str]:
        text = str(err.get("msg", "")).removeprefix("Value error, ")
        loc = [p for p in err.get("loc", ()) if isinstance(p, str)]
        field = loc[0] if loc else (re.match(r"(\w+)=", text) or [None, ""])[1]
        stride, dt = self.frame_stride_steps, self.time_step_fs
        frame_ps = stride * dt / 1000.0
        if field in ("equilibration_steps", "production_steps") and "multiple" in text:
            key = field.replace("_steps", "_ps")
            ps = getattr(self, key)
            steps = getattr(self, field)
            lo = (steps // stride) * frame_ps
            hi = lo + frame_ps
            options = f"{lo:.6g} or {hi:.6g}" if lo > 0 else f"{hi:.6g}"
            return (
                key,
                f"{_fmt_num(ps)} ps is {steps} steps of {_fmt_num(dt)} fs, not a whole number of "
                f"saved frames (one every {stride} steps = {_fmt_num(stride * dt)} fs), which the "
                f"MD job refuses; use a multiple of {frame_ps:.6g} ps, e.g. {options}",
            )
        key = {
            "equilibration_steps": "equilibration_ps",
            "production_steps": "production_ps",
            "frame_interval_steps": "frame_interval_fs",
            "temperature_k": "temperatures_k",
        }.get(field, field if field in MDSpec.model_fields else "time_step_fs")
        return key, f"the MD job refuses these settings: {printable(text, 200)}"

    # ---- derived quantities (all in steps / frames, computed from the settings above)
    @property
    def frame_interval_effective_fs(self) -> float:
        """Frame interval in fs (the default is 10 × time step)."""
        if self.frame_interval_fs is None:
            return DEFAULT_FRAME_INTERVAL_STEPS * self.time_step_fs
        return self.frame_interval_fs

    @property
    def frame_stride_steps(self) -> int:
        """MD steps between saved frames."""
        return max(1, round(self.frame_interval_effective_fs / self.time_step_fs))

    @property
    def checkpoint_interval_steps(self) -> int:
        """MD steps between checkpoints: the first multiple of the frame stride ≥ 100."""
        stride = self.frame_stride_steps
        return stride * max(1, -(-100 // stride))

    @property
    def equilibration_steps(self) -> int:
        """Number of equilibration MD steps."""
        return round(self.equilibration_ps * 1000.0 / self.time_step_fs)

    @property
    def production_steps(self) -> int:
        """Number of production MD steps."""
        return round(self.production_ps * 1000.0 / self.time_step_fs)

    @property
    def n_production_frames(self) -> int:
        """Frames saved during production (excluding the starting frame)."""
        return self.production_steps // self.frame_stride_steps

    @property
    def pinned_control_arg(self) -> str | list[str]:
        """``pinned_control`` as :func:`ionflow.structure.pinned_indices` takes it."""
        if isinstance(self.pinned_control, PinnedSpecies):
            return list(self.pinned_control.species)
        return self.pinned_control


def _make_overrides_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in MDSpec.model_fields.items():
        annotation = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (
            annotation | None,
            Field(None, description=f"Per-material override: {info.description}"),
        )
    return create_model(
        "MDOverrides",
        __base__=_Model,
        __doc__="Per-material MD overrides: every field optional, merged over the campaign md.",
        __module__=__name__,
        **fields,
    )


MDOverrides = _make_overrides_model()


class EngineSpec(_Model):
    """Which engine relaxes the structures and which runs the MD."""

    relax: RelaxEngineName = Field(
        "chgnet",
        description=f"Relaxation engine (no unit): {', '.join(ALLOWED_ENGINES)} "
        "or none (skip the relaxation).",
    )
    md: EngineName = Field(
        "chgnet", description=f"MD engine (no unit): {', '.join(ALLOWED_ENGINES)}."
    )
    model: StrictStr | None = Field(
        None,
        description="The potential's model (no unit): a variant name of the engine (e.g. "
        "7net-0, 0.3.0, medium) or a model file path relative to the YAML file's directory; "
        "default: the engine's default variant. It belongs to the ML engine of relax/md "
        "(both, when they name the same one).",
    )
    device: Annotated[Literal[DEVICES], _choice("device", DEVICES)] | None = Field(
        None,
        description="Where the potential runs (no unit): auto (cuda when torch sees a GPU, "
        "else cpu), cpu or cuda; default cpu. Ignored by engines that take no device "
        "(m3gnet, toy, vasp).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `engine: chgnet` means the same engine for both
        if isinstance(value, str):
            return {"relax": value, "md": value}
        return value

    @property
    def model_engine(self) -> str | None:
        """The ML engine ``model`` belongs to (None when relax and md name none)."""
        ml = [e for e in dict.fromkeys((self.md, self.relax)) if e in ML_ENGINES]
        return ml[0] if ml else None

    def calculator_kwargs(self, engine: str) -> dict[str, Any]:
        """The :func:`ionflow.potentials.get_calculator` options of ``engine`` (relax or md
        engine): ``model`` when given for it, ``device`` when given and it takes one."""
        out: dict[str, Any] = {}
        if self.model is not None and engine == self.model_engine:
            out["model"] = self.model
        if self.device is not None and ENGINES[engine].device:
            out["device"] = self.device
        return out

    @model_validator(mode="after")
    def _model_owner(self) -> EngineSpec:
        if self.model is None:
            return self
        ml = [e for e in dict.fromkeys((self.md, self.relax)) if e in ML_ENGINES]
        msg = None
        if not ml:
            msg = f"model needs an ML engine, but relax is {self.relax} and md is {self.md}"
        elif len(ml) > 1:
            msg = (
                f"model belongs to one potential, but relax ({self.relax}) and md "
                f"({self.md}) differ: use the same engine for both, or relax: none"
            )
        elif not ENGINES[ml[0]].models:
            msg = f"engine {ml[0]} takes no model (got {self.model!r})"
        if msg:
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE, "{detail}", {"detail": msg, "problems": [("model", msg)]}
            )
        return self


class EngineOverrides(_Model):
    """A material's ``engine`` keys (each optional; merged over the campaign's)."""

    relax: RelaxEngineName | None = Field(None, description="Relaxation engine (no unit).")
    md: EngineName | None = Field(None, description="MD engine (no unit).")
    model: StrictStr | None = Field(None, description="Model variant or file (no unit).")
    device: Annotated[Literal[DEVICES], _choice("device", DEVICES)] | None = Field(
        None, description="auto, cpu or cuda (no unit)."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"relax": value, "md": value}
        return value


def _merge_engine(campaign: EngineSpec, override: EngineOverrides | None) -> EngineSpec:
    """A material's engine: its ``engine`` keys over the campaign's. The campaign's
    ``model`` is inherited only while it still belongs to the same potential."""
    if override is None:
        return campaign
    given = override.model_fields_set
    merged = {k: getattr(campaign, k) for k in ("relax", "md", "device")}
    merged.update({k: getattr(override, k) for k in given if k != "model" and getattr(override, k)})
    if "model" in given:
        merged["model"] = override.model
    else:
        probe = EngineSpec.model_construct(**merged, model=None)
        if campaign.model is not None and probe.model_engine == campaign.model_engine:
            merged["model"] = campaign.model
    return EngineSpec.model_validate(merged)


class RelaxSpec(_Model):
    """Relaxation settings (used unless ``engine.relax`` is ``none``)."""

    fmax_ev_a: Annotated[StrictFloat, _positive("eV/Å")] = Field(
        0.05, description="Force convergence threshold in eV/Å (> 0)."
    )
    max_steps: Annotated[StrictInt, _positive("", MAX_STEPS_SETTING)] = Field(
        500, description="Maximum optimiser steps (count, > 0)."
    )
    relax_cell: StrictBool = Field(
        True, description="Relax the cell shape and volume too (true/false, no unit)."
    )


def _analysis_names(value: Any) -> Any:
    """Before-validator of ``analysis.analyses``: registered names, diffusion first, once each."""
    from ionflow.analysis import ANALYSES

    allowed = sorted(ANALYSES)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > len(allowed):
        raise _fail(f"expected a list of analysis names from {', '.join(allowed)}")
    names = []
    for item in value:
        if not isinstance(item, str) or item.strip().lower() not in allowed:
            raise _fail(
                f"unknown analysis {_show(item)}{_suggest(item, allowed)} "
                f"(allowed: {', '.join(allowed)})"
            )
        key = item.strip().lower()
        if key not in names:
            names.append(key)
    return ["diffusion", *[n for n in names if n != "diffusion"]]


class AnalysisSpec(_Model):
    """Diffusion-analysis settings."""

    drift_reference: Annotated[
        Literal["auto", "framework", "none"],
        _choice("drift reference", ("auto", "framework", "none")),
    ] = Field(
        "auto",
        description="Centre-of-mass drift removal reference (no unit): auto (the pinned atoms "
        "in pinned runs, else the framework), framework (every non-mobile atom) or none.",
    )
    fit: Annotated[
        Literal["ionflow", "pymatgen"], _choice("fit backend", ("ionflow", "pymatgen"))
    ] = Field(
        "ionflow",
        description="MSD/Arrhenius fitting backend (no unit): ionflow or pymatgen "
        "(pymatgen-analysis-diffusion, for cross-checks).",
    )
    analyses: Annotated[list[StrictStr], BeforeValidator(_analysis_names)] = Field(
        default_factory=lambda: list(DEFAULT_ANALYSES),
        description="Streamed analyses run on every MD run in one pass over its trajectory "
        "(no unit): diffusion (always, first) plus any registered one; default: diffusion, "
        "rotation, vdos, density, jumps (framework-msd on request).",
    )


class VaspSpec(_Model):
    """Free-form VASP settings."""

    incar: dict[StrictStr, Any] = Field(
        default_factory=dict,
        description="INCAR overrides (VASP units, e.g. ENCUT in eV, POTIM in fs); keys are "
        "upper-cased; material values win over campaign values.",
    )

    @model_validator(mode="after")
    def _upper(self) -> VaspSpec:
        self.incar = {k.upper(): v for k, v in self.incar.items()}
        return self


class MaterialSpec(_Model):
    """One material of the campaign."""

    name: Annotated[StrictStr, _check_safe_name("name")] = Field(
        description="Unique, filesystem-safe material name (no unit), e.g. Li6PS5Cl."
    )
    structure: Annotated[StrictStr, _check_path] = Field(
        description="Structure file (CIF, POSCAR/CONTCAR or pymatgen JSON; no unit), relative "
        "to the YAML file's directory."
    )
    md: MDOverrides | None = Field(  # type: ignore[valid-type]
        None, description="Per-material MD overrides, merged field by field over the campaign md."
    )
    vasp: VaspSpec | None = Field(
        None, description="Per-material VASP settings, merged over the campaign vasp.incar."
    )
    analysis: AnalysisSpec | None = Field(
        None,
        description="Per-material analysis settings, merged key by key over the campaign "
        "analysis (e.g. analyses: [diffusion, vdos]; no unit).",
    )
    engine: EngineOverrides | None = Field(
        None,
        description="Per-material engine keys (relax, md, model, device; no unit), merged key "
        "by key over the campaign engine; the campaign model is kept only while it belongs "
        "to the same potential. VASP is chosen campaign-wide.",
    )


class ExecutionSpec(_Model):
    """Where and how the jobs run."""

    mode: Annotated[
        Literal["local", "fireworks", "jobflow-remote"],
        _choice("execution mode", ("local", "fireworks", "jobflow-remote")),
    ] = Field(
        "local",
        description="local (run in this process), fireworks (submit to a FireWorks "
        "LaunchPad) or jobflow-remote (a runner on this workstation submits over SSH; "
        "compute nodes need no database; slurm/README.md); no unit.",
    )
    project: Annotated[StrictStr, _check_safe_name("jobflow-remote project")] | None = Field(
        None,
        description="jobflow-remote project name (mode jobflow-remote only; default "
        "'ionflow'; written by `ionflow remote init`); no unit.",
    )
    launchpad: Annotated[StrictStr, _check_path] | None = Field(
        None,
        description="Path to my_launchpad.yaml (relative to the YAML file; no unit).",
    )
    db_uri: Annotated[StrictStr, AfterValidator(_check_uri)] | None = Field(
        None,
        repr=False,
        description="MongoDB URI for the LaunchPad (no unit); prefer db_uri_env. Shown "
        "everywhere with its password masked (mongodb://user:***@host:port/db).",
    )
    db_uri_env: StrictStr | None = Field(
        None, description="Name of the environment variable holding the MongoDB URI (no unit)."
    )
    profile: StrictStr | None = Field(
        None, description="Name of the worker/queue profile used for submission (no unit)."
    )

    @field_serializer("db_uri")
    def _masked(self, value: str | None) -> str | None:
        # every dump of the spec (validate --json, logs, provenance) masks the password
        return redact_uri(value) if value else value

    @model_validator(mode="after")
    def _project_needs_mode(self) -> ExecutionSpec:
        if self.project is not None and self.mode != "jobflow-remote":
            msg = f"project is for mode jobflow-remote only (mode is {self.mode})"
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE, "{detail}", {"detail": msg, "problems": [("project", msg)]}
            )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> ExecutionSpec:
        given = [k for k in ("launchpad", "db_uri", "db_uri_env") if getattr(self, k) is not None]
        if len(given) > 1:
            msg = f"give at most one of launchpad, db_uri, db_uri_env; got {', '.join(given)}"
            raise PydanticCustomError(
                _MULTI_ERROR_TYPE, "{detail}", {"detail": msg, "problems": [(given[1], msg)]}
            )
        return self


class CampaignSpec(_Model):
    """The whole ``workflows.yaml``."""

    campaign: Annotated[StrictStr, _check_safe_name("campaign name")] = Field(
        description="Campaign name (filesystem-safe; no unit); used for directories and the database."
    )
    description: StrictStr | None = Field(None, description="Free-text description (no unit).")
    mobile_species: ElementSymbol = Field(
        "Li", description="Element symbol of the diffusing ion (no unit), e.g. Li, Na, K, Mg."
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="Relaxation and MD engines (no unit)."
    )
    md: MDSpec = Field(description="Campaign-wide MD settings (units in each field name).")
    materials: list[MaterialSpec] = Field(
        min_length=1, description="The materials to simulate (at least one)."
    )
    execution: ExecutionSpec = Field(
        default_factory=ExecutionSpec, description="Where the jobs run (no unit)."
    )
    relax: RelaxSpec = Field(
        default_factory=RelaxSpec, description="Relaxation settings (units in field names)."
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="Diffusion-analysis settings (no unit)."
    )
    vasp: VaspSpec = Field(
        default_factory=VaspSpec, description="Campaign-wide VASP settings (INCAR overrides)."
    )

    def engine_for(self, material: Any) -> EngineSpec:
        """The engine of ``material`` (a :class:`ResolvedMaterial`): its merged ``engine``
        when it has one, else the campaign's."""
        return getattr(material, "engine", None) or self.engine


def _det3(m: Sequence[Sequence[int]]) -> int:
    """Determinant of a 3×3 integer matrix (exact)."""
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


class ResolvedMaterial(BaseModel):
    """A material with its structure loaded and its MD settings merged and checked."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    index: int = Field(description="Position in the materials list (0-based; no unit).")
    name: str = Field(description="Material name (no unit).")
    structure_path: Path = Field(description="Absolute path of the structure file (no unit).")
    md: MDSpec = Field(description="Campaign md merged with this material's overrides.")
    vasp_incar: dict[str, Any] = Field(
        default_factory=dict, description="Campaign INCAR overrides merged with the material's."
    )
    analysis: AnalysisSpec | None = Field(
        None,
        description="Campaign analysis merged with the material's (None: the campaign's).",
    )
    engine: EngineSpec | None = Field(
        None,
        description="Campaign engine merged with the material's, model paths made absolute "
        "(None: the campaign's; use CampaignSpec.engine_for).",
    )
    supercell_matrix: list[list[int]] = Field(
        description="3×3 integer supercell matrix reaching md.supercell_min_length_a (no unit)."
    )
    pinned_indices: list[int] = Field(
        default_factory=list,
        description="Site indices (in the input cell) pinned in the control run; empty = no "
        "pinned control (no unit).",
    )
    pinned_reason: str = Field(
        "", description="Why these sites are pinned, or why none are (no unit)."
    )
    structure: Any = Field(
        default=None, exclude=True, repr=False, description="The pymatgen Structure (not dumped)."
    )

    @property
    def formula(self) -> str:
        """Reduced formula of the input structure."""
        return self.structure.composition.reduced_formula

    @property
    def n_sites(self) -> int:
        """Atoms in the input cell."""
        return len(self.structure)

    @property
    def supercell_multiplicity(self) -> int:
        """Number of input cells in the supercell (|det M|)."""
        return abs(_det3(self.supercell_matrix))

    @property
    def n_sites_supercell(self) -> int:
        """Atoms in the MD supercell."""
        return self.n_sites * self.supercell_multiplicity

    @property
    def has_pinned_control(self) -> bool:
        """Whether a pinned-control MD is run for this material."""
        return bool(self.pinned_indices)


# ------------------------------------------------------------ error formatting


def _flatten_types(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _flatten_types(typing.get_args(tp)[0])
    if origin is Union or isinstance(tp, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_flatten_types(arg))
        return out
    return [tp]


def _allowed_keys(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the model(s) found at ``loc`` under ``root`` (for did-you-mean)."""
    current: list[Any] = [root]
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue  # tagged-union member
        nxt: list[Any] = []
        for tp in current:
            for t in _flatten_types(tp):
                origin = typing.get_origin(t)
                if isinstance(part, int) and origin in (list, Sequence):
                    nxt.append(typing.get_args(t)[0])
                elif isinstance(t, type) and issubclass(t, BaseModel) and part in t.model_fields:
                    info = t.model_fields[part]
                    nxt.append(info.annotation)
        current = nxt
    keys: list[str] = []
    for tp in current:
        for t in _flatten_types(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                keys.extend(k for k in t.model_fields if k not in keys)
    return keys


_TYPE_WORDS = {
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _short(value: Any, limit: int = 60) -> str:
    return _show(value, limit)


def _pydantic_problems(
    exc: ValidationError, root: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[tuple[tuple[Any, ...], str]]:
    """Turn a ValidationError into ``(loc, message)`` pairs with our wording."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("<")))
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == _MULTI_ERROR_TYPE:
            for field, msg in ctx["problems"]:
                out.append((prefix + loc + (field,), msg))
            continue
        if kind == _ERROR_TYPE:
            msg = ctx["detail"]
        elif kind == "missing":
            msg = "missing required key"
        elif kind == "extra_forbidden":
            allowed = _allowed_keys(root, err["loc"][:-1])
            hint = _suggest(loc[-1], allowed)
            msg = "unknown key" + (hint or f"; allowed keys: {', '.join(allowed)}")
        elif kind in _TYPE_WORDS:
            msg = f"{_TYPE_WORDS[kind]}, got {_short(err['input'])}" + _yaml_number_hint(
                err["input"]
            )
            if kind in ("string_type", "model_type", "dict_type"):
                msg += _yaml_bool_hint(err["input"])
        elif kind == "too_short" and isinstance(err["input"], list) and not err["input"]:
            msg = "must not be empty"
        else:
            text = err["msg"]
            msg = f"{text[:1].lower()}{text[1:]}, got {_short(err['input'])}"
        out.append((prefix + loc, msg))
    return out


def _loc_text(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{_fmt_int(part)}]"
        else:
            name = part if isinstance(part, str) else _show(part, 40)
            text += ("." if text else "") + printable(name, 60)
    return text


class _Problems:
    """Collects ``(loc, message)`` problems and formats them against the raw data."""

    def __init__(self, label: str):
        self.label = label
        self.items: list[tuple[tuple[Any, ...], str]] = []
        self.raw: Any = None

    def add(self, loc: Sequence[Any], message: str) -> None:
        item = (tuple(loc), message)
        if item not in self.items:
            self.items.append(item)

    def has(self, loc: Sequence[Any], message: str) -> bool:
        return (tuple(loc), message) in self.items

    def __bool__(self) -> bool:
        return bool(self.items)

    def _material_label(self, index: int) -> str:
        name = None
        mats = self.raw.get("materials") if isinstance(self.raw, dict) else None
        if isinstance(mats, list) and index < len(mats) and isinstance(mats[index], dict):
            candidate = mats[index].get("name")
            if isinstance(candidate, str) and candidate:
                name = printable(candidate, 60)
        return f"materials[{index}]" + (f" ({name})" if name else "")

    def lines(self) -> list[str]:
        def order(item: tuple[tuple[Any, ...], str]) -> int:
            loc = item[0]
            if len(loc) >= 2 and loc[0] == "materials" and isinstance(loc[1], int):
                return loc[1]
            return -1

        lines = []
        for loc, msg in sorted(self.items, key=order):
            parts = [self.label]
            if not loc:
                parts.append(msg)
            elif len(loc) >= 2 and loc[0] == "materials" and isinstance(loc[1], int):
                parts.append(self._material_label(loc[1]))
                if len(loc) > 2:
                    parts.append(_loc_text(loc[2:]))
                parts.append(msg)
            else:
                parts.extend([_loc_text(loc), msg])
            lines.append(": ".join(parts))
        return lines

    def raise_if_any(self) -> None:
        if self.items:
            raise CampaignSpecError(self.lines())


# ------------------------------------------------------------------- YAML reading


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present


class _Loader(_BaseLoader):
    """Safe loader that records duplicate mapping keys instead of silently keeping the last."""

    duplicates: list[tuple[int, str]]

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # unhashable keys: let SafeLoader raise its own error
                continue
            if key in seen:
                self.duplicates.append((key_node.start_mark.line + 1, _show(key)))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Frame:
    __slots__ = ("anchor", "start", "is_map", "key_next", "materials", "pending")

    def __init__(self, anchor: str | None, start: int, is_map: bool, materials: bool) -> None:
        self.anchor, self.start, self.is_map = anchor, start, is_map
        self.key_next = True  # in a mapping: the next node is a key
        self.materials = materials  # the top-level materials list
        self.pending = False  # in the root mapping: the last key was "materials"


def _prescan(text: str, label: str) -> None:
    """Check the limits on the YAML event stream, before any node is built: nesting depth
    (:data:`MAX_YAML_DEPTH`), values after alias expansion (:data:`MAX_YAML_NODES`; a
    recursive alias is refused) and the number of materials (:data:`MAX_MATERIALS`). Costs
    one pass of the parser and stops at the first limit, so a 50,000-deep file or an alias
    bomb answers in milliseconds."""
    max_materials = limit("MAX_MATERIALS")
    stack: list[_Frame] = []
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    total = 0
    n_materials = 0
    loader = _BaseLoader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, yaml.CollectionEndEvent):
                frame = stack.pop()
                if frame.anchor:
                    sizes[frame.anchor] = total - frame.start
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            parent = stack[-1] if stack else None
            is_key = parent is not None and parent.is_map and parent.key_next
            materials_value = parent is not None and parent.pending and not is_key
            if parent is not None:
                if parent.materials:
                    n_materials += 1
                    if n_materials > max_materials:
                        raise CampaignSpecError(
                            [
                                f"{label}: line {line}: materials: more than {max_materials:,} "
                                f"materials (limit MAX_MATERIALS; {LIMIT_ENV['MAX_MATERIALS']} "
                                "raises it)"
                            ]
                        )
                if parent.is_map:
                    parent.key_next = not parent.key_next
                    if is_key:
                        parent.pending = (
                            len(stack) == 1
                            and isinstance(event, yaml.ScalarEvent)
                            and event.value == "materials"
                        )
                    else:
                        parent.pending = False
            if isinstance(event, yaml.AliasEvent):
                size = sizes.get(event.anchor)
                if size is None:
                    if any(f.anchor == event.anchor for f in stack):
                        raise CampaignSpecError(
                            [
                                f"{label}: line {line}: alias *{printable(event.anchor, 40)} "
                                "refers to a value that contains it (a recursive alias)"
                            ]
                        )
                    size = 1  # undefined: the loader reports it
                total += size
            else:
                total += 1
                if isinstance(event, yaml.CollectionStartEvent):
                    stack.append(
                        _Frame(
                            event.anchor,
                            total - 1,
                            isinstance(event, yaml.MappingStartEvent),
                            materials_value and isinstance(event, yaml.SequenceStartEvent),
                        )
                    )
                    if len(stack) > MAX_YAML_DEPTH:
                        raise CampaignSpecError(
                            [
                                f"{label}: line {line}: lists/mappings nested more than "
                                f"{MAX_YAML_DEPTH} deep (limit MAX_YAML_DEPTH)"
                            ]
                        )
                elif event.anchor:
                    sizes[event.anchor] = 1
            if total > MAX_YAML_NODES:
                raise CampaignSpecError(
                    [
                        f"{label}: line {line}: more than {MAX_YAML_NODES:,} values after "
                        "expanding aliases (*name) (limit MAX_YAML_NODES; an alias bomb?)"
                    ]
                )
    finally:
        loader.dispose()


def _yaml_error_line(label: str, exc: Exception) -> str:
    """One line for any YAML error: file, line and column when known, the problem."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            ctx_mark = exc.context_mark
            at = f" at line {ctx_mark.line + 1}" if ctx_mark and ctx_mark is not mark else ""
            what += f" ({exc.context}{at})"
        return f"{label}: {where}YAML syntax error: {printable(what, 300)}"
    if isinstance(exc, yaml.reader.ReaderError):
        return (
            f"{label}: position {exc.position}: YAML syntax error: character "
            f"{printable(chr(exc.character)) if isinstance(exc.character, int) else '?'} "
            "is not allowed in YAML (control characters must be written as escapes in "
            'double quotes, e.g. "\\t")'
        )
    first = next((x for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
    return f"{label}: YAML syntax error: {printable(first.strip(), 300)}"


def _read_text(path: Path, label: str) -> str:
    """The file's text: a regular file, at most :data:`MAX_SPEC_BYTES`, UTF-8."""
    max_bytes = limit("MAX_SPEC_BYTES")
    try:
        info = path.stat()
    except FileNotFoundError:
        why = "a symbolic link to a missing file" if path.is_symlink() else "file not found"
        raise CampaignSpecError([f"{label}: {why}"]) from None
    except OSError as exc:
        raise CampaignSpecError([f"{label}: {_os_error_text(exc)}"]) from None
    if stat.S_ISDIR(info.st_mode):
        raise CampaignSpecError([f"{label}: is a directory, expected a YAML file"])
    if not stat.S_ISREG(info.st_mode):
        raise CampaignSpecError(
            [f"{label}: not a regular file (a device, pipe or socket), expected a YAML file"]
        )
    if info.st_size > max_bytes:
        raise CampaignSpecError(
            [
                f"{label}: {info.st_size:,} bytes, more than a campaign file may have "
                f"({max_bytes:,} bytes, limit MAX_SPEC_BYTES; {LIMIT_ENV['MAX_SPEC_BYTES']} "
                "raises it)"
            ]
        )
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise CampaignSpecError([f"{label}: {_os_error_text(exc)}"]) from None
    if len(data) > max_bytes:  # grew since stat
        raise CampaignSpecError([f"{label}: more than {max_bytes:,} bytes (limit MAX_SPEC_BYTES)"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CampaignSpecError(
            [
                f"{label}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                "expected a YAML file"
            ]
        ) from None


def _os_error_text(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop (too many levels of symbolic links)"
    return f"cannot read: {printable(exc.strerror or type(exc).__name__, 100)}"


def _read_yaml(path: Path, label: str) -> tuple[Any, list[str]]:
    text = _read_text(path, label)
    loader = None
    try:
        _prescan(text, label)
        loader = _Loader(text)
        loader.duplicates = []
        data = loader.get_single_data()
    except UserInputError:  # our limits (CampaignSpecError), a bad IONFLOW_MAX_* value
        raise
    except yaml.YAMLError as exc:
        raise CampaignSpecError([_yaml_error_line(label, exc)]) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # e.g. an integer of more than 4300 digits, a malformed !!binary or timestamp
        what = next((x for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
        if "integer string conversion" in what:
            what = "a number with more than 4300 digits"
        raise CampaignSpecError(
            [f"{label}: cannot read a value: {printable(what.strip(), 200)}"]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    dupes = [f"{label}: line {line}: duplicate key {key}" for line, key in loader.duplicates]
    return data, dupes


def _resolve(path: Path) -> Path:
    """``path.resolve()``, or the absolute path when it cannot be resolved (a symbolic
    link loop raises RuntimeError in Python 3.11): the problem is reported where the file
    is read."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


# ----------------------------------------------------------------------- loading


def _try(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _merge_md(base: dict[str, Any], override: BaseModel | None) -> dict[str, Any]:
    merged = dict(base)
    if override is None:
        return merged
    for key in override.model_fields_set:
        value = getattr(override, key)
        if value is None and not _nullable(MDSpec.model_fields[key].annotation):
            continue  # null in an override means "inherit"
        merged[key] = value.model_dump() if isinstance(value, BaseModel) else value
    return merged


def _nullable(annotation: Any) -> bool:
    return type(None) in _flatten_types(annotation)


def _elements(structure: Any) -> list[str]:
    return sorted({el.symbol for el in structure.composition.elements})


def _resolve_engine_model(engine: EngineSpec, base_dir: Path) -> tuple[EngineSpec, str | None]:
    """``engine`` with its model made canonical (a variant name, or an absolute path to a
    model file that exists), or the one-line problem with it."""
    from ionflow.potentials import resolve_model

    owner = engine.model_engine
    if owner is None or engine.model is None:
        return engine, None
    try:
        model = resolve_model(owner, engine.model, base_dir=base_dir)
    except UserInputError as exc:
        return engine, str(exc)
    return engine.model_copy(update={"model": model}), None


def _engine_md(raw: Any) -> str | None:
    """The MD engine named by a raw campaign mapping (lower case), if it names one."""
    engine = raw.get("engine") if isinstance(raw, dict) else None
    value = engine.get("md") if isinstance(engine, dict) else engine
    return value.strip().lower() if isinstance(value, str) else None


def load_campaign(path: str | Path) -> tuple[CampaignSpec, list[ResolvedMaterial]]:
    """Read, validate and resolve a campaign file.

    Parameters
    ----------
    path
        The ``workflows.yaml`` file. Structure paths inside it are relative to its directory.

    Returns
    -------
    spec, materials
        The validated :class:`CampaignSpec` (with ``execution.launchpad`` made absolute)
        and one :class:`ResolvedMaterial` per material, in file order, each with its
        structure loaded, MD settings merged, supercell matrix and pinned sites computed.

    Raises
    ------
    CampaignSpecError
        (a :class:`~ionflow.errors.UserInputError`) listing every problem found, one per
        line, each naming the file, the material when relevant and the key path.
    """
    from ionflow import structure as st

    path = Path(path)
    label = printable(str(path), 300)
    base_dir = _resolve(path.expanduser()).parent
    raw, dupes = _read_yaml(path.expanduser(), label)
    problems = _Problems(label)
    problems.raw = raw

    if raw is None:
        raise CampaignSpecError(
            [
                f"{label}: the file is empty; expected a mapping with keys "
                "campaign, md, materials, ..."
            ]
        )
    if not isinstance(raw, dict):
        raise CampaignSpecError(
            [f"{label}: top level must be a mapping (key: value), got a {type(raw).__name__}"]
        )
    max_materials = limit("MAX_MATERIALS")
    if isinstance(raw.get("materials"), list) and len(raw["materials"]) > max_materials:
        raise CampaignSpecError(  # (materials given through an alias; _prescan counts others)
            [
                f"{label}: materials: {len(raw['materials']):,} materials, more than "
                f"{max_materials:,} (limit MAX_MATERIALS; {LIMIT_ENV['MAX_MATERIALS']} raises it)"
            ]
        )

    spec: CampaignSpec | None = None
    try:
        spec = CampaignSpec.model_validate(raw, context={"engine_md": _engine_md(raw)})
    except ValidationError as exc:
        for loc, msg in _pydantic_problems(exc, CampaignSpec):
            problems.add(loc, msg)

    # Pieces that validated on their own, so that per-material checks still run when
    # something unrelated elsewhere in the file is wrong.
    if spec is not None:
        mobile: str | None = spec.mobile_species
        campaign_md_raw: dict[str, Any] | None = raw.get("md")
        campaign_md: MDSpec | None = spec.md
        campaign_incar = spec.vasp.incar
        campaign_analysis = spec.analysis
        materials: list[tuple[MaterialSpec | None, bool]] = [(m, True) for m in spec.materials]
    else:
        mobile = None
        try:
            mobile = _check_element(raw.get("mobile_species", "Li"))
        except PydanticCustomError:
            pass
        campaign_md_raw = raw.get("md") if isinstance(raw.get("md"), dict) else None
        campaign_md = _try(MDSpec, campaign_md_raw) if campaign_md_raw is not None else None
        vasp = _try(VaspSpec, raw.get("vasp") or {})
        campaign_incar = vasp.incar if vasp else {}
        campaign_analysis = AnalysisSpec()
        raw_mats = raw.get("materials")
        materials = []
        for item in raw_mats if isinstance(raw_mats, list) else []:
            mat = _try(MaterialSpec, item)
            if mat is None and isinstance(item, dict):
                # still check the structure when only the overrides are wrong
                core = {k: v for k, v in item.items() if k in ("name", "structure")}
                materials.append((_try(MaterialSpec, core), False))
            else:
                materials.append((mat, True))

    # campaign-level pinned control on its own, so its checks run even if md has problems
    campaign_pinned: str | PinnedSpecies | None = None
    if campaign_md is not None:
        campaign_pinned = campaign_md.pinned_control
    elif isinstance(campaign_md_raw, dict):
        try:
            campaign_pinned = _PINNED_ADAPTER.validate_python(
                campaign_md_raw.get("pinned_control", "auto")
            )
        except ValidationError:
            campaign_pinned = None
    if mobile and isinstance(campaign_pinned, PinnedSpecies):
        if mobile in campaign_pinned.species:
            problems.add(
                ("md", "pinned_control", "species"),
                f"cannot pin the mobile species {mobile}",
            )

    # material names unique (case-insensitively: case-insensitive filesystems)
    seen_names: dict[str, int] = {}
    for i, (mat, _) in enumerate(materials):
        if mat is None:
            continue
        key = mat.name.casefold()
        if key in seen_names:
            problems.add(
                ("materials", i, "name"),
                f"duplicate material name {mat.name!r} (also materials[{seen_names[key]}])",
            )
        else:
            seen_names[key] = i

    # execution.launchpad exists (relative to the YAML directory)
    if spec is not None and spec.execution.launchpad is not None:
        lp = _resolve(base_dir / Path(spec.execution.launchpad).expanduser())
        if not lp.is_file():
            problems.add(("execution", "launchpad"), f"launchpad file not found: {lp}")
        else:
            spec = spec.model_copy(
                update={"execution": spec.execution.model_copy(update={"launchpad": str(lp)})}
            )

    # engine.model: a known variant, or a model file that exists (relative to the YAML file)
    if spec is not None and spec.engine.model is not None:
        engine, err = _resolve_engine_model(spec.engine, base_dir)
        if err:
            problems.add(("engine", "model"), err)
        else:
            spec = spec.model_copy(update={"engine": engine})

    resolved: list[ResolvedMaterial] = []
    for i, (mat, overrides_ok) in enumerate(materials):
        if mat is None:
            continue
        prefix: tuple[Any, ...] = ("materials", i)
        # merged MD settings: report only what is not already reported elsewhere
        md: MDSpec | None = None
        if campaign_md_raw is not None and overrides_ok:
            merged = _merge_md(campaign_md_raw, mat.md)
            try:
                md = MDSpec.model_validate(merged, context={"engine_md": _engine_md(raw)})
            except ValidationError as exc:
                for loc, msg in _pydantic_problems(exc, MDSpec, ("md",)):
                    if problems.has(loc, msg) or problems.has(prefix + loc, msg):
                        continue
                    problems.add(prefix + loc, msg)
        pinned_value = campaign_pinned
        if not overrides_ok:
            pinned_value = None  # unknown: the material's own md is broken
        elif mat.md is not None and mat.md.pinned_control is not None:
            pinned_value = mat.md.pinned_control
            if mobile and isinstance(pinned_value, PinnedSpecies):
                if mobile in pinned_value.species:
                    problems.add(
                        (*prefix, "md", "pinned_control", "species"),
                        f"cannot pin the mobile species {mobile}",
                    )

        # the material's engine merged over the campaign's
        mat_engine: EngineSpec | None = None
        if spec is not None and mat.engine is not None:
            try:
                mat_engine = _merge_engine(spec.engine, mat.engine)
            except ValidationError as exc:
                for loc, msg in _pydantic_problems(exc, EngineSpec, ()):
                    problems.add((*prefix, "engine", *loc), msg)
            else:
                campaign_vasp = ("vasp" in (spec.engine.relax,), "vasp" in (spec.engine.md,))
                if ("vasp" in (mat_engine.relax,), "vasp" in (mat_engine.md,)) != campaign_vasp:
                    problems.add(
                        (*prefix, "engine"),
                        "vasp is chosen campaign-wide (engine.relax / engine.md), not per material",
                    )
                    mat_engine = None
                elif mat_engine.model is not None:
                    mat_engine, err = _resolve_engine_model(mat_engine, base_dir)
                    if err:
                        problems.add((*prefix, "engine", "model"), err)

        # structure
        # shown in messages relative to the working directory when the YAML path is relative
        shown = path.expanduser().parent / Path(mat.structure).expanduser()
        spath = _resolve(shown)
        try:
            structure = st.load_structure(shown)
        except UserInputError as exc:
            problems.add((*prefix, "structure"), str(exc))
            continue
        elements = _elements(structure)
        if mobile and mobile not in elements:
            problems.add(
                (*prefix, "structure"),
                f"{spath.name} contains no {mobile} (the mobile species); "
                f"elements: {', '.join(elements)}",
            )
        pinned_ok = pinned_value is not None
        if isinstance(pinned_value, PinnedSpecies):
            missing = [s for s in pinned_value.species if s not in elements]
            if missing:
                problems.add(
                    (*prefix, "md", "pinned_control", "species"),
                    f"{', '.join(missing)} not in this structure (elements: {', '.join(elements)})",
                )
                pinned_ok = False
            if mobile in pinned_value.species:
                pinned_ok = False  # already reported
        if md is None:
            continue
        pinned_arg = md.pinned_control_arg
        # the atom count from the cell volume first: never search or build a supercell
        # beyond the limit (1e6 Å would need EiB of memory)
        max_atoms = limit("MAX_SUPERCELL_ATOMS")
        width = md.supercell_min_length_a
        too_many = (
            f"the limit is {max_atoms:,} atoms (MAX_SUPERCELL_ATOMS; "
            f"{LIMIT_ENV['MAX_SUPERCELL_ATOMS']} raises it)"
        )
        n_lower = len(structure) * st.min_supercell_cells(structure.lattice, width)
        if n_lower > max_atoms:
            problems.add(
                (*prefix, "md", "supercell_min_length_a"),
                f"{_fmt_num(width)} Å needs a supercell of at least {n_lower:,} atoms "
                f"({len(structure)} per cell of {spath.name}); {too_many}",
            )
            continue
        try:
            matrix = st.supercell_matrix(structure.lattice, width)
            matrix_list = [[int(x) for x in row] for row in matrix]
        except UserInputError as exc:
            problems.add((*prefix, "md", "supercell_min_length_a"), str(exc))
            continue
        n_atoms = len(structure) * abs(_det3(matrix_list))
        if n_atoms > max_atoms:
            problems.add(
                (*prefix, "md", "supercell_min_length_a"),
                f"{_fmt_num(width)} Å gives a supercell of {n_atoms:,} atoms; {too_many}",
            )
            continue
        pinned: list[int] = []
        reason = "off"
        if mobile and mobile in elements and pinned_ok:
            try:
                indices, reason = st.pinned_indices(structure, mobile, pinned_arg)
                pinned = [int(x) for x in indices]
            except UserInputError as exc:
                problems.add((*prefix, "md", "pinned_control"), str(exc))
                continue
        incar = dict(campaign_incar)
        if mat.vasp is not None:
            incar.update(mat.vasp.incar)
        analysis = None
        if mat.analysis is not None:
            analysis = campaign_analysis.model_copy(
                update={k: getattr(mat.analysis, k) for k in mat.analysis.model_fields_set}
            )
        resolved.append(
            ResolvedMaterial(
                index=i,
                name=mat.name,
                structure_path=spath,
                md=md,
                vasp_incar=incar,
                analysis=analysis,
                supercell_matrix=matrix_list,
                pinned_indices=pinned,
                pinned_reason=reason,
                structure=structure,
                engine=mat_engine,
            )
        )

    lines = dupes + problems.lines()
    if lines:
        raise CampaignSpecError(lines)
    assert spec is not None
    return spec, resolved


# ---------------------------------------------------------------------- planning


def planned_jobs(spec: CampaignSpec, material: ResolvedMaterial) -> dict[str, int]:
    """Jobs ``submit`` creates for one material, by kind (``ionflow validate``).

    Counted from the material's plan (:func:`ionflow.plan.plan_material`): relax (unless
    ``engine.relax: none``), supercell, ``md`` / ``pinned_md`` = every job of the free /
    pinned MD runs (one per run; a VASP run's pin, segments, segments output and collect),
    one analysis per run, one Arrhenius fit per variant, summary.
    """
    from ionflow.plan import plan_material

    return plan_material(spec, material).counts()
