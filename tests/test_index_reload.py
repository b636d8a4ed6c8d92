"""Loading an index checks every file's sha256 once; a reload hashes only the files whose stamp (size, mtime, ctime,
inode) changed since they passed, so a changed file is still caught and an unchanged folder loads without reading it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import crossmodal.index as index_module
from crossmodal.errors import ModelFileError
from crossmodal.index import INDEX_FILE, VERIFIED_FILE, create_index, load_index


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    index = create_index("exact", 8)
    index.add(rng.normal(size=(50, 8)).astype(np.float32), [f"item{i}" for i in range(50)])
    return index.save(tmp_path / "index")


@pytest.fixture
def hashed(record_sha256):
    """The names of the files load_index hashes."""
    return record_sha256(index_module)


def test_the_first_load_hashes_every_file_and_a_second_load_none(saved, hashed):
    files = sorted(json.loads((saved / INDEX_FILE).read_text())["files"])
    first = load_index(saved)
    assert sorted(hashed) == files
    hashed.clear()
    second = load_index(saved)
    assert hashed == []
    q = np.ones((1, 8), dtype=np.float32)
    assert first.search(q, 5)[1].tolist() == second.search(q, 5)[1].tolist()


def test_a_file_changed_after_it_passed_is_hashed_again_and_refused(saved, hashed):
    load_index(saved)
    vectors = saved / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 1  # one bit of the last vector, same size
    vectors.write_bytes(bytes(data))
    hashed.clear()
    with pytest.raises(ModelFileError, match="sha256 differs"):
        load_index(saved)
    assert hashed == ["vectors.npy"]


def test_a_changed_file_with_its_old_mtime_put_back_is_still_caught(saved):
    load_index(saved)
    vectors = saved / "vectors.npy"
    st = vectors.stat()
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 1
    vectors.write_bytes(bytes(data))
    os.utime(vectors, ns=(st.st_atime_ns, st.st_mtime_ns))  # the ctime still moves
    with pytest.raises(ModelFileError, match="sha256 differs"):
        load_index(saved)


def test_a_damaged_record_means_hashing_again_not_a_failure(saved, hashed):
    load_index(saved)
    (saved / VERIFIED_FILE).write_text("{not json")
    hashed.clear()
    load_index(saved)
    assert sorted(hashed) == sorted(json.loads((saved / INDEX_FILE).read_text())["files"])


def test_a_record_that_cannot_be_written_leaves_the_load_working(saved, hashed, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(index_module, "atomic_write", refuse)
    load_index(saved)
    hashed.clear()
    load_index(saved)
    assert len(hashed) == len(json.loads((saved / INDEX_FILE).read_text())["files"])  # no record: hashed again
