"""Content hashes of files: the identity of an item in the store, of a weights file, of a saved model."""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20  # bytes read at a time: a file of any size hashes in constant memory


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
