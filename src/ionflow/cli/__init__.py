"""The ``ionflow`` command line.

Each command group lives in its own module and registers itself on :data:`app`;
heavy imports (pymatgen, jobflow, torch) happen inside the commands so that
``ionflow --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from ionflow.errors import UserInputError

app = typer.Typer(
    name="ionflow",
    help="AIMD/MLMD diffusion campaigns for superionic conductors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # imported for their side effect of adding commands to `app`
    import ionflow.cli.anion_cmds  # noqa: F401
    import ionflow.cli.campaign_cmds  # noqa: F401
    import ionflow.cli.db_cmds  # noqa: F401
    import ionflow.cli.hpc_cmds  # noqa: F401
    import ionflow.cli.pathway_cmds  # noqa: F401
    import ionflow.cli.remote_cmds  # noqa: F401
    import ionflow.cli.results_cmds  # noqa: F401
    import ionflow.cli.vasp_cmds  # noqa: F401
    import ionflow.cli.vdos_cmds  # noqa: F401
    from ionflow.cli import analysis_cmds, run_cmds  # noqa: F401


def text_cell(value, limit: int = 500):
    """Text read back from the database for a Rich table or line: a ``rich.text.Text``
    (never interpreted as markup), control characters escaped, bounded in length."""
    from rich.text import Text

    from ionflow.errors import printable

    return Text(printable("" if value is None else str(value), limit))


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as ``warning: text`` (no source file, line number or Python source line)."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file or sys.stderr)


def environment_message(exc: BaseException) -> str | None:
    """One line for an environment failure (database unreachable or refusing the
    credentials, disk full), or ``None`` when ``exc`` is not one."""
    import errno

    from ionflow.errors import EnvironmentFailure

    if isinstance(exc, EnvironmentFailure):
        return str(exc)
    if type(exc).__module__.startswith(("pymongo", "gridfs")):
        from pymongo.errors import PyMongoError

        if isinstance(exc, PyMongoError):
            from ionflow.store import LAST_RESOLVED, database_error_message

            return database_error_message(exc, LAST_RESOLVED)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or 'no space left on device'}{where} (free space, then rerun)"
    return None


def _safe_text(text: str) -> str:
    """A message as printed: every line escaped (no raw terminal escape sequence or other
    control character from the input reaches the terminal) and cut at MAX_MESSAGE_LINE."""
    from ionflow.errors import MAX_MESSAGE_LINE, printable

    return "\n".join(printable(line, MAX_MESSAGE_LINE) for line in text.split("\n"))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors become one line on stderr and exit 2,
    environment failures (database, disk) one line and exit 3."""
    import warnings

    from ionflow.errors import EXIT_ENVIRONMENT

    warnings.showwarning = _one_line_warning
    _register()
    try:
        rc = app(args=argv, standalone_mode=False)  # returns typer.Exit codes in this mode
        if isinstance(rc, int) and rc:
            raise SystemExit(rc)
    except UserInputError as exc:
        print(f"error: {_safe_text(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        raise SystemExit(code) from None
    except typer.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        # usage errors (typer bundles its own click: match by interface, not class)
        if hasattr(exc, "show") and hasattr(exc, "exit_code") and hasattr(exc, "format_message"):
            ctx = getattr(exc, "ctx", None)
            command = getattr(ctx, "command_path", None) or "ionflow"
            text = " ".join(str(exc.format_message()).split())
            print(f"error: {_safe_text(text)} (see `{command} --help`)", file=sys.stderr)
            raise SystemExit(2) from None
        message = environment_message(exc)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_ENVIRONMENT) from None
        raise
