"""Where raw files and their labels come from: folder trees, CSV/JSONL manifests, or labels in file names.

* **folders** (torchvision's ImageFolder convention): ``root/<class>/<...>/<file>`` gets the label ``<class>``; files
  directly under ``root`` get none. The item id is the path relative to ``root`` without its suffix, so the image
  ``root/cat/001.jpg`` and the text ``root/cat/001.txt`` are a pair.
* **a manifest** (``.csv`` or ``.jsonl``): columns ``path`` (relative paths are resolved against the manifest's folder),
  ``label`` or ``labels`` (several separated by ``;`` or ``|``, or a JSON list), optional ``split`` and ``id``. A split
  is ``train``, ``val`` or ``test`` (case and surrounding spaces aside); any other value, and a CSV row with more fields
  than the header (``a.png,cat,dog`` unquoted), refuse the manifest naming its lines, since either would otherwise
  change silently what is trained on.
* **regex:PATTERN**: the label is the first group of PATTERN (else the whole match) searched in the file name, e.g.
  ``regex:^(\\d)_`` for the spoken digits ``<digit>_<speaker>_<index>.wav``; files that do not match are unlabelled.

Nothing here raises for one bad path: missing files, symlink loops and unsupported extensions become
:class:`SourceError` records that the extract step writes to ``errors.jsonl``. Hidden files and folders (names starting
with ``.``) are not media and are passed over.

**Content hashes are kept per path** (:class:`HashCache`, ``<workspace>/hashes.sqlite3``): a file whose size, mtime,
ctime, inode and device are those it had when it was last hashed is not read again. This trusts what ``make`` and
``git status`` trust: that a write changes the file's mtime (and ctime), and that a replaced file is a new inode.
Copies that keep the mtime (``cp -p``, ``rsync -t``) make a new inode and are hashed; in-place edits that restore the
mtime (``touch -r``, ``os.utime``) still change the ctime, which no user call can set. Not covered: a filesystem whose
timestamps do not move on writes (some FUSE or network mounts, a clock set backwards between the write and the run),
or a device number that changes between mounts (every file is then hashed once more). A file modified less than
:data:`RACY_SECONDS` before it was hashed is not trusted (its next write could keep a coarse timestamp: git's "racily
clean" case) and is hashed again on the next run. ``crossmodal extract --rehash`` ignores the kept hashes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crossmodal.errors import ConfigError, DatasetFormatError
from extractors.base import file_sha256

MANIFEST_SUFFIXES = (".csv", ".jsonl")
HASH_CACHE = "hashes.sqlite3"  # in the workspace: path -> (stat fields, sha256)
# A file modified this little before it was hashed may be written again within its filesystem's timestamp granularity
# (2 s on FAT, one kernel tick on ext4) without its mtime moving: such an entry is not trusted.
RACY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Item:
    """One raw file to extract.

    Attributes:
        path: the file.
        labels: class names; empty when unlabelled.
        split: fixed by a manifest, else None (the workspace splits by seed).
        item_id: readable id (path relative to the scanned root, no suffix; or the manifest's ``id``).
        content_hash: sha256 of the bytes, filled by :func:`hash_items`.
    """

    path: Path
    labels: tuple[str, ...] = ()
    split: str | None = None
    item_id: str = ""
    content_hash: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceError:
    """A path that yields no item: ``error`` is a short kind (``missing``, ``unsupported``, ``symlink-loop``,
    ``unreadable``, ``manifest``), ``message`` the reason."""

    path: str
    error: str
    message: str


@dataclasses.dataclass
class Scan:
    """What a scan found: ``items``, the paths that gave none (``errors``), and ``passed_over``: how many files of
    each suffix a folder walk passed over because they are another modality's media."""

    items: list[Item]
    errors: list[SourceError]
    passed_over: dict[str, int] = dataclasses.field(default_factory=dict)


def scan(paths: Sequence[str | os.PathLike], *, extensions: Iterable[str], labels_from: str = "folders",
         ignore: Iterable[str] = ()) -> Scan:
    """List the items under ``paths``.

    Args:
        paths: folders (walked recursively, following symlinks once), files, or manifests (``.csv``/``.jsonl``).
            With ``labels_from`` a manifest, ``paths`` may be empty (every row) or keep only the rows under them.
        extensions: the suffixes the extractor reads (``".jpg"``, ...), lower case.
        labels_from: ``"folders"``, a manifest path, or ``"regex:PATTERN"``.
        ignore: suffixes passed over in folder walks without an error (other modalities' media in a shared tree).

    Returns:
        :class:`Scan`: items in a stable order, and the paths that gave none.

    Raises:
        ConfigError: ``labels_from`` is neither ``folders``, an existing manifest nor a valid ``regex:``.
        DatasetFormatError: a manifest has no ``path`` column.
    """
    exts = {e.lower() for e in extensions}
    skip = {e.lower() for e in ignore} - exts
    label_of = _label_rule(labels_from)
    items: list[Item] = []
    errors: list[SourceError] = []
    passed_over: dict[str, int] = {}
    manifests = [Path(p) for p in paths if Path(p).suffix.lower() in MANIFEST_SUFFIXES and Path(p).is_file()]
    roots = [Path(p) for p in paths if Path(p) not in manifests]
    if label_of is None:  # labels_from is a manifest
        manifests.append(Path(labels_from))
    for manifest in manifests:
        m_items, m_errors = _read_manifest(manifest, exts)
        if label_of is None and manifest == Path(labels_from) and roots:
            m_items = [it for it in m_items if any(_is_within(it.path, r) for r in roots)]
        items += m_items
        errors += m_errors
    if label_of is None:
        return Scan(items, errors)
    for root in roots:
        if not root.exists():
            kind = "missing" if not root.is_symlink() else "missing (broken symlink)"
            errors.append(SourceError(str(root), "missing", f"{kind}: no such file or folder"))
        elif root.is_file():
            if root.suffix.lower() in exts:
                items.append(Item(root, label_of(root, None), None, root.stem))
            else:
                errors.append(_unsupported(root, exts))
        else:
            for path in _walk(root, errors):
                suffix = path.suffix.lower()
                if suffix in exts:
                    rel = path.relative_to(root)
                    items.append(Item(path, label_of(path, rel), None, rel.with_suffix("").as_posix()))
                elif suffix not in skip:
                    errors.append(_unsupported(path, exts))
                else:
                    passed_over[suffix] = passed_over.get(suffix, 0) + 1
    return Scan(items, errors, passed_over)


#: Hashes items: ``(items with content_hash, unreadable files)``, as :func:`hash_items` (the Ray runner's hashes on
#: its workers).
Hasher = Callable[[Sequence[Item]], tuple[list[Item], list[SourceError]]]


def hash_items(items: Sequence[Item], *, workers: int = 4, cache: HashCache | None = None,
               hasher: Hasher | None = None) -> tuple[list[Item], list[SourceError]]:
    """Fill ``content_hash`` (sha256 of the bytes, streamed) in ``workers`` threads; unreadable files become errors.

    With ``cache``, a file unchanged since it was last hashed (see the module docstring) takes its kept hash and only
    the others are read, by ``hasher`` when given; their hashes are kept for the next run. Items come back in input
    order either way.
    """
    if cache is None:
        return (hasher or _hash_all(workers))(items)
    kept, stats = cache.lookup(items)
    missing = [it for it in items if it.path not in kept]
    hashed, errors = (hasher or _hash_all(workers))(missing)
    cache.record([(it, stats[it.path]) for it in hashed if it.path in stats])
    found = {**{it.path: it.content_hash for it in hashed}, **kept}  # a path listed twice (a manifest) has one hash
    return [dataclasses.replace(it, content_hash=found[it.path]) for it in items if it.path in found], errors


def _hash_all(workers: int) -> Hasher:
    def one(item: Item) -> Item | SourceError:
        try:
            return dataclasses.replace(item, content_hash=file_sha256(item.path))
        except OSError as exc:
            return SourceError(str(item.path), "unreadable", f"cannot read: {exc.strerror or exc}")

    def hash_all(items: Sequence[Item]) -> tuple[list[Item], list[SourceError]]:
        if workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, items))
        else:
            results = [one(it) for it in items]
        return [r for r in results if isinstance(r, Item)], [r for r in results if isinstance(r, SourceError)]

    return hash_all


Stat = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, device


class HashCache:
    """The sha256 of each file as it was when last hashed, in a sqlite3 file keyed by absolute path (one row per path:
    size, mtime_ns, ctime_ns, inode, device, sha256, and when it was hashed). Several processes may share it: sqlite
    serialises their writes, and a row is only ever replaced by a newer hash of the same path.

    Args:
        path: the sqlite3 file (made on first use, with its folder).
        trust: False ignores every kept hash (``--rehash``); what is hashed is still recorded.
    """

    def __init__(self, path: str | os.PathLike, *, trust: bool = True) -> None:
        self.path, self.trust = Path(path), trust
        self.reused = 0  # files whose kept hash was used, over this object's lookups
        self._looked_ns: int | None = None  # when the last lookup began: before any file it stat'ed was read

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS hashes (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                   "ctime_ns INTEGER, inode INTEGER, device INTEGER, sha256 TEXT, hashed_ns INTEGER)")
        return db

    def lookup(self, items: Sequence[Item]) -> tuple[dict[Path, str], dict[Path, Stat]]:
        """``({path: kept sha256} for the files unchanged since hashed, {path: stat now} for every file that could be
        stat'ed)``; the stat is taken before any hashing, so a file written while it is hashed is hashed again next
        time."""
        stats: dict[Path, Stat] = {}
        self._looked_ns = time.time_ns()
        for item in items:
            try:
                st = os.stat(item.path)
            except OSError:  # hash_items names it: the hash is not kept
                continue
            stats[item.path] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        if not self.trust or not stats:
            return {}, stats
        kept: dict[Path, str] = {}
        racy = int(RACY_SECONDS * 1e9)
        with contextlib.closing(self._connect()) as db:
            rows = {}
            paths = [_key(p) for p in stats]
            for i in range(0, len(paths), 500):  # sqlite's limit on bound parameters
                chunk = paths[i:i + 500]
                rows.update((r[0], r[1:]) for r in db.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns, inode, device, sha256, hashed_ns FROM hashes "
                    f"WHERE path IN ({','.join('?' * len(chunk))})", chunk))
        for path, stat in stats.items():
            row = rows.get(_key(path))
            if row is not None and tuple(row[:5]) == stat and row[1] < row[6] - racy:
                kept[path] = row[5]
        self.reused += len(kept)
        return kept, stats

    def record(self, hashed: Sequence[tuple[Item, Stat]]) -> None:
        """Keep the hashes of ``hashed``, each with the stat its file had before it was read (by the last lookup)."""
        if not hashed:
            return
        # the racy check compares a file's mtime with this time: that of the stat, not of the end of the hashing
        now = self._looked_ns or time.time_ns()
        with contextlib.closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(_key(it.path), *stat, it.content_hash, now) for it, stat in hashed])


def _key(path: Path) -> bytes:
    """The absolute path, not resolved (two names of one file, a symlink, are two rows, each checked on its own), as
    the filesystem's bytes: a name that is not UTF-8 cannot be a sqlite text."""
    return os.fsencode(os.path.abspath(path))


def _label_rule(labels_from: str):
    """A function ``(path, path relative to its root or None) -> labels``, or None for a manifest."""
    if labels_from == "folders":
        return lambda path, rel: (rel.parts[0],) if rel is not None and len(rel.parts) > 1 else ()
    if labels_from.startswith("regex:"):
        try:
            pattern = re.compile(labels_from[len("regex:"):])
        except re.error as exc:
            raise ConfigError(f"--labels-from {labels_from!r}: not a regular expression ({exc})") from exc

        def by_name(path: Path, rel: Path | None) -> tuple[str, ...]:
            m = pattern.search(path.name)
            return () if m is None else ((m.group(1) if pattern.groups else m.group(0)),)

        return by_name
    if Path(labels_from).suffix.lower() in MANIFEST_SUFFIXES and Path(labels_from).is_file():
        return None
    raise ConfigError(f"--labels-from {labels_from!r}: not 'folders', 'regex:PATTERN' or an existing manifest",
                      hint="a manifest is a .csv or .jsonl file with a path column")


def _walk(root: Path, errors: list[SourceError]) -> Iterable[Path]:
    """Files under ``root`` in sorted order, following symlinked folders but never into one of their own ancestors."""

    def walk(folder: Path, ancestors: frozenset[tuple[int, int]]) -> Iterable[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            errors.append(SourceError(str(folder), "unreadable", f"cannot list folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    st = entry.stat()
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        errors.append(SourceError(str(path), "symlink-loop",
                                                  f"symlink loop: points back to {os.path.realpath(path)}"))
                        continue
                    yield from walk(path, ancestors | {ident})
                elif entry.is_file():
                    yield path
                elif entry.is_symlink():
                    errors.append(SourceError(str(path), "missing", "broken symlink: its target does not exist"))
            except OSError as exc:  # ELOOP on a self-referencing symlink, EACCES...
                errors.append(SourceError(str(path), "symlink-loop" if exc.errno == 40 else "unreadable",
                                          f"cannot open: {exc.strerror or exc}"))

    st = root.stat()
    yield from walk(root, frozenset({(st.st_dev, st.st_ino)}))


def _unsupported(path: Path, exts: set[str]) -> SourceError:
    reads = ", ".join(sorted(exts))
    return SourceError(str(path), "unsupported", f"unsupported extension {path.suffix or '(none)'!r} (reads {reads})")


def _is_within(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _read_manifest(manifest: Path, exts: set[str]) -> tuple[list[Item], list[SourceError]]:
    rows = _manifest_rows(manifest)
    _check_manifest(manifest, rows)
    items: list[Item] = []
    errors: list[SourceError] = []
    base = manifest.parent
    for line, row in rows:
        where = f"{manifest}:{line}"
        if isinstance(row, SourceError):
            errors.append(row)
            continue
        raw_path = row.get("path")
        if not raw_path:
            errors.append(SourceError(where, "manifest", "row has no path"))
            continue
        path = Path(str(raw_path)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            errors.append(SourceError(str(path), "missing", f"no such file (listed in {where})"))
            continue
        if path.suffix.lower() not in exts:
            errors.append(_unsupported(path, exts))
            continue
        try:
            labels = _parse_labels(row.get("labels", row.get("label")))
        except ValueError as exc:
            errors.append(SourceError(str(path), "manifest", f"{where}: bad labels ({exc})"))
            continue
        split = _split(row.get("split"))
        rel = os.path.relpath(path, base)
        item_id = str(row.get("id") or Path(rel).with_suffix("").as_posix())
        items.append(Item(path, labels, split, item_id))
    return items, errors


def _split(value: object) -> str | None:
    """A manifest's split, normalised (``" Test "`` -> ``"test"``); None when empty. :func:`_check_manifest` has
    refused every other value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip().lower()


def _check_manifest(manifest: Path, rows: list[tuple[int, dict | SourceError]]) -> None:
    """Refuse a manifest whose rows would be read other than as written: a split that is not train/val/test, or a
    CSV row with more fields than the header (an unquoted label list ``a.png,cat,dog`` would keep only ``cat``).

    Raises:
        DatasetFormatError: naming the lines (the first five) and how many there are.
    """
    extra = [line for line, row in rows if isinstance(row, dict) and None in row]
    if extra:
        raise DatasetFormatError(
            f"{manifest}: {_lines(extra)} more fields than the header, so part of the row would be dropped",
            hint='quote a field that holds commas ("a.png","cat,dog" is one label; a.png,cat;dog gives two labels)')
    bad = [(line, row["split"]) for line, row in rows if isinstance(row, dict) and row.get("split") not in (None, "")
           and _split(row["split"]) not in ("train", "val", "test")]
    if bad:
        shown = ", ".join(f"{line}: {value!r}" for line, value in bad[:5])
        raise DatasetFormatError(
            f"{manifest}: split must be train, val or test, but {_lines([line for line, _ in bad])} another value "
            f"({shown})", hint="fix those rows, or leave split empty to let the workspace draw it")


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:5])) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    return f"line {shown} has" if len(lines) == 1 else f"lines {shown} have"


def _manifest_rows(manifest: Path) -> list[tuple[int, dict | SourceError]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{manifest}: cannot read manifest ({exc})") from exc
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DatasetFormatError(f"{manifest}: a manifest needs a 'path' column (found {reader.fieldnames})",
                                     hint="columns: path, label or labels, optional split and id")
        # line numbers as a reader of the file counts them (a quoted field may span lines)
        return [(reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}) for row in reader]
    rows: list[tuple[int, dict | SourceError]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((i, SourceError(f"{manifest}:{i}", "manifest", f"not JSON ({exc.msg})")))
            continue
        rows.append((i, row if isinstance(row, dict) else SourceError(f"{manifest}:{i}", "manifest", "not an object")))
    return rows


def _parse_labels(value: object) -> tuple[str, ...]:
    """``"cat"``, ``"cat;dog"``, ``"cat|dog"``, ``'["cat", "dog"]'``, a JSON list or a number -> label names."""
    if value is None or value == "":
        return ()
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = json.loads(value)
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip())
    if isinstance(value, (int, float, bool)):
        return (str(value),)
    if not isinstance(value, str):
        raise ValueError(f"expected a string or a list, got {type(value).__name__}")
    parts = re.split(r"[;|]", value)
    return tuple(p.strip() for p in parts if p.strip())
