"""Search at scale: build time, memory, throughput, latency and recall@10 of the retrieval index against exact search.

For each gallery size and width, the gallery is generated in chunks and streamed twice through nothing but the index:
the index is trained on a sample (the first chunk(s); the stream is i.i.d., so that is a uniform sample) and filled
chunk by chunk, and the exact top-k of the queries is merged chunk by chunk (numpy matmul + argpartition), so no copy of
the whole gallery ever exists outside the index. The search knob of approximate indexes (IVF ``nprobe``, HNSW
``efSearch``) is tuned on calibration queries to the smallest value whose recall@10 reaches ``--target-recall``, and
then measured on different queries.

Data: clustered synthetic unit vectors, meant to look like a trained model's embeddings rather than uniform noise:
a latent ``z`` of ``--intrinsic`` (32) dimensions is drawn from a mixture of ``--clusters`` (100) Gaussians whose
spread equals the spread of their centres (so clusters overlap), mapped to D dimensions by a fixed random linear map,
plus isotropic noise (0.1), and L2-normalised; similarity is the inner product (cosine). On this data an IVF1024 index
with nprobe=1 finds 35% of the true top-10 at 10^5, about what it finds on real descriptors such as SIFT1M.

Usage (writes the Markdown table to ``--out``; this one took 35 minutes on 2 shared cores):

    OMP_NUM_THREADS=2 python benchmarks/search.py --sizes 10000 100000 1000000 --dims 128 \\
        --wide-sizes 10000 100000 --index auto --index 'faiss:IVF{nlist}_HNSW32,SQ8' \\
        --index 'faiss:IVF{nlist}_HNSW32,Flat' --out benchmarks/results/search.md
    python benchmarks/search.py --sizes 10000 --dims 64 --index auto --index faiss:HNSW32   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from _memory import peak_rss_mb, rss_mb


@dataclasses.dataclass(frozen=True)
class ClusteredVectors:
    """A reproducible stream of clustered unit vectors; chunk ``i`` depends only on ``(seed, i)``.

    Attributes:
        dim: width D of the vectors.
        seed: seed of the mixture (centres, map) and of every chunk.
        intrinsic: dimension of the latent space the clusters live in.
        clusters: number of Gaussian clusters in the latent space.
        spread: standard deviation of a cluster around its centre (the centres have standard deviation 1).
        noise: standard deviation of the isotropic noise added in D dimensions.
    """

    dim: int
    seed: int = 0
    intrinsic: int = 32
    clusters: int = 100
    spread: float = 1.0
    noise: float = 0.1

    def _mixture(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0])
        centres = rng.standard_normal((self.clusters, self.intrinsic)).astype(np.float32)
        mapping = (rng.standard_normal((self.intrinsic, self.dim)) / np.sqrt(self.intrinsic)).astype(np.float32)
        return centres, mapping

    def sample(self, n: int, *, stream: int) -> np.ndarray:
        """float32 (n, dim) unit vectors from stream ``stream`` (gallery chunk i is stream i + 1; queries use < 0)."""
        centres, mapping = self._mixture()
        rng = np.random.default_rng([self.seed, 1, stream + 2**31])
        which = rng.integers(0, self.clusters, n)
        z = centres[which] + self.spread * rng.standard_normal((n, self.intrinsic), dtype=np.float32)
        x = z @ mapping + self.noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, n: int, *, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, float32 (m, dim))`` chunks of the first ``n`` gallery vectors."""
        for i, start in enumerate(range(0, n, chunk)):
            yield start, self.sample(min(chunk, n - start), stream=i)


def exact_topk(data: ClusteredVectors, queries: np.ndarray, n: int, *, k: int, chunk: int) -> np.ndarray:
    """int64 (nq, k): positions of the exact top-k gallery vectors by inner product, merged chunk by chunk."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    rows = np.arange(nq)[:, None]
    for start, X in data.chunks(n, chunk=chunk):
        s = queries @ X.T
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, s[rows, top]], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = cand_s[rows, keep], cand_i[rows, keep]
    order = np.argsort(-best_s, axis=1)
    return best_i[rows, order]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k, for int (nq, k) position arrays."""
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


@dataclasses.dataclass
class Row:
    n: int
    dim: int
    spec: str
    backend: str
    knob: str
    build_s: float
    index_mb: float
    rss_mb: float
    peak_mb: float
    qps: float
    p50_ms: float
    p99_ms: float
    batch_p50_ms: float
    batch_p99_ms: float
    recall: float


def _positions(index, queries: np.ndarray, k: int) -> np.ndarray:
    """int64 (nq, k) gallery positions of the top-k (the benchmark's item ids are positions); -1 for an empty slot."""
    _, ids = index.search(queries, k)
    return np.where(ids == "", "-1", ids).astype(np.int64)


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: about 4 sqrt(n), as a power of two (FAISS's guideline; 4096 at 10^6)."""
    return 2 ** round(np.log2(4 * np.sqrt(n)))


def search_knob(spec: str) -> str | None:
    """The FAISS parameter that trades recall for speed in ``spec``: IVF's nprobe, HNSW's efSearch, or None."""
    return "nprobe" if "IVF" in spec else "efSearch" if "HNSW" in spec else None


def needs_training(spec: str) -> bool:
    """Whether a FAISS factory string has a trained part (coarse quantizer, codebooks, transforms)."""
    return spec != "exact" and any(t in spec for t in ("IVF", "PQ", "SQ", "PCA", "OPQ", "ITQ", "LSH", "RR"))


def _tune(index, calib: np.ndarray, truth: np.ndarray, *, k: int, target: float) -> str:
    """Set the smallest search knob whose recall@k on ``calib`` reaches ``target``; return it as ``name=value``."""
    knob = search_knob(index.spec)
    if knob is None:
        return "-"
    for value in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        index.set_search_params(f"{knob}={value}")
        if recall_at_k(_positions(index, calib, k), truth) >= target:
            break
    return index.search_params


def _latencies(index, queries: np.ndarray, *, k: int, batch: int) -> np.ndarray:
    """Wall-clock milliseconds of each ``search`` call over ``queries`` in batches of ``batch``."""
    out = []
    for start in range(0, len(queries), batch):
        q = queries[start:start + batch]
        t0 = time.perf_counter()
        index.search(q, k)
        out.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out)


def measure(spec: str, data: ClusteredVectors, n: int, *, queries: np.ndarray, truth: np.ndarray, calib: np.ndarray,
            calib_truth: np.ndarray, k: int, chunk: int, train_size: int, target: float, batch: int,
            single: int) -> Row:
    """Build ``spec`` over the first ``n`` vectors of ``data`` in chunks, tune it, and measure it."""
    from crossmodal.index import create_index

    base_rss = rss_mb()
    peak_rss_mb(reset=True)
    t0 = time.perf_counter()
    index = create_index(spec.format(nlist=nlist_for(n)), data.dim, size=n)
    if needs_training(index.spec):
        sample = np.concatenate([X for _, X in data.chunks(min(n, train_size), chunk=chunk)])
        index.train(sample)
        del sample
    for start, X in data.chunks(n, chunk=chunk):
        index.add(X, np.arange(start, start + len(X)))
    build_s = time.perf_counter() - t0
    peak = peak_rss_mb() - base_rss
    rss = rss_mb() - base_rss
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        index_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
    knob = _tune(index, calib, calib_truth, k=k, target=target)
    recall = recall_at_k(_positions(index, queries, k), truth)
    t0 = time.perf_counter()
    index.search(queries, k)
    qps = len(queries) / (time.perf_counter() - t0)
    one = _latencies(index, queries[:single], k=k, batch=1)
    many = _latencies(index, queries, k=k, batch=batch)
    return Row(n=n, dim=data.dim, spec=spec, backend=index.spec, knob=knob, build_s=build_s, index_mb=index_mb,
               rss_mb=rss, peak_mb=peak, qps=qps, p50_ms=float(np.percentile(one, 50)),
               p99_ms=float(np.percentile(one, 99)), batch_p50_ms=float(np.percentile(many, 50)),
               batch_p99_ms=float(np.percentile(many, 99)), recall=recall)


def table(rows: Sequence[Row], *, batch: int) -> str:
    head = ("| n | D | spec | index | search knob | build s | index MiB | RSS Δ MiB (peak) | QPS (batched) | "
            f"p50 ms (1 query) | p99 ms (1 query) | p50 ms ({batch} queries) | p99 ms ({batch} queries) | recall@10 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.n:,} | {r.dim} | `{r.spec}` | `{r.backend}` | {r.knob} | {r.build_s:.1f} | {r.index_mb:.0f} "
            f"| {r.rss_mb:.0f} ({r.peak_mb:.0f}) | {r.qps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} "
            f"| {r.batch_p50_ms:.2f} | {r.batch_p99_ms:.2f} | {r.recall:.3f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[Row]:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    plan = [(n, d) for d in args.dims for n in args.sizes] + [(n, args.wide_dim) for n in args.wide_sizes]
    rows = []
    for n, dim in plan:
        data = ClusteredVectors(dim, seed=args.seed)
        queries = data.sample(args.queries, stream=-1)
        calib = data.sample(args.queries, stream=-2)
        t0 = time.perf_counter()
        truth = exact_topk(data, queries, n, k=args.k, chunk=args.chunk)
        calib_truth = exact_topk(data, calib, n, k=args.k, chunk=args.chunk)
        print(f"# n={n:,} D={dim}: exact top-{args.k} of {2 * args.queries} queries in {time.perf_counter() - t0:.1f}s",
              flush=True)
        for spec in args.index:
            row = measure(spec, data, n, queries=queries, truth=truth, calib=calib, calib_truth=calib_truth, k=args.k,
                          chunk=args.chunk, train_size=args.train_size, target=args.target_recall, batch=args.batch,
                          single=args.single)
            rows.append(row)
            print(table([row], batch=args.batch).splitlines()[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[128])
    p.add_argument("--wide-sizes", type=int, nargs="*", default=[], help="sizes measured at --wide-dim as well")
    p.add_argument("--wide-dim", type=int, default=2048, help="DRCL's common-space width")
    p.add_argument("--index", action="append",
                   help="index spec (repeatable; default auto); {nlist} becomes ~4 sqrt(n), e.g. faiss:IVF{nlist},SQ8")
    p.add_argument("--queries", type=int, default=1000, help="measured queries (and as many calibration queries)")
    p.add_argument("--single", type=int, default=500, help="queries timed one at a time")
    p.add_argument("--batch", type=int, default=64, help="queries per batched call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=0.96, help="goal on calibration queries (0.95 + margin)")
    p.add_argument("--chunk", type=int, default=50_000, help="vectors per add() call")
    p.add_argument("--train-size", type=int, default=200_000, help="vectors the index trains on (at most)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.index = args.index or ["auto"]
    rows = run(args)
    text = table(rows, batch=args.batch)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cpu = platform.processor() or platform.machine()
        args.out.write_text(
            "# Search at scale\n\n"
            f"Command: `OMP_NUM_THREADS={args.threads} python benchmarks/search.py {shlex.join(argv)}`  \n"
            f"Machine: {os.cpu_count()} cores ({cpu}), {args.threads} FAISS threads, load average at the end "
            f"{os.getloadavg()[0]:.1f} (other jobs shared the cores); "
            f"data: clustered synthetic unit vectors (see the script's docstring); {args.queries} measured queries, "
            f"knobs tuned on {args.queries} other queries to recall@{args.k} ≥ {args.target_recall}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
