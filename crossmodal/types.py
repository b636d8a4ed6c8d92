"""Modality names: the kernel's (crossmodal/common/modality.py), under the name the core has always imported."""

from __future__ import annotations

from crossmodal.common.modality import MODALITIES, MODALITY_ALIASES, Modality, canonical_modality

__all__ = ["MODALITIES", "MODALITY_ALIASES", "Modality", "canonical_modality"]
