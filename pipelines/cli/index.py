"""``crossmodal index``: embed each modality's gallery with a trained model, save a search index (pipelines.index)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, ModelNameOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal index                                  # model 'default', exact search over every stored item",
    "crossmodal index --model photos --backend faiss:HNSW32",
    "crossmodal index --backend faiss:IVF1024,PQ64 --gallery test --json",
)


@app.command("index", help="Embed the gallery of every modality with a trained model and index it for search."
             + EXAMPLES)
def index(
    model: ModelNameOpt = "default",
    backend: Annotated[str, typer.Option(help="exact, faiss:<index_factory string> or auto.")] = "exact",
    gallery: Annotated[str, typer.Option(help="all (every stored item) or test (the test split).")] = "all",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    from pipelines.index import build_index

    result = build_index(workspace, model=model, backend=backend, gallery=gallery, device=device)  # type: ignore[arg-type]
    out = Output(as_json)
    if as_json:
        return out.json(result)
    rows = [[r["modality"], r["against"] or "", r["items"], r["dim"], r["backend"], r["why"], r["path"]]
            for r in result["indexes"]]
    out.table(rows, ["gallery", "for queries of", "items", "dim", "index", "why", "path"],
              title=f"index of model {model} (--backend {result['backend']}, {result['gallery']} items)")
