"""Train a method and write a model folder: the benchmark-file mode of ``crossmodal train`` and the shared save step.

A model folder holds ``model.safetensors`` and ``card.json`` (crossmodal.model), ``config.json`` (the resolved
hyper-parameters), ``train_log.jsonl`` (one line per epoch and stage) and ``curves.png``. While training, it also holds
``checkpoints/``: running the same command again after a kill resumes there, and it is removed once the model is saved.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodal.config import MethodConfig, load_preset, with_overrides
from crossmodal.device import keep_freed_memory, resolve_device
from crossmodal.errors import ConfigError
from crossmodal.evaluation import evaluate
from crossmodal.featureset import FeatureSet
from crossmodal.methods import create_method, get_method
from crossmodal.model import CrossModalModel, FeatureIdentity
from pipelines.progress import ProgressBar, TrainingLog, read_training_log

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only annotations name it

PRESETS_DIR: Traversable = resources.files("crossmodal") / "presets"
"""The presets shipped inside the package, found where the package is installed (a wheel, a zip or this tree)."""
DATASETS = ("wiki", "wiki-sift-lda", "xmedia", "xmedianet", "nus", "inria")
CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
FEW_EPOCHS = 0.25
"""A run below this fraction of the epochs its preset (or its method's defaults) was tuned for gets a warning: DRCL's
paper presets at 10 of their 200 epochs score near chance."""


@dataclass
class TrainResult:
    """What a training run produced: the folder, the model and its test metrics (``crossmodal.evaluation`` format),
    and what was chosen on the way.

    Attributes:
        features_used: one row per modality: ``modality``, ``extractor``, ``key``, ``train``/``val``/``test`` item
            counts and ``why`` that table and those items.
        notes: other choices made (a preset applied, modalities or items left out), one sentence each.
        warnings: what probably makes the result poor (far fewer epochs than the preset was tuned for).
    """

    model_dir: Path
    model: CrossModalModel
    metrics: dict[str, Any]
    features_used: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: model folder, method, modalities, config, features used, notes, warnings and test metrics."""
        return {"model": self.model_dir.name, "path": str(self.model_dir), "method": self.model.method,
                "modalities": list(self.model.features), "config": self.model.config.to_dict(),
                "features_used": self.features_used, "notes": self.notes, "warnings": self.warnings,
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
    extractors: Sequence[str] = (),
) -> TrainResult:
    """``crossmodal train``: benchmark-file mode when ``dataset`` is given, else workspace mode.

    ``extractors`` are ``MODALITY=NAME`` items (workspace mode) naming the store table to train on where a modality
    has several.

    Raises:
        ConfigError: options of the two modes are mixed, or a mode misses a required option.
    """
    if dataset is not None:
        if data is None or out is None:
            raise ConfigError("--dataset needs --data FILE and --out DIR",
                              hint=f"e.g. crossmodal train --dataset {dataset} --data FILE --out models/{dataset}")
        if modalities or name or add_modality or extractors:
            raise ConfigError("--modalities, --name, --extractor and --add-modality are for workspace mode (without "
                              "--dataset)", hint="drop them, or drop --dataset to train on the workspace's features")
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
        label_noise=label_noise, alignment_noise=parse_alignment_noise(alignment_noise),
        extractors=parse_extractors(extractors))


def parse_extractors(items: Sequence[str]) -> dict[str, str]:
    """``["text=minilm", "image=hog-color"]`` -> ``{"text": "minilm", "image": "hog-color"}`` (canonical modalities).

    Raises:
        ConfigError: an item is not ``MODALITY=NAME``, names an unknown modality, or repeats one.
    """
    from crossmodal.types import canonical_modality

    chosen: dict[str, str] = {}
    for item in items:
        modality, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not modality or not name:
            raise ConfigError(f"--extractor {item!r} is not MODALITY=NAME", hint="write e.g. --extractor text=minilm")
        modality = canonical_modality(modality)
        if modality in chosen and chosen[modality] != name:
            raise ConfigError(f"--extractor gives {modality} twice ({chosen[modality]} and {name})",
                              hint="give one extractor per modality")
        chosen[modality] = name
    return chosen


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
    warnings: list[str] = []
    config = resolve_config(method, dataset=dataset, preset=preset, epochs=epochs, seed=seed, overrides=overrides,
                            warnings=warnings)
    train, noise = inject_noise(ds.train, label_noise=label_noise, alignment_noise=alignment_noise,
                                seed=config.seed, paired=ds.paired)
    extra = {"data_source": {"kind": "benchmark", "dataset": dataset, "path": str(data)}, **noise}
    result = fit_and_save(method, train, ds.val, ds.test, config=config, device=device, out=out, extra=extra,
                          progress=progress)
    result.features_used = [
        {"modality": m, "extractor": "precomputed", "key": f"precomputed-{fs.dim}",
         **{s: len(getattr(ds, s).get(m, ())) for s in ("train", "val", "test")},
         "why": f"the {fs.dim}-d {m} features of the {dataset} file and its own train/val/test split"}
        for m, fs in ds.train.items()]
    result.warnings = warnings
    return result


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
    A run refused before its first checkpoint (a config the method rejects) leaves no folder behind when it made one.

    Raises:
        ConfigError: fewer than two modalities with training items (nothing cross-modal to learn or evaluate).
    """
    usable = [m for m, fs in train.items() if len(fs) > 0]
    if len(usable) < 2:
        raise ConfigError(f"training needs labelled items of at least two modalities, got {usable or 'none'}",
                          hint="extract labelled files of a second modality (crossmodal extract DIR --modality M), "
                               "or add one to a trained model with --add-modality")
    out = Path(out)
    created = not out.exists()
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
    except BaseException:
        if created and not any(checkpoints.glob("*")):  # nothing to resume from: leave no empty models/NAME
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    model.extra.update(extra or {})
    metrics: dict[str, Any] = {}
    notes = []
    tested = [m for m, fs in (test or {}).items() if m in model.features and len(fs) > 0]
    if len(tested) >= 2:
        metrics = evaluate(model, {m: test[m] for m in tested})  # type: ignore[index]
    else:
        notes.append(f"no test table: the test split holds items of {', '.join(tested) or 'no modality'} only "
                     "(each class needs at least two items in two modalities to put one in the test split)")
    model.metrics = metrics
    model.save(out)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_curves(out)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(model_dir=out, model=model, metrics=metrics, notes=notes)


def choose_features(ws: Any, modalities: Sequence[str] | None, extractors: Mapping[str, str], *,
                    minimum: int = 2) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Which store table each modality trains on, and why; the rule of ``crossmodal train`` in a workspace.

    A modality's table is the one ``extractors`` names (by extractor name, key or key prefix), else its only table.
    With several tables and no choice it refuses rather than guess (the one extracted last is not necessarily the one
    wanted). Without ``modalities``, every modality with labelled items is used and the others are named in a note.

    Args:
        ws: the ``pipelines.workspace.Workspace``.
        modalities: the modalities asked for (None: every modality with labelled items).
        extractors: modality -> extractor name or key (``--extractor text=minilm``).
        minimum: how many modalities training needs (2; 1 when adding a modality to a model).

    Returns:
        ``(chosen, notes)``: modality -> ``{"modality", "extractor", "key", "items", "labelled", "why"}`` in
        canonical order, and one note per modality left out or items left unlabelled.

    Raises:
        ConfigError: a modality asked for has no features or no labelled item, a table is ambiguous or unknown, an
            ``--extractor`` names a modality not trained, or fewer than ``minimum`` modalities remain.
    """
    from crossmodal.types import MODALITIES, canonical_modality

    asked = [canonical_modality(m) for m in modalities] if modalities else None
    extract_hint = f"crossmodal extract DIR --modality {{m}} --workspace {ws.root}"
    chosen: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for modality in asked or MODALITIES:
        tables = []
        for key in ws.store.keys(modality):
            table = ws.store.table(modality, key)
            labels = table.metadata(["labels"]).column("labels").to_pylist() if table.shard_paths() else []
            if labels:
                tables.append({"modality": modality, "extractor": table.description.get("name", key), "key": key,
                               "items": len(labels), "labelled": sum(bool(x) for x in labels)})
        if not tables:
            if asked:
                raise ConfigError(f"{ws.store_dir}: no {modality} features in the store",
                                  hint=f"run {extract_hint.format(m=modality)}")
            continue
        listing = ", ".join(f"{t['extractor']} ({t['key']}, {t['items']} items)" for t in tables)
        wanted = extractors.get(modality)
        if wanted is not None:
            matches = [t for t in tables if wanted in (t["extractor"], t["key"])] or [
                t for t in tables if t["key"].startswith(wanted)]
            if len(matches) != 1:
                what = "matches several" if matches else "matches none"
                raise ConfigError(f"--extractor {modality}={wanted} {what} of the store's {modality} tables: "
                                  f"{listing}", hint=f"name one by its key, e.g. --extractor {modality}="
                                                     f"{(matches or tables)[0]['key']}")
            pick, why = matches[0], f"the table asked for ({modality}={wanted})"
        elif len(tables) > 1:
            names = {t["extractor"] for t in tables}
            example = tables[0]["extractor"] if len(names) == len(tables) else tables[0]["key"]
            raise ConfigError(f"the store holds {len(tables)} {modality} feature tables ({listing}); train will not "
                              "guess which one to use",
                              hint=f"choose one with --extractor {modality}={example} (repeatable, one per modality)")
        else:
            pick, why = tables[0], f"the store's only {modality} table"
        if pick["labelled"] == 0:
            if asked:
                raise ConfigError(f"{ws.store_dir}: none of the {pick['items']} {modality} items ({pick['key']}) "
                                  "carries a label, and training needs labels",
                                  hint="extract from DIR/<class>/<file> folders, or a manifest with a label column")
            notes.append(f"{modality}: {pick['items']} items in {pick['key']}, none labelled, so not trained")
            continue
        if pick["labelled"] < pick["items"]:
            notes.append(f"{modality}: {pick['items'] - pick['labelled']} of {pick['items']} items carry no label and "
                         "are left out of training and evaluation (an index still includes them)")
        chosen[modality] = {**pick, "why": why}
    stray = sorted(set(extractors) - set(chosen))
    if stray:
        raise ConfigError(f"--extractor names {', '.join(stray)}, which this run does not train",
                          hint=f"drop it, or add it to --modalities ({', '.join([*chosen, *stray])})")
    if len(chosen) < minimum:
        have = ", ".join(chosen) or "none"
        missing = next((m for m in MODALITIES if m not in chosen), "text")
        raise ConfigError(f"training needs labelled features of at least {minimum} modalities; the store has "
                          f"labelled features of {have}",
                          hint=f"extract a second, labelled modality: {extract_hint.format(m=missing)}")
    return chosen, notes


def features_rows(features_used: Sequence[Mapping[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    """Rows ``modality, extractor (key), train, val, test, why`` of ``TrainResult.features_used``, with columns."""
    rows = [[f["modality"], f"{f['extractor']} ({f['key']})", f["train"], f["val"], f["test"], f["why"]]
            for f in features_used]
    return rows, ["modality", "extractor (key)", "train", "val", "test", "why"]


def write_curves(model_dir: Path) -> Path:
    """Plot ``train_log.jsonl`` into ``curves.png`` next to it."""
    from pipelines.plots import plot_training_curves

    path = model_dir / "curves.png"
    plot_training_curves(read_training_log(model_dir / LOG_FILE), path)
    return path


def resolve_config(method: str, *, dataset: str | None = None, preset: str | None = None, epochs: int | None = None,
                   seed: int | None = None, overrides: Sequence[str] = (),
                   warnings: list[str] | None = None) -> MethodConfig:
    """The method's config: defaults, then a preset, then ``epochs``/``seed``, then ``key=value`` overrides.

    Without ``preset``, ``presets/<method>-<dataset>.json`` is used when it exists (the paper's values there).

    Args:
        warnings: when given, receives a warning if the epochs end below ``FEW_EPOCHS`` of those the preset (or the
            method's defaults) set, with the number it expects.

    Raises:
        ConfigError: an unknown preset or config key, or a value of the wrong type.
    """
    cls = get_method(method).Config
    path: Traversable | None = (preset_path(preset) if preset else PRESETS_DIR / f"{method}-{dataset}.json" if dataset
                                else None)
    from_preset = path is not None and path.is_file()
    config = load_preset(cls, path) if from_preset else cls()
    shortcuts = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
    resolved = with_overrides(with_overrides(config, shortcuts), list(overrides))
    if warnings is not None and resolved.epochs < FEW_EPOCHS * config.epochs:
        tuned = (f"the preset {path.name.removesuffix('.json')} was" if from_preset and path is not None
                 else f"{method}'s defaults were")
        count = f"{resolved.epochs} epoch{'s' if resolved.epochs != 1 else ''}"
        warnings.append(f"{count} is far fewer than the {config.epochs} {tuned} tuned for; "
                        f"expect a MAP near chance (DRCL's paper presets at 10 epochs score near it). Use --epochs "
                        f"{config.epochs}, or leave --epochs out")
    return resolved


def preset_path(preset: str) -> Traversable:
    """``presets/NAME.json`` for a preset name, or the file itself.

    Raises:
        ConfigError: neither exists.
    """
    for candidate in (Path(preset), PRESETS_DIR / f"{preset}.json"):
        if candidate.is_file():
            return candidate
    names = sorted(p.name.removesuffix(".json") for p in PRESETS_DIR.iterdir() if p.name.endswith(".json"))
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
