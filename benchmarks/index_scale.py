"""The index past memory: exact search against FAISS IVF with on-disk inverted lists, built streaming, 10^5 to 10^7.

For each gallery size the gallery (128-d clustered unit vectors: the Gaussian mixture of benchmarks/search.py, so
recall means something) is written once to a ``.npy`` file chunk by chunk and memory-mapped; every index is then built
in a child process by ``crossmodal.index.build_from_batches`` from 65,536-row slices of that map (exactly what
``crossmodal index`` feeds it from the store), and searched in another child process after ``load_index``, on one
thread (``OMP_NUM_THREADS=1``: a single query gains nothing from two busy cores, and BLAS threads spinning on a shared
machine made exact search 10x slower). Each child reports its peak resident set (``VmHWM``, which counts the pages of
memory-mapped files it touched: the gallery it streams, the index it searches), and the parent samples its anonymous
memory (``RssAnon``: the heap, what mapping does not explain) every 0.1 s.

Measured per index: build time, peak RSS and peak anonymous memory of the build, files on disk, load time (which
includes the sha256 of every file), peak RSS of the query process, p50/p99 latency of single queries (k=10, warm page
cache: the files were just written), and recall@10 against the exact top-10 (ground truth computed by numpy, chunked
over the memory map, for ``--queries`` queries: half calibrate IVF's nprobe, the smallest of 1..256 whose recall
reaches ``--target-recall``, half measure it). IVF: ``ivf-ondisk:IVF<nlist>_HNSW32,Flat`` with ``nlist`` the one
``auto`` picks (~4 sqrt(n), a power of two), trained on a random sample of ``min(40 nlist, 262,144)`` gallery vectors.

Usage (``--workdir`` needs ~4x the gallery's bytes free at the largest size; results are appended as Markdown):

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/index_scale.py --sizes 100000 1000000 \\
        --out benchmarks/results/index_scale.md
    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/index_scale.py --sizes 10000000 \\
        --out benchmarks/results/index_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # the shared generator; crossmodal
from _memory import status_mb  # noqa: E402  (benchmarks/ is scripts: the shared /proc reader and data generator)
from search import ClusteredVectors  # noqa: E402

K = 10
BATCH = 65_536
NPROBES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


# -- data ------------------------------------------------------------------------------------------------------------
def write_gallery(data: ClusteredVectors, n: int, path: Path, *, chunk: int = 262_144) -> None:
    """The first ``n`` gallery vectors into ``path`` (.npy), chunk by chunk: never all in memory."""
    if path.is_file() and np.load(path, mmap_mode="r").shape == (n, data.dim):
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, data.dim))
    for start, X in data.chunks(n, chunk=chunk):
        out[start:start + len(X)] = X
    out.flush()
    del out


def ground_truth(gallery: np.ndarray, queries: np.ndarray, k: int = K, *, chunk: int = 262_144) -> np.ndarray:
    """int64 (nq, k) positions of the exact top-k by inner product: argpartition per chunk, merged; ties broken by
    position (np.lexsort), independent of crossmodal.index's code."""
    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_i = np.empty((nq, 0), np.int64)
    rows = np.arange(nq)[:, None]
    for start in range(0, len(gallery), chunk):
        s = queries @ np.asarray(gallery[start:start + chunk]).T
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, s[rows, top]], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
        best_s, best_i = cand_s[rows, order], cand_i[rows, order]
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


# -- children ----------------------------------------------------------------------------------------------------------
def child_build(spec: str, gallery_path: str, out: str) -> dict:
    from crossmodal.index import build_from_batches

    gallery = np.load(gallery_path, mmap_mode="r")
    n, dim = gallery.shape

    def batches():
        for start in range(0, n, BATCH):
            yield gallery[start:start + BATCH], [str(i) for i in range(start, min(start + BATCH, n))]

    def sample(size: int) -> np.ndarray:
        rows = np.sort(np.random.default_rng(1).choice(n, min(size, n), replace=False))
        return np.concatenate([gallery[rows[i:i + BATCH]] for i in range(0, len(rows), BATCH)])

    built = build_from_batches(spec, dim, batches(), out, size=n, train_sample=sample)
    files = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    return {"seconds": built.seconds, "summary": built.summary, "trained_on": built.index.trained_on,
            "peak_rss_mib": status_mb("VmHWM"),
            "disk_bytes": sum(files.values()), "files": files}


def child_query(out: str, queries_path: str, truth_path: str, target: float, latency_queries: int) -> dict:
    from crossmodal.index import IvfOnDiskIndex, load_index

    started = time.perf_counter()
    index = load_index(out)
    load_s = time.perf_counter() - started
    queries, truth = np.load(queries_path), np.load(truth_path)
    half = len(queries) // 2
    calibrate, measure = (queries[:half], truth[:half]), (queries[half:], truth[half:])

    def positions(Q: np.ndarray) -> np.ndarray:
        found = index.search(Q, K)[1]
        return np.where(found == "", "-1", found).astype(np.int64)  # an unfilled slot (few lists probed)

    result: dict = {"load_s": round(load_s, 2)}
    if isinstance(index, IvfOnDiskIndex):
        sweep = {}
        for nprobe in [p for p in NPROBES if p <= index.nlist]:
            index.set_search_params(f"nprobe={nprobe}")
            sweep[nprobe] = recall(positions(calibrate[0]), calibrate[1])
            if sweep[nprobe] >= target:
                break
        chosen = next((p for p, r in sweep.items() if r >= target), max(sweep))
        index.set_search_params(f"nprobe={chosen}")
        result.update(nprobe=chosen, sweep=sweep)
    latencies = []
    for q in measure[0][:latency_queries]:
        t = time.perf_counter()
        index.search(q[None], K)
        latencies.append(time.perf_counter() - t)
    result.update(recall=recall(positions(measure[0]), measure[1]), latency_queries=len(latencies),
                  peak_rss_mib=status_mb("VmHWM"),
                  p50_ms=1e3 * float(np.percentile(latencies, 50)), p99_ms=1e3 * float(np.percentile(latencies, 99)))
    return result


def run_child(args: list[str], *, threads: int | None = None) -> tuple[dict, float]:
    """(the child's JSON answer, peak RssAnon MiB sampled every 0.1 s)."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
                              if threads else {}))
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True, env=env)
    peak_anon = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon[0] = max(peak_anon[0], int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output = proc.stdout.read()
    proc.wait()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed ({proc.returncode})")
    return json.loads(output.strip().splitlines()[-1]), peak_anon[0]


# -- the table ---------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200, help="queries: half calibrate nprobe, half measure")
    parser.add_argument("--target-recall", type=float, default=0.9)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/index_scale"))
    parser.add_argument("--keep", action="store_true", help="keep the galleries and indexes in --workdir")
    parser.add_argument("--out", type=Path, default=None, help="append the Markdown table here")
    args = parser.parse_args()

    from crossmodal.index import _auto_nlist, choose_spec

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ClusteredVectors(args.dim, seed=0)
    lines = [f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: sizes {args.sizes}, {args.dim}-d",
             "", f"`{shlex.join(['python', *sys.argv])}` on {platform.node()} ({os.cpu_count()} cores, shared),"
             f" {args.queries} queries, target recall@10 {args.target_recall}; load average at the start"
             f" {os.getloadavg()[0]:.1f}", "",
             "| n | index | build s | build peak RSS MiB | build peak anon MiB | disk MB | load s | query peak RSS MiB"
             " | nprobe | p50 ms | p99 ms | recall@10 |", "|" + "---|" * 12]
    notes = []
    for n in args.sizes:
        gallery_path = args.workdir / f"gallery-{n}x{args.dim}.npy"
        t = time.perf_counter()
        write_gallery(data, n, gallery_path)
        queries = data.sample(args.queries, stream=-1)
        truth = ground_truth(np.load(gallery_path, mmap_mode="r"), queries)
        np.save(args.workdir / "queries.npy", queries)
        np.save(args.workdir / "truth.npy", truth)
        notes.append(f"n={n:,}: gallery written and exact ground truth computed in {time.perf_counter() - t:.0f} s")
        nlist = _auto_nlist(n)
        notes.append(f"n={n:,}: `--backend auto` on this machine now would pick"
                     f" {' because '.join(choose_spec('auto', dim=args.dim, size=n))}")
        for spec in ["exact", f"ivf-ondisk:IVF{nlist}_HNSW32,Flat"]:
            out = args.workdir / f"index-{n}-{spec.split(':')[0]}"
            shutil.rmtree(out, ignore_errors=True)
            built, build_anon = run_child(["build", spec, str(gallery_path), str(out)])
            latency_queries = max(10, min(args.queries // 2, int(2e8 // n))) if spec == "exact" else args.queries // 2
            asked = ["query", str(out), str(args.workdir / "queries.npy"), str(args.workdir / "truth.npy"),
                     str(args.target_recall), str(latency_queries)]
            answered, _ = run_child(asked, threads=1)
            lines.append(f"| {n:,} | {spec} | {built['seconds']:.1f} | {built['peak_rss_mib']:,.0f} |"
                         f" {build_anon:,.0f} | {built['disk_bytes'] / 1e6:,.0f} | {answered['load_s']:.1f} |"
                         f" {answered['peak_rss_mib']:,.0f} |"
                         f" {answered.get('nprobe', '-')} | {answered['p50_ms']:.2f} | {answered['p99_ms']:.2f} |"
                         f" {answered['recall']:.3f} |")
            notes.append(f"n={n:,} {spec}: {built['summary']}; trained on {built['trained_on']:,}; latency over"
                         f" {answered['latency_queries']} single queries"
                         + (f"; calibration recall by nprobe {answered['sweep']}" if "sweep" in answered else ""))
            print(lines[-1], flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            gallery_path.unlink(missing_ok=True)
    notes.append(f"load average at the end {os.getloadavg()[0]:.1f}")
    text = "\n".join([*lines, "", *[f"- {note}" for note in notes], ""])
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, rest = sys.argv[2], sys.argv[3:]
        if mode == "build":
            answer = child_build(*rest)
        else:
            answer = child_query(rest[0], rest[1], rest[2], float(rest[3]), int(rest[4]))
        print(json.dumps(answer))
    else:
        main()
