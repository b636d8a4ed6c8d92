"""``crossmodal benchmark``: every method at every noise rate on one dataset; a Markdown table, a plot and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli._app import app, examples
from pipelines.cli._options import DeviceOpt, JsonOpt
from pipelines.cli._output import Output

EXAMPLES = examples(
    "crossmodal benchmark --methods drcl,sdml,dscmr,mcca --dataset synthetic --noise 0,0.4,0.8 --seeds 2 --epochs 20",
    "crossmodal benchmark --methods drcl,rcar,sccmr --dataset wiki-sift-lda --data wikipedia-sift-lda/"
    " --noise 0,0.2,0.4 --noise-kind alignment-complete --set hidden=[512] --out bench/wiki",
    "crossmodal benchmark --methods drcl,sdml,mars --dataset xmedia --data XMediaFeatures.mat --prior-transfer",
    "crossmodal benchmark --dataset synthetic --noise 0,0.4 --tune 20 --seeds 3   # every method: 20 Optuna trials",
)
Opt = typer.Option


@app.command("benchmark", help="Train every method at every noise rate on the same data and splits; write a "
                               "Markdown table (MAP@all, mean ± std over seeds), a plot and JSON." + EXAMPLES)
def benchmark(
    methods: Annotated[str, Opt(help="Comma-separated method names.")] = "drcl,sdml,mars,dscmr,mcca,sccmr,hcmsl,rcar",
    dataset: Annotated[str, Opt(help="synthetic, synthetic-xmedia, or a benchmark format read from --data.")] =
    "synthetic",
    data: Annotated[Path | None, Opt(help="The benchmark feature file.")] = None,
    noise: Annotated[str, Opt(help="Comma-separated noise rates.")] = "0,0.2,0.4,0.6,0.8",
    noise_kind: Annotated[str, Opt(help="label, label-asymmetric, alignment-partial or alignment-complete.")] = "label",
    seeds: Annotated[int, Opt(help="Number of seeds (0..N-1).")] = 3,
    epochs: Annotated[int | None, Opt(help="Epochs of every method (default: each method's own).")] = None,
    overrides: Annotated[list[str] | None, Opt("--set", help="method.key=value, or key=value for all (repeatable).")]
    = None,
    prior_transfer: Annotated[bool, Opt(help="Also train SDML and MARS with DRCL's learned prior (Table VI).")] = False,
    tune: Annotated[int, Opt(help="Give every method N Optuna trials on the validation split at each noise rate, "
                                  "from its auto recipe, then train its best config with every seed (0: presets).")
                    ] = 0,
    tune_timeout: Annotated[float | None, Opt(help="Seconds after which a method's tuning starts no more trials.")]
    = None,
    out: Annotated[Path, Opt(help="Folder for benchmark.md, benchmark.json and benchmark.png.")] = Path("benchmark"),
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    from pipelines.benchmark import parse_rates, run_benchmark

    output = Output(as_json)
    result = run_benchmark(dataset, data, methods=[m.strip() for m in methods.split(",") if m.strip()],
                           noise=parse_rates(noise), noise_kind=noise_kind, seeds=seeds,
                           epochs=epochs, overrides=overrides or [], device=device, prior_transfer=prior_transfer,
                           out=out, progress=output.info, tune=tune, tune_timeout_s=tune_timeout)
    if as_json:
        return output.json(result.to_dict())
    output.line(result.markdown())
    output.line(f"written to {out}/benchmark.md, benchmark.json, benchmark.png")
