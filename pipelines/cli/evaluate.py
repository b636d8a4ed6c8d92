"""``crossmodal evaluate``: MAP@all and MAP@k of every ordered pair, and PR curves (pipelines.evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal evaluate --model photos --workspace ws      # models/photos of a workspace",
    "crossmodal evaluate models/wiki --k 100 --json         # a model folder (crossmodal train --out)",
    "crossmodal evaluate models/wiki --data /elsewhere/wiki.mat     # the benchmark file moved",
    "crossmodal evaluate models/synthetic    # the card's source regenerates a synthetic set's test split",
)


@app.command("evaluate", help="Evaluate a trained model on its test split, reloaded from the data source its card "
                              "records (the papers' table), and save PR curves." + EXAMPLES)
def evaluate(
    model_dir: Annotated[Path | None, typer.Argument(help="A model folder (default: --model in --workspace).")] = None,
    model: Annotated[str | None, typer.Option("--model", "--name", help="Model name in the workspace (models/NAME; "
                                                                       "default: default).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    k: Annotated[int, typer.Option("--k", help="Cut-off of the MAP@k column.")] = 50,
    data: Annotated[Path | None, typer.Option(help="The benchmark file, if it moved since training.")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    from pipelines.evaluate import evaluate_model_dir, resolve_model_dir, table_rows

    folder = resolve_model_dir(model_dir, model=model, workspace=workspace)
    result = evaluate_model_dir(folder, k=k, data=data, device=device)
    output = Output(as_json)
    if as_json:
        return output.json(result)
    output.table(*table_rows(result), title=f"{folder} (test split)")
    output.line(f"precision-recall curves: {result['pr_png']}")
