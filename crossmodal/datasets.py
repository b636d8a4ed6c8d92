"""Loaders (and writers) for the published benchmark feature files, with the splits of specs/drcl.md §6.4 and §7.1.

* ``wiki``: ``wiki.mat`` (MAT v5) or ``wiki_deep_doc2vec_data_corr_ae.h5py`` (HDF5), detected by content; image and
  text, paired; the 2,173 training pairs train, the first 231 of the 693 test pairs validate, the other 462 test.
* ``wiki-sift-lda``: Rasiwasia et al.'s original Wikipedia features (``wikiData_with_labels.mat``: 128-d SIFT
  bag-of-words images, 10-d LDA texts), paired, split as ``wiki``. Item ids are the dataset's text ids when the
  ``*_txt_img_cat.list`` files sit next to it.
* ``xmedia``: ``XMediaFeatures.mat``; image, text, audio, mesh (3D), video, unpaired. Test = the first 500, 500, 100,
  50, 87 rows of each test array; validation = the rest.
* ``xmedianet``: ``XMediaNet5View_Doc2Vec.mat``; 1x5 cell arrays ``train``, ``valid``, ``test`` (+ ``*_labels``).
* ``nus``: ``nus_wide_deep_doc2vec-corr-ae.h5py`` (HDF5); image and text, paired; the file's train / valid / test
  (files without ``valid_*`` keys: the first 5,000 test pairs validate).
* ``inria``: ``INRIA-Websearch.mat``; image and text, paired; the file's ``tr`` / ``val`` / ``te``.

Containers are recognised by their bytes, not their names: MAT v5 (scipy), HDF5 written by h5py, and MATLAB v7.3
(HDF5 with a MATLAB header, whose arrays are stored transposed). The key family decides the rest: a Wikipedia file may
name its text ``*_texts_doc``, ``*_texts`` or ``*_text``, and may carry ``*_texts_labels``.

Labels (§7.1): a vector (N,), N x 1 or 1 x N holds class ids; they become 0..C-1 over the sorted unique ids of the
training split (all modalities together; ids < 0 are "unlabelled" and ignored; an id absent from training becomes -1).
A matrix with more than one column is multi-hot (multi-label). Item ids are ``"<array split>/<row>"`` of the file
(``"test/231"`` is the first Wikipedia test item), so a row can be traced back; paired modalities share ids, and
unpaired ones (XMedia, XMediaNet) prefix the modality (``"audio/test/7"``) so equal ids always mean the same item.

Every format problem (unreadable file, missing key, wrong shape, counts that disagree) raises DatasetFormatError naming
the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from crossmodal.errors import DatasetFormatError, UnknownNameError
from crossmodal.featureset import CrossModalDataset, FeatureSet

Container = Literal["mat", "hdf5"]

BENCHMARKS: tuple[str, ...] = ("wiki", "wiki-sift-lda", "xmedia", "xmedianet", "nus", "inria")
ALIASES = {"inria-websearch": "inria", "wikipedia": "wiki", "nus-wide": "nus", "nuswide": "nus"}

# File names looked for when a folder is given (the first that exists wins).
DEFAULT_FILES: dict[str, tuple[str, ...]] = {
    "wiki": ("wiki.mat", "wiki_deep_doc2vec_data_corr_ae.h5py"),
    "wiki-sift-lda": ("wikiData_with_labels.mat",),
    "xmedia": ("XMediaFeatures.mat",),
    "xmedianet": ("XMediaNet5View_Doc2Vec.mat",),
    "nus": ("nus_wide_deep_doc2vec-corr-ae.h5py", "nus_wide_deep_doc2vec_data_42941.h5py"),
    "inria": ("INRIA-Websearch.mat",),
}

WIKI_VAL_SIZE = 231  # §6.4: the first 231 of the 693 Wikipedia test pairs are the validation split
NUS_VAL_SIZE = 5000  # NUS-WIDE files without valid_* keys: the first 5,000 test pairs validate (SDML/MRL loaders)
XMEDIA_TEST_SIZES = {"image": 500, "text": 500, "audio": 100, "mesh": 50, "video": 87}  # §6.4, the rest validates
FIVE_VIEWS = ("image", "text", "audio", "mesh", "video")  # XMedia(Net) view order [image, text, audio, 3D, video]

# XMedia keys: modality -> ((train features, test features), (train labels, test labels)).
XMEDIA_KEYS = {
    "image": (("I_tr_CNN", "I_te_CNN"), ("trImgCat", "teImgCat")),
    "text": (("T_tr_BOW", "T_te_BOW"), ("trTxtCat", "teTxtCat")),
    "audio": (("A_tr", "A_te"), ("trAudCat", "teAudCat")),
    "mesh": (("d3_tr", "d3_te"), ("tr3dCat", "te3dCat")),
    "video": (("V_tr_CNN", "V_te_CNN"), ("trVidCat", "teVidCat")),
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_SUFFIXES = (".h5py", ".h5", ".hdf5", ".hdf")

__all__ = ["BENCHMARKS", "DEFAULT_FILES", "load_benchmark", "resolve_benchmark_file", "write_benchmark"]


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def load_benchmark(dataset: str, path: str | os.PathLike[str]) -> CrossModalDataset:
    """Load a benchmark feature file into train / val / test feature sets.

    Args:
        dataset: one of ``BENCHMARKS`` (``wiki``, ``wiki-sift-lda``, ``xmedia``, ``xmedianet``, ``nus``, ``inria``;
            ``INRIA-Websearch`` and ``nus-wide`` are accepted too).
        path: the file, or a folder holding it under one of its ``DEFAULT_FILES`` names.

    Returns:
        A CrossModalDataset whose modalities are image, text (and audio, mesh, video for the five-view sets); float32
        features, int64 labels in 0..C-1 (-1 unlabelled) or uint8 multi-hot labels.

    Raises:
        UnknownNameError: ``dataset`` is not a known benchmark.
        DatasetFormatError: the file is missing or unreadable, or a key is missing, misshapen or inconsistent.
    """
    name = _canonical(dataset)
    file = resolve_benchmark_file(name, path)
    with _open(file) as arrays:
        return _LOADERS[name](arrays)


def write_benchmark(
    dataset: str, path: str | os.PathLike[str], ds: CrossModalDataset, *, container: Container | None = None
) -> Path:
    """Write ``ds`` in the published format of ``dataset`` (so tests and synthetic benchmarks can make real files).

    The formats fix some split sizes, which ``ds`` must match: ``wiki`` / ``wiki-sift-lda`` store validation and test
    in one test array (val = its first 231 rows), and ``xmedia`` stores test then validation (test sizes 500, 500, 100,
    50, 87). Item ids are not stored: they are rebuilt from rows on reading.

    Args:
        dataset: a benchmark name, as for :func:`load_benchmark`.
        path: the file to write (its folder must exist).
        ds: the dataset; its modalities must be the benchmark's.
        container: "mat" (MAT v5) or "hdf5". Default: HDF5 for ``nus``, and for ``wiki`` when the name ends in
            ``.h5py``, ``.h5`` or ``.hdf5`` (then with the ``*_corr_ae.h5py`` keys, ``*_text``); MAT v5 otherwise.
            The reader takes either container for every benchmark, except cell arrays (``xmedianet``: MAT only).

    Returns:
        The path written.
    """
    name = _canonical(dataset)
    path = Path(path)
    expected = ("image", "text") if name not in ("xmedia", "xmedianet") else FIVE_VIEWS
    if sorted(ds.train) != sorted(expected):
        raise DatasetFormatError(f"{name} holds the modalities {', '.join(expected)}; the dataset has"
                                 f" {', '.join(ds.train)}")
    if container is None:
        container = "hdf5" if name == "nus" or (name == "wiki" and path.suffix.lower() in _HDF5_SUFFIXES) else "mat"
    if container == "hdf5" and name == "xmedianet":
        raise DatasetFormatError("xmedianet stores cell arrays, which only the MAT container holds",
                                 hint="write it with container='mat'")
    arrays = _WRITERS[name](ds, container)
    if container == "hdf5":
        h5py = _h5py(path)
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
    else:
        import scipy.io

        scipy.io.savemat(path, arrays, do_compression=False)
    return path


def resolve_benchmark_file(dataset: str, path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else the first of the benchmark's ``DEFAULT_FILES`` inside the folder."""
    name = _canonical(dataset)
    path = Path(path)
    if path.is_dir():
        for candidate in DEFAULT_FILES[name]:
            if (path / candidate).is_file():
                return path / candidate
        raise DatasetFormatError(f"{path}: no {name} file in this folder (looked for {', '.join(DEFAULT_FILES[name])})",
                                 hint="pass the feature file itself")
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such file", hint=f"give the {name} feature file or its folder")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Reading containers


class _Arrays:
    """Read-only ``key -> ndarray`` view of an opened MAT or HDF5 file; errors name the file and the key."""

    def __init__(self, file: Path, keys: Sequence[str], read: Callable[[str], np.ndarray]):
        self.file, self.keys, self._read = file, list(keys), read

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def get(self, key: str) -> np.ndarray:
        return self._read(self.first([key]))

    def first(self, keys: Sequence[str]) -> str:
        """The first of ``keys`` present in the file; raises naming the file, the keys and what the file holds."""
        for key in keys:
            if key in self.keys:
                return key
        shown = ", ".join(sorted(self.keys)[:20]) or "none"
        raise DatasetFormatError(f"{self.file}: key {' or '.join(map(repr, keys))} is missing (keys in the file:"
                                 f" {shown})", hint="is this the right benchmark file for the dataset name?")

    def features(self, key: str) -> np.ndarray:
        """float32 (n, d) features under ``key``."""
        return _matrix(self.get(key), f"{self.file}: key {key!r}")

    def labels(self, key: str, n: int, *, features_key: str) -> np.ndarray:
        """Raw labels under ``key`` for ``n`` rows: int64 (n,) class ids or uint8 (n, C) multi-hot."""
        return _raw_labels(self.get(key), n, f"{self.file}: key {key!r}", features_key)

    def cells(self, key: str, count: int) -> list[np.ndarray]:
        """The ``count`` entries of a 1 x count MATLAB cell array."""
        value = self.get(key)
        if value.dtype != object or value.size != count:
            raise DatasetFormatError(f"{self.file}: key {key!r} must be a 1x{count} cell array (one entry per view),"
                                     f" got {value.dtype} of shape {value.shape}")
        return [np.asarray(v) for v in value.reshape(-1)]


@contextmanager
def _open(file: Path) -> Iterator[_Arrays]:
    try:
        with open(file, "rb") as f:
            head = f.read(520)
    except OSError as e:
        raise DatasetFormatError(f"{file}: cannot be read ({e.strerror or e})") from e
    if head.startswith(_HDF5_MAGIC) or head[512:520] == _HDF5_MAGIC:
        with _open_hdf5(file, matlab=head.startswith(b"MATLAB")) as arrays:
            yield arrays
        return
    import scipy.io

    try:
        data = scipy.io.loadmat(file)
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
        raise DatasetFormatError(f"{file}: not a readable MAT (v5) or HDF5 file ({e})",
                                 hint="the benchmark files are MATLAB .mat or h5py files") from e
    yield _Arrays(file, [k for k in data if not k.startswith("__")], data.__getitem__)


def _h5py(file: Path) -> ModuleType:
    """h5py, which only HDF5 benchmark files need: it comes with the ``hdf5`` extra, not with the core."""
    try:
        import h5py
    except ImportError as e:
        raise DatasetFormatError(f"{file} is an HDF5 file, and HDF5 needs the Python package 'h5py', which is not "
                                 "installed", hint="pip install 'crossmodal-toolkit[hdf5]'") from e
    return h5py


@contextmanager
def _open_hdf5(file: Path, *, matlab: bool) -> Iterator[_Arrays]:
    h5py = _h5py(file)
    try:
        handle = h5py.File(file, "r")
    except OSError as e:
        raise DatasetFormatError(f"{file}: not a readable HDF5 file ({e})") from e

    def read(key: str) -> np.ndarray:
        node = handle[key]
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "biuf":
            raise DatasetFormatError(f"{file}: key {key!r} is not a numeric array (a MATLAB v7.3 cell array?)",
                                     hint="save the file from MATLAB with -v7, or from Python with numeric arrays")
        value = node[()]
        # MATLAB v7.3 stores column-major arrays, which h5py reads transposed.
        return value.T if matlab else value

    with handle:
        yield _Arrays(file, [k for k in handle.keys() if not k.startswith("#")], read)


def _matrix(value: np.ndarray, where: str) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim != 2 or value.dtype.kind not in "biuf":
        raise DatasetFormatError(f"{where} must be a 2-D numeric (items, dims) matrix, got {value.dtype} of shape"
                                 f" {value.shape}")
    value = value.astype(np.float32, copy=False)
    if not np.isfinite(value).all():  # NaN/inf features would train to a NaN model without another word
        rows = np.flatnonzero(~np.isfinite(value).all(axis=1))
        raise DatasetFormatError(f"{where} holds NaN or infinite values in {len(rows)} row(s), first"
                                 f" {rows[:5].tolist()}", hint="fix or drop those rows in the file")
    return value


def _raw_labels(value: np.ndarray, n: int, where: str, features_key: str) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise DatasetFormatError(f"{where}: labels must be numeric, got {value.dtype}")
    if value.ndim == 2 and 1 in value.shape:
        value = value.reshape(-1)
    if value.ndim == 1:
        if len(value) != n:
            raise DatasetFormatError(f"{where} has {len(value)} labels but {features_key!r} has {n} rows")
        if value.dtype.kind == "f" and not np.array_equal(value, np.round(value)):
            raise DatasetFormatError(f"{where}: class ids must be whole numbers")
        return value.astype(np.int64)
    if value.ndim == 2:
        if value.shape[0] != n:
            raise DatasetFormatError(f"{where} has labels of shape {value.shape} but {features_key!r} has {n} rows")
        return (value > 0).astype(np.uint8)
    raise DatasetFormatError(f"{where}: labels must be a vector or an (items, classes) matrix, got {value.shape}")


# ---------------------------------------------------------------------------------------------------------------------
# Splits and labels into a CrossModalDataset

Part = tuple[np.ndarray, np.ndarray, np.ndarray, str]  # (features, raw labels, ids, source for errors)


def _dataset(name: str, splits: Mapping[str, Mapping[str, Part]], *, paired: bool) -> CrossModalDataset:
    """Map raw labels onto the training label space and build the feature sets; splits are train/val/test."""
    train_labels = [part[1] for part in splits["train"].values()]
    kinds = {labels.ndim for split in splits.values() for (_, labels, _, _) in split.values()}
    if len(kinds) > 1:
        raise DatasetFormatError(f"{name}: some label arrays are class ids and others multi-hot matrices")
    if kinds == {2}:
        widths = {labels.shape[1] for split in splits.values() for (_, labels, _, _) in split.values()}
        if len(widths) > 1:
            raise DatasetFormatError(f"{name}: multi-hot label matrices have different widths {sorted(widths)}")
        num_classes = widths.pop()

        def encode(labels: np.ndarray) -> np.ndarray:
            return labels
    else:
        ids = np.concatenate(train_labels)
        classes = np.unique(ids[ids >= 0])
        num_classes = len(classes)

        def encode(labels: np.ndarray) -> np.ndarray:
            pos = np.clip(np.searchsorted(classes, labels), 0, max(num_classes - 1, 0))
            known = (labels >= 0) & (classes[pos] == labels) if num_classes else np.zeros(len(labels), bool)
            return np.where(known, pos, -1)

    built = {
        split: {m: FeatureSet.build(X, encode(labels), ids, num_classes=num_classes, source=source)
                for m, (X, labels, ids, source) in parts.items()}
        for split, parts in splits.items()
    }
    return CrossModalDataset(name=name, train=built["train"], val=built["val"], test=built["test"], paired=paired)


def _rows(prefix: str, n: int, start: int = 0) -> np.ndarray:
    return np.array([f"{prefix}/{i}" for i in range(start, start + n)])


def _split_rows(part: Part, first: int, *, where: str) -> tuple[Part, Part]:
    """(the first ``first`` rows, the rest) of a part."""
    X, labels, ids, source = part
    if len(X) < first:
        raise DatasetFormatError(f"{where} has {len(X)} rows; the protocol takes the first {first} of them",
                                 hint="the file is not the published one, or is truncated")
    return (X[:first], labels[:first], ids[:first], source), (X[first:], labels[first:], ids[first:], source)


def _paired_part(arrays: _Arrays, prefix: str, *, image_key: str, text_keys: Sequence[str], label_key: str,
                 text_label_key: str) -> dict[str, Part]:
    """Image and text rows of one split of a paired file (the text uses the image labels unless it has its own)."""
    text_key = arrays.first(text_keys)
    X_img, X_txt = arrays.features(image_key), arrays.features(text_key)
    if len(X_img) != len(X_txt):
        raise DatasetFormatError(f"{arrays.file}: {image_key!r} has {len(X_img)} rows but {text_key!r} has"
                                 f" {len(X_txt)}; paired data needs one text per image")
    y_img = arrays.labels(label_key, len(X_img), features_key=image_key)
    y_txt = arrays.labels(text_label_key, len(X_txt), features_key=text_key) if text_label_key in arrays else y_img
    ids = _rows(prefix, len(X_img))
    return {"image": (X_img, y_img, ids, f"{arrays.file}:{image_key}"),
            "text": (X_txt, y_txt, ids, f"{arrays.file}:{text_key}")}


def _load_paired_family(arrays: _Arrays, name: str, val_size: int) -> CrossModalDataset:
    """Wikipedia (wiki.mat or the *_corr_ae.h5py) and NUS-WIDE: ``{train,valid,test}_imgs_deep`` and friends."""

    def part(prefix: str) -> dict[str, Part]:
        return _paired_part(arrays, prefix, image_key=f"{prefix}_imgs_deep",
                            text_keys=[f"{prefix}_texts_doc", f"{prefix}_texts", f"{prefix}_text"],
                            label_key=f"{prefix}_imgs_labels", text_label_key=f"{prefix}_texts_labels")

    train, test = part("train"), part("test")
    if "valid_imgs_deep" in arrays:
        val = part("valid")
    else:
        pieces = {m: _split_rows(p, val_size, where=f"{p[3]} (test)") for m, p in test.items()}
        val, test = {m: v for m, (v, _) in pieces.items()}, {m: t for m, (_, t) in pieces.items()}
    return _dataset(name, {"train": train, "val": val, "test": test}, paired=True)


def _load_wiki(arrays: _Arrays) -> CrossModalDataset:
    return _load_paired_family(arrays, "wiki", WIKI_VAL_SIZE)


def _load_nus(arrays: _Arrays) -> CrossModalDataset:
    return _load_paired_family(arrays, "nus", NUS_VAL_SIZE)


def _load_inria(arrays: _Arrays) -> CrossModalDataset:
    splits = {
        split: _paired_part(arrays, prefix, image_key=f"{prefix}_img", text_keys=[f"{prefix}_txt"],
                            label_key=f"{prefix}_img_lab", text_label_key=f"{prefix}_txt_lab")
        for split, prefix in (("train", "tr"), ("val", "val"), ("test", "te"))
    }
    return _dataset("inria", splits, paired=True)


def _load_xmedia(arrays: _Arrays) -> CrossModalDataset:
    splits: dict[str, dict[str, Part]] = {"train": {}, "val": {}, "test": {}}
    for m, ((tr_x, te_x), (tr_y, te_y)) in XMEDIA_KEYS.items():
        for split, x_key, y_key in (("train", tr_x, tr_y), ("test", te_x, te_y)):
            X = arrays.features(x_key)
            y = arrays.labels(y_key, len(X), features_key=x_key)
            part = (X, y, _rows(f"{m}/{split}", len(X)), f"{arrays.file}:{x_key}")
            if split == "train":
                splits["train"][m] = part
            else:
                splits["test"][m], splits["val"][m] = _split_rows(part, XMEDIA_TEST_SIZES[m],
                                                                  where=f"{arrays.file}: key {x_key!r}")
    return _dataset("xmedia", splits, paired=False)


def _load_xmedianet(arrays: _Arrays) -> CrossModalDataset:
    splits: dict[str, dict[str, Part]] = {}
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        features, labels = arrays.cells(key, len(FIVE_VIEWS)), arrays.cells(f"{key}_labels", len(FIVE_VIEWS))
        splits[split] = {}
        for i, m in enumerate(FIVE_VIEWS):
            where = f"{arrays.file}: key {key!r} view {i} ({m})"
            X = _matrix(features[i], where)
            y = _raw_labels(labels[i], len(X), f"{arrays.file}: key {key + '_labels'!r} view {i}", f"{key}[{i}]")
            splits[split][m] = (X, y, _rows(f"{m}/{key}", len(X)), where)
    return _dataset("xmedianet", splits, paired=False)


def _load_wiki_sift_lda(arrays: _Arrays) -> CrossModalDataset:
    """Rasiwasia et al.'s Wikipedia features: ``I_tr``/``I_te`` 128-d SIFT, ``T_tr``/``T_te`` 10-d LDA, ``L_*`` 1..10.

    When the file sits next to ``trainset_txt_img_cat.list`` and ``testset_txt_img_cat.list`` (text id, image id,
    class per row, in array order), each pair's id is its text id (shared by the image, as paired ids are).
    """
    parts = {}
    for split, suffix in (("train", "tr"), ("test", "te")):
        part = _paired_part(arrays, split, image_key=f"I_{suffix}", text_keys=[f"T_{suffix}"], label_key=f"L_{suffix}",
                            text_label_key=f"L_{suffix}_txt")
        listing = arrays.file.parent / f"{split}set_txt_img_cat.list"
        if listing.is_file():
            pair_ids = _read_pair_list(listing, part["image"][1])
            part = {m: (X, y, pair_ids, source) for m, (X, y, _, source) in part.items()}
        parts[split] = part
    pieces = {m: _split_rows(p, WIKI_VAL_SIZE, where=f"{p[3]} (test)") for m, p in parts["test"].items()}
    splits = {"train": parts["train"], "val": {m: v for m, (v, _) in pieces.items()},
              "test": {m: t for m, (_, t) in pieces.items()}}
    return _dataset("wiki-sift-lda", splits, paired=True)


def _read_pair_list(listing: Path, labels: np.ndarray) -> np.ndarray:
    """The text ids of a ``text id<TAB>image id<TAB>class`` list; its classes must equal ``labels``."""
    rows = [line.split("\t") for line in listing.read_text().splitlines() if line.strip()]
    if len(rows) != len(labels) or any(len(r) != 3 for r in rows):
        raise DatasetFormatError(f"{listing}: expected {len(labels)} lines of 'text id, image id, class'")
    if not np.array_equal(np.array([int(r[2]) for r in rows]), labels):
        raise DatasetFormatError(f"{listing}: its classes disagree with the labels of the .mat file next to it")
    return np.array([r[0] for r in rows])


_LOADERS: dict[str, Callable[[_Arrays], CrossModalDataset]] = {
    "wiki": _load_wiki,
    "wiki-sift-lda": _load_wiki_sift_lda,
    "xmedia": _load_xmedia,
    "xmedianet": _load_xmedianet,
    "nus": _load_nus,
    "inria": _load_inria,
}


# ---------------------------------------------------------------------------------------------------------------------
# Writers: CrossModalDataset -> {key: array} in each published layout


def _label_array(fs: FeatureSet) -> np.ndarray:
    """(n, 1) int64 class ids or (n, C) uint8 multi-hot, as the files store them."""
    return fs.labels.astype(np.uint8) if fs.multilabel else fs.labels.reshape(-1, 1).astype(np.int64)


def _paired_arrays(splits: Mapping[str, Mapping[str, FeatureSet]], keys: Callable[[str], tuple[str, str, str, str]]
                   ) -> dict[str, np.ndarray]:
    """Arrays of paired splits; ``keys(prefix)`` gives (image, text, image labels, text labels) keys."""
    out: dict[str, np.ndarray] = {}
    for prefix, split in splits.items():
        image, text = split["image"], split["text"]
        if len(image) != len(text):
            raise DatasetFormatError(f"split {prefix!r}: {len(image)} images but {len(text)} texts; the format is"
                                     " paired (row i of each modality is one item)")
        img_key, txt_key, img_lab_key, txt_lab_key = keys(prefix)
        out[img_key], out[txt_key], out[img_lab_key] = image.X, text.X, _label_array(image)
        if not np.array_equal(image.labels, text.labels):
            out[txt_lab_key] = _label_array(text)
    return out


def _concat(first: FeatureSet, second: FeatureSet) -> FeatureSet:
    return FeatureSet(X=np.concatenate([first.X, second.X]), labels=np.concatenate([first.labels, second.labels]),
                      ids=np.concatenate([first.ids, second.ids]), num_classes=first.num_classes)


def _require_size(fs: FeatureSet, size: int, what: str) -> None:
    if len(fs) != size:
        raise DatasetFormatError(f"{what} has {len(fs)} items; the format fixes it at {size}",
                                 hint="make the dataset with that split size, or write another format")


def _write_wiki(ds: CrossModalDataset, container: Container, *, sift_lda: bool = False) -> dict[str, np.ndarray]:
    _require_size(ds.val["image"], WIKI_VAL_SIZE, "the validation split")
    test = {m: _concat(ds.val[m], ds.test[m]) for m in ("image", "text")}
    splits = {"train": ds.train, "test": test}
    if sift_lda:
        return _paired_arrays({"tr": ds.train, "te": test},
                              lambda p: (f"I_{p}", f"T_{p}", f"L_{p}", f"L_{p}_txt"))
    text = "text" if container == "hdf5" else "texts_doc"  # the h5py family names its text *_text
    return _paired_arrays(splits, lambda p: (f"{p}_imgs_deep", f"{p}_{text}", f"{p}_imgs_labels", f"{p}_texts_labels"))


def _write_nus(ds: CrossModalDataset, container: Container) -> dict[str, np.ndarray]:
    splits = {"train": ds.train, "valid": ds.val, "test": ds.test}
    return _paired_arrays(splits, lambda p: (f"{p}_imgs_deep", f"{p}_texts", f"{p}_imgs_labels", f"{p}_texts_labels"))


def _write_inria(ds: CrossModalDataset, container: Container) -> dict[str, np.ndarray]:
    splits = {"tr": ds.train, "val": ds.val, "te": ds.test}
    return _paired_arrays(splits, lambda p: (f"{p}_img", f"{p}_txt", f"{p}_img_lab", f"{p}_txt_lab"))


def _write_xmedia(ds: CrossModalDataset, container: Container) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for m, ((tr_x, te_x), (tr_y, te_y)) in XMEDIA_KEYS.items():
        _require_size(ds.test[m], XMEDIA_TEST_SIZES[m], f"the {m} test split")
        test = _concat(ds.test[m], ds.val[m])
        out[tr_x], out[tr_y] = ds.train[m].X, _label_array(ds.train[m])
        out[te_x], out[te_y] = test.X, _label_array(test)
    return out


def _cell(values: Sequence[np.ndarray]) -> np.ndarray:
    cell = np.empty((1, len(values)), dtype=object)
    for i, value in enumerate(values):
        cell[0, i] = value
    return cell


def _write_xmedianet(ds: CrossModalDataset, container: Container) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, split in (("train", ds.train), ("valid", ds.val), ("test", ds.test)):
        out[key] = _cell([split[m].X for m in FIVE_VIEWS])
        out[f"{key}_labels"] = _cell([_label_array(split[m]) for m in FIVE_VIEWS])
    return out


_WRITERS: dict[str, Callable[[CrossModalDataset, Any], dict[str, np.ndarray]]] = {
    "wiki": _write_wiki,
    "wiki-sift-lda": lambda ds, container: _write_wiki(ds, container, sift_lda=True),
    "xmedia": _write_xmedia,
    "xmedianet": _write_xmedianet,
    "nus": _write_nus,
    "inria": _write_inria,
}


def _canonical(dataset: str) -> str:
    name = ALIASES.get(dataset.lower(), dataset.lower())
    if name not in _LOADERS:
        raise UnknownNameError("benchmark", dataset, BENCHMARKS)
    return name
