"""The feature store: per (modality, extractor key), float32 ``.npy`` shards plus row-aligned ``.parquet`` metadata.

Layout (ARCHITECTURE.md "On disk", after clip-retrieval's output sink)::

    store/<modality>/<extractor key>/
        extractor.json                     name, modality, key, dim, dtype, config, weights sha256, library versions
        shards/part-<seq>-<uuid8>.npy      float32 (n, dim), C order; read with np.load(mmap_mode="r")
        shards/part-<seq>-<uuid8>.parquet  n rows: content_hash, item_id, source_path, labels (list<string>), split

A shard is committed atomically: both files are written as ``.incomplete`` and fsynced, then the ``.npy`` is renamed
and the ``.parquet`` **last**; a shard exists iff its parquet exists. A crash therefore leaves the store as it was
before the shard, plus at most an orphan ``.npy`` or ``.incomplete`` file that the next open removes.

Concurrency: several writers (threads, processes, Ray workers) may write to one table. Shard names carry a uuid, so they
never collide; the sequence number that orders shards is allocated under an exclusive ``flock`` on ``shards/.seq.lock``.
Each writer holds a shared ``flock`` on ``shards/.writers.lock`` while it writes; the orphan clean-up takes that lock
exclusively and without waiting, so it only runs when no writer is mid-shard (and is skipped otherwise).

Items are keyed by ``content_hash`` (sha256 of the file's bytes); ``read`` keeps the first row of each hash in shard
order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from extractors.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock; one writer per table there)
    fcntl = None  # type: ignore[assignment]

SCHEMA = pa.schema([
    ("content_hash", pa.string()),
    ("item_id", pa.string()),
    ("source_path", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("split", pa.string()),
])
_SHARD = re.compile(r"^part-(\d+)-([0-9a-f]{8})\.")
# Libraries whose versions can change features; recorded in extractor.json when installed.
_LIBRARIES = ("numpy", "torch", "torchvision", "pillow", "scikit-image", "gensim", "transformers", "librosa", "open3d",
              "av", "pytorchvideo")


@dataclasses.dataclass(frozen=True)
class StoreRow:
    """The metadata of one stored feature row.

    Attributes:
        content_hash: sha256 (hex) of the raw file's bytes: the item's identity.
        item_id: a readable id, e.g. the path relative to the scanned root without its suffix (``"cat/001"``); items of
            different modalities with the same id are pairs.
        source_path: where the file was read from when it was extracted.
        labels: class names (strings; pipelines map them to indices); empty when unlabelled.
        split: ``"train"``/``"val"``/``"test"`` when a manifest fixed it, else None.
    """

    content_hash: str
    item_id: str
    source_path: str
    labels: tuple[str, ...] = ()
    split: str | None = None


class FeatureTable:
    """The features of one (modality, extractor key): ``store/<modality>/<key>/``.

    Build it through :meth:`FeatureStore.open` (creates the table) or :meth:`FeatureStore.table` (an existing one).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shards = self.path / "shards"
        meta = self.path / "extractor.json"
        try:
            self.description: dict[str, Any] = json.loads(meta.read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.path}: not a feature table (no extractor.json)") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{meta}: not valid JSON ({exc})") from exc
        self.dim = int(self.description["dim"])
        self.key = str(self.description["key"])
        self.modality = str(self.description["modality"])
        if not self.shards.is_dir():
            raise StoreError(f"{self.path}: no shards folder", hint="a table is made by FeatureStore.open")
        self.clean_orphans()

    def __repr__(self) -> str:
        return f"FeatureTable({self.path})"

    # ---- writing
    def write_shard(self, X: np.ndarray, rows: Sequence[StoreRow]) -> Path:
        """Commit ``X`` and its ``rows`` as one new shard, atomically.

        Args:
            X: float32 (n, dim), finite; row i belongs to ``rows[i]``.
            rows: n :class:`StoreRow`.

        Returns:
            The committed ``.parquet`` path.

        Raises:
            StoreError: wrong dtype, width or row count, non-finite values, or a row without a content hash.
        """
        self._validate(X, rows)
        table = pa.table({name: [getattr(r, name) for r in rows] for name in SCHEMA.names}, schema=SCHEMA)
        with self._lock(".writers.lock", shared=True):
            stem = self._allocate()
            npy, parquet = self.shards / f"{stem}.npy", self.shards / f"{stem}.parquet"
            npy_tmp, parquet_tmp = Path(f"{npy}.incomplete"), Path(f"{parquet}.incomplete")
            with open(npy_tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(X), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            with open(parquet_tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(npy_tmp, npy)
            _fsync_dir(self.shards)
            os.replace(parquet_tmp, parquet)  # the commit point: the shard exists from here on
            _fsync_dir(self.shards)
        return parquet

    def _validate(self, X: np.ndarray, rows: Sequence[StoreRow]) -> None:
        where = f"{self.path.name} (store {self.path})"
        if not isinstance(X, np.ndarray) or X.dtype != np.float32 or X.ndim != 2:
            raise StoreError(f"{where}: features must be a float32 (n, {self.dim}) array, got "
                             f"{getattr(X, 'dtype', type(X).__name__)} {getattr(X, 'shape', '')}")
        if X.shape[1] != self.dim:
            raise StoreError(f"{where}: features are {X.shape[1]}-d but extractor.json says {self.dim}-d",
                             hint="features of another extractor or config belong in their own table")
        if X.shape[0] != len(rows) or not rows:
            raise StoreError(f"{where}: {X.shape[0]} feature rows for {len(rows)} metadata rows")
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise StoreError(f"{where}: non-finite features in rows {bad[:5].tolist()} "
                             f"({', '.join(rows[i].source_path for i in bad[:3])})")
        if any(not r.content_hash for r in rows):
            raise StoreError(f"{where}: every row needs a content hash")

    def _allocate(self) -> str:
        """A new shard stem ``part-<seq>-<uuid8>``, reserved by creating its ``.npy.incomplete`` under the seq lock."""
        with self._lock(".seq.lock", shared=False):
            seqs = [int(m.group(1)) for p in self.shards.iterdir() if (m := _SHARD.match(p.name))]
            stem = f"part-{max(seqs, default=0) + 1:06d}-{uuid.uuid4().hex[:8]}"
            Path(self.shards / f"{stem}.npy.incomplete").touch(exist_ok=False)
        return stem

    @contextlib.contextmanager
    def _lock(self, name: str, *, shared: bool, wait: bool = True) -> Iterator[bool]:
        if fcntl is None:  # pragma: no cover
            yield True
            return
        with open(self.shards / name, "a") as f:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(f.fileno(), flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def clean_orphans(self) -> list[Path]:
        """Delete what a killed writer left (``*.incomplete``, ``.npy`` without its parquet); skipped while a writer is
        active. Returns the deleted paths."""
        removed: list[Path] = []
        if not os.access(self.shards, os.W_OK):
            return removed  # a read-only store (a shared copy) is read as it is; orphans are never read anyway
        with self._lock(".writers.lock", shared=False, wait=False) as acquired:
            if not acquired:
                return removed
            for p in sorted(self.shards.iterdir()):
                orphan_npy = p.suffix == ".npy" and not p.with_suffix(".parquet").exists()
                if p.name.endswith(".incomplete") or orphan_npy:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---- reading
    def shard_paths(self) -> list[Path]:
        """Committed shards' parquet files, in commit order (sequence number, then uuid)."""
        return sorted(p for p in self.shards.glob("part-*.parquet") if _SHARD.match(p.name))

    def known_hashes(self) -> set[str]:
        """Content hashes already in the table (for skipping)."""
        hashes: set[str] = set()
        for p in self.shard_paths():
            hashes.update(_read_parquet(p, columns=["content_hash"]).column("content_hash").to_pylist())
        return hashes

    def has(self, content_hash: str) -> bool:
        return content_hash in self.known_hashes()

    def read(self) -> tuple[np.ndarray, pa.Table]:
        """All rows, first occurrence of each content hash kept.

        Returns:
            ``(X, meta)``: X float32 (n, dim), the memory map itself when the table is one shard without duplicates,
            else one concatenated array; meta a ``pyarrow.Table`` with the :data:`SCHEMA` columns, row-aligned with X.

        Raises:
            StoreError: a shard's ``.npy`` is missing, or its dtype, width or row count disagrees (names the file).
        """
        arrays, metas = [], []
        for parquet in self.shard_paths():
            meta = _read_parquet(parquet)
            npy = parquet.with_suffix(".npy")
            try:
                X = np.load(npy, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise StoreError(f"{npy}: missing, but its parquet {parquet.name} is committed",
                                 hint=f"delete {parquet} and re-run the extraction to redo its rows") from None
            except ValueError as exc:
                raise StoreError(f"{npy}: not a readable .npy file ({exc})",
                                 hint=f"delete {parquet} and re-run the extraction to redo its rows") from exc
            if X.dtype != np.float32 or X.ndim != 2 or X.shape[1] != self.dim or X.shape[0] != meta.num_rows:
                raise StoreError(f"{npy}: holds {X.dtype} {X.shape}, expected float32 ({meta.num_rows}, {self.dim})",
                                 hint=f"delete {parquet} and re-run the extraction to redo its rows")
            arrays.append(X)
            metas.append(meta)
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32), SCHEMA.empty_table()
        meta = pa.concat_tables(metas)
        hashes = meta.column("content_hash").to_pylist()
        first = {h: i for i, h in reversed(list(enumerate(hashes)))}
        keep = np.array(sorted(first.values()), dtype=np.int64)
        if len(arrays) == 1 and len(keep) == len(hashes):
            return arrays[0], meta
        X = np.concatenate(arrays, axis=0) if len(arrays) > 1 else np.asarray(arrays[0])
        if len(keep) != len(hashes):
            X, meta = X[keep], meta.take(pa.array(keep))
        return np.ascontiguousarray(X), meta

    def __len__(self) -> int:
        return len(self.known_hashes())


class FeatureStore:
    """A workspace's store folder: one :class:`FeatureTable` per (modality, extractor key).

    Example:
        >>> store = FeatureStore("crossmodal-workspace/store")
        >>> table = store.open(extractor.describe())
        >>> table.write_shard(X, rows)
        >>> X, meta = store.read("image", extractor.key)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def open(self, description: dict[str, Any]) -> FeatureTable:
        """The table of an extractor (``Extractor.describe()``), created with its ``extractor.json`` if new.

        Raises:
            StoreError: the folder exists with another extractor's name or width.
        """
        path = self.root / description["modality"] / description["key"]
        meta = path / "extractor.json"
        if meta.exists():
            table = FeatureTable(path)
            for field in ("name", "dim", "key"):
                if table.description.get(field) != description[field]:
                    raise StoreError(f"{meta}: {field} is {table.description.get(field)!r}, the extractor's is "
                                     f"{description[field]!r}", hint=f"move {path} away; it does not match its key")
            return table
        (path / "shards").mkdir(parents=True, exist_ok=True)
        record = {**description, "libraries": _library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = path / f"extractor.json.{uuid.uuid4().hex[:8]}.incomplete"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(tmp, meta)  # concurrent creators write the same description; the last rename wins
        return FeatureTable(path)

    def table(self, modality: str, key: str | None = None) -> FeatureTable:
        """An existing table; ``key=None`` picks the modality's only table.

        Raises:
            StoreError: no such table, or several when ``key`` is None (the message lists them).
        """
        keys = self.keys(modality)
        if key is None:
            if len(keys) != 1:
                found = ", ".join(keys) if keys else "none"
                hint = "name the extractor key" if keys else f"run crossmodal extract --modality {modality}"
                raise StoreError(f"{self.root}: {len(keys)} feature tables for {modality} ({found})", hint=hint)
            key = keys[0]
        if key not in keys:
            raise StoreError(f"{self.root / modality / key}: no such feature table",
                             hint=f"tables for {modality}: {', '.join(keys) or 'none'}")
        return FeatureTable(self.root / modality / key)

    def read(self, modality: str, key: str | None = None) -> tuple[np.ndarray, pa.Table]:
        """``table(modality, key).read()``: (X float32 (n, dim), metadata ``pyarrow.Table``)."""
        return self.table(modality, key).read()

    def keys(self, modality: str) -> list[str]:
        """Extractor keys with a table for ``modality``."""
        base = self.root / modality
        return sorted(p.name for p in base.iterdir() if (p / "extractor.json").exists()) if base.is_dir() else []

    def tables(self) -> list[tuple[str, str]]:
        """Every (modality, key) in the store."""
        if not self.root.is_dir():
            return []
        return [(m.name, k) for m in sorted(self.root.iterdir()) if m.is_dir() for k in self.keys(m.name)]

    def fitted_dir(self, modality: str) -> Path:
        """Where extractors fitted on a corpus (doc2vec) keep their models: ``store/<modality>/_fitted``."""
        return self.root / modality / "_fitted"


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, schema=SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"{path}: not a readable shard ({exc})",
                         hint=f"delete {path} and re-run the extraction") from exc


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); directories cannot be opened for fsync on Windows."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions
