"""Memory and time of the feature store's steps against the table's size: synthetic float32 features.

For each ``--rows`` size, a table of ``--dim``-d float32 rows is appended in shards of ``--shard-rows`` rows, then each
step runs in a fresh process (so that its peak resident memory is its own, and it pays the once-per-process shard
checks as a new reader does):

* append: write every shard (features, metadata, checksums, fsync);
* reopen: open the table and check every shard (sha256 of both files, finite values, duplicate items): the cost a
  process pays once before its first read;
* iterate: stream every row through ``FeatureTable.iter_batches`` (summing them, so every value is read);
* sample: 100 random batches of 1,024 rows through ``FeatureTable.rows_view``;
* read (the old path, up to ``--read-max`` rows): ``FeatureTable.read``, which concatenates every shard;
* compact: ``FeatureTable.compact()`` with its default target (256 MB of features per shard);
* iterate and sample after compact: the same over the merged shards.

Times are wall seconds of the step inside its process (the checks of iterate and sample are timed apart); peak RSS is
the process's ``ru_maxrss`` at its end (its largest resident set, memory-mapped pages included) and ``base`` the same
right after the imports. The data are deleted after each size.

Usage:

    nice -n 10 python benchmarks/store_scale.py --rows 100000 1000000 10000000 --out benchmarks/results/store_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from extractors.store import FeatureStore, FeatureTable, StoreRow  # noqa: E402

STEPS = ("append", "reopen", "iterate", "sample", "read", "compact", "iterate", "sample")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def step(name: str, path: Path, rows: int, dim: int, shard_rows: int) -> dict:
    """Run one step in this process; the numbers it measured."""
    base = peak_mb()
    result: dict = {"step": name}
    start = time.perf_counter()
    if name == "append":
        description = {"name": "bench", "modality": "image", "key": "bench@0", "dim": dim, "dtype": "float32",
                       "config": {}}
        table = FeatureStore(path).open(description)
        for lo in range(0, rows, shard_rows):
            n = min(shard_rows, rows - lo)
            X = np.random.default_rng(lo).standard_normal((n, dim), dtype=np.float32)
            table.write_shard(X, [StoreRow(f"{i:064x}", f"c{i % 10}/{i}", f"/raw/c{i % 10}/{i}.png", (f"c{i % 10}",))
                                  for i in range(lo, lo + n)])
    else:
        table = FeatureTable(path / "image" / "bench@0")
    if name == "reopen":
        with table.rows_view() as view:
            result["rows"] = len(view)
    elif name == "iterate":
        with table.rows_view():
            pass  # the checks, timed apart
        result["checks_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        total, seen = np.zeros(dim, dtype=np.float64), 0
        for X, _ in table.iter_batches(columns=["content_hash"]):
            total += X.sum(axis=0, dtype=np.float64)
            seen += len(X)
        result["rows"] = seen
    elif name == "sample":
        view = table.rows_view()
        result["checks_s"] = round(time.perf_counter() - start, 2)
        rng = np.random.default_rng(0)
        times = []
        start = time.perf_counter()
        for _ in range(100):
            t = time.perf_counter()
            batch = view[rng.integers(0, len(view), 1024)]
            times.append(time.perf_counter() - t)
        assert batch.shape == (1024, dim)
        result["batch_ms_median"] = round(1000 * float(np.median(times)), 2)
        view.close()
    elif name == "read":
        X, meta = table.read()
        result["rows"] = len(X)
    elif name == "compact":
        merges = table.compact()
        result["merged"] = f"{sum(m.shards for m in merges)} shards into {len(merges)}"
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["shards"] = len(table.shard_paths())
    result["base_rss_mb"] = round(base)
    result["peak_rss_mb"] = round(peak_mb())
    return result


def run_size(rows: int, dim: int, shard_rows: int, read_max: int, root: Path) -> list[dict]:
    path = Path(tempfile.mkdtemp(prefix=f"store-scale-{rows}-", dir=root))
    results = []
    try:
        for name in STEPS:
            if name == "read" and rows > read_max:
                continue
            child = subprocess.run([sys.executable, __file__, "--step", name, "--table", str(path), "--rows", str(rows),
                                    "--dim", str(dim), "--shard-rows", str(shard_rows)],
                                   capture_output=True, text=True, check=False)
            if child.returncode:
                sys.exit(f"step {name} at {rows} rows failed:\n{child.stderr}")
            result = json.loads(child.stdout.splitlines()[-1])
            if name in ("iterate", "sample") and any(r["step"] == "compact" for r in results):
                result["step"] = f"{name} after compact"
            result["disk_gb"] = round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9, 2)
            print(json.dumps({"rows": rows, **result}), flush=True)
            results.append(result)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return results


def markdown(sizes: dict[int, list[dict]], args: argparse.Namespace, command: str, started: str, load: str) -> str:
    lines = [
        "# Feature store at scale: time and peak memory per step against the table's size",
        "",
        f"Command: `{command}` (started {started}, load average {load} on a shared {os.cpu_count()}-core machine, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB of memory).",
        "",
        f"Synthetic float32 features, {args.dim} dims, appended in shards of {args.shard_rows:,} rows "
        f"({args.shard_rows * args.dim * 4 / 2**20:.0f} MiB each); each step in a fresh process. Peak RSS is the "
        "step's process `ru_maxrss` (memory-mapped pages it touched included); base is the same right after the "
        "imports. `checks` is the once-per-process verification of every shard (sha256 of both files, finite values, "
        "duplicate items), timed apart from iterate and sample.",
        "",
        "| rows | table on disk | step | shards after | time (s) | checks (s) | peak RSS (MB) | base (MB) | note |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for rows, results in sizes.items():
        for r in results:
            note = r.get("merged") or (f"{r['batch_ms_median']} ms per batch of 1,024 (median of 100)"
                                       if "batch_ms_median" in r else "")
            lines.append(f"| {rows:,} | {r['disk_gb']} GB | {r['step']} | {r['shards']} | {r['seconds']} | "
                         f"{r.get('checks_s', '')} | {r['peak_rss_mb']} | {r['base_rss_mb']} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shard-rows", type=int, default=16_384)
    parser.add_argument("--read-max", type=int, default=1_000_000, help="the largest table read() is measured on")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the tables are written")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--step", choices=sorted(set(STEPS)), help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.table, args.rows[0], args.dim, args.shard_rows)))
        return
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"{os.getloadavg()[0]:.1f}"
    sizes = {rows: run_size(rows, args.dim, args.shard_rows, args.read_max, args.dir) for rows in args.rows}
    if args.out:
        command = "nice -n 10 python benchmarks/store_scale.py " + " ".join(sys.argv[1:])
        args.out.write_text(markdown(sizes, args, command, started, load))


if __name__ == "__main__":
    main()
