"""Cost of the store's shard checks on read: one table of ``--rows`` x ``--dim`` float32 in one shard.

Rows of the table (median of ``--repeat`` reads, milliseconds):

* first read in a process: the checks run (sha256 of the .npy and the .parquet, the finite check);
* later reads: the per-process cache skips them;
* ``store verify``: every check, no cache;
* sha256 of the .npy alone, for scale.

Usage:

    python benchmarks/store_verify.py --rows 100000 --dim 128 --repeat 15
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import extractors.store as store_module
from crossmodal.common.hashing import file_sha256
from extractors.store import FeatureStore, StoreRow


def median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        description = {"name": "bench", "modality": "image", "key": "bench@0", "dim": args.dim, "config": {}}
        table = FeatureStore(Path(tmp) / "store").open(description)
        X = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(np.float32)
        rows = [StoreRow(f"{i:064x}", f"c/{i}", f"/raw/c/{i}.png", ("c",)) for i in range(args.rows)]
        parquet = table.write_shard(X, rows)

        def first_read() -> None:
            store_module._VERIFIED.clear()
            table.read()

        results = {
            "first read in a process (checks)": median_ms(first_read, args.repeat),
            "later reads (cached)": median_ms(table.read, args.repeat),
            "store verify (no cache)": median_ms(table.verify, args.repeat),
            "sha256 of the .npy alone": median_ms(lambda: file_sha256(parquet.with_suffix(".npy")),
                                                  args.repeat),
        }
        npy_mb, parquet_mb = parquet.with_suffix(".npy").stat().st_size / 1e6, parquet.stat().st_size / 1e6
        sizes = f"npy {npy_mb:.1f} MB, parquet {parquet_mb:.1f} MB"
    print(f"| {args.rows} x {args.dim} ({sizes}) | ms (median of {args.repeat}) |\n|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms} |")


if __name__ == "__main__":
    main()
