"""Every method under label or alignment noise on real and synthetic benchmark files: MAP@all, mean +- std over seeds.

Runs ``pipelines.benchmark`` (the ``crossmodal benchmark`` verb) on

* ``wiki``: the real Wikipedia benchmark with its original features (128-d SIFT images, 10-d LDA texts, 2,173 / 231 /
  462 pairs, 10 classes) from ../shared/data/wikipedia-sift-lda, read by ``load_benchmark("wiki-sift-lda", ...)``;
* ``xmedia``: a synthetic 5-modality set (20 classes, unpaired, XMedia's test sizes 500/500/100/50/87 and its training
  proportions scaled down) written in XMedia's file format and read back through ``load_benchmark("xmedia", ...)``, so
  the per-pair training of the two-branch methods and the all-pairs evaluation run as on the real XMedia.

``benchmark_methods(ds, out, ...)`` is the entry point for other end-to-end benchmarks (benchmarks/digits.py runs it
on real FSDD audio). Every method keeps its paper's optimiser settings; only the layer widths are scaled down
(``CPU_SCALE``, about a tenth of the papers' 1024-4096) so that a run fits a shared CPU, and all methods train for the
same number of epochs. Expect lower absolute numbers than the papers' (fewer epochs, smaller networks, SIFT/LDA
rather than VGG/Doc2Vec features): the comparison between methods and across noise rates is the point.

Usage (not part of the default test run; ``-m benchmark`` selects the pytest entry points):

    python benchmarks/methods.py wiki --epochs 25 --seeds 2 --noise 0,0.4,0.8 --out benchmarks/results/methods-wiki
    python benchmarks/methods.py wiki --noise-kind alignment-complete --noise 0,0.4,0.8
    python benchmarks/methods.py xmedia --epochs 10 --seeds 1 --noise 0,0.4
    python -m pytest benchmarks/methods.py -m benchmark
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from crossmodal.featureset import CrossModalDataset
from pipelines.benchmark import BenchmarkResult, benchmark_dataset, parse_rates, write_report

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALL_METHODS = ("drcl", "sdml", "mars", "dscmr", "mcca", "sccmr", "hcmsl", "rcar", "sedel")
# Layer widths scaled to a shared CPU (the papers use 1024-4096): each method keeps its depth and optimiser settings.
CPU_SCALE = ("hidden=[256]", "dim=128", "drcl.hidden=[256,256]", "sdml.hidden=[256,256]", "mars.hidden=[256,256]",
             "mars.label_hidden=[256]", "sccmr.hidden=[256,256,256]", "hcmsl.siamese=[256,64]")
XMEDIA_DIMS = {"image": 64, "text": 48, "audio": 29, "mesh": 47, "video": 64}  # audio 29-d as XMedia's MFCC
XMEDIA_TRAIN = {"image": 400, "text": 400, "audio": 80, "mesh": 40, "video": 97}  # XMedia's proportions / 10


def benchmark_methods(ds: CrossModalDataset, out: str | Path, *, methods: Sequence[str] = ALL_METHODS,
                      noise: Sequence[float] = (0.0, 0.4, 0.8), noise_kind: str = "label", seeds: int = 2,
                      epochs: int = 25, overrides: Sequence[str] = CPU_SCALE, prior_transfer: bool = False,
                      device: str = "auto") -> BenchmarkResult:
    """Benchmark ``methods`` on ``ds`` and write ``benchmark.md``/``.json``/``.png`` into ``out``.

    Args:
        ds: any CrossModalDataset (a benchmark file, a workspace's features, synthetic data).
        out: report folder.
        methods, noise, noise_kind, seeds, epochs, overrides, prior_transfer, device: as ``crossmodal benchmark``;
            ``overrides`` of only the methods benchmarked (and SDML/MARS with prior transfer) are applied.
    """
    kept = {*methods, *(("sdml", "mars") if prior_transfer else ())}
    overrides = [o for o in overrides if "." not in o.split("=")[0] or o.split(".")[0] in kept]
    result = benchmark_dataset(ds, methods=methods, noise=noise, noise_kind=noise_kind, seeds=seeds, epochs=epochs,
                               overrides=overrides, prior_transfer=prior_transfer, device=device,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    write_report(result, out)
    return result


def wiki_dataset(root: Path = SHARED_DATA / "wikipedia-sift-lda") -> CrossModalDataset:
    """The real Wikipedia benchmark with its original SIFT/LDA features."""
    from crossmodal.datasets import load_benchmark

    return load_benchmark("wiki-sift-lda", root)


def xmedia_dataset(directory: Path, *, seed: int = 0) -> CrossModalDataset:
    """A synthetic 5-modality set written as ``XMediaFeatures.mat`` in ``directory`` and read back as XMedia."""
    from crossmodal.datasets import XMEDIA_TEST_SIZES, load_benchmark, write_benchmark
    from crossmodal.synthetic import make_synthetic

    full = make_synthetic(XMEDIA_DIMS, 20, max(XMEDIA_TRAIN.values()), 60, max(XMEDIA_TEST_SIZES.values()),
                          seed=seed, paired=False, name="xmedia")
    rng = np.random.default_rng(seed)

    def first(split: dict, sizes: dict) -> dict:
        return {m: fs.subset(np.sort(rng.permutation(len(fs))[:sizes.get(m, len(fs))])) for m, fs in split.items()}

    ds = CrossModalDataset(name="xmedia", train=first(full.train, XMEDIA_TRAIN), val=full.val,
                           test=first(full.test, XMEDIA_TEST_SIZES), paired=False)
    path = Path(directory) / "XMediaFeatures.mat"
    write_benchmark("xmedia", path, ds)
    return load_benchmark("xmedia", path)


@pytest.mark.benchmark
@pytest.mark.slow
def test_methods_on_real_wikipedia_sift_lda(tmp_path):
    root = SHARED_DATA / "wikipedia-sift-lda"
    if not root.is_dir():
        pytest.skip("../shared/data/wikipedia-sift-lda is not present")
    result = benchmark_methods(wiki_dataset(root), tmp_path, seeds=1, epochs=10, noise=(0.0, 0.4))
    assert {r["method"] for r in result.runs} == set(ALL_METHODS)


@pytest.mark.benchmark
@pytest.mark.slow
def test_methods_on_a_synthetic_five_modality_set_in_xmedia_format(tmp_path):
    result = benchmark_methods(xmedia_dataset(tmp_path), tmp_path / "report", seeds=1, epochs=3, noise=(0.0,))
    assert all(len(r["pairs"]) == 20 for r in result.runs)  # every ordered pair of five modalities


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["wiki", "xmedia"])
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--noise", default="0,0.4,0.8")
    parser.add_argument("--noise-kind", default="label")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--prior-transfer", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra [method.]key=value")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "results" / f"methods-{args.dataset}"
    with tempfile.TemporaryDirectory() as scratch:
        ds = wiki_dataset() if args.dataset == "wiki" else xmedia_dataset(Path(scratch))
        result = benchmark_methods(ds, out, methods=args.methods.split(","), noise=parse_rates(args.noise),
                                   noise_kind=args.noise_kind, seeds=args.seeds, epochs=args.epochs,
                                   overrides=[*CPU_SCALE, *args.overrides], prior_transfer=args.prior_transfer,
                                   device=args.device)
    print(result.markdown())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
