"""Extraction on a Ray cluster: the local extract step's batches, run by a pool of Ray actors.

The driver plans the run exactly as :func:`pipelines.extract.run_extract` does (:func:`pipelines.extract.plan_extract`:
scan, hash, skip what the store holds, fit corpus-fitted extractors), then cuts the todo list into tasks of at most
``shard_size`` items. Each actor builds the extractor once (on its GPU when the cluster has GPUs: one GPU per actor),
runs :func:`pipelines.extract.extract_items` on a task (the same decode threads and model batches as a local run) and
commits the rows it extracted as one shard of its own, with the store's atomic commit; the driver writes the errors of
every task to the run's ``errors.jsonl``, then the rows of items whose bytes another item has (features copied, as in a
local run). The store therefore ends up with the same rows as a single-process run on the
same files (content hash, vector, item id, source path, labels, split), in more shards; and a killed run resumes like a
local one, since every committed task is skipped the next time.

The workspace must be a folder every worker can reach (a shared filesystem past one machine), as in clip-retrieval's
distributed inference, where each worker writes its own output partitions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from crossmodal.errors import ConfigError
from extractors import Extractor, create_extractor
from extractors.store import FeatureStore
from pipelines.extract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    ExtractSummary,
    _commit,
    _progress,
    _write_error,
    commit_duplicates,
    disk_full_names,
    extract_items,
    finish_run,
    plan_extract,
)
from pipelines.sources import Item, SourceError


class ExtractWorker:
    """The body of one Ray actor: an extractor built once, and the feature table it writes its own shards to.

    Construction does nothing that can fail; :meth:`start` builds the extractor, so that its errors reach the driver as
    themselves (Ray reports a failed constructor only as a dead actor).
    """

    def start(self, name: str, config: dict[str, Any], device: str, store_root: str, key: str) -> str:
        """Build extractor ``name`` with the driver's exact ``config`` on ``device`` and open its table.

        Args:
            name: the extractor's registered name.
            config: every field of the driver's extractor config (including what ``prepare`` fitted, e.g. doc2vec's
                ``model_path``), so every actor computes the very same features.
            device: ``"cuda"`` for a GPU actor, else ``"cpu"``.
            store_root: ``<workspace>/store``.
            key: the driver's extractor key; an actor whose extractor comes out with another key (other weights or
                library on that node) refuses to write rather than fill the table with features that do not belong.

        Returns:
            The node's name.
        """
        self.extractor = create_extractor(name, device=device, **config)
        node = os.uname().nodename
        if self.extractor.key != key:
            raise ConfigError(f"a Ray worker on {node} built {name} with key {self.extractor.key}, the driver's is "
                              f"{key}", hint="install the same weights and library versions on every node")
        self.table = FeatureStore(store_root).open(self.extractor.describe())
        return node

    def run(self, items: Sequence[Item], batch_size: int,
            workers: int | None) -> tuple[int, list[tuple[SourceError, str]]]:
        """Extract ``items`` and commit the good rows as one shard; return (rows written, [(error, content hash)])."""
        good, errors = [], []
        # threads: a Ray worker holds gRPC threads that a forked child must not inherit half-way
        for item, result in extract_items(self.extractor, items, batch_size=batch_size, workers=workers,
                                          decode="threads"):
            if isinstance(result, SourceError):
                errors.append((result, item.content_hash or ""))
            else:
                good.append((item, result))
        return (_commit(self.table, good) if good else 0), errors


def run_extract_ray(workspace: str | os.PathLike, modality: str, paths: Sequence[str | os.PathLike], *,
                    address: str = "auto", extractor: str | None = None, labels_from: str = "folders",
                    batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, device: str = "auto",
                    overrides: Iterable[str] | dict[str, Any] | None = None, progress: bool = True,
                    shard_size: int = DEFAULT_SHARD_SIZE, actors: int | None = None) -> ExtractSummary:
    """Extract the files under ``paths`` into ``<workspace>/store`` with a pool of Ray actors.

    Args:
        workspace, modality, paths, extractor, labels_from, batch_size, device, overrides, progress: as in
            :func:`pipelines.extract.run_extract`. ``device="auto"`` gives GPU actors (one GPU each) when the cluster
            has GPUs; ``"cpu"`` keeps every actor on CPU.
        address: ``"auto"`` joins the Ray runtime this process already started, else the cluster in ``RAY_ADDRESS`` or
            the latest one started on this machine (``ray start``), else starts a local one for the run; any other
            value is a cluster address (``HOST:PORT`` or ``ray://HOST:10001``).
        workers: decoding threads inside each actor (None: by extractor, see pipelines.extract.decode_workers;
            actors decode in threads and keep one model).
        shard_size: items per task, hence rows per shard at most (tasks are made smaller so that every actor gets
            about four).
        actors: how many actors; default one per GPU (GPU actors) or per CPU of the cluster.

    Returns:
        :class:`pipelines.extract.ExtractSummary`, with the run's ``errors.jsonl`` in ``<workspace>/runs/<id>/``.

    Raises:
        MissingDependencyError: ray is not installed.
        ConfigError: bad sizes, or a worker whose extractor key differs from the driver's.
    """
    from extractors.base import require

    ray = require("ray", extractor="--ray", extra="ray")
    if batch_size < 1 or shard_size < 1 or (workers or 0) < 0 or (actors is not None and actors < 1):
        raise ConfigError(f"batch size {batch_size}, shard size {shard_size}, workers {workers} and actors {actors} "
                          "must be positive")
    start = time.perf_counter()
    plan = plan_extract(workspace, modality, paths, extractor=extractor, labels_from=labels_from, workers=workers,
                        device="cpu", overrides=overrides, verbose=progress)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-ray"
    run_dir = Path(workspace) / "runs" / run_id
    run_dir.mkdir(parents=True)
    errors_file = run_dir / "errors.jsonl"
    extracted = failed = unsupported = 0
    seconds = 0.0
    started_ray = _connect(ray, address)
    pool: list[Any] = []
    duplicates = lost = 0
    try:
        with (disk_full_names(workspace, plan), open(errors_file, "w") as errors_out,
              _progress(len(plan.todo), plan.extractor.name, progress) as bar):
            for err in plan.errors:
                _write_error(errors_out, err, None)
            unsupported = sum(err.error == "unsupported" for err in plan.errors)
            failed += len(plan.errors) - unsupported
            if plan.todo:
                t_extract = time.perf_counter()
                pool = _start_actors(ray, plan.extractor, workspace, device=device, actors=actors)
                tasks = _tasks(plan.todo, shard_size=shard_size, actors=len(pool))
                for written, errors in _run_tasks(pool, tasks, batch_size=batch_size, workers=workers):
                    extracted += written
                    for err, content_hash in errors:
                        _write_error(errors_out, err, content_hash)
                    failed += len(errors)
                    bar.update(written + len(errors))
                seconds = time.perf_counter() - t_extract
            duplicates, lost = commit_duplicates(plan, errors_out)
    finally:
        for actor in pool:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
    return finish_run(plan, run_dir, run_id=run_id, extracted=extracted, failed=failed + lost, unsupported=unsupported,
                      started=start, extract_seconds=seconds, duplicates=duplicates,
                      record={"paths": [str(p) for p in paths], "labels_from": labels_from, "batch_size": batch_size,
                              "ray": {"address": address, "shard_size": shard_size}})


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


def _start_actors(ray: Any, extractor: Extractor, workspace: str | os.PathLike, *, device: str,
                  actors: int | None) -> list[Any]:
    """Start the actors (one per GPU of the cluster when ``device`` allows CUDA and there are GPUs, else one per CPU)
    and build their extractors; a worker's error is raised here, as itself."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda, but the Ray cluster has no GPU", hint="use --device auto or cpu")
    count = actors or max(1, gpus or int(resources.get("CPU", 1)))
    remote = ray.remote(**({"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}))(ExtractWorker)
    pool = [remote.remote() for _ in range(count)]
    config = {f.name: getattr(extractor.config, f.name) for f in dataclasses.fields(extractor.config)}
    store_root = str((Path(workspace) / "store").resolve())
    on = "cuda" if gpus else "cpu"
    starts = [a.start.remote(extractor.name, config, on, store_root, extractor.key) for a in pool]
    _unwrapped(lambda: ray.get(starts))
    return pool


def _tasks(todo: Sequence[Item], *, shard_size: int, actors: int) -> list[list[Item]]:
    """Cut ``todo`` into tasks of at most ``shard_size`` items, small enough that each actor gets about four."""
    size = max(1, min(shard_size, math.ceil(len(todo) / (4 * actors))))
    return [list(todo[i:i + size]) for i in range(0, len(todo), size)]


def _run_tasks(pool: list[Any], tasks: list[list[Item]], *, batch_size: int, workers: int | None):
    """Yield each task's ``(rows written, errors)`` as it completes, keeping every actor busy with one task."""
    from ray.util.actor_pool import ActorPool

    results = ActorPool(pool).map_unordered(lambda actor, task: actor.run.remote(task, batch_size, workers), tasks)
    for _ in tasks:
        yield _unwrapped(lambda: next(results))


def _unwrapped(call: Callable[[], Any]) -> Any:
    """``call()``, re-raising a Ray worker's own error (MissingWeightsError, ConfigError ...) as itself rather than
    wrapped in Ray's traceback text."""
    from ray.exceptions import RayTaskError

    try:
        return call()
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, Exception) else exc) from None
