"""How the Ray pipeline scales: items/s here at 1 and 2 workers beside the local runner, the measured cost of each step
per item, and a projection of a 100-node cluster extracting 10^8 files computed from those costs.

In one process, on ``--items`` generated PNG images (``hog-color`` at 32x32: about 1 ms of model an image, so that
the plumbing shows):

* **runs**: :func:`pipelines.extract.run_extract` (the local runner, its default decoding workers), then
  :func:`pipelines.distributed.run_extract_ray` on a local Ray runtime of 1 CPU (1 actor) and of 2 CPUs (2 actors),
  each into a fresh workspace (nothing skipped, every file hashed). End-to-end items/s (found items / the run's
  seconds, Ray's start of the actors included, the runtime's own start not) and extraction items/s (the summary's:
  extracted / seconds of the extraction stage), with the Ray stages from ``run.json``.
* **per-item costs**, each measured alone: listing (:func:`pipelines.sources.scan` of the folder), hashing
  (:func:`pipelines.sources.hash_items` in one thread; sha256 throughput on a 64 MiB buffer), the driver's memory per
  listed item (tracemalloc of the scan's items), extraction (:func:`pipelines.extract.extract_items` in the calling
  thread), the store commit (``FeatureTable.write_shard`` of ``--shard-rows`` x ``--dim`` rows, one writer and two
  writer processes on one table: the commit rate under the table's lock), the planning read of a table of many shards
  (``known_items``), and the index (``train_ivf`` once, ``build_ivf_shard`` per row, ``merge_ivf_shards`` per row,
  on ``--index-rows`` synthetic 128-d vectors).

The projection in the results file is arithmetic on these numbers and stated assumptions (node size, file size); it is
marked as projected, the rest as measured.

Usage:

    nice -n 10 python benchmarks/ray_scale.py --items 2000 --out benchmarks/results/ray_scale.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

CHEAP = {"size": 32, "pixels_per_cell": 8}


def write_images(root: Path, n: int) -> None:
    """``n`` distinct 64x48 PNGs in 4 class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def _summary(s: Any, stages: dict[str, float]) -> dict[str, Any]:
    extract = stages.get("extract_seconds", s.extracted / s.items_per_second if s.items_per_second else 0.0)
    return {"found": s.found, "extracted": s.extracted, "seconds": s.seconds, "extract_seconds": round(extract, 3),
            **stages}


def run_local(small: Path, images: Path, work: Path) -> dict[str, Any]:
    """The local runner on the small then the full folder, each into a fresh workspace."""
    from pipelines.extract import ExtractOptions, run_extract

    options = ExtractOptions(extractor="hog-color", overrides=CHEAP, progress=False)
    runs = [_summary(run_extract(work / f"local-{folder.name}", "image", [folder], options), {})
            for folder in (small, images)]
    return {"runner": "local (run_extract)", "workers": "default decoders", "small": runs[0], "full": runs[1]}


def run_ray(small: Path, images: Path, work: Path, cpus: int) -> dict[str, Any]:
    """run_extract_ray on a fresh local runtime of ``cpus`` CPUs (one actor per CPU): small, then full folder."""
    import ray

    from pipelines.distributed import HASH_BLOCK, _data_context, _dataset, hash_on_ray, run_extract_ray
    from pipelines.extract import ExtractOptions
    from pipelines.sources import scan

    options = ExtractOptions(extractor="hog-color", overrides=CHEAP, progress=False)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 2**20)
    runs = []
    try:
        for folder in (small, images):
            s = run_extract_ray(work / f"ray{cpus}-{folder.name}", "image", [folder], options)
            record = json.loads((Path(s.errors_file).parent / "run.json").read_text())["ray"]
            runs.append(_summary(s, {k: record[k] for k in ("hash_seconds", "plan_seconds", "extract_seconds",
                                                             "first_batch_seconds", "first_batch_items")}))
        # the hashing stage alone in the warm runtime, best of 3 for each size: its cost per file, tasks included
        with _data_context(ray):
            hashing = {}
            for folder in (small, images):
                items = scan([folder], extensions=[".png"]).items
                hashing[len(items)] = min(_timed_call(lambda: hash_on_ray(ray, items)) for _ in range(3))
            rows = [{"i": i, "path": os.fsencode(it.path)} for i, it in enumerate(items)]
            from_items = min(_timed_call(lambda: ray.data.from_items(rows, override_num_blocks=8))
                             for _ in range(3)) / len(rows)
            columns = {"i": range(len(items)), "path": [os.fsencode(it.path) for it in items]}
            from_arrow = min(_timed_call(lambda: _dataset(ray, columns, HASH_BLOCK)) for _ in range(3)) / len(items)
    finally:
        ray.shutdown()
    (n0, t0), (n1, t1) = sorted(hashing.items())
    return {"runner": f"Ray Data, {cpus} CPU", "workers": f"{record['actors']} actors", "small": runs[0],
            "full": runs[1], "hash_stage_s_per_file": (t1 - t0) / (n1 - n0), "hash_stage_fixed_s": t0,
            "from_items_s_per_item": from_items, "from_arrow_s_per_item": from_arrow}


def _timed_call(call: Any) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def per_item_costs(images: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Seconds (or bytes) per item of each step, measured alone."""
    from extractors import create_extractor
    from pipelines.extract import extract_items
    from pipelines.sources import hash_items, scan

    # best of 3 each: the machine is shared, and the least disturbed run is the closest to the cost itself
    costs: dict[str, float] = {}
    found = scan([images], extensions=[".png"])
    costs["list_s"] = min(_timed_call(lambda: scan([images], extensions=[".png"])) for _ in range(3)) / len(found.items)
    tracemalloc.start()
    again = scan([images], extensions=[".png"])
    costs["list_bytes"] = tracemalloc.get_traced_memory()[0] / len(again.items)
    tracemalloc.stop()
    del again
    hashed, _ = hash_items(found.items, workers=1)
    costs["hash_s"] = min(_timed_call(lambda: hash_items(found.items, workers=1)) for _ in range(3)) / len(hashed)
    costs["file_bytes"] = sum(os.path.getsize(it.path) for it in hashed) / len(hashed)
    buffer = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8).tobytes()
    costs["sha256_MBps"] = 64 * 2**20 / 1e6 / min(_timed_call(lambda: hashlib.sha256(buffer).hexdigest())
                                                  for _ in range(3))
    extractor = create_extractor("hog-color", device="cpu", **CHEAP)
    sample = hashed[:1000]
    list(extract_items(extractor, sample[:32], workers=0))  # warm-up
    costs["extract_s"] = min(_timed_call(lambda: list(extract_items(extractor, sample, workers=0)))
                             for _ in range(3)) / len(sample)
    costs.update(commit_costs(work, args))
    costs.update(index_costs(work, args))
    return costs


def _write_shards(root: str, dim: int, rows: int, shards: int, worker: int, barrier: Any, times: Any) -> None:
    from extractors.store import FeatureStore, StoreRow

    table = FeatureStore(root).open({"name": "synthetic", "modality": "image", "key": "synthetic@0", "dim": dim})
    X = np.random.default_rng(worker).standard_normal((rows, dim)).astype(np.float32)
    batches = [[StoreRow(content_hash=f"{worker}-{s}-{i}", item_id=f"{worker}/{s}/{i}",
                         source_path=f"/{worker}/{s}/{i}") for i in range(rows)] for s in range(shards)]
    barrier.wait()  # the writers start together, imports done
    start = time.perf_counter()
    for batch in batches:
        table.write_shard(X, batch)
    times.put((start, time.perf_counter()))


def commit_costs(work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Shard commits of ``--shard-rows`` rows: seconds per shard with one writer and shards/s with two writer
    processes on one table; then the planning read (known_items) of the table's shards, per shard."""
    from extractors.store import FeatureStore

    costs: dict[str, float] = {}
    ctx = multiprocessing.get_context("spawn")
    for writers in (1, 2):
        root = work / f"store{writers}"
        barrier, times = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=_write_shards, args=(str(root), args.dim, args.shard_rows, args.shards, w,
                                                         barrier, times)) for w in range(writers)]
        for p in procs:
            p.start()
        spans = [times.get() for _ in procs]
        for p in procs:
            p.join()
        seconds = max(end for _, end in spans) - min(start for start, _ in spans)
        costs[f"commit_shards_per_s_{writers}w"] = writers * args.shards / seconds
    table = FeatureStore(work / "store2").table("image")
    t = time.perf_counter()
    table.known_items()
    costs["plan_read_s_per_shard"] = (time.perf_counter() - t) / len(table.shard_paths())
    # A commit allocates its sequence number by listing the shards folder under the table's exclusive lock: time that
    # step (the store's own _allocate) in a folder holding the files of --lock-shards shards.
    shards = table.shards
    for k in range(args.lock_shards):
        for suffix in (".npy", ".parquet", ".sha256"):
            (shards / f"part-{k + 1000:06d}-{k:08x}{suffix}").touch()
    entries = sum(1 for _ in shards.iterdir())
    stems = []
    seconds = min(_timed_call(lambda: stems.append(table._allocate())) for _ in range(5))
    costs["allocate_s_per_entry"] = seconds / entries
    costs["allocate_entries"] = entries
    return costs


def index_costs(work: Path, args: argparse.Namespace) -> dict[str, float]:
    """train_ivf once, build_ivf_shard per row (4 parts), merge_ivf_shards per row, on synthetic 128-d vectors."""
    from crossmodal.index import build_ivf_shard, merge_ivf_shards, train_ivf

    n, dim, parts = args.index_rows, 128, 4
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    X = (centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    ids = np.array([f"item-{i}" for i in range(n)])
    folder = work / "ivf"
    folder.mkdir()
    t = time.perf_counter()
    trained = train_ivf(f"IVF{args.nlist},Flat", dim, X[rng.choice(n, min(n, 40 * args.nlist), replace=False)],
                        folder / "trained.faiss")
    costs = {"ivf_train_s": time.perf_counter() - t}
    bounds = [n * p // parts for p in range(parts + 1)]
    t = time.perf_counter()
    shards = []
    for p in range(parts):
        shards.append(folder / f"part-{p}.faiss")
        build_ivf_shard(trained, [(X[bounds[p]:bounds[p + 1]], ids[bounds[p]:bounds[p + 1]])], shards[-1])
    costs["index_add_s"] = (time.perf_counter() - t) / n
    t = time.perf_counter()
    merge_ivf_shards(shards, folder / "merged")
    costs["index_merge_s"] = (time.perf_counter() - t) / n
    return costs


# The projected cluster (assumptions, not measurements): nodes, cores per node, files, their mean size, rows per shard.
NODES, CORES, FILES, FILE_BYTES, SHARD_ROWS = 100, 16, 10**8, 200_000, 1024


def _steady_extract(run: dict[str, Any], items: int) -> float:
    """Seconds per item of the extraction stage once running: on Ray, after the first batch came back (the actors'
    start and the first batch apart); locally, beyond the small run's stage."""
    full = run["full"]
    if "first_batch_seconds" in full:
        return (full["extract_seconds"] - full["first_batch_seconds"]) / (full["extracted"] - full["first_batch_items"])
    return (full["extract_seconds"] - run["small"]["extract_seconds"]) / (items - run["small"]["found"])


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def report(result: dict[str, Any]) -> str:
    """The results file: measured runs and costs, then the projection computed from them."""
    n, c = result["items"], result["costs"]
    lines = [f"Measured on {result['machine']}; {n:,} PNG images (64x48, {c['file_bytes'] / 1e3:.1f} kB each) through "
             f"hog-color at 32x32; small runs of {result['runs'][0]['small']['found']} images give the fixed costs. "
             f"The whole benchmark took {result['seconds']:.0f} s.", "",
             "## Measured: runs (same items, same process, one after the other)", "",
             "| runner | workers | run of N: s | items/s end to end | extraction stage items/s | a run of "
             f"{result['runs'][0]['small']['found']}: s | steady extraction items/s | Ray: hash stage s "
             "| Ray: actors' start + first batch s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        full, small = run["full"], run["small"]
        on_ray = "hash_seconds" in full
        lines.append(f"| {run['runner']} | {run['workers']} | {full['seconds']:.1f} "
                     f"| {full['found'] / full['seconds']:.0f} | {full['extracted'] / full['extract_seconds']:.0f} "
                     f"| {small['seconds']:.1f} | {1 / _steady_extract(run, n):.0f} "
                     f"| {full['hash_seconds'] if on_ray else '-'} "
                     f"| {full['first_batch_seconds'] if on_ray else '-'} |")
    ray2 = result["runs"][2]
    per_core_extract = 2 * _steady_extract(ray2, n)  # 2 actors busy for that long per item
    per_core_hash_stage = 2 * ray2["hash_stage_s_per_file"]
    lines += ["", "## Measured: per-item costs, each step alone", "",
              "| step | cost | how |", "|---|---:|---|",
              f"| listing (scan of a folder) | {c['list_s'] * 1e6:.1f} us/file | pipelines.sources.scan, driver |",
              f"| listing memory on the driver | {c['list_bytes']:.0f} B/file | tracemalloc of the scan's items |",
              f"| hashing, small files | {c['hash_s'] * 1e6:.1f} us/file | hash_items, 1 thread, "
              f"{c['file_bytes'] / 1e3:.1f} kB files (page cache warm) |",
              f"| sha256 throughput | {c['sha256_MBps']:.0f} MB/s per core | hashlib on 64 MiB in memory |",
              f"| extraction, bare | {c['extract_s'] * 1e3:.2f} ms/item | extract_items in one thread "
              "(decode + hog-color) |",
              f"| extraction on Ray, steady | {per_core_extract * 1e3:.2f} ms/item per actor | 2 actors: stage seconds "
              "after the first batch x 2 / items |",
              *[f"| hashing stage on Ray, {run['runner'][-5:]}, warm | {run['hash_stage_s_per_file'] * 1e6:.0f} "
                f"us/file (+ {run['hash_stage_fixed_s']:.1f} s a run) | hash_on_ray: Dataset of the listing, tasks, "
                "hashes back; best of 3 |" for run in result["runs"][1:]],
              f"| Dataset of the listing on the driver, one dict a row | {ray2['from_items_s_per_item'] * 1e6:.1f} "
              "us/item | ray.data.from_items, best of 3 (the first version) |",
              f"| Dataset of the listing on the driver, Arrow columns | {ray2['from_arrow_s_per_item'] * 1e6:.1f} "
              "us/item | ray.data.from_arrow of column blocks, best of 3 (what runs) |",
              f"| store commit, 1 writer | {1 / c['commit_shards_per_s_1w'] * 1e3:.0f} ms/shard "
              f"({c['commit_shards_per_s_1w']:.1f} shards/s) | write_shard of {result['args']['shard_rows']} x "
              f"{result['args']['dim']} rows, fsync |",
              f"| store commit, 2 writer processes on one table | {c['commit_shards_per_s_2w']:.1f} shards/s | "
              "the same, both writing at once |",
              f"| a commit's sequence number, under the table's exclusive lock | "
              f"{c['allocate_s_per_entry'] * 1e6:.2f} us per file in the shards folder | FeatureTable._allocate "
              f"with {int(c['allocate_entries']):,} files there, best of 5 (it lists the folder) |",
              f"| planning read of a table | {c['plan_read_s_per_shard'] * 1e3:.1f} ms/shard | known_items over "
              f"{2 * int(result['args']['shards'])} shards (first read: checksums) |",
              f"| IVF training (once) | {c['ivf_train_s']:.1f} s | train_ivf IVF{result['args']['nlist']},Flat, "
              f"{40 * int(result['args']['nlist']):,} samples of 128-d |",
              f"| IVF add | {c['index_add_s'] * 1e6:.1f} us/row | build_ivf_shard, 4 parts of "
              f"{int(result['args']['index_rows']) // 4:,} rows, 128-d |",
              f"| IVF merge by list | {c['index_merge_s'] * 1e6:.2f} us/row | merge_ivf_shards of the 4 parts |"]
    cluster = NODES * CORES
    per_byte = 1 / (c["sha256_MBps"] * 1e6)
    hash_per_file = max(c["hash_s"] - c["file_bytes"] * per_byte, 0) + FILE_BYTES * per_byte  # open + read + sha
    shards = FILES / SHARD_ROWS
    stages = [
        ("listing (driver, serial)", c["list_s"] * FILES, f"{c['list_s'] * 1e6:.1f} us/file x 10^8"),
        ("listing memory (driver)", None, f"{c['list_bytes'] * FILES / 1e9:.0f} GB for 10^8 items"),
        ("Datasets built on the driver, twice (listing, todo)", 2 * ray2["from_arrow_s_per_item"] * FILES,
         f"2 x {ray2['from_arrow_s_per_item'] * 1e6:.1f} us/item x 10^8"),
        ("hashing (workers)", hash_per_file * FILES / cluster,
         f"{hash_per_file * 1e3:.2f} ms/file at {FILE_BYTES / 1e3:.0f} kB / {cluster} cores; reads "
         f"{FILE_BYTES * FILES / 1e12:.0f} TB from storage"),
        ("hashing stage plumbing (driver + workers)", per_core_hash_stage * FILES / cluster,
         f"{per_core_hash_stage * 1e6:.0f} us/file per CPU (2 CPUs here) / {cluster} CPUs; a lower bound: the "
         "driver's part (building the Dataset, reading the hashes back) does not spread"),
        ("extraction, hog-color (actors)", per_core_extract * FILES / cluster,
         f"{per_core_extract * 1e3:.2f} ms/item / {cluster} actors"),
        ("store commits, through one disk (bound)", shards / c["commit_shards_per_s_2w"],
         f"{shards:,.0f} shards of {SHARD_ROWS} rows at {c['commit_shards_per_s_2w']:.1f} shards/s, the rate 2 "
         "writers reached on this one disk: if every commit's fsync and lock go through one server"),
        ("sequence numbers under the lock (serial)", c["allocate_s_per_entry"] * 3 * shards ** 2 / 2,
         f"{c['allocate_s_per_entry'] * 1e6:.2f} us x 3 files a shard x the folder's size at each of "
         f"{shards:,.0f} commits (sum: 3 S^2 / 2)"),
        ("store commits, spread over the writers", shards / (c["commit_shards_per_s_1w"] * cluster),
         f"{c['commit_shards_per_s_1w']:.1f} shards/s per writer x {cluster} writers: if the filesystem scales"),
        ("planning read of the table, next run (driver)", c["plan_read_s_per_shard"] * shards,
         f"{c['plan_read_s_per_shard'] * 1e3:.1f} ms/shard x {shards:,.0f} shards"),
        ("IVF add (workers)", c["index_add_s"] * FILES / cluster, f"{c['index_add_s'] * 1e6:.1f} us/row / {cluster}"),
        ("IVF merge (driver, serial)", c["index_merge_s"] * FILES, f"{c['index_merge_s'] * 1e6:.2f} us/row x 10^8"),
    ]
    lines += ["", f"## Projected: {NODES} nodes x {CORES} CPU cores, 10^8 files of {FILE_BYTES / 1e3:.0f} kB "
              "(arithmetic on the measured costs above)", "",
              "| stage | projected time | from |", "|---|---:|---|"]
    lines += [f"| {name} | {_hms(t) if t is not None else '-'} | {source} |" for name, t, source in stages]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--small-items", type=int, default=16, help="the small run: the fixed costs of a run")
    parser.add_argument("--shard-rows", type=int, default=1024, help="rows per shard in the commit measurement")
    parser.add_argument("--shards", type=int, default=40, help="shards per writer in the commit measurement")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--lock-shards", type=int, default=30_000,
                        help="shards (3 files each) in the folder where a commit's allocation under the lock is timed")
    parser.add_argument("--index-rows", type=int, default=200_000)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="the results file (markdown)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray_scale-"))
    try:
        images, small = work / "images", work / "small"
        write_images(images, args.items)
        write_images(small, args.small_items)
        t0 = time.perf_counter()
        runs = [run_local(small, images, work), run_ray(small, images, work, 1), run_ray(small, images, work, 2)]
        costs = per_item_costs(images, work, args)
        result = {"machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), load average at the end "
                             f"{os.getloadavg()[0]:.1f}", "items": args.items, "runs": runs, "costs": costs,
                  "args": {k: str(v) for k, v in vars(args).items()},
                  "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    text = report(result)
    print(text)
    if args.out:
        args.out.write_text(f"# Ray pipeline scaling\n\n`nice -n 10 python benchmarks/ray_scale.py "
                            f"{' '.join(sys.argv[1:])}`\n\n{text}")


if __name__ == "__main__":
    main()
