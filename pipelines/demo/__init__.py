"""The digits demo: a labelled dataset in all five modalities generated offline, and the one-command run on it."""

from __future__ import annotations

from pipelines.demo.generate import generate_digits

__all__ = ["generate_digits"]
