"""``crossmodal train``: on a benchmark file or synthetic set (``--dataset``) or on the workspace's features; the
options name one data source (pipelines.datasource), which pipelines.train trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DEFAULT_WORKSPACE, DeviceOpt, JsonOpt, WorkspaceOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal train --dataset wiki --data wiki.mat --out models/wiki          # DRCL, the paper's Wikipedia values",
    "crossmodal train --dataset xmedia --data XMediaFeatures.mat --out models/xm --epochs 50 --set batch_size=256",
    "crossmodal train --dataset wiki --data wiki.mat --out m/noisy --label-noise 0.4 --alignment-noise partial:0.2",
    "crossmodal train --dataset synthetic --out models/synthetic --epochs 20    # generated data, no file",
    "crossmodal train --modalities image,text --name photos      # workspace mode: the store's features",
    "crossmodal train --name photos --add-modality audio         # train one more modality against the saved prior",
    "crossmodal train --name photos --extractor text=minilm      # the store holds several text tables",
)
Opt = typer.Option


@app.command("train", help="Train a cross-modal model (DRCL by default) and evaluate it on the test split." + EXAMPLES)
def train(
    dataset: Annotated[str | None, Opt(help="A benchmark format read from --data (wiki, xmedia, ...), or synthetic, "
                                            "synthetic-xmedia.")] = None,
    data: Annotated[Path | None, Opt(help="The benchmark feature file (with --dataset).")] = None,
    out: Annotated[Path | None, Opt(help="Model folder to write (with --dataset); re-run to resume.")] = None,
    epochs: Annotated[int | None, Opt(help="Epochs of each stage (default: the preset's).")] = None,
    seed: Annotated[int | None, Opt(help="Random seed (default: the config's).")] = None,
    device: DeviceOpt = "auto",
    method: Annotated[str, Opt(help="Method (registry name).")] = "drcl",
    overrides: Annotated[list[str] | None, Opt("--set", help="Config override key=value (repeatable).")] = None,
    preset: Annotated[str | None, Opt(help="Preset name or JSON file; 'paper': the dataset's paper preset; 'auto': "
                                           "the recipe fitted to the data (DRCL's default when the data is far from "
                                           "the paper's).")] = None,
    label_noise: Annotated[float, Opt(help="Rate of symmetric label noise in the training split.")] = 0.0,
    alignment_noise: Annotated[str | None, Opt(help="partial:R or complete:R pair noise (paired data).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    modalities: Annotated[str | None, Opt(help="Workspace mode: modalities to train, e.g. image,text.")] = None,
    name: Annotated[str | None, Opt(help="Workspace mode: model name (models/NAME).")] = None,
    add_modality: Annotated[str | None, Opt(help="Workspace mode: train this modality into model NAME.")] = None,
    extractor: Annotated[list[str] | None, Opt(help="Workspace mode: MODALITY=NAME, the store table to use where a "
                                                    "modality has several (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    from pipelines.datasource import data_source
    from pipelines.evaluate import table_rows
    from pipelines.train import TrainOptions, features_rows, run_train

    source = data_source(dataset, data, workspace=workspace, split_seed=1 if seed is None else seed)
    options = TrainOptions(method=method, epochs=epochs, seed=seed, device=device, overrides=tuple(overrides or ()),
                           label_noise=label_noise, alignment_noise=alignment_noise)
    result = run_train(source, options, out=out, preset=preset, modalities=modalities, name=name,
                       add_modality=add_modality, extractors=extractor or [])
    output = Output(as_json)
    for text in [*(f"note: {n}" for n in result.notes), *(f"warning: {w}" for w in result.warnings)]:
        output.info(text)
    if as_json:
        return output.json(result.to_dict())
    output.table(*features_rows(result.features_used), title="features used")
    if result.metrics:
        output.table(*table_rows(result.metrics), title=f"{result.model_dir} (test split)")
    output.line(f"model saved to {result.model_dir}")
