"""The one place that turns errors a user can cause into one line plus a hint and an exit code."""

from __future__ import annotations

import sys

from crossmodal.errors import CrossmodalError
from extractors.errors import ExtractorError

USER_ERRORS = (CrossmodalError, ExtractorError)


def format_error(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    return f"error: {message}" + (f"\n  fix: {hint}" if hint else "")


def report(exc: BaseException) -> int:
    print(format_error(exc), file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))
