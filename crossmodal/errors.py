"""Typed errors of the core. Each names the thing, the expectation and the fix (``hint``).

The base, ``ConfigError`` and ``UnknownNameError`` live in the shared kernel (crossmodal/common/errors.py), which the
extractors' errors derive from too. The CLI formats every ``CrossmodalError`` as one line plus its hint
(pipelines/cli/_errors.py); nothing a user can cause should reach them as a traceback.
"""

from __future__ import annotations

from crossmodal.common.errors import ConfigError, CrossmodalError, UnknownNameError

__all__ = ["ConfigError", "CrossmodalError", "DatasetFormatError", "FeatureMismatchError", "ModelFileError",
           "NotTrainedError", "UnknownNameError"]


class DatasetFormatError(CrossmodalError):
    """A benchmark or feature file is missing a key, has a wrong shape, or its counts disagree."""


class FeatureMismatchError(CrossmodalError):
    """Features do not match what a model was trained on (width or extractor key)."""


class ModelFileError(CrossmodalError):
    """A saved model or index is missing, incomplete or tampered with."""


class NotTrainedError(CrossmodalError):
    """An operation needs a trained model or an index that does not exist yet."""
