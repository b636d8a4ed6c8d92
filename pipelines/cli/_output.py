"""Output of every verb: a readable table for people, JSON for machines (``--json``)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any


class Output:
    def __init__(self, as_json: bool = False):
        self.as_json = as_json

    def json(self, payload: Any) -> None:
        print(json.dumps(clean_json(payload), indent=2, sort_keys=False, default=str))

    def line(self, text: str) -> None:
        if not self.as_json:
            print(text)

    def info(self, text: str) -> None:
        """Progress and notes: to stderr, so ``--json`` output on stdout stays parseable."""
        print(text, file=sys.stderr)

    def table(self, rows: Sequence[Sequence[Any]], columns: Sequence[str], *, title: str | None = None) -> None:
        if self.as_json:
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # escape: a file name or summary with [brackets] is text, not rich markup
        table = Table(title=escape(title) if title else None)
        for c in columns:
            table.add_column(escape(str(c)))
        for r in rows:
            table.add_row(*[escape(_fmt(v)) for v in r])
        # A terminal's own width (cells wrap inside the table); 200 columns into a pipe or a file, one line per row.
        Console(width=None if sys.stdout.isatty() else 200).print(table)


def _fmt(v: Any) -> str:
    """Numbers rounded for people: scores and MAP to 3 decimals (as the papers' tables), rates to 1, large numbers
    whole with thousands separators; JSON keeps every digit."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return "" if v is None else str(v)


def clean_json(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return clean_json(obj.item())
    return obj
