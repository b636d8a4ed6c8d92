"""DRCL quality and its Table V ablations, against an untrained encoder and a linear baseline, on two benchmarks.

Data (the paper's feature files are not reachable here):

* **synthetic-xmedia**: a class-structured synthetic set (``crossmodal.synthetic``, 20 classes, five modalities, each a
  different random nonlinear view of one latent class structure), **written as an XMediaFeatures.mat and loaded back**
  with the XMedia loader. Per modality: XMedia's test sizes (500, 500, 100, 50, 87, fixed by the format), a quarter of
  its training sizes (1000, 1000, 200, 100, 242) and of its validation sizes, and inputs 1/8 as wide (512, 375, 29,
  588, 512).
* **wiki-sift-lda**: the real Wikipedia benchmark with its original features (128-d SIFT bag of words, 10-d LDA topics;
  ../shared/data/wikipedia-sift-lda), the DRCL split (2,173 train, 231 validation, 462 test).

Every variant is trained with the same seeds; a variant that only changes RSC reuses the SPL prior of the full run
(SPL does not depend on RSC options), so each is ``DRCL.add_modality`` for every modality against that prior. The
table gives the average MAP@all over all ordered pairs (mean over seeds) and, per variant, whether it moves MAP in the
direction the paper's Table V (XMedia) reports.

Network size: the paper's 4096-4096 MLPs and D = 512/2048 for 100-300 epochs per stage are out of reach on two shared
CPU cores, so the benchmark uses a smaller network (``--hidden``, ``--dim``, ``--batch``, ``--epochs``; stated in the
output), the same for every variant. Learning rates: the paper's per-modality values were tuned for VGG/BoW/Doc2Vec
features, not these, so one Adam lr is used for all modalities of a dataset (``--lr``), with SPL at the paper's 5e-4.

Usage:

    python benchmarks/drcl_quality.py --out benchmarks/results/drcl_quality.md
    python benchmarks/drcl_quality.py --datasets wiki-sift-lda --seeds 1 --epochs 50    # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crossmodal.datasets import XMEDIA_TEST_SIZES, load_benchmark, write_benchmark
from crossmodal.evaluation import evaluate, evaluate_embeddings, label_regression_embeddings
from crossmodal.featureset import CrossModalDataset
from crossmodal.methods.base import default_features
from crossmodal.methods.drcl import DRCL, DRCLConfig
from crossmodal.synthetic import make_synthetic

WIKI_SIFT_LDA = Path(__file__).resolve().parents[2] / "shared/data/wikipedia-sift-lda/wikiData_with_labels.mat"

# name: (config changes, paper's XMedia average MAP@all from Table V; the full DRCL is 0.630)
VARIANTS: dict[str, tuple[dict, float]] = {
    "DRCL (full)": ({}, 0.630),
    "random prior instead of SPL": ({"prior": "random"}, 0.610),
    "without J_L (label loss)": ({"use_label_loss": False}, 0.104),
    "without J_D": ({"use_jd": False}, 0.610),
    "without J_MSE": ({"use_jmse": False}, 0.620),
    "fixed q = 0.01": ({"q_schedule": "fixed", "q_fixed": 0.01}, 0.581),
    "fixed q = 0.5": ({"q_schedule": "fixed", "q_fixed": 0.5}, 0.580),
    "fixed q = 1": ({"q_schedule": "fixed", "q_fixed": 1.0}, 0.566),
    "fixed q = 2": ({"q_schedule": "fixed", "q_fixed": 2.0}, 0.440),
    "without FA (mixup)": ({"use_fa": False}, 0.620),
    "mixup of the inputs, not the embeddings": ({"fa_space": "input"}, 0.606),
}
XMEDIA_DIMS = {"image": 512, "text": 375, "audio": 29, "mesh": 588, "video": 512}
XMEDIA_TRAIN = {"image": 1000, "text": 1000, "audio": 200, "mesh": 100, "video": 242}
XMEDIA_VAL = {"image": 125, "text": 125, "audio": 25, "mesh": 12, "video": 22}


def synthetic_xmedia(folder: Path, seed: int = 0) -> CrossModalDataset:
    """The synthetic five-modality set, written in the XMedia format and read back by its loader."""
    full = make_synthetic(XMEDIA_DIMS, 20, max(XMEDIA_TRAIN.values()), max(XMEDIA_VAL.values()),
                          max(XMEDIA_TEST_SIZES.values()), seed=seed, paired=False, intra=0.8, noise=0.3)

    def cut(split: dict, sizes: dict) -> dict:
        return {m: fs.subset(np.arange(sizes[m])) for m, fs in split.items()}

    ds = CrossModalDataset(name="synthetic-xmedia", train=cut(full.train, XMEDIA_TRAIN), val=cut(full.val, XMEDIA_VAL),
                           test=cut(full.test, XMEDIA_TEST_SIZES), paired=False)
    return load_benchmark("xmedia", write_benchmark("xmedia", folder / "XMediaFeatures.mat", ds))


def average_map(model_or_embeddings, test) -> float:
    if isinstance(model_or_embeddings, dict):
        return evaluate_embeddings(model_or_embeddings, test, ks=(None,))["average"]["MAP@all"]
    return evaluate(model_or_embeddings, test, ks=(None,), pr_curves=False)["average"]["MAP@all"]


def run_dataset(ds: CrossModalDataset, base: DRCLConfig, seeds: list[int]) -> dict[str, list[float]]:
    """Average MAP@all per variant and seed, plus the two baselines."""
    scores: dict[str, list[float]] = {name: [] for name in ("untrained encoder", "linear (ridge to labels)", *VARIANTS)}
    for seed in seeds:
        config = dataclasses.replace(base, seed=seed)
        untrained = DRCL.build_model(config, default_features(ds.train), ds.num_classes, {})
        scores["untrained encoder"].append(average_map(untrained, ds.test))
        scores["linear (ridge to labels)"].append(average_map(label_regression_embeddings(ds.train, ds.test), ds.test))
        t = time.perf_counter()
        full = DRCL().fit(ds.train, ds.val, config=config)
        print(f"  seed {seed}: full DRCL in {time.perf_counter() - t:.0f} s, prior of {full.extra['spl']['selected']}",
              flush=True)
        for name, (changes, _) in VARIANTS.items():
            variant = dataclasses.replace(config, **changes)
            if not changes:
                model = full
            elif "prior" in changes:
                model = DRCL().fit(ds.train, ds.val, config=variant)
            else:
                model = full
                for m in ds.train:
                    model = DRCL().add_modality(model, m, ds.train[m], ds.val.get(m), config=variant)
            scores[name].append(average_map(model, ds.test))
            print(f"    {name}: {scores[name][-1]:.3f}", flush=True)
    return scores


def verdict(variant: list[float], full: list[float], paper_lower: bool) -> str:
    """"yes" / "**no**" when the variant's mean moves the paper's way or the other way by more than the noise (two
    standard errors of the difference over the seeds, at least 0.002), else "within noise"."""
    delta = float(np.mean(variant) - np.mean(full))
    noise = max(0.002, 2 * float(np.sqrt((np.var(variant) + np.var(full)) / max(len(full), 1))))
    if abs(delta) <= noise:
        return "within noise"
    return "yes" if (delta < 0) == paper_lower else "**no**"


def markdown(results: dict[str, dict[str, list[float]]], configs: dict[str, DRCLConfig], seeds: list[int]) -> str:
    names = list(next(iter(results.values())))
    head = "| variant | paper XMedia (Δ vs full) | " + " | ".join(
        f"{d} MAP@all (Δ) | same direction as the paper?" for d in results) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(results))]
    for name in names:
        paper = VARIANTS.get(name, (None, None))[1]
        cells = [name, "" if paper is None else f"{paper:.3f} ({paper - VARIANTS['DRCL (full)'][1]:+.3f})"]
        for scores in results.values():
            mean, full = float(np.mean(scores[name])), float(np.mean(scores["DRCL (full)"]))
            spread = f" ± {np.std(scores[name]):.3f}" if len(seeds) > 1 else ""
            cells.append(f"{mean:.3f}{spread} ({mean - full:+.3f})")
            cells.append("" if paper is None or name == "DRCL (full)" else verdict(scores[name], scores["DRCL (full)"],
                                                                                   paper < VARIANTS["DRCL (full)"][1]))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"* {d}: hidden {list(c.hidden)}, D = {c.dim}, batch {c.batch_size}, {c.epochs} epochs per stage, "
             f"RSC lr {c.lr_image:g} (all modalities), SPL lr {c.lr_spl:g}; seeds {seeds}." for d, c in configs.items()]
    size = "Smaller than the paper's network (4096-4096, D 512/2048), the same for every variant:"
    return "\n".join(lines) + f"\n\n{size}\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic-xmedia", "wiki-sift-lda"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: these small networks lose to thread sync on a shared machine)")
    parser.add_argument("--wiki-file", type=Path, default=WIKI_SIFT_LDA, help="wikiData_with_labels.mat")
    parser.add_argument("--out", type=Path, help="write the Markdown table here, and the raw scores beside it (.json)")
    parser.add_argument("--render", type=Path, help="only re-render the table of a saved .json of raw scores")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = DRCLConfig(epochs=args.epochs, hidden=(args.hidden, args.hidden), dim=args.dim, batch_size=args.batch,
                      **{f"lr_{m}": args.lr for m in ("image", "text", "audio", "mesh", "video", "other")})
    seeds = list(range(1, args.seeds + 1))
    results: dict[str, dict[str, list[float]]] = {}
    if args.render:
        saved = json.loads(args.render.read_text())
        results, seeds = saved["results"], saved["seeds"]
        base = DRCLConfig.from_dict(saved["config"])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.datasets:
                ds = synthetic_xmedia(Path(tmp)) if name == "synthetic-xmedia" else load_benchmark(name, args.wiki_file)
                print(f"{name}: {', '.join(f'{m} {len(fs)}x{fs.dim}' for m, fs in ds.train.items())} training items",
                      flush=True)
                torch.manual_seed(0)
                results[name] = run_dataset(ds, base, seeds)
    table = markdown(results, {name: base for name in results}, seeds)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# DRCL quality and the ablations of Table V\n\n" + table)
        if not args.render:
            args.out.with_suffix(".json").write_text(json.dumps(
                {"results": results, "seeds": seeds, "config": base.to_dict()}, indent=1))


if __name__ == "__main__":
    main()
