"""DRCL training speed on Wikipedia-shaped data, beside the floor this machine allows and the reference code's times.

Data: 2,173 training, 231 validation and 462 test items; image 4,096-d and text 300-d random features; 10 classes.
The config is the paper's (D = 2048, hidden 4096-4096, batch 1024) unless ``--set`` changes it.

For every stage (SPL and RSC of each modality) the script prints the seconds per epoch and the **floor**: the
multiply-adds (MACs) the epoch needs, divided by the fp32 matmul throughput measured in the same run (a 1024 x 4096 by
4096 x 4096 product, the shape of the 4096-wide hidden layer). MACs per epoch, for the samples actually processed:

* training, per sample: forward (sum of in x out over the Linear layers), the weight gradients (the same again) and the
  input gradients of every layer but the first (the features need none): about 2.6x the forward for the image MLP;
* RSC's J_D, per batch of b: the Gram matrix z z^T and its gradient, 2 b^2 D (the label-side Grams are rank-C products
  and negligible, like every B x C and D x C product);
* evaluation passes: RSC's validation forward (and its Gram) every epoch; SPL's quality pass over the training set
  when ``quality_pass="full"`` (the default accumulates the score during the training passes instead).

Both wall-clock and process CPU time are measured. On a machine shared with other jobs, wall time measures the sharing;
CPU time with ``--threads 1`` (matmul throughput then also in FLOP per CPU-second) measures the implementation, and is
the ratio to trust there. Epoch 1 of each stage also pays the stage's set-up (weight init, optimizer state), so the
ratios use epochs 2 and later. The matmul rate is measured (0.4 s of back-to-back products) before the first epoch and
after every epoch, outside the epochs' time; each epoch is compared with the better of its two neighbouring rates.

PyTorch allocates every weight gradient afresh, and by default glibc serves blocks over 32 MB (the 64 MB gradients of
the 4096 x 4096 layers) with new zeroed pages: about 6% of an epoch in kernel time. The script, like ``crossmodal
train``, calls ``crossmodal.device.keep_freed_memory()`` first; ``--glibc-default`` measures without it.

It then compares the whole run (SPL and RSC of both modalities, plus the final evaluation) with the reference code's
measured CPU times at the same epoch count (specs/drcl.md §8: image SPL 6.0, text SPL 4.5-5.1, image RSC 5.2-6.7, text
RSC 4.2-4.6 s/epoch, final evaluation 1.4 s; midpoints used). Targets: each epoch within 1.15x of its floor, the whole
run at most 0.75x the reference.

Usage:

    python benchmarks/train_speed.py --epochs 3 --out benchmarks/results/train_speed.md
    python benchmarks/train_speed.py --epochs 3 --threads 1        # a busy machine: trust the CPU-time ratios
    python benchmarks/train_speed.py --epochs 3 --preset drcl-reference-code    # the reference code's options
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from crossmodal.common.config import split_overrides, with_overrides
from crossmodal.device import keep_freed_memory
from crossmodal.encoders import linear_layers
from crossmodal.evaluation import evaluate
from crossmodal.featureset import FeatureSet
from crossmodal.methods.drcl import DRCL, DRCLConfig, _encoder, batch_sizes

SHAPES = {"image": 4096, "text": 300}
N_TRAIN, N_VAL, N_TEST, CLASSES = 2173, 231, 462, 10
REFERENCE = {"spl:image": 6.0, "spl:text": 4.8, "rsc:image": 5.95, "rsc:text": 4.4}  # s/epoch, specs/drcl.md §8
REFERENCE_EVAL = 1.4  # s, the reference's final MAP evaluation


def matmul_rate(seconds: float = 0.4) -> tuple[float, float]:
    """Sustained fp32 throughput of back-to-back (1024 x 4096) @ (4096 x 4096) products over ``seconds``:
    (FLOP per wall second, FLOP per CPU second). Sustained, like an epoch, rather than the best single product."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 4096, generator=g), torch.randn(4096, 4096, generator=g)
    out = torch.empty(1024, 4096)
    for _ in range(2):
        torch.mm(a, b, out=out)
    count = 0
    t, c = time.perf_counter(), time.process_time()
    while time.perf_counter() - t < seconds:
        torch.mm(a, b, out=out)
        count += 1
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    flop = 2 * 1024 * 4096 * 4096 * count
    return flop / wall, flop / cpu


def epoch_macs(stage: str, in_dim: int, config: DRCLConfig) -> float:
    """Multiply-adds one epoch of ``stage`` ("spl" or "rsc") needs (see the module docstring)."""
    layers = [(m.in_features, m.out_features) for m in linear_layers(_encoder(config, in_dim))]
    forward = sum(i * o for i, o in layers)
    train = forward + forward + sum(i * o for i, o in layers[1:])
    batches = batch_sizes(N_TRAIN, config)
    macs = sum(batches) * train
    if stage == "rsc":
        macs += sum(2 * b * b * config.dim for b in batches)
        macs += N_VAL * forward + N_VAL * N_VAL * config.dim
    elif config.quality_pass == "full":
        macs += N_TRAIN * forward
    return float(macs)


def wiki_shaped(seed: int = 0) -> tuple[dict[str, FeatureSet], ...]:
    rng = np.random.default_rng(seed)
    splits = []
    for n in (N_TRAIN, N_VAL, N_TEST):
        labels = rng.integers(0, CLASSES, n)
        splits.append({m: FeatureSet.build(rng.standard_normal((n, d), dtype=np.float32), labels,
                                           num_classes=CLASSES) for m, d in SHAPES.items()})
    return tuple(splits)


class Timer:
    """Records each epoch's wall seconds (from the training loop), the process CPU seconds since the last epoch with
    the part spent in the kernel, and the matmul throughput measured right after every epoch (and once before the
    first): an epoch's floor uses the better of the rates measured just before and just after it, so a machine whose
    speed drifts during the run (a shared VM does, by 10 % or more) is compared with itself. The measuring is outside
    the epochs' time and is subtracted from the whole run's."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = defaultdict(list)
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.kernel: dict[str, list[float]] = defaultdict(list)
        self.rate: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (wall, CPU) FLOP/s around each epoch
        self.measuring = 0.0
        self._last_rate = self._measure()

    def _measure(self) -> tuple[float, float]:
        t = time.perf_counter()
        rate = matmul_rate()
        self.measuring += time.perf_counter() - t
        self._last = resource.getrusage(resource.RUSAGE_SELF)
        return rate

    def on_epoch_end(self, stage, epoch, epochs, logs) -> None:
        now = resource.getrusage(resource.RUSAGE_SELF)
        kernel = now.ru_stime - self._last.ru_stime
        self.wall[stage].append(float(logs["seconds"]))
        self.cpu[stage].append(now.ru_utime - self._last.ru_utime + kernel)
        self.kernel[stage].append(kernel)
        before, after = self._last_rate, self._measure()
        self.rate[stage].append((max(before[0], after[0]), max(before[1], after[1])))
        self._last_rate = after
        print(f"  {stage} epoch {epoch}/{epochs}: {logs['seconds']:.2f} s wall, {self.cpu[stage][-1]:.2f} s CPU "
              f"({kernel:.2f} s kernel); matmul {self.rate[stage][-1][0] / 1e9:.0f} GFLOP/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--preset", help="a presets/NAME.json applied before --set")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="DRCL config key=value")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc as it is (returns big freed blocks to the kernel) for comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = DRCLConfig()
    if args.preset:
        from pipelines.train import resolve_config

        config = resolve_config("drcl", preset=args.preset)
    config = with_overrides(config, {"epochs": args.epochs, **split_overrides(args.overrides)})
    if not args.glibc_default:
        keep_freed_memory()  # what `crossmodal train` does
    train, val, test = wiki_shaped()
    timer = Timer()
    start = time.perf_counter()
    model = DRCL().fit(train, val, config=config, device="cpu", callbacks=[timer])
    t_eval = time.perf_counter()
    metrics = evaluate(model, test)
    end = time.perf_counter()

    rows, ratios = [], []
    for stage in timer.wall:
        kind, modality = stage.split(":")
        macs = epoch_macs(kind, SHAPES[modality], config)
        steady = slice(1, None) if len(timer.wall[stage]) > 1 else slice(None)
        wall, cpu, kernel = (np.array(getattr(timer, k)[stage][steady]) for k in ("wall", "cpu", "kernel"))
        rate = np.array(timer.rate[stage][steady])
        floor, floor_cpu = 2 * macs / rate[:, 0], 2 * macs / rate[:, 1]
        ratios.append(max(wall / floor))
        rows.append(f"| {stage} | {macs / 1e9:.0f} | {wall.mean():.2f} | {wall.max():.2f} | "
                    f"{rate[:, 0].min() / 1e9:.0f}-{rate[:, 0].max() / 1e9:.0f} | {floor.mean():.2f} | "
                    f"{(wall / floor).mean():.2f}x | {max(wall / floor):.2f}x | "
                    f"{cpu.mean():.2f} ({kernel.mean():.2f}) | {max(cpu / floor_cpu):.2f}x | {REFERENCE[stage]:.2f} |")
    total = end - start - timer.measuring
    reference_total = args.epochs * sum(REFERENCE.values()) + REFERENCE_EVAL
    lines = [
        f"DRCL on Wikipedia-shaped data ({N_TRAIN} train, image {SHAPES['image']}-d, text {SHAPES['text']}-d, "
        f"{CLASSES} classes): D={config.dim}, hidden {list(config.hidden)}, batch {config.batch_size}, "
        f"quality_pass={config.quality_pass}, last_batch={config.last_batch}, {args.epochs} epochs per stage. "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
        f"{'glibc malloc defaults' if args.glibc_default else 'keep_freed_memory()'}. Epochs 2 and later; each "
        "epoch's floor = its MACs / the sustained fp32 matmul rate measured next to it.",
        "",
        "| stage | GMAC/epoch | wall s/epoch (mean) | worst | matmul GFLOP/s | floor s (mean) | epoch/floor (mean) "
        "| epoch/floor (worst) | CPU s/epoch (kernel) | CPU/floor (worst) | reference s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Worst epoch/floor over all stages: {max(ratios):.2f}x (target <= 1.15x).",
        f"Whole run (SPL + RSC of both modalities, then the final evaluation, {end - t_eval:.2f} s; without the "
        f"{timer.measuring:.1f} s of matmul measuring): {total:.1f} s wall; the reference at {args.epochs} epochs: "
        f"{reference_total:.1f} s; ratio {total / reference_total:.2f}x (target <= 0.75x).",
        f"Average MAP@all on these random features (a sanity check only): {metrics['average']['MAP@all']:.3f}.",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# DRCL training speed\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
