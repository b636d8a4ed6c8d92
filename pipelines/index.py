"""The index step: embed each modality's gallery with a trained model and save one search index per modality.

Layout::

    index/NAME/<modality>/            the index of the model NAME's embeddings of <modality> (crossmodal.index files)
        gallery.parquet               row metadata by index id: id, content_hash, item_id, source_path, labels
        gallery.json                  model name, sha256 of its card.json, backend, which items, extractor key, count

For a method that trains one encoder per pair of modalities (``modality__partner`` encoders), a gallery's embedding
depends on the query's modality, so each gallery gets one index per query modality: ``index/NAME/<modality>/<query>/``.

Index ids are ``<content hash>/<row in the gallery>``: two items with the same bytes (two names or two classes) are two
hits; ``gallery.parquet`` maps the ids back to item ids, labels and source files. A query refuses an index whose
recorded card sha256 is not the model's current one (the model was retrained after indexing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crossmodal.errors import ConfigError, FeatureMismatchError, NotTrainedError
from crossmodal.types import MODALITIES
from pipelines.workspace import DEFAULT_WORKSPACE, Workspace

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock; the swap is then unguarded)
    fcntl = None  # type: ignore[assignment]

GALLERY_META = "gallery.json"
GALLERY_ROWS = "gallery.parquet"
Gallery = Literal["all", "test"]


def build_index(
    workspace: str | os.PathLike = DEFAULT_WORKSPACE,
    *,
    model: str = "default",
    backend: str = "exact",
    gallery: Gallery = "all",
    device: str = "auto",
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Embed the gallery of every modality of ``model`` and save an index per modality under ``index/<model>/``.

    The store is read batch by batch (``FeatureTable.iter_batches``), each batch embedded and written into the index
    as it comes, so neither the features nor the embeddings are ever held whole; an index that needs training (IVF)
    trains first on a random sample of the gallery, embedded in batches.

    The new indexes are built in a staging folder of a unique name (two builds of one model never share it) and then
    swapped in for ``index/<model>`` under a lock: a concurrent build of the same model wins or loses whole.

    Args:
        workspace: the workspace folder.
        model: the model name (``models/<model>``).
        backend: ``exact`` (what MAP@all needs), ``faiss:<index_factory string>`` (e.g. ``faiss:HNSW32``,
            ``faiss:IVF1024,PQ64``), ``ivf-ondisk:<IVF factory string>`` or ``auto`` (see
            ``crossmodal.index.choose_spec``: by the gallery's size and the memory budget).
        gallery: ``all`` items of the store (labelled or not, every split) or only the model's ``test`` split.
        device: where the encoders run.
        memory_budget: bytes the float32 embeddings may take in memory (``auto`` builds on disk above it); None: half
            the memory available.

    Returns:
        ``{"model", "backend", "gallery", "path", "seconds", "indexes": [{"modality", "against", "items", "dim",
        "backend", "why", "summary", "seconds", "path"}]}``: ``backend`` at the top is the one asked for, each
        index's the one built (for ``auto``, chosen from that gallery's size) and ``why``; ``summary`` says it in a
        sentence.

    Raises:
        NotTrainedError: no model ``model``.
        FeatureMismatchError: the store lacks the features of an extractor key the model records.
        ConfigError: an unknown backend or gallery.
    """
    from crossmodal.device import resolve_device
    from crossmodal.index import build_from_batches
    from crossmodal.model import CrossModalModel, file_sha256

    if gallery not in ("all", "test"):
        raise ConfigError(f"unknown gallery {gallery!r}", hint="use all or test")
    started = time.perf_counter()
    ws = Workspace(workspace)
    model_dir = require_model(ws, model)
    net = CrossModalModel.load(model_dir, device=resolve_device(device))
    card_sha = file_sha256(model_dir / "card.json")
    out = ws.index_dir / model
    ws.index_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model}.", suffix=".incomplete", dir=ws.index_dir))
    built = []
    try:
        for modality in [m for m in MODALITIES if m in net.features]:
            key, table, wanted, rows = gallery_table(ws, net, model, modality, gallery)
            for partner in query_partners(net, modality):
                folder = staging / modality / partner if partner else staging / modality
                dim = net.embedding_dim(modality, partner)
                folder.mkdir(parents=True)
                with _GalleryWriter(folder / GALLERY_ROWS) as gallery_rows:
                    result = build_from_batches(
                        backend, dim, _embedded(net, modality, partner, table, wanted, gallery_rows), folder,
                        size=len(rows), memory_budget=memory_budget,
                        train_sample=lambda size: _embedded_sample(net, modality, partner, table, rows, size))
                spec, why = result.spec, result.why
                meta = {"model": model, "card_sha256": card_sha, "backend": spec, "requested": backend, "why": why,
                        "gallery": gallery, "modality": modality, "against": partner, "extractor_key": key,
                        "items": result.count, "dim": dim}
                (folder / GALLERY_META).write_text(json.dumps(meta, indent=2))
                built.append({"modality": modality, "against": partner, "items": result.count, "dim": dim,
                              "backend": spec, "why": why, "summary": result.summary, "seconds": result.seconds,
                              "path": str(out / folder.relative_to(staging))})
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"model": model, "backend": backend, "gallery": gallery, "path": str(out), "indexes": built,
            "seconds": round(time.perf_counter() - started, 2)}


def gallery_table(ws: Workspace, net: Any, model: str, modality: str,
                  gallery: str) -> tuple[str, Any, set[str] | None, np.ndarray]:
    """The extractor key and store table of ``modality`` the model was trained on, the content hashes its gallery
    keeps (``None``: all) and their rows; shared by the local and the Ray build."""
    key = net.features[modality].extractor_key
    if key not in ws.store.keys(modality):
        raise FeatureMismatchError(f"{ws.store_dir}: no {modality} features of extractor {key}, which model "
                                   f"{model!r} was trained on", hint="re-extract with that extractor")
    table = ws.store.table(modality, key)
    wanted = None
    if gallery == "test":
        if "split_seed" not in (net.source or {}):
            raise ConfigError(f"model {model!r} records no split seed (it was not trained in a workspace), so"
                              " it has no test split", hint="use --gallery all")
        splits = ws.splits(int(net.source["split_seed"]))
        wanted = {h for h, split in splits.items() if split == "test"}
    return key, table, wanted, _gallery_rows(table, wanted)


def require_model(ws: Workspace, model: str) -> Path:
    """``models/<model>`` of ``ws``.

    Raises:
        NotTrainedError: it holds no trained model.
    """
    model_dir = ws.model_dir(model)
    if not (model_dir / "card.json").is_file():
        raise NotTrainedError(f"{ws.root}: no trained model {model!r}",
                              hint=f"train one first: crossmodal train --name {model} --workspace {ws.root}")
    return model_dir


def query_partners(net: Any, modality: str) -> list[str | None]:
    """[None] for a joint-space model; the query modalities when ``modality`` has one encoder per partner."""
    partners = [k.split("__", 1)[1] for k in net.encoders if k.startswith(f"{modality}__")]
    return sorted(partners, key=MODALITIES.index) if partners else [None]


def index_folder(ws: Workspace, model: str, target: str, source: str, *, per_pair: bool) -> Path:
    """Where the index of ``target`` searched by ``source`` queries lives."""
    return ws.index_dir / model / target / source if per_pair else ws.index_dir / model / target


GALLERY_COLUMNS = ["content_hash", "item_id", "source_path", "labels"]
BATCH_ROWS = 65_536  # store rows read, embedded and indexed at a time


def _gallery_rows(table: Any, wanted: set[str] | None) -> np.ndarray:
    """int64 positions, among the table's rows, of the gallery's rows (every row, or those whose hash is ``wanted``);
    read from the content hashes alone."""
    if wanted is None:
        with table.rows_view() as view:
            return np.arange(len(view), dtype=np.int64)
    positions, start = [], 0
    for _, meta in table.iter_batches(BATCH_ROWS, columns=["content_hash"]):
        hashes = meta.column("content_hash").to_pylist()
        positions.append(start + np.flatnonzero([h in wanted for h in hashes]))
        start += len(hashes)
    return np.concatenate(positions).astype(np.int64) if positions else np.empty(0, np.int64)


def _embedded_sample(net: Any, modality: str, partner: str | None, table: Any, rows: np.ndarray,
                     size: int) -> np.ndarray:
    """float32 (m, D) embeddings of ``size`` gallery rows drawn at random (all when fewer), gathered and embedded in
    batches: what an IVF index trains on."""
    chosen = rows if len(rows) <= size else np.sort(np.random.default_rng(0).choice(rows, size, replace=False))
    with table.rows_view() as view:
        parts = [net.encode(modality, view[chosen[i:i + BATCH_ROWS]], against=partner)
                 for i in range(0, len(chosen), BATCH_ROWS)]
    return np.concatenate(parts) if parts else np.empty((0, net.embedding_dim(modality, partner)), np.float32)


def _embedded(net: Any, modality: str, partner: str | None, table: Any, wanted: set[str] | None,
              gallery_rows: _GalleryWriter) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(embeddings, index ids) of the gallery, batch by batch from the store; each batch's rows go to
    ``gallery_rows`` as it passes."""
    for X, meta in table.iter_batches(BATCH_ROWS, columns=GALLERY_COLUMNS):
        if wanted is not None:
            keep = np.flatnonzero([h in wanted for h in meta.column("content_hash").to_pylist()])
            if not len(keep):
                continue
            X, meta = X[keep], meta.take(keep)
        yield net.encode(modality, np.array(X, dtype=np.float32), against=partner), gallery_rows.write(meta)


class _GalleryWriter:
    """``gallery.parquet`` written batch by batch: each row's index id (``<content hash>/<gallery row>``: unique even
    when two items share their bytes, and so their content hash), content hash, item id, source path and labels."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self.count = pa, 0
        self._schema = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("item_id", pa.string()),
                                  ("source_path", pa.string()), ("labels", pa.list_(pa.string()))])
        self._writer = pq.ParquetWriter(path, self._schema)

    def write(self, meta: Any) -> list[str]:
        """Append the rows of ``meta`` (a pyarrow table with ``GALLERY_COLUMNS``); return their index ids."""
        hashes = meta.column("content_hash").to_pylist()
        ids = [f"{h}/{k}" for k, h in enumerate(hashes, start=self.count)]
        self.count += len(ids)
        pa = self._pa
        labels = pa.array([list(v or ()) for v in meta.column("labels").to_pylist()], type=pa.list_(pa.string()))
        batch = pa.table({"id": pa.array(ids, type=pa.string()), "content_hash": meta.column("content_hash"),
                          "item_id": meta.column("item_id"), "source_path": meta.column("source_path"),
                          "labels": labels})
        self._writer.write_table(batch.cast(self._schema))
        return ids

    def __enter__(self) -> _GalleryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


def _swap_in(staging: Path, out: Path) -> None:
    """Make ``staging`` the folder ``out``, the old one (if any) moved aside first and deleted after; under an
    exclusive lock on ``.<name>.lock`` next to it, so two builds finishing together swap one after the other."""
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.replace(old / out.name)
        staging.replace(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
