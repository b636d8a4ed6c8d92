"""Streaming reads of the feature store: batches from one shard's memory map, an array view over the shards, the
columnar metadata view, and checks that read a shard in blocks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import extractors.store as store_module
from extractors.errors import StoreError
from extractors.store import FeatureStore, FeatureTable, StoreRow

DIM = 4


def description() -> dict:
    return {"name": "toy", "modality": "image", "key": "toy@000000000000", "dim": DIM, "dtype": "float32", "config": {}}


def rows(hashes, labels=("a",)) -> list[StoreRow]:
    return [StoreRow(h, f"id-{h}", f"/raw/{h}.png", tuple(labels)) for h in hashes]


@pytest.fixture(autouse=True)
def fresh_cache():
    store_module._VERIFIED.clear()


@pytest.fixture
def table(tmp_path) -> FeatureTable:
    return FeatureStore(tmp_path / "store").open(description())


def three_shards(table: FeatureTable) -> np.ndarray:
    """Shards of 5, 3 and 4 rows whose values are their global row numbers."""
    X = np.arange(12 * DIM, dtype=np.float32).reshape(12, DIM)
    for lo, hi in ((0, 5), (5, 8), (8, 12)):
        table.write_shard(X[lo:hi], rows([f"h{i}" for i in range(lo, hi)]))
    return X


def test_batches_are_read_only_memory_mapped_slices_of_one_shard_each_covering_the_table_in_order(table):
    X = three_shards(table)
    batches = list(table.iter_batches(2))
    assert [len(b) for b, _ in batches] == [2, 2, 1, 2, 1, 2, 2]  # a batch never spans two shards
    for b, meta in batches:
        assert isinstance(b, np.memmap)
        assert not b.flags.writeable
        assert meta.num_rows == len(b)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), X)
    hashes = [h for _, meta in batches for h in meta.column("content_hash").to_pylist()]
    assert hashes == [f"h{i}" for i in range(12)]


def test_batches_give_the_chosen_metadata_columns_only(table):
    three_shards(table)
    _, meta = next(table.iter_batches(columns=["item_id"]))
    assert meta.column_names == ["item_id"]


def test_batches_and_the_view_keep_the_first_row_of_a_repeated_item_like_read(table):
    table.write_shard(np.full((3, DIM), 1, np.float32), rows(["a", "b", "c"]))
    table.write_shard(np.full((2, DIM), 2, np.float32), rows(["b", "d"]))  # b again: written by a concurrent run
    table.write_shard(np.full((1, DIM), 3, np.float32), rows(["b"], labels=("other",)))  # same bytes, another item
    X, meta = table.read()
    streamed = list(table.iter_batches())
    np.testing.assert_array_equal(np.concatenate([b for b, _ in streamed]), X)
    assert [h for _, m in streamed for h in m.column("content_hash").to_pylist()] == ["a", "b", "c", "d", "b"]
    assert [isinstance(b, np.memmap) for b, _ in streamed] == [True, False, True]  # a copy where a row was left out
    with table.rows_view() as view:
        np.testing.assert_array_equal(np.asarray(view), X)
        assert view.metadata().equals(meta)
    assert sum(len(b) for b, _ in table.iter_batches(unique=False)) == 6
    with table.rows_view(unique=False) as view:
        assert len(view) == 6


def test_the_view_gathers_rows_by_int_slice_and_integer_array_across_shards(table):
    X = three_shards(table)
    with table.rows_view() as view:
        assert view.shape == (12, DIM) and len(view) == 12 and view.dtype == np.float32
        np.testing.assert_array_equal(view[6], X[6])
        np.testing.assert_array_equal(view[-1], X[-1])
        np.testing.assert_array_equal(view[3:10:2], X[3:10:2])
        idx = np.array([11, 0, 5, 5, 7, -2])
        np.testing.assert_array_equal(view[idx], X[idx])
        np.testing.assert_array_equal(view[np.arange(12) % 2 == 0], X[::2])
        assert view[np.array([], dtype=np.int64)].shape == (0, DIM)
        with pytest.raises(IndexError, match="out of range"):
            view[np.array([12])]
        with pytest.raises(IndexError, match="out of range"):
            view[-13]


def test_the_view_keeps_at_most_max_open_shard_files_open(table):
    X = three_shards(table)
    with table.rows_view(max_open=1) as view:
        for i in (0, 6, 9, 1):
            np.testing.assert_array_equal(view[i], X[i])
            assert len(view._fds) == 1


def test_a_stream_keeps_its_batches_readable_after_their_pages_left_resident_memory(table):
    X = np.random.default_rng(0).standard_normal((3000, DIM)).astype(np.float32)  # 16 pages of rows
    table.write_shard(X, rows([f"h{i}" for i in range(3000)]))
    kept = [batch for batch, _ in table.iter_batches(500)]  # each batch's pages dropped when the next was asked for
    np.testing.assert_array_equal(np.concatenate(kept), X)


def test_a_compaction_waits_for_an_open_view_and_a_closed_view_says_so(table):
    X = three_shards(table)
    view = table.rows_view()
    merged = threading.Thread(target=table.compact, kwargs={"target_rows": 100})
    merged.start()
    time.sleep(0.5)
    assert merged.is_alive() and len(table.shard_paths()) == 3  # the view's shards stay as they were
    np.testing.assert_array_equal(view[np.arange(12)], X)
    assert view.metadata(["content_hash"]).column(0).to_pylist() == [f"h{i}" for i in range(12)]
    view.close()
    merged.join(timeout=60)
    assert len(table.shard_paths()) == 1
    with pytest.raises(StoreError, match="this view of the table was closed"):
        view[0]
    with table.rows_view() as again:
        np.testing.assert_array_equal(again[np.arange(12)], X)


def test_the_dataset_view_reads_the_metadata_of_every_shard_in_commit_order(table):
    for s in range(12):
        table.write_shard(np.zeros((2, DIM), np.float32), rows([f"s{s}r0", f"s{s}r1"]))
    assert table.dataset().count_rows() == 24
    assert table.metadata(["content_hash"]).column(0).to_pylist() == [f"s{s}r{r}" for s in range(12) for r in (0, 1)]
    assert table.metadata().schema.equals(store_module.SCHEMA)


def test_the_dataset_view_refuses_a_parquet_that_differs_from_its_checksum(table):
    three_shards(table)
    parquet = table.shard_paths()[1]
    pq.write_table(pq.read_table(parquet).slice(0, 2), parquet)
    with pytest.raises(StoreError, match=f"{parquet.name}: sha256 differs"):
        table.dataset()


def test_a_shard_is_checked_in_blocks_and_a_non_finite_row_in_a_later_block_is_named(table, monkeypatch):
    monkeypatch.setattr(store_module, "SCAN_BLOCK", 2 * DIM * 4)  # two rows per block
    X = np.zeros((7, DIM), np.float32)
    parquet = table.write_shard(X, rows("abcdefg"))
    parquet.with_suffix(".sha256").unlink()  # a shard written before checksums: the finite check alone
    bad = np.load(parquet.with_suffix(".npy"), mmap_mode="r+")
    bad[5, 1] = np.inf
    bad.flush()
    del bad
    with pytest.raises(StoreError, match=r"non-finite values in 1 rows \(first: \[5\]\)"):
        next(table.iter_batches())


def test_a_changed_npy_is_refused_by_the_stream_and_the_view_naming_the_shard(table):
    parquet = table.write_shard(np.ones((3, DIM), np.float32), rows("abc"))
    np.save(parquet.with_suffix(".npy"), np.zeros((3, DIM), np.float32))
    with pytest.raises(StoreError, match=f"{parquet.with_suffix('.npy').name}: sha256 differs") as err:
        list(table.iter_batches())
    assert "crossmodal store repair" in err.value.hint
    with pytest.raises(StoreError, match="sha256 differs"):
        table.rows_view()


def test_an_empty_table_streams_nothing_and_views_zero_rows(table):
    assert list(table.iter_batches()) == []
    with table.rows_view() as view:
        assert view.shape == (0, DIM) and np.asarray(view).shape == (0, DIM)


def test_a_repeated_item_among_sha256_content_hashes_is_found_without_python_strings(table):
    hashes = [f"{i:064x}" for i in range(6)]
    table.write_shard(np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM), rows(hashes[:4]))
    table.write_shard(np.full((3, DIM), -1, np.float32), rows([hashes[4], hashes[1], hashes[5]]))  # hashes[1] again
    X, meta = table.read()
    assert len(X) == 6 and meta.column("content_hash").to_pylist() == [hashes[i] for i in (0, 1, 2, 3, 4, 5)]
    with table.rows_view() as view:
        np.testing.assert_array_equal(view[np.arange(6)], X)
    fingerprints = store_module._fingerprints(meta.column("content_hash"))
    assert len(set(fingerprints.tolist())) == 6


def test_a_compaction_waits_until_a_stream_that_started_before_it_ends(table):
    X = three_shards(table)
    stream = table.iter_batches(2)
    first, _ = next(stream)
    merged = threading.Thread(target=table.compact, kwargs={"target_rows": 100})
    merged.start()
    time.sleep(0.5)
    assert merged.is_alive()
    rest = [batch for batch, _ in stream]
    merged.join(timeout=60)
    np.testing.assert_array_equal(np.concatenate([first, *rest]), X)
    assert not merged.is_alive() and len(table.shard_paths()) == 1
