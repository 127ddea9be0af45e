"""Error types shared by every layer.

A :class:`UserInputError` is a problem with what the user gave us (a file, a key, a
flag). The CLI prints its message on one line and exits with status 2, never with a
traceback. Messages must name the file / material / key and say what was expected.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit status 2."""


class InsufficientDataError(UserInputError):
    """The data cannot support the requested quantity (e.g. one frame, < 2 temperatures)."""
