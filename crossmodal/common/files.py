"""Writing a file whole or not at all: ``atomic_write`` (huggingface_hub's ``.incomplete`` + move, made durable).

Every file the toolkit replaces in place (a model's weights and card, an index's index.json, a store table's
extractor.json and checksums, the splits, caches) is written through here: into a temporary file of a unique name in
the same folder, flushed to the disk, then renamed over the target and the folder's entry flushed too. A reader sees the
old file or the new one, never half of one; a crash leaves at most a ``*.incomplete`` file beside it; two writers of
the same file each rename a whole file (the last one wins) instead of writing into one shared temporary name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".incomplete"


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], object], *,
                 durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` in one step.

    Args:
        path: the file to write; its folder must exist.
        data: bytes, a str (written as UTF-8), or a writer called with the temporary file open for binary writing
            (``lambda f: np.save(f, X)``); a library that writes to a path uses ``f.name``.
        durable: fsync the file and the folder, so that the new file survives a power cut once this returns. A cache
            that can be rebuilt passes False.

    Returns:
        ``path``.

    Raises:
        OSError: the write or the rename failed (a full disk: ENOSPC); the temporary file is removed and ``path`` is
            as it was. Whatever the writer raises, likewise.
    """
    path = Path(path)
    while True:  # a fresh name per writer: two processes writing one file never share a temporary file
        temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")
        try:
            f = open(temporary, "xb")  # noqa: SIM115 (closed below, before the rename)
            break
        except FileExistsError:
            continue
    try:
        with f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            fsync_path(temporary)  # by name: a writer given f.name may have written through its own handle
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)
    return path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to the disk. Folders cannot be opened for fsync on
    Windows; there the rename is left to the file system."""
    if os.name != "posix" and Path(path).is_dir():  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
