"""The cheap change check before hashing: a file unchanged since it was hashed (size, mtime, ctime, inode, device) is
not read again, and every kind of change makes it read."""

from __future__ import annotations

import os
import time

import pytest
from _extract_media import write_shapes

import pipelines.sources as sources
from pipelines.extract import ExtractOptions, run_extract
from pipelines.sources import HashCache, hash_items, scan

HOUR_NS = 3600 * 10**9


@pytest.fixture
def hashed(record_sha256):
    """The paths sources.file_sha256 reads, in order: every hash computed goes through it."""
    return record_sha256(sources)


def backdate(paths, ns: int = HOUR_NS) -> None:
    """Files written an hour ago: older than the racy window, as files are when a collection is extracted."""
    then = time.time_ns() - ns
    for p in paths:
        os.utime(p, ns=(then, then))


def items_of(root):
    return scan([root], extensions=(".png",)).items


def test_a_second_hashing_reads_no_file_and_gives_the_same_hashes(tmp_path, hashed):
    backdate(write_shapes(tmp_path / "media", per_class=2))
    cache = HashCache(tmp_path / "hashes.sqlite3")
    first, _ = hash_items(items_of(tmp_path / "media"), workers=2, cache=cache)
    assert len(hashed) == 6
    hashed.clear()
    again = HashCache(tmp_path / "hashes.sqlite3")
    second, errors = hash_items(items_of(tmp_path / "media"), workers=2, cache=again)
    assert hashed == [] and errors == [] and again.reused == 6
    assert second == first  # same items, same hashes, same order


def test_a_touched_file_is_hashed_again_and_only_it(tmp_path, hashed):
    paths = write_shapes(tmp_path / "media", per_class=2)
    backdate(paths)
    hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    hashed.clear()
    backdate(paths[:1], ns=HOUR_NS // 2)  # touched: a new mtime, the same bytes
    hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    assert hashed == [paths[0].name]


def test_a_file_replaced_with_the_same_size_and_mtime_but_another_inode_is_hashed_again(tmp_path, hashed):
    paths = write_shapes(tmp_path / "media", per_class=1)
    backdate(paths)
    target = paths[0]
    before = {it.path: it.content_hash for it in hash_items(items_of(tmp_path / "media"),
                                                            cache=HashCache(tmp_path / "h.sqlite3"))[0]}
    hashed.clear()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # other bytes, same size
    stat = target.stat()
    replacement = target.with_name("new.tmp")
    replacement.write_bytes(bytes(data))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, target)
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns) and now.st_ino != stat.st_ino
    after = {it.path: it.content_hash for it in hash_items(items_of(tmp_path / "media"),
                                                           cache=HashCache(tmp_path / "h.sqlite3"))[0]}
    assert hashed == [target.name]
    assert after[target] != before[target]


def test_a_file_written_just_before_it_was_hashed_is_hashed_again_next_time(tmp_path, hashed):
    paths = write_shapes(tmp_path / "media", per_class=1)
    backdate(paths[1:])  # paths[0] was written now: within the racy window, its next write may keep its mtime
    hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    hashed.clear()
    hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    assert hashed == [paths[0].name]


def test_extract_reports_the_kept_hashes_and_rehash_reads_every_file(tmp_path, hashed):
    backdate(write_shapes(tmp_path / "media", per_class=2))
    options = ExtractOptions(extractor="hog-color", overrides={"size": 32}, workers=0, progress=False)
    first = run_extract(tmp_path / "ws", "image", [tmp_path / "media"], options)
    assert (first.extracted, first.hashes_kept, len(hashed)) == (6, 0, 6)
    assert (tmp_path / "ws" / "hashes.sqlite3").is_file()
    hashed.clear()
    second = run_extract(tmp_path / "ws", "image", [tmp_path / "media"], options)
    assert (second.skipped, second.hashes_kept, hashed) == (6, 6, [])
    third = run_extract(tmp_path / "ws", "image", [tmp_path / "media"], ExtractOptions(
        extractor="hog-color", overrides={"size": 32}, workers=0, progress=False, rehash=True))
    assert (third.skipped, third.hashes_kept, len(hashed)) == (6, 0, 6)


def test_a_file_whose_name_is_not_utf8_has_its_hash_kept_too(tmp_path, hashed):
    folder = tmp_path / "media" / "cat"
    folder.mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a surrogate-escaped str, which sqlite cannot store as text
    (folder / name).write_bytes(b"not even an image: only its bytes are hashed")
    backdate([folder / name])
    first, errors = hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    assert errors == [] and hashed == [name]
    hashed.clear()
    again, _ = hash_items(items_of(tmp_path / "media"), cache=HashCache(tmp_path / "h.sqlite3"))
    assert hashed == [] and again == first
