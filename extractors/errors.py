"""Errors of the extractors. Each names the file, the problem and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ExtractorError(Exception):
    """Base of the extractors' errors; ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"

    def __reduce__(self):
        # Subclasses take other arguments than (message, hint); rebuild from the state so that an error raised in a
        # decoding process reaches the parent whole.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[ExtractorError], args: tuple, state: dict) -> ExtractorError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class MediaError(ExtractorError):
    """One raw file cannot be decoded: ``MediaError(path, "not a decodable image (PIL: ...)")``."""

    def __init__(self, path: str | Path, reason: str, *, hint: str | None = None):
        super().__init__(f"{path}: {reason}", hint=hint)
        self.path = str(path)
        self.reason = reason


class MissingWeightsError(ExtractorError):
    """Pre-trained weights cannot be found; the message lists every place looked and how to supply them."""

    def __init__(self, extractor: str, filename: str, looked: Sequence[str], how: str):
        places = "; ".join(looked) if looked else "nowhere"
        super().__init__(f"{extractor}: pre-trained weights {filename} not found (looked in: {places})", hint=how)
        self.looked = list(looked)


class MissingDependencyError(ExtractorError):
    """An optional library an extractor needs is not installed."""

    def __init__(self, extractor: str, module: str, extra: str):
        super().__init__(
            f"{extractor} needs the Python package {module!r}, which is not installed",
            hint=f"pip install 'crossmodal-toolkit[{extra}]'",
        )


class UnknownExtractorError(ExtractorError, KeyError):
    def __init__(self, name: str, valid: Sequence[str]):
        import difflib

        close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid names: {', '.join(sorted(valid))}"
        super().__init__(f"unknown extractor {name!r}", hint=hint)

    __str__ = ExtractorError.__str__


class StoreError(ExtractorError):
    """The feature store is inconsistent or a write would corrupt it (wrong width, non-finite values...)."""


class StoreFullError(StoreError):
    """The disk of the workspace is full (ENOSPC/EDQUOT): nothing of the shard being written was kept."""
