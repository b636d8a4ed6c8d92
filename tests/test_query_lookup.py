"""A query turns its hits into gallery rows by reading those rows alone: a memory-mapped copy of ``gallery.parquet``
(or, in a folder it cannot write, the parquet's row groups of the hits), never the whole table as Python objects."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.query as query_module
from pipelines.index import GALLERY_ROWS, _GalleryWriter
from pipelines.query import GALLERY_CACHE, GalleryRows


def write_gallery(folder, items: int, *, batch: int, tag: str = "") -> dict[str, dict]:
    """A gallery.parquet of ``items`` rows written ``batch`` rows at a time (one row group each), as the index build
    writes it; the rows by index id, as the whole-table read gave them."""
    folder.mkdir(parents=True, exist_ok=True)
    with _GalleryWriter(folder / GALLERY_ROWS) as writer:
        for start in range(0, items, batch):
            n = min(batch, items - start)
            writer.write(pa.table({
                "content_hash": [f"{i % 5:064d}" for i in range(start, start + n)],  # shared bytes repeat a hash
                "item_id": [f"{tag}item{i}" for i in range(start, start + n)],
                "source_path": [f"/raw/{tag}{'x' * 200}/{i}.png" for i in range(start, start + n)],
                "labels": [[f"class{i % 3}"] if i % 4 else [] for i in range(start, start + n)],
            }))
    return {row["id"]: row for row in pq.read_table(folder / GALLERY_ROWS).to_pylist()}


def test_a_lookup_returns_the_rows_the_whole_table_gave(tmp_path):
    expected = write_gallery(tmp_path, 30, batch=7)
    rows = GalleryRows(tmp_path)
    ids = list(expected)
    assert len(rows) == 30
    assert rows.lookup(ids) == [expected[i] for i in ids]
    assert rows[ids[9]] == expected[ids[9]]
    assert (tmp_path / GALLERY_CACHE).is_file()


def test_ids_of_no_row_give_none(tmp_path):
    expected = write_gallery(tmp_path, 10, batch=4)
    rows = GalleryRows(tmp_path)
    first_hash = next(iter(expected)).split("/")[0]
    assert rows.lookup(["", f"{first_hash}/99", f"{first_hash}/3", "not-an-id"]) == [None] * 4  # row 3 has hash 3
    with pytest.raises(KeyError):
        rows["missing/1"]


def test_a_lookup_maps_only_the_batches_of_its_hits_and_allocates_no_copy_of_the_table(tmp_path):
    expected = write_gallery(tmp_path, 20_000, batch=1000)
    table_bytes = pq.read_table(tmp_path / GALLERY_ROWS).nbytes
    GalleryRows(tmp_path)  # makes the memory-mapped copy once
    before = pa.total_allocated_bytes()
    rows = GalleryRows(tmp_path)
    hits = [f"{i % 5:064d}/{i}" for i in (5, 17_003, 9_999)]
    assert rows.lookup(hits) == [expected[h] for h in hits]
    assert rows.batches_read == len(hits)
    assert pa.total_allocated_bytes() - before < table_bytes / 100  # the rows live in the mapped file


def test_a_folder_it_cannot_write_reads_the_row_groups_of_the_hits_from_the_parquet(tmp_path, monkeypatch):
    expected = write_gallery(tmp_path, 50, batch=10)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(query_module.tempfile, "NamedTemporaryFile", refuse)
    read = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: read.append(i) or original(self, i, *a, **k))
    rows = GalleryRows(tmp_path)
    hits = [h for h in expected if h.endswith(("/3", "/41"))]
    assert rows.lookup(hits) == [expected[h] for h in hits]
    assert sorted(read) == [0, 4]  # rows 3 and 41: row groups 0 and 4 of 5
    assert not (tmp_path / GALLERY_CACHE).exists()
    assert not list(tmp_path.glob(".gallery.*"))


def test_a_rewritten_gallery_gets_a_new_copy(tmp_path):
    write_gallery(tmp_path, 12, batch=5)
    GalleryRows(tmp_path)
    expected = write_gallery(tmp_path, 12, batch=5, tag="new-")
    rows = GalleryRows(tmp_path)
    assert rows.lookup(list(expected)) == list(expected.values())
    assert all(row["item_id"].startswith("new-") for row in rows.lookup(list(expected)))


def test_a_gallery_written_before_ids_is_looked_up_by_content_hash(tmp_path):
    table = pa.table({"content_hash": ["a" * 64, "b" * 64], "item_id": ["x", "y"], "source_path": ["/x", "/y"],
                      "labels": [["c"], []]})
    pq.write_table(table, tmp_path / GALLERY_ROWS, row_group_size=1)
    rows = GalleryRows(tmp_path)
    assert rows.lookup(["b" * 64, "c" * 64]) == [table.to_pylist()[1], None]
