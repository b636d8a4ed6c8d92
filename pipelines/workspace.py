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

This module keeps storage and splits only, and reads the store through ``FeatureStore``/``FeatureTable`` alone:
training in a workspace is ``pipelines.train`` (which imports this module, never the other way), and a model's data
comes back through ``pipelines.datasource.WorkspaceSource``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.common.files import atomic_write
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.types import MODALITIES, canonical_modality
from extractors.store import FeatureStore

DEFAULT_WORKSPACE = Path("crossmodal-workspace")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
"""Per class: 20% test and 10% validation (each at least one item once a class has three), the rest training."""

DATASET_COLUMNS = ("content_hash", "item_id", "labels")
"""The metadata columns ``Workspace.datasets`` reads."""
GATHER_BYTES = 16 << 20
"""Feature bytes read from the store at a time while a split's rows are copied out (``_featureset``)."""

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
        X: float32 (n, dim) features: an array (memory-mapped when possible; ``Workspace.table``) or a view over the
            shards that reads the rows it is indexed with (``FeatureTable.rows_view``; ``Workspace.datasets``).
        content_hash, item_id, source_path: (n,) str.
        labels: n tuples of class names (empty = unlabelled).
        split: (n,) the split a manifest fixed, or None.
    """

    modality: str
    key: str
    description: dict[str, Any]
    X: Any
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


@dataclass(frozen=True)
class TableInfo:
    """One (modality, extractor key) table of the store, summarised from its row metadata (features not read).

    Attributes:
        modality, key: the table. extractor: its extractor's name.
        items: rows (an item stored twice counts twice). labelled: rows with at least one label.
        modified: when a shard was last committed to it (its newest shard's mtime, seconds since the epoch).
    """

    modality: str
    key: str
    extractor: str
    items: int
    labelled: int
    modified: float


class Workspace:
    """A workspace folder (created on first write).

    Args:
        root: the folder; ``./crossmodal-workspace`` by default.
    """

    def __init__(self, root: str | os.PathLike = DEFAULT_WORKSPACE):
        self.root = Path(root)
        self._said: set[tuple[str, str]] = set()  # (modality, key) choices already printed by feature_key

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
    def feature_tables(self, modality: str) -> list[TableInfo]:
        """The tables of ``modality`` that hold rows, in key order (each shard's metadata checked on read)."""
        modality = canonical_modality(modality)
        found = []
        for key in self.store.keys(modality):
            table = self.store.table(modality, key)
            shards = table.shard_paths()
            if not shards:
                continue
            labels = table.metadata(["labels"]).column("labels").to_pylist()
            found.append(TableInfo(modality=modality, key=key, extractor=table.description.get("name", key),
                                   items=len(labels), labelled=sum(bool(x) for x in labels),
                                   modified=max(p.stat().st_mtime for p in shards)))
        return found

    def feature_key(self, modality: str) -> str:
        """The extractor key whose features stand for ``modality`` when the caller names none: its only table, else
        the one extracted last (the newest shard), a choice printed on stderr once, with the other tables and how to
        name one. (``crossmodal train`` refuses to guess instead: ``pipelines.train.choose_features``.)

        Raises:
            ConfigError: the store has no features of ``modality``.
        """
        modality = canonical_modality(modality)
        tables = self.feature_tables(modality)
        if not tables:
            raise ConfigError(f"{self.store_dir}: no {modality} features in the store",
                              hint=f"run crossmodal extract DIR --modality {modality} --workspace {self.root}")
        return self._latest(tables).key

    def _latest(self, tables: list[TableInfo]) -> TableInfo:
        """The table extracted last among one modality's ``tables``; with several, the choice is printed once."""
        chosen = max(tables, key=lambda t: (t.modified, t.key))
        if len(tables) > 1 and (chosen.modality, chosen.key) not in self._said:
            self._said.add((chosen.modality, chosen.key))
            others = ", ".join(t.key for t in tables if t is not chosen)
            print(f"note: {self.store_dir}: {chosen.modality} has {len(tables)} feature tables; using {chosen.key}, "
                  f"the one extracted last (also: {others}); name one to choose (--extractor {chosen.modality}=KEY)",
                  file=sys.stderr)
        return chosen

    def feature_modalities(self, *, labelled: bool = False) -> list[str]:
        """Modalities with features in the store (with a labelled item in the table ``feature_key`` picks when
        ``labelled``), in canonical order."""
        found = []
        for modality in MODALITIES:
            tables = self.feature_tables(modality)
            if tables and (not labelled or self._latest(tables).labelled > 0):
                found.append(modality)
        return found

    def table(self, modality: str, key: str | None = None) -> StoreTable:
        """All rows of one modality's features (``key`` or ``feature_key(modality)``), one per content hash."""
        modality = canonical_modality(modality)
        key = key or self.feature_key(modality)
        feature_table = self.store.table(modality, key)
        X, meta = feature_table.read()
        return _store_table(modality, key, feature_table.description, X, meta.to_pydict())

    @contextlib.contextmanager
    def _table_view(self, modality: str, key: str) -> Iterator[tuple[Any, Any]]:
        """``(X, meta)`` of one table, open while the context lasts: X a view over the shards, whose rows are read only
        when selected (a dataset holds its splits' rows, not also a concatenated copy of the whole table), and meta
        the ``DATASET_COLUMNS`` of its rows as a pyarrow table (no Python object per row)."""
        with self.store.table(modality, key).rows_view() as view:
            yield view, view.metadata(list(DATASET_COLUMNS))

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
            modality = canonical_modality(modality)
            table = self.store.table(modality, (keys or {}).get(modality) or self.feature_key(modality))
            names.update(label for labels in table.metadata(["labels"]).column("labels").to_pylist()
                         for label in labels or ())  # the labels alone: the features are not read
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
            # every row (repeated items too): each content hash needs its split; checksums checked on read. Python
            # strings are made a batch at a time: the units keep what they need of them.
            meta = self.store.table(modality, key).metadata(["content_hash", "item_id", "labels", "split"])
            for batch in meta.to_batches(max_chunksize=65_536):
                columns = batch.to_pydict()
                for h, item, labels, split in zip(columns["content_hash"], columns["item_id"], columns["labels"],
                                                  columns["split"]):
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
        with contextlib.ExitStack() as views:
            tables = {m: views.enter_context(self._table_view(m, keys[m])) for m in modalities}
            return self._split(tables, classes, seed=seed)

    def _split(self, tables: dict[str, tuple[Any, Any]], classes: Sequence[str] | None, *,
               seed: int) -> CrossModalDataset:
        """``datasets`` once the tables are open.

        The rows are chosen with Arrow's compute functions over the metadata columns: a Python string per row cost
        about 1 KB per item (60 MB while 30,000 items per modality were split), which a large store cannot afford.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        modalities = list(tables)
        flat = {m: pc.list_flatten(meta.column("labels")) for m, (_, meta) in tables.items()}  # nulls: no labels
        names = list(classes) if classes is not None else sorted(
            {label for labels in flat.values() for label in pc.unique(labels).to_pylist()})
        index = {name: i for i, name in enumerate(names)}
        multilabel = any((pc.max(pc.list_value_length(meta.column("labels"))).as_py() or 0) > 1
                         for _, meta in tables.values())
        assignment = self.splits(seed)
        hashes = pa.array(list(assignment), type=pa.string())
        codes = np.array([SPLITS.index(split) for split in assignment.values()], dtype=np.int8)
        parts: dict[str, dict[str, FeatureSet]] = {s: {} for s in SPLITS}
        for modality, (X, meta) in tables.items():
            unknown = sorted(set(pc.unique(flat[modality]).to_pylist()) - set(index))
            if unknown:
                raise ConfigError(f"{modality} items have classes {unknown[:5]} the model does not know ({len(names)} "
                                  "classes)", hint="train a new model on every modality instead of adding one")
            found = pc.index_in(meta.column("content_hash"), value_set=hashes).fill_null(-1).to_numpy()
            split_of = np.where(found >= 0, codes[np.maximum(found, 0)], -1)
            for code, split in enumerate(SPLITS):
                rows = np.flatnonzero(split_of == code)
                # by item id, ties in table order: Arrow's sort is stable and orders UTF-8 as Python orders str
                rows = rows[pc.sort_indices(meta.column("item_id").take(rows)).to_numpy()]
                parts[split][modality] = _featureset(X, meta.take(rows), rows, index, multilabel=multilabel)
        empty = [m for m in modalities if len(parts["train"][m]) == 0]
        if empty:
            raise DatasetFormatError(f"no labelled training items for {', '.join(empty)}",
                                     hint="extract more labelled files (each class needs at least one)")
        paired = all(len({tuple(fs.ids) for fs in parts[s].values()}) == 1 for s in SPLITS)
        return CrossModalDataset(name=f"workspace:{self.root}", train=parts["train"], val=parts["val"],
                                 test=parts["test"], paired=paired)


def _store_table(modality: str, key: str, description: dict[str, Any], X: Any,
                 columns: dict[str, list]) -> StoreTable:
    """A ``StoreTable`` from features and their row-aligned metadata columns."""
    return StoreTable(modality=modality, key=key, description=description, X=X, content_hash=columns["content_hash"],
                      item_id=columns["item_id"], source_path=columns["source_path"],
                      labels=[tuple(labels or ()) for labels in columns["labels"]], split=columns["split"])


def _featureset(X: Any, meta: Any, rows: np.ndarray, index: dict[str, int], *, multilabel: bool) -> FeatureSet:
    """FeatureSet of ``rows`` of the features ``X`` (``meta``: their ``DATASET_COLUMNS``, already taken): int64 labels
    (first class name) or uint8 multi-hot labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Filled GATHER_BYTES at a time: a shard view's gather holds its read buffers and their join beside the rows it
    # returns, so one gather of a whole split peaked at three copies of it (197 MB traced for 101 MB of features).
    features = np.empty((len(rows), X.shape[1]), dtype=np.float32)
    step = max(1, GATHER_BYTES // max(1, 4 * features.shape[1]))
    for start in range(0, len(rows), step):
        features[start:start + step] = X[rows[start:start + step]]
    names = pa.array(list(index), type=pa.string())  # index maps names to 0..C-1 in this order
    labels_column = meta.column("labels").combine_chunks()  # one array: parent indices count from its first row
    if multilabel:
        labels = np.zeros((len(rows), len(index)), dtype=np.uint8)
        owner = pc.list_parent_indices(labels_column).to_numpy()
        labels[owner, pc.index_in(pc.list_flatten(labels_column), value_set=names).to_numpy()] = 1
    else:
        first = pc.list_element(labels_column, 0)
        labels = pc.index_in(first, value_set=names).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = np.array(meta.column("item_id").to_pylist(), dtype=str)
    return FeatureSet(X=features, labels=labels, ids=ids, num_classes=len(index))


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
