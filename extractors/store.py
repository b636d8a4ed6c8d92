"""The feature store: per (modality, extractor key), float32 ``.npy`` shards plus row-aligned ``.parquet`` metadata.

Layout (ARCHITECTURE.md "On disk", after clip-retrieval's output sink)::

    store/<modality>/<extractor key>/
        extractor.json                     name, modality, key, dim, dtype, config, weights sha256, library versions
        shards/part-<seq>-<uuid8>.npy      float32 (n, dim), C order; read with np.load(mmap_mode="r")
        shards/part-<seq>-<uuid8>.parquet  n rows: content_hash, item_id, source_path, labels (list<string>), split,
                                           source_path_bytes (the raw path when it is not valid UTF-8, else null)
        shards/part-<seq>-<uuid8>.sha256   JSON: sha256 of the .npy and of the .parquet, and the row count
        shards/compact-<stem>.journal      only while a compaction merges shards: the merged stem and its inputs
        shards/claims/<owner id>.json      a running extraction's claimed content hashes (owner, pid, host, time)

A shard is committed atomically: its files are written as ``.incomplete`` and fsynced, then the ``.npy`` and the
``.sha256`` are renamed and the ``.parquet`` **last**; a shard exists iff its parquet exists. A crash therefore leaves
the store as it was before the shard, plus at most an orphan ``.npy``, ``.sha256`` or ``.incomplete`` file that the next
open removes. A full disk (ENOSPC) removes the shard's files and raises :class:`StoreFullError`.

Reads stream, shard by shard, and never concatenate the table: :meth:`FeatureTable.iter_batches` yields read-only
slices of one shard's memory map with their metadata rows, :meth:`FeatureTable.rows_view` is an array-like that
gathers ``view[idx]`` from the shards' files (what training samples batches from), and :meth:`FeatureTable.dataset`
is a ``pyarrow.dataset`` over the shards' metadata. ``read`` concatenates: the small-table path. The memory of each
step against the table's size, up to 10^7 x 128: benchmarks/results/store_scale.md.

Reads verify each shard once per process (cached by path, inode, size and mtime): both checksums, the ``.npy``'s dtype
and shape against the parquet's rows, and finite values, the ``.npy`` read once in 8 MiB blocks for its sha256 and its
finite check together. A bad shard raises :class:`StoreError` naming it, with the fix
``crossmodal store repair``. Measured with benchmarks/store_verify.py on a 100,000 x 128 shard (51 MB npy, 2 MB
parquet; medians of 15 reads on a shared 2-core machine): the first read in a process takes 139 ms and later ones
58 ms when the machine is quiet (292 and 105 ms at a load average of 6), so the checks cost 80-190 ms once per process
(sha256 of both files and the finite check). The read before checksums took 419 ms there, spent in removing duplicates
row by row, which now runs only when a content hash repeats. Shards written before checksums
were recorded get the structural and finite checks only (``store verify`` lists them).

Concurrency: several writers (threads, processes, Ray workers) may write to one table. Shard names carry a uuid, so they
never collide; the sequence number that orders shards is allocated under an exclusive ``flock`` on ``shards/.seq.lock``.
Each writer holds a shared ``flock`` on ``shards/.writers.lock`` while it writes; the orphan clean-up takes that lock
exclusively and without waiting, so it only runs when no writer is mid-shard (and is skipped otherwise). Readers hold a
shared ``flock`` on ``shards/.compact.lock`` while they list the shards (and a stream or a view for its whole life);
``compact`` takes it and the writers lock exclusively for each merge, so a reader never sees a merged shard beside the
shards it replaced. Concurrent extractions split the work with claims (:meth:`FeatureTable.claim`, under the exclusive
``.seq.lock``): each takes the items neither stored nor claimed by another live run.

An item is a (content hash, item id, labels) entry: the content hash (sha256 of the file's bytes) is the key of its
features, not its identity, so two files with the same bytes (the same picture under two names or two classes) are two
rows sharing one vector. ``read`` keeps the first row of each (content hash, item id, labels) in shard order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import mmap
import os
import re
import shutil
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
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
        self._hashes: set[str] = set()  # the content hashes of the shards in _hashes_seen (claims skip them)
        self._hashes_seen: set[Path] = set()
        self.recovered: list[str] = []  # what opening the table did about a killed compaction, one line each
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
        counter = self.shards / ".seq"
        with self._lock(".seq.lock", shared=False):
            # The last number is kept in .seq, so that allocating costs the same at 10 shards and at 10^5 (listing the
            # folder under this lock serialised every writer of a large table); a table without it, or a torn write,
            # falls back to the listing, which counts reserved and committed shards alike.
            try:
                last = int(counter.read_text())
            except (OSError, ValueError):
                last = max((int(m.group(1)) for p in self.shards.iterdir() if (m := _SHARD.match(p.name))), default=0)
            stem = f"part-{last + 1:06d}-{uuid.uuid4().hex[:8]}"
            Path(self.shards / f"{stem}.npy.incomplete").touch(exist_ok=False)
            counter.write_text(str(last + 1))
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
            self.recovered += self._recover()
            for p in sorted(self.shards.iterdir()):
                orphan = p.suffix in (".npy", SUMS) and not p.with_suffix(".parquet").exists()
                if p.name.endswith(".incomplete") or orphan:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---- reading
    def shard_paths(self) -> list[Path]:
        """Committed shards' parquet files, in commit order (sequence number, then uuid); the inputs of a compaction
        whose merged shard is committed are left out (a compaction killed after its commit point)."""
        with self._reader_lock():
            return self._listing()

    def _listing(self) -> list[Path]:
        """:meth:`shard_paths` without the lock (for callers that hold it). Journals are read before the folder is
        listed, so a listing never pairs a merged shard with the inputs it replaced."""
        journals = _journals(self.shards)
        names = {p.name for p in self.shards.glob("part-*.parquet") if _SHARD.match(p.name)}
        for journal in journals:
            if f"{journal['new']}.parquet" in names:
                names -= {f"{stem}.parquet" for stem in journal["old"]}
        return sorted(self.shards / name for name in names)

    @contextlib.contextmanager
    def _reader_lock(self) -> Iterator[None]:
        """A shared lock on ``shards/.compact.lock``: a compaction swaps shards in and out only while no reader is
        listing (or streaming through) the table. A store that cannot be written cannot be compacted: no lock."""
        if not os.access(self.shards, os.W_OK):
            yield
            return
        with self._lock(".compact.lock", shared=True):
            yield

    def dataset(self) -> pads.Dataset:
        """The committed shards' metadata as one ``pyarrow.dataset`` (columnar, read lazily, shard by shard), each
        parquet verified against its checksum first (once per process).

        Raises:
            StoreError: a parquet fails its checksum or its recorded row count.

        The dataset names the shards committed now; a later compaction may replace them (:meth:`metadata` and
        :meth:`iter_batches` read under the table's reader lock instead).
        """
        with self._reader_lock():
            return self._dataset(self._listing())

    def _dataset(self, paths: list[Path]) -> pads.Dataset:
        for parquet in paths:
            self._check_meta(parquet)
        return pads.dataset([str(p) for p in paths], schema=SCHEMA, format="parquet")

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """The row metadata of every shard (``columns`` of :data:`SCHEMA`, default all), duplicates included, without
        reading the features; each parquet is verified against its checksum first. Read through :meth:`dataset`.

        Raises:
            StoreError: a shard is unreadable or fails its checksum (names it, with the fix).
        """
        with self._reader_lock():
            dataset = self._dataset(self._listing())
            try:
                return dataset.to_table(columns=columns or SCHEMA.names)
            except (OSError, pa.ArrowException):
                for parquet in dataset.files:  # name the shard that cannot be read (a shard written before checksums)
                    self._read_meta(Path(parquet), columns)
                raise

    def known_hashes(self) -> set[str]:
        """Content hashes already in the table (whose features need no extraction)."""
        hashes: set[str] = set()
        with self._reader_lock():
            for parquet in self._listing():
                hashes.update(self._read_meta(parquet, ["content_hash"]).column(0).to_pylist())
        return hashes

    def known_items(self) -> set[tuple[str, str, tuple[str, ...]]]:
        """Every stored item as its key ``(content hash, item id, sorted labels)`` (see :func:`item_key`)."""
        items: set[tuple[str, str, tuple[str, ...]]] = set()
        with self._reader_lock():
            for parquet in self._listing():
                meta = self._read_meta(parquet, ["content_hash", "item_id", "labels"]).to_pydict()
                items.update(item_key(h, i, labels) for h, i, labels in zip(*meta.values()))
        return items

    def has(self, content_hash: str) -> bool:
        return content_hash in self.known_hashes()

    def vectors(self, hashes: set[str]) -> dict[str, np.ndarray]:
        """The stored float32 (dim,) row of each of ``hashes`` that the table holds (the first in shard order): the
        features another item with the same bytes shares."""
        found: dict[str, np.ndarray] = {}
        with self._reader_lock():
            for parquet in self._listing():
                shard_hashes = self._read_meta(parquet, ["content_hash"]).column(0).to_pylist()
                wanted = [(i, h) for i, h in enumerate(shard_hashes) if h in hashes and h not in found]
                if wanted:
                    X = self._load_npy(parquet, len(shard_hashes))
                    found.update((h, np.array(X[i], dtype=np.float32)) for i, h in wanted)
        return found

    def iter_batches(self, rows: int = 65536, *, columns: list[str] | None = None,
                     unique: bool = True) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """Stream the table shard by shard: memory holds about one batch of features and of metadata, never the
        table (one shard's metadata in a shard that holds a repeated item).

        Args:
            rows: the most rows per batch; a batch never spans two shards (nor two row groups of a parquet).
            columns: metadata columns of :data:`SCHEMA` (default all).
            unique: keep the first row of each item (content hash, item id, labels), the rows :meth:`read` gives.

        Yields:
            ``(X, meta)``: X a read-only float32 (n, dim) slice of one shard's memory-mapped ``.npy`` (a gathered copy
            in a shard that holds a repeated item, when ``unique``), meta its n metadata rows. When the next batch is
            asked for, the previous one's pages leave the process's resident memory (``MADV_DONTNEED``; they stay in
            the page cache, and a batch kept by the caller reads them back from there), so the stream holds about one
            batch, not one shard.

        Raises:
            StoreError: a shard fails its checks (checksums, shape, finite values; each shard once per process).

        A compaction waits until the iteration ends (the stream holds the table's shared reader lock).
        """
        if rows < 1:
            raise StoreError(f"iter_batches: rows must be at least 1, got {rows}")
        with self._reader_lock():
            parquets = self._listing()
            keep = self._first_rows(parquets) if unique else None
            start = 0
            for parquet in parquets:
                n = self._check_meta(parquet)
                X = self._load_npy(parquet, n)
                local = None if keep is None else _local(keep, start, start + n)
                start += n
                if local is None or len(local) == n:  # no repeated item in this shard: its metadata streams too
                    lo = 0
                    for batch in _scan(parquet, columns or SCHEMA.names, rows):  # fewer rows at a row group's end
                        yield X[lo:lo + batch.num_rows], pa.Table.from_batches([batch])
                        _drop_pages(X, lo, lo + batch.num_rows)
                        lo += batch.num_rows
                else:
                    meta = self._read_meta(parquet, columns)
                    for lo in range(0, len(local), rows):
                        chosen = local[lo:lo + rows]
                        yield X[chosen], meta.take(pa.array(chosen))
                del X  # the shard's map closes here unless the caller kept a batch

    def rows_view(self, *, unique: bool = True, max_open: int | None = None) -> ShardedRows:
        """An array-like over every shard (``view[idx]`` gathers rows from the shards' files): what training samples
        batches from without concatenating the table.

        Args:
            unique: the rows :meth:`read` gives (the first of each item); False: every stored row.
            max_open: shard files open at once (the least recently used closed first); default half the process's
                limit on open files, at most 4,096. Random batches over more shards than this open and close a file
                per row (measured in benchmarks/results/store_scale.md).

        Raises:
            StoreError: a shard fails its checks (checksums, shape, finite values; each shard once per process).

        The view holds the table's shared reader lock until :meth:`ShardedRows.close`: a compaction waits for it.
        """
        lock = self._hold_reader_lock()
        try:
            parquets = self._listing()
            counts, offsets = [], []
            for parquet in parquets:
                rows = self._check_meta(parquet)
                X = self._load_npy(parquet, rows)
                offsets.append(int(X.offset))
                counts.append(rows)
                del X
            keep = self._first_rows(parquets) if unique else None
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return ShardedRows(self, parquets, offsets, counts, keep, lock, max_open=max_open or _open_files_budget())

    def _hold_reader_lock(self) -> BinaryIO | None:
        """The shared reader lock of :meth:`_reader_lock`, held until the returned file is closed (None: a store that
        cannot be written, which nothing compacts)."""
        if fcntl is None or not os.access(self.shards, os.W_OK):
            return None
        f = open(self.shards / ".compact.lock", "ab")  # noqa: SIM115 (closed by ShardedRows.close: the lock's life)
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        return f

    def _first_rows(self, parquets: list[Path]) -> np.ndarray | None:
        """The global indices of the rows :meth:`read` keeps (the first of each item), or None when every row is its
        own item. Costs 8 bytes per row (a 64-bit fingerprint of each content hash) and one pass over the content
        hashes, two when a fingerprint repeats; item keys are built only for the rows whose fingerprint repeats (rare:
        the same bytes under two names, or an item written twice)."""
        counts = [self._check_meta(p) for p in parquets]
        fingerprints = np.empty(sum(counts), dtype=np.int64)
        start = 0
        for parquet in parquets:
            for batch in _content_hashes(parquet):
                fingerprints[start:start + len(batch)] = _fingerprints(batch)
                start += len(batch)
        fingerprints.sort()  # in place: a sorted copy would double the 8 bytes per row
        repeated = np.unique(fingerprints[1:][fingerprints[1:] == fingerprints[:-1]])
        del fingerprints
        if not len(repeated):
            return None
        drop: list[int] = []
        seen: set[tuple[str, str, tuple[str, ...]]] = set()
        start = 0
        for parquet, n in zip(parquets, counts):  # a second pass, for the tables where a content hash repeats
            shard = np.concatenate([_fingerprints(batch) for batch in _content_hashes(parquet)])  # a shard has rows
            local = np.flatnonzero(np.isin(shard, repeated))
            if len(local):
                meta = self._read_meta(parquet, ["content_hash", "item_id", "labels"]).take(pa.array(local)).to_pydict()
                for i, h, item, labels in zip(local, *meta.values()):
                    key = item_key(h, item, labels)
                    if key in seen:
                        drop.append(start + int(i))
                    seen.add(key)
            start += n
        if not drop:
            return None
        keep = np.ones(start, dtype=bool)
        keep[drop] = False
        return np.flatnonzero(keep)

    def read(self) -> tuple[np.ndarray, pa.Table]:
        """All rows in memory, the first of each item (content hash, item id, labels) kept: the small-table path
        (tests, a demo). A table of any size streams through :meth:`iter_batches` or samples through
        :meth:`rows_view` instead; this concatenates every shard.

        Returns:
            ``(X, meta)``: X float32 (n, dim), the memory map itself when the table is one shard without duplicates,
            else one concatenated array; meta a ``pyarrow.Table`` with the :data:`SCHEMA` columns, row-aligned with X.

        Raises:
            StoreError: a shard's ``.npy`` is missing, its dtype, width or row count disagrees, a file fails its
                checksum or holds non-finite values (names the shard, with the fix).
        """
        arrays, metas = [], []
        with self._reader_lock():
            parquets = self._listing()
            for parquet in parquets:
                meta = self._read_meta(parquet)
                arrays.append(self._load_npy(parquet, meta.num_rows))
                metas.append(meta)
            keep = self._first_rows(parquets)
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32), SCHEMA.empty_table()
        meta = pa.concat_tables(metas)
        if len(arrays) == 1 and keep is None:
            return arrays[0], meta
        X = np.concatenate(arrays, axis=0) if len(arrays) > 1 else np.asarray(arrays[0])
        if keep is not None:
            X, meta = X[keep], meta.take(pa.array(keep))
        return np.ascontiguousarray(X), meta

    def __len__(self) -> int:
        return len(self.known_items())

    # ---- compaction
    def compact(self, target_rows: int | None = None) -> list[Merge]:
        """Merge runs of consecutive small shards into shards of at most ``target_rows`` rows, keeping every row and
        the commit order, so that reads open fewer files.

        Each merge is atomic and survives a kill at any point: the merged shard is written as ``.incomplete`` files
        (npy, parquet, checksums), then a journal ``compact-<stem>.journal`` names it and the shards it replaces, then
        its npy and checksums are renamed in and its parquet last (the commit point: from here a listing shows the
        merged shard and hides the replaced ones), then the replaced shards are removed and the journal last. The
        next open (:meth:`clean_orphans`) finishes a merge killed after its commit point and removes one killed
        before it. Runs under the table's exclusive locks: writers and readers wait for each merge, and each merge
        waits for the open streams and views of the table (close this process's own first: it would wait for them).

        Args:
            target_rows: the most rows of a merged shard; default ``COMPACT_BYTES`` of features (256 MB).

        Returns:
            One :class:`Merge` per merged shard.

        Raises:
            StoreError: an input shard fails its checks (it is left as it is; ``crossmodal store repair``).
            StoreFullError: the disk is full; the merge's files are removed, the table is as it was.
        """
        target = target_rows if target_rows is not None else self.default_target_rows()
        if target < 2:
            raise StoreError(f"compact: target_rows must be at least 2, got {target}")
        merges: list[Merge] = []
        while True:  # one merge per pass, the locks released in between so that waiting writers get a turn
            with self._lock(".compact.lock", shared=False), self._lock(".writers.lock", shared=False):
                self._recover()
                group = next(iter(self._plan(target)), None)
                if group is None:
                    return merges
                merges.append(self._merge(group))

    def default_target_rows(self) -> int:
        """The rows of ``COMPACT_BYTES`` of this table's features: the default size of a merged shard."""
        return max(2, COMPACT_BYTES // (4 * self.dim))

    def _plan(self, target: int) -> list[list[tuple[Path, int]]]:
        """Runs of two or more consecutive shards, each run's rows at most ``target``."""
        groups: list[list[tuple[Path, int]]] = [[]]
        for parquet in self._listing():
            rows = self._check_meta(parquet)
            if sum(n for _, n in groups[-1]) + rows > target:
                groups.append([])
            if rows < target:
                groups[-1].append((parquet, rows))
        return [g for g in groups if len(g) > 1]

    def _merge(self, group: list[tuple[Path, int]]) -> Merge:
        """One merge (see :meth:`compact`), under both exclusive locks."""
        first = _SHARD.match(group[0][0].name)
        assert first is not None  # listed shards match _SHARD
        stem = f"part-{first.group(1)}-{uuid.uuid4().hex[:8]}"  # the first input's place in the commit order
        npy, parquet, sums = (self.shards / f"{stem}{suffix}" for suffix in (".npy", ".parquet", SUMS))
        temporary = [Path(f"{path}.incomplete") for path in (npy, parquet, sums)]
        journal = self.shards / f"compact-{stem}{JOURNAL}"
        rows = sum(n for _, n in group)
        old = [p.stem for p, _ in group]
        try:
            inputs = [self._load_npy(p, n) for p, n in group]  # each input checked (once per process) before copying
            digest = hashlib.sha256()
            with open(temporary[0], "xb") as f:
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                             "shape": (rows, self.dim)})
                f.write(header.getvalue())
                digest.update(header.getvalue())
                for (source, _), X in zip(group, inputs):
                    for block in _blocks(str(source.with_suffix(".npy")), int(X.offset)):
                        f.write(block)
                        digest.update(block)
                del inputs
                _flush(f)
            with open(temporary[1], "xb") as f:
                with pq.ParquetWriter(f, SCHEMA) as writer:  # one input's rows in memory at a time
                    for p, _ in group:
                        writer.write_table(self._read_meta(p))
                _flush(f)
            record = {"npy": digest.hexdigest(), "parquet": file_sha256(temporary[1]), "rows": rows}
            with open(temporary[2], "x") as f:
                f.write(json.dumps(record))
                _flush(f)
            atomic_write(journal, json.dumps({"new": stem, "old": old}))
            os.replace(temporary[0], npy)
            os.replace(temporary[2], sums)
            fsync_path(self.shards)
            os.replace(temporary[1], parquet)  # the commit point: listings show the merged shard, not its inputs
            fsync_path(self.shards)
        except BaseException as exc:
            if not parquet.exists():
                for path in (*temporary, npy, sums, journal):
                    path.unlink(missing_ok=True)
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._full(rows * self.dim * 4) from exc
            raise
        self._finish({"new": stem, "old": old, "path": journal})
        return Merge(parquet, len(group), rows)

    def _finish(self, journal: dict[str, Any]) -> None:
        """Remove the shards a committed merge replaced (parquets first: each stops existing), then its journal."""
        for stem in journal["old"]:
            (self.shards / f"{stem}.parquet").unlink(missing_ok=True)
        fsync_path(self.shards)
        for stem in journal["old"]:
            for suffix in (".npy", SUMS):
                (self.shards / f"{stem}{suffix}").unlink(missing_ok=True)
        journal["path"].unlink(missing_ok=True)
        fsync_path(self.shards)

    def _recover(self) -> list[str]:
        """Finish the merges killed after their commit point, undo those killed before it (under the exclusive
        writers lock). Returns what was done, one line per journal."""
        done = []
        for journal in _journals(self.shards):
            new = self.shards / f"{journal['new']}.parquet"
            if new.exists():
                self._finish(journal)
                done.append(f"finished the merge into {new.name} (its inputs removed)")
            else:
                for suffix in (".npy", SUMS, ".npy.incomplete", ".parquet.incomplete", f"{SUMS}.incomplete"):
                    (self.shards / f"{journal['new']}{suffix}").unlink(missing_ok=True)
                journal["path"].unlink(missing_ok=True)
                done.append(f"undid the uncommitted merge into {new.name} (its inputs kept)")
        return done

    # ---- claims: concurrent extractions on one table split the work
    def claim(self, hashes: Iterable[str], *, owner: str) -> list[str]:
        """Claim the content hashes this run will extract, so that a concurrent run skips them.

        Of ``hashes``, those that are neither stored nor claimed by another live owner are claimed by ``owner`` and
        returned (in the given order, once each; those ``owner`` already held included). A claim records the owner,
        its process id, host, process start time and the time; runs under the table's exclusive ``.seq.lock``.

        A claim is stale, and taken over, when its process is gone from this host (or its id now names another
        process), or when it comes from another host and was not renewed (by a ``claim`` of its owner) for
        ``CLAIM_TTL`` seconds. Release the claims after committing the shards (:meth:`release`): the committed rows
        are then skipped as stored.
        """
        wanted = list(dict.fromkeys(hashes))
        with self._reader_lock(), self._lock(".seq.lock", shared=False):  # the reader lock first, as compact takes it
            stored = self._stored_hashes()
            held: set[str] = set()
            own: set[str] = set()
            for record in self._claim_records():
                if record["owner"] == owner:
                    own.update(record["hashes"])
                elif _live(record):
                    held.update(record["hashes"])
                else:
                    record["path"].unlink(missing_ok=True)  # a dead run's claim: its items are free again
            granted = [h for h in wanted if h not in stored and h not in held]
            kept = sorted((own - stored) | set(granted))
            record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(),
                      "started": _process_start(os.getpid()), "time": time.time(), "hashes": kept}
            self.claims_dir.mkdir(exist_ok=True)
            atomic_write(self._claim_path(owner), json.dumps(record))
        return granted

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (a run that finished or stopped: its unextracted items are free again)."""
        with self._lock(".seq.lock", shared=False):
            self._claim_path(owner).unlink(missing_ok=True)

    def claims(self) -> list[Claim]:
        """The recorded claims, live or stale, oldest first: who is extracting what in this table."""
        return [Claim(r["owner"], r["pid"], r["host"], r["time"], len(r["hashes"]), _live(r))
                for r in sorted(self._claim_records(), key=lambda r: r["time"])]

    @property
    def claims_dir(self) -> Path:
        return self.shards / "claims"

    def _claim_path(self, owner: str) -> Path:
        return self.claims_dir / f"{hashlib.sha256(owner.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.json"

    def _claim_records(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.claims_dir.glob("*.json")) if self.claims_dir.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except FileNotFoundError:
                continue  # released meanwhile
            except ValueError as exc:
                raise StoreError(f"{path}: not a claim record ({exc})",
                                 hint="delete it when no extraction is running on this workspace") from exc
            records.append({**record, "path": path})
        return records

    def _stored_hashes(self) -> set[str]:
        """The content hashes of the committed shards, read once per shard per table object (a shard's rows never
        change; a compaction or a dropped shard makes it read the table again)."""
        paths = set(self._listing())  # the caller holds the reader lock
        if not paths >= self._hashes_seen:
            self._hashes, self._hashes_seen = set(), set()
        for parquet in sorted(paths - self._hashes_seen):
            self._hashes.update(self._read_meta(parquet, ["content_hash"]).column(0).to_pylist())
        self._hashes_seen = paths
        return self._hashes

    # ---- checking
    def verify(self) -> list[ShardProblem]:
        """Check every shard (checksums, shape, finite values), ignoring the per-process cache.

        Returns:
            One :class:`ShardProblem` per bad shard; shards written before checksums were recorded pass when the
            other checks do (:meth:`unchecked` lists them).
        """
        problems = []
        with self._reader_lock():
            for parquet in self._listing():
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
        """Remove a shard: its parquet first (the shard no longer exists), then its other files. Waits, like
        :meth:`compact`, for the open streams and views of the table.

        Returns:
            The rows it held when its parquet can still be read (unverified: for saying what was dropped), else None.
        """
        with self._lock(".compact.lock", shared=False), self._lock(".writers.lock", shared=False):
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

    def _check_meta(self, parquet: Path) -> int:
        """A shard's row count from its parquet's footer, after the parquet passed its checksum (once per process)."""
        sums = self._sums(parquet)
        if sums is not None:
            _check_file(parquet, sums["parquet"], self._hint(parquet), cached=True)
        try:
            rows = pq.ParquetFile(parquet).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{parquet}: not a readable shard ({exc})", hint=self._hint(parquet)) from exc
        if sums is not None and "rows" in sums and rows != sums["rows"]:
            raise StoreError(f"{parquet}: {rows} rows, its checksum record says {sums['rows']}",
                             hint=self._hint(parquet))
        return rows

    def _load_npy(self, parquet: Path, rows: int, *, cached: bool = True) -> np.memmap:
        """A shard's float32 (rows, dim) memory map, after its checks (checksum, shape, finite; once per process).

        The checks read the file once in blocks (:func:`_scan_npy`), so a shard of any size is checked in constant
        memory: the bytes pass through the page cache, not through the process's resident memory."""
        npy = parquet.with_suffix(".npy")
        hint = self._hint(parquet)
        try:
            X = cast(np.memmap, np.load(npy, mmap_mode="r", allow_pickle=False))
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
        digest, bad = _scan_npy(npy, int(X.offset), self.dim)
        if sums is not None and digest != sums["npy"]:
            raise StoreError(f"{npy}: sha256 differs from the one recorded at commit; the file was changed", hint=hint)
        if len(bad):
            raise StoreError(f"{npy}: non-finite values in {len(bad)} rows (first: {bad[:5].tolist()})", hint=hint)
        _VERIFIED.add(key)
        return X


class ShardedRows:
    """The rows of a table's shards as one read-only array: ``len``, ``shape``, ``dtype`` and ``view[i]``,
    ``view[a:b]`` or ``view[int array]`` (a new float32 ndarray read from the shards' ``.npy`` files), and
    ``np.asarray(view)`` (the whole table: the small-table path).

    Built by :meth:`FeatureTable.rows_view`, after every shard passed its checks. Rows are read with ``preadv``, so
    the process holds the rows asked for and the page cache the rest; at most ``max_open`` shard files are open.
    The view holds the table's shared reader lock, so no compaction replaces its shards while it is open:
    :meth:`close` it (or use ``with``) when done.
    """

    def __init__(self, table: FeatureTable, parquets: list[Path], offsets: list[int], counts: list[int],
                 keep: np.ndarray | None, lock: BinaryIO | None, *, max_open: int):
        self.table = table
        self.parquets = parquets
        self._offsets, self._counts, self._lock = offsets, counts, lock
        self._starts = np.cumsum([0, *counts], dtype=np.int64)  # raw row where each shard starts, then the total
        self._keep = keep
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard -> open .npy descriptor, least recently used first
        self.max_open = max(1, max_open)
        self.closed = False
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.shape = (int(len(keep)) if keep is not None else int(self._starts[-1]), table.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedRows({self.table.path}, shape={self.shape}, shards={len(self.parquets)})"

    def __enter__(self) -> ShardedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the shards' files and release the reader lock."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.closed = True
        if self._lock is not None:
            self._lock.close()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        X = self[np.arange(len(self))]
        return X if dtype is None else X.astype(dtype, copy=False)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index) + len(self) if int(index) < 0 else int(index)
            if not 0 <= i < len(self):
                raise IndexError(f"row {int(index)} out of range for {len(self)} rows")
            return self._gather(np.array([i], dtype=np.int64))[0]
        if isinstance(index, slice):
            return self._gather(np.arange(*index.indices(len(self)), dtype=np.int64))
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"a boolean mask of {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"rows are chosen by an int, a slice or an integer array, not {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"rows {idx.min()}..{idx.max()} out of range for {len(self)} rows")
        return self._gather(np.where(idx < 0, idx + len(self), idx).reshape(-1)).reshape(*idx.shape, self.shape[1])

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (valid, non-negative), read with one ``pread`` per run of consecutive rows of one shard: only
        the rows asked for enter the process (a memory map would fault in whole pages around each, and keep them)."""
        raw = idx if self._keep is None else self._keep[idx]
        if not len(raw):
            return np.empty((0, self.shape[1]), dtype=np.float32)
        shard = np.searchsorted(self._starts, raw, side="right") - 1
        local = raw - self._starts[shard]
        breaks = np.flatnonzero((np.diff(raw) != 1) | (np.diff(shard) != 0)) + 1
        firsts = np.r_[0, breaks]
        lengths = np.diff(np.r_[firsts, len(raw)])
        row_bytes = 4 * self.shape[1]
        parts = []
        for s, row, n in zip(shard[firsts].tolist(), local[firsts].tolist(), lengths.tolist()):
            part = os.pread(self._fd(s), n * row_bytes, self._offsets[s] + row * row_bytes)
            if len(part) != n * row_bytes:
                raise StoreError(f"{self.parquets[s].with_suffix('.npy')}: shorter than its {self._counts[s]} rows",
                                 hint=self.table._hint(self.parquets[s]))
            parts.append(part)
        return np.frombuffer(b"".join(parts), dtype=np.float32).reshape(len(raw), self.shape[1]).copy()

    def _fd(self, s: int) -> int:
        fd = self._fds.pop(s, None)
        if fd is None:
            if self.closed:
                raise StoreError(f"{self.table.path}: this view of the table was closed",
                                 hint="take a new one with FeatureTable.rows_view()")
            try:
                fd = os.open(self.parquets[s].with_suffix(".npy"), os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError(f"{self.parquets[s].with_suffix('.npy')}: missing, but its parquet is committed",
                                 hint=self.table._hint(self.parquets[s])) from None
            while len(self._fds) >= self.max_open:
                os.close(self._fds.popitem(last=False)[1])  # the least recently used shard's file
        self._fds[s] = fd
        return fd

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """The metadata rows of the view (``columns`` of :data:`SCHEMA`, default all), row-aligned with it."""
        parts = [self.table._read_meta(p, columns) for p in self.parquets]
        meta = pa.concat_tables(parts) if parts else SCHEMA.empty_table().select(columns or SCHEMA.names)
        return meta if self._keep is None else meta.take(pa.array(self._keep))


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    """A shard that fails verification: its table, its parquet path and why."""

    table: FeatureTable
    parquet: Path
    reason: str


@dataclasses.dataclass(frozen=True)
class Merge:
    """One merge of :meth:`FeatureTable.compact`: the merged shard's parquet, how many shards it replaced, its rows."""

    parquet: Path
    shards: int
    rows: int


@dataclasses.dataclass(frozen=True)
class Claim:
    """A run's claim on items of a table (:meth:`FeatureTable.claim`): who, where, since when, how many, and whether
    its process is still alive (a stale claim is taken over by the next ``claim``)."""

    owner: str
    pid: int
    host: str
    time: float
    items: int
    live: bool


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
JOURNAL = ".journal"
COMPACT_BYTES = 256 << 20  # features per merged shard by default: a reader maps a few of these at once
CLAIM_TTL = 3600.0  # seconds a claim of another host lives without being renewed (its process cannot be checked)
SCAN_BLOCK = 8 << 20  # bytes of an .npy checked at a time


def _file_state(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


def _scan_npy(npy: Path, offset: int, dim: int) -> tuple[str, np.ndarray]:
    """One pass over an ``.npy`` in blocks of ``SCAN_BLOCK`` bytes: the file's sha256 and the rows holding a
    non-finite value (the header at ``offset`` excluded from the check)."""
    digest = hashlib.sha256()
    row_bytes = 4 * dim
    buffer = bytearray(max(1, SCAN_BLOCK // row_bytes) * row_bytes)
    bad: list[np.ndarray] = []
    row = 0
    with open(npy, "rb") as f:
        digest.update(f.read(offset))
        while got := f.readinto(buffer):
            digest.update(memoryview(buffer)[:got])
            block = np.frombuffer(buffer, dtype=np.float32, count=got // 4).reshape(-1, dim)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                bad.append(row + np.flatnonzero(~finite))
            row += len(block)
    return digest.hexdigest(), np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def _live(record: dict[str, Any]) -> bool:
    """Whether a claim's process still runs: checked by process id (and start time) on this host; a claim of
    another host lives while its owner renews it within ``CLAIM_TTL`` seconds."""
    if record.get("host") != socket.gethostname():
        return time.time() - float(record.get("time", 0)) < CLAIM_TTL
    pid = int(record.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    started = record.get("started")
    return started is None or _process_start(pid) in (None, started)  # a reused process id is another process


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _blocks(npy: str, offset: int) -> Iterator[bytes]:
    """An ``.npy``'s data after its header, ``SCAN_BLOCK`` bytes at a time."""
    with open(npy, "rb") as f:
        f.seek(offset)
        while block := f.read(SCAN_BLOCK):
            yield block


def _open_files_budget() -> int:
    """Half the process's soft limit on open files, at most 4,096 (64 where the limit cannot be read)."""
    try:
        import resource
    except ImportError:  # pragma: no cover  (Windows)
        return 64
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft // 2))


def _drop_pages(X: np.memmap, lo: int, hi: int) -> None:
    """Take rows ``[lo, hi)`` of a read-only memory map out of the process's resident memory (whole pages inside
    them only). They stay in the page cache; reading them again maps them back."""
    mapping = getattr(X, "_mmap", None)  # numpy's mmap.mmap behind an np.memmap
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    lead = X.offset % mmap.ALLOCATIONGRANULARITY  # the map starts at the granule below the header's end
    row_bytes = X.shape[1] * X.itemsize
    begin = -(-(lead + lo * row_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (lead + hi * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > begin:
        mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def _content_hashes(parquet: Path) -> Iterator[pa.Array]:
    """A shard's content hashes, a batch at a time (its parquet already checked)."""
    for batch in _scan(parquet, ["content_hash"], 65536):
        yield batch.column(0)


def _scan(parquet: Path, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """A shard's metadata ``columns`` in order, ``rows`` at most at a time, without read-ahead: one row group's
    column chunks in memory (columns missing from an older shard come as nulls)."""
    dataset = pads.dataset(parquet, schema=SCHEMA, format="parquet")
    yield from dataset.to_batches(columns=columns, batch_size=rows, batch_readahead=0, fragment_readahead=0,
                                  use_threads=False)


def _fingerprints(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit fingerprint of each string (equal strings, equal fingerprints; the rare equal fingerprints of two
    strings are told apart by the caller). Content hashes (64 hex digits) are mixed straight from Arrow's buffer, so
    no Python string is made; other strings go through ``hash``."""
    parts = []
    for chunk in strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]:
        chunk = chunk.cast(pa.string())
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        width = int(offsets[1] - offsets[0]) if len(chunk) else 0
        if chunk.null_count == 0 and width and width % 8 == 0 and (np.diff(offsets) == width).all():
            data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
            words = data.view(np.uint64).reshape(len(chunk), width // 8)
            mixed = np.zeros(len(chunk), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for k in range(words.shape[1]):
                    mixed = (mixed ^ words[:, k]) * np.uint64(0x100000001B3)  # FNV-style: order matters
            parts.append(mixed.view(np.int64))
        else:
            parts.append(np.fromiter(map(hash, chunk.to_pylist()), dtype=np.int64, count=len(chunk)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _local(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The members of the sorted global row indices ``rows`` in ``[start, stop)``, as indices from ``start``."""
    lo, hi = np.searchsorted(rows, [start, stop])
    return rows[lo:hi] - start


def _journals(shards: Path) -> list[dict[str, Any]]:
    """The compaction journals of a shards folder (each: the merged shard ``new`` and the ``old`` ones it replaces)."""
    found = []
    for path in sorted(shards.glob(f"compact-*{JOURNAL}")):
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue  # finished meanwhile, or torn: a journal is written whole (atomic_write), so never both
        if isinstance(record, dict) and {"new", "old"} <= set(record):
            found.append({**record, "path": path})
    return found


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
