"""The extract step: raw files -> extractor -> feature store, resumable, with every failure recorded.

Flow (STYLE.md §3.3): :func:`pipelines.sources.scan` -> sha256 of each file (kept per path in the workspace: an
unchanged file, by size, mtime, ctime and inode, is not read again; see pipelines/sources.py) -> skip the items the
store already holds for the extractor's key -> decode in worker processes (or threads), ahead of the model by a bounded
window -> ``extractor(batch)`` -> ``FeatureTable.write_shard`` every ``shard_size`` rows (and at
least once a minute, so a killed run loses little) -> summary. A file that fails never costs the others: decoding
errors are per file, and a batch the model rejects is retried item by item to isolate the culprit. Failures go to
``<workspace>/runs/<run id>/errors.jsonl`` as ``{path, hash, error, message}``. Runs started at once on one workspace
split the work: each claims its items a chunk at a time in the table (:class:`_ClaimedRun`) and waits for the ones
another live run holds, so that no item is extracted twice and a run that dies leaves its items to the others.

Every item gets its row. An item is a (file, item id, labels) entry and its content hash is the key of its features, so
a file with the same bytes as another (the same picture under two names or two classes, a renamed or copied file) is
not embedded again: after the extraction its row is written with the features stored under that hash, and the summary
counts it under ``duplicates``. A run that finds nothing to read (a missing path, an empty folder, no file of an
extension the extractor reads) stops with an error saying what it found.

Extractors fitted on the corpus (doc2vec) expose ``prepare(corpus, *, cache_dir)``; it is called with every scanned item
before the key is read, because the fitted model is part of the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import sys
import time
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.common.config import Overrides, parse_overrides
from crossmodal.device import resolve_device
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.types import canonical_modality
from extractors import Extractor, create_extractor, default_extractor, list_extractors
from extractors.base import set_decoder_threads
from extractors.errors import (
    ExtractorError,
    MediaError,
    MissingDependencyError,
    MissingWeightsError,
    StoreError,
    StoreFullError,
)
from extractors.registry import extension_readers, get_extractor_class
from extractors.store import FeatureStore, FeatureTable, StoreRow, item_key, printable
from pipelines.sources import HASH_CACHE, HashCache, Hasher, Item, Scan, SourceError, hash_items, scan

DEFAULT_BATCH_SIZE = 32
# Decoding workers: one core is left to the model (on 2 cores, 1 decoding thread gave hog-color 277 items/s, 4 gave
# 263: each extra thread took the GIL from the model's). Extractors whose decoding costs more than their model, or less
# than a hand-off, say so (``Extractor.decoding``, see decode_workers); single-core ones get a model per process.
DEFAULT_WORKERS = min(4, max(1, (os.cpu_count() or 2) - 1))
DEFAULT_SHARD_SIZE = 1024
DECODE_CHUNK = 4  # items per decoding task
Decode = typing.Literal["processes", "threads"]
DEFAULT_DECODE: Decode = "processes" if sys.platform == "linux" else "threads"  # fork is safe to rely on there
SHARD_SECONDS = 60.0  # a shard is also committed once this long has passed since the last one
CLAIM_POLL_SECONDS = 0.5  # how often a run waiting for items another run claimed looks whether they are stored
CLAIM_SECONDS = 10.0  # about how long the work of one claim lasts, once a run knows its rate (see _ClaimedRun.extract)
# Errors that concern the extractor itself, not one file: retrying item by item would only repeat them.
_FATAL = (MissingWeightsError, MissingDependencyError, StoreError)


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """How a run extracts, one object for the local runner (:func:`run_extract`) and the Ray one
    (:func:`pipelines.distributed.run_extract_ray`); what to read (workspace, modality, paths) is given beside it.

    Attributes:
        extractor: a registered name; None = the modality's default.
        labels_from: ``"folders"``, a manifest path or ``"regex:PATTERN"`` (see pipelines/sources.py).
        batch_size: items per model call.
        workers: worker processes or threads and hashing threads (0 = all in the calling thread; None =
            :func:`decode_workers`).
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: extractor config overrides, ``("key=value", ...)`` or a mapping (a list is kept as a tuple).
        progress: show a tqdm bar (items/s) on stderr, and say what is prepared.
        shard_size: rows per committed shard (also committed every minute), and the items of a run's first claim
            (see :class:`_ClaimedRun`).
        decode: decode in ``"processes"`` or ``"threads"`` (None: processes on Linux).
        rehash: read every file again, ignoring the hashes kept for unchanged files (pipelines/sources.py says what
            "unchanged" trusts).

    Raises:
        ConfigError: a size or worker count that is not positive, or an unknown ``decode``.
    """

    extractor: str | None = None
    labels_from: str = "folders"
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    device: str = "auto"
    overrides: Overrides = ()
    progress: bool = True
    shard_size: int = DEFAULT_SHARD_SIZE
    decode: Decode | None = None
    rehash: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.overrides, str):
            object.__setattr__(self, "overrides", (self.overrides,))
        elif self.overrides is not None and not isinstance(self.overrides, Mapping):
            object.__setattr__(self, "overrides", tuple(self.overrides))  # a frozen object holds no mutable list
        if self.decode not in (None, "processes", "threads"):
            raise ConfigError(f"--decode {self.decode!r}", hint="use processes or threads")
        if self.batch_size < 1 or self.shard_size < 1 or (self.workers or 0) < 0:
            raise ConfigError(f"batch size {self.batch_size}, shard size {self.shard_size} and workers "
                              f"{self.workers} must be positive", hint="give --batch-size >= 1 and --workers >= 0")


@dataclasses.dataclass
class ExtractSummary:
    """What one run did, every found item counted once: ``found = extracted + skipped + duplicates + failed +
    unsupported + by_other_run``. ``extracted``: items embedded; ``skipped``: items already in the store (same bytes,
    id and labels), or listed twice in this run; ``duplicates``: items whose bytes another item has, given their own
    row with those features (not embedded again); ``failed``: files that could not be read, decoded or embedded;
    ``unsupported``: files of an extension the extractor does not read. Both of the last two are listed with their
    reasons in ``errors_file``. ``by_other_run``: items another run on the same workspace claimed and wrote meanwhile
    (two runs started on the same files at once split them), not extracted again here. ``unlabelled``: found items
    that carry no label (train leaves them out). ``passed_over``: files of other modalities' extensions met in folder
    walks (a shared tree of images, texts and sounds), by suffix: not items of this run, counted so none goes unsaid.
    ``hashes_kept``: files not read to hash them, unchanged since their hash was kept (the others were read)."""

    run_id: str
    modality: str
    extractor: str
    key: str
    dim: int
    table: str
    found: int
    extracted: int
    skipped: int
    failed: int
    seconds: float
    items_per_second: float
    errors_file: str
    unsupported: int = 0
    duplicates: int = 0
    unlabelled: int = 0
    unlabelled_examples: list[str] = dataclasses.field(default_factory=list)
    passed_over: dict[str, int] = dataclasses.field(default_factory=dict)
    unsupported_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    hashes_kept: int = 0
    by_other_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ExtractPlan:
    """The work of a run, decided before any model runs: what to embed (``todo``, one item per new content hash), the
    items that share the bytes of a stored or ``todo`` item (``duplicates``: rows written with those features), how
    many are stored already (``skipped``), what failed to scan, and the unlabelled items."""

    extractor: Extractor
    table: FeatureTable
    todo: list[Item]
    skipped: int
    errors: list[SourceError]
    found: int
    duplicates: list[Item] = dataclasses.field(default_factory=list)
    unlabelled: list[Item] = dataclasses.field(default_factory=list)
    passed_over: dict[str, int] = dataclasses.field(default_factory=dict)
    hashes_kept: int = 0


def plan_extract(workspace: str | os.PathLike, modality: str, paths: Sequence[str | os.PathLike],
                 options: ExtractOptions = ExtractOptions(), *, hasher: Hasher | None = None) -> ExtractPlan:
    """Scan, hash, prepare the extractor and open its table; everything but the extraction itself. Of ``options``,
    it uses the extractor, labels_from, workers (hashing threads), device, overrides and progress (what is prepared
    is said on stderr). The files unchanged since their hash was kept in the workspace (``options.rehash`` aside) are
    not read; ``hasher`` hashes the others elsewhere (the Ray runner hashes on its workers), with
    :func:`pipelines.sources.hash_items`'s results; default: that function, in ``workers`` threads.

    Ray workers and :func:`run_extract` share it: the todo list can be split across workers, each calling
    :func:`extract_items` and writing its own shards.
    """
    extractor, labels_from, workers = options.extractor, options.labels_from, options.workers
    modality = canonical_modality(modality)
    if not paths and Path(labels_from).suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError("nothing to extract: no PATH given", hint="give folders or files, or --labels-from MANIFEST")
    name = extractor or default_extractor(modality)
    cls = get_extractor_class(name)
    if cls.modality != modality:
        raise ConfigError(f"extractor {name!r} is for {cls.modality}, not {modality}",
                          hint=f"{modality} extractors: {', '.join(list_extractors(modality))}")
    config = parse_overrides(cls.Config, options.overrides, owner=name, noun="option")  # typed; unknown ones refused
    ext = create_extractor(name, device=str(resolve_device(options.device)), **config)
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(missing)}", hint="check the path (nothing was read)")
    # Other modalities' media in a shared tree are passed over (counted); a file of this modality that this extractor
    # cannot read (an .svg without its library) is listed with the reason.
    others = {e for e, readers in extension_readers().items() if any(m != ext.modality for _, m in readers)}
    others -= set(ext.extensions) | set(ext.unreadable)
    found = scan(paths, extensions=ext.extensions, labels_from=labels_from, ignore=others)
    found = dataclasses.replace(found, errors=[_with_reason(e, ext.unreadable) for e in found.errors])
    if not found.items:
        raise _nothing_found(ext, paths, labels_from, found)
    prepare = getattr(ext, "prepare", None)
    if prepare is None:
        # Weights are resolved (downloaded) only once there is something to read, and before any file is hashed:
        # a missing weights file stops the run early, a wrong path is said first.
        _ = ext.key
    cache = HashCache(Path(workspace) / HASH_CACHE, trust=not options.rehash)
    items, hash_errors = hash_items(found.items, workers=DEFAULT_WORKERS if workers is None else workers, cache=cache,
                                    hasher=hasher)
    errors = found.errors + hash_errors
    store = FeatureStore(Path(workspace) / "store")
    if prepare is not None:
        if options.progress:
            print(f"{name}: preparing on {len(items)} items (a fit on the corpus, unless done before)", file=sys.stderr)
        prepare([(it.content_hash, it.path) for it in items], cache_dir=store.fitted_dir(modality))
    table = store.open(ext.describe())
    # One snapshot of the table: read twice, a shard another process commits in between would put its hashes in
    # ``embedded`` but not its items in ``stored``, and its items would be written again as duplicates.
    stored = table.known_items()
    embedded = {content_hash for content_hash, _, _ in stored}
    todo: list[Item] = []
    duplicates: list[Item] = []
    skipped = 0
    for item in items:
        key = item_key(item.content_hash or "", item.item_id, item.labels)
        if key in stored:
            skipped += 1
            continue
        stored.add(key)  # the same entry twice in one run (a manifest row repeated) is one item
        if item.content_hash in embedded:
            duplicates.append(item)
        else:
            todo.append(item)
            embedded.add(item.content_hash or "")
    return ExtractPlan(ext, table, todo, skipped, errors, len(found.items) + len(found.errors), duplicates=duplicates,
                       unlabelled=[it for it in found.items if not it.labels], passed_over=found.passed_over,
                       hashes_kept=cache.reused)


def _with_reason(error: SourceError, unreadable: dict[str, str]) -> SourceError:
    """An unsupported file of an extension the extractor would read with a missing library says so and what to do."""
    suffix = os.path.splitext(error.path)[1].lower()
    if error.error != "unsupported" or suffix not in unreadable:
        return error
    return dataclasses.replace(error, message=unreadable[suffix])


def unsupported_reasons(errors: Iterable[SourceError], unreadable: dict[str, str]) -> dict[str, str]:
    """``{suffix: "N files: reason"}`` for the unsupported files whose extension has a named reason (a missing
    library), so that a summary says it once per extension instead of once per file."""
    counts: dict[str, int] = {}
    for e in errors:
        suffix = os.path.splitext(e.path)[1].lower()
        if e.error == "unsupported" and suffix in unreadable:
            counts[suffix] = counts.get(suffix, 0) + 1
    return {suffix: f"{n} {suffix} files: {unreadable[suffix]}" for suffix, n in counts.items()}


def _nothing_found(ext: Extractor, paths: Sequence[str | os.PathLike], labels_from: str,
                   found: Scan) -> DatasetFormatError:
    """The error of a scan without one item the extractor reads: what was there instead, and what would read it."""
    where = ", ".join(str(p) for p in paths) or labels_from
    unsupported: dict[str, int] = {}
    for err in found.errors:
        suffix = os.path.splitext(err.path)[1].lower() or "(no extension)"
        if err.error == "unsupported" and suffix not in ext.unreadable:  # those are said with their reason below
            unsupported[suffix] = unsupported.get(suffix, 0) + 1
    parts = [f"{n} {suffix}" for suffix, n in sorted(unsupported.items(), key=lambda kv: -kv[1])]
    details = []
    if parts:
        details.append(f"{', '.join(parts)} are not read: {ext.name} reads {' '.join(sorted(ext.extensions))}")
    details.extend(unsupported_reasons(found.errors, ext.unreadable).values())
    if found.passed_over:
        media = sorted(found.passed_over.items(), key=lambda kv: -kv[1])
        details.append(f"{', '.join(f'{n} {suffix}' for suffix, n in media)} are other modalities' files")
    other_errors = [e for e in found.errors if e.error != "unsupported"]
    if other_errors:
        details.append(f"{len(other_errors)} unreadable or missing ({other_errors[0].error}: {other_errors[0].path})")
    message = f"found no {ext.modality} files in {where} ({'; '.join(details) or 'it is empty'})"
    known = extension_readers()
    # per suffix, its first reader, one of this modality first (another extractor) else another modality's
    readers = {suffix: min(known[suffix], key=lambda r: r[1] != ext.modality)
               for suffix in [*unsupported, *found.passed_over] if suffix in known}
    if readers:
        suffix, (name, modality) = next(iter(readers.items()))
        option = f"--modality {modality}" if modality != ext.modality else f"-e {name}"
        hint = f"give a folder of {' '.join(sorted(ext.extensions))} files, or read the {suffix} files with {option}"
    else:
        hint = f"give folders, files or a manifest of {' '.join(sorted(ext.extensions))} files"
    return DatasetFormatError(message, hint=hint)


def decode_workers(extractor: Extractor, workers: int | None = None, *, decode: Decode | None = None) -> int:
    """The worker processes or threads of a run: ``workers`` when given; else one per core for a ``single_core``
    extractor in worker processes (each decodes and embeds); else what the extractor's ``decoding`` asks for."""
    if workers is not None:
        return workers
    cores = os.cpu_count() or 2
    if extractor.single_core and _in_processes_mode(decode):
        return min(8, cores)
    return {"inline": 0, "spare": DEFAULT_WORKERS, "all": min(8, cores)}[extractor.decoding]


def models_in_workers(extractor: Extractor, workers: int | None = None, *, decode: Decode | None = None) -> bool:
    """Whether a run embeds in its worker processes, a copy of the model in each (a ``single_core`` extractor with
    worker processes), rather than in the calling thread fed by decoding workers."""
    return (extractor.single_core and _in_processes_mode(decode)
            and decode_workers(extractor, workers, decode=decode) > 0)


def extract_items(extractor: Extractor, items: Sequence[Item], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int | None = None, decode: Decode | None = None
                  ) -> Iterator[tuple[Item, np.ndarray | SourceError]]:
    """Decode (``workers`` processes or threads, default :func:`decode_workers`; bounded read-ahead) and embed
    ``items`` in batches of ``batch_size``; yield each with its float32 (dim,) row or its error, in input order.

    ``decode``: ``"processes"`` (the default on Linux) or ``"threads"`` (elsewhere, and inside Ray actors). A
    ``single_core`` extractor in worker processes runs in each of them on batches of its own, and only the rows come
    back (measured on 2 cores: mfcc 1.4x and doc2vec 1.8x the rate of one model fed by decoders).

    Raises:
        MissingWeightsError, MissingDependencyError: the extractor cannot run at all.
    """
    from threadpoolctl import threadpool_limits

    # numpy's BLAS would spread the small products of the weight-free descriptors (MFCC's mel projection) over every
    # core, spinning on the one the decoder needs: one thread is as fast there and leaves that core free. torch keeps
    # its own threads.
    in_workers = models_in_workers(extractor, workers, decode=decode)
    workers = decode_workers(extractor, workers, decode=decode)
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with threadpool_limits(limits=1, user_api="blas"):
        if in_workers:
            results = _in_processes(_extract_chunk, extractor, batches, workers=workers, ahead=2 * workers)
        else:
            decoded = (d for _, d in _decode(extractor, items, workers=workers, read_ahead=2 * batch_size + workers,
                                             processes=_in_processes_mode(decode)))
            results = (_embed_decoded(extractor, batch, list(islice(decoded, len(batch)))) for batch in batches)
        for batch, rows in zip(batches, results):
            yield from zip(batch, rows)


def run_extract(workspace: str | os.PathLike, modality: str, paths: Sequence[str | os.PathLike],
                options: ExtractOptions = ExtractOptions()) -> ExtractSummary:
    """Extract the files under ``paths`` into ``<workspace>/store``; see the module docstring for the flow.

    Args:
        workspace: the workspace folder (store/ and runs/ are made inside).
        modality: image, text, audio, 3d (= mesh) or video.
        paths: folders (``root/<class>/<file>``), files or manifests.
        options: how to extract (:class:`ExtractOptions`).

    Returns:
        :class:`ExtractSummary`; the run's ``errors.jsonl`` and ``run.json`` are in ``<workspace>/runs/<run id>/``.
    """
    start = time.perf_counter()
    with disk_full_names(workspace, None):  # the table's extractor.json, a fitted doc2vec model
        plan = plan_extract(workspace, modality, paths, options)
    with disk_full_names(workspace, plan):
        return _run_plan(plan, workspace, paths, options, start=start)


def _run_plan(plan: ExtractPlan, workspace: str | os.PathLike, paths: Sequence[str | os.PathLike],
              options: ExtractOptions, *, start: float) -> ExtractSummary:
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(workspace) / "runs" / run_id
    run_dir.mkdir(parents=True)
    errors_file = run_dir / "errors.jsonl"
    t_extract = time.perf_counter()
    with (open(errors_file, "w") as errors_out,
          progress_bar(len(plan.todo), plan.extractor.name, options.progress) as bar):
        for err in plan.errors:
            write_error(errors_out, err, None)
        unsupported = sum(err.error == "unsupported" for err in plan.errors)
        run = _ClaimedRun(plan, options, owner=run_id, errors_out=errors_out, bar=bar)
        try:
            left = run.extract(plan.todo)
            # What this run claimed is committed now, or failed: released before waiting, so that two runs waiting
            # for each other's failed items do not wait forever (the other run tries those again, and fails too).
            plan.table.release(run_id)
            shared = run.wait_for(left)
        finally:
            plan.table.release(run_id)
        # Rows another run wrote meanwhile (it had the same items) are its own; the rest are written here.
        stored = plan.table.known_items()
        mine = [it for it in [*plan.duplicates, *shared] if _key(it) not in stored]
        by_other = len(plan.duplicates) + len(shared) - len(mine)
        duplicates, lost = commit_duplicates(dataclasses.replace(plan, duplicates=mine), errors_out)
    return finish_run(plan, run_dir, run_id=run_id, extracted=run.extracted,
                      failed=len(plan.errors) - unsupported + run.failed + lost, unsupported=unsupported,
                      started=start, extract_seconds=time.perf_counter() - t_extract, duplicates=duplicates,
                      by_other_run=by_other,
                      record={"paths": [str(p) for p in paths], "labels_from": options.labels_from,
                              "batch_size": options.batch_size})


class _ClaimedRun:
    """The extraction of a plan's todo list beside other runs on the same table: items are claimed
    (:meth:`FeatureTable.claim`) a chunk at a time (a shard's worth, then about CLAIM_SECONDS of work) before they are
    extracted, so that two runs started on the same files take turns at the chunks instead of both doing all of them;
    an item another live run claimed is left to it, and waited for at the end (:meth:`wait_for`), unless that run dies
    (its claims go stale and are taken over). Rows are committed every ``shard_size`` rows or SHARD_SECONDS."""

    def __init__(self, plan: ExtractPlan, options: ExtractOptions, *, owner: str, errors_out: Any, bar: Any) -> None:
        self.plan, self.options, self.owner, self.errors_out, self.bar = plan, options, owner, errors_out, bar
        self.extracted = self.failed = 0
        self.pending: list[tuple[Item, np.ndarray]] = []
        self.last_commit = time.monotonic()

    def extract(self, items: Sequence[Item]) -> list[Item]:
        """Claim and extract ``items`` chunk by chunk; return those another run holds.

        A chunk starts at ``shard_size`` items and doubles while one takes less than CLAIM_SECONDS / 2: each chunk
        starts the worker processes again and drains their read-ahead (measured: 0.37 s a start for hog-color with
        2 workers on this loaded 2-core machine), which would cost a fast extractor (doc2vec: 1024 items in 0.3 s)
        as much as its work; chunks of CLAIM_SECONDS keep that to a few percent, and a run waiting for another's
        last chunk waits no longer than that."""
        left: list[Item] = []
        size, i = self.options.shard_size, 0
        while i < len(items):
            chunk = items[i:i + size]
            i += len(chunk)
            granted = set(self.plan.table.claim([it.content_hash or "" for it in chunk], owner=self.owner))
            left += [it for it in chunk if it.content_hash not in granted]
            started = time.monotonic()
            self._extract([it for it in chunk if it.content_hash in granted])
            if len(granted) == len(chunk) and time.monotonic() - started < CLAIM_SECONDS / 2:
                size *= 2
        self._commit()
        return left

    def wait_for(self, items: list[Item]) -> list[Item]:
        """Wait until each of ``items`` (held by other runs) is stored, extracting those whose run stopped without
        them (released or dead); return the ones stored by another run."""
        done: list[Item] = []
        said = False
        while items:
            left = self.extract(items)  # what the other run gave up is granted now
            stored = self.plan.table.known_hashes()
            done += [it for it in left if it.content_hash in stored]
            items = [it for it in left if it.content_hash not in stored]
            if items:
                if not said and self.options.progress:
                    owners = [f"pid {c.pid} on {c.host}" for c in self.plan.table.claims() if c.live
                              and c.owner != self.owner]
                    print(f"{self.plan.extractor.name}: waiting for {len(items)} items another run on this workspace "
                          f"is extracting ({', '.join(owners) or 'its claim'}); they are not extracted twice",
                          file=sys.stderr)
                    said = True
                time.sleep(CLAIM_POLL_SECONDS)
        self.bar.update(len(done))
        return done

    def _extract(self, items: Sequence[Item]) -> None:
        for item, result in extract_items(self.plan.extractor, items, batch_size=self.options.batch_size,
                                          workers=self.options.workers, decode=self.options.decode):
            self.bar.update(1)
            if isinstance(result, SourceError):
                write_error(self.errors_out, result, item.content_hash)
                self.failed += 1
                continue
            self.pending.append((item, result))
            if len(self.pending) >= self.options.shard_size or time.monotonic() - self.last_commit > SHARD_SECONDS:
                self._commit()

    def _commit(self) -> None:
        if self.pending:
            self.extracted += commit_rows(self.plan.table, self.pending)
        self.pending, self.last_commit = [], time.monotonic()


def _key(item: Item) -> tuple[str, str, tuple[str, ...]]:
    return item_key(item.content_hash or "", item.item_id, item.labels)


@contextlib.contextmanager
def disk_full_names(workspace: str | os.PathLike, plan: ExtractPlan | None) -> Iterator[None]:
    """Turn a full disk anywhere in the run (a shard, errors.jsonl, run.json; the table's files while planning, when
    ``plan`` is None) into one :class:`StoreFullError` that names the workspace and the space the whole run needs (its
    rows at the table's width, plus their metadata)."""
    rows = len(plan.todo) + len(plan.duplicates) if plan is not None else 0
    need = (f"; this run needs up to {_megabytes(rows * (4 * plan.extractor.dim + 512))} for {rows} rows"
            if plan is not None else "")  # 512: a generous bound on a row's metadata (hash, id, path)
    try:
        yield
    except StoreFullError as exc:
        raise StoreFullError(exc.message + need, hint=exc.hint) from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreFullError(f"no space left on the disk of workspace {workspace} ({exc.filename or 'a run file'})"
                             + need,
                             hint="free space on that disk (or give --workspace on another one) and re-run the same "
                                  "command: it resumes where it stopped") from exc


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def commit_duplicates(plan: ExtractPlan, errors_out: Any) -> tuple[int, int]:
    """Write the rows of ``plan.duplicates``, each with the stored features of its bytes (embedded by this run or an
    earlier one), in shards of at most DEFAULT_SHARD_SIZE rows. A duplicate of a file that failed fails with it.

    Returns:
        (rows written, items that failed).
    """
    if not plan.duplicates:
        return 0, 0
    vectors = plan.table.vectors({it.content_hash or "" for it in plan.duplicates})
    ready = [(it, vectors[it.content_hash]) for it in plan.duplicates if it.content_hash in vectors]
    lost = [it for it in plan.duplicates if it.content_hash not in vectors]
    first = {it.content_hash: it.path for it in reversed(plan.todo)}
    for item in lost:
        message = f"same bytes as {first.get(item.content_hash, 'another file')}, which could not be extracted"
        write_error(errors_out, SourceError(str(item.path), "failed-duplicate", message), item.content_hash)
    for i in range(0, len(ready), DEFAULT_SHARD_SIZE):
        commit_rows(plan.table, ready[i:i + DEFAULT_SHARD_SIZE])
    return len(ready), len(lost)


def finish_run(plan: ExtractPlan, run_dir: Path, *, run_id: str, extracted: int, failed: int, unsupported: int,
               started: float, extract_seconds: float, record: dict[str, Any], duplicates: int = 0,
               by_other_run: int = 0) -> ExtractSummary:
    """The run's summary, also written with ``record`` and the extractor's description to ``run_dir/run.json``."""
    summary = ExtractSummary(
        run_id=run_id, modality=plan.extractor.modality, extractor=plan.extractor.name, key=plan.extractor.key,
        dim=plan.extractor.dim, table=str(plan.table.path), found=plan.found, extracted=extracted,
        skipped=plan.skipped, failed=failed, unsupported=unsupported, seconds=round(time.perf_counter() - started, 3),
        items_per_second=round(extracted / extract_seconds, 2) if extracted and extract_seconds > 0 else 0.0,
        errors_file=str(run_dir / "errors.jsonl"), duplicates=duplicates, unlabelled=len(plan.unlabelled),
        unlabelled_examples=[printable(str(it.path)) for it in plan.unlabelled[:3]], passed_over=dict(plan.passed_over),
        unsupported_reasons=unsupported_reasons(plan.errors, plan.extractor.unreadable), hashes_kept=plan.hashes_kept,
        by_other_run=by_other_run,
    )
    (run_dir / "run.json").write_text(json.dumps({"summary": summary.to_dict(), **record,
                                                  "extractor": plan.extractor.describe()}, indent=2, default=str))
    return summary


def describe_extractors(modality: str | None = None) -> list[dict[str, Any]]:
    """One row per registered extractor for ``crossmodal extractors`` (extractors.registry.describe_extractor): name,
    modality, default, dim, extensions, ``ready`` (weights found or none needed), ``status`` (what is missing) and
    summary; nothing is downloaded."""
    from extractors.registry import describe_extractor

    modality = canonical_modality(modality) if modality else None
    return [describe_extractor(name) for name in list_extractors(modality)]


def _decode(extractor: Extractor, items: Sequence[Item], *, workers: int, read_ahead: int,
            processes: bool) -> Iterator[tuple[Item, Any]]:
    """``(item, decoded or SourceError)`` in input order, at most about ``read_ahead`` items decoded ahead of the
    consumer, in chunks of DECODE_CHUNK items (one hand-off per item costs more than reading a text).

    ``processes`` decodes in forked worker processes (:func:`_in_processes`); else in threads. A decoding thread
    shares the GIL with the model's thread, and even one whose library releases the GIL slows the model (measured:
    soxr resampling in a thread slows librosa's MFCC in the main thread by 20 %; the same loop in another process,
    not at all).
    """
    if workers == 0:
        for item in items:
            yield item, _load(extractor, item)
        return
    chunks = [items[i:i + DECODE_CHUNK] for i in range(0, len(items), DECODE_CHUNK)]
    ahead = max(workers, -(-read_ahead // DECODE_CHUNK))
    decoded = (_in_processes(_load_chunk, extractor, chunks, workers=workers, ahead=ahead) if processes
               else _decode_in_threads(extractor, chunks, workers=workers, ahead=ahead))
    for chunk, results in zip(chunks, decoded):
        yield from zip(chunk, results)


def _decode_in_threads(extractor: Extractor, chunks: list[Sequence[Item]], *, workers: int,
                       ahead: int) -> Iterator[list[Any]]:
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        futures = deque(pool.submit(_load_chunk, extractor, chunk) for chunk in chunks[:ahead])
        for nxt in range(ahead, len(chunks) + ahead):
            if nxt < len(chunks):
                futures.append(pool.submit(_load_chunk, extractor, chunks[nxt]))
            yield futures.popleft().result()


_Work = Callable[[Extractor, Sequence[Item]], list[Any]]


def _in_processes(work: _Work, extractor: Extractor, chunks: list[Sequence[Item]], *, workers: int,
                  ahead: int) -> Iterator[list[Any]]:
    """``work(extractor, chunk)`` of each chunk in order (decoded items, or rows), from ``torch.utils.data.DataLoader``
    worker processes, about ``ahead`` chunks in flight.

    Measured against the hand-built fork/pipe pool this replaced (benchmarks/results/extract_speed.md): no slower on
    the single-core extractors. The workers are forked (the DataLoader's default on Linux), so they inherit the
    extractor as it is (prepared, configured) without pickling it; they work on one thread each and never touch CUDA
    (only ``single_core`` extractors embed there). Stopping early (the consumer closes this generator, or raises)
    shuts them down.

    Raises:
        ExtractorError: a worker process died (a decoder crashed on a malformed file).
        MissingWeightsError, MissingDependencyError, StoreError: raised by ``work`` in a worker, as themselves.
    """
    from torch.utils.data import DataLoader

    count = min(workers, len(chunks))
    if not count:
        return
    loader = DataLoader(_Chunks(work, extractor, chunks), batch_size=None, shuffle=False, num_workers=count,
                        collate_fn=_as_is, prefetch_factor=max(1, -(-ahead // count)),
                        worker_init_fn=_one_thread_each, multiprocessing_context="fork")
    results = iter(loader)
    try:
        for chunk in chunks:
            try:
                ok, payload = next(results)
            except RuntimeError as exc:  # "DataLoader worker (pid ...) exited unexpectedly"
                raise ExtractorError(f"a worker process died while reading one of {[str(i.path) for i in chunk]}",
                                     hint="a decoder crashed on a malformed file: remove it, or run with "
                                          "--decode threads to find it") from exc
            if not ok:
                raise payload
            yield payload
    finally:
        del results  # its workers are told to stop and joined now, not when the collector gets to it


class _Chunks:
    """The DataLoader's map-style dataset: chunk number -> ``(True, work(extractor, chunk))``, or ``(False, error)``
    for an error that stops the run, sent back as a value so that it reaches the consumer as itself (the DataLoader
    would re-raise it as a new exception built from its traceback text)."""

    def __init__(self, work: _Work, extractor: Extractor, chunks: list[Sequence[Item]]) -> None:
        self.work, self.extractor, self.chunks = work, extractor, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> _Reply:
        try:
            return _Reply((True, self.work(self.extractor, self.chunks[index])), self.extractor.name)
        except Exception as exc:  # _FATAL: the consumer raises it
            return _Reply((False, exc), self.extractor.name)


class _Reply:
    """A worker's reply, pickled by itself: a value that cannot be pickled (a third-party extractor's decoded object)
    becomes an error that names it, where the DataLoader's queue would drop the reply in its feeder thread and leave the
    consumer waiting for it. Unpickled, it is the reply itself."""

    def __init__(self, reply: tuple[bool, Any], name: str) -> None:
        self.reply, self.name = reply, name

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import pickle

        try:
            return pickle.loads, (pickle.dumps(self.reply, protocol=pickle.HIGHEST_PROTOCOL),)
        except Exception as exc:
            return _unsendable, (self.name, f"{type(exc).__name__}: {exc}")


def _unsendable(name: str, reason: str) -> tuple[bool, ExtractorError]:
    return False, ExtractorError(f"{name}: decoded data cannot be sent between processes ({reason})",
                                 hint="run with --decode threads")


def _as_is(result: Any) -> Any:
    """The collate function: results travel as they are (the default one would turn numpy arrays into tensors)."""
    return result


def _one_thread_each(_: int) -> None:
    """A worker process's start: one thread for numpy's BLAS and FFmpeg (the DataLoader sets torch's): the processes
    are the parallelism."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    set_decoder_threads(1)


def _load_chunk(extractor: Extractor, items: Sequence[Item]) -> list[Any]:
    return [_load(extractor, item) for item in items]


def _extract_chunk(extractor: Extractor, items: Sequence[Item]) -> list[np.ndarray | SourceError]:
    return _embed_decoded(extractor, items, _load_chunk(extractor, items))


def _embed_decoded(extractor: Extractor, items: Sequence[Item], decoded: list[Any]) -> list[np.ndarray | SourceError]:
    """Each item's row, or its error: the decoded ones embedded as one batch (a rejected item isolated by
    :func:`_embed`), the decoding errors kept in place."""
    results = list(decoded)
    good = [k for k, r in enumerate(results) if not isinstance(r, SourceError)]
    for k, (_, row) in zip(good, _embed(extractor, [(items[k], results[k]) for k in good])):
        results[k] = row
    return results


def _in_processes_mode(decode: Decode | None) -> bool:
    return (decode or DEFAULT_DECODE) == "processes"


def _load(extractor: Extractor, item: Item) -> Any:
    try:
        return extractor.load(item.path)
    except _FATAL:
        raise
    except Exception as exc:  # MediaError, or a decoder library's own error on a malformed file: recorded, not fatal
        return SourceError(str(item.path), type(exc).__name__, _reason(exc))


def _embed(extractor: Extractor, batch: list[tuple[Item, Any]]) -> Iterator[tuple[Item, np.ndarray | SourceError]]:
    try:
        X = extractor([decoded for _, decoded in batch])
    except _FATAL:
        raise
    except Exception as exc:
        if len(batch) > 1:  # isolate the item(s) the model rejects; the rest of the batch goes on
            for one in batch:
                yield from _embed(extractor, [one])
            return
        yield batch[0][0], SourceError(str(batch[0][0].path), type(exc).__name__, _reason(exc))
        return
    for (item, _), row in zip(batch, X):
        yield item, row


def _reason(exc: BaseException) -> str:
    """What errors.jsonl says: a MediaError's reason (its path is the record's own) and hint, else the message."""
    if isinstance(exc, MediaError):
        return exc.reason + (f" (fix: {exc.hint})" if exc.hint else "")
    return str(exc) or repr(exc)


def commit_rows(table: FeatureTable, pending: list[tuple[Item, np.ndarray]]) -> int:
    """Write ``pending`` (items and their rows) to ``table`` as one shard, with the store's atomic commit; the local
    and the Ray runner's workers both commit through here. Returns the rows written."""
    X = np.stack([row for _, row in pending]).astype(np.float32, copy=False)
    rows = [StoreRow(content_hash=it.content_hash or "", item_id=it.item_id, source_path=os.path.abspath(it.path),
                     labels=it.labels, split=it.split) for it, _ in pending]
    table.write_shard(X, rows)
    return len(rows)


def write_error(out: Any, error: SourceError, content_hash: str | None) -> None:
    """One line of a run's ``errors.jsonl``: ``{path, hash, error, message}``, flushed (a killed run keeps it)."""
    out.write(json.dumps({"path": error.path, "hash": content_hash, "error": error.error, "message": error.message})
              + "\n")
    out.flush()


def progress_bar(total: int, name: str, enabled: bool) -> Any:
    """The run's tqdm bar on stderr (items/s), or a silent one when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"extract {name}", unit="item", disable=not enabled, dynamic_ncols=True,
                mininterval=0.5, smoothing=0.1)


@dataclasses.dataclass
class ShardReport:
    """One bad shard as ``store verify`` and ``store repair`` report it: where, why, how many rows it held (None when
    its parquet cannot be read), and after a repair how many of them were re-extracted from their files (``note``: why
    none were, when the extractor cannot be built here)."""

    table: str
    shard: str
    reason: str
    rows: int | None
    reextracted: int = 0
    note: str = ""


def verify_store(workspace: str | os.PathLike) -> dict[str, Any]:
    """Check every shard of ``<workspace>/store`` (both checksums, shapes, finite values), without the read cache.

    Returns:
        ``{"shards": checked, "bad": [ShardReport dicts], "unchecked": [shards without checksums]}``.
    """
    store = _existing_store(workspace)
    problems, count, unchecked = store.verify()
    bad = [ShardReport(str(p.table.path), p.parquet.stem, p.reason, _row_count(p.parquet)) for p in problems]
    return {"shards": count, "bad": [dataclasses.asdict(b) for b in bad], "unchecked": [str(p) for p in unchecked]}


def repair_store(workspace: str | os.PathLike, *, reextract: bool = True, device: str = "auto") -> dict[str, Any]:
    """Drop every bad shard; with ``reextract``, extract again the rows of a shard whose metadata is intact (only its
    ``.npy`` is bad) from their source files when these still hold the same bytes.

    What is dropped and not re-extracted is no longer in the store, so the next ``crossmodal extract`` of the same
    folders extracts it again.

    Shards written before checksums were recorded get them (``sealed``) once their other checks pass.

    Returns:
        ``verify_store``'s dict, the ``bad`` entries with ``reextracted`` filled in, ``dropped``: rows removed and not
        re-extracted, and ``sealed``: the shards whose checksums were recorded now.
    """
    from extractors.base import file_sha256
    from extractors.store import stored_path

    store = _existing_store(workspace)
    problems, count, unchecked = store.verify()
    reports, dropped = [], 0
    for problem in problems:
        table = problem.table
        try:  # a parquet that passes its own checksum is trusted, even when its .npy is not
            rows = table.shard_metadata(problem.parquet).to_pylist()
        except StoreError:
            rows = None
        lost = table.drop_shard(problem.parquet)
        report = ShardReport(str(table.path), problem.parquet.stem, problem.reason,
                             len(rows) if rows is not None else (lost.num_rows if lost is not None else None))
        if reextract and rows:
            items, gone, failed = [], [], []
            for row in rows:
                path = Path(stored_path(row["source_path"], row["source_path_bytes"]))
                try:
                    same = file_sha256(path) == row["content_hash"]
                except OSError:
                    same = False
                if same:
                    items.append(Item(path, tuple(row["labels"] or ()), row["split"], row["item_id"],
                                      row["content_hash"]))
                else:
                    gone.append(printable(str(path)))
            if items:
                description = table.description
                try:
                    ext = create_extractor(description["name"], device=str(resolve_device(device)),
                                           **description.get("config", {}))
                    if ext.key != table.key:
                        raise ConfigError(f"the extractor here has key {ext.key}, the table's is {table.key} (other "
                                          "weights, config or library versions)")
                except (ExtractorError, ConfigError) as exc:
                    report.note = f"not re-extracted: {exc}"
                else:
                    results = list(extract_items(ext, items))
                    good = [(it, r) for it, r in results if not isinstance(r, SourceError)]
                    failed = [r for _, r in results if isinstance(r, SourceError)]
                    report.reextracted = commit_rows(table, good) if good else 0
            # Rows left out of the re-extraction are named, not only counted in ``dropped``.
            notes = [report.note] if report.note else []
            if gone:
                notes.append(f"{len(gone)} not re-extracted: the file is gone, unreadable or changed (e.g. {gone[0]})")
            if failed:
                notes.append(f"{len(failed)} failed to extract again (e.g. {failed[0].path}: {failed[0].message})")
            report.note = "; ".join(notes)
        dropped += (report.rows or 0) - report.reextracted
        reports.append(report)
    bad = {p.parquet for p in problems}
    sealed = [p for p in unchecked if p not in bad and FeatureTable(p.parent.parent).seal(p)]
    return {"shards": count, "bad": [dataclasses.asdict(r) for r in reports], "dropped": dropped,
            "sealed": [str(p) for p in sealed], "unchecked": []}


def _existing_store(workspace: str | os.PathLike) -> FeatureStore:
    store = FeatureStore(Path(workspace) / "store")
    if not store.root.is_dir():
        raise ConfigError(f"{workspace}: no feature store here (no store/ folder)",
                          hint="give the workspace of an extraction: --workspace DIR")
    return store


def _row_count(parquet: Path) -> int | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(parquet).metadata.num_rows
    except (OSError, pa.ArrowException):  # a damaged footer: the count is unknown, which the report says
        return None
