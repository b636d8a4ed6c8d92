"""Train a method and write a model folder: the benchmark-file mode of ``crossmodal train`` and the shared save step.

A model folder holds ``model.safetensors`` and ``card.json`` (crossmodal.model), ``config.json`` (the resolved
hyper-parameters), ``train_log.jsonl`` (one line per epoch and stage) and ``curves.png``. While training, it also holds
``checkpoints/``: running the same command again after a kill resumes there, and it is removed once the model is saved.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossmodal.config import MethodConfig, load_preset, with_overrides
from crossmodal.device import keep_freed_memory, resolve_device
from crossmodal.errors import ConfigError
from crossmodal.evaluation import evaluate
from crossmodal.featureset import FeatureSet
from crossmodal.methods import create_method, get_method
from crossmodal.model import CrossModalModel, FeatureIdentity
from pipelines.progress import ProgressBar, TrainingLog, read_training_log

PRESETS_DIR = Path(__file__).resolve().parents[1] / "crossmodal" / "presets"
DATASETS = ("wiki", "wiki-sift-lda", "xmedia", "xmedianet", "nus", "inria")
CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """What a training run produced: the folder, the model and its test metrics (``crossmodal.evaluation`` format)."""

    model_dir: Path
    model: CrossModalModel
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: model folder, method, modalities, config and test metrics."""
        return {"model": self.model_dir.name, "path": str(self.model_dir), "method": self.model.method,
                "modalities": list(self.model.features), "config": self.model.config.to_dict(),
                "metrics": self.metrics}


def run_train(
    *,
    dataset: str | None,
    data: str | Path | None,
    out: str | Path | None,
    workspace: str | Path,
    modalities: str | None = None,
    name: str | None = None,
    add_modality: str | None = None,
    method: str = "drcl",
    epochs: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    preset: str | None = None,
    label_noise: float = 0.0,
    alignment_noise: str | None = None,
) -> TrainResult:
    """``crossmodal train``: benchmark-file mode when ``dataset`` is given, else workspace mode.

    Raises:
        ConfigError: options of the two modes are mixed, or a mode misses a required option.
    """
    if dataset is not None:
        if data is None or out is None:
            raise ConfigError("--dataset needs --data FILE and --out DIR",
                              hint=f"e.g. crossmodal train --dataset {dataset} --data FILE --out models/{dataset}")
        if modalities or name or add_modality:
            raise ConfigError("--modalities, --name and --add-modality are for workspace mode (without --dataset)",
                              hint="drop them, or drop --dataset to train on the workspace's features")
        return train_benchmark(dataset, data, out, method=method, epochs=epochs, seed=seed, device=device,
                               overrides=overrides, preset=preset, label_noise=label_noise,
                               alignment_noise=alignment_noise)
    if data is not None or out is not None or preset is not None:
        raise ConfigError("--data, --out and --preset need --dataset (benchmark-file mode)",
                          hint="add --dataset NAME, or drop them to train in the workspace")
    from pipelines.workspace import train_in_workspace

    return train_in_workspace(
        workspace=Path(workspace), method=method,
        modalities=[m.strip() for m in modalities.split(",") if m.strip()] if modalities else None, name=name,
        epochs=epochs, seed=seed, device=device, overrides=list(overrides), add_modality=add_modality,
        label_noise=label_noise, alignment_noise=parse_alignment_noise(alignment_noise))


def train_benchmark(
    dataset: str,
    data: str | Path,
    out: str | Path,
    *,
    method: str = "drcl",
    epochs: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    preset: str | None = None,
    label_noise: float = 0.0,
    alignment_noise: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``method`` on a benchmark feature file and write the model folder ``out``; evaluate it on the test split.

    Args:
        dataset: one of DATASETS (the file's format, see crossmodal.datasets).
        data: the benchmark file.
        out: the model folder to write (a kill mid-run resumes when the same command runs again).
        method: registry name of the method.
        epochs, seed: shortcuts for ``--set epochs=N`` and ``--set seed=S``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``key=value`` config overrides, applied last.
        preset: a preset name (``presets/NAME.json``) or file; default ``<method>-<dataset>`` when it exists.
        label_noise: rate of symmetric label noise injected into the training split.
        alignment_noise: ``partial:R`` or ``complete:R`` correspondence noise for paired datasets.
        progress: show a progress bar on stderr.

    Raises:
        ConfigError: an unknown dataset, preset or config key, or a bad noise spec.
        DatasetFormatError: the file does not match the dataset's format.
    """
    from crossmodal.datasets import load_benchmark

    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}", hint=f"choose one of {', '.join(DATASETS)}")
    data = Path(data).resolve()
    ds = load_benchmark(dataset, data)
    config = resolve_config(method, dataset=dataset, preset=preset, epochs=epochs, seed=seed, overrides=overrides)
    train, noise = inject_noise(ds.train, label_noise=label_noise, alignment_noise=alignment_noise,
                                seed=config.seed, paired=ds.paired)
    extra = {"data_source": {"kind": "benchmark", "dataset": dataset, "path": str(data)}, **noise}
    return fit_and_save(method, train, ds.val, ds.test, config=config, device=device, out=out, extra=extra,
                        progress=progress)


def fit_and_save(
    method: str,
    train: Mapping[str, FeatureSet],
    val: Mapping[str, FeatureSet] | None,
    test: Mapping[str, FeatureSet] | None,
    *,
    config: MethodConfig,
    device: str = "auto",
    out: str | Path,
    features: Mapping[str, FeatureIdentity] | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fit, evaluate on ``test`` (when it has two modalities), and write the model folder (see the module docstring).

    ``extra`` goes into the card (e.g. ``data_source``, which ``crossmodal evaluate`` uses to find the test split).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()  # a training process: every step frees and reallocates the same large tensors
    checkpoints = out / CHECKPOINTS
    log = out / LOG_FILE
    if not checkpoints.exists():
        log.unlink(missing_ok=True)  # a fresh run; a resumed one keeps its log
    callbacks: list[Any] = [TrainingLog(log)]
    bar = ProgressBar() if progress else None
    if bar is not None:
        callbacks.append(bar)
    try:
        model = create_method(method).fit(train, val, config=config, device=resolve_device(device), features=features,
                                          callbacks=callbacks, checkpoint_dir=checkpoints)
    finally:
        if bar is not None:
            bar.close()
    model.extra.update(extra or {})
    metrics: dict[str, Any] = {}
    if test is not None and sum(m in model.features and len(fs) > 0 for m, fs in test.items()) >= 2:
        metrics = evaluate(model, {m: fs for m, fs in test.items() if len(fs) > 0})
    model.metrics = metrics
    model.save(out)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_curves(out)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(model_dir=out, model=model, metrics=metrics)


def write_curves(model_dir: Path) -> Path:
    """Plot ``train_log.jsonl`` into ``curves.png`` next to it."""
    from pipelines.plots import plot_training_curves

    path = model_dir / "curves.png"
    plot_training_curves(read_training_log(model_dir / LOG_FILE), path)
    return path


def resolve_config(method: str, *, dataset: str | None = None, preset: str | None = None, epochs: int | None = None,
                   seed: int | None = None, overrides: Sequence[str] = ()) -> MethodConfig:
    """The method's config: defaults, then a preset, then ``epochs``/``seed``, then ``key=value`` overrides.

    Without ``preset``, ``presets/<method>-<dataset>.json`` is used when it exists (the paper's values there).

    Raises:
        ConfigError: an unknown preset or config key, or a value of the wrong type.
    """
    cls = get_method(method).Config
    path = preset_path(preset) if preset else PRESETS_DIR / f"{method}-{dataset}.json" if dataset else None
    config = load_preset(cls, path) if path is not None and path.is_file() else cls()
    shortcuts = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
    return with_overrides(with_overrides(config, shortcuts), list(overrides))


def preset_path(preset: str) -> Path:
    """``presets/NAME.json`` for a preset name, or the file itself.

    Raises:
        ConfigError: neither exists.
    """
    for candidate in (Path(preset), PRESETS_DIR / f"{preset}.json"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    raise ConfigError(f"no preset {preset!r}", hint=f"use a JSON file or one of {', '.join(names) or '(none)'}")


def inject_noise(train: Mapping[str, FeatureSet], *, label_noise: float, alignment_noise: str | None, seed: int,
                 paired: bool) -> tuple[dict[str, FeatureSet], dict[str, Any]]:
    """Corrupt the training split as asked; return it and the card record of what was done (``{}`` when nothing)."""
    alignment = parse_alignment_noise(alignment_noise)
    if not label_noise and alignment is None:
        return dict(train), {}
    from crossmodal.noise import corrupt

    noisy = corrupt(train, label_noise=label_noise, alignment_noise=alignment, seed=seed, paired=paired)
    record = {"label_noise": label_noise, "alignment_noise": list(alignment) if alignment else None, "seed": seed}
    return noisy, {"noise": record}


def parse_alignment_noise(spec: str | None) -> tuple[str, float] | None:
    """``"partial:0.2"`` -> ``("partial", 0.2)``; None stays None.

    Raises:
        ConfigError: not ``partial:R`` or ``complete:R`` with R in [0, 1].
    """
    if spec is None:
        return None
    kind, _, rate = spec.partition(":")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if kind not in ("partial", "complete") or not 0 <= value <= 1:
        raise ConfigError(f"alignment noise {spec!r} is not KIND:RATE",
                          hint="write e.g. --alignment-noise partial:0.2 or complete:0.5")
    return kind, value
