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
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crossmodal.errors import ConfigError, FeatureMismatchError, NotTrainedError
from crossmodal.types import MODALITIES
from pipelines.workspace import DEFAULT_WORKSPACE, Workspace

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
) -> dict[str, Any]:
    """Embed the gallery of every modality of ``model`` and save an index per modality under ``index/<model>/``.

    Args:
        workspace: the workspace folder.
        model: the model name (``models/<model>``).
        backend: ``exact`` (what MAP@all needs), ``faiss:<index_factory string>`` (e.g. ``faiss:HNSW32``,
            ``faiss:IVF1024,PQ64``) or ``auto`` (see ``crossmodal.index.create_index``).
        gallery: ``all`` items of the store (labelled or not, every split) or only the model's ``test`` split.
        device: where the encoders run.

    Returns:
        ``{"model", "backend", "gallery", "path", "seconds", "indexes": [{"modality", "against", "items", "dim",
        "backend", "why", "path"}]}``: ``backend`` at the top is the one asked for, each index's the one built (for
        ``auto``, chosen from that gallery's size) and ``why``.

    Raises:
        NotTrainedError: no model ``model``.
        FeatureMismatchError: the store lacks the features of an extractor key the model records.
        ConfigError: an unknown backend or gallery.
    """
    from crossmodal.device import resolve_device
    from crossmodal.index import choose_spec, create_index
    from crossmodal.model import CrossModalModel, file_sha256

    if gallery not in ("all", "test"):
        raise ConfigError(f"unknown gallery {gallery!r}", hint="use all or test")
    started = time.perf_counter()
    ws = Workspace(workspace)
    model_dir = require_model(ws, model)
    net = CrossModalModel.load(model_dir, device=resolve_device(device))
    card_sha = file_sha256(model_dir / "card.json")
    out = ws.index_dir / model
    staging = out.with_name(f".{model}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    built = []
    for modality in [m for m in MODALITIES if m in net.features]:
        key = net.features[modality].extractor_key
        if key not in ws.store.keys(modality):
            raise FeatureMismatchError(f"{ws.store_dir}: no {modality} features of extractor {key}, which model "
                                       f"{model!r} was trained on", hint="re-extract with that extractor")
        table = ws.table(modality, key)
        rows = np.arange(len(table))
        if gallery == "test":
            splits = ws.splits(int(net.extra["data_source"]["split_seed"]))
            rows = np.array([i for i, h in enumerate(table.content_hash) if splits.get(h) == "test"], dtype=np.int64)
        X = np.asarray(table.X[rows], dtype=np.float32).reshape(len(rows), table.X.shape[1])
        for partner in query_partners(net, modality):
            folder = staging / modality / partner if partner else staging / modality
            embeddings = net.encode(modality, X, against=partner)
            spec, why = choose_spec(backend, dim=embeddings.shape[1], size=len(embeddings))
            index = create_index(spec, embeddings.shape[1])
            index.add(embeddings, np.array(_ids(table, rows), dtype=str))
            folder.mkdir(parents=True, exist_ok=True)
            index.save(folder)
            _write_rows(folder / GALLERY_ROWS, table, rows)
            meta = {"model": model, "card_sha256": card_sha, "backend": spec, "requested": backend, "why": why,
                    "gallery": gallery, "modality": modality, "against": partner, "extractor_key": key,
                    "items": int(len(rows)), "dim": int(embeddings.shape[1])}
            (folder / GALLERY_META).write_text(json.dumps(meta, indent=2))
            built.append({"modality": modality, "against": partner, "items": int(len(rows)),
                          "dim": int(embeddings.shape[1]), "backend": spec, "why": why,
                          "path": str(out / folder.relative_to(staging))})
    old = out.with_name(f".{model}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.replace(old)
    staging.replace(out)
    shutil.rmtree(old, ignore_errors=True)
    return {"model": model, "backend": backend, "gallery": gallery, "path": str(out), "indexes": built,
            "seconds": round(time.perf_counter() - started, 2)}


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


def _write_rows(path: Path, table: Any, rows: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "id": _ids(table, rows),
        "content_hash": [table.content_hash[i] for i in rows],
        "item_id": [table.item_id[i] for i in rows],
        "source_path": [table.source_path[i] for i in rows],
        "labels": [list(table.labels[i]) for i in rows],
    }
    pq.write_table(pa.table(columns), path)


def _ids(table: Any, rows: np.ndarray) -> list[str]:
    """The index id of each gallery row: unique even when two items share their bytes (and so their content hash)."""
    return [f"{table.content_hash[i]}/{k}" for k, i in enumerate(rows)]
