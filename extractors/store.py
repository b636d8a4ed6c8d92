"""The feature store: per (modality, extractor key), float32 ``.npy`` shards plus row-aligned ``.parquet`` metadata.

Layout (ARCHITECTURE.md "On disk", after clip-retrieval's output sink)::

    store/<modality>/<extractor key>/
        extractor.json                     name, modality, key, dim, dtype, config, weights sha256, library versions
        shards/part-<seq>-<uuid8>.npy      float32 (n, dim), C order; read with np.load(mmap_mode="r")
        shards/part-<seq>-<uuid8>.parquet  n rows: content_hash, item_id, source_path, labels (list<string>), split,
                                           source_path_bytes (the raw path when it is not valid UTF-8, else null)
        shards/part-<seq>-<uuid8>.sha256   JSON: sha256 of the .npy and of the .parquet, and the row count

A shard is committed atomically: its files are written as ``.incomplete`` and fsynced, then the ``.npy`` and the
``.sha256`` are renamed and the ``.parquet`` **last**; a shard exists iff its parquet exists. A crash therefore leaves
the store as it was before the shard, plus at most an orphan ``.npy``, ``.sha256`` or ``.incomplete`` file that the next
open removes. A full disk (ENOSPC) removes the shard's files and raises :class:`StoreFullError`.

Reads verify each shard once per process (cached by path, inode, size and mtime): both checksums, the ``.npy``'s dtype
and shape against the parquet's rows, and finite values. A bad shard raises :class:`StoreError` naming it, with the fix
``crossmodal store repair``. Measured with benchmarks/store_verify.py on a 100,000 x 128 shard (51 MB npy, 2 MB
parquet; medians of 15 reads on a shared 2-core machine): the first read in a process takes 139 ms and later ones
58 ms when the machine is quiet (292 and 105 ms at a load average of 6), so the checks cost 80-190 ms once per process
(sha256 of both files and the finite check). The read before checksums took 419 ms there, spent in removing duplicates
row by row, which now runs only when a content hash repeats. Shards written before checksums
were recorded get the structural and finite checks only (``store verify`` lists them).

Concurrency: several writers (threads, processes, Ray workers) may write to one table. Shard names carry a uuid, so they
never collide; the sequence number that orders shards is allocated under an exclusive ``flock`` on ``shards/.seq.lock``.
Each writer holds a shared ``flock`` on ``shards/.writers.lock`` while it writes; the orphan clean-up takes that lock
exclusively and without waiting, so it only runs when no writer is mid-shard (and is skipped otherwise).

An item is a (content hash, item id, labels) entry: the content hash (sha256 of the file's bytes) is the key of its
features, not its identity, so two files with the same bytes (the same picture under two names or two classes) are two
rows sharing one vector. ``read`` keeps the first row of each (content hash, item id, labels) in shard order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossmodal.common.files import atomic_write, fsync_path
from crossmodal.common.hashing import file_sha256
from crossmodal.common.versions import library_versions
from extractors.errors import StoreError, StoreFullError

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
    ("source_path_bytes", pa.binary()),
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
        source_path: where the file was read from when it was extracted; a path that is not valid UTF-8 (a
            surrogate-escaped ``os.fsdecode`` string) is stored losslessly as bytes in ``source_path_bytes`` and shown
            with ``\\xNN`` escapes in ``source_path`` (:func:`stored_path` gives it back).
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
        """Commit ``X`` and its ``rows`` as one new shard, atomically, with the sha256 of both files.

        Args:
            X: float32 (n, dim), finite; row i belongs to ``rows[i]``.
            rows: n :class:`StoreRow`.

        Returns:
            The committed ``.parquet`` path.

        Raises:
            StoreError: wrong dtype, width or row count, non-finite values, or a row without a content hash.
            StoreFullError: the disk is full; the shard's files are removed, the store is as it was before.
        """
        self._validate(X, rows)
        table = _arrow_rows(rows)
        with self._lock(".writers.lock", shared=True):
            stem = self._allocate()
            npy, parquet, sums = (self.shards / f"{stem}{suffix}" for suffix in (".npy", ".parquet", SUMS))
            temporary = [Path(f"{path}.incomplete") for path in (npy, parquet, sums)]
            npy_tmp, parquet_tmp, sums_tmp = temporary
            try:
                with open(npy_tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(X), allow_pickle=False)
                    _flush(f)
                with open(parquet_tmp, "wb") as f:
                    pq.write_table(table, f)
                    _flush(f)
                checksums = {"npy": file_sha256(npy_tmp), "parquet": file_sha256(parquet_tmp), "rows": len(rows)}
                with open(sums_tmp, "w") as f:
                    f.write(json.dumps(checksums))
                    _flush(f)
                os.replace(npy_tmp, npy)
                os.replace(sums_tmp, sums)
                fsync_path(self.shards)
                os.replace(parquet_tmp, parquet)  # the commit point: the shard exists from here on
                fsync_path(self.shards)
            except OSError as exc:
                if parquet.exists():
                    raise  # committed; only the last directory sync failed
                for path in (*temporary, npy, sums):
                    path.unlink(missing_ok=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._full(X.nbytes + table.nbytes) from exc
                raise
        return parquet

    def _full(self, needed: int) -> StoreFullError:
        """The one-line error of a full disk: the workspace, the space the shard needed and what is free."""
        workspace = self.path.parents[2]
        free = shutil.disk_usage(self.shards).free
        return StoreFullError(f"no space left on the disk of workspace {workspace}: a shard of {_mb(needed)} did not "
                              f"fit ({_mb(free)} free); the store is as it was before it",
                              hint="free space on that disk (or give --workspace on another one) and re-run the same "
                                   "command: it resumes where it stopped")

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
        if any(r.split not in (None, "train", "val", "test") for r in rows):
            raise StoreError(f"{where}: a split is train, val, test or None, got "
                             f"{sorted({str(r.split) for r in rows} - {'None', 'train', 'val', 'test'})}")

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
        """Delete what a killed writer left (``*.incomplete``, a ``.npy`` or ``.sha256`` without its parquet); skipped
        while a writer is active. Returns the deleted paths."""
        removed: list[Path] = []
        if not os.access(self.shards, os.W_OK):
            return removed  # a read-only store (a shared copy) is read as it is; orphans are never read anyway
        with self._lock(".writers.lock", shared=False, wait=False) as acquired:
            if not acquired:
                return removed
            for p in sorted(self.shards.iterdir()):
                orphan = p.suffix in (".npy", SUMS) and not p.with_suffix(".parquet").exists()
                if p.name.endswith(".incomplete") or orphan:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---- reading
    def shard_paths(self) -> list[Path]:
        """Committed shards' parquet files, in commit order (sequence number, then uuid)."""
        return sorted(p for p in self.shards.glob("part-*.parquet") if _SHARD.match(p.name))

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """The row metadata of every shard (``columns`` of :data:`SCHEMA`, default all), duplicates included, without
        reading the features; each parquet is verified against its checksum first.

        Raises:
            StoreError: a shard is unreadable or fails its checksum (names it, with the fix).
        """
        parts = [self._read_meta(p, columns) for p in self.shard_paths()]
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table().select(columns or SCHEMA.names)

    def known_hashes(self) -> set[str]:
        """Content hashes already in the table (whose features need no extraction)."""
        return set(self.metadata(["content_hash"]).column("content_hash").to_pylist())

    def known_items(self) -> set[tuple[str, str, tuple[str, ...]]]:
        """Every stored item as its key ``(content hash, item id, sorted labels)`` (see :func:`item_key`)."""
        meta = self.metadata(["content_hash", "item_id", "labels"]).to_pydict()
        return {item_key(h, i, labels) for h, i, labels in zip(meta["content_hash"], meta["item_id"], meta["labels"])}

    def has(self, content_hash: str) -> bool:
        return content_hash in self.known_hashes()

    def vectors(self, hashes: set[str]) -> dict[str, np.ndarray]:
        """The stored float32 (dim,) row of each of ``hashes`` that the table holds (the first in shard order): the
        features another item with the same bytes shares."""
        found: dict[str, np.ndarray] = {}
        for parquet in self.shard_paths():
            shard_hashes = self._read_meta(parquet, ["content_hash"]).column(0).to_pylist()
            wanted = [(i, h) for i, h in enumerate(shard_hashes) if h in hashes and h not in found]
            if wanted:
                X = self._load_npy(parquet, len(shard_hashes))
                found.update((h, np.array(X[i], dtype=np.float32)) for i, h in wanted)
        return found

    def read(self) -> tuple[np.ndarray, pa.Table]:
        """All rows, the first of each item (content hash, item id, labels) kept.

        Returns:
            ``(X, meta)``: X float32 (n, dim), the memory map itself when the table is one shard without duplicates,
            else one concatenated array; meta a ``pyarrow.Table`` with the :data:`SCHEMA` columns, row-aligned with X.

        Raises:
            StoreError: a shard's ``.npy`` is missing, its dtype, width or row count disagrees, a file fails its
                checksum or holds non-finite values (names the shard, with the fix).
        """
        arrays, metas = [], []
        for parquet in self.shard_paths():
            meta = self._read_meta(parquet)
            arrays.append(self._load_npy(parquet, meta.num_rows))
            metas.append(meta)
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32), SCHEMA.empty_table()
        meta = pa.concat_tables(metas)
        keep = None
        if len(pc.unique(meta.column("content_hash"))) < meta.num_rows:  # else every row is its own item (fast path)
            columns = meta.select(["content_hash", "item_id", "labels"]).to_pydict()
            keys = [item_key(h, i, labels) for h, i, labels in zip(*columns.values())]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            if len(first) < len(keys):
                keep = np.array(sorted(first.values()), dtype=np.int64)
        if len(arrays) == 1 and keep is None:
            return arrays[0], meta
        X = np.concatenate(arrays, axis=0) if len(arrays) > 1 else np.asarray(arrays[0])
        if keep is not None:
            X, meta = X[keep], meta.take(pa.array(keep))
        return np.ascontiguousarray(X), meta

    def __len__(self) -> int:
        return len(self.known_items())

    # ---- checking
    def verify(self) -> list[ShardProblem]:
        """Check every shard (checksums, shape, finite values), ignoring the per-process cache.

        Returns:
            One :class:`ShardProblem` per bad shard; shards written before checksums were recorded pass when the
            other checks do (:meth:`unchecked` lists them).
        """
        problems = []
        for parquet in self.shard_paths():
            try:
                self._load_npy(parquet, self._read_meta(parquet, cached=False).num_rows, cached=False)
            except StoreError as exc:
                problems.append(ShardProblem(self, parquet, exc.message))
        return problems

    def shard_metadata(self, parquet: Path) -> pa.Table:
        """One shard's rows, checked against its parquet's checksum now (not from the cache).

        Raises:
            StoreError: the parquet is unreadable or differs from its checksum.
        """
        return self._read_meta(parquet, cached=False)

    def unchecked(self) -> list[Path]:
        """Shards without a ``.sha256`` (written before the store recorded checksums)."""
        return [p for p in self.shard_paths() if not p.with_suffix(SUMS).exists()]

    def seal(self, parquet: Path) -> bool:
        """Record the checksums of a shard written before the store recorded them, once its other checks pass.

        Returns:
            Whether a ``.sha256`` was written (False: the shard had one).

        Raises:
            StoreError: the shard fails its structural or finite checks.
        """
        sums = parquet.with_suffix(SUMS)
        if sums.exists():
            return False
        self._load_npy(parquet, self._read_meta(parquet, cached=False).num_rows, cached=False)
        record = {"npy": file_sha256(parquet.with_suffix(".npy")), "parquet": file_sha256(parquet),
                  "rows": pq.ParquetFile(parquet).metadata.num_rows}
        atomic_write(sums, json.dumps(record))
        return True

    def drop_shard(self, parquet: Path) -> pa.Table | None:
        """Remove a shard: its parquet first (the shard no longer exists), then its other files.

        Returns:
            The rows it held when its parquet can still be read (unverified: for saying what was dropped), else None.
        """
        with self._lock(".writers.lock", shared=False):
            try:
                rows: pa.Table | None = pq.read_table(parquet, schema=SCHEMA)
            except (OSError, pa.ArrowException):
                rows = None
            parquet.unlink(missing_ok=True)
            fsync_path(self.shards)
            for suffix in (".npy", SUMS):
                parquet.with_suffix(suffix).unlink(missing_ok=True)
        return rows

    def _hint(self, parquet: Path) -> str:
        workspace = self.path.parents[2]
        return (f"run crossmodal store repair --workspace {workspace}: it drops the shard {parquet.stem} (or "
                "re-extracts its files), and the next crossmodal extract redoes what was dropped")

    def _sums(self, parquet: Path) -> dict[str, Any] | None:
        sums = parquet.with_suffix(SUMS)
        try:
            recorded = json.loads(sums.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{sums}: unreadable checksums ({exc})", hint=self._hint(parquet)) from None
        if not isinstance(recorded, dict) or not {"npy", "parquet"} <= set(recorded):
            raise StoreError(f"{sums}: not a checksum record", hint=self._hint(parquet))
        return recorded

    def _read_meta(self, parquet: Path, columns: list[str] | None = None, *, cached: bool = True) -> pa.Table:
        """A shard's rows (``columns``), after its parquet passed its checksum (once per process when ``cached``)."""
        sums = self._sums(parquet)
        if sums is not None:
            _check_file(parquet, sums["parquet"], self._hint(parquet), cached=cached)
        try:
            meta = pq.read_table(parquet, columns=columns, schema=SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{parquet}: not a readable shard ({exc})", hint=self._hint(parquet)) from exc
        if sums is not None and "rows" in sums and meta.num_rows != sums["rows"]:
            raise StoreError(f"{parquet}: {meta.num_rows} rows, its checksum record says {sums['rows']}",
                             hint=self._hint(parquet))
        return meta

    def _load_npy(self, parquet: Path, rows: int, *, cached: bool = True) -> np.ndarray:
        """A shard's float32 (rows, dim) memory map, after its checks (checksum, shape, finite; once per process)."""
        npy = parquet.with_suffix(".npy")
        hint = self._hint(parquet)
        try:
            X = np.load(npy, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"{npy}: missing, but its parquet {parquet.name} is committed", hint=hint) from None
        except ValueError as exc:
            raise StoreError(f"{npy}: not a readable .npy file ({exc})", hint=hint) from exc
        if X.dtype != np.float32 or X.ndim != 2 or X.shape[1] != self.dim or X.shape[0] != rows:
            raise StoreError(f"{npy}: holds {X.dtype} {X.shape}, expected float32 ({rows}, {self.dim})", hint=hint)
        key = _file_state(npy)
        if cached and key in _VERIFIED:
            return X
        sums = self._sums(parquet)
        if sums is not None:
            _check_file(npy, sums["npy"], hint, cached=False)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise StoreError(f"{npy}: non-finite values in {len(bad)} rows (first: {bad[:5].tolist()})", hint=hint)
        _VERIFIED.add(key)
        return X


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    """A shard that fails verification: its table, its parquet path and why."""

    table: FeatureTable
    parquet: Path
    reason: str


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
        record = {**description, "libraries": library_versions(_LIBRARIES),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # Concurrent creators write the same description; each renames a whole file, the last one wins.
        atomic_write(meta, json.dumps(record, indent=2, sort_keys=True, default=str))
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

    def verify(self) -> tuple[list[ShardProblem], int, list[Path]]:
        """Check every shard of every table: (bad shards, shards checked, shards without checksums)."""
        problems: list[ShardProblem] = []
        count, unchecked = 0, []
        for modality, key in self.tables():
            table = FeatureTable(self.root / modality / key)
            problems += table.verify()
            count += len(table.shard_paths())
            unchecked += table.unchecked()
        return problems, count, unchecked

    def fitted_dir(self, modality: str) -> Path:
        """Where extractors fitted on a corpus (doc2vec) keep their models: ``store/<modality>/_fitted``."""
        return self.root / modality / "_fitted"


def item_key(content_hash: str, item_id: str, labels: Sequence[str] | None) -> tuple[str, str, tuple[str, ...]]:
    """An item's identity in a table: its bytes, its id and its labels (the same bytes under two names or two classes
    are two items). Ids and labels compare as stored (:func:`printable`), so a name that is not UTF-8 matches its
    row."""
    return content_hash, printable(item_id), tuple(sorted(printable(label) for label in labels or ()))


def stored_path(source_path: str, source_path_bytes: bytes | None) -> str:
    """The path a row was read from, as ``open`` takes it: the exact bytes (``os.fsdecode``) when the name was not
    valid UTF-8, else ``source_path``."""
    return os.fsdecode(source_path_bytes) if source_path_bytes is not None else source_path


def printable(text: str) -> str:
    """``text`` as valid UTF-8: an undecodable byte of a file name (a surrogate escape) becomes ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")


def _arrow_rows(rows: Sequence[StoreRow]) -> pa.Table:
    """The parquet rows: every string valid UTF-8 (parquet's string type), a non-UTF-8 path kept whole as bytes."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for r in rows:
        shown = printable(r.source_path)
        columns["content_hash"].append(r.content_hash)
        columns["item_id"].append(printable(r.item_id))
        columns["source_path"].append(shown)
        columns["labels"].append([printable(label) for label in r.labels])
        columns["split"].append(r.split)
        columns["source_path_bytes"].append(None if shown == r.source_path else os.fsencode(r.source_path))
    return pa.table(columns, schema=SCHEMA)


# Files that passed their checks in this process, by (path, inode, size, mtime): a rewritten file is checked again.
_VERIFIED: set[tuple[str, int, int, int]] = set()
SUMS = ".sha256"


def _file_state(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


def _check_file(path: Path, expected: str, hint: str, *, cached: bool) -> None:
    try:
        key = _file_state(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing, but its shard is committed", hint=hint) from None
    if cached and key in _VERIFIED:
        return
    if file_sha256(path) != expected:
        raise StoreError(f"{path}: sha256 differs from the one recorded at commit; the file was changed", hint=hint)
    if path.suffix == ".parquet":  # an .npy is cached once its values are checked too
        _VERIFIED.add(key)


def _flush(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"
