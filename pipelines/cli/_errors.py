"""The one place that turns errors a user can cause into one line plus a hint and an exit code."""

from __future__ import annotations

import sys

from crossmodal.common.errors import CrossmodalError

# The one base of the core's and the extractors' errors (crossmodal/common/errors.py).
USER_ERRORS = (CrossmodalError,)


def format_error(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    return f"error: {message}" + (f"\n  fix: {hint}" if hint else "")


def report(exc: BaseException) -> int:
    print(format_error(exc), file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))


def report_usage(exc: BaseException) -> int:
    """A usage error (unknown verb or option, bad or missing value) as one line plus the help command that fixes it."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "crossmodal"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    print(f"error: {message}\n  fix: see {command} --help", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))
