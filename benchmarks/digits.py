"""The digits benchmark from raw media: DRCL against every baseline on five modalities of the ten digits.

Images, texts, meshes and videos of the digits come from the demo's generator (pipelines/demo); the audio is real
speech, the Free Spoken Digit Dataset recordings in ../shared/data/fsdd (four speakers), copied instead of synthesised.
Every modality is extracted from the raw files with the demo's extractors (weight-free or packaged: hog-color, minilm,
mfcc, the Light Field Descriptor at 64 px, frame-stats, or VGG-19 / C3D when their weights are present), split once by
the workspace (seed 1: 70/10/20 per class, pairs by file name kept together), and every method registered in
``crossmodal.methods`` is trained on the same splits with 3 seeds by ``benchmarks/methods.py`` (layer widths scaled to a
CPU, ``CPU_SCALE``), all for 50 epochs with Adam at a learning rate of 1e-3 (``SMALL_DATA``). The papers' rates (1e-4 to
2e-4 for most baselines, DRCL's per-modality ones) go with datasets whose epochs hold 10-100 times more batches; at the
papers' rates and 25 epochs every baseline but SDML stayed below 0.3 MAP here, i.e. untrained. DRCL trains on batches
of 100, like the baselines, as its 1024 would be a single batch per epoch.

Writes into ``benchmarks/results/digits/``: ``pairs.md`` and ``pairs.png`` (MAP@all of every ordered modality pair and
method, mean ± std over the seeds) and ``benchmark.md``/``.json``/``.png`` (benchmarks/methods.py's report).

Usage (run by hand; about 15 minutes on two shared CPU cores at the default size):

    python benchmarks/digits.py                        # 30 files per digit and modality, 3 seeds, every method
    python benchmarks/digits.py --per-class 10 --seeds 1 --epochs 5 --methods drcl,mcca
    python -m pytest benchmarks/digits.py -m benchmark
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from crossmodal.methods import list_methods
from crossmodal.metrics import metric_name
from crossmodal.types import MODALITIES
from pipelines.benchmark import BenchmarkResult, parse_rates
from pipelines.workspace import Workspace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from methods import CPU_SCALE, benchmark_methods  # noqa: E402  (a sibling script, not a package)

FSDD = HERE.parents[1] / "shared" / "data" / "fsdd" / "recordings"
SPLIT_SEED = 1
EPOCHS = 50
LEARNING_RATE = 1e-3


def small_data_settings(methods: Sequence[str]) -> list[str]:
    """``method.key=value`` overrides giving every method Adam at LEARNING_RATE, and DRCL batches of 100."""
    import dataclasses

    from crossmodal.methods import get_method

    rates = ("lr", "lr_others", "lr_image", "lr_text", "lr_audio", "lr_mesh", "lr_video", "lr_other")
    out = [f"{m}.{f.name}={LEARNING_RATE}" for m in methods for f in dataclasses.fields(get_method(m).Config)
           if f.name in rates]
    return out + (["drcl.batch_size=100"] if "drcl" in methods else [])


def build_digits(workspace: Path, *, per_class: int, seed: int = 0, recordings: Path = FSDD) -> Workspace:
    """Generate the digits (audio from ``recordings``) under ``workspace/data`` and extract every modality."""
    from pipelines.demo import generate_digits
    from pipelines.demo.runner import choose_extractors
    from pipelines.extract import ExtractOptions, run_extract

    ws = Workspace(workspace)
    data = ws.root / "data"
    generate_digits(data, per_class=per_class, seed=seed, audio_source=recordings)
    for choice in choose_extractors("cpu"):
        summary = run_extract(ws.root, choice.modality, [data / choice.modality], ExtractOptions(
            extractor=choice.name, overrides=choice.overrides, device="cpu", progress=False))
        print(f"{choice.modality}: {choice.name} ({summary.dim}-d, {summary.extracted + summary.skipped} items, "
              f"{summary.seconds:.0f} s): {choice.reason}", file=sys.stderr, flush=True)
    return ws


def pairs_summary(result: BenchmarkResult, metric: str = "MAP@all") -> dict[str, dict[str, tuple[float, float]]]:
    """method -> "query -> target" (and "average") -> (mean, std over the seeds) of ``metric`` at noise 0."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for method in result.methods:
        runs = [r for r in result.runs if r["method"] == method and r["noise"] == 0]
        if not runs:
            continue
        values: dict[str, list[float]] = {}
        for run in runs:
            for pair in run["pairs"]:
                values.setdefault(f"{pair['query']} -> {pair['target']}", []).append(pair[metric])
            values.setdefault("average", []).append(run[metric])
        out[method] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}
    return out


def pairs_markdown(summary: dict[str, dict[str, tuple[float, float]]], *, title: str) -> str:
    """One row per ordered pair and the average, one column per method: ``mean ± std``; the best mean in bold."""
    methods = list(summary)
    rows = list(next(iter(summary.values())))
    lines = [title, "", "| query -> target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for row in rows:
        best = max(summary[m][row][0] for m in methods)
        cells = [(f"**{summary[m][row][0]:.3f}**" if summary[m][row][0] == best else f"{summary[m][row][0]:.3f}")
                 + f" ± {summary[m][row][1]:.3f}" for m in methods]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pairs(summary: dict[str, dict[str, tuple[float, float]]], path: Path, *, title: str) -> Path:
    """A heat map: methods (rows) by ordered pairs and the average (columns), each cell the mean MAP@all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, columns = list(summary), list(next(iter(summary.values())))
    grid = np.array([[summary[m][c][0] for c in columns] for m in methods])
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(columns), 1.2 + 0.45 * len(methods)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [c.replace(" -> ", "→") for c in columns], rotation=60, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=9)
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6.5, color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01, label="MAP@all")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def run(workspace: Path, out: Path, *, per_class: int, seeds: int, epochs: int, methods: Sequence[str],
        overrides: Sequence[str] = (), recordings: Path = FSDD, noise: Sequence[float] = (0.0,),
        noise_kind: str = "label") -> dict[str, dict[str, tuple[float, float]]]:
    """Build the digits, benchmark ``methods`` on them and write the reports into ``out``; the per-pair summary
    at noise 0 (``benchmark.md`` in ``out`` has every rate)."""
    import torch

    torch.set_num_threads(1)  # CPU_SCALE networks on batches of ~100 run faster on one thread than split over two
    ws = build_digits(workspace, per_class=per_class, recordings=recordings)
    ds = ws.datasets(list(MODALITIES), seed=SPLIT_SEED)
    counts = ", ".join(f"{m} {len(ds.train[m])}/{len(ds.val[m])}/{len(ds.test[m])}" for m in MODALITIES)
    print(f"train/val/test items: {counts}", file=sys.stderr, flush=True)
    result = benchmark_methods(ds, out, methods=methods, noise=noise, noise_kind=noise_kind, seeds=seeds, epochs=epochs,
                               overrides=[*CPU_SCALE, *small_data_settings(methods), *overrides])
    summary = pairs_summary(result)
    title = (f"{metric_name(None)} on the digits ({per_class} files per digit and modality; train/val/test items "
             f"{counts}; FSDD speech), mean ± std over {seeds} seed(s), {epochs} epochs, Adam lr {LEARNING_RATE}")
    (out / "pairs.md").write_text(pairs_markdown(summary, title=title))
    plot_pairs(summary, out / "pairs.png", title=f"digits: MAP@all per pair ({seeds} seeds)")
    return summary


@pytest.mark.benchmark
@pytest.mark.slow
def test_digits_benchmark_reports_every_ordered_pair_of_five_modalities(tmp_path):
    if not FSDD.is_dir():
        pytest.skip("../shared/data/fsdd is not present")
    summary = run(tmp_path / "ws", tmp_path / "out", per_class=6, seeds=1, epochs=2, methods=["drcl", "mcca"])
    pairs = {f"{q} -> {t}" for q, t in itertools.permutations(MODALITIES, 2)}
    assert set(summary["drcl"]) == pairs | {"average"}
    assert (tmp_path / "out" / "pairs.md").read_text().count("\n| ") == 1 + 20 + 1  # header, pairs, average


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=30, help="files per digit and modality")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--methods", default=",".join(list_methods()), help="comma-separated (default: every one)")
    parser.add_argument("--workspace", type=Path, default=HERE / "results" / "tmp" / "digits")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "digits")
    parser.add_argument("--recordings", type=Path, default=FSDD, help="FSDD recordings/ folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra [method.]key=value")
    parser.add_argument("--noise", default="0", help="comma-separated noise rates (training split only)")
    parser.add_argument("--noise-kind", default="label", help="label, label-asymmetric, alignment-partial, ...")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    summary = run(args.workspace, args.out, per_class=args.per_class, seeds=args.seeds, epochs=args.epochs,
                  methods=methods, overrides=args.overrides, recordings=args.recordings,
                  noise=parse_rates(args.noise), noise_kind=args.noise_kind)
    print((args.out / "pairs.md").read_text())
    print("average MAP@all: " + ", ".join(f"{m} {s['average'][0]:.3f}" for m, s in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
