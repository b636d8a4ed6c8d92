"""Imports every verb module so each registers itself on the app. A new verb is one file plus one line here."""

from __future__ import annotations

from pipelines.cli import version  # noqa: F401
