"""One door to build extractors: ``create_extractor(name, **overrides)``; ``list_extractors(modality=...)``."""

from __future__ import annotations

import dataclasses
from typing import Any

from extractors.base import MODALITIES, Extractor
from extractors.errors import ExtractorError, UnknownExtractorError

_EXTRACTORS: dict[str, type[Extractor]] = {}


def register_extractor(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator; duplicate names and a second default per modality raise."""
    if cls.name in _EXTRACTORS:
        raise ValueError(f"extractor {cls.name!r} is registered twice")
    if cls.modality not in MODALITIES:
        raise ValueError(f"extractor {cls.name!r} has unknown modality {cls.modality!r}")
    if cls.is_default and any(c.is_default and c.modality == cls.modality for c in _EXTRACTORS.values()):
        raise ValueError(f"modality {cls.modality!r} has two default extractors")
    _EXTRACTORS[cls.name] = cls
    return cls


def get_extractor_class(name: str) -> type[Extractor]:
    try:
        return _EXTRACTORS[name]
    except KeyError:
        raise UnknownExtractorError(name, list(_EXTRACTORS)) from None


def create_extractor(name: str, *, device: str = "cpu", **overrides: Any) -> Extractor:
    """Build the extractor ``name`` with its config's defaults, replaced by ``overrides`` (unknown fields raise)."""
    cls = get_extractor_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        options = ", ".join(sorted(fields))
        raise ExtractorError(f"{name} has no option(s) {', '.join(unknown)}", hint=f"options: {options}")
    return cls(cls.Config(**overrides), device=device)


def list_extractors(modality: str | None = None) -> list[str]:
    return sorted(n for n, c in _EXTRACTORS.items() if modality is None or c.modality == modality)


def default_extractor(modality: str) -> str:
    for name, cls in _EXTRACTORS.items():
        if cls.modality == modality and cls.is_default:
            return name
    raise ExtractorError(
        f"no default extractor for modality {modality!r}", hint=f"choose one of {list_extractors(modality)}"
    )
