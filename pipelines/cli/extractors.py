"""``crossmodal extractors``: the registered extractors, their widths, and whether each can run here."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import JsonOpt, OfflineOpt
from pipelines.cli._output import Output


@app.command("extractors", help="List the feature extractors: width, whether each is ready here (its weights found, "
             "or none needed) and what is missing." + examples("crossmodal extractors --modality image"))
def extractors(
    modality: Annotated[str | None, typer.Option("--modality", "-m", help="Only this modality.")] = None,
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.extract import describe_extractors

    rows = describe_extractors(modality)
    if as_json:
        return Output(as_json).json(rows)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # The console's own width (COLUMNS or the terminal): the last column wraps instead of running off the screen.
    table = Table(title="extractors", caption="* the modality's default", show_lines=True)
    for column, options in (("name", {"no_wrap": True}), ("modality", {}), ("dim", {"justify": "right"}),
                            ("ready", {}), ("what it is; its weights", {"ratio": 1, "overflow": "fold"})):
        table.add_column(column, **options)
    for r in rows:
        name = r["name"] + (" *" if r["default"] else "")
        ready = "yes" if r["ready"] else "no"
        table.add_row(escape(name), r["modality"], "" if r["dim"] is None else str(r["dim"]), ready,
                      f"{escape(r['summary'])}\n[dim]{escape(r['status'])}[/dim]")
    Console().print(table)
