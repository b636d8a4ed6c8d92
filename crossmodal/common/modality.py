"""The modality names, defined once for the whole toolkit (the extractors, the core and the pipelines read them)."""

from __future__ import annotations

from typing import Literal

from crossmodal.common.errors import ConfigError

Modality = Literal["image", "text", "audio", "mesh", "video"]

MODALITIES: tuple[str, ...] = ("image", "text", "audio", "mesh", "video")

# "3d" is what users (and the XMedia papers) call the mesh modality; not being an identifier, it is only an alias.
MODALITY_ALIASES: dict[str, str] = {"3d": "mesh", "3D": "mesh", "d3": "mesh"}


def canonical_modality(name: str) -> str:
    """Return the canonical modality name for ``name`` (accepting the ``3d`` alias).

    Raises:
        ConfigError: ``name`` is not a modality.
    """
    name = MODALITY_ALIASES.get(name, name)
    if name not in MODALITIES:
        raise ConfigError(f"unknown modality {name!r}", hint=f"choose one of {', '.join(MODALITIES)} (or 3d for mesh)")
    return name
