"""``crossmodal extractors``: the registered extractors, their widths and defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import JsonOpt
from pipelines.cli._output import Output


@app.command("extractors", help="List the feature extractors." + examples("crossmodal extractors --modality image"))
def extractors(
    modality: Annotated[str | None, typer.Option("--modality", "-m", help="Only this modality.")] = None,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.extract import describe_extractors

    rows = describe_extractors(modality)
    columns = ["name", "modality", "default", "dim", "extensions", "status", "summary"]
    out = Output(as_json)
    out.json(rows) if as_json else out.table([[r[c] for c in columns] for r in rows], columns, title="extractors")
