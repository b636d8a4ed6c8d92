"""The whole job on a Ray cluster: extraction with Ray Data and actor pools, and the index built from the shards.

**Extraction** (:func:`run_extract_ray`) follows the local run (:func:`pipelines.extract.run_extract`) step by step, so
that the store ends up with the same rows (content hash, vector, item id, source path, labels, split), in more shards:

1. *listing*: the driver scans the folders or reads the manifest (:func:`pipelines.sources.scan`), so item ids and
   labels are the local run's;
2. *hashing*: the listing becomes a Ray Dataset (Arrow columns, :func:`ray.data.from_arrow`, in blocks of at most
   ``HASH_BLOCK`` items) and tasks on the workers hash the files (sha256, several threads each); the driver only reads
   the hashes back and plans as a local run does (skip what the store holds, give items with the same bytes their
   own rows, fit corpus-fitted extractors);
3. *extraction*: the driver claims the todo list in the store (``FeatureTable.claim``: a run on the same workspace
   leaves these items to this one, and this one waits for those another run holds), and the claimed items become a
   second Dataset whose batches go to a pool of actors
   (``map_batches`` with an :class:`ray.data.ActorPoolStrategy`): one actor per GPU of the cluster, each holding one
   GPU, when it has GPUs and ``device`` allows CUDA; else one per CPU. Each actor builds the extractor once, runs
   :func:`pipelines.extract.extract_items` on its batch (decoding in threads) and commits the batch's good rows as one
   shard of its own, straight into the store (the store's atomic commit, safe across processes and machines); only a
   small per-item status table returns to the driver, which writes the failures to the run's ``errors.jsonl``;
4. the rows of items whose bytes another item has are written by the driver (features copied, as in a local run).

A killed run resumes like a local one: every committed batch is skipped the next time.

**Index** (:func:`run_index_ray`): the driver trains the IVF coarse quantiser once, on a sample of the gallery's
embeddings; Ray tasks each read a group of the store's shards, embed their rows with the model and fill the inverted
lists of those rows (:func:`crossmodal.index.build_ivf_shard`); the driver merges the lists
(:func:`crossmodal.index.merge_ivf_shards`) and saves the index where ``crossmodal index`` would, with the same ids and
gallery rows.

The workspace must be a folder every worker can reach (a shared filesystem past one machine), as in clip-retrieval's
distributed inference, where each worker writes its own output partitions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodal.errors import ConfigError
from pipelines.sources import Item, SourceError, hash_items

if TYPE_CHECKING:
    from pipelines.extract import ExtractOptions, ExtractPlan, ExtractSummary

# pipelines.extract (and with it torch, 5-10 s on a busy node) is imported inside the functions that need it: a worker
# that only hashes files imports this module and pipelines.sources, not the extraction stack.

HASH_BLOCK = 1024  # files per hashing task: enough to amortise a task's start (~ms), small enough to spread
HASH_THREADS = 4  # threads per hashing task: sha256 releases the GIL, and a file's read waits on the disk


def run_extract_ray(workspace: str | os.PathLike, modality: str, paths: Sequence[str | os.PathLike],
                    options: ExtractOptions | None = None, *, address: str = "auto",
                    actors: int | None = None) -> ExtractSummary:
    """Extract the files under ``paths`` into ``<workspace>/store`` on a Ray cluster (see the module docstring).

    Args:
        workspace, modality, paths: as in :func:`pipelines.extract.run_extract`.
        options: as there (None: the defaults). ``device="auto"`` gives GPU actors (one GPU each) when the cluster
            has GPUs, ``"cpu"`` keeps every actor on CPU; ``workers`` are each actor's decoding threads (actors
            decode in threads and keep one model); ``shard_size`` bounds the items of an actor's batch, hence the
            rows of its shard (batches are made smaller so that every actor gets about four); ``decode`` does not
            apply.
        address: ``"auto"`` joins the Ray runtime this process already started, else the cluster in ``RAY_ADDRESS`` or
            the latest one started on this machine (``ray start``), else starts a local one for the run; any other
            value is a cluster address (``HOST:PORT`` or ``ray://HOST:10001``).
        actors: how many extraction actors; default one per GPU (GPU actors) or per CPU of the cluster.

    Returns:
        :class:`pipelines.extract.ExtractSummary`; the run's ``errors.jsonl`` and ``run.json`` (which also records
        the cluster, the actors and the seconds of each stage) are in ``<workspace>/runs/<id>/``.

    Raises:
        MissingDependencyError: ray is not installed.
        ConfigError: ``actors`` below 1, ``--device cuda`` on a cluster without GPUs, or a worker whose extractor key
            differs from the driver's.
    """
    from extractors.base import require
    from pipelines.extract import ExtractOptions, disk_full_names, plan_extract

    ray = require("ray", extractor="--ray", extra="ray")
    options = options or ExtractOptions()
    if actors is not None and actors < 1:
        raise ConfigError(f"{actors} actors: there must be at least one",
                          hint="leave actors unset: one per GPU of the cluster, else one per CPU")
    start = time.perf_counter()
    started_ray = _connect(ray, address)
    stages: dict[str, float] = {}
    try:
        with _data_context(ray):
            hasher = _timed(stages, "hash_seconds", lambda items: hash_on_ray(ray, items))
            with disk_full_names(workspace, None):
                # the driver needs no GPU: the actors build their own extractor
                plan = plan_extract(workspace, modality, paths, dataclasses.replace(options, device="cpu"),
                                    hasher=hasher)
            stages["plan_seconds"] = round(time.perf_counter() - start, 3)
            with disk_full_names(workspace, plan):
                return _run_plan_ray(ray, plan, workspace, paths, options, address=address, actors=actors,
                                     start=start, stages=stages)
    finally:
        if started_ray:
            ray.shutdown()


def hash_on_ray(ray: Any, items: Sequence[Item]) -> tuple[list[Item], list[SourceError]]:
    """:func:`pipelines.sources.hash_items` on the cluster: the items in blocks of at most ``HASH_BLOCK``, each hashed
    by a task on a worker; the same results (hashes, and ``unreadable`` errors) in the items' order."""
    if not items:
        return [], []
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # at least two blocks a CPU once there are enough files to be worth a task each (HASH_BLOCK / 16)
    blocks = max(math.ceil(len(items) / HASH_BLOCK), min(2 * cpus, math.ceil(len(items) * 16 / HASH_BLOCK)))
    listing = _dataset(ray, {"i": range(len(items)), "path": [os.fsencode(it.path) for it in items]},
                       math.ceil(len(items) / blocks))
    hashes: list[str | None] = [None] * len(items)
    failed: dict[int, SourceError] = {}
    for batch in listing.map_batches(_hash_block, batch_size=None, batch_format="pyarrow",
                                     num_cpus=1).iter_batches(batch_size=None, batch_format="pyarrow"):
        for i, path, digest, error, message in zip(*_columns(batch, "i", "path", "hash", "error", "message")):
            if error:
                failed[i] = SourceError(os.fsdecode(path), error, message)
            else:
                hashes[i] = digest
    hashed = [dataclasses.replace(it, content_hash=h) for it, h in zip(items, hashes) if h is not None]
    return hashed, [failed[i] for i in sorted(failed)]


def _hash_block(block: Any) -> Any:
    """A worker's hashing task: ``{i, path}`` rows -> ``{i, path, hash, error, message}`` (error empty when hashed)."""
    import pyarrow as pa

    rows = block.to_pylist()
    # the row number rides in item_id: hash_items returns the hashed items and the errors (by path) apart
    items = [Item(Path(os.fsdecode(r["path"])), item_id=str(r["i"])) for r in rows]
    hashed, errors = hash_items(items, workers=HASH_THREADS)
    digest = {it.item_id: it.content_hash or "" for it in hashed}
    reasons = {e.path: (e.error, e.message) for e in errors}
    status = [("", "") if it.item_id in digest else reasons[str(it.path)] for it in items]
    return pa.table({"i": [r["i"] for r in rows], "path": [r["path"] for r in rows],
                     "hash": [digest.get(it.item_id, "") for it in items],
                     "error": [error for error, _ in status], "message": [message for _, message in status]})


class ExtractActor:
    """One actor of the extraction pool: an extractor built once, and the feature table it commits its shards to.

    A failure to build the extractor is kept and raised by the first batch: Ray reports a failed constructor only as
    a dead actor, after retries, where a batch's error reaches the driver as itself.
    """

    def __init__(self, name: str, config: dict[str, Any], device: str, store_root: str, key: str, batch_size: int,
                 workers: int | None):
        """Build extractor ``name`` with the driver's exact ``config`` on ``device`` and open its table.

        Args:
            name: the extractor's registered name.
            config: every field of the driver's extractor config (including what ``prepare`` fitted, e.g. doc2vec's
                ``model_path``), so every actor computes the very same features.
            device: ``"cuda"`` for a GPU actor, else ``"cpu"``.
            store_root: ``<workspace>/store``.
            key: the driver's extractor key; an actor whose extractor comes out with another key (other weights or
                library on that node) refuses to write rather than fill the table with features that do not belong.
            batch_size, workers: items per model call, decoding threads.
        """
        from extractors import create_extractor
        from extractors.store import FeatureStore

        self.batch_size, self.workers = batch_size, workers
        self.failure: Exception | None = None
        try:
            self.extractor = create_extractor(name, device=device, **config)
            if self.extractor.key != key:
                raise ConfigError(f"a Ray worker on {os.uname().nodename} built {name} with key {self.extractor.key}, "
                                  f"the driver's is {key}",
                                  hint="install the same weights and library versions on every node")
            self.table = FeatureStore(store_root).open(self.extractor.describe())
        except Exception as exc:  # noqa: BLE001  raised by __call__, where Ray passes it on as itself
            self.failure = exc

    def __call__(self, block: Any) -> Any:
        """Extract a batch (``i, path, item_id, labels, split, content_hash`` rows), commit its good rows as one shard;
        return ``{i, error, message}`` per item (error empty for a row written)."""
        import pyarrow as pa

        from pipelines.extract import commit_rows, extract_items

        if self.failure is not None:
            raise self.failure
        rows = block.to_pylist()
        items = [Item(Path(os.fsdecode(r["path"])), tuple(json.loads(r["labels"])), r["split"], r["item_id"],
                      r["content_hash"]) for r in rows]
        good, errors = [], {}
        # threads: a Ray worker holds gRPC threads that a forked child must not inherit half-way
        for n, (item, result) in enumerate(extract_items(self.extractor, items, batch_size=self.batch_size,
                                                         workers=self.workers, decode="threads")):
            if isinstance(result, SourceError):
                errors[n] = result
            else:
                good.append((item, result))
        if good:
            commit_rows(self.table, good)
        return pa.table({"i": [r["i"] for r in rows],
                         "error": [errors[n].error if n in errors else "" for n in range(len(rows))],
                         "message": [errors[n].message if n in errors else "" for n in range(len(rows))]})


def _run_plan_ray(ray: Any, plan: ExtractPlan, workspace: str | os.PathLike, paths: Sequence[str | os.PathLike],
                  options: ExtractOptions, *, address: str, actors: int | None, start: float,
                  stages: dict[str, float]) -> ExtractSummary:
    """Extract the plan's todo list on the actor pool, beside other runs on the same table: the driver claims the items
    (:meth:`FeatureTable.claim`) before the actors extract them, leaves those another live run holds to it, and waits
    for them at the end, extracting those it gave up (released or dead), as a local run does. It claims its whole
    list at once (a local run claims chunk by chunk): a run started beside it waits for its items, never redoes them."""
    from extractors.store import item_key
    from pipelines.extract import CLAIM_POLL_SECONDS, commit_duplicates, finish_run, progress_bar, write_error

    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-ray"
    run_dir = Path(workspace) / "runs" / run_id
    run_dir.mkdir(parents=True)
    counts = {"extracted": 0, "failed": 0}
    shared: list[Item] = []
    pool: dict[str, Any] = {}
    t_extract = time.perf_counter()
    with open(run_dir / "errors.jsonl", "w") as errors_out, \
            progress_bar(len(plan.todo), plan.extractor.name, options.progress) as bar:
        for err in plan.errors:
            write_error(errors_out, err, None)
        unsupported = sum(err.error == "unsupported" for err in plan.errors)
        left, said = plan.todo, False
        try:
            while left:
                granted = set(plan.table.claim([it.content_hash or "" for it in left], owner=run_id))
                mine = [it for it in left if it.content_hash in granted]
                if mine:
                    pool = _pool(ray, options.device, actors, len(mine), options.shard_size)
                    if options.progress:
                        print(f"ray: {pool['why']}", file=sys.stderr)
                    _extract_on_ray(ray, plan, mine, workspace, options, pool, counts, errors_out, bar, stages,
                                    t_extract)
                    # committed or failed now: released before waiting, so that two runs waiting for each other's
                    # failed items do not wait forever
                    plan.table.release(run_id)
                stored = plan.table.known_hashes()
                others = [it for it in left if it.content_hash not in granted]
                shared += [it for it in others if it.content_hash in stored]
                left = [it for it in others if it.content_hash not in stored]
                if left:
                    if not said and options.progress:
                        print(f"{plan.extractor.name}: waiting for {len(left)} items another run on this workspace is "
                              "extracting; they are not extracted twice", file=sys.stderr)
                        said = True
                    time.sleep(CLAIM_POLL_SECONDS)
        finally:
            plan.table.release(run_id)
        stages["extract_seconds"] = round(time.perf_counter() - t_extract, 3)
        bar.update(len(shared))
        # rows another run wrote meanwhile (it had the same items) are its own; the rest are written here
        known = plan.table.known_items()
        rows = [it for it in [*plan.duplicates, *shared]
                if item_key(it.content_hash or "", it.item_id, it.labels) not in known]
        by_other = len(plan.duplicates) + len(shared) - len(rows)
        duplicates, lost = commit_duplicates(dataclasses.replace(plan, duplicates=rows), errors_out)
    return finish_run(plan, run_dir, run_id=run_id, extracted=counts["extracted"],
                      failed=len(plan.errors) - unsupported + counts["failed"] + lost, unsupported=unsupported,
                      started=start, extract_seconds=stages["extract_seconds"] if plan.todo else 0.0,
                      duplicates=duplicates, by_other_run=by_other,
                      record={"paths": [str(p) for p in paths], "labels_from": options.labels_from,
                              "batch_size": options.batch_size,
                              "ray": {"address": address, **{k: v for k, v in pool.items() if k != "remote"},
                                      **stages}})


def _extract_on_ray(ray: Any, plan: ExtractPlan, items: list[Item], workspace: str | os.PathLike,
                    options: ExtractOptions, pool: dict[str, Any], counts: dict[str, int], errors_out: Any, bar: Any,
                    stages: dict[str, float], t_extract: float) -> None:
    """One pass of the actor pool over ``items``: count the rows written and write each failure to errors.jsonl."""
    from pipelines.extract import write_error

    for batch in _extract_dataset(ray, plan, items, workspace, options, pool).iter_batches(batch_size=None,
                                                                                           batch_format="pyarrow"):
        if "first_batch_seconds" not in stages:  # the actors' start (extractor built) and one batch
            stages["first_batch_seconds"] = round(time.perf_counter() - t_extract, 3)
            stages["first_batch_items"] = batch.num_rows
        for i, error, message in zip(*_columns(batch, "i", "error", "message")):
            if error:
                write_error(errors_out, SourceError(str(items[i].path), error, message), items[i].content_hash)
                counts["failed"] += 1
            else:
                counts["extracted"] += 1
        bar.update(batch.num_rows)


def _pool(ray: Any, device: str, actors: int | None, todo: int, shard_size: int) -> dict[str, Any]:
    """How the extraction runs: actors (count, GPU or CPU, and why) and items per batch."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda, but the Ray cluster has no GPU", hint="use --device auto or cpu")
    cpus = max(1, int(resources.get("CPU", 1)))
    count = actors or gpus or cpus
    batch = max(1, min(shard_size, math.ceil(todo / (4 * count))))
    count = min(count, math.ceil(todo / batch))  # no actor without a batch to run
    if gpus:
        why = f"{count} GPU actors (one GPU each; the cluster has {gpus} GPUs)"
    else:
        why = (f"{count} CPU actors ({'as asked' if actors else f'one per CPU of {cpus}'}; "
               f"{'--device cpu' if device == 'cpu' else 'the cluster has no GPU'})")
    why += f", batches of up to {batch} items (one shard each)"
    return {"actors": count, "gpu": bool(gpus), "batch": batch, "why": why,
            "remote": {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}}


def _extract_dataset(ray: Any, plan: ExtractPlan, items: list[Item], workspace: str | os.PathLike,
                     options: ExtractOptions, pool: dict[str, Any]) -> Any:
    """``items`` as a Dataset in blocks of one batch each, mapped by the actor pool."""
    extractor = plan.extractor
    # labels as JSON text: a block of unlabelled items would make an Arrow list<null> column that other blocks'
    # list<string> does not unify with
    todo = _dataset(ray, {"i": range(len(items)), "path": [os.fsencode(it.path) for it in items],
                          "item_id": [it.item_id for it in items], "labels": [json.dumps(it.labels) for it in items],
                          "split": [it.split for it in items], "content_hash": [it.content_hash for it in items]},
                    pool["batch"])
    config = {f.name: getattr(extractor.config, f.name) for f in dataclasses.fields(extractor.config)}
    return todo.map_batches(
        ExtractActor, batch_size=pool["batch"], batch_format="pyarrow",
        fn_constructor_kwargs={"name": extractor.name, "config": config, "device": "cuda" if pool["gpu"] else "cpu",
                               "store_root": str((Path(workspace) / "store").resolve()), "key": extractor.key,
                               "batch_size": options.batch_size, "workers": options.workers},
        compute=ray.data.ActorPoolStrategy(size=pool["actors"]), **pool["remote"])


def _dataset(ray: Any, columns: dict[str, Any], block: int) -> Any:
    """A Dataset of ``columns`` in blocks of exactly ``block`` rows (one block, one actor batch, one shard), built
    from Arrow columns of explicit types (paths as bytes: a name that is not UTF-8 survives); the driver's cost was
    4-5 us an item at 6,000 items (benchmarks/ray_scale.py), as ``ray.data.from_items`` of one dict a row."""
    import pyarrow as pa

    table = pa.table({name: pa.array(values, type=pa.binary() if name == "path" else None)
                      for name, values in columns.items()})
    return ray.data.from_arrow([table.slice(lo, block) for lo in range(0, table.num_rows, block)])


def _columns(batch: Any, *names: str) -> list[list[Any]]:
    """The Python values of columns ``names`` of an Arrow batch (column by column: a dict per row costs more)."""
    return [batch.column(name).to_pylist() for name in names]


def _connect(ray: Any, address: str) -> bool:
    """Join or start a Ray runtime; True when this call started one (and must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "auto":
        ray.init(**kwargs)  # RAY_ADDRESS, else the latest local cluster, else a new local runtime
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc})",
                              hint="start one with `ray start --head`, or use --ray auto") from exc
    return True


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for this run, restored after it: no progress bars or execution logs of its own (the run has
    its bar and summary), and a worker's error raised as itself (a MissingWeightsError, not a UserCodeException)."""
    import ray.data  # noqa: F401  # registers ray.data on the module

    ctx = ray.data.DataContext.get_current()
    wanted = {"enable_progress_bars": False, "enable_operator_progress_bars": False, "print_on_execution_start": False,
              "enable_auto_log_stats": False, "raise_original_map_exception": True}
    saved = {name: getattr(ctx, name) for name in wanted}
    logger = logging.getLogger("ray.data")
    level = logger.level
    for name, value in wanted.items():
        setattr(ctx, name, value)
    logger.setLevel(logging.WARNING)
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, Exception) else exc) from None
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        logger.setLevel(level)


def _timed(stages: dict[str, float], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call``, adding the seconds it takes to ``stages[name]``."""

    def timed(*args: Any) -> Any:
        t = time.perf_counter()
        try:
            return call(*args)
        finally:
            stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - t, 3)

    return timed


INDEX_PART_ROWS = 1 << 20  # gallery rows per index task at most: its IVF shard's codes stay within a worker's memory


def run_index_ray(workspace: str | os.PathLike, *, model: str = "default", backend: str = "auto",
                  gallery: str = "all", address: str = "auto", device: str = "auto",
                  parts: int | None = None) -> dict[str, Any]:
    """``crossmodal index`` on a Ray cluster: the same index folders as :func:`pipelines.index.build_index`, built
    by tasks on the workers from the store's shards and merged by list on the driver.

    Per gallery (modality, and query modality for per-pair models), the driver trains the IVF coarse quantiser once
    (:func:`crossmodal.index.train_ivf`, on the random sample of embedded gallery rows a local build trains on); each
    task embeds a contiguous part of the gallery, gathered from the shards' memory maps, and fills that part's inverted
    lists (:func:`crossmodal.index.build_ivf_shard`); the driver merges the parts in gallery order
    (:func:`crossmodal.index.merge_ivf_shards`), writes ``gallery.parquet`` and ``gallery.json``, and swaps the
    model's index folder in. A Ray-built index therefore answers like a local build with the same ``backend``.

    Args:
        workspace, model, gallery: as in :func:`pipelines.index.build_index`.
        backend: ``"auto"`` (an on-disk IVF sized as ``auto`` sizes it for the gallery) or
            ``"ivf-ondisk:<IVF factory string>"``: a build merged by list is an IVF.
        address: as in :func:`run_extract_ray`.
        device: where the tasks run the encoders: ``"cpu"``, ``"cuda"`` (a GPU per task) or ``"auto"`` (cuda when
            the cluster has GPUs).
        parts: tasks per gallery; default one per CPU of the cluster, more when a part would exceed
            ``INDEX_PART_ROWS`` rows.

    Returns:
        ``build_index``'s dict, each index with ``parts`` and the seconds of its stages (``train_seconds``,
        ``parts_seconds``, ``merge_seconds``).

    Raises:
        ConfigError: a backend that is not an IVF, ``parts`` below 1, an unknown ``device``, or cuda on a cluster
            without GPUs.
        NotTrainedError, FeatureMismatchError: as ``build_index``.
    """
    import tempfile

    from crossmodal.index import choose_spec, create_index, merge_ivf_shards, train_ivf
    from crossmodal.model import CrossModalModel, file_sha256
    from crossmodal.types import MODALITIES
    from extractors.base import require
    from pipelines.index import (
        GALLERY_META,
        GALLERY_ROWS,
        _embedded_sample,
        _GalleryWriter,
        _swap_in,
        gallery_table,
        query_partners,
        require_model,
    )
    from pipelines.workspace import Workspace

    ray = require("ray", extractor="--ray", extra="ray")
    if not (backend == "auto" or backend.startswith("ivf-ondisk:")):
        raise ConfigError(f"--backend {backend} with --ray: a Ray build merges IVF lists built apart",
                          hint="use --backend auto or ivf-ondisk:IVF<lists>,Flat (or drop --ray)")
    if gallery not in ("all", "test"):
        raise ConfigError(f"unknown gallery {gallery!r}", hint="use all or test")
    if device not in ("auto", "cpu", "cuda") or (parts is not None and parts < 1):
        raise ConfigError(f"device {device!r} and parts {parts}: the device is auto, cpu or cuda, parts at least 1")
    started = time.perf_counter()
    ws = Workspace(workspace)
    model_dir = require_model(ws, model)
    net = CrossModalModel.load(model_dir, device="cpu")
    card_sha = file_sha256(model_dir / "card.json")
    out = ws.index_dir / model
    ws.index_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model}.", suffix=".incomplete", dir=ws.index_dir))
    built = []
    started_ray = _connect(ray, address)
    try:
        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
        if device == "cuda" and not gpus:
            raise ConfigError("--device cuda, but the Ray cluster has no GPU", hint="use --device auto or cpu")
        device = "cuda" if device != "cpu" and gpus else "cpu"
        task = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0)(_index_part)
        for modality in [m for m in MODALITIES if m in net.features]:
            key, table, _, rows = gallery_table(ws, net, model, modality, gallery)
            with table.rows_view() as view:
                meta = view.metadata(["content_hash", "item_id", "source_path", "labels"]).take(rows)
                total = len(view)
            for partner in query_partners(net, modality):
                folder = staging / modality / partner if partner else staging / modality
                folder.mkdir(parents=True)
                dim = net.embedding_dim(modality, partner)
                # a memory budget of one byte: auto's on-disk IVF, with the lists auto gives this many items
                spec, why = choose_spec(backend, dim=dim, size=len(rows), memory_budget=1)
                if backend == "auto":
                    why = f"auto with --ray: an on-disk IVF ({spec}) sized for {len(rows):,} items"
                options = spec.split(":", 1)[1]
                t = time.perf_counter()
                sample = _embedded_sample(net, modality, partner, table, rows,
                                          create_index(spec, dim).train_size())
                trained = train_ivf(options, dim, sample, folder / "trained.faiss")
                train_seconds = time.perf_counter() - t
                with _GalleryWriter(folder / GALLERY_ROWS) as gallery_rows:
                    ids = gallery_rows.write(meta)
                count = parts or max(cpus, math.ceil(len(rows) / INDEX_PART_ROWS))
                bounds = [len(rows) * p // count for p in range(count + 1)]
                shards = [folder / f"part-{p:05d}.faiss" for p in range(count) if bounds[p + 1] > bounds[p]]
                t = time.perf_counter()
                pending = [task.remote(str(ws.root), str(model_dir), modality, partner, key, rows[a:b], ids[a:b],
                                       str(trained), str(shard), device, total)
                           for (a, b), shard in zip(((bounds[p], bounds[p + 1]) for p in range(count)
                                                     if bounds[p + 1] > bounds[p]), shards)]
                with _data_context(ray):  # a task's StoreError or FeatureMismatchError raised as itself
                    filled = sum(ray.get(pending))
                parts_seconds = time.perf_counter() - t
                t = time.perf_counter()
                index = merge_ivf_shards(shards, folder)
                merge_seconds = time.perf_counter() - t
                for shard in [trained, *shards]:
                    for path in shard.parent.glob(shard.name + "*"):
                        path.unlink()
                    shard.with_suffix(".ids.parquet").unlink(missing_ok=True)
                if filled != len(rows) or len(index) != len(rows):
                    raise ConfigError(f"{modality}: {len(rows)} gallery rows, but the parts held {filled} and the "
                                      f"merged index {len(index)}", hint="build again (the store changed?)")
                why += f"; built on Ray in {len(shards)} parts merged by list"
                meta_json = {"model": model, "card_sha256": card_sha, "backend": spec, "requested": backend,
                             "why": why, "gallery": gallery, "modality": modality, "against": partner,
                             "extractor_key": key, "items": len(rows), "dim": dim}
                (folder / GALLERY_META).write_text(json.dumps(meta_json, indent=2))
                seconds = train_seconds + parts_seconds + merge_seconds
                summary = (f"{len(rows):,} items in {spec}, built on Ray: quantiser trained on the driver in "
                           f"{train_seconds:.1f} s, {len(shards)} parts filled by the workers in "
                           f"{parts_seconds:.1f} s, merged by list in {merge_seconds:.1f} s")
                built.append({"modality": modality, "against": partner, "items": len(rows), "dim": dim,
                              "backend": spec, "why": why, "summary": summary, "seconds": round(seconds, 2),
                              "parts": len(shards),
                              "train_seconds": round(train_seconds, 3), "parts_seconds": round(parts_seconds, 3),
                              "merge_seconds": round(merge_seconds, 3),
                              "path": str(out / folder.relative_to(staging))})
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    return {"model": model, "backend": backend, "gallery": gallery, "path": str(out), "indexes": built,
            "seconds": round(time.perf_counter() - started, 2)}


def _index_part(workspace: str, model_dir: str, modality: str, partner: str | None, key: str, rows: Any,
                ids: list[str], trained: str, out: str, device: str, total: int) -> int:
    """A worker's index task: embed gallery ``rows`` (positions among the table's unique rows) and fill their IVF
    shard ``out`` with ``ids``; return its row count."""
    from crossmodal.index import build_ivf_shard
    from crossmodal.model import CrossModalModel
    from extractors.errors import StoreError
    from pipelines.index import BATCH_ROWS
    from pipelines.workspace import Workspace

    net = CrossModalModel.load(model_dir, device=device)
    table = Workspace(workspace).store.table(modality, key)
    with table.rows_view() as view:
        if len(view) != total:
            raise StoreError(f"{table.path}: {len(view)} rows now, {total} when the index build began (another run "
                             "wrote or compacted the table)", hint="build the index again once it is done")

        def batches() -> Iterator[tuple[Any, list[str]]]:
            for lo in range(0, len(rows), BATCH_ROWS):
                yield net.encode(modality, view[rows[lo:lo + BATCH_ROWS]], against=partner), ids[lo:lo + BATCH_ROWS]

        return build_ivf_shard(trained, batches(), out)
