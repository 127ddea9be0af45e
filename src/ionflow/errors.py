"""Error types shared by every layer.

A :class:`UserInputError` is a problem with what the user gave us (a file, a key, a
flag). The CLI prints its message on one line and exits with status 2, never with a
traceback. Messages must name the file / material / key and say what was expected.
"""

from __future__ import annotations

__all__ = ["InsufficientDataError", "UserInputError", "printable"]

#: Longest single line of an error message printed by the CLI (longer lines are cut).
MAX_MESSAGE_LINE = 2000


class UserInputError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit status 2."""


class InsufficientDataError(UserInputError):
    """The data cannot support the requested quantity (e.g. one frame, < 2 temperatures)."""


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` safe to show on a terminal, on one line, at most ``limit`` characters.

    Every character that is not printable (control characters such as ESC, NUL, tab and
    line breaks, bidirectional overrides, zero-width characters, unassigned code points)
    is written as an escape like Python's ``repr`` (``\\x1b``, ``\\u202e``). The text is cut
    *before* it is escaped, so the cost is bounded by ``limit`` whatever the input size;
    a cut is marked with ``…``.
    """
    text = text if isinstance(text, str) else str(text)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[: max(limit - 1, 0)]  # type: ignore[operator]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
    return text + "…" if cut else text


class EnvironmentFailure(RuntimeError):
    """The environment failed, not the input: the database cannot be reached or refuses the
    credentials, the disk is full, the embedded server cannot start. Printed as one line by
    the CLI (never with a password), exit status 3."""


#: Exit statuses of the CLI (documented in the README).
EXIT_JOBS_FAILED = 1
EXIT_USER_INPUT = 2
EXIT_ENVIRONMENT = 3
