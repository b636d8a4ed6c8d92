"""The ``crossmodal`` command. ``main(argv) -> int`` runs in-process (tests call it); ``run()`` is the script."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import typer
import typer.main

from pipelines.cli import _verbs  # noqa: F401  (registers every verb on the app)
from pipelines.cli._app import app
from pipelines.cli._errors import USER_ERRORS, report, report_usage
from pipelines.cli._options import OFFLINE_ENV

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code. User errors print one line with the fix, never a traceback."""
    command = typer.main.get_command(app)
    _flags_read_as_flags(command)
    saved = {name: os.environ.get(name) for name in (OFFLINE_ENV, "HF_HUB_OFFLINE")}  # --offline sets them
    try:
        # standalone_mode=False: click returns a verb's typer.Exit code instead of raising it
        code = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="crossmodal",
                            standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except USER_ERRORS as exc:
        return report(exc)
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except ClickException as exc:
        return report_usage(exc)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc}: no such file or directory", file=sys.stderr)
        return 2
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def _flags_read_as_flags(command) -> None:
    """Blank the metavar of every flag (``--help``, ``--json``, ``--prior-transfer/--no-prior-transfer``): typer 0.29's
    help shows ``--json <bool>``, as if the flag took a value."""
    for cmd in [command, *getattr(command, "commands", {}).values()]:
        help_option = cmd.get_help_option(SimpleNamespace(help_option_names=["--help"]))
        for param in [*cmd.params, *([help_option] if help_option is not None else [])]:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""


def run() -> None:
    sys.exit(main())


__all__ = ["app", "main", "run"]
