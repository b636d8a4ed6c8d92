"""Extractors: raw media -> float32 features, one module per modality, and the feature store."""

from __future__ import annotations

from extractors.base import Extractor, ExtractorConfig
from extractors.errors import ExtractorError, MediaError, MissingDependencyError, MissingWeightsError
from extractors.registry import create_extractor, default_extractor, list_extractors, register_extractor

__all__ = ["Extractor", "ExtractorConfig", "ExtractorError", "MediaError", "MissingDependencyError",
           "MissingWeightsError", "create_extractor", "default_extractor", "list_extractors", "register_extractor"]

from extractors import audio, image, mesh, text, video  # noqa: E402, F401  (each module registers its extractors)
