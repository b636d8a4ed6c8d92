"""``crossmodal serve``: one web page and a JSON API over a workspace's trained model and its indexes.

Routes:
    ``GET /``                     the page (``pipelines/static/index.html``, no build step).
    ``GET /api/info``             model name, the modalities it encodes, the searchable targets, accepted extensions.
    ``POST /api/query``           multipart ``file`` (or ``text``), ``target``, ``k`` -> the JSON of ``query --json``.
    ``GET /api/media/{modality}/{item_id}``    the source file of a gallery item, found in the store's metadata.
    ``GET /api/preview/{modality}/{item_id}``  a PNG (thumbnail, video poster frame, mesh render) or a text snippet.

Security (issue 5, item 5). A request names files only by item id: the id is looked up in the store's row metadata, and
the recorded path is served only if, with every symlink resolved, it is a regular file under the workspace or an
explicitly allowed media root; no part of a URL is ever joined to a path. The form is parsed by Starlette with its
limits (one file, a few fields of at most ``MAX_FIELD_BYTES``; a malformed body is a 400), the body is refused with 413
past ``max_upload_mb`` (before reading, from ``Content-Length``, and while streaming), an upload with 415 unless its
extension is one a registered extractor reads and with 413 past its modality's limit (``UPLOAD_LIMITS_MB``) before
anything decodes it. The upload is copied into a fresh private temporary folder (mode 0700) under a name the server
chooses and deleted when the query returns; no answer names that folder. The server binds to 127.0.0.1 unless told
otherwise and answers only requests whose ``Host`` is an allowed name (which defeats DNS rebinding); a POST from another
origin (scheme, host and port) is refused. Queries wait in line for a bounded number of slots, so a burst queues
instead of failing. Models and indexes load without unpickling (safetensors, JSON, FAISS's own format).

Memory (issue 15). The real queries run in one child process (``QueryProcess``) that holds the model, extractors and
indexes. Its memory is watched while a query runs: past ``query_memory_mb`` above its idle level the child is killed
and the query refused (413); after a query that left it holding more than ``SETTLE_MB`` above idle, it is replaced by a
fresh one. A decoder that allocates a lot for one hostile file therefore cannot grow the server, nor keep what it took.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import gc
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from crossmodal.errors import CrossmodalError, ModelFileError, NotTrainedError
from crossmodal.types import MODALITIES, canonical_modality
from extractors.errors import MediaError
from pipelines.previews import PICTURE_MODALITIES, PreviewCache, text_snippet
from pipelines.query import QueryResult

log = logging.getLogger("crossmodal.serve")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_MB = 64
MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (text, target, k)
FORM_FIELDS = ("file", "text", "target", "k")
MAX_TEXT_CHARS = 10_000
MAX_K = 100
# Uploads larger than this are refused before decoding, by the modality their extension names (others: max_upload_mb).
# A text query is a sentence or a page: 1 MiB is some 150,000 words, far past any text model's window.
UPLOAD_LIMITS_MB = {"text": 1.0}
DEFAULT_QUERY_MEMORY_MB = 1024  # issue 15: one file of <= 64 MiB may cost <= 1 GB above the idle process
SETTLE_MB = 100  # a query process holding more than this above idle after a query is replaced
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
    from extractors.store import stored_path
    from pipelines.workspace import Workspace

    store = Workspace(workspace).store
    tables = [(modality, store.table(modality, key)) for modality, key in store.tables()]
    version = tuple((str(p), p.stat().st_mtime_ns) for _, table in tables for p in table.shard_paths())
    if version == since:
        return version, None
    items: dict[ItemKey, str] = {}
    for modality, table in tables:  # verified reads; a path that is not UTF-8 comes back exact from its bytes
        meta = table.metadata(["item_id", "source_path", "source_path_bytes"]).to_pydict()
        for item_id, shown, raw in zip(meta["item_id"], meta["source_path"], meta["source_path_bytes"]):
            items.setdefault((modality, item_id), stored_path(shown, raw))
    return version, items


def upload_extensions() -> frozenset[str]:
    """Every file extension a registered extractor reads (lower case, with the dot)."""
    return frozenset(upload_modalities())


def upload_modalities() -> dict[str, str]:
    """Extension (lower case, with the dot) -> the modality of the extractors that read it."""
    import extractors  # noqa: F401  (registers every extractor)
    from extractors.registry import extension_readers

    return {ext: readers[0][1] for ext, readers in extension_readers().items()}


class QueryBudgetError(CrossmodalError):
    """A query needed more memory than the server allows one query."""


class QueryProcessError(CrossmodalError):
    """The query process ended without answering (killed from outside, or a crash in a native library)."""


class QueryProcess:
    """Runs ``pipelines.query.query`` in one child process, under a memory budget; a ``QueryFn`` for ``create_app``.

    The child loads the model, the extractors and the indexes once (``pipelines.query.warm``), then reports its idle
    resident memory. While a query runs, the parent reads the child's resident memory every ``POLL_S``; past
    ``budget_mb`` above idle it kills the child and raises ``QueryBudgetError``. After each query the child returns
    freed memory to the system (``gc``, ``malloc_trim``); if it still holds more than ``SETTLE_MB`` above idle, the
    parent replaces it, so that no query leaves the server larger than it found it. Queries are served one at a time.

    A child process rather than a thread, because memory cannot be taken back from a thread: a decoder that grew the
    heap leaves it fragmented, and a thread that is over budget cannot be stopped inside native code.
    """

    POLL_S = 0.02

    def __init__(self, workspace: str | Path, *, model: str, device: str = "auto",
                 budget_mb: float = DEFAULT_QUERY_MEMORY_MB, settle_mb: float = SETTLE_MB,
                 query_fn: QueryFn | None = None):
        """``query_fn``: the query the child runs, a module-level function (it is sent by reference); by default
        ``pipelines.query.query``."""
        self.workspace, self.model, self.device = Path(workspace), model, device
        self.query_fn = query_fn
        self.budget_mb, self.settle_mb = budget_mb, settle_mb
        self.idle_mb: float | None = None
        self.notes: list[str] = []
        self._process: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> None:
        """Start the child and wait until it has loaded everything (a no-op when it is running)."""
        with self._lock:
            self._start()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _restart(self) -> None:
        """Start a fresh child in the background; on failure the next query tries again and reports the error."""
        try:
            self.start()
        except CrossmodalError as exc:
            log.warning("the query process did not restart: %s", exc)

    def __call__(self, workspace: Path, *, model: str, file: Path | None = None, text: str | None = None,
                 target: str, k: int = 10, device: str = "auto") -> dict[str, Any]:
        with self._lock:
            self._start()
            assert self.idle_mb is not None
            self._conn.send({"file": None if file is None else str(file), "text": text, "target": target, "k": k})
            peak = self.idle_mb
            while not self._conn.poll(self.POLL_S):
                used = _rss_mb(self._process.pid)
                if used is None or not self._process.is_alive():
                    self._stop()
                    raise QueryProcessError("the query process ended without answering (see the server's log)",
                                            hint="if it repeats with this file, report it with the file")
                peak = max(peak, used)
                if used - self.idle_mb > self.budget_mb:
                    self._stop()
                    log.warning("a query took %.0f MB above idle (budget %.0f MB): stopped", used - self.idle_mb,
                                self.budget_mb)
                    raise QueryBudgetError(
                        f"the query needed more than {self.budget_mb:g} MB of memory, this server's limit per query",
                        hint="query with a shorter or smaller file")
            try:
                kind, payload, settled_mb = self._conn.recv()
            except (EOFError, OSError):
                self._stop()
                raise QueryProcessError("the query process ended without answering (see the server's log)",
                                        hint="if it repeats with this file, report it with the file") from None
            if settled_mb - self.idle_mb > self.settle_mb:
                # Replaced now, while the answer goes back; the next query waits for the fresh process.
                print(f"note: the query process holds {settled_mb - self.idle_mb:.0f} MB more than when idle after a "
                      f"query (peak {peak - self.idle_mb:.0f} MB); replacing it", file=sys.stderr)
                self._stop()
                threading.Thread(target=self._restart, daemon=True).start()
        if kind == "ok":
            return payload
        if kind == "refused":
            status, message, hint = payload
            raise _Refused(status, message, hint=hint)
        raise QueryProcessError(f"the query failed inside the server ({payload}); see the server's log")

    def _start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._stop()
        # spawn, not fork: the parent runs threads (the event loop's pool) that a forked child would inherit locked
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(target=_query_worker, name="crossmodal-query", daemon=True,
                                        args=(theirs, str(self.workspace), self.model, self.device, self.query_fn))
        self._process.start()
        theirs.close()
        self._conn = ours
        try:
            _, self.idle_mb, self.notes = ours.recv()
        except (EOFError, OSError):
            self._stop()
            raise QueryProcessError("the query process did not start (see the server's log)") from None
        for note in self.notes:
            print(f"note: {note}", file=sys.stderr)

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(10)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Refused(CrossmodalError):
    """A user error raised in the query process, with the HTTP status it maps to."""

    def __init__(self, status: int, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


def _query_worker(conn: Any, workspace: str, model: str, device: str, query_fn: QueryFn | None) -> None:
    """The query process: warm the caches, report idle memory, then answer queries until the pipe closes."""
    from pipelines.query import query, warm

    query = query_fn or query
    notes = warm(workspace, model=model, device=device)
    _release_memory()
    conn.send(("ready", _rss_mb(os.getpid()), notes))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        file = request.pop("file")
        try:
            answer: tuple[str, Any] = ("ok", query(workspace, model=model, device=device,
                                                   file=None if file is None else Path(file), **request))
        except CrossmodalError as exc:
            answer = ("refused", (_status_of(exc), getattr(exc, "message", str(exc)), getattr(exc, "hint", None)))
        except MemoryError:
            answer = ("refused", (413, "the query needed more memory than this machine has",
                                  "query with a shorter or smaller file"))
        except Exception as exc:  # a bug: logged here with its traceback, answered as a 500 by the parent
            log.exception("query failed")
            answer = ("failed", type(exc).__name__)
        _release_memory()
        conn.send((*answer, _rss_mb(os.getpid())))
        del answer


def _release_memory() -> None:
    """Give freed memory back to the system: collect cycles, then ask glibc to return its free heap pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (from /proc; None when it has ended)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


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
    query_memory_mb: float = DEFAULT_QUERY_MEMORY_MB,
) -> FastAPI:
    """The web app over ``workspace``'s model ``model``.

    Args:
        workspace: the workspace folder.
        model: the model name (``models/NAME``).
        query_fn: runs one query; None runs ``pipelines.query.query`` in a ``QueryProcess`` (a child process under
            a memory budget). Tests inject a fake, which runs in this process.
        max_upload_mb: largest accepted request body, in MiB (413 beyond).
        allowed_extensions: accepted upload extensions (415 otherwise); default every registered extractor's.
        device: passed to ``query_fn``.
        media_roots: folders besides the workspace whose store items may be served (the raw media folders).
        allowed_hosts: accepted ``Host`` header names (``*`` accepts any).
        max_concurrent_queries: queries running at once; more wait in line. One by default: ``pipelines.query``
            shares one cached model, index and extractor per process between requests, and not every extractor
            is safe to call from two threads at once (the ``QueryProcess`` answers one at a time in any case).
        info_fn: ``(workspace, model) -> dict`` for ``/api/info``.
        catalog: the items ``/api/media`` and ``/api/preview`` serve; default the workspace store's.
        query_memory_mb: the memory a query may take above the query process's idle level (``query_fn`` None).

    Returns:
        A FastAPI app (serve it with uvicorn).
    """
    workspace = Path(workspace)
    if query_fn is None:
        query_fn = QueryProcess(workspace, model=model, device=device, budget_mb=query_memory_mb)
    if allowed_extensions is None:
        allowed_extensions = upload_extensions()
    extensions = frozenset(e.lower() for e in allowed_extensions)
    modality_of = upload_modalities()
    limits = {ext: int(UPLOAD_LIMITS_MB.get(modality_of.get(ext, ""), max_upload_mb) * 2**20) for ext in extensions}
    max_bytes = int(max_upload_mb * 1024 * 1024)
    catalog = catalog or MediaCatalog(workspace, roots=media_roots)
    previews = PreviewCache(workspace / "cache" / "previews")
    limiter = anyio.CapacityLimiter(max_concurrent_queries)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page_headers = {"Content-Security-Policy": _page_policy(page), "Cache-Control": "no-cache"}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if isinstance(query_fn, QueryProcess):
            query_fn.close()

    app = FastAPI(title="crossmodal", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False,
                  lifespan=lifespan)
    hosts = frozenset(h.lower().strip("[]") for h in allowed_hosts)
    # python-multipart logs each malformed body it meets; the client gets that as a 400, the server's log needs no copy
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    app.middleware("http")(functools.partial(_guard, allowed_hosts=hosts, max_bytes=max_bytes))
    app.add_exception_handler(CrossmodalError, _user_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/info")
    def info() -> JSONResponse:
        body = info_fn(workspace, model)
        return JSONResponse({**body, "extensions": sorted(extensions), "max_upload_mb": max_upload_mb})

    @app.post("/api/query", response_model=QueryResult)
    async def query(request: Request, response: Response) -> Any:
        response.headers["Cache-Control"] = "no-store"
        content_type, _ = parse_options_header(request.headers.get("content-type", ""))
        if content_type != b"multipart/form-data":
            raise HTTPException(415, "send the query as multipart/form-data (fields file or text, target, k)")
        limited = Request(request.scope, _limited_receive(request.receive, max_bytes))
        async with limited.form(max_files=1, max_fields=len(FORM_FIELDS), max_part_size=MAX_FIELD_BYTES) as form:
            fields = _query_fields(form, extensions=extensions, limits=limits)
            folder = Path(tempfile.mkdtemp(prefix="crossmodal-upload-"))  # mode 0700: private to this user
            try:
                file = None
                if fields.upload is not None:
                    file = folder / f"query{fields.suffix}"  # the server's name; the client's is only shown
                    await anyio.to_thread.run_sync(_save, fields.upload, file)
                run = functools.partial(query_fn, workspace, model=model, file=file, text=fields.text,
                                        target=fields.target, k=fields.k, device=device)
                try:
                    result = await anyio.to_thread.run_sync(run, limiter=limiter)
                except CrossmodalError as exc:
                    _hide_upload(exc, folder, fields.filename)
                    raise
            finally:
                shutil.rmtree(folder)
        if file is not None and isinstance(result.get("query"), dict):
            # the upload's path on the server is deleted and private: report the name the client sent instead
            result = {**result, "query": {**result["query"], "file": fields.filename}}
        return result

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
    query_memory_mb: float = DEFAULT_QUERY_MEMORY_MB,
) -> None:
    """Check the model exists, then serve the app with uvicorn until interrupted (``crossmodal serve``).

    Raises:
        NotTrainedError: the workspace has no model ``model`` (checked before binding, so the error is immediate).
    """
    import uvicorn

    info = workspace_info(workspace, model)
    host = host.strip("[]")  # --host [::1] names the same address as --host ::1
    hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else ("*",)
    if host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {host}, reachable from other machines; the API has no authentication",
              file=sys.stderr)
    catalog = MediaCatalog(workspace, roots=media_roots)
    outside = catalog.unserved_folders()
    if outside:
        print(f"note: items in {len(outside)} folder(s) outside the workspace are not shown (e.g. {outside[0]}); "
              f"to show them, add --media-root {os.path.commonpath(outside)}", file=sys.stderr)
    queries = QueryProcess(workspace, model=model, device=device, budget_mb=query_memory_mb)
    print(f"loading model {model!r}, its extractors and indexes in the query process ...", file=sys.stderr)
    queries.start()
    print(f"query process ready: {queries.idle_mb:.0f} MB idle; a query may take {query_memory_mb:g} MB more",
          file=sys.stderr)
    app = create_app(workspace, model=model, query_fn=queries, max_upload_mb=max_upload_mb, device=device,
                     allowed_hosts=hosts, catalog=catalog)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL goes in brackets (RFC 3986)
    print(f"serving model {model!r} ({', '.join(info['modalities'])}) at http://{shown}:{port}/", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


# ------------------------------------------------------------------------------------------------- request handling
@dataclass(frozen=True)
class _QueryFields:
    target: str
    k: int
    text: str | None
    upload: UploadFile | None
    filename: str | None  # the client's name of the upload, without its folders
    suffix: str  # the upload's extension, lower case (an accepted one)


def _limited_receive(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises 413 once the body passes ``max_bytes`` (a body sent without ``Content-Length``)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise HTTPException(413, f"the upload is larger than {max_bytes / 2**20:g} MiB")
        return message

    return limited


def _query_fields(form: FormData, *, extensions: frozenset[str], limits: Mapping[str, int]) -> _QueryFields:
    """Validate the form: exactly one of a file and a text, ``target``, ``k``; the upload's type and size."""
    unknown = sorted({name for name in form if name not in FORM_FIELDS})
    if unknown:
        raise HTTPException(400, f"unknown form field {unknown[0][:40]!r}; send {', '.join(FORM_FIELDS)}")
    values: dict[str, str] = {}
    for name in ("text", "target", "k"):
        sent = form.getlist(name)
        if len(sent) > 1:
            raise HTTPException(400, f"send the field {name} once")
        if sent and not isinstance(sent[0], str):
            raise HTTPException(400, f"the field {name} is a value, not a file")
        if sent:
            values[name] = sent[0]
    upload = form.get("file")
    if isinstance(upload, str):
        raise HTTPException(400, "the field file must be a file upload (multipart part with a filename)")
    text = values.get("text", "").strip() or None
    if (upload is None) == (text is None):
        raise HTTPException(400, "send either a file or a text, not both and not neither")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise HTTPException(413, f"the text is longer than {MAX_TEXT_CHARS} characters")
    if "target" not in values:
        raise HTTPException(400, "choose a target modality (field target)")
    target = canonical_modality(values["target"].strip()[:40])
    k = _parse_k(values.get("k", "10"))
    filename, suffix = None, ""
    if upload is not None:
        # Only the extension of the client's name is used, and only if allowed; the name on disk is the server's.
        filename = PurePosixPath((upload.filename or "").replace("\\", "/")).name
        suffix = PurePosixPath(filename).suffix.lower()
        if suffix not in extensions:
            accepted = " ".join(sorted(extensions))
            shown = suffix[:20] or "extensionless"
            raise HTTPException(415, f"cannot search with a {shown} file; accepted: {accepted}")
        if (upload.size or 0) > limits[suffix]:
            raise HTTPException(413, f"a {suffix} query file may be at most {limits[suffix] / 2**20:g} MiB; this one "
                                     f"is {upload.size / 2**20:.1f} MiB")
    return _QueryFields(target, k, text, upload, filename, suffix)


def _parse_k(raw: str) -> int:
    """``k`` as sent: ASCII digits only (``str.isdigit`` also accepts ``²`` and other digits ``int`` refuses)."""
    raw = raw.strip()
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_K:
        raise HTTPException(400, f"k must be a whole number from 1 to {MAX_K}, not {raw[:20]!r}")
    return int(raw)


def _save(upload: UploadFile, path: Path) -> None:
    """Copy the parsed upload (Starlette spools it in memory up to 1 MiB, then in an unnamed temporary file)."""
    upload.file.seek(0)
    with open(path, "xb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)


def _hide_upload(exc: Exception, folder: Path, filename: str | None) -> None:
    """Replace the upload's server path in an error's message and hint by the name the client sent."""
    shown = repr(filename) if filename else "the uploaded file"
    for attr in ("message", "hint"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            value = re.sub(re.escape(str(folder)) + r"/query\.\w+", lambda _: shown, value)
            setattr(exc, attr, value.replace(str(folder), "the upload folder"))


# A Host header: a name or IPv4 address, or an IPv6 address in brackets, then an optional port (RFC 9110 7.2)
_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")


def _request_origin(request: Request) -> tuple[str, str, int] | None:
    """(scheme, host, port) of the server as the client addressed it (its ``Host`` header); None if malformed."""
    match = _HOST.fullmatch(request.headers.get("host", ""))
    if match is None or int(match["port"] or 0) > 65535:
        return None
    scheme = request.url.scheme
    host = (match["ipv6"] or match["name"]).lower()
    return scheme, host, int(match["port"] or (443 if scheme == "https" else 80))


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` header; None for ``null`` or anything unparsable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def _guard(request: Request, call_next: Callable, *, allowed_hosts: frozenset[str], max_bytes: int) -> Response:
    """Refuse unknown hosts, cross-origin writes and oversized bodies before any handler runs; set the headers every
    response carries."""
    own = _request_origin(request)
    if own is None or ("*" not in allowed_hosts and own[1] not in allowed_hosts):
        return _error_response(400, "invalid Host header: this server answers only to "
                                    + ", ".join(sorted(allowed_hosts)))
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("origin")
        if origin is not None and _origin_of(origin) != own:
            return _error_response(403, "cross-origin requests are refused")
        length = request.headers.get("content-length", "")
        if re.fullmatch(r"[0-9]{1,20}", length) and int(length) > max_bytes:
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
    if isinstance(exc, _Refused):
        return exc.status
    if isinstance(exc, QueryBudgetError):
        return 413
    if isinstance(exc, QueryProcessError):
        return 500
    if isinstance(exc, MediaError):
        return 422
    if isinstance(exc, (NotTrainedError, ModelFileError)):
        return 409
    return 400


_UPLOAD_PATH = re.compile(r"(?:[^\s'\":]*/)?crossmodal-upload-[^\s'\":]*")


def _error_response(status: int, message: str, hint: str | None = None) -> JSONResponse:
    """The JSON every refusal carries; an upload's server path never leaves (``_hide_upload`` names it first)."""
    if hint is not None:
        hint = _UPLOAD_PATH.sub("the uploaded file", hint)
    return JSONResponse({"error": _UPLOAD_PATH.sub("the uploaded file", message), "hint": hint}, status_code=status)


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(_status_of(exc), getattr(exc, "message", str(exc)), getattr(exc, "hint", None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(getattr(exc, "status_code", 500), str(getattr(exc, "detail", exc)))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_response(500, f"internal error ({type(exc).__name__}); see the server's log")
