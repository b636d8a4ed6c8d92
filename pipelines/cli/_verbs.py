# ruff: noqa: I001  (one line appended per verb, in the order they were added)
"""Imports every verb module so each registers itself on the app. A new verb is one file plus one line here."""

from __future__ import annotations

from pipelines.cli import version  # noqa: F401
from pipelines.cli import serve  # noqa: F401
from pipelines.cli import extract  # noqa: F401
from pipelines.cli import extractors  # noqa: F401
from pipelines.cli import train  # noqa: F401
from pipelines.cli import evaluate  # noqa: F401
from pipelines.cli import benchmark  # noqa: F401
from pipelines.cli import index  # noqa: F401
from pipelines.cli import query  # noqa: F401
from pipelines.cli import demo  # noqa: F401
from pipelines.cli import store  # noqa: F401
