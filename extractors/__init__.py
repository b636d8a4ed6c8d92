# ruff: noqa: I001  (one registration line appended per extractor)
"""Extractors: raw media -> float32 features, one module per modality, and the feature store.

Adding an extractor is one file (its class under ``@register_extractor``) plus one ``register_lazy`` line below; the
module is imported the first time the extractor is asked for, so importing this package costs no torch.
"""

from __future__ import annotations

from typing import Any

from extractors.errors import ExtractorError, MediaError, MissingDependencyError, MissingWeightsError
from extractors.registry import create_extractor, default_extractor, list_extractors, register_extractor, register_lazy

__all__ = ["Extractor", "ExtractorConfig", "ExtractorError", "MediaError", "MissingDependencyError",
           "MissingWeightsError", "create_extractor", "default_extractor", "list_extractors", "register_extractor"]

register_lazy("vgg19-fc7", "extractors.image", modality="image", default=True)
register_lazy("hog-color", "extractors.image", modality="image")
register_lazy("doc2vec", "extractors.text", modality="text", default=True)
register_lazy("minilm", "extractors.text", modality="text")
register_lazy("mfcc", "extractors.audio", modality="audio", default=True)
register_lazy("lightfield", "extractors.mesh", modality="mesh", default=True)
register_lazy("c3d-fc6", "extractors.video", modality="video", default=True)
register_lazy("frame-stats", "extractors.video", modality="video")


def __getattr__(name: str) -> Any:
    # The base classes live with numpy (extractors.base); re-exported on first access so that a bare import stays light.
    if name in ("Extractor", "ExtractorConfig"):
        from extractors import base

        return getattr(base, name)
    raise AttributeError(f"module 'extractors' has no attribute {name!r}")
