"""``crossmodal demo``: generate the digits in five modalities, extract, train DRCL, index, query (pipelines.demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, OfflineOpt, SeedOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples("crossmodal demo", "crossmodal demo --size medium --workspace /tmp/digits --seed 3")


@app.command("demo", help="Offline end-to-end run on generated digits (images, speech, text, meshes, videos): "
             "extract, train DRCL, index, query, and the per-pair MAP table. A few minutes on 2 CPU cores." + EXAMPLES)
def demo(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    size: Annotated[str, typer.Option(help="small (10 files per digit and modality) or medium (30).")] = "small",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.demo.runner import run_demo
    from pipelines.evaluate import table_rows

    out = Output(as_json)
    result = run_demo(workspace, size=size, seed=seed, device=device, progress=not as_json, say=out.info)
    if as_json:
        return out.json(result)
    for q in result["queries"]:
        asked = Path(q["query"]["file"]).name if q["query"]["file"] else repr(q["query"]["text"])
        out.table([[r["rank"], r["score"], r["label"], r["item_id"], Path(r["source_path"]).name]
                   for r in q["results"][:3]], ["rank", "score", "class", "item", "file"],
                  title=f"{q['query']['modality']} {asked} -> {q['target']} (expected {q['expected']})")
    out.table(*table_rows(result["training"]["metrics"]), title="test split, DRCL on the digits")
    out.line(f"done in {result['seconds']:.0f} s; try: crossmodal query FILE --target image --workspace {workspace} "
             "--model demo")
