"""Checked shards: sha256 of both files recorded at commit, verified once per process on read, ``store verify`` and
``store repair``; a full disk; paths that are not valid UTF-8."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from _extract_media import write_shapes

import extractors.store as store_module
from crossmodal.common.hashing import file_sha256
from extractors.errors import StoreError, StoreFullError
from extractors.store import FeatureStore, FeatureTable, StoreRow, stored_path
from pipelines.cli import main
from pipelines.extract import ExtractOptions, run_extract
from pipelines.workspace import Workspace

DIM = 4


def table_in(workspace) -> FeatureTable:
    description = {"name": "toy", "modality": "image", "key": "toy@000000000000", "dim": DIM, "dtype": "float32",
                   "config": {}}
    return FeatureStore(workspace / "store").open(description)


def toy_rows(n: int, start: int = 0) -> list[StoreRow]:
    return [StoreRow(f"h{i}", f"c/{i}", f"/raw/c/{i}.png", ("c",)) for i in range(start, start + n)]


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def extract(workspace, root):
    return run_extract(workspace, "image", [root], ExtractOptions(
        extractor="hog-color", workers=0, device="cpu", progress=False, overrides=["size=16", "pixels_per_cell=8"]))


@pytest.fixture(autouse=True)
def fresh_cache():
    store_module._VERIFIED.clear()


def test_each_shard_records_the_sha256_of_both_its_files_at_commit(tmp_path):
    parquet = table_in(tmp_path).write_shard(np.ones((3, DIM), np.float32), toy_rows(3))
    sums = json.loads(parquet.with_suffix(".sha256").read_text())
    assert sums == {"npy": file_sha256(parquet.with_suffix(".npy")), "parquet": file_sha256(parquet), "rows": 3}


def test_a_flipped_byte_in_a_parquet_is_refused_on_read_naming_the_shard_and_the_repair(tmp_path):
    table = table_in(tmp_path)
    parquet = table.write_shard(np.ones((3, DIM), np.float32), toy_rows(3))
    flip_byte(parquet, parquet.stat().st_size // 3)
    with pytest.raises(StoreError, match=f"{parquet.name}: sha256 differs") as err:
        table.read()
    assert f"crossmodal store repair --workspace {tmp_path}" in err.value.hint
    with pytest.raises(StoreError, match="sha256 differs"):
        table.known_hashes()  # the metadata-only reads (skipping, splits) are checked too


def test_nan_written_into_an_npy_is_caught_before_training_naming_the_shard(tmp_path):
    write_shapes(tmp_path / "media", per_class=2)
    extract(tmp_path / "ws", tmp_path / "media")
    npy = next((tmp_path / "ws" / "store" / "image").glob("*/shards/*.npy"))
    X = np.load(npy, mmap_mode="r+")
    X[1, 0] = np.nan
    X.flush()
    del X
    with pytest.raises(StoreError, match=f"{npy.name}: sha256 differs"):
        Workspace(tmp_path / "ws").table("image")


def test_nan_in_a_shard_written_before_checksums_is_caught_by_the_finite_check(tmp_path):
    table = table_in(tmp_path)
    parquet = table.write_shard(np.ones((3, DIM), np.float32), toy_rows(3))
    parquet.with_suffix(".sha256").unlink()  # as a store written before checksums were recorded
    np.save(parquet.with_suffix(".npy"), np.array([[1, 1, 1, 1], [1, np.nan, 1, 1], [1, 1, 1, 1]], np.float32))
    with pytest.raises(StoreError, match=r"non-finite values in 1 rows \(first: \[1\]\)"):
        table.read()
    assert table.unchecked() == [parquet]


def test_a_shard_is_hashed_once_per_process_and_again_when_its_file_changes(tmp_path, monkeypatch):
    table = table_in(tmp_path)
    parquet = table.write_shard(np.ones((3, DIM), np.float32), toy_rows(3))
    hashed = []
    scan = store_module._scan_npy
    monkeypatch.setattr(store_module, "file_sha256", lambda path: hashed.append(path.suffix) or file_sha256(path))
    monkeypatch.setattr(store_module, "_scan_npy", lambda path, *args: hashed.append(path.suffix) or scan(path, *args))
    for _ in range(3):
        table.read()
        list(table.iter_batches(2))
        table.rows_view().close()
    assert sorted(hashed) == [".npy", ".parquet"]
    np.save(parquet.with_suffix(".npy"), np.zeros((3, DIM), np.float32))
    with pytest.raises(StoreError, match="sha256 differs"):
        table.read()


def test_store_verify_lists_the_bad_shard_and_exits_non_zero_with_one_line_and_the_fix(tmp_path, capsys):
    table = table_in(tmp_path)
    table.write_shard(np.ones((2, DIM), np.float32), toy_rows(2))
    bad = table.write_shard(np.ones((2, DIM), np.float32), toy_rows(2, start=2))
    assert main(["store", "verify", "--workspace", str(tmp_path)]) == 0
    flip_byte(bad.with_suffix(".npy"), -1)
    capsys.readouterr()
    assert main(["store", "verify", "--workspace", str(tmp_path), "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["shards"] == 2 and [b["shard"] for b in report["bad"]] == [bad.stem]
    assert err.splitlines() == [f"error: 1 of 2 shards of {tmp_path}/store are bad",
                                f"  fix: crossmodal store repair --workspace {tmp_path}"]


def test_store_repair_drops_a_shard_with_bad_metadata_and_the_next_extract_redoes_its_items(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=2)
    first = extract(tmp_path / "ws", tmp_path / "media")
    parquet = next((tmp_path / "ws" / "store" / "image").glob("*/shards/*.parquet"))
    flip_byte(parquet, 200)
    assert main(["store", "repair", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dropped"], report["bad"][0]["reextracted"]) == (6, 0)
    assert main(["store", "verify", "--workspace", str(tmp_path / "ws")]) == 0
    again = extract(tmp_path / "ws", tmp_path / "media")
    assert (first.extracted, again.extracted, again.skipped) == (6, 6, 0)


def test_store_repair_re_extracts_the_rows_of_a_bad_npy_whose_files_are_unchanged(tmp_path, capsys):
    write_shapes(tmp_path / "media", per_class=2)
    extract(tmp_path / "ws", tmp_path / "media")
    X_before, meta_before = FeatureStore(tmp_path / "ws" / "store").read("image")
    X_before = np.array(X_before)
    npy = next((tmp_path / "ws" / "store" / "image").glob("*/shards/*.npy"))
    flip_byte(npy, -2)
    (tmp_path / "media" / "circle" / "0.png").write_bytes(b"changed since")
    assert main(["store", "repair", "--workspace", str(tmp_path / "ws"), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["bad"][0]["rows"], report["bad"][0]["reextracted"], report["dropped"]) == (6, 5, 1)
    assert report["bad"][0]["note"] == ("1 not re-extracted: the file is gone, unreadable or changed "
                                        f"(e.g. {tmp_path / 'media' / 'circle' / '0.png'})")
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    ids = meta.column("item_id").to_pylist()
    assert sorted(ids) == sorted(set(meta_before.column("item_id").to_pylist()) - {"circle/0"})
    before = meta_before.column("item_id").to_pylist()
    for i, item in enumerate(ids):
        np.testing.assert_array_equal(X[i], X_before[before.index(item)])


def test_a_full_disk_is_one_error_naming_the_workspace_and_the_store_is_left_as_it_was(tmp_path, monkeypatch):
    table = table_in(tmp_path)
    table.write_shard(np.ones((2, DIM), np.float32), toy_rows(2))
    files_before = sorted(p.name for p in table.shards.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(StoreFullError, match=f"no space left on the disk of workspace {tmp_path}: a shard of"):
        table.write_shard(np.ones((5, DIM), np.float32), toy_rows(5, start=2))
    assert sorted(p.name for p in table.shards.iterdir()) == files_before
    assert len(table.read()[0]) == 2


def test_extract_on_a_full_disk_exits_with_one_line_naming_the_workspace_and_the_space_the_run_needs(
        tmp_path, monkeypatch, capsys):
    write_shapes(tmp_path / "media", per_class=2)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    code = main(["extract", "-m", "image", str(tmp_path / "media"), "-w", str(tmp_path / "ws"), "-e", "hog-color",
                 "--set", "size=16", "--set", "pixels_per_cell=8", "--workers", "0", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "  fix"))]
    assert code == 2 and len(err) == 2
    assert err[0].startswith(f"error: no space left on the disk of workspace {tmp_path / 'ws'}")
    assert "this run needs up to" in err[0] and "for 6 rows" in err[0]
    assert err[1].startswith("  fix: free space on that disk")
    assert list((tmp_path / "ws" / "store" / "image").glob("*/shards/part-*")) == []


def test_a_file_name_that_is_not_utf8_gets_its_row_with_its_exact_path_and_costs_no_other_file(tmp_path):
    write_shapes(tmp_path / "media", per_class=1)
    folder = os.fsencode(tmp_path / "media" / "circle")
    odd = os.path.join(folder, b"caf\xe9-\xff.png")  # Latin-1 bytes: not valid UTF-8
    with open(odd, "wb") as f:
        f.write((tmp_path / "media" / "square" / "0.png").read_bytes() + b"\0")  # other bytes, same picture
    summary = extract(tmp_path / "ws", tmp_path / "media")
    assert (summary.extracted, summary.failed) == (4, 0)
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    rows = meta.to_pylist()
    odd_row = next(r for r in rows if r["source_path_bytes"] is not None)
    assert os.fsencode(stored_path(odd_row["source_path"], odd_row["source_path_bytes"])) == odd
    assert odd_row["item_id"] == "circle/caf\\xe9-\\xff" and odd_row["labels"] == ["circle"]
    assert [r["source_path_bytes"] for r in rows].count(None) == 3
    assert extract(tmp_path / "ws", tmp_path / "media").skipped == 4


def test_a_full_disk_while_the_table_is_created_is_one_line_too(tmp_path, monkeypatch, capsys):
    write_shapes(tmp_path / "media", per_class=1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "extractor.json.incomplete")

    monkeypatch.setattr(store_module, "atomic_write", disk_full)
    code = main(["extract", "-m", "image", str(tmp_path / "media"), "-w", str(tmp_path / "ws"), "-e", "hog-color",
                 "--workers", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "  fix"))]
    assert code == 2 and err[0] == (f"error: no space left on the disk of workspace {tmp_path / 'ws'} "
                                    "(extractor.json.incomplete)")
    assert len(err) == 2


def test_store_repair_records_the_checksums_of_shards_written_before_them(tmp_path, capsys):
    table = table_in(tmp_path)
    parquet = table.write_shard(np.ones((3, DIM), np.float32), toy_rows(3))
    recorded = parquet.with_suffix(".sha256").read_text()
    parquet.with_suffix(".sha256").unlink()
    assert main(["store", "verify", "--workspace", str(tmp_path)]) == 0
    assert "1 shards were written before checksums were recorded" in capsys.readouterr().err
    assert main(["store", "repair", "--workspace", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sealed"] == [str(parquet)]
    assert json.loads(parquet.with_suffix(".sha256").read_text()) == json.loads(recorded)
    assert table.unchecked() == []


def test_store_verify_of_a_folder_without_a_store_says_so_in_one_line(tmp_path, capsys):
    assert main(["store", "verify", "--workspace", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path / 'nowhere'}: no feature store here (no store/ folder)",
                   "  fix: give the workspace of an extraction: --workspace DIR"]
