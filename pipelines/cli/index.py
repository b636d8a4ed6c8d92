"""``crossmodal index``: embed each modality's gallery with a trained model, save a search index (pipelines.index)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, ModelNameOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal index                                  # model 'default', exact search over every stored item",
    "crossmodal index --backend auto --memory-budget 2GB  # exact, in-memory FAISS, or IVF on disk above 2 GB",
    "crossmodal index --model photos --backend faiss:HNSW32",
    "crossmodal index --backend faiss:IVF1024,PQ64 --gallery test --json",
    "crossmodal index --backend auto --ray auto         # on a Ray cluster: IVF parts built by workers, merged",
)


@app.command("index", help="Embed the gallery of every modality with a trained model and index it for search."
             + EXAMPLES)
def index(
    model: ModelNameOpt = "default",
    backend: Annotated[str, typer.Option(
        help="exact, faiss:<index_factory string>, ivf-ondisk:<IVF factory string> (lists on disk) or auto (by the"
             " gallery's size and --memory-budget).")] = "exact",
    gallery: Annotated[str, typer.Option(help="all (every stored item) or test (the test split).")] = "all",
    memory_budget: Annotated[str | None, typer.Option(
        help="memory the float32 embeddings may take (e.g. 2GB, 512MiB); --backend auto builds an IVF index on"
             " disk above it. Default: half the memory available.")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    device: DeviceOpt = "auto",
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Build on Ray ('auto' or a cluster address): an IVF (--backend auto or ivf-ondisk:...) filled "
                      "in parts by the workers and merged by list.")] = None,
    as_json: JsonOpt = False,
) -> None:
    from crossmodal.index import parse_bytes
    from pipelines.index import build_index

    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    if ray:
        from crossmodal.errors import ConfigError
        from pipelines.distributed import run_index_ray

        if budget is not None:
            raise ConfigError("--memory-budget chooses a local build's index; a build on Ray is always an IVF on disk",
                              hint="drop --memory-budget, or drop --ray")
        result = run_index_ray(workspace, model=model, backend=backend, gallery=gallery, address=ray, device=device)
    else:
        result = build_index(workspace, model=model, backend=backend, gallery=gallery,  # type: ignore[arg-type]
                             device=device, memory_budget=budget)
    out = Output(as_json)
    if as_json:
        return out.json(result)
    rows = [[r["modality"], r["against"] or "", r["items"], r["dim"], r["backend"], r["why"], r["path"]]
            for r in result["indexes"]]
    out.table(rows, ["gallery", "for queries of", "items", "dim", "index", "why", "path"],
              title=f"index of model {model} (--backend {result['backend']}, {result['gallery']} items)")
    for r in result["indexes"]:
        out.line(f"{r['modality']}" + (f" (for {r['against']} queries)" if r["against"] else "") + f": {r['summary']}")
