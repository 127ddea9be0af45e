"""Physical input rules shared by the campaign file, the analyses and the CLI — one home
each, so that ``validate`` and every command say the same thing.

Imports nothing of ionflow but :mod:`ionflow.errors`.
"""

from __future__ import annotations

import math
from typing import Any

from ionflow.errors import UserInputError


def temperature_problem(value: Any) -> str | None:
    """The temperature rule, its one home: a temperature is a finite number of kelvin > 0.

    ``"must be > 0 K"`` when ``value`` breaks it, else None. Campaign files
    (``md.temperatures_k``), the trajectory analyses, tables of D(T) and the Arrhenius fit
    all check it here.
    """
    try:
        ok = math.isfinite(value) and value > 0
    except TypeError:
        ok = False
    return None if ok else "must be > 0 K"


def check_temperature_k(value: Any, what: str = "temperature") -> float:
    """``value`` as a float when it obeys :func:`temperature_problem`; else
    ``UserInputError("<what> must be > 0 K, got <value>")`` (one line)."""
    problem = temperature_problem(value)
    if problem:
        raise UserInputError(f"{what} {problem}, got {value}")
    return float(value)
