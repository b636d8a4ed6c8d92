"""``crossmodal serve``: one web page and a JSON API over a workspace's trained model and its indexes.

Routes:
    ``GET /``                     the page (``pipelines/static/index.html``, no build step).
    ``GET /api/info``             model name, the modalities it encodes, the searchable targets, accepted extensions.
    ``POST /api/query``           multipart ``file`` (or ``text``), ``target``, ``k`` -> the JSON of ``query --json``.
    ``GET /api/media/{modality}/{item_id}``    the source file of a gallery item, found in the store's metadata.
    ``GET /api/preview/{modality}/{item_id}``  a PNG (thumbnail, video poster frame, mesh render) or a text snippet.

Security (issue 5, item 5). A request names files only by item id: the id is looked up in the store's row metadata, and
the recorded path is served only if, with every symlink resolved, it is a regular file under the workspace or an
explicitly allowed media root; no part of a URL is ever joined to a path. Uploads are streamed into a fresh private
temporary folder (mode 0700) under a name the server chooses, refused with 413 past ``max_upload_mb`` (before reading,
from ``Content-Length``, and while streaming) and with 415 unless the extension is one a registered extractor reads,
and deleted when the query returns. The server binds to 127.0.0.1 unless told otherwise and answers only requests
whose ``Host`` is an allowed name (which defeats DNS rebinding); a cross-origin POST is refused. Queries run in a
bounded pool of worker threads, so a burst of requests queues instead of failing. Models and indexes load without
unpickling (safetensors, JSON, FAISS's own format; see ``CrossModalModel.load``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from crossmodal.errors import CrossmodalError, ModelFileError, NotTrainedError
from crossmodal.types import MODALITIES, canonical_modality
from extractors.errors import ExtractorError, MediaError
from pipelines.cli._output import clean_json as json_safe
from pipelines.previews import PICTURE_MODALITIES, PreviewCache, text_snippet

log = logging.getLogger("crossmodal.serve")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_MB = 64
MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (text, target, k)
MAX_TEXT_CHARS = 10_000
MAX_K = 100
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")

# Media types by modality. Anything served is one of these, so a stored file is never rendered as HTML by the browser.
_MEDIA_TYPES = {"text": "text/plain; charset=utf-8", "mesh": "application/octet-stream"}

QueryFn = Callable[..., dict[str, Any]]
"""``query(workspace, *, model, file=None, text=None, target, k, device) -> dict`` (``pipelines.query.query``)."""


ItemKey = tuple[str, str]
"""(modality, item id): an id alone is not unique, since the items of a pair share it across modalities."""


@dataclass(frozen=True)
class CatalogItem:
    """A gallery item the server may serve: its modality, id and the resolved path of its source file."""

    modality: str
    item_id: str
    path: Path


class MediaCatalog:
    """(modality, item id) -> source file, from the store's row metadata: the only way a request reaches a file.

    Args:
        workspace: the workspace folder.
        roots: folders whose files may be served besides the workspace's (where the raw media were extracted from).
        items: a fixed ``{(modality, item_id): source path}``; None reads the workspace's store, and reads it again
            when an item is missing and the store's shards changed (an extraction ran while serving).
    """

    def __init__(self, workspace: str | Path, *, roots: Iterable[str | Path] = (),
                 items: Mapping[ItemKey, str | Path] | None = None):
        self.workspace = Path(workspace)
        self.roots = tuple(dict.fromkeys(Path(r).resolve() for r in (self.workspace, *roots)))
        self._fixed = items is not None
        self._items: dict[ItemKey, str | Path] = dict(items or {})
        self._version: object = None
        self._lock = threading.Lock()

    def lookup(self, modality: str, item_id: str) -> CatalogItem:
        """The served item ``item_id`` of ``modality``.

        Raises:
            HTTPException: 404 when the item is unknown, or its file is missing, not a regular file, or resolves
                (through symlinks) outside every allowed root.
        """
        source = self._items.get((modality, item_id))
        if source is None and not self._fixed:
            self._refresh()  # another thread may have refreshed meanwhile, so look again whatever it did
            source = self._items.get((modality, item_id))
        if source is None:
            raise HTTPException(404, "no such item")
        try:
            resolved = self.workspace.joinpath(source).resolve(strict=True)  # an absolute source replaces the base
        except (OSError, RuntimeError):  # missing file, or a symlink loop
            raise HTTPException(404, "the item's file is missing") from None
        if not resolved.is_file() or not self.allows(resolved):
            raise HTTPException(404, "no such item")
        return CatalogItem(modality, item_id, resolved)

    def allows(self, resolved: Path) -> bool:
        """Whether a resolved path lies under the workspace or a media root."""
        return any(resolved.is_relative_to(root) for root in self.roots)

    def unserved_folders(self) -> list[Path]:
        """Folders holding items outside every allowed root (their media are not served): candidates for roots."""
        self._refresh()
        folders = {self.workspace.joinpath(s).resolve().parent for s in self._items.values()}
        return sorted(f for f in folders if not self.allows(f))

    def _refresh(self) -> None:
        """Re-read the store's metadata if it changed since the last read."""
        if self._fixed:
            return
        with self._lock:
            version, items = store_items(self.workspace, since=self._version)
            if items is not None:
                self._version, self._items = version, items


def store_items(workspace: str | Path, *, since: object = None) -> tuple[object, dict[ItemKey, str] | None]:
    """Every item of the workspace's store as ``{(modality, item_id): source_path}``, unless unchanged since ``since``.

    Returns:
        ``(version, items)``; ``items`` is None when the store's committed shards are still those of ``since``.
    """
    import pyarrow.parquet as pq

    from pipelines.workspace import Workspace

    store = Workspace(workspace).store
    shards = [(modality, p) for modality, key in store.tables() for p in store.table(modality, key).shard_paths()]
    version = tuple((str(p), p.stat().st_mtime_ns) for _, p in shards)
    if version == since:
        return version, None
    items: dict[ItemKey, str] = {}
    for modality, shard in shards:
        table = pq.read_table(shard, columns=["item_id", "source_path"])
        for item_id, source in zip(table.column("item_id").to_pylist(), table.column("source_path").to_pylist()):
            items.setdefault((modality, item_id), source)
    return version, items


def upload_extensions() -> frozenset[str]:
    """Every file extension a registered extractor reads (lower case, with the dot)."""
    import extractors  # noqa: F401  (registers every extractor)
    from extractors.registry import get_extractor_class, list_extractors

    return frozenset(ext.lower() for name in list_extractors() for ext in get_extractor_class(name).extensions)


def workspace_info(workspace: str | Path, model: str) -> dict[str, Any]:
    """What the page needs to know: the model's modalities and the modalities with an index to search.

    Raises:
        NotTrainedError: the workspace has no model ``model``.
        ModelFileError: its card is not valid.
    """
    from crossmodal.model import read_card
    from pipelines.index import GALLERY_META, require_model
    from pipelines.workspace import Workspace

    ws = Workspace(workspace)
    card = read_card(require_model(ws, model))
    index_dir = ws.index_dir / model
    return {
        "model": model,
        "method": card["method"],
        "modalities": [m for m in MODALITIES if m in card["features"]],
        # per-pair methods keep one index per query modality: index/NAME/<target>/<query>/gallery.json
        "targets": [m for m in MODALITIES if any((index_dir / m).rglob(GALLERY_META))],
    }


def create_app(
    workspace: str | Path,
    *,
    model: str = "default",
    query_fn: QueryFn | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    allowed_extensions: Iterable[str] | None = None,
    device: str = "auto",
    media_roots: Sequence[str | Path] = (),
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    max_concurrent_queries: int = 1,
    info_fn: Callable[[Path, str], dict[str, Any]] = workspace_info,
    catalog: MediaCatalog | None = None,
) -> FastAPI:
    """The web app over ``workspace``'s model ``model``.

    Args:
        workspace: the workspace folder.
        model: the model name (``models/NAME``).
        query_fn: runs one query (``pipelines.query.query`` when None); tests inject a fake.
        max_upload_mb: largest accepted request body, in MiB (413 beyond).
        allowed_extensions: accepted upload extensions (415 otherwise); default every registered extractor's.
        device: passed to ``query_fn``.
        media_roots: folders besides the workspace whose store items may be served (the raw media folders).
        allowed_hosts: accepted ``Host`` header names (``*`` accepts any).
        max_concurrent_queries: queries running at once; more wait in line. One by default: ``pipelines.query``
            shares one cached model, index and extractor per process between requests, and not every extractor
            is safe to call from two threads at once.
        info_fn: ``(workspace, model) -> dict`` for ``/api/info``.
        catalog: the items ``/api/media`` and ``/api/preview`` serve; default the workspace store's.

    Returns:
        A FastAPI app (serve it with uvicorn).
    """
    workspace = Path(workspace)
    if query_fn is None:
        from pipelines.query import query as query_fn
    if allowed_extensions is None:
        allowed_extensions = upload_extensions()
    extensions = frozenset(e.lower() for e in allowed_extensions)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    catalog = catalog or MediaCatalog(workspace, roots=media_roots)
    previews = PreviewCache(workspace / "cache" / "previews")
    limiter = anyio.CapacityLimiter(max_concurrent_queries)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page_headers = {"Content-Security-Policy": _page_policy(page), "Cache-Control": "no-cache"}

    app = FastAPI(title="crossmodal", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.middleware("http")(functools.partial(_guard, allowed_hosts=frozenset(allowed_hosts), max_bytes=max_bytes))
    app.add_exception_handler(CrossmodalError, _user_error)
    app.add_exception_handler(ExtractorError, _user_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/info")
    def info() -> JSONResponse:
        body = info_fn(workspace, model)
        return JSONResponse({**body, "extensions": sorted(extensions), "max_upload_mb": max_upload_mb})

    @app.post("/api/query")
    async def query(request: Request) -> JSONResponse:
        folder = Path(tempfile.mkdtemp(prefix="crossmodal-upload-"))  # mode 0700: private to this user
        try:
            form = await _read_form(request, folder=folder, max_bytes=max_bytes, extensions=extensions)
            target, k, text = _query_fields(form)
            run = functools.partial(query_fn, workspace, model=model, file=form.file, text=text, target=target, k=k,
                                    device=device)
            result = await anyio.to_thread.run_sync(run, limiter=limiter)
        finally:
            shutil.rmtree(folder)
        if form.file is not None and isinstance(result.get("query"), dict):
            # the upload's path on the server is deleted and private: report the name the client sent instead
            result = {**result, "query": {**result["query"], "file": form.filename}}
        return JSONResponse(json_safe(result), headers={"Cache-Control": "no-store"})

    @app.get("/api/media/{modality}/{item_id:path}")
    def media(modality: str, item_id: str) -> FileResponse:
        item = catalog.lookup(modality, item_id)
        media_type = _MEDIA_TYPES.get(item.modality)
        return FileResponse(item.path, media_type=media_type, headers={"Content-Security-Policy": "default-src 'none'"},
                            content_disposition_type="inline")

    @app.get("/api/preview/{modality}/{item_id:path}")
    def preview(modality: str, item_id: str) -> Response:
        item = catalog.lookup(modality, item_id)
        if item.modality == "text":
            return PlainTextResponse(text_snippet(item.path))
        if item.modality not in PICTURE_MODALITIES:
            raise HTTPException(404, f"{item.modality} items have no picture preview; play /api/media/{modality}/ID")
        return FileResponse(previews.picture(item.path, item.modality), media_type="image/png")

    return app


def serve(
    workspace: str | Path,
    *,
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    device: str = "auto",
    media_roots: Sequence[str | Path] = (),
) -> None:
    """Check the model exists, then serve the app with uvicorn until interrupted (``crossmodal serve``).

    Raises:
        NotTrainedError: the workspace has no model ``model`` (checked before binding, so the error is immediate).
    """
    import uvicorn

    info = workspace_info(workspace, model)
    hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else ("*",)
    if host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {host}, reachable from other machines; the API has no authentication",
              file=sys.stderr)
    catalog = MediaCatalog(workspace, roots=media_roots)
    outside = catalog.unserved_folders()
    if outside:
        print(f"note: items in {len(outside)} folder(s) outside the workspace are not shown (e.g. {outside[0]}); "
              f"to show them, add --media-root {os.path.commonpath(outside)}", file=sys.stderr)
    app = create_app(workspace, model=model, max_upload_mb=max_upload_mb, device=device, allowed_hosts=hosts,
                     catalog=catalog)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving model {model!r} ({', '.join(info['modalities'])}) at http://{shown}:{port}/", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


# ------------------------------------------------------------------------------------------------- request handling
@dataclass
class _Form:
    fields: dict[str, str]
    file: Path | None  # the upload, saved under the server's name
    filename: str | None  # the client's name of the upload, without its folders


class _FormReader:
    """python-multipart callbacks: the one file part is written straight to ``folder``, fields are kept in memory."""

    def __init__(self, folder: Path, extensions: frozenset[str]):
        self.folder, self.extensions = folder, extensions
        self.fields: dict[str, str] = {}
        self.file: Path | None = None
        self.filename: str | None = None
        self._header, self._value, self._disposition = b"", b"", b""
        self._name: str | None = None
        self._data = bytearray()
        self._out: Any = None

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._data = b"", None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.strip().lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" not in options:
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            return
        if self.file is not None:
            raise HTTPException(400, "send one file per query")
        # Only the extension of the client's name is used, and only if allowed; the name on disk is the server's.
        self.filename = PurePosixPath(options[b"filename"].decode("utf-8", "replace").replace("\\", "/")).name
        suffix = PurePosixPath(self.filename).suffix.lower()
        if suffix not in self.extensions:
            accepted = " ".join(sorted(self.extensions))
            raise HTTPException(415, f"cannot search with a {suffix or 'extensionless'} file; accepted: {accepted}")
        self.file = self.folder / f"query{suffix}"
        self._out = open(self.file, "xb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._out.write(data[start:end])
            return
        if len(self._data) + (end - start) > MAX_FIELD_BYTES:
            raise HTTPException(413, f"a form field is longer than {MAX_FIELD_BYTES} bytes")
        self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._out is not None:
            self.close()
        elif self._name is not None:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def _read_form(request: Request, *, folder: Path, max_bytes: int, extensions: frozenset[str]) -> _Form:
    """Stream a ``multipart/form-data`` body into ``folder`` (raising 413 past ``max_bytes``, 415 for a wrong type)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise HTTPException(415, "send the query as multipart/form-data (fields file or text, target, k)")
    reader = _FormReader(folder, extensions)
    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": reader.on_part_begin, "on_part_data": reader.on_part_data, "on_part_end": reader.on_part_end,
        "on_header_field": reader.on_header_field, "on_header_value": reader.on_header_value,
        "on_header_end": reader.on_header_end, "on_headers_finished": reader.on_headers_finished,
    })
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise HTTPException(413, f"the upload is larger than {max_bytes / 2**20:g} MiB")
            parser.write(chunk)
        parser.finalize()
    finally:
        reader.close()
    return _Form(reader.fields, reader.file, reader.filename)


def _query_fields(form: _Form) -> tuple[str, int, str | None]:
    """Validate ``target``, ``k`` and ``text`` (exactly one of a file and a text)."""
    text = form.fields.get("text", "").strip() or None
    if (form.file is None) == (text is None):
        raise HTTPException(400, "send either a file or a text, not both and not neither")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise HTTPException(413, f"the text is longer than {MAX_TEXT_CHARS} characters")
    if "target" not in form.fields:
        raise HTTPException(400, "choose a target modality (field target)")
    target = canonical_modality(form.fields["target"].strip())
    raw_k = form.fields.get("k", "10").strip()
    if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_K:
        raise HTTPException(400, f"k must be a whole number from 1 to {MAX_K}, not {raw_k[:20]!r}")
    return target, int(raw_k), text


async def _guard(request: Request, call_next: Callable, *, allowed_hosts: frozenset[str], max_bytes: int) -> Response:
    """Refuse cross-origin writes and oversized bodies before any handler runs; set headers every response carries."""
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("origin")
        if origin and "*" not in allowed_hosts and (urlsplit(origin).hostname or "") not in allowed_hosts:
            return _error_response(403, "cross-origin requests are refused")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            return _error_response(413, f"the upload is larger than {max_bytes / 2**20:g} MiB")
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _page_policy(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's inline script and style (by hash), and nothing foreign."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' blob:; "
            "media-src 'self' blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


# ------------------------------------------------------------------------------------------------------- errors
def _status_of(exc: Exception) -> int:
    if isinstance(exc, MediaError):
        return 422
    if isinstance(exc, (NotTrainedError, ModelFileError)):
        return 409
    return 400


def _error_response(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(_status_of(exc), getattr(exc, "message", str(exc)), getattr(exc, "hint", None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(getattr(exc, "status_code", 500), str(getattr(exc, "detail", exc)))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_response(500, f"internal error ({type(exc).__name__}); see the server's log")
