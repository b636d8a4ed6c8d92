"""crossmodal: cross-modal retrieval core (feature sets, methods, metrics, models). Arrays in, arrays out."""

from __future__ import annotations

__version__ = "0.1.0"
