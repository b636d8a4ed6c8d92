"""Retrieval indexes: exact search (the default, what MAP@all needs) and FAISS approximate search, behind one registry.

An index holds unit-norm embeddings of one modality with their item ids, and answers top-k queries by inner product
(cosine similarity for ``metric="cosine"``, which normalises what it is given). Specs follow the CLI's ``--index``:

* ``"exact"``: every vector (memory-mapped after ``load_index``), searched block by block of the gallery with a running
  top-k merge, so a search never holds more than one block's similarities and no concatenated copy of the vectors;
  ties go to the item added first. Right below a few hundred thousand items.
* ``"faiss:<factory string>"``: any `faiss.index_factory` string, e.g. ``faiss:Flat`` (exact), ``faiss:HNSW32``,
  ``faiss:IVF1024,Flat``, ``faiss:IVF1024,PQ64``. Inner product on normalised vectors. Indexes that need training
  (IVF, PQ) are trained on a random sample of ``max(40 * nlist, 10_000)`` vectors, at most 262,144 (the first
  ``add`` trains them when ``train`` was not called), then vectors are added in batches, so they are never held twice.
  Search defaults: ``nprobe = min(nlist, 48)`` for IVF and ``efSearch = 128`` for HNSW; ``search_params`` overrides
  them (``"nprobe=64,efSearch=256"``). Needs ``pip install 'crossmodal-toolkit[ann]'``.
* ``"ivf-ondisk:<IVF factory string>"``: a FAISS IVF index whose inverted lists live in ``index.ivfdata``, memory-mapped
  (``faiss.OnDiskInvertedLists``): the quantiser is in memory, the codes are read from disk per probed list, so the
  gallery may exceed memory. ``build_from_batches`` fills it from a stream in shards of at most 256 MiB merged by list;
  ``train_ivf`` / ``build_ivf_shard`` / ``merge_ivf_shards`` do the same across processes or machines. Default search
  ``nprobe = min(nlist, 64)``.
* ``"auto"``: chosen from the number of items (``size=``) and a memory budget (``memory_budget=`` bytes, default half
  the memory available when choosing): ``ivf-ondisk:IVF<nlist>_HNSW32,Flat`` when the float32 vectors exceed the
  budget; else exact below 200,000 items (or when the size is unknown), ``faiss:HNSW32`` below 1,000,000 (all vectors
  in memory), and ``faiss:IVF<nlist>_HNSW32,SQ8`` above (``nlist`` ~ 4 sqrt(n) as a power of two, an HNSW coarse
  quantiser, 8-bit scalar codes: one byte a dimension). benchmarks/search.py measured the last at 10^6 x 128: p50
  0.4 ms, recall@10 0.96 with nprobe 48; benchmarks/index_scale.py measures exact against ivf-ondisk up to 10^7.

On disk (``save``): ``index.json`` (backend, spec, width, metric, count, the sha256 of every other file, and ``extra``
JSON from the caller), ``ids.parquet``, and ``vectors.npy`` (exact), ``index.faiss`` (FAISS) or ``index.faiss`` and
``index.ivfdata`` (ivf-ondisk). Nothing is pickled, and ``load_index`` refuses any file whose sha256 differs from the
one recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from crossmodal.common.files import atomic_write
from crossmodal.common.hashing import file_sha256
from crossmodal.errors import ConfigError, FeatureMismatchError, ModelFileError, NotTrainedError
from crossmodal.metrics import CHUNK_ELEMENTS, top_k
from crossmodal.registry import Registry

Metric = Literal["cosine", "ip"]
Batches = Iterable[tuple[np.ndarray, Sequence[str] | np.ndarray]]

INDEX_FILE = "index.json"
IDS_FILE = "ids.parquet"
VERIFIED_FILE = "index.verified.json"  # the files' stamps when their sha256 last passed (load_index's cache)
FORMAT = "crossmodal-index"
FORMAT_VERSION = 1
AUTO_EXACT_LIMIT = 200_000  # "auto" keeps exact search below this many items
AUTO_HNSW_LIMIT = 1_000_000  # ... and HNSW (all vectors in RAM) below this many; IVF-PQ above
AUTO_MEMORY_FRACTION = 0.5  # the default memory budget: this fraction of the memory available when choosing
ADD_BATCH = 65_536  # rows normalised and added at a time
SEARCH_BLOCK = 262_144  # gallery rows an exact search scores at a time (128 MiB at 128 dims)
TRAIN_MAX = 262_144  # IVF training vectors at most: k-means costs samples x lists x dims per iteration
ONDISK_SHARD_BYTES = 256 << 20  # codes an on-disk build holds in memory before writing them as a shard
ONDISK_NPROBE = 64  # default lists probed by an on-disk IVF index

INDEX_BACKENDS: Registry[type[Index]] = Registry("index backend")

__all__ = ["INDEX_BACKENDS", "Built", "ExactIndex", "FaissIndex", "Index", "IvfOnDiskIndex", "build_from_batches",
           "build_ivf_shard", "choose_spec", "create_index", "default_memory_budget", "format_bytes",
           "list_index_backends", "load_index", "merge_ivf_shards", "parse_bytes", "register_index_backend",
           "resolve_spec", "train_ivf"]


def register_index_backend(cls: type[Index]) -> type[Index]:
    """Class decorator: register an Index subclass under its ``backend`` name (the part of a spec before ``:``)."""
    INDEX_BACKENDS.register(cls, cls.backend)
    return cls


def list_index_backends() -> list[str]:
    return INDEX_BACKENDS.names()


def resolve_spec(spec: str, *, dim: int, size: int | None = None, memory_budget: int | None = None) -> str:
    """Turn ``"auto"`` into a concrete spec for ``size`` items of width ``dim`` (see the module docstring)."""
    return choose_spec(spec, dim=dim, size=size, memory_budget=memory_budget)[0]


def choose_spec(spec: str, *, dim: int, size: int | None = None, memory_budget: int | None = None) -> tuple[str, str]:
    """The concrete spec for ``spec`` and why, in words (for ``"auto"``: the rule of the module docstring).

    Args:
        spec: a spec, or ``"auto"``.
        dim: the width of the vectors.
        size: the number of items, when known.
        memory_budget: bytes the float32 vectors may take in memory; None: ``default_memory_budget()``.

    ``"auto"`` keeps exact search when faiss is not installed, and says so, rather than fail on a choice the user
    did not make.
    """
    if spec != "auto":
        return spec, "as asked"
    if size is None:
        return "exact", "auto: the number of items is unknown, so exact search"
    vector_bytes = 4 * size * dim
    if memory_budget is None:
        budget, budget_words = default_memory_budget(), "the memory budget (half the memory available now)"
    else:
        budget, budget_words = int(memory_budget), "the memory budget"
    budget_words = f"{budget_words}, {format_bytes(budget)}"
    if vector_bytes > budget:
        nlist = _auto_nlist(size)
        chosen = f"ivf-ondisk:IVF{nlist}_HNSW32,Flat"
        why = (f"auto: {format_bytes(vector_bytes)} of vectors ({size:,} x {dim} float32) exceed {budget_words}: IVF"
               f" with {nlist} lists kept on disk, nprobe {min(nlist, ONDISK_NPROBE)}")
    elif size < AUTO_EXACT_LIMIT:
        return "exact", (f"auto: {size:,} items, below {AUTO_EXACT_LIMIT:,}, where exact search is fast and exact"
                         f" ({format_bytes(vector_bytes)} of vectors, within {budget_words})")
    elif size < AUTO_HNSW_LIMIT:
        chosen = "faiss:HNSW32"
        why = (f"auto: {size:,} items, from {AUTO_EXACT_LIMIT:,} to {AUTO_HNSW_LIMIT:,}: an HNSW graph (all in memory:"
               f" {format_bytes(vector_bytes)} of vectors, within {budget_words})")
    else:
        nlist = _auto_nlist(size)
        chosen = f"faiss:IVF{nlist}_HNSW32,SQ8"
        why = (f"auto: {size:,} items, {AUTO_HNSW_LIMIT:,} or more: IVF with {nlist} lists and 8-bit codes in memory"
               f" ({format_bytes(vector_bytes)} of vectors, within {budget_words})")
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        return "exact", (f"{why} would be {chosen}, but faiss is not installed, so exact search, memory-mapped "
                         "(pip install 'crossmodal-toolkit[ann]' for approximate search)")
    return chosen, why


def _auto_nlist(size: int) -> int:
    """~4 sqrt(n) lists as a power of two, but at least 39 vectors a list (what faiss's k-means asks for)."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(size)))
    return max(1, min(nlist, 2 ** int(math.log2(max(size // 39, 1)))))


def default_memory_budget() -> int:
    """``AUTO_MEMORY_FRACTION`` of the memory available now (``MemAvailable``; the physical memory where that is
    unknown)."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 << 30  # a platform that tells neither: assume a small machine
    return int(available * AUTO_MEMORY_FRACTION)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1.5g"`` or ``"1000000"`` as a number of bytes (GB = 10^9, GiB = 2^30).

    Raises:
        ConfigError: not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"not a memory size: {text!r}", hint="e.g. 2GB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``5.1 GB``: decimal units, two significant digits below 10."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def create_index(spec: str, dim: int, *, metric: Metric = "cosine", size: int | None = None,
                 search_params: str = "", memory_budget: int | None = None) -> Index:
    """Build an empty index.

    Args:
        spec: ``"exact"``, ``"faiss:<factory string>"``, ``"ivf-ondisk:<IVF factory string>"`` or ``"auto"``.
        dim: width of the vectors.
        metric: "cosine" (vectors and queries are L2-normalised) or "ip" (raw inner product).
        size: expected number of items; only ``"auto"`` uses it (with ``memory_budget``).
        search_params: FAISS search parameters, e.g. ``"nprobe=64"`` (``exact`` takes none).
        memory_budget: bytes; only ``"auto"`` uses it (see ``choose_spec``).

    Raises:
        UnknownNameError: the backend (before ``:``) is not registered.
        ConfigError: bad metric, width or factory string, or faiss is not installed.
    """
    spec = resolve_spec(spec, dim=dim, size=size, memory_budget=memory_budget)
    backend, _, options = spec.partition(":")
    if metric not in ("cosine", "ip"):
        raise ConfigError(f"unknown index metric {metric!r}", hint="use 'cosine' or 'ip'")
    if dim < 1:
        raise ConfigError(f"index width must be positive, got {dim}")
    return INDEX_BACKENDS.get(backend)(dim, metric=metric, options=options, search_params=search_params)


def load_index(directory: str | os.PathLike[str]) -> Index:
    """Load an index written by ``Index.save`` (or a streaming build), after checking every file against the sha256 in
    ``index.json``.

    Raises:
        ModelFileError: ``index.json`` is missing or unreadable, a file is missing, changed or inconsistent.
    """
    directory = Path(directory)
    meta_path = directory / INDEX_FILE
    if not meta_path.is_file():
        raise ModelFileError(f"{directory}: no {INDEX_FILE}; not an index folder (or its save did not finish)",
                             hint="build the index again")
    try:
        meta = json.loads(meta_path.read_text())
        files, backend = dict(meta["files"]), str(meta["backend"])
        dim, count, metric = int(meta["dim"]), int(meta["count"]), meta["metric"]
        options, search_params = str(meta["options"]), str(meta["search_params"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{meta_path}: not a valid index description ({e})") from e
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')} is not"
                             f" {FORMAT!r} v{FORMAT_VERSION}")
    _verify_files(directory, files)
    if backend not in INDEX_BACKENDS:
        raise ModelFileError(f"{meta_path}: unknown index backend {backend!r}")
    cls = INDEX_BACKENDS.get(backend)
    index = cls(dim, metric=metric, options=options, search_params=search_params)
    index._restore(directory)
    ids = _read_ids(directory / IDS_FILE)
    if len(ids) != count or len(index) != count:
        raise ModelFileError(f"{directory}: {len(ids)} ids and {len(index)} vectors, but {INDEX_FILE} says {count}")
    index._ids = [ids]
    index.trained_on = int(meta.get("trained_on", 0))
    index.extra = dict(meta.get("extra", {}))
    return index


def _verify_files(directory: Path, files: dict[str, str]) -> None:
    """Check each of ``files`` (name -> sha256 from ``index.json``) against its digest, hashing only the files changed
    since they last passed.

    A file that passes is recorded in ``VERIFIED_FILE`` with its stamp (size, mtime, ctime, inode); while the stamp and
    the expected digest stay the same, a later load trusts the earlier check instead of reading the file again (at 10^7
    vectors the hashing was most of a load: 38 s for the exact index's 5.2 GB). Rewriting, truncating or replacing a
    file changes its stamp (restoring its mtime by hand still moves its ctime), so it is hashed, and caught. The record
    is a cache: a folder it cannot be written to is hashed in full on every load.

    Raises:
        ModelFileError: a file is missing or its sha256 differs from the recorded one.
    """
    record_path = directory / VERIFIED_FILE
    try:
        recorded = json.loads(record_path.read_text())
        recorded = recorded if isinstance(recorded, dict) else {}
    except (OSError, ValueError):
        recorded = {}
    passed: dict[str, Any] = {}
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"{path}: missing", hint="the index folder is incomplete; build the index again")
        stamp = _stamp(path)
        if recorded.get(name) != {"sha256": digest, "stamp": stamp}:
            if file_sha256(path) != digest:
                raise ModelFileError(f"{path}: sha256 differs from the one recorded in {INDEX_FILE}; the file was "
                                     "changed or corrupted", hint="build the index again")
        passed[name] = {"sha256": digest, "stamp": stamp}
    if passed != recorded:
        with contextlib.suppress(OSError):  # a read-only folder: the next load hashes again
            atomic_write(record_path, json.dumps(passed, indent=0, sort_keys=True), durable=False)


def _stamp(path: Path) -> list[int]:
    """What changes when a file's bytes may have: size, mtime, ctime (ns) and inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class Index:
    """Base of the index backends: ids bookkeeping, input checks and the on-disk description.

    Attributes:
        dim: vector width. metric: "cosine" or "ip". spec: the spec that rebuilds it. extra: caller's JSON, saved.
        trained_on: how many vectors training used (0 when the backend needs none).
    """

    backend: ClassVar[str]

    def __init__(self, dim: int, *, metric: Metric, options: str, search_params: str):
        self.dim, self.metric, self.options, self.search_params = int(dim), metric, options, search_params
        self.spec = self.backend + (f":{options}" if options else "")
        self._ids: list[Any] = []  # numpy object arrays as added, or one pyarrow string array once loaded
        self.trained_on = 0
        self.extra: dict[str, Any] = {}

    # -- the interface ------------------------------------------------------------------------------------------------
    def train(self, sample: np.ndarray) -> None:
        """Fit what the backend needs (centroids, codebooks) on float (n, dim) vectors; a no-op when none."""

    def train_size(self) -> int:
        """How many vectors ``train`` uses at most; 0 when the backend needs no training (or is trained)."""
        return 0

    def add(self, X: np.ndarray, ids: Sequence[str] | np.ndarray) -> None:
        """Add float (n, dim) vectors with their n item ids."""
        if len(ids) != len(X):
            raise FeatureMismatchError(f"{len(X)} vectors but {len(ids)} ids", hint="give one id per vector")
        self._check(X, "vectors")
        self._add(X)
        self._ids.append(np.asarray([str(i) for i in ids], dtype=object))

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best items for each query.

        Args:
            Q: float (nq, dim) queries.
            k: items per query (capped at the index size).

        Returns:
            (scores float32 (nq, k), best first; ids object (nq, k) str). A slot an approximate index could not fill
            has score -inf and id "".

        Raises:
            NotTrainedError: the index is empty.
            FeatureMismatchError: the queries have another width.
        """
        if len(self) == 0:
            raise NotTrainedError("the index is empty", hint="add vectors before searching")
        if k < 1:
            raise ConfigError(f"k must be positive, got {k}")
        Q = self._prepare(self._check(Q, "queries"))
        scores, rows = self._search(Q, min(int(k), len(self)))
        found = rows >= 0
        return (np.where(found, scores, -np.inf).astype(np.float32),
                np.where(found, self._lookup(np.where(found, rows, 0)), ""))

    @property
    def ids(self) -> np.ndarray:
        """object (n,) item ids, in the order added."""
        if len(self._ids) != 1 or not isinstance(self._ids[0], np.ndarray):
            parts = [np.asarray(p.to_pylist(), dtype=object) if not isinstance(p, np.ndarray) else p for p in self._ids]
            self._ids = [np.concatenate(parts) if parts else np.empty(0, dtype=object)]
        return self._ids[0]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` (created); ``index.json`` is written last, so it marks a complete save."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_FILE).unlink(missing_ok=True)
        files = self._save(directory)
        _write_ids(directory / IDS_FILE, self.ids)
        self._write_description(directory, files)
        return directory

    def __len__(self) -> int:
        raise NotImplementedError

    # -- what a backend implements ------------------------------------------------------------------------------------
    def _add(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (nq, k), int64 rows (nq, k), -1 where nothing was found) for prepared queries."""
        raise NotImplementedError

    def _save(self, directory: Path) -> list[str]:
        """Write the backend's files; return their names."""
        raise NotImplementedError

    def _restore(self, directory: Path) -> None:
        raise NotImplementedError

    def _fill(self, batches: Iterator[np.ndarray], directory: Path) -> list[str]:
        """Add prepared float32 batches straight into files of ``directory`` (a streaming build); return their names.
        The default adds them in memory and saves."""
        for X in batches:
            self._add(X)
        return self._save(directory)

    # -- shared helpers -----------------------------------------------------------------------------------------------
    def _write_description(self, directory: Path, files: list[str]) -> None:
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "backend": self.backend, "spec": self.spec,
            "options": self.options, "search_params": self.search_params, "dim": self.dim, "metric": self.metric,
            "count": len(self), "trained_on": self.trained_on, "extra": self.extra,
            "files": {name: file_sha256(directory / name) for name in [*files, IDS_FILE]},
        }
        atomic_write(directory / INDEX_FILE, json.dumps(meta, indent=2))

    def _lookup(self, rows: np.ndarray) -> np.ndarray:
        """object ids of int64 ``rows`` (any shape); a loaded index keeps its ids as one arrow array (compact)."""
        if len(self._ids) == 1 and not isinstance(self._ids[0], np.ndarray):
            import pyarrow as pa

            taken = self._ids[0].take(pa.array(rows.ravel())).to_pylist()
            return np.asarray(taken, dtype=object).reshape(rows.shape)
        return self.ids[rows]

    def _check(self, X: np.ndarray, what: str) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise FeatureMismatchError(f"{what} of shape {X.shape} do not fit an index of width {self.dim}",
                                       hint="use embeddings of the model the index was built from")
        return X

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """float32 C-contiguous rows, L2-normalised for the cosine metric."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise FeatureMismatchError("vectors contain NaN or inf", hint="check the encoder and its inputs")
        if self.metric == "cosine":
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.float32(1e-12))
        return X


@register_index_backend
class ExactIndex(Index):
    """Brute-force inner product over all vectors, block by block with a running top-k; ties go to the item added
    first."""

    backend = "exact"
    VECTORS_FILE = "vectors.npy"

    def __init__(self, dim: int, *, metric: Metric, options: str, search_params: str):
        if options or search_params:
            raise ConfigError(f"the exact index takes no options (got {options or search_params!r})",
                              hint="use 'exact', or 'faiss:<factory>' for approximate search")
        super().__init__(dim, metric=metric, options=options, search_params=search_params)
        self._vectors: list[np.ndarray] = []  # chunks as added (or one memory map once loaded); never concatenated

    def __len__(self) -> int:
        return sum(len(v) for v in self._vectors)

    def _add(self, X: np.ndarray) -> None:
        self._vectors.extend(self._prepare(X[i:i + ADD_BATCH]) for i in range(0, len(X), ADD_BATCH))

    def _blocks(self) -> Iterator[np.ndarray]:
        for chunk in self._vectors:
            for start in range(0, len(chunk), SEARCH_BLOCK):
                yield chunk[start:start + SEARCH_BLOCK]

    def _search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        best_scores = np.empty((len(Q), 0), np.float32)
        best_rows = np.empty((len(Q), 0), np.int64)
        offset = 0
        for V in self._blocks():
            step = max(1, CHUNK_ELEMENTS // len(V))
            kept = min(k, len(V))
            scores, rows = np.empty((len(Q), kept), np.float32), np.empty((len(Q), kept), np.int64)
            for start in range(0, len(Q), step):
                sims = Q[start:start + step] @ V.T
                order = top_k(sims, kept)
                rows[start:start + step] = order + offset
                scores[start:start + step] = np.take_along_axis(sims, order, axis=1)
            # Earlier blocks' rows come first and each side is sorted best first with ties by row, so top_k's
            # ties-to-the-lower-column keep the item added first.
            scores, rows = np.hstack([best_scores, scores]), np.hstack([best_rows, rows])
            order = top_k(scores, min(k, scores.shape[1]))
            best_scores, best_rows = np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
            offset += len(V)
        return best_scores, best_rows

    def _save(self, directory: Path) -> list[str]:
        with _NpyWriter(directory / self.VECTORS_FILE, self.dim) as out:
            for chunk in self._vectors:
                out.append(chunk)
        return [self.VECTORS_FILE]

    def _fill(self, batches: Iterator[np.ndarray], directory: Path) -> list[str]:
        with _NpyWriter(directory / self.VECTORS_FILE, self.dim) as out:
            for X in batches:
                out.append(X)
        self._restore(directory)
        return [self.VECTORS_FILE]

    def _restore(self, directory: Path) -> None:
        vectors = np.load(directory / self.VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.dtype != np.float32:
            raise ModelFileError(f"{directory / self.VECTORS_FILE}: {vectors.dtype} {vectors.shape}, expected float32"
                                 f" (n, {self.dim})")
        self._vectors = [vectors] if len(vectors) else []


@register_index_backend
class FaissIndex(Index):
    """A FAISS index built from an ``index_factory`` string, on inner product."""

    backend = "faiss"
    INDEX_FILE = "index.faiss"
    MIN_TRAIN = 10_000  # training vectors at least (when there are that many); faiss wants ~40 per IVF centroid

    def __init__(self, dim: int, *, metric: Metric, options: str, search_params: str):
        super().__init__(dim, metric=metric, options=options, search_params=search_params)
        faiss = _faiss()
        if not options:
            raise ConfigError(f"the {self.backend} index needs a factory string",
                              hint="e.g. faiss:HNSW32, faiss:IVF1024,PQ64 or ivf-ondisk:IVF1024,Flat")
        try:
            self._index = faiss.index_factory(self.dim, options, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ConfigError(f"faiss cannot build {options!r} for width {dim}: {str(e).splitlines()[-1]}",
                              hint="see the faiss index_factory syntax, e.g. HNSW32, IVF1024,Flat, IVF1024,PQ64") from e
        self._apply_search_params()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def train_size(self) -> int:
        if self._index.is_trained:
            return 0
        ivf = _faiss().try_extract_index_ivf(self._index)
        return max(min(40 * ivf.nlist, TRAIN_MAX) if ivf is not None else 0, self.MIN_TRAIN)

    def train(self, sample: np.ndarray) -> None:
        size = self.train_size()
        if size == 0:
            return
        sample = self._check(sample, "training vectors")
        if len(sample) > size:
            sample = sample[np.sort(np.random.default_rng(0).choice(len(sample), size, replace=False))]
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None and not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            # k-means assigns points with matrix products on a flat index rather than through the HNSW quantiser,
            # which gets the centroids at the end (faiss does not own it: ``flat`` lives until training ends)
            flat = faiss.IndexFlatL2(self.dim)
            ivf.clustering_index = flat
        try:
            self._index.train(self._prepare(sample))
        except RuntimeError as e:
            raise ConfigError(f"faiss cannot train {self.options!r} on {len(sample)} vectors:"
                              f" {str(e).splitlines()[-1]}", hint="use fewer IVF lists or a smaller PQ") from e
        finally:
            if ivf is not None:
                ivf.clustering_index = None
        self.trained_on = len(sample)

    def set_search_params(self, search_params: str) -> None:
        """Change the search parameters (``"nprobe=64"``, ``"efSearch=256"``) of a built index, e.g. to tune recall
        against latency (benchmarks/search.py); they are saved with it."""
        self.search_params = search_params
        self._apply_search_params()

    def _add(self, X: np.ndarray) -> None:
        self.train(X)
        for i in range(0, len(X), ADD_BATCH):
            self._index.add(self._prepare(X[i:i + ADD_BATCH]))

    def _search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self._index.search(Q, k)
        return scores, rows.astype(np.int64)

    def _save(self, directory: Path) -> list[str]:
        _faiss().write_index(self._index, str(directory / self.INDEX_FILE))
        return [self.INDEX_FILE]

    def _restore(self, directory: Path) -> None:
        self._index = self._read(directory / self.INDEX_FILE)
        self._apply_search_params()

    def _read(self, path: Path, flags: int = 0) -> Any:
        try:
            with _quiet_stdout():  # faiss prints where it found on-disk lists; stdout may carry --json output
                index = _faiss().read_index(str(path), flags)
        except RuntimeError as e:
            raise ModelFileError(f"{path}: faiss cannot read it ({e})") from e
        if index.d != self.dim:
            raise ModelFileError(f"{path}: width {index.d}, {INDEX_FILE} says {self.dim}")
        return index

    def _default_nprobe(self, nlist: int) -> int:
        return min(nlist, 48)

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:  # (an HNSW coarse quantiser searches with max(efSearch, nprobe) candidates by itself)
            ivf.nprobe = self._default_nprobe(ivf.nlist)
        inner = faiss.downcast_index(self._index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = 128
        if self.search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(self._index, self.search_params)
            except RuntimeError as e:
                raise ConfigError(f"faiss search parameters {self.search_params!r} do not apply to {self.options!r}",
                                  hint="nprobe applies to IVF indexes, efSearch to HNSW") from e


@register_index_backend
class IvfOnDiskIndex(FaissIndex):
    """A FAISS IVF index whose inverted lists are a memory-mapped file (``index.ivfdata``) next to ``index.faiss``.

    Vectors added in memory (``add``) move to disk at ``save``; ``build_from_batches`` writes them to disk as they
    come, in shards merged by list (``build_ivf_shard``, ``merge_ivf_shards``).
    """

    backend = "ivf-ondisk"
    DATA_FILE = "index.ivfdata"

    def __init__(self, dim: int, *, metric: Metric, options: str, search_params: str):
        super().__init__(dim, metric=metric, options=options, search_params=search_params)
        if _faiss().try_extract_index_ivf(self._index) is None:
            raise ConfigError(f"ivf-ondisk needs an IVF factory string, got {options!r}",
                              hint="e.g. ivf-ondisk:IVF4096,Flat or ivf-ondisk:IVF16384_HNSW32,SQ8")

    @property
    def nlist(self) -> int:
        return int(_faiss().extract_index_ivf(self._index).nlist)

    @property
    def nprobe(self) -> int:
        return int(_faiss().extract_index_ivf(self._index).nprobe)

    def _default_nprobe(self, nlist: int) -> int:
        return min(nlist, ONDISK_NPROBE)

    def _save(self, directory: Path) -> list[str]:
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self._index)
        current = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(current, faiss.OnDiskInvertedLists) and Path(current.filename) == directory / self.DATA_FILE:
            faiss.write_index(self._index, str(directory / self.INDEX_FILE))  # its lists are that file already
            return [self.INDEX_FILE, self.DATA_FILE]
        ondisk = _merge_lists([ivf.invlists], [0], ivf.nlist, ivf.code_size, directory / self.DATA_FILE)
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()  # the index owns it now
        _faiss().write_index(self._index, str(directory / self.INDEX_FILE))
        return [self.INDEX_FILE, self.DATA_FILE]

    def _fill(self, batches: Iterator[np.ndarray], directory: Path) -> list[str]:
        """Train (on what ``build_from_batches`` gave or the stream's first vectors), write shards of at most
        ``ONDISK_SHARD_BYTES`` of codes to a temporary folder of ``directory``, and merge them by list."""
        faiss = _faiss()
        work = Path(tempfile.mkdtemp(prefix=".shards-", dir=directory))
        try:
            faiss.write_index(self._index, str(work / "trained.faiss"))
            code_size = faiss.extract_index_ivf(self._index).code_size
            shard_rows = max(1, ONDISK_SHARD_BYTES // (code_size + 8))
            batch_rows = min(ADD_BATCH, shard_rows)  # wide codes: smaller batches, so a shard keeps to its bytes
            rows = iter(_rebatch(batches, batch_rows))
            shards: list[Path] = []
            for first in rows:
                shard = work / f"shard-{len(shards):05d}.faiss"
                group = itertools.chain([first], itertools.islice(rows, shard_rows // batch_rows - 1))
                _add_to_shard(work / "trained.faiss", group, shard)
                shards.append(shard)
            _merge_into(self, shards, directory)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _faiss().write_index(self._index, str(directory / self.INDEX_FILE))
        return [self.INDEX_FILE, self.DATA_FILE]

    def _restore(self, directory: Path) -> None:
        faiss = _faiss()
        if not (directory / self.DATA_FILE).is_file():
            raise ModelFileError(f"{directory / self.DATA_FILE}: missing", hint="build the index again")
        self._index = self._read(directory / self.INDEX_FILE, faiss.IO_FLAG_ONDISK_SAME_DIR)
        self._apply_search_params()


# -- streaming builds --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Built:
    """What ``build_from_batches`` built: the index (searchable, files in ``path``), its spec, why, and the costs."""

    index: Index
    spec: str
    why: str
    path: Path
    count: int
    seconds: float

    @property
    def summary(self) -> str:
        """``built ivf-ondisk (nlist=16384, nprobe=64) of 10,000,000 vectors in 412 s because ...``."""
        what = self.spec
        if isinstance(self.index, IvfOnDiskIndex):
            what = f"ivf-ondisk ({self.index.options}; nlist={self.index.nlist}, nprobe={self.index.nprobe})"
        return f"built {what} of {self.count:,} vectors in {self.seconds:.1f} s because {self.why}"


def build_from_batches(spec: str, dim: int, batches: Batches, directory: str | os.PathLike[str], *,
                       metric: Metric = "cosine", size: int | None = None, memory_budget: int | None = None,
                       search_params: str = "", train_sample: np.ndarray | Callable[[int], np.ndarray] | None = None,
                       extra: dict[str, Any] | None = None) -> Built:
    """Build an index from a stream of batches straight into ``directory``, never holding the whole gallery.

    Exact: each batch is normalised and appended to ``vectors.npy``. ivf-ondisk: shards of at most
    ``ONDISK_SHARD_BYTES`` of codes, merged by list into ``index.ivfdata``. In-memory FAISS indexes (chosen only while
    the vectors fit the budget): added batch by batch. Ids go to ``ids.parquet`` batch by batch.

    Args:
        spec: a spec or ``"auto"`` (chosen with ``size`` and ``memory_budget``, see ``choose_spec``).
        dim: width of the vectors.
        batches: ``(float (n, dim) vectors, n ids)`` pairs; memory maps are fine (read once, in order).
        directory: the index folder (created; ``index.json`` written last).
        metric: "cosine" or "ip".
        size: the number of vectors the stream holds, when known (what ``auto`` chooses by).
        memory_budget: bytes (``auto``); None: half the memory available.
        search_params: FAISS search parameters.
        train_sample: float (m, dim) vectors to train an IVF/PQ index on (a random sample of the gallery), or a
            function of the number of vectors the chosen index wants that returns them (called only when it needs
            training); without it, the stream's first ``train_size()`` vectors are used (biased when the stream is
            ordered by class).
        extra: JSON saved in ``index.json``.

    Returns:
        ``Built`` (its ``summary`` says what was built and why).

    Raises:
        FeatureMismatchError: a batch of another width, or with another number of ids.
        ConfigError: as ``create_index``.
    """
    started = time.perf_counter()
    chosen, why = choose_spec(spec, dim=dim, size=size, memory_budget=memory_budget)
    index = create_index(chosen, dim, metric=metric, search_params=search_params)
    index.extra = dict(extra or {})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INDEX_FILE).unlink(missing_ok=True)
    with _IdWriter(directory / IDS_FILE) as ids_out:
        vectors = _trained(index, _checked(index, batches, ids_out), train_sample)
        files = index._fill(vectors, directory)
    if len(index) != ids_out.count:
        raise FeatureMismatchError(f"{directory}: {len(index)} vectors indexed but {ids_out.count} ids written")
    index._ids = [_read_ids(directory / IDS_FILE)]
    index._write_description(directory, files)
    return Built(index=index, spec=chosen, why=why, path=directory, count=len(index),
                 seconds=round(time.perf_counter() - started, 2))


def _checked(index: Index, batches: Batches, ids_out: _IdWriter) -> Iterator[np.ndarray]:
    """Prepared float32 vectors of each batch, its ids written as it passes."""
    for X, ids in batches:
        if len(ids) != len(X):
            raise FeatureMismatchError(f"{len(X)} vectors but {len(ids)} ids", hint="give one id per vector")
        if len(X) == 0:
            continue
        X = index._prepare(index._check(X, "vectors"))
        ids_out.write(ids)
        yield X


def _trained(index: Index, vectors: Iterator[np.ndarray],
             sample: np.ndarray | Callable[[int], np.ndarray] | None) -> Iterator[np.ndarray]:
    """Train ``index`` on ``sample``, or on the stream's first ``train_size()`` vectors (then yielded first)."""
    needed = index.train_size()
    if needed == 0:
        return vectors
    if sample is not None:
        index.train(sample(needed) if callable(sample) else sample)
        return vectors
    head: list[np.ndarray] = []
    for X in vectors:
        head.append(X)
        if sum(len(h) for h in head) >= needed:
            break
    if head:
        index.train(np.concatenate(head))
    return itertools.chain(head, vectors)


def _rebatch(vectors: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The same rows in batches of at most ``rows``."""
    for X in vectors:
        for start in range(0, len(X), rows):
            yield X[start:start + rows]


# -- IVF shards: train once, fill shards anywhere, merge by list ----------------------------------------------------
def train_ivf(options: str, dim: int, sample: np.ndarray, path: str | os.PathLike[str], *,
              metric: Metric = "cosine") -> Path:
    """Train an empty on-disk IVF index and write it to ``path`` (with ``path`` + ``.json``: options, width, metric).

    The first step of a distributed build: ``train_ivf`` once (a random sample of the gallery), ``build_ivf_shard``
    on each worker over its part of the gallery, ``merge_ivf_shards`` once.

    Args:
        options: an IVF factory string, e.g. ``"IVF16384_HNSW32,Flat"`` (what ``auto`` picks: ``choose_spec``).
        dim: width of the vectors.
        sample: float (m, dim) training vectors (at most ``train_size()`` are used, drawn at random).
        path: the trained index file to write (e.g. ``shards/trained.faiss``).
        metric: "cosine" (normalised) or "ip".

    Returns:
        ``path``.
    """
    index = create_index(f"ivf-ondisk:{options}", dim, metric=metric)
    assert isinstance(index, IvfOnDiskIndex)  # the spec names the backend
    index.train(sample)
    path = Path(path)
    _faiss().write_index(index._index, str(path))
    atomic_write(_sidecar(path), json.dumps({"options": options, "dim": dim, "metric": metric,
                                             "trained_on": index.trained_on, "trained_sha256": file_sha256(path)}))
    return path


def build_ivf_shard(trained_index_path: str | os.PathLike[str], batches: Batches,
                    out_path: str | os.PathLike[str]) -> int:
    """Add a stream of ``(vectors, ids)`` batches to a copy of the trained index and write it as one shard.

    Writes ``out_path`` (a FAISS IVF index with in-memory lists: it holds this shard's codes, so a worker should keep
    a shard to what fits its memory, e.g. 256 MiB of codes), ``out_path`` with ``.ids.parquet`` (the shard's ids, in
    order) and ``out_path`` + ``.json``. Vectors are normalised as the trained index's metric says.

    Args:
        trained_index_path: written by ``train_ivf``.
        batches: ``(float (n, dim) vectors, n ids)`` pairs.
        out_path: the shard file, e.g. ``shards/part-00003.faiss``.

    Returns:
        the number of vectors in the shard.

    Raises:
        ModelFileError: the trained index or its description is missing or unreadable.
        FeatureMismatchError: a batch of another width, or with another number of ids.
    """
    trained_index_path, out_path = Path(trained_index_path), Path(out_path)
    description = _read_sidecar(trained_index_path)
    index = create_index(f"ivf-ondisk:{description['options']}", int(description["dim"]), metric=description["metric"])
    with _IdWriter(out_path.with_suffix(".ids.parquet")) as ids_out:
        count = _add_to_shard(trained_index_path, _checked(index, batches, ids_out), out_path)
    atomic_write(_sidecar(out_path), json.dumps({**description, "rows": count}))
    return count


def merge_ivf_shards(shard_paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                     search_params: str = "", extra: dict[str, Any] | None = None) -> IvfOnDiskIndex:
    """Merge shards written by ``build_ivf_shard`` (of one trained index) into an ivf-ondisk index folder.

    List by list, every shard's codes are copied into ``out_dir/index.ivfdata`` (the shards are memory-mapped, so
    memory holds no more than the pages being copied); ids are renumbered in shard order, so the merged index equals
    one build over the shards' batches in that order. ``out_dir`` gets the files ``load_index`` reads; the shards are
    left for the caller to delete.

    Args:
        shard_paths: the shard files, in the order their ids should come.
        out_dir: the index folder (created).
        search_params: FAISS search parameters recorded with it (``"nprobe=32"``).
        extra: JSON saved in ``index.json``.

    Returns:
        the merged index, searchable.

    Raises:
        ModelFileError: a shard or its description is missing, or shards come from different trained indexes.
    """
    shards = [Path(p) for p in shard_paths]
    if not shards:
        raise ModelFileError("no IVF shards to merge", hint="build shards with build_ivf_shard first")
    descriptions = [_read_sidecar(p) for p in shards]
    first = descriptions[0]
    for path, description in zip(shards, descriptions):
        if description.get("trained_sha256") != first.get("trained_sha256"):
            raise ModelFileError(f"{path}: built from another trained index than {shards[0]}",
                                 hint="build every shard from the same train_ivf file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX_FILE).unlink(missing_ok=True)
    index = IvfOnDiskIndex(int(first["dim"]), metric=first["metric"], options=str(first["options"]),
                           search_params=search_params)
    index.trained_on, index.extra = int(first.get("trained_on", 0)), dict(extra or {})
    _merge_into(index, shards, out_dir)
    _faiss().write_index(index._index, str(out_dir / IvfOnDiskIndex.INDEX_FILE))
    with _IdWriter(out_dir / IDS_FILE) as ids_out:
        import pyarrow.parquet as pq

        for shard in shards:
            for batch in pq.ParquetFile(shard.with_suffix(".ids.parquet")).iter_batches(columns=["id"]):
                ids_out.write_arrow(batch.column(0))
    if ids_out.count != len(index):
        raise ModelFileError(f"{out_dir}: the shards hold {len(index)} vectors but {ids_out.count} ids")
    index._ids = [_read_ids(out_dir / IDS_FILE)]
    index._write_description(out_dir, [IvfOnDiskIndex.INDEX_FILE, IvfOnDiskIndex.DATA_FILE])
    return index


def _add_to_shard(trained_index_path: Path, vectors: Iterable[np.ndarray], out_path: Path) -> int:
    """Add prepared vectors to a fresh copy of the trained index, numbered from 0; write it to ``out_path``."""
    faiss = _faiss()
    shard = faiss.read_index(str(trained_index_path))
    count = 0
    for X in vectors:
        shard.add_with_ids(X, np.arange(count, count + len(X), dtype=np.int64))
        count += len(X)
    faiss.write_index(shard, str(out_path))
    return count


def _merge_into(index: IvfOnDiskIndex, shards: list[Path], directory: Path) -> None:
    """Merge the shards' lists into ``directory/index.ivfdata`` and make them ``index``'s lists (ids renumbered in
    shard order)."""
    faiss = _faiss()
    sources, counts = [], []
    for path in shards:
        shard = index._read(path, faiss.IO_FLAG_MMAP)
        ivf = faiss.extract_index_ivf(shard)
        sources.append((shard, ivf))
        counts.append(int(shard.ntotal))
    if not index._index.is_trained:  # the shards carry the trained quantiser; their lists get replaced below
        index._index = index._read(shards[0], faiss.IO_FLAG_MMAP)
        index._apply_search_params()
    target = faiss.extract_index_ivf(index._index)
    for path, (_, ivf) in zip(shards, sources):
        if ivf.nlist != target.nlist or ivf.code_size != target.code_size:
            raise ModelFileError(f"{path}: {ivf.nlist} lists of {ivf.code_size}-byte codes, the index has"
                                 f" {target.nlist} of {target.code_size}",
                                 hint="build every shard from one trained index")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
    ondisk = _merge_lists([ivf.invlists for _, ivf in sources], offsets, target.nlist, target.code_size,
                          directory / IvfOnDiskIndex.DATA_FILE)
    target.replace_invlists(ondisk, True)
    ondisk.this.disown()
    index._index.ntotal = target.ntotal = int(sum(counts))


def _merge_lists(sources: list[Any], offsets: list[int], nlist: int, code_size: int, path: Path) -> Any:
    """One ``OnDiskInvertedLists`` at ``path`` holding, list by list, every source's entries (ids + its offset)."""
    faiss = _faiss()
    sizes = np.zeros(nlist, dtype=np.uint64)
    for source in sources:
        sizes += np.array([source.list_size(j) for j in range(nlist)], dtype=np.uint64)
    with _quiet_stdout():  # faiss prints the file's size
        ondisk = faiss.OnDiskInvertedLists(nlist, code_size, str(path))
        # The file at its exact size, then every list's place in it, one after the other (resizing list by list
        # rounds each to a power of two and doubles the file: 8.7 GB for 5.2 GB of lists at 10^7 x 128)
        ondisk.update_totsize(max(1, int(sizes.sum()) * (code_size + 8)))
        ondisk.set_all_lists_sizes(faiss.swig_ptr(sizes))
    for j in range(nlist):
        position = 0
        for source, offset in zip(sources, offsets):
            n = source.list_size(j)
            if n == 0:
                continue
            ids = faiss.rev_swig_ptr(source.get_ids(j), n).astype(np.int64) + offset
            codes = faiss.rev_swig_ptr(source.get_codes(j), n * code_size)
            ondisk.update_entries(j, position, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            position += n
    return ondisk


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"{path}: missing", hint="write it with train_ivf / build_ivf_shard")
    try:
        return dict(json.loads(_sidecar(path).read_text()))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{_sidecar(path)}: no readable description of {path.name} ({e})",
                             hint="write it with train_ivf / build_ivf_shard") from e


# -- files -------------------------------------------------------------------------------------------------------------
class _NpyWriter:
    """float32 (n, dim) rows appended to a ``.npy`` file, its header written first with room for any row count and
    rewritten with the final count at the end, so the rows stream to disk and are never held together."""

    _WIDEST = 10**18

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.rows = path, dim, 0
        self._length = len(self._header(self._WIDEST))
        self._file = open(path, "wb")  # noqa: SIM115 (closed in __exit__)
        self._file.write(self._header(self._WIDEST))

    def _header(self, rows: int, length: int | None = None) -> bytes:
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {self.dim}), }}"
        length = length or -(-(10 + len(text) + 1) // 64) * 64  # numpy aligns the data to 64 bytes
        padding = b" " * (length - 11 - len(text))
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + text.encode() + padding + b"\n"

    def append(self, X: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(X, dtype="<f4").tobytes())
        self.rows += len(X)

    def __enter__(self) -> _NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._file:
            self._file.seek(0)
            self._file.write(self._header(self.rows, self._length))


class _IdWriter:
    """Item ids appended to a one-column parquet file, batch by batch."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.count = pa, 0
        self._writer = pq.ParquetWriter(path, pa.schema([("id", pa.string())]))

    def write(self, ids: Sequence[str] | np.ndarray) -> None:
        self.write_arrow(self._pa.array([str(i) for i in ids], type=self._pa.string()))

    def write_arrow(self, ids: Any) -> None:
        self._writer.write_table(self._pa.table({"id": ids.cast(self._pa.string())}))
        self.count += len(ids)

    def __enter__(self) -> _IdWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send what C code prints to file descriptor 1 (faiss's on-disk messages) to /dev/null for the duration."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()  # what Python printed before goes out first
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    fd = 1
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, fd)
        os.close(saved)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ConfigError("approximate search needs faiss, which is not installed",
                          hint="pip install 'crossmodal-toolkit[ann]' (or use --index exact)") from e
    return faiss


def _write_ids(path: Path, ids: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array(ids.tolist(), type=pa.string())}), path)


def _read_ids(path: Path) -> Any:
    """The ``id`` column as one pyarrow string array (compact: no Python object per id)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).column("id").combine_chunks()
    except (OSError, KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable id table ({e})") from e
