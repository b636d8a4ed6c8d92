"""Compaction: small shards merged into larger ones atomically; a kill at any step leaves the old shards or the merged
one, never both and never a lost row."""

from __future__ import annotations

import json
import os
import traceback

import numpy as np
import pytest

import extractors.store as store_module
from extractors.errors import StoreError
from extractors.store import FeatureStore, FeatureTable, StoreRow
from pipelines.cli import main

DIM = 4


def description() -> dict:
    return {"name": "toy", "modality": "image", "key": "toy@000000000000", "dim": DIM, "dtype": "float32", "config": {}}


def filled(root, sizes=(3, 2, 4, 1)) -> FeatureTable:
    """A table with shards of ``sizes`` rows; row i holds i, and one repeated item (h0 written again at the end)."""
    table = FeatureStore(root).open(description())
    start = 0
    for n in sizes:
        X = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(DIM, axis=1)
        table.write_shard(X, [StoreRow(f"h{i}", f"id{i}", f"/raw/{i}.png", ("c",)) for i in range(start, start + n)])
        start += n
    table.write_shard(np.zeros((1, DIM), np.float32), [StoreRow("h0", "id0", "/raw/0.png", ("c",))])
    return table


def every_row(table: FeatureTable) -> tuple[np.ndarray, list[dict]]:
    """Every stored row, duplicates included, in commit order."""
    batches = list(table.iter_batches(unique=False))
    return np.concatenate([X for X, _ in batches]), [r for _, meta in batches for r in meta.to_pylist()]


def test_compaction_merges_consecutive_small_shards_keeping_every_row_in_order(tmp_path):
    table = filled(tmp_path / "store")
    before = every_row(table)
    X, meta = table.read()
    merges = table.compact(target_rows=6)
    assert [(m.shards, m.rows) for m in merges] == [(2, 5), (3, 6)]
    assert len(table.shard_paths()) == 2
    after = every_row(table)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1]
    Y, meta_after = table.read()
    np.testing.assert_array_equal(Y, X)
    assert meta_after.equals(meta)
    assert table.verify() == []
    assert sorted(p.suffix for p in table.shards.glob("part-*")) == [".npy"] * 2 + [".parquet"] * 2 + [".sha256"] * 2
    assert table.compact(target_rows=6) == []  # nothing left to merge


def test_the_default_target_is_256_mb_of_features_and_a_target_below_two_rows_is_refused(tmp_path):
    table = filled(tmp_path / "store")
    assert table.default_target_rows() == (256 << 20) // (4 * DIM)
    assert [m.rows for m in table.compact()] == [11]
    with pytest.raises(StoreError, match="at least 2"):
        table.compact(target_rows=1)


def compact_killed_at(path, kill_at: int) -> int:
    """Compact the table at ``path`` in a forked process killed (``os._exit``) just before its ``kill_at``-th
    file-system step (a rename, a removal or a flush to disk); its exit status: 9 killed, 0 finished."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    calls = [0]

    def killing(real):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(9)
            return real(*args, **kwargs)
        return step

    try:
        for name in ("replace", "unlink", "fsync"):
            setattr(os, name, killing(getattr(os, name)))
        FeatureTable(path).compact(target_rows=6)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_a_kill_before_any_file_system_step_of_a_compaction_loses_no_row_and_shows_no_shard_twice(tmp_path):
    expected = every_row(filled(tmp_path / "reference", sizes=(3, 2)))
    for kill_at in range(1, 100):
        table = filled(tmp_path / f"k{kill_at}", sizes=(3, 2))
        status = compact_killed_at(table.path, kill_at)
        assert status in (0, 9)
        store_module._VERIFIED.clear()
        seen = every_row(table)  # before any recovery: what a reader sees right after the kill
        np.testing.assert_array_equal(seen[0], expected[0])
        assert seen[1] == expected[1]
        reopened = FeatureTable(table.path)  # the next open finishes or undoes the killed merge
        assert not list(reopened.shards.glob("compact-*")) and not list(reopened.shards.glob("*.incomplete"))
        stems = {p.stem for p in reopened.shards.glob("part-*")}
        assert stems == {p.stem for p in reopened.shard_paths()}  # no file left of a replaced or undone shard
        assert reopened.verify() == []
        reopened.compact(target_rows=6)  # and compacting again completes the work
        final = every_row(reopened)
        np.testing.assert_array_equal(final[0], expected[0])
        assert final[1] == expected[1] and len(reopened.shard_paths()) == 1
        if status == 0:
            break
    assert kill_at > 15  # a kill before each step of the merge: flushes, the journal, renames, removals


def test_a_reader_that_listed_before_a_killed_commit_point_sees_the_old_shards(tmp_path):
    table = filled(tmp_path / "store")
    journal = table.shards / "compact-part-000001-abcdef12.journal"
    journal.write_text(json.dumps({"new": "part-000001-abcdef12", "old": [p.stem for p in table.shard_paths()[:2]]}))
    assert len(table.shard_paths()) == 5  # the merged parquet was never renamed in: the journal hides nothing
    assert FeatureTable(table.path).recovered == ["undid the uncommitted merge into part-000001-abcdef12.parquet "
                                                  "(its inputs kept)"]
    assert not journal.exists() and len(table.shard_paths()) == 5


def test_store_compact_merges_every_table_of_the_workspace_and_says_what_it_did(tmp_path, capsys):
    filled(tmp_path / "ws" / "store")
    assert main(["store", "compact", "--workspace", str(tmp_path / "ws"), "--target-rows", "6"]) == 0
    out = capsys.readouterr()
    assert "toy@000000000000: merging runs of small shards into shards of at most 6 rows (--target-rows)" in out.err
    row = next(line for line in out.out.splitlines() if "toy@000000000000" in line)
    assert row.split("│")[3:7] == [" 5             ", " 2            ", " 2             ", " 11         "]
    assert main(["store", "compact", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    [only] = result["tables"]
    assert (only["shards_before"], only["shards_after"], only["target_rows"]) == (2, 1, (256 << 20) // (4 * DIM))
    assert only["merges"][0]["rows"] == 11


def test_store_compact_of_a_modality_without_a_table_is_one_line_naming_the_tables(tmp_path, capsys):
    filled(tmp_path / "ws" / "store")
    assert main(["store", "compact", "--workspace", str(tmp_path / "ws"), "--modality", "audio"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path}/ws/store: no feature table for audio to compact", "  fix: tables: image/toy@000000000000"]
