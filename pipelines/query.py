"""The query step: one raw file (or a typed text) -> the extractor recorded in the model card -> its encoder -> search
the index of another modality -> ranked gallery items.

The JSON shape (``crossmodal query --json`` and the web server's ``/api/query``) is stable and declared once, as
``QueryResult`` below; the server states it as its response model, so FastAPI checks every answer against it::

    {"query": {"modality", "file", "text", "extractor", "model"}, "target": "image", "k": 10,
     "results": [{"rank", "score", "item_id", "label", "source_path", "modality"}, ...]}

Models, indexes and extractors are cached per process (keyed by their files' modification times), so a server answers
repeated queries without reloading them.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import TypedDict  # pydantic (the server's response model) needs this one before Python 3.12

from crossmodal.errors import ConfigError, CrossmodalError, FeatureMismatchError, NotTrainedError
from crossmodal.types import MODALITIES, canonical_modality
from extractors.errors import MediaError
from pipelines.index import GALLERY_META, GALLERY_ROWS, index_folder, require_model
from pipelines.workspace import DEFAULT_WORKSPACE, Workspace


class QueryAsked(TypedDict):
    """What was searched with: the query's modality, the file's name as the user gave it, or the typed text."""

    modality: str
    file: str | None
    text: str | None
    extractor: str
    model: str


class QueryHit(TypedDict):
    """One ranked gallery item; ``score`` is the cosine similarity in the common space."""

    rank: int
    score: float
    item_id: str
    label: str
    source_path: str
    modality: str


class QueryResult(TypedDict):
    """The answer of one query: ``crossmodal query --json`` prints it, ``/api/query`` returns it."""

    query: QueryAsked
    target: str
    k: int
    results: list[QueryHit]


def query(
    workspace: str | os.PathLike = DEFAULT_WORKSPACE,
    *,
    model: str = "default",
    file: str | os.PathLike | None = None,
    text: str | None = None,
    target: str,
    k: int = 10,
    device: str = "auto",
    modality: str | None = None,
) -> QueryResult:
    """Search the ``target`` modality's index with one file or a typed text.

    Args:
        workspace: the workspace folder.
        model: the model name (its index must have been built: ``crossmodal index``).
        file: the query file; its modality comes from its extension (the extensions of the extractors the model uses).
        text: a typed text query (instead of ``file``).
        target: the modality to search (``3d`` is accepted for mesh).
        k: how many results.
        device: where the extractor and the encoder run.
        modality: the query's modality, when the extension is ambiguous or unusual.

    Returns:
        See the module docstring; ``score`` is the cosine similarity in the common space, ``label`` the item's class
        names joined by ``;`` (empty when unlabelled).

    Raises:
        NotTrainedError: no model of that name, or no index of ``target`` built from the current model.
        ConfigError: neither or both of ``file`` and ``text``, an unknown extension or modality, or ``k < 1``.
        FeatureMismatchError: the extractor that would process the query makes features with another key than the
            model was trained on.
        MediaError: the file cannot be decoded.
    """
    from crossmodal.model import file_sha256, read_card

    if (file is None) == (text is None):
        raise ConfigError("give one query: a FILE or --text", hint='e.g. crossmodal query photo.jpg --target text, or '
                                                                  'crossmodal query --text "a red boat" --target image')
    if text is not None and not text.strip():
        raise ConfigError("the text query is empty", hint='type some words, e.g. --text "a red boat"')
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if file is not None and not Path(file).exists():
        raise ConfigError(f"no such file: {file}", hint="check the path (nothing was searched)")
    ws = Workspace(workspace)
    model_dir = require_model(ws, model)
    card = read_card(model_dir)
    target = canonical_modality(target)
    source = "text" if text is not None else _query_modality(Path(file), card, modality)  # type: ignore[arg-type]
    for role, m in (("query", source), ("target", target)):
        if m not in card["features"]:
            raise ConfigError(f"model {model!r} has no {m} encoder (the {role} modality)",
                              hint=f"it knows {', '.join(card['features'])}; add one with crossmodal train "
                                   f"--add-modality {m} --name {model}")
    per_pair = any(key.startswith(f"{target}__") for key in card.get("encoders", []))
    folder = index_folder(ws, model, target, source, per_pair=per_pair)
    meta_path = folder / GALLERY_META
    if not meta_path.is_file():
        raise NotTrainedError(f"no {target} index for model {model!r} in {ws.index_dir}",
                              hint=f"build it: crossmodal index --model {model} --workspace {ws.root}")
    meta = json.loads(meta_path.read_text())
    if meta["card_sha256"] != file_sha256(model_dir / "card.json"):
        raise NotTrainedError(f"the {target} index was built from an earlier version of model {model!r}",
                              hint=f"rebuild it: crossmodal index --model {model} --workspace {ws.root}")
    extractor = card_extractor(ws, card, source, device=device)
    if text is not None:
        X = _embed_text(extractor, text)
        shown_file = None
    else:
        X = extractor([extractor.load(Path(file))])  # type: ignore[arg-type]
        shown_file = str(file)
    net = _load_model(str(model_dir), _mtime(model_dir / "card.json"), device)
    q = net.encode(source, X, against=target)
    index, rows = _load_index(str(folder), _mtime(meta_path))
    results: list[QueryHit] = []
    scores, ids = index.search(q, min(k, len(rows))) if len(rows) else (np.zeros((1, 0)), np.zeros((1, 0), dtype=str))
    for rank, (score, row) in enumerate(zip(scores[0], rows.lookup([str(i) for i in ids[0]])), start=1):
        if row is None:  # FAISS pads with -1 (id "") when it finds fewer than k neighbours
            continue
        results.append({"rank": rank, "score": float(score), "item_id": row["item_id"],
                        "label": ";".join(row["labels"]), "source_path": row["source_path"], "modality": target})
    return {"query": {"modality": source, "file": shown_file, "text": text, "extractor": extractor.key,
                      "model": model}, "target": target, "k": k, "results": results}


def card_extractor(ws: Workspace, card: dict[str, Any], modality: str, *, device: str = "auto") -> Any:
    """The extractor that made the model's ``modality`` features, rebuilt from the store's ``extractor.json``.

    Raises:
        FeatureMismatchError: the rebuilt extractor's key differs from the card's (other weights, library or config),
            or the store no longer describes the card's extractor.
    """
    from crossmodal.device import resolve_device

    feature = card["features"][modality]
    path = ws.store_dir / modality / feature["extractor_key"] / "extractor.json"
    if not path.is_file():
        raise FeatureMismatchError(
            f"{ws.store_dir}: no record of the {modality} extractor {feature['extractor_key']} the model was trained "
            "on",
            hint="re-extract that modality with the model's extractor, or retrain the model on the current store")
    description = json.loads(path.read_text())
    extractor = _extractor(description["name"], json.dumps(description.get("config", {}), sort_keys=True),
                           str(resolve_device(device)))
    if extractor.key != feature["extractor_key"]:
        raise FeatureMismatchError(
            f"the {modality} extractor here has key {extractor.key}, the model was trained on features of key "
            f"{feature['extractor_key']} ({feature['extractor_name']})",
            hint="use the same weights, config and library versions as at training, or retrain the model")
    return extractor


def _query_modality(path: Path, card: dict[str, Any], modality: str | None) -> str:
    """The modality of a query file: ``modality`` when given, else the one whose extractor reads its extension."""
    import extractors  # noqa: F401  (registers every extractor)
    from extractors.registry import get_extractor_class, list_extractors

    if modality is not None:
        return canonical_modality(modality)
    suffix = path.suffix.lower()
    known = set(list_extractors())  # features from a benchmark file ("precomputed") have no extractor to read files
    readers = {m: get_extractor_class(f["extractor_name"]).extensions for m, f in card["features"].items()
               if f["extractor_name"] in known}
    matches = [m for m in MODALITIES if suffix in readers.get(m, ())]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        reads = ", ".join(f"{m} ({' '.join(exts)})" for m, exts in readers.items()) or "no files (no extractor)"
        raise ConfigError(f"{path}: no modality of the model reads {suffix or 'files without an extension'!r}",
                          hint=f"the model reads {reads}")
    raise ConfigError(f"{path}: {suffix} could be {' or '.join(matches)}", hint="say which with --modality")


def warm(workspace: str | os.PathLike, *, model: str, device: str = "auto") -> list[str]:
    """Load what queries of ``model`` use (the model, every modality's extractor, every index) into this process's
    caches, so that a server's idle memory already holds them and its first query is as fast as the others.

    Returns:
        One line per part that could not be loaded (a query needing it will raise the same error then).
    """
    from crossmodal.model import read_card

    ws = Workspace(workspace)
    try:
        model_dir = require_model(ws, model)
        card = read_card(model_dir)
        _load_model(str(model_dir), _mtime(model_dir / "card.json"), device)
    except CrossmodalError as exc:
        return [f"model {model!r}: {exc}"]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for modality in card["features"]:
            try:
                extractor = card_extractor(ws, card, modality, device=device)
                # Extractors load their networks on first use: embed one small made-up file so that they are loaded
                # now, and counted in the idle memory, rather than by the first real query.
                sample = _sample_file(modality, Path(tmp))
                extractor([extractor.load(sample)])
            except CrossmodalError as exc:
                notes.append(f"{modality} queries: {exc}")
    for meta in sorted((ws.index_dir / model).rglob(GALLERY_META)):
        _load_index(str(meta.parent), _mtime(meta))
    return notes


def _sample_file(modality: str, folder: Path) -> Path:
    """A small valid file of ``modality``: the demo's drawing of a 7 (image, sentence, mesh, clip), or a tone, since
    the demo's speech needs espeak-ng, which a server need not have."""
    rng = np.random.default_rng(7)
    if modality == "audio":
        import wave

        path = folder / "sample.wav"
        tone = (8000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(tone.tobytes())
        return path
    if modality == "text":
        from pipelines.demo.texts import write_text

        return write_text(folder / "sample.txt", 7, rng, exclude=set())
    from pipelines.demo.images import write_image
    from pipelines.demo.meshes import write_mesh
    from pipelines.demo.videos import write_video

    writers = {"image": (write_image, "png"), "mesh": (write_mesh, "obj"), "video": (write_video, "mp4")}
    write, suffix = writers[modality]
    return write(folder / f"sample.{suffix}", 7, rng)


def _embed_text(extractor: Any, text: str) -> np.ndarray:
    """float32 (1, dim): a typed text goes through the same ``load`` as a text file (decoding, tokenising)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "query.txt"
        path.write_text(text, encoding="utf-8")
        try:
            return extractor([extractor.load(path)])
        except MediaError as exc:  # its message names the temporary file, which the user never saw
            raise MediaError("the typed text", exc.reason, hint=exc.hint) from None


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@functools.lru_cache(maxsize=8)
def _extractor(name: str, config_json: str, device: str) -> Any:
    import extractors  # noqa: F401  (registers every extractor)
    from extractors.registry import create_extractor

    return create_extractor(name, device=device, **json.loads(config_json))


@functools.lru_cache(maxsize=4)
def _load_model(model_dir: str, mtime: int, device: str) -> Any:
    from crossmodal.device import resolve_device
    from crossmodal.model import CrossModalModel

    return CrossModalModel.load(model_dir, device=resolve_device(device))


@functools.lru_cache(maxsize=16)
def _load_index(folder: str, mtime: int) -> tuple[Any, GalleryRows]:
    """The index in ``folder`` and its gallery rows (looked up by index id, never read whole)."""
    from crossmodal.index import load_index

    return load_index(folder), GalleryRows(Path(folder))


class GalleryRows:
    """The rows of an index's ``gallery.parquet``, looked up by index id: what a query turns its hits into.

    The parquet is copied once, a row group at a time, into an uncompressed Arrow IPC file beside it
    (``GALLERY_CACHE``, stamped with the parquet's size, mtime and inode, and rebuilt when they change) that is then
    memory-mapped: a lookup reads the pages of the rows it takes, so a process holds its hits, not the gallery (a dict
    of every row cost about 2 KB per item, 20 GB at 10^7 items). Where the folder cannot be written, the rows come
    from the parquet's row groups instead, one group read per hit.

    An index id ``<content hash>/<row>`` names its row of the gallery (``pipelines.index._GalleryWriter``) and is
    checked against the row's ``id``; a gallery written before ids (the index id is then the content hash) is searched
    for the hash column by column, a batch at a time.
    """

    def __init__(self, folder: Path):
        import pyarrow.parquet as pq

        parquet = folder / GALLERY_ROWS
        self._reader = _gallery_cache(parquet)
        self._parquet = None if self._reader is not None else pq.ParquetFile(parquet)
        if self._reader is not None:
            lengths = [self._reader.get_batch(i).num_rows for i in range(self._reader.num_record_batches)]
            names = self._reader.schema.names
        else:
            meta = self._parquet.metadata  # type: ignore[union-attr]
            lengths = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            names = self._parquet.schema_arrow.names  # type: ignore[union-attr]
        self._starts = np.cumsum([0, *lengths], dtype=np.int64)  # gallery row where each batch starts, then the total
        self._has_ids = "id" in names
        self.batches_read = 0  # batches (row groups) decoded or mapped by lookups: what the tests count

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index_id: str) -> dict[str, Any]:
        row = self.lookup([index_id])[0]
        if row is None:
            raise KeyError(index_id)
        return row

    def lookup(self, index_ids: list[str]) -> list[dict[str, Any] | None]:
        """The gallery row of each index id (None for an id of no row: "" where an index found fewer than k)."""
        return [self._row(index_id) if index_id else None for index_id in index_ids]

    def _row(self, index_id: str) -> dict[str, Any] | None:
        if not self._has_ids:
            return self._by_hash(index_id)
        _, _, number = index_id.rpartition("/")
        if not number.isdigit() or int(number) >= len(self):
            return None
        row = int(number)
        b = int(np.searchsorted(self._starts, row, side="right")) - 1
        found = self._batch(b).slice(row - int(self._starts[b]), 1).to_pylist()[0]
        return found if found["id"] == index_id else None

    def _by_hash(self, content_hash: str) -> dict[str, Any] | None:
        import pyarrow.compute as pc

        for b in range(len(self._starts) - 1):
            batch = self._batch(b)
            at = pc.index(batch.column("content_hash"), content_hash).as_py()
            if at >= 0:
                return batch.slice(at, 1).to_pylist()[0]
        return None

    def _batch(self, b: int) -> Any:
        self.batches_read += 1
        if self._reader is not None:
            return self._reader.get_batch(b)  # zero-copy: a view of the mapped file
        return self._parquet.read_row_group(b)  # type: ignore[union-attr]


GALLERY_CACHE = "gallery.arrow"
"""The memory-mapped copy of ``gallery.parquet`` that queries read rows from (``GalleryRows``)."""


def _gallery_cache(parquet: Path) -> Any:
    """An Arrow IPC reader over the memory-mapped copy of ``parquet`` (made now when missing or stale), or None when
    the folder cannot be written."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    st = parquet.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()
    cache = parquet.with_name(GALLERY_CACHE)
    try:
        reader = ipc.open_file(pa.memory_map(str(cache)))
        if (reader.schema.metadata or {}).get(b"source") == stamp:
            return reader
    except (OSError, pa.ArrowException):
        pass  # none yet, or not a whole copy: made again below
    source = pq.ParquetFile(parquet)
    schema = source.schema_arrow.with_metadata({"source": stamp})
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(dir=parquet.parent, prefix=".gallery.", suffix=".incomplete",
                                         delete=False) as f:
            temporary = Path(f.name)
            with ipc.new_file(f, schema) as writer:  # one row group in memory at a time
                for g in range(source.metadata.num_row_groups):
                    writer.write_table(source.read_row_group(g).replace_schema_metadata(schema.metadata))
        os.replace(temporary, cache)  # concurrent queries each write a whole copy; the last rename wins
    except OSError:  # a read-only index folder, or a full disk: rows are read from the parquet's row groups instead
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        return None
    return ipc.open_file(pa.memory_map(str(cache)))
