"""FeatureSet: the one thing that crosses from the store (or a benchmark file) into the methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crossmodal.errors import DatasetFormatError


@dataclass(frozen=True)
class FeatureSet:
    """Features of one modality and split.

    Attributes:
        X: float32 (n, d) features (may be memory-mapped).
        labels: int64 (n,) class indices in [0, num_classes) (single-label; -1 = unlabelled),
            or uint8 (n, num_classes) multi-hot (multi-label).
        ids: (n,) item ids (str).
        num_classes: C, the width of the label space.
    """

    X: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        validate_featureset(self)

    @classmethod
    def build(
        cls,
        X: np.ndarray,
        labels: np.ndarray,
        ids: Sequence[str] | np.ndarray | None = None,
        *,
        num_classes: int | None = None,
        source: str = "features",
    ) -> FeatureSet:
        """Build from raw arrays; converts dtypes and fills ids ``0..n-1`` when none are given."""
        X = np.asarray(X)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim == 1:
            labels = labels.astype(np.int64)
            inferred = int(labels.max()) + 1 if labels.size else 0
        else:
            labels = (labels > 0).astype(np.uint8)
            inferred = labels.shape[1]
        ids_arr = np.asarray([str(i) for i in range(len(X))] if ids is None else [str(i) for i in ids])
        if X.ndim != 2 or len(labels) != len(X) or len(ids_arr) != len(X):
            raise DatasetFormatError(
                f"{source}: {len(X)} feature rows, {len(labels)} labels and {len(ids_arr)} ids do not match"
                f" (features shape {X.shape})",
                hint="every item needs one feature row, one label and one id",
            )
        return cls(X=X, labels=labels, ids=ids_arr, num_classes=num_classes or inferred)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def label_matrix(self) -> np.ndarray:
        """float32 (n, C) one-hot (single-label) or multi-hot targets; unlabelled rows are all zero."""
        if self.multilabel:
            return self.labels.astype(np.float32)
        Y = np.zeros((len(self), self.num_classes), dtype=np.float32)
        ok = self.labels >= 0
        Y[np.flatnonzero(ok), self.labels[ok]] = 1.0
        return Y

    def subset(self, index: np.ndarray | slice) -> FeatureSet:
        return FeatureSet(X=self.X[index], labels=self.labels[index], ids=self.ids[index], num_classes=self.num_classes)

    def with_labels(self, labels: np.ndarray) -> FeatureSet:
        return FeatureSet(X=self.X, labels=labels, ids=self.ids, num_classes=self.num_classes)


def validate_featureset(fs: FeatureSet, *, source: str = "features") -> None:
    """Raise DatasetFormatError unless shapes, dtypes and label ranges agree."""
    if fs.X.ndim != 2:
        raise DatasetFormatError(f"{source}: features must be 2-D (n, dim), got shape {fs.X.shape}")
    n = fs.X.shape[0]
    if len(fs.labels) != n or len(fs.ids) != n:
        raise DatasetFormatError(
            f"{source}: {n} feature rows but {len(fs.labels)} labels and {len(fs.ids)} ids",
            hint="every item needs one feature row, one label and one id",
        )
    if fs.labels.ndim == 1 and n and int(fs.labels.max()) >= fs.num_classes:
        raise DatasetFormatError(f"{source}: label {int(fs.labels.max())} is outside 0..{fs.num_classes - 1}")
    if fs.labels.ndim == 2 and fs.labels.shape[1] != fs.num_classes:
        raise DatasetFormatError(
            f"{source}: multi-hot labels have {fs.labels.shape[1]} columns, expected {fs.num_classes}"
        )


Split = Mapping[str, FeatureSet]
"""One split of a dataset: modality -> FeatureSet."""


@dataclass(frozen=True)
class CrossModalDataset:
    """A benchmark or workspace dataset: modality -> FeatureSet per split, sharing one label space."""

    name: str
    train: dict[str, FeatureSet]
    val: dict[str, FeatureSet]
    test: dict[str, FeatureSet]
    paired: bool = False  # True when row i of every modality is the same item (Wikipedia, NUS-WIDE, INRIA)

    @property
    def modalities(self) -> list[str]:
        return list(self.train)

    @property
    def num_classes(self) -> int:
        return next(iter(self.train.values())).num_classes
