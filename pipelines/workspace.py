"""The workspace: one folder holding a project's feature store, trained models, indexes and run logs.

Layout (ARCHITECTURE.md "On disk")::

    crossmodal-workspace/
      store/<modality>/<extractor key>/...   features (extractors/store.py)
      store/splits-<seed>.json               content hash -> train | val | test, fixed once drawn
      models/NAME/                           model.safetensors, card.json, config.json, train_log.jsonl, curves.png
      index/NAME/<modality>/                 one index per gallery modality (pipelines/index.py)
      runs/                                  logs of extraction runs

Labels are the class names the store holds (folder names or manifest labels); they map to indices through the sorted
union of the names over the modalities used, and the model card records that list. Splits are drawn per class, so each
class keeps the split fractions, and items of different modalities that share an item id and a label (a pair: the same
file name under the same class folder) fall in the same split, so paired data stays paired.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.common.files import atomic_write
from crossmodal.errors import ConfigError, DatasetFormatError, FeatureMismatchError, NotTrainedError
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.types import MODALITIES, canonical_modality
from extractors.store import FeatureStore
from pipelines.train import TrainResult

DEFAULT_WORKSPACE = Path("crossmodal-workspace")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
"""Per class: 20% test and 10% validation (each at least one item once a class has three), the rest training."""

SMALL_DATA_ITEMS = 2000
"""DRCL on fewer training items than this (in its largest modality) starts from ``SMALL_DATA_PRESET``."""

SMALL_DATA_PRESET = "drcl-small"
"""The preset (``presets/drcl-small.json``) DRCL starts from on small datasets. The paper's 4096-4096-2048 MLPs (~42 M
parameters per modality) and batches of 1024 suit its 2,000-40,000-item benchmarks; on a few hundred items they would
see one partial batch per epoch, and its per-modality learning rates (Wikipedia's 6e-6 for images) would barely move in
the epochs a small dataset needs. The preset: 512-512 hidden, a 128-d common space, batches of 64, 100 epochs (q reaches
1 at the last) and Adam at 1e-3 for every modality. ``--set`` overrides any of these."""


NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
"""Model names: letters, digits, ``-``, ``_`` and ``.`` (not first), at most 100 characters. A name becomes a folder
(``models/NAME``, ``index/NAME``), so separators, ``..``, leading dots and the empty name must never reach a path."""


def check_name(name: str) -> str:
    """``name`` when it is a valid model name (``NAME_PATTERN``).

    Raises:
        ConfigError: it is not, with the rule and a corrected suggestion.
    """
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return name
    suggestion = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:100] or "my-model"
    raise ConfigError(f"model name {name!r} is not a name (it becomes the folder models/NAME)",
                      hint=f"use letters, digits, '-', '_' and '.' (not first), e.g. --name {suggestion}")


@dataclass(frozen=True)
class StoreTable:
    """The rows of one (modality, extractor key) table of the store.

    Attributes:
        modality: the modality.
        key: the extractor key.
        description: the table's ``extractor.json`` (name, config, dim ...).
        X: float32 (n, dim) features (memory-mapped when possible).
        content_hash, item_id, source_path: (n,) str.
        labels: n tuples of class names (empty = unlabelled).
        split: (n,) the split a manifest fixed, or None.
    """

    modality: str
    key: str
    description: dict[str, Any]
    X: np.ndarray
    content_hash: list[str]
    item_id: list[str]
    source_path: list[str]
    labels: list[tuple[str, ...]]
    split: list[str | None]

    def __len__(self) -> int:
        return len(self.content_hash)

    @property
    def labelled(self) -> np.ndarray:
        """bool (n,): which rows carry at least one label."""
        return np.array([bool(labels) for labels in self.labels], dtype=bool)


class Workspace:
    """A workspace folder (created on first write).

    Args:
        root: the folder; ``./crossmodal-workspace`` by default.
    """

    def __init__(self, root: str | os.PathLike = DEFAULT_WORKSPACE):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def store(self) -> FeatureStore:
        return FeatureStore(self.store_dir)

    def model_dir(self, name: str) -> Path:
        """``models/NAME``, for a ``name`` that is an identifier (``check_name``), so it stays inside the workspace.

        Raises:
            ConfigError: ``name`` is not an identifier.
        """
        return self.models_dir / check_name(name)

    # ------------------------------------------------------------------------------------------------------ features
    def feature_key(self, modality: str) -> str:
        """The extractor key whose features stand for ``modality``: its only table, or the one extracted last.

        Raises:
            ConfigError: the store has no features of ``modality``.
        """
        modality = canonical_modality(modality)
        keys = [k for k in self.store.keys(modality) if _shards(self.store_dir / modality / k)]
        if not keys:
            raise ConfigError(f"{self.store_dir}: no {modality} features in the store",
                              hint=f"run crossmodal extract DIR --modality {modality} --workspace {self.root}")
        return max(keys, key=lambda k: (max(p.stat().st_mtime for p in _shards(self.store_dir / modality / k)), k))

    def feature_modalities(self, *, labelled: bool = False) -> list[str]:
        """Modalities with features in the store (with a labelled item when ``labelled``), in canonical order."""
        found = []
        for modality in MODALITIES:
            if not any(_shards(self.store_dir / modality / k) for k in self.store.keys(modality)):
                continue
            labels = _metadata(self.store_dir / modality / self.feature_key(modality), ["labels"])["labels"]
            if not labelled or any(labels):
                found.append(modality)
        return found

    def table(self, modality: str, key: str | None = None) -> StoreTable:
        """All rows of one modality's features (``key`` or ``feature_key(modality)``), one per content hash."""
        modality = canonical_modality(modality)
        key = key or self.feature_key(modality)
        feature_table = self.store.table(modality, key)
        X, meta = feature_table.read()
        columns = meta.to_pydict()
        return StoreTable(
            modality=modality, key=key, description=feature_table.description, X=X,
            content_hash=columns["content_hash"], item_id=columns["item_id"], source_path=columns["source_path"],
            labels=[tuple(labels or ()) for labels in columns["labels"]], split=columns["split"])

    def feature_identity(self, modality: str, key: str | None = None) -> Any:
        """The ``FeatureIdentity`` (extractor name, key, width) a model records for ``modality``'s features."""
        from crossmodal.model import FeatureIdentity

        key = key or self.feature_key(modality)
        description = self.store.table(modality, key).description
        return FeatureIdentity(extractor_name=description["name"], extractor_key=key, dim=int(description["dim"]))

    def class_names(self, modalities: Sequence[str], *, keys: dict[str, str] | None = None) -> list[str]:
        """The sorted union of the class names of ``modalities``: index i of a label vector is class ``names[i]``."""
        names: set[str] = set()
        for modality in modalities:
            names.update(label for labels in self.table(modality, (keys or {}).get(modality)).labels
                         for label in labels)
        return sorted(names)

    # -------------------------------------------------------------------------------------------------------- splits
    def splits_path(self, seed: int) -> Path:
        return self.store_dir / f"splits-{seed}.json"

    def splits(self, seed: int) -> dict[str, str]:
        """content hash -> ``train`` | ``val`` | ``test`` for every labelled item of the store, drawn with ``seed``.

        Items already recorded in ``store/splits-<seed>.json`` keep their split; new ones are drawn so that each class
        comes back towards ``SPLIT_FRACTIONS``, and the file is updated. A split a manifest gave wins. Items that share
        an item id and their labels (a pair, across modalities or extractors) share a split.
        """
        path = self.splits_path(seed)
        recorded: dict[str, str] = json.loads(path.read_text())["splits"] if path.is_file() else {}
        units: dict[tuple[str, tuple[str, ...]], list[tuple[str, str | None]]] = {}
        for modality, key in self.store.tables():
            meta = _metadata(self.store_dir / modality / key, ["content_hash", "item_id", "labels", "split"])
            for h, item, labels, split in zip(meta["content_hash"], meta["item_id"], meta["labels"], meta["split"]):
                if labels:
                    units.setdefault((item, tuple(sorted(labels))), []).append((h, split))
        assigned = _draw_splits(units, recorded, seed=seed)
        if assigned != recorded:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({"seed": seed, "fractions": SPLIT_FRACTIONS, "splits": assigned}, indent=0,
                                          sort_keys=True))
        return assigned

    def datasets(
        self,
        modalities: Sequence[str] | None = None,
        *,
        seed: int = 1,
        keys: dict[str, str] | None = None,
        classes: Sequence[str] | None = None,
    ) -> CrossModalDataset:
        """The labelled items of ``modalities`` as train/val/test FeatureSets, split by ``splits(seed)``.

        Rows are sorted by item id, so when every modality holds the same ids (the same file names under the same class
        folders) row i of each modality is one pair and the dataset is ``paired``.

        Args:
            modalities: which modalities (default: every modality with labelled features).
            seed: the split seed.
            keys: modality -> extractor key (default: ``feature_key``).
            classes: the class names in index order (default: the sorted union over ``modalities``); a model being
                extended passes the list its card recorded.

        Returns:
            A CrossModalDataset whose FeatureSets have ids = item ids; multi-hot labels when any item has several.

        Raises:
            ConfigError: no labelled features, or an item's class is not in ``classes``.
        """
        modalities = [canonical_modality(m) for m in (modalities or self.feature_modalities(labelled=True))]
        if not modalities:
            raise ConfigError(f"{self.store_dir}: the store holds no labelled features",
                              hint=f"run crossmodal extract DIR --modality image --workspace {self.root} "
                                   "(DIR/<class>/<file>, or a manifest with labels)")
        keys = {m: (keys or {}).get(m) or self.feature_key(m) for m in modalities}
        tables = {m: self.table(m, keys[m]) for m in modalities}
        names = list(classes) if classes is not None else sorted(
            {label for t in tables.values() for labels in t.labels for label in labels})
        index = {name: i for i, name in enumerate(names)}
        multilabel = any(len(labels) > 1 for t in tables.values() for labels in t.labels)
        assignment = self.splits(seed)
        parts: dict[str, dict[str, FeatureSet]] = {s: {} for s in SPLITS}
        for modality, table in tables.items():
            unknown = sorted({label for labels in table.labels for label in labels if label not in index})
            if unknown:
                raise ConfigError(f"{modality} items have classes {unknown[:5]} the model does not know ({len(names)} "
                                  "classes)", hint="train a new model on every modality instead of adding one")
            for split in SPLITS:
                rows = [i for i, h in enumerate(table.content_hash) if assignment.get(h) == split]
                rows.sort(key=lambda i: table.item_id[i])
                parts[split][modality] = _featureset(table, rows, index, multilabel=multilabel)
        empty = [m for m in modalities if len(parts["train"][m]) == 0]
        if empty:
            raise DatasetFormatError(f"no labelled training items for {', '.join(empty)}",
                                     hint="extract more labelled files (each class needs at least one)")
        paired = all(len({tuple(fs.ids) for fs in parts[s].values()}) == 1 for s in SPLITS)
        return CrossModalDataset(name=f"workspace:{self.root}", train=parts["train"], val=parts["val"],
                                 test=parts["test"], paired=paired)


# ---------------------------------------------------------------------------------------------------------- training
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
        seed: the split seed and the method's seed (None: 1).
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
    from pipelines.train import choose_features, fit_and_save, inject_noise, resolve_config

    started = time.perf_counter()
    ws = Workspace(workspace)
    name = "default" if name is None else name
    ws.model_dir(name)  # refuse a bad name before any work
    seed = 1 if seed is None else seed
    if add_modality is not None:
        return _add_modality(ws, canonical_modality(add_modality), name=name, epochs=epochs, device=device,
                             overrides=overrides, progress=progress, started=started, extractors=extractors or {})
    chosen, notes = choose_features(ws, modalities, extractors or {})
    modalities = list(chosen)
    keys = {m: c["key"] for m, c in chosen.items()}
    classes = ws.class_names(modalities, keys=keys)
    data = ws.datasets(modalities, seed=seed, keys=keys, classes=classes)
    largest = max(len(fs) for fs in data.train.values())
    preset = SMALL_DATA_PRESET if method == "drcl" and largest < SMALL_DATA_ITEMS else None
    if preset is not None:
        notes.append(f"small dataset (at most {largest} training items per modality): DRCL uses the preset {preset} "
                     "(hidden 512-512, a 128-d space, batch 64, 100 epochs, Adam 1e-3) instead of the paper's "
                     "4096-4096-2048 and batch 1024; --set key=value overrides it")
    warnings: list[str] = []
    config = resolve_config(method, preset=preset, epochs=epochs, seed=seed, overrides=overrides, warnings=warnings)
    if isinstance(alignment_noise, tuple):
        alignment_noise = f"{alignment_noise[0]}:{alignment_noise[1]}"
    train, noise = inject_noise(data.train, label_noise=label_noise, alignment_noise=alignment_noise, seed=seed,
                                paired=data.paired)
    source = {"kind": "workspace", "workspace": str(ws.root.resolve()), "split_seed": seed, "paired": data.paired}
    with _one_cpu_thread(preset is not None):
        result = fit_and_save(method, train, data.val, data.test, config=config, device=device,
                              out=ws.model_dir(name), features={m: ws.feature_identity(m, keys[m]) for m in modalities},
                              extra={"data_source": source, "classes": classes, **noise}, progress=progress)
    counts = {m: {s: len(getattr(data, s)[m]) for s in SPLITS} for m in modalities}
    return _summary(result.model, ws.model_dir(name), counts=counts, notes=notes + result.notes, started=started,
                    features_used=_features_used(chosen, counts, seed), warnings=warnings)


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


def load_test_split(card: Mapping[str, Any], *, model_dir: str | os.PathLike | None = None) -> dict[str, FeatureSet]:
    """The test FeatureSets a workspace model was evaluated on (``crossmodal evaluate`` of a workspace model).

    Args:
        card: the model card (``crossmodal.model.read_card``).
        model_dir: where the card was read from; locates the workspace (``models/NAME/..``) when the recorded absolute
            path has moved.

    Returns:
        modality -> test FeatureSet, features of the extractor keys the card records, labels in the card's classes.

    Raises:
        ConfigError: the model was not trained in a workspace.
        FeatureMismatchError: the store no longer holds features of a recorded extractor key.
    """
    source = card.get("extra", {}).get("data_source", {})
    if source.get("kind") != "workspace":
        raise ConfigError("this model was not trained in a workspace, so it has no workspace test split",
                          hint="evaluate it with --dataset NAME --data PATH")
    root = Path(source["workspace"])
    if not root.is_dir() and model_dir is not None:
        root = Path(model_dir).resolve().parent.parent
    ws = Workspace(root)
    keys = {m: f["extractor_key"] for m, f in card["features"].items()}
    for modality, key in keys.items():
        if key not in ws.store.keys(modality):
            raise FeatureMismatchError(f"{ws.store_dir}: no {modality} features of extractor {key}, which the model "
                                       "was trained on", hint="re-extract that modality with the same extractor")
    data = ws.datasets(list(keys), seed=int(source["split_seed"]), keys=keys, classes=card["extra"].get("classes"))
    return dict(data.test)


def _add_modality(ws: Workspace, modality: str, *, name: str, epochs: int | None, device: str,
                  overrides: Sequence[str], progress: bool, started: float,
                  extractors: Mapping[str, str]) -> WorkspaceTrainResult:
    """Train ``modality`` against the saved model ``name`` (its prior), keep its other encoders, re-evaluate, save."""
    from crossmodal.config import with_overrides
    from crossmodal.device import resolve_device
    from crossmodal.evaluation import evaluate
    from crossmodal.methods import create_method
    from crossmodal.model import CrossModalModel, read_card
    from pipelines.progress import ProgressBar, TrainingLog
    from pipelines.train import CHECKPOINTS, LOG_FILE, write_curves

    target = ws.model_dir(name)
    if not (target / "card.json").is_file():
        raise NotTrainedError(f"{ws.root}: no trained model {name!r} to add {modality} to",
                              hint=f"train it first: crossmodal train --name {name} --workspace {ws.root}")
    card = read_card(target)
    method = create_method(card["method"])
    if not hasattr(method, "add_modality"):
        raise ConfigError(f"method {card['method']!r} cannot add a modality to a trained model",
                          hint="retrain on every modality: crossmodal train --modalities ...")
    from pipelines.train import choose_features

    chosen, notes = choose_features(ws, [modality], extractors, minimum=1)
    key = chosen[modality]["key"]
    source = card["extra"]["data_source"]
    data = ws.datasets([modality], seed=int(source["split_seed"]), keys={modality: key},
                       classes=card["extra"]["classes"])
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
    test = {**load_test_split(card, model_dir=target), modality: data.test[modality]}
    model.metrics = evaluate(model, {m: fs for m, fs in test.items() if len(fs) > 0})
    model.save(target)
    (target / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    write_curves(target)
    shutil.rmtree(target / f"{CHECKPOINTS}-{modality}", ignore_errors=True)
    notes.append(f"{modality} trained against the saved prior of {name!r}; the other encoders "
                 f"({', '.join(m for m in card['features'] if m != modality)}) are unchanged")
    counts = {modality: {s: len(getattr(data, s)[modality]) for s in SPLITS}}
    return _summary(model, target, counts=counts, notes=notes, started=started,
                    features_used=_features_used(chosen, counts, int(source["split_seed"])), warnings=[])


def _summary(model: Any, path: Path, *, counts: dict[str, Any], notes: list[str], started: float,
             features_used: list[dict[str, Any]], warnings: list[str]) -> WorkspaceTrainResult:
    """The result; the caller prints its choices (``crossmodal train`` and the demo both do)."""
    return WorkspaceTrainResult(model_dir=path, model=model, metrics=model.metrics, counts=counts, notes=notes,
                                features_used=features_used, warnings=warnings,
                                seconds=round(time.perf_counter() - started, 2))


def _featureset(table: StoreTable, rows: list[int], index: dict[str, int], *, multilabel: bool) -> FeatureSet:
    """FeatureSet of ``rows`` of ``table``: int64 labels (first class name) or uint8 multi-hot labels."""
    selected = np.asarray(rows, dtype=np.int64)
    X = np.asarray(table.X[selected], dtype=np.float32).reshape(len(rows), table.X.shape[1])
    if multilabel:
        labels = np.zeros((len(rows), len(index)), dtype=np.uint8)
        for r, i in enumerate(rows):
            labels[r, [index[name] for name in table.labels[i]]] = 1
    else:
        labels = np.array([index[table.labels[i][0]] for i in rows], dtype=np.int64)
    ids = np.array([table.item_id[i] for i in rows], dtype=str)
    return FeatureSet(X=X, labels=labels, ids=ids, num_classes=len(index))


def _draw_splits(
    units: dict[tuple[str, tuple[str, ...]], list[tuple[str, str | None]]], recorded: dict[str, str], *, seed: int
) -> dict[str, str]:
    """Assign a split to every unit (item id, labels) and so to each of its content hashes.

    Units that share a content hash (the same bytes under two names or two classes) are one group and share a split:
    the same features in train and in test would leak the test item into training. A group takes, in order: a split
    its manifest rows fixed (the strictest, test before val before train, when they differ), a split recorded for one
    of its hashes, or a split drawn so that its class (the first label of its first unit) gets ``round(0.2 n)`` test
    and ``round(0.1 n)`` validation groups out of n (at least one each from n = 3). Groups are drawn in the order of
    sha256(seed, item id) of their first unit, so the draw depends on the seed only; without shared bytes every group
    is one unit.
    """
    Unit = tuple[str, tuple[str, ...]]
    parent: dict[Unit, Unit] = {u: u for u in units}

    def root(u: Unit) -> Unit:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    owner: dict[str, Unit] = {}
    for unit, members in units.items():
        for h, _ in members:
            if h in owner:
                a, b = root(owner[h]), root(unit)
                parent[max(a, b)] = min(a, b)
            else:
                owner[h] = unit
    groups: dict[Unit, list[Unit]] = {}
    for unit in units:
        groups.setdefault(root(unit), []).append(unit)
    strictest = {"test": 0, "val": 1, "train": 2}.__getitem__
    assigned = dict(recorded)
    by_class: dict[str, list[Unit]] = {}
    fixed: dict[Unit, str] = {}
    for first, group in groups.items():
        members = [m for unit in group for m in units[unit]]
        explicit = sorted({s for _, s in members if s in SPLITS}, key=strictest)
        known = sorted({assigned[h] for h, _ in members if h in assigned}, key=strictest)
        if explicit or known:
            fixed[first] = (explicit or known)[0]
        by_class.setdefault(first[1][0], []).append(first)
    for group in by_class.values():
        quota = _quota(len(group))
        for unit in group:
            if unit in fixed:
                quota[fixed[unit]] -= 1
        pending = sorted((u for u in group if u not in fixed),
                         key=lambda u: hashlib.sha256(f"{seed}:{u[0]}:{'|'.join(u[1])}".encode()).hexdigest())
        for unit in pending:
            split = next((s for s in ("test", "val") if quota[s] > 0), "train")
            quota[split] -= 1
            fixed[unit] = split
    for unit, members in units.items():
        for h, _ in members:
            assigned[h] = fixed[root(unit)]
    return assigned


def _quota(n: int) -> dict[str, int]:
    """How many of a class's n units go to each split: round(fraction * n) held out, at least one test and one
    validation unit once n >= 3 (a class of two gives one to test, a class of one keeps it for training)."""
    if n >= 3:
        test = max(1, round(SPLIT_FRACTIONS["test"] * n))
        val = max(1, round(SPLIT_FRACTIONS["val"] * n))
    else:
        test, val = n - 1, 0
    return {"train": n - test - val, "val": val, "test": test}


def _metadata(table_dir: Path, columns: list[str]) -> dict[str, list]:
    """Columns of a table's row metadata, without reading its features (duplicates of a content hash included)."""
    from extractors.store import FeatureTable

    return FeatureTable(table_dir).metadata(columns).to_pydict()  # each shard verified against its checksum


def _shards(table_dir: Path) -> list[Path]:
    return sorted((table_dir / "shards").glob("part-*.parquet"))
