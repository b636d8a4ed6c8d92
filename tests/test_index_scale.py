"""The retrieval index at scale, in small: recall of the indexes ``auto`` picks, batched filling without a second copy
of the gallery, and tuned search parameters that survive a save. The full measurement is benchmarks/search.py."""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from crossmodal.index import create_index, load_index, resolve_spec

pytest.importorskip("faiss")

# benchmarks/ is scripts, not a package: load its data generator and exact search by path (with its own helpers).
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
_spec = importlib.util.spec_from_file_location("search_benchmark", Path(__file__).parents[1] / "benchmarks/search.py")
search_benchmark = sys.modules["search_benchmark"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_benchmark)
ClusteredVectors, exact_topk, recall_at_k = (search_benchmark.ClusteredVectors, search_benchmark.exact_topk,
                                             search_benchmark.recall_at_k)


def _positions(index, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return search_benchmark._positions(index, queries, k)


def _build(spec: str, data, n: int, *, chunk: int):
    index = create_index(spec, data.dim, size=n)
    if search_benchmark.needs_training(index.spec):
        index.train(data.sample(min(n, 20_000), stream=-3))
    for start, X in data.chunks(n, chunk=chunk):
        index.add(X, np.arange(start, start + len(X)))
    return index


@pytest.mark.parametrize("spec", ["auto", "faiss:HNSW32", "faiss:IVF64,Flat"])
def test_index_finds_95_percent_of_the_exact_top_10_at_10_thousand_items(spec):
    data = ClusteredVectors(32, seed=1)
    queries = data.sample(200, stream=-1)
    index = _build(spec, data, 10_000, chunk=4_000)
    truth = exact_topk(data, queries, 10_000, k=10, chunk=4_000)
    assert len(index) == 10_000
    assert recall_at_k(_positions(index, queries), truth) >= 0.95


def test_auto_picks_exact_search_below_200_thousand_items_and_faiss_above():
    assert resolve_spec("auto", dim=128, size=10_000) == "exact"
    assert resolve_spec("auto", dim=128, size=500_000).startswith("faiss:")
    assert resolve_spec("auto", dim=128, size=1_000_000).startswith("faiss:IVF")


def test_exact_topk_merged_chunk_by_chunk_equals_a_full_sort():
    data = ClusteredVectors(16, seed=2)
    queries = data.sample(20, stream=-1)
    gallery = np.concatenate([X for _, X in data.chunks(3_000, chunk=700)])
    full = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(exact_topk(data, queries, 3_000, k=10, chunk=700), full)


def test_faiss_index_is_filled_in_batches_without_a_second_copy_of_the_gallery():
    """The gallery (51 MB) streams from a generator; Python-side allocations (numpy's included, which tracemalloc
    tracks: chunks, their normalised copies, the 100,000 id strings) stay below half of it, so nothing but the FAISS
    index itself ever holds all the vectors."""
    n, dim, chunk = 100_000, 128, 5_000
    data = ClusteredVectors(dim, seed=3)
    sample = data.sample(10_000, stream=-3)
    index = create_index("faiss:IVF64,Flat", dim)
    index.train(sample)
    del sample
    tracemalloc.start()
    try:
        for start, X in data.chunks(n, chunk=chunk):
            index.add(X, np.arange(start, start + len(X)))
            del X
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gallery_bytes = n * dim * 4
    assert len(index) == n
    assert peak < gallery_bytes / 2, f"{peak / 2**20:.1f} MiB at peak to add a {gallery_bytes / 2**20:.1f} MiB gallery"


def test_faiss_index_adds_from_a_memory_map_in_batches(tmp_path):
    data = ClusteredVectors(32, seed=4)
    gallery = np.lib.format.open_memmap(tmp_path / "gallery.npy", mode="w+", dtype=np.float32, shape=(6_000, 32))
    for start, X in data.chunks(6_000, chunk=2_500):
        gallery[start:start + len(X)] = X
    gallery.flush()
    mapped = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    index = create_index("faiss:IVF16,Flat", 32, search_params="nprobe=16")
    index.train(mapped[:2_000])
    index.add(mapped, np.arange(6_000))
    queries = data.sample(50, stream=-1)
    assert recall_at_k(_positions(index, queries), exact_topk(data, queries, 6_000, k=10, chunk=2_500)) == 1.0


def test_tuned_search_parameters_are_saved_with_the_index(tmp_path):
    data = ClusteredVectors(32, seed=5)
    index = _build("faiss:IVF32,Flat", data, 4_000, chunk=4_000)
    queries = data.sample(30, stream=-1)
    index.set_search_params("nprobe=3")
    before = index.search(queries, 10)
    loaded = load_index(index.save(tmp_path / "ivf"))
    after = loaded.search(queries, 10)
    assert loaded.search_params == "nprobe=3"
    np.testing.assert_array_equal(after[1], before[1])
    loaded.set_search_params("nprobe=32")  # every list: exact on this index
    assert recall_at_k(_positions(loaded, queries), exact_topk(data, queries, 4_000, k=10, chunk=4_000)) == 1.0


@pytest.mark.parametrize("spec", ["exact", "ivf-ondisk:IVF64,Flat"])
def test_a_streaming_build_from_a_memory_map_never_holds_the_gallery(tmp_path, spec):
    """100,000 x 32 vectors (12.8 MB) stream from a memory map into the index folder; Python-side allocations (numpy's
    included) peak below a quarter of the gallery, and the built index answers like an exact search over the map."""
    from crossmodal.index import build_from_batches

    n, dim = 100_000, 32
    data = ClusteredVectors(dim, seed=6)
    gallery = np.lib.format.open_memmap(tmp_path / "gallery.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for start, X in data.chunks(n, chunk=25_000):
        gallery[start:start + len(X)] = X
    gallery.flush()
    mapped = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    sample = np.array(mapped[::50])
    batches = ((mapped[s:s + 4_096], np.arange(s, min(s + 4_096, n))) for s in range(0, n, 4_096))
    build_from_batches(spec, dim, [(sample, np.arange(len(sample)))], tmp_path / "warm-up")  # imports out of the way
    tracemalloc.start()
    try:
        built = build_from_batches(spec, dim, batches, tmp_path / "index", train_sample=sample,
                                   search_params="nprobe=64" if "ivf" in spec else "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(built.index) == n
    assert peak < n * dim * 4 / 4, f"{peak / 2**20:.1f} MiB at peak to stream a {n * dim * 4 / 2**20:.1f} MiB gallery"
    queries = data.sample(50, stream=-1)
    truth = exact_topk(data, queries, n, k=10, chunk=25_000)
    assert recall_at_k(_positions(load_index(tmp_path / "index"), queries), truth) == 1.0
