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
    scores, ids = index.search(q, min(k, len(rows))) if rows else (np.zeros((1, 0)), np.zeros((1, 0), dtype=str))
    for rank, (score, content_hash) in enumerate(zip(scores[0], ids[0]), start=1):
        row = rows.get(str(content_hash))
        if row is None:  # FAISS pads with -1 when it finds fewer than k neighbours
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
def _load_index(folder: str, mtime: int) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The index in ``folder`` and its gallery rows by index id."""
    import pyarrow.parquet as pq

    from crossmodal.index import load_index

    rows = pq.read_table(Path(folder) / GALLERY_ROWS).to_pylist()
    return load_index(folder), {row.get("id") or row["content_hash"]: row for row in rows}  # no id: built before ids
