"""Typed errors of the core. Each names the thing, the expectation and the fix (``hint``).

The CLI formats every ``CrossmodalError`` as one line plus its hint (pipelines/cli/_errors.py); nothing a user can cause
should reach them as a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CrossmodalError(Exception):
    """Base of every error a user can cause. ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(CrossmodalError):
    """A configuration value or override is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists the closest valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid names: {', '.join(valid)}"
        super().__init__(f"unknown {kind} {name!r}", hint=hint)

    __str__ = CrossmodalError.__str__


class DatasetFormatError(CrossmodalError):
    """A benchmark or feature file is missing a key, has a wrong shape, or its counts disagree."""


class FeatureMismatchError(CrossmodalError):
    """Features do not match what a model was trained on (width or extractor key)."""


class ModelFileError(CrossmodalError):
    """A saved model or index is missing, incomplete or tampered with."""


class NotTrainedError(CrossmodalError):
    """An operation needs a trained model or an index that does not exist yet."""
