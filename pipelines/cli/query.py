"""``crossmodal query``: one file or a typed text -> ranked items of another modality (pipelines.query)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, ModelNameOpt, OfflineOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal query seven.wav --target image",
    'crossmodal query --text "the number after six" --target audio --k 5',
    "crossmodal query photo.jpg --target text --model photos --json",
)


@app.command("query", help="Search one modality's index with a file (modality from its extension) or a typed text."
             + EXAMPLES)
def query(
    file: Annotated[Path | None, typer.Argument(help="The query file (image, text, audio, mesh or video).")] = None,
    target: Annotated[str, typer.Option("--target", help="Modality to search (image, text, audio, 3d, video).")] = ...,
    text: Annotated[str | None, typer.Option("--text", help="A typed text query instead of a file.")] = None,
    modality: Annotated[str | None, typer.Option(help="The query's modality, if its extension is ambiguous.")] = None,
    model: ModelNameOpt = "default",
    k: Annotated[int, typer.Option("--k", "-k", help="Number of results.")] = 10,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.query import query as run_query

    result = run_query(workspace, model=model, file=file, text=text, target=target, k=k, device=device,
                       modality=modality)
    out = Output(as_json)
    if as_json:
        return out.json(result)
    rows = [[r["rank"], r["score"], r["item_id"], r["label"], r["source_path"]] for r in result["results"]]
    asked = result["query"]["file"] or repr(result["query"]["text"])
    out.table(rows, ["rank", "score", "item", "label", "source"],
              title=f"{result['query']['modality']} {asked} -> {result['target']}")
