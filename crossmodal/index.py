"""Retrieval indexes: exact search (the default, what MAP@all needs) and FAISS approximate search, behind one registry.

An index holds unit-norm embeddings of one modality with their item ids, and answers top-k queries by inner product
(cosine similarity for ``metric="cosine"``, which normalises what it is given). Specs follow the CLI's ``--index``:

* ``"exact"``: every vector in memory (memory-mapped after ``load_index``), a chunked matrix product and an exact top-k
  whose ties go to the item added first. Right below a few hundred thousand items.
* ``"faiss:<factory string>"``: any `faiss.index_factory` string, e.g. ``faiss:Flat`` (exact), ``faiss:HNSW32``,
  ``faiss:IVF1024,Flat``, ``faiss:IVF1024,PQ64``. Inner product on normalised vectors. Indexes that need training
  (IVF, PQ) are trained on a random sample of at most ``max(40 * nlist, 10_000)`` vectors (the first ``add`` trains
  them when ``train`` was not called), then vectors are added in batches, so they are never held twice. Search
  defaults: ``nprobe = min(nlist, 48)`` for IVF and ``efSearch = 128`` for HNSW; ``search_params`` overrides them
  (``"nprobe=64,efSearch=256"``). Needs ``pip install 'crossmodal-toolkit[ann]'``.
* ``"auto"``: chosen from the number of items (``size=``): exact below 200,000 items (or when the size is unknown),
  ``faiss:HNSW32`` below 1,000,000 (fast, high recall, all vectors in memory), and ``faiss:IVF<nlist>_HNSW32,SQ8``
  above (``nlist`` ~ 4 sqrt(n) as a power of two, an HNSW coarse quantiser, 8-bit scalar codes: one byte a dimension).
  benchmarks/search.py measured it at 10^6 x 128: p50 0.4 ms, recall@10 0.96 with nprobe 48, where IVF-PQ64 stayed
  below recall 0.89 at any nprobe.

On disk (``save``): ``index.json`` (backend, spec, width, metric, count, the sha256 of every other file, and ``extra``
JSON from the caller), ``ids.parquet``, and ``vectors.npy`` (exact) or ``index.faiss`` (FAISS). Nothing is pickled, and
``load_index`` refuses any file whose sha256 differs from the one recorded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from crossmodal.common.files import atomic_write
from crossmodal.common.hashing import file_sha256
from crossmodal.errors import ConfigError, FeatureMismatchError, ModelFileError, NotTrainedError
from crossmodal.metrics import CHUNK_ELEMENTS, top_k
from crossmodal.registry import Registry

Metric = Literal["cosine", "ip"]

INDEX_FILE = "index.json"
IDS_FILE = "ids.parquet"
FORMAT = "crossmodal-index"
FORMAT_VERSION = 1
AUTO_EXACT_LIMIT = 200_000  # "auto" keeps exact search below this many items
AUTO_HNSW_LIMIT = 1_000_000  # ... and HNSW (all vectors in RAM) below this many; IVF-PQ above
ADD_BATCH = 65_536  # rows normalised and added at a time

INDEX_BACKENDS: Registry[type[Index]] = Registry("index backend")

__all__ = ["INDEX_BACKENDS", "ExactIndex", "FaissIndex", "Index", "choose_spec", "create_index", "list_index_backends",
           "load_index", "register_index_backend", "resolve_spec"]


def register_index_backend(cls: type[Index]) -> type[Index]:
    """Class decorator: register an Index subclass under its ``backend`` name (the part of a spec before ``:``)."""
    INDEX_BACKENDS.register(cls, cls.backend)
    return cls


def list_index_backends() -> list[str]:
    return INDEX_BACKENDS.names()


def resolve_spec(spec: str, *, dim: int, size: int | None = None) -> str:
    """Turn ``"auto"`` into a concrete spec for ``size`` items of width ``dim`` (see the module docstring)."""
    return choose_spec(spec, dim=dim, size=size)[0]


def choose_spec(spec: str, *, dim: int, size: int | None = None) -> tuple[str, str]:
    """The concrete spec for ``spec`` and why, in words (for ``"auto"``: the size rule of the module docstring).

    ``"auto"`` keeps exact search when faiss is not installed, and says so, rather than fail on a choice the user
    did not make.
    """
    if spec != "auto":
        return spec, "as asked"
    if size is None:
        return "exact", "auto: the number of items is unknown, so exact search"
    if size < AUTO_EXACT_LIMIT:
        return "exact", f"auto: {size:,} items, below {AUTO_EXACT_LIMIT:,}, where exact search is fast and exact"
    if size < AUTO_HNSW_LIMIT:
        chosen = "faiss:HNSW32"
        why = f"auto: {size:,} items, from {AUTO_EXACT_LIMIT:,} to {AUTO_HNSW_LIMIT:,}: an HNSW graph (all in memory)"
    else:
        nlist = 2 ** round(math.log2(4 * math.sqrt(size)))
        chosen = f"faiss:IVF{nlist}_HNSW32,SQ8"
        why = f"auto: {size:,} items, {AUTO_HNSW_LIMIT:,} or more: IVF with {nlist} lists and 8-bit codes"
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        return "exact", (f"{why} would be {chosen}, but faiss is not installed, so exact search "
                         "(pip install 'crossmodal-toolkit[ann]' for approximate search)")
    return chosen, why


def create_index(spec: str, dim: int, *, metric: Metric = "cosine", size: int | None = None,
                 search_params: str = "") -> Index:
    """Build an empty index.

    Args:
        spec: ``"exact"``, ``"faiss:<factory string>"`` or ``"auto"``.
        dim: width of the vectors.
        metric: "cosine" (vectors and queries are L2-normalised) or "ip" (raw inner product).
        size: expected number of items; only ``"auto"`` uses it.
        search_params: FAISS search parameters, e.g. ``"nprobe=64"`` (``exact`` takes none).

    Raises:
        UnknownNameError: the backend (before ``:``) is not registered.
        ConfigError: bad metric, width or factory string, or faiss is not installed.
    """
    spec = resolve_spec(spec, dim=dim, size=size)
    backend, _, options = spec.partition(":")
    if metric not in ("cosine", "ip"):
        raise ConfigError(f"unknown index metric {metric!r}", hint="use 'cosine' or 'ip'")
    if dim < 1:
        raise ConfigError(f"index width must be positive, got {dim}")
    return INDEX_BACKENDS.get(backend)(dim, metric=metric, options=options, search_params=search_params)


def load_index(directory: str | os.PathLike[str]) -> Index:
    """Load an index written by ``Index.save``, after checking every file against the sha256 in ``index.json``.

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
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"{path}: missing", hint="the index folder is incomplete; build the index again")
        if file_sha256(path) != digest:
            raise ModelFileError(f"{path}: sha256 differs from the one recorded in {INDEX_FILE}; the file was changed"
                                 " or corrupted", hint="build the index again")
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
        self._ids: list[np.ndarray] = []
        self.trained_on = 0
        self.extra: dict[str, Any] = {}

    # -- the interface ------------------------------------------------------------------------------------------------
    def train(self, sample: np.ndarray) -> None:
        """Fit what the backend needs (centroids, codebooks) on float (n, dim) vectors; a no-op when none."""

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
        ids = self.ids
        found = rows >= 0
        return (np.where(found, scores, -np.inf).astype(np.float32),
                np.where(found, ids[np.where(found, rows, 0)], ""))

    @property
    def ids(self) -> np.ndarray:
        """object (n,) item ids, in the order added."""
        if len(self._ids) != 1:
            self._ids = [np.concatenate(self._ids) if self._ids else np.empty(0, dtype=object)]
        return self._ids[0]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` (created); ``index.json`` is written last, so it marks a complete save."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_FILE).unlink(missing_ok=True)
        files = self._save(directory)
        _write_ids(directory / IDS_FILE, self.ids)
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "backend": self.backend, "spec": self.spec,
            "options": self.options, "search_params": self.search_params, "dim": self.dim, "metric": self.metric,
            "count": len(self), "trained_on": self.trained_on, "extra": self.extra,
            "files": {name: file_sha256(directory / name) for name in [*files, IDS_FILE]},
        }
        atomic_write(directory / INDEX_FILE, json.dumps(meta, indent=2))
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

    # -- shared helpers -----------------------------------------------------------------------------------------------
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
    """Brute-force inner product over all vectors, chunked over queries; ties go to the item added first."""

    backend = "exact"
    VECTORS_FILE = "vectors.npy"

    def __init__(self, dim: int, *, metric: Metric, options: str, search_params: str):
        if options or search_params:
            raise ConfigError(f"the exact index takes no options (got {options or search_params!r})",
                              hint="use 'exact', or 'faiss:<factory>' for approximate search")
        super().__init__(dim, metric=metric, options=options, search_params=search_params)
        self._vectors: list[np.ndarray] = []

    @property
    def vectors(self) -> np.ndarray:
        """float32 (n, dim) stored vectors (normalised for cosine)."""
        if len(self._vectors) != 1:
            self._vectors = [np.concatenate(self._vectors) if self._vectors else np.empty((0, self.dim), np.float32)]
        return self._vectors[0]

    def __len__(self) -> int:
        return sum(len(v) for v in self._vectors)

    def _add(self, X: np.ndarray) -> None:
        self._vectors.extend(self._prepare(X[i:i + ADD_BATCH]) for i in range(0, len(X), ADD_BATCH))

    def _search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        V = self.vectors
        step = max(1, CHUNK_ELEMENTS // len(V))
        scores, rows = np.empty((len(Q), k), np.float32), np.empty((len(Q), k), np.int64)
        for start in range(0, len(Q), step):
            sims = Q[start:start + step] @ V.T
            order = top_k(sims, k)
            rows[start:start + step] = order
            scores[start:start + step] = np.take_along_axis(sims, order, axis=1)
        return scores, rows

    def _save(self, directory: Path) -> list[str]:
        np.save(directory / self.VECTORS_FILE, self.vectors, allow_pickle=False)
        return [self.VECTORS_FILE]

    def _restore(self, directory: Path) -> None:
        vectors = np.load(directory / self.VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.dtype != np.float32:
            raise ModelFileError(f"{directory / self.VECTORS_FILE}: {vectors.dtype} {vectors.shape}, expected float32"
                                 f" (n, {self.dim})")
        self._vectors = [vectors]


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
            raise ConfigError("the faiss index needs a factory string", hint="e.g. faiss:HNSW32 or faiss:IVF1024,PQ64")
        try:
            self._index = faiss.index_factory(self.dim, options, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ConfigError(f"faiss cannot build {options!r} for width {dim}: {str(e).splitlines()[-1]}",
                              hint="see the faiss index_factory syntax, e.g. HNSW32, IVF1024,Flat, IVF1024,PQ64") from e
        self._apply_search_params()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def train(self, sample: np.ndarray) -> None:
        if self._index.is_trained:
            return
        sample = self._check(sample, "training vectors")
        ivf = _faiss().try_extract_index_ivf(self._index)
        size = max(40 * ivf.nlist if ivf is not None else 0, self.MIN_TRAIN)
        if len(sample) > size:
            sample = sample[np.sort(np.random.default_rng(0).choice(len(sample), size, replace=False))]
        try:
            self._index.train(self._prepare(sample))
        except RuntimeError as e:
            raise ConfigError(f"faiss cannot train {self.options!r} on {len(sample)} vectors:"
                              f" {str(e).splitlines()[-1]}", hint="use fewer IVF lists or a smaller PQ") from e
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
        try:
            index = _faiss().read_index(str(directory / self.INDEX_FILE))
        except RuntimeError as e:
            raise ModelFileError(f"{directory / self.INDEX_FILE}: faiss cannot read it ({e})") from e
        if index.d != self.dim:
            raise ModelFileError(f"{directory / self.INDEX_FILE}: width {index.d}, {INDEX_FILE} says {self.dim}")
        self._index = index
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, 48)
        inner = faiss.downcast_index(self._index)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = 128
        if self.search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(self._index, self.search_params)
            except RuntimeError as e:
                raise ConfigError(f"faiss search parameters {self.search_params!r} do not apply to {self.options!r}",
                                  hint="nprobe applies to IVF indexes, efSearch to HNSW") from e


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


def _read_ids(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path).column("id")
    except (OSError, KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable id table ({e})") from e
    return np.asarray(column.to_pylist(), dtype=object)
