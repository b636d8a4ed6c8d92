"""Errors of the extractors. Each names the file, the problem and the fix (base: crossmodal.common.errors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crossmodal.common.errors import CrossmodalError, UnknownNameError


class ExtractorError(CrossmodalError):
    """Base of the extractors' errors; ``hint`` says how to fix it (pickles whole, as every error of the kernel)."""


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


class UnknownExtractorError(ExtractorError, UnknownNameError):
    """No extractor of that name: ``UnknownExtractorError("extractor", name, valid)``, the closest names in the hint."""


class StoreError(ExtractorError):
    """The feature store is inconsistent or a write would corrupt it (wrong width, non-finite values...)."""


class StoreFullError(StoreError):
    """The disk of the workspace is full (ENOSPC/EDQUOT): nothing of the shard being written was kept."""
