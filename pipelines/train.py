"""``crossmodal train``: fit a method on a data source (``pipelines.datasource``) and write a model folder.

On a benchmark file or a synthetic set (``train_on_source``) the source's own split is used; in a workspace
(``train_in_workspace``) the store's tables are chosen per modality (``choose_features``, which says why) and split by
seed. Either way the card records the source, so ``crossmodal evaluate`` reloads the same test split.

A model folder holds ``model.safetensors`` and ``card.json`` (crossmodal.model), ``config.json`` (the resolved
hyper-parameters), ``train_log.jsonl`` (one line per epoch and stage) and ``curves.png``. While training, it also holds
``checkpoints/``: running the same command again after a kill resumes there, and it is removed once the model is saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodal.config import MethodConfig, load_preset, with_overrides
from crossmodal.device import keep_freed_memory, resolve_device
from crossmodal.errors import ConfigError, NotTrainedError
from crossmodal.evaluation import evaluate
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.methods import create_method, get_method
from crossmodal.model import CrossModalModel, FeatureIdentity, read_card
from crossmodal.types import MODALITIES, canonical_modality
from pipelines.datasource import BenchmarkFile, DataSource, SyntheticSource, WorkspaceSource, card_source
from pipelines.progress import ProgressBar, TrainingLog, read_training_log
from pipelines.workspace import DEFAULT_WORKSPACE, SPLIT_FRACTIONS, SPLITS, Workspace

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only annotations name it

PRESETS_DIR: Traversable = resources.files("crossmodal") / "presets"
"""The presets shipped inside the package, found where the package is installed (a wheel, a zip or this tree)."""
CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
FEW_EPOCHS = 0.25
"""A run below this fraction of the epochs its preset (or its method's defaults) was tuned for gets a warning: DRCL's
paper presets at 10 of their 200 epochs score near chance."""

SMALL_DATA_ITEMS = 2000
"""DRCL on fewer training items than this (in its largest modality) trains on one CPU thread (``_one_cpu_thread``): the
auto recipe's widths there are 256-512 (crossmodal.recipe), too small to split across threads."""


@dataclass(frozen=True)
class TrainOptions:
    """The options of a training run that every kind of source takes (``crossmodal train``'s common flags).

    Attributes:
        method: registry name of the method.
        epochs, seed: shortcuts for ``--set epochs=N`` and ``--set seed=S`` (None: the config's).
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``key=value`` config overrides, applied last.
        label_noise: rate of symmetric label noise injected into the training split.
        alignment_noise: ``partial:R`` or ``complete:R`` correspondence noise for paired data.
        progress: show a progress bar on stderr.
    """

    method: str = "drcl"
    epochs: int | None = None
    seed: int | None = None
    device: str = "auto"
    overrides: tuple[str, ...] = ()
    label_noise: float = 0.0
    alignment_noise: str | None = None
    progress: bool = True


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
    source: DataSource,
    options: TrainOptions = TrainOptions(),
    *,
    out: str | Path | None = None,
    preset: str | None = None,
    modalities: str | None = None,
    name: str | None = None,
    add_modality: str | None = None,
    extractors: Sequence[str] = (),
) -> TrainResult:
    """``crossmodal train`` on ``source`` (``pipelines.datasource.data_source`` reads it from the options): a benchmark
    file or a synthetic set into the folder ``out`` (``preset`` as ``train_on_source``), or a workspace's store into
    ``models/NAME``.

    ``extractors`` are ``MODALITY=NAME`` items (workspace) naming the store table to train on where a modality has
    several. In a workspace the split seed is the source's, and the method's seed ``options.seed`` (default: the split
    seed).

    Raises:
        ConfigError: options of the other kind of source are given, or ``out`` is missing for a file or synthetic set.
    """
    if not isinstance(source, WorkspaceSource):
        if out is None:
            raise ConfigError(f"training on {source.describe()} needs --out DIR (the model folder to write)",
                              hint=f"e.g. --out models/{getattr(source, 'dataset', getattr(source, 'name', 'm'))}")
        if modalities or name or add_modality or extractors:
            raise ConfigError("--modalities, --name, --extractor and --add-modality are for workspace mode (without "
                              "--dataset)", hint="drop them, or drop --dataset to train on the workspace's features")
        return train_on_source(source, out, options, preset=preset)
    if out is not None or preset is not None:
        raise ConfigError("--out and --preset need --dataset (benchmark-file or synthetic mode)",
                          hint="add --dataset NAME, or drop them to train in the workspace (models/NAME)")
    return train_in_workspace(
        workspace=source.workspace, method=options.method,
        modalities=[m.strip() for m in modalities.split(",") if m.strip()] if modalities else None, name=name,
        epochs=options.epochs, seed=source.split_seed if options.seed is None else options.seed,
        split_seed=source.split_seed, device=options.device, overrides=list(options.overrides),
        add_modality=add_modality, label_noise=options.label_noise,
        alignment_noise=parse_alignment_noise(options.alignment_noise), progress=options.progress,
        extractors=parse_extractors(extractors))


def parse_extractors(items: Sequence[str]) -> dict[str, str]:
    """``["text=minilm", "image=hog-color"]`` -> ``{"text": "minilm", "image": "hog-color"}`` (canonical modalities).

    Raises:
        ConfigError: an item is not ``MODALITY=NAME``, names an unknown modality, or repeats one.
    """
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


def train_on_source(
    source: BenchmarkFile | SyntheticSource,
    out: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    preset: str | None = None,
) -> TrainResult:
    """Train ``options.method`` on a benchmark file or a synthetic set with its own split; write the model folder
    ``out`` and evaluate it on the test split.

    Args:
        source: the data (``pipelines.datasource``); recorded in the card.
        out: the model folder to write (a kill mid-run resumes when the same command runs again).
        options: method, epochs, seed, device, overrides, noise and progress (``TrainOptions``).
        preset: a preset name (``presets/NAME.json``) or file; default ``<method>-<dataset>`` when it exists.

    Raises:
        ConfigError: an unknown preset or config key, or a bad noise spec.
        DatasetFormatError: the file does not match the dataset's format.
    """
    ds = source.load()
    name = source.dataset if isinstance(source, BenchmarkFile) else source.name
    warnings: list[str] = []
    notes: list[str] = []
    config = resolve_config(options.method, dataset=name, preset=preset, epochs=options.epochs, seed=options.seed,
                            overrides=options.overrides, warnings=warnings, data=ds, notes=notes,
                            device=options.device)
    train, noise = inject_noise(ds.train, label_noise=options.label_noise, alignment_noise=options.alignment_noise,
                                seed=config.seed, paired=ds.paired)
    result = fit_and_save(options.method, train, ds.val, ds.test, config=config, device=options.device, out=out,
                          source=source, extra=noise, progress=options.progress)
    result.features_used = [
        {"modality": m, "extractor": "precomputed", "key": f"precomputed-{fs.dim}",
         **{s: len(getattr(ds, s).get(m, ())) for s in SPLITS},
         "why": f"the {fs.dim}-d {m} features of {source.describe()} and its own train/val/test split"}
        for m, fs in ds.train.items()]
    result.warnings = warnings
    result.notes = [*notes, *result.notes]
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
    source: DataSource | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
    release: bool = False,
) -> TrainResult:
    """Fit, evaluate on ``test`` (when it has two modalities), and write the model folder (see the module docstring).

    ``release``: the caller hands ``train`` and ``val`` over (dicts it holds no other reference to): they are emptied
    once the model is fitted, so that the evaluation's memory reuses their features' instead of adding to it.

    The card records ``source`` (where ``crossmodal evaluate`` finds the test split again) and ``extra`` (the method's
    facts, the classes, the noise injected).
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
    if release:
        for split in (train, val):
            if isinstance(split, dict):
                split.clear()
    model.extra.update(extra or {})
    model.source = source.record() if source is not None else None
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


def choose_features(ws: Workspace, modalities: Sequence[str] | None, extractors: Mapping[str, str], *,
                    minimum: int = 2) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Which store table each modality trains on, and why; the rule of ``crossmodal train`` in a workspace.

    A modality's table is the one ``extractors`` names (by extractor name, key or key prefix), else its only table.
    With several tables and no choice it refuses rather than guess (the one extracted last is not necessarily the one
    wanted). Without ``modalities``, every modality with labelled items is used and the others are named in a note.

    Args:
        ws: the workspace (its ``feature_tables`` summarise each table).
        modalities: the modalities asked for (None: every modality with labelled items).
        extractors: modality -> extractor name or key (``--extractor text=minilm``).
        minimum: how many modalities training needs (2; 1 when adding a modality to a model).

    Returns:
        ``(chosen, notes)``: modality -> the ``TableInfo`` fields as a dict (``modality``, ``extractor``, ``key``,
            ``items``, ``labelled``, ``modified``) plus ``why``, in canonical order, and one note per modality left out
            or items left unlabelled.

    Raises:
        ConfigError: a modality asked for has no features or no labelled item, a table is ambiguous or unknown, an
            ``--extractor`` names a modality not trained, or fewer than ``minimum`` modalities remain.
    """
    asked = [canonical_modality(m) for m in modalities] if modalities else None
    extract_hint = f"crossmodal extract DIR --modality {{m}} --workspace {ws.root}"
    chosen: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for modality in asked or MODALITIES:
        tables = [asdict(t) for t in ws.feature_tables(modality)]
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


# ------------------------------------------------------------------------------------------------- workspace mode
@dataclass
class WorkspaceTrainResult(TrainResult):
    """A model trained in a workspace: ``model_dir``, ``model``, ``metrics`` (as every training run), and what the
    workspace chose: items per modality and split, notes (presets applied, modalities kept), wall time."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form: model name and folder, method, modalities, extractor keys, classes, counts, config, notes,
        metrics, seconds."""
        return {
            "model": self.model_dir.name, "path": str(self.model_dir), "method": self.model.method,
            "modalities": list(self.model.features),
            "features": {m: f.extractor_key for m, f in self.model.features.items()},
            "classes": self.model.extra.get("classes"), "counts": self.counts, "config": self.model.config.to_dict(),
            "features_used": self.features_used, "notes": self.notes, "warnings": self.warnings,
            "metrics": self.metrics, "seconds": self.seconds,
        }


def train_in_workspace(
    *,
    workspace: str | os.PathLike = DEFAULT_WORKSPACE,
    method: str = "drcl",
    modalities: Sequence[str] | None = None,
    name: str | None = "default",
    epochs: int | None = None,
    seed: int | None = 1,
    split_seed: int | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    add_modality: str | None = None,
    label_noise: float = 0.0,
    alignment_noise: str | tuple[str, float] | None = None,
    progress: bool = True,
    extractors: Mapping[str, str] | None = None,
) -> WorkspaceTrainResult:
    """Train a model on the workspace's labelled features, evaluate it on the test split, save it as ``models/NAME``.

    Args:
        workspace: the workspace folder.
        method: a registered method (``crossmodal.methods.list_methods()``).
        modalities: which modalities (default: every modality with labelled features in the store).
        name: the model's name (None: ``default``): ``models/NAME`` (model.safetensors, card.json, config.json,
            train_log.jsonl, curves.png). Rerunning the same command after a kill resumes from its checkpoints.
        epochs: overrides the method's (or the small-data preset's) epochs.
        seed: the method's seed, and the split seed unless ``split_seed`` is given (None: 1).
        split_seed: the seed of the store's split (``Workspace.splits``); None: ``seed``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``key=value`` items for the method's config (applied last).
        add_modality: train only this modality against the saved model ``NAME`` (DRCL: its frozen prior), leaving the
            other encoders as they are; the split seed and classes are the model's.
        label_noise: rate of symmetric label noise injected into the training split (0 = none).
        alignment_noise: ``"partial:R"`` / ``"complete:R"`` (or ``(kind, R)``) alignment noise for paired data.
        progress: show a progress bar per training stage on stderr.
        extractors: modality -> extractor name or key, for a modality with several tables in the store (the rule:
            ``pipelines.train.choose_features``).

    Returns:
        A :class:`WorkspaceTrainResult` (``model_dir``, ``model``, ``metrics`` as ``crossmodal.evaluation.evaluate``
        gives them, and what the workspace chose: ``features_used``, ``notes``, ``warnings``); ``.to_dict()`` is its
        JSON form.

    Raises:
        ConfigError: unknown method or override, an invalid name, fewer than two modalities with labelled features,
            a modality with several feature tables and no ``extractors`` choice, or a modality that cannot be added.
        NotTrainedError: ``add_modality`` names a model that does not exist.
    """
    started = time.perf_counter()
    ws = Workspace(workspace)
    name = "default" if name is None else name
    ws.model_dir(name)  # refuse a bad name before any work
    seed = 1 if seed is None else seed
    split_seed = seed if split_seed is None else split_seed
    if add_modality is not None:
        return _add_modality(ws, canonical_modality(add_modality), name=name, epochs=epochs, device=device,
                             overrides=overrides, progress=progress, started=started, extractors=extractors or {})
    chosen, notes = choose_features(ws, modalities, extractors or {})
    modalities = list(chosen)
    keys = {m: c["key"] for m, c in chosen.items()}
    classes = ws.class_names(modalities, keys=keys)
    source = WorkspaceSource(ws.root, split_seed=split_seed, keys=keys, classes=tuple(classes))
    data = source.load()
    largest = max(len(fs) for fs in data.train.values())
    warnings: list[str] = []
    config = resolve_config(method, epochs=epochs, seed=seed, overrides=overrides, warnings=warnings, data=data,
                            notes=notes, device=device)  # DRCL: the auto recipe, fitted to these features
    if isinstance(alignment_noise, tuple):
        alignment_noise = f"{alignment_noise[0]}:{alignment_noise[1]}"
    train, noise = inject_noise(data.train, label_noise=label_noise, alignment_noise=alignment_noise, seed=seed,
                                paired=data.paired)
    counts = {m: {s: len(getattr(data, s)[m]) for s in SPLITS} for m in modalities}
    val, test = dict(data.val), data.test
    del data  # train and val are handed to fit_and_save, which frees them before the evaluation
    with _one_cpu_thread(method == "drcl" and largest < SMALL_DATA_ITEMS):
        result = fit_and_save(method, train, val, test, config=config, device=device,
                              out=ws.model_dir(name), features={m: ws.feature_identity(m, keys[m]) for m in modalities},
                              source=source, extra={"classes": classes, **noise}, progress=progress, release=True)
    return _summary(result.model, ws.model_dir(name), counts=counts, notes=notes + result.notes, started=started,
                    features_used=_features_used(chosen, counts, split_seed), warnings=warnings)


def _features_used(chosen: Mapping[str, Mapping[str, Any]], counts: Mapping[str, Mapping[str, int]],
                   seed: int) -> list[dict[str, Any]]:
    """Rows of ``TrainResult.features_used``: each modality's table, its split counts and why."""
    return [{"modality": m, "extractor": c["extractor"], "key": c["key"], **counts[m],
             "why": f"{c['why']}; its {c['labelled']} labelled items split {SPLIT_FRACTIONS['train']:.0%}/"
                    f"{SPLIT_FRACTIONS['val']:.0%}/{SPLIT_FRACTIONS['test']:.0%} per class (seed {seed})"}
            for m, c in chosen.items()]


@contextlib.contextmanager
def _one_cpu_thread(enabled: bool) -> Iterator[None]:
    """Run torch on one CPU thread while ``enabled``: the small-data preset's 512-wide MLPs on batches of 64 are too
    small to split, and on two busy cores two threads took four times the wall time of one (thread hand-offs)."""
    import torch

    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _add_modality(ws: Workspace, modality: str, *, name: str, epochs: int | None, device: str,
                  overrides: Sequence[str], progress: bool, started: float,
                  extractors: Mapping[str, str]) -> WorkspaceTrainResult:
    """Train ``modality`` against the saved model ``name`` (its prior), keep its other encoders, re-evaluate, save."""
    target = ws.model_dir(name)
    if not (target / "card.json").is_file():
        raise NotTrainedError(f"{ws.root}: no trained model {name!r} to add {modality} to",
                              hint=f"train it first: crossmodal train --name {name} --workspace {ws.root}")
    card = read_card(target)
    method = create_method(card["method"])
    if not hasattr(method, "add_modality"):
        raise ConfigError(f"method {card['method']!r} cannot add a modality to a trained model",
                          hint="retrain on every modality: crossmodal train --modalities ...")
    source = card_source(card, model_dir=target)
    if not isinstance(source, WorkspaceSource):
        raise ConfigError(f"model {name!r} was trained on {source.describe()}, not on a workspace's store",
                          hint="retrain on every modality in the workspace: crossmodal train --modalities ...")
    chosen, notes = choose_features(ws, [modality], extractors, minimum=1)
    key = chosen[modality]["key"]
    data = WorkspaceSource(ws.root, split_seed=source.split_seed, keys={modality: key}, classes=source.classes).load()
    model = CrossModalModel.load(target, device=resolve_device(device))
    config = with_overrides(model.config, {"epochs": epochs} if epochs is not None else {})
    config = with_overrides(config, list(overrides))
    bar = ProgressBar() if progress else None
    try:
        with _one_cpu_thread(len(data.train[modality]) < SMALL_DATA_ITEMS):
            model = method.add_modality(model, modality, data.train[modality], data.val[modality],
                                        feature=ws.feature_identity(modality, key), config=config,
                                        callbacks=[TrainingLog(target / LOG_FILE), *([bar] if bar else [])],
                                        checkpoint_dir=target / f"{CHECKPOINTS}-{modality}")
    finally:
        if bar is not None:
            bar.close()
    test = {**source.load().test, modality: data.test[modality]}
    model.metrics = evaluate(model, {m: fs for m, fs in test.items() if len(fs) > 0})
    model.save(target)
    (target / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_curves(target)
    shutil.rmtree(target / f"{CHECKPOINTS}-{modality}", ignore_errors=True)
    notes.append(f"{modality} trained against the saved prior of {name!r}; the other encoders "
                 f"({', '.join(m for m in card['features'] if m != modality)}) are unchanged")
    counts = {modality: {s: len(getattr(data, s)[modality]) for s in SPLITS}}
    return _summary(model, target, counts=counts, notes=notes, started=started,
                    features_used=_features_used(chosen, counts, source.split_seed), warnings=[])


def _summary(model: Any, path: Path, *, counts: dict[str, Any], notes: list[str], started: float,
             features_used: list[dict[str, Any]], warnings: list[str]) -> WorkspaceTrainResult:
    """The result; the caller prints its choices (``crossmodal train`` and the demo both do)."""
    return WorkspaceTrainResult(model_dir=path, model=model, metrics=model.metrics, counts=counts, notes=notes,
                                features_used=features_used, warnings=warnings,
                                seconds=round(time.perf_counter() - started, 2))


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
                   warnings: list[str] | None = None, data: CrossModalDataset | None = None,
                   notes: list[str] | None = None, device: str = "auto") -> MethodConfig:
    """The method's config: defaults, then a preset (or the auto recipe), then ``epochs``/``seed``, then ``key=value``
    overrides.

    Without ``preset``, ``presets/<method>-<dataset>.json`` is used when it exists (the paper's values there). With
    ``data``, DRCL's default is the auto recipe (crossmodal.recipe: batch, rates, widths, space and epochs fitted to the
    training split's shape, then a short learning-rate search on the validation split) when the data is far from the
    paper dataset's shape or no paper dataset is named; ``preset="paper"`` picks the dataset's paper preset and
    ``preset="auto"`` (or ``<method>-auto``) the recipe for any method.

    Args:
        warnings: when given, receives a warning if the epochs end below ``FEW_EPOCHS`` of those the preset (or the
            method's defaults) set, with the number it expects.
        data: the training data (its ``train`` and ``val`` splits) the recipe fits; None: presets only.
        notes: when given, receives which preset was chosen and why, and the recipe's choices and search.
        device: where the learning-rate search trains.

    Raises:
        ConfigError: an unknown preset or config key, a value of the wrong type, or ``auto`` without ``data``.
    """
    from crossmodal.recipe import decide_preset, lr_fields, search_learning_rate

    decision = decide_preset(method, dataset=dataset, preset=preset, train=data.train if data is not None else None)
    preset, said = decision.preset, notes if notes is not None else []
    said += [decision.note] if decision.note else []
    cls = get_method(method).Config
    path: Traversable | None = (preset_path(preset) if preset else PRESETS_DIR / f"{method}-{dataset}.json" if dataset
                                else None)
    from_preset = path is not None and path.is_file()
    config = load_preset(cls, path) if from_preset else cls()
    config = decision.recipe.apply(config) if decision.recipe is not None else config
    shortcuts = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
    resolved = with_overrides(with_overrides(config, shortcuts), list(overrides))
    if decision.recipe is not None and data is not None:
        given = [o for o in overrides if o.partition("=")[0].strip() in lr_fields(cls)]
        if given:  # the user's rate stands
            said.append(f"learning-rate search: skipped, the rate was given ({', '.join(given)})")
        else:
            resolved, _ = search_learning_rate(method, resolved, data.train, data.val, device=resolve_device(device),
                                               say=said.append)
    if warnings is not None and resolved.epochs < FEW_EPOCHS * config.epochs:
        tuned = (f"the auto recipe {method}-auto was" if decision.recipe is not None else
                 f"the preset {path.name.removesuffix('.json')} was" if from_preset and path is not None
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
