"""Slurm durations (``--time``, ``squeue %L`` / ``%l``) in seconds: one parser.

Used by the Slurm backend (profile walltimes,
:func:`ionflow.backends.fireworks_slurm.parse_walltime`) and by
the VASP jobs (time left in the allocation, :func:`ionflow.vasp.parse_slurm_duration`),
each with its own contract on top (numbers as minutes / unparsable text as unknown).
Standard library only.
"""

from __future__ import annotations

import re

__all__ = ["NO_LIMIT", "slurm_seconds"]

#: Texts Slurm uses for "no time limit".
NO_LIMIT = ("UNLIMITED", "INFINITE")

_DURATION = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_seconds(text: str) -> int | None:
    """Seconds of a Slurm duration.

    Parameters
    ----------
    text
        ``"minutes"``, ``"MM:SS"``, ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"`` or
        ``"D-HH:MM:SS"``; ``""``, ``"UNLIMITED"`` and ``"INFINITE"`` mean no limit.

    Returns
    -------
    int or None
        Seconds, or ``None`` for no limit.

    Raises
    ------
    ValueError
        If ``text`` is not a Slurm duration (e.g. ``"2h"``, ``"NOT_SET"``).
    """
    text = str(text).strip()
    if text == "" or text.upper() in NO_LIMIT:
        return None
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"not a Slurm time limit: {text!r}")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = (nums + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if len(nums) == 1:  # minutes
        return nums[0] * 60
    if len(nums) == 2:  # MM:SS
        return nums[0] * 60 + nums[1]
    return (nums[0] * 60 + nums[1]) * 60 + nums[2]
