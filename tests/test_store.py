"""The feature store: atomic shards, validation on write, orphan clean-up, dedupe, concurrent writers."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from extractors.errors import StoreError
from extractors.store import FeatureStore, FeatureTable, StoreRow

DIM = 8


def description(dim: int = DIM, key: str = "toy@000000000000") -> dict:
    return {"name": key.split("@")[0], "modality": "image", "key": key, "dim": dim, "dtype": "float32", "config": {}}


def rows(hashes, labels=("a",)) -> list[StoreRow]:
    return [StoreRow(content_hash=h, item_id=f"id-{h}", source_path=f"/raw/{h}.png", labels=tuple(labels))
            for h in hashes]


def features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def table(tmp_path) -> FeatureTable:
    return FeatureStore(tmp_path / "store").open(description())


def test_a_written_shard_reads_back_identically_as_a_memory_map(table):
    X = features(5)
    table.write_shard(X, rows("abcde", labels=("cat", "pet")))
    Y, meta = table.read()
    assert isinstance(Y, np.memmap)
    np.testing.assert_array_equal(Y, X)
    assert meta.column("content_hash").to_pylist() == list("abcde")
    assert meta.column("labels").to_pylist() == [["cat", "pet"]] * 5
    assert meta.column("split").to_pylist() == [None] * 5


def test_read_concatenates_shards_in_commit_order_keeping_the_first_row_of_a_repeated_hash(table):
    X1, X2 = features(3, seed=1), features(3, seed=2)
    table.write_shard(X1, rows(["h1", "h2", "h3"]))
    table.write_shard(X2, rows(["h3", "h4", "h5"]))
    Y, meta = table.read()
    assert meta.column("content_hash").to_pylist() == ["h1", "h2", "h3", "h4", "h5"]
    np.testing.assert_array_equal(Y, np.concatenate([X1, X2[1:]]))


def test_known_hashes_are_the_hashes_of_every_committed_shard(table):
    table.write_shard(features(2), rows(["x", "y"]))
    table.write_shard(features(1), rows(["z"]))
    assert table.known_hashes() == {"x", "y", "z"}
    assert table.has("y") and not table.has("w")


def test_a_write_of_another_width_is_refused_naming_the_table(table):
    with pytest.raises(StoreError, match=r"features are 9-d but extractor.json says 8-d") as err:
        table.write_shard(np.zeros((2, 9), np.float32), rows("ab"))
    assert str(table.path) in str(err.value)
    assert table.shard_paths() == []


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.0] * DIM, [np.nan] + [0.0] * (DIM - 1)], np.float32), "non-finite features in rows \\[1\\]"),
    (np.full((2, DIM), np.inf, np.float32), "non-finite"),
    (np.zeros((2, DIM), np.float64), "must be a float32"),
    (np.zeros((3, DIM), np.float32), "3 feature rows for 2 metadata rows"),
])
def test_a_write_of_invalid_features_is_refused_and_leaves_no_shard(table, bad, message):
    with pytest.raises(StoreError, match=message):
        table.write_shard(bad, rows("ab"))
    assert list(table.shards.glob("part-*")) == []


def test_an_orphan_npy_left_by_a_killed_writer_is_ignored_and_removed_on_the_next_open(table):
    X = features(2)
    table.write_shard(X, rows("ab"))
    orphan = table.shards / "part-000002-deadbeef.npy"
    np.save(orphan, features(4))  # the npy was renamed, the process died before the parquet
    partial = table.shards / "part-000003-0badf00d.parquet.incomplete"
    partial.write_bytes(b"PAR1 half a file")
    Y, meta = table.read()
    np.testing.assert_array_equal(Y, X)
    reopened = FeatureTable(table.path)
    assert not orphan.exists() and not partial.exists()
    assert [p.name for p in reopened.shard_paths()] == [p.name for p in table.shard_paths()]


def test_a_crash_between_the_two_renames_leaves_the_store_as_it_was(table, monkeypatch):
    X = features(2)
    table.write_shard(X, rows("ab"))
    real_replace = os.replace

    def crash_on_parquet(src, dst):
        if str(dst).endswith(".parquet"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_parquet)
    with pytest.raises(KeyboardInterrupt):
        table.write_shard(features(3, seed=5), rows("cde"))
    monkeypatch.setattr(os, "replace", real_replace)
    Y, meta = FeatureTable(table.path).read()
    np.testing.assert_array_equal(Y, X)
    assert sorted(p.name for p in table.shards.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in table.shards.glob("part-000001-*"))


def test_a_committed_parquet_whose_npy_is_missing_is_reported_by_file_name(table):
    parquet = table.write_shard(features(2), rows("ab"))
    parquet.with_suffix(".npy").unlink()
    with pytest.raises(StoreError, match=f"{parquet.with_suffix('.npy').name}: missing"):
        table.read()


def test_a_shard_of_the_wrong_width_on_disk_is_reported_by_file_name(table):
    parquet = table.write_shard(features(2), rows("ab"))
    np.save(parquet.with_suffix(".npy"), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(StoreError, match=r"expected float32 \(2, 8\)"):
        table.read()


def test_opening_a_table_with_a_different_width_than_its_extractor_json_is_refused(tmp_path):
    store = FeatureStore(tmp_path / "store")
    store.open(description(dim=8))
    with pytest.raises(StoreError, match="dim is 8"):
        store.open(description(dim=16))


def test_the_store_finds_the_only_table_of_a_modality_and_lists_several_when_ambiguous(tmp_path):
    store = FeatureStore(tmp_path / "store")
    store.open(description(key="toy@aaaaaaaaaaaa")).write_shard(features(1), rows("a"))
    assert store.table("image").key == "toy@aaaaaaaaaaaa"
    store.open(description(key="toy@bbbbbbbbbbbb"))
    with pytest.raises(StoreError, match="toy@aaaaaaaaaaaa, toy@bbbbbbbbbbbb"):
        store.table("image")
    assert store.tables() == [("image", "toy@aaaaaaaaaaaa"), ("image", "toy@bbbbbbbbbbbb")]


def test_concurrent_writers_and_openers_leave_every_row_exactly_once(table):
    writers, shards_each = 4, 6
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(w: int) -> None:
        try:
            for s in range(shards_each):
                table.write_shard(np.full((3, DIM), w * 100 + s, np.float32),
                                  rows([f"w{w}-s{s}-r{r}" for r in range(3)]))
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    def reopen() -> None:  # each open runs the orphan clean-up, which must never touch a live writer's files
        while not stop.is_set():
            FeatureTable(table.path)

    opener = threading.Thread(target=reopen)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    opener.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    opener.join()
    assert errors == []
    X, meta = table.read()
    hashes = meta.column("content_hash").to_pylist()
    assert len(hashes) == len(set(hashes)) == writers * shards_each * 3
    seqs = [p.name.split("-")[1] for p in table.shard_paths()]
    assert len(seqs) == len(set(seqs)) == writers * shards_each
    for h, row in zip(hashes, X):
        w, s = int(h.split("-")[0][1:]), int(h.split("-")[1][1:])
        assert (row == w * 100 + s).all()


def test_the_same_bytes_under_two_item_ids_or_labels_are_two_rows_and_the_same_item_twice_is_one(table):
    same = [StoreRow("h", "cat/a", "/raw/cat/a.png", ("cat",)), StoreRow("h", "cat/b", "/raw/cat/b.png", ("cat",)),
            StoreRow("h", "dog/a", "/raw/dog/a.png", ("dog",))]
    table.write_shard(np.ones((3, DIM), np.float32), same)
    table.write_shard(np.ones((1, DIM), np.float32), same[:1])  # written again by a concurrent run
    X, meta = table.read()
    assert meta.column("item_id").to_pylist() == ["cat/a", "cat/b", "dog/a"] and len(X) == 3
    assert table.known_hashes() == {"h"} and len(table) == 3


def test_a_path_that_is_not_utf8_is_written_as_bytes_and_given_back_exactly(table):
    from extractors.store import stored_path

    raw = b"/raw/caf\xe9.png"
    table.write_shard(np.ones((1, DIM), np.float32), [StoreRow("h", "caf\udce9", os.fsdecode(raw), ("\udcff",))])
    row = table.read()[1].to_pylist()[0]
    assert (row["source_path"], row["item_id"], row["labels"]) == ("/raw/caf\\xe9.png", "caf\\xe9", ["\\xff"])
    assert os.fsencode(stored_path(row["source_path"], row["source_path_bytes"])) == raw


def test_a_split_other_than_train_val_or_test_is_refused_at_write(table):
    with pytest.raises(StoreError, match=r"a split is train, val, test or None, got \['TEST'\]"):
        table.write_shard(np.ones((1, DIM), np.float32), [StoreRow("h", "a", "/a.png", (), "TEST")])


def test_an_orphan_checksum_record_left_by_a_killed_writer_is_removed_on_the_next_open(table):
    table.write_shard(features(1), rows("a"))
    orphan = table.shards / "part-000002-deadbeef.sha256"
    orphan.write_text("{}")
    FeatureTable(table.path)
    assert not orphan.exists() and len(table.shard_paths()) == 1


def test_shard_numbers_come_from_the_counter_without_listing_the_folder_and_from_the_listing_without_it(table,
                                                                                                       monkeypatch):
    from pathlib import Path

    table.write_shard(features(1), rows("a"))
    listed = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or real_iterdir(self))
    second = table.write_shard(features(1, seed=1), rows("b"))
    assert table.shards not in listed
    monkeypatch.undo()
    (table.shards / ".seq").unlink()  # a table written before the counter existed
    third = table.write_shard(features(1, seed=2), rows("c"))
    assert [p.name.split("-")[1] for p in (second, third)] == ["000002", "000003"]
    assert table.read()[1].column("content_hash").to_pylist() == ["a", "b", "c"]
