"""Reproducible noise injection into a training split: label noise and alignment (correspondence) noise.

Label noise follows the protocol of the noisy-label cross-modal papers (MRL, Hu et al., CVPR 2021, whose public code
defines it), applied to each modality independently:

* symmetric: exactly ``round(rate * n)`` labelled items, chosen at random, get a label drawn uniformly from the C
  classes. About 1/C of them keep their true label by chance, so the *effective* rate (labels actually changed) is
  about ``rate * (C - 1) / C``; ``noise_report`` measures it. (MRL's code draws from C + 1 values, an off-by-one that is
  not copied here.)
* asymmetric: a fixed random pairing maps half of the classes onto the other half (class a -> class b); exactly
  ``round(rate * n_a)`` items of each mapped class a take label b.

Alignment noise is for paired data (row i of every modality is one item), as in RCAR (Guo and Ding, FITEE 2023):
exactly ``round(rate * n)`` rows get a wrong partner. RCAR names two kinds; their exact definitions were not readable,
so the toolkit's class-aware reading (specs/methods-detail.md §3.4) is used and labelled as ours:

* ``partial``: the partner is another instance of the same class (semantically near: harmless for class-level MAP,
  harmful for instance-level recall);
* ``complete``: the partner belongs to another class.

A misaligned row keeps its id and its label: the label belongs to the pair record (Wikipedia stores one label per pair),
so under ``complete`` noise the moved partner also carries a label that is wrong for its content. Partners are drawn
with replacement, so the returned index map is not always a bijection.

Validation and test splits are never corrupted: ``corrupt`` takes and returns the training split only.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from crossmodal.errors import ConfigError
from crossmodal.featureset import FeatureSet

AlignmentKind = Literal["partial", "complete"]
LabelNoiseKind = Literal["symmetric", "asymmetric"]


def symmetric_label_noise(labels: np.ndarray, num_classes: int, rate: float, *, seed: int) -> np.ndarray:
    """Replace the labels of exactly ``round(rate * n_labelled)`` items by labels drawn uniformly from C classes.

    Args:
        labels: int64 (n,) class indices; -1 (unlabelled) items are never chosen.
        num_classes: C.
        rate: fraction r in [0, 1] of the labelled items that are re-drawn.
        seed: seeds the choice of items and the new labels.

    Returns:
        int64 (n,) noisy labels (a new array).

    Raises:
        ConfigError: the rate is outside [0, 1] or the labels are multi-hot.
    """
    labels = _single_label(labels, "symmetric label noise")
    rng = np.random.default_rng(seed)
    chosen = _choose(np.flatnonzero(labels >= 0), _check_rate(rate), rng)
    noisy = labels.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return noisy


def asymmetric_label_noise(labels: np.ndarray, num_classes: int, rate: float, *, seed: int) -> np.ndarray:
    """Flip exactly ``round(rate * n_a)`` items of each mapped class a to its paired class b.

    The pairing is a seeded random permutation of the classes whose first half maps onto its second half (with an odd
    C the last class is left alone).

    Args:
        labels: int64 (n,) class indices (-1 = unlabelled, never flipped).
        num_classes: C.
        rate: fraction r in [0, 1] of each mapped class that flips.
        seed: seeds the class pairing and the choice of items.

    Returns:
        int64 (n,) noisy labels.
    """
    labels = _single_label(labels, "asymmetric label noise")
    rate = _check_rate(rate)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    half = num_classes // 2
    noisy = labels.copy()
    for a, b in zip(order[:half], order[half : 2 * half]):
        chosen = _choose(np.flatnonzero(labels == a), rate, rng)
        noisy[chosen] = b
    return noisy


def alignment_noise(labels: np.ndarray, kind: AlignmentKind, rate: float, *, seed: int) -> np.ndarray:
    """Give exactly ``round(rate * n)`` rows of a paired set a wrong partner.

    Args:
        labels: the pairs' labels, int64 (n,) or uint8 multi-hot (n, C). Two rows are "the same class" when they share
            a label. Unlabelled rows (-1 or all-zero) are never moved.
        kind: ``"partial"`` (partner from the same class, another row) or ``"complete"`` (partner from another class).
        rate: fraction r in [0, 1] of the rows that get a wrong partner.
        seed: seeds the choice of rows and partners.

    Returns:
        int64 (n,) partner index: row i of the partner modality takes the features of row ``partner[i]``;
        ``partner[i] == i`` for the untouched rows and ``partner[i] != i`` for exactly ``round(rate * n)`` rows.

    Raises:
        ConfigError: unknown kind, or some chosen row has no eligible partner (a class with a single item under
            ``partial``, a single class under ``complete``).
    """
    if kind not in ("partial", "complete"):
        raise ConfigError(f"unknown alignment noise {kind!r}", hint="use partial or complete")
    labels = np.asarray(labels)
    Y = labels.astype(bool) if labels.ndim == 2 else _one_hot(labels)
    labelled = np.flatnonzero(Y.any(axis=1))
    rng = np.random.default_rng(seed)
    chosen = _choose(labelled, _check_rate(rate), rng)
    partner = np.arange(len(labels), dtype=np.int64)
    if labels.ndim == 1:
        for c in np.unique(labels[chosen]):
            rows = chosen[labels[chosen] == c]
            members = np.flatnonzero(labels == c)
            pool = members if kind == "partial" else np.setdiff1d(labelled, members)
            _check_pool(kind, len(pool) - (kind == "partial"), rows[0])
            if kind == "partial":  # draw among the m - 1 other members: skip the row's own position
                draw = rng.integers(len(pool) - 1, size=len(rows))
                partner[rows] = pool[draw + (draw >= np.searchsorted(pool, rows))]
            else:
                partner[rows] = pool[rng.integers(len(pool), size=len(rows))]
        return partner
    Yf = Y.astype(np.float32)
    for i in chosen:  # multi-hot: "same class" = sharing a label, decided row by row
        shares = (Yf[labelled] @ Yf[i]) > 0
        pool = labelled[shares & (labelled != i)] if kind == "partial" else labelled[~shares]
        _check_pool(kind, len(pool), i)
        partner[i] = pool[rng.integers(len(pool))]
    return partner


_alignment_noise = alignment_noise  # corrupt() has a keyword argument of the same name


def _check_pool(kind: str, size: int, row: int) -> None:
    if size <= 0:
        raise ConfigError(
            f"{kind} alignment noise: row {row} has no partner "
            + ("of its class other than itself" if kind == "partial" else "of another class"),
            hint="every class needs two items for partial noise, and two classes for complete noise",
        )


@dataclass(frozen=True)
class NoiseReport:
    """Effective noise of a corrupted training split, measured against the clean one.

    Attributes:
        label: modality -> fraction of labelled items whose label changed.
        alignment: modality -> fraction of rows whose features were replaced by another row's.
    """

    label: dict[str, float]
    alignment: dict[str, float]


def corrupt(
    train: Mapping[str, FeatureSet],
    *,
    label_noise: float = 0.0,
    label_noise_kind: LabelNoiseKind = "symmetric",
    alignment_noise: tuple[AlignmentKind, float] | None = None,
    seed: int,
    paired: bool,
) -> dict[str, FeatureSet]:
    """Corrupt a training split (never the validation or test split) reproducibly.

    Label noise is applied to each modality independently (its own seed derived from ``seed`` and the modality name).
    Alignment noise keeps the first modality as the anchor and gives every other modality its own wrong partners; a
    moved row keeps its id and the pair's label (see the module docstring).

    Args:
        train: modality -> FeatureSet of the training split.
        label_noise: rate r of label noise (0 = none).
        label_noise_kind: ``"symmetric"`` or ``"asymmetric"``.
        alignment_noise: ``(kind, rate)`` for paired data, or None.
        seed: the noise seed.
        paired: whether row i of every modality is the same item; alignment noise needs it.

    Returns:
        modality -> corrupted FeatureSet (new arrays; the input is not modified).

    Raises:
        ConfigError: alignment noise on unpaired data, or an invalid rate or kind.
    """
    out = dict(train)
    if alignment_noise is not None and alignment_noise[1] > 0:
        kind, rate = alignment_noise
        if not paired:
            raise ConfigError(
                "alignment noise needs paired data (row i of every modality is one item)",
                hint="use --noise-kind label on unpaired datasets",
            )
        anchor, *partners = list(out)
        for modality in partners:
            fs = out[modality]
            index = _alignment_noise(out[anchor].labels, kind, rate, seed=_derive(seed, "align", modality))
            out[modality] = FeatureSet(X=fs.X[index], labels=fs.labels, ids=fs.ids, num_classes=fs.num_classes)
    if label_noise > 0:
        flip = {"symmetric": symmetric_label_noise, "asymmetric": asymmetric_label_noise}.get(label_noise_kind)
        if flip is None:
            raise ConfigError(f"unknown label noise {label_noise_kind!r}", hint="use symmetric or asymmetric")
        for modality, fs in out.items():
            noisy = flip(fs.labels, fs.num_classes, label_noise, seed=_derive(seed, "label", modality))
            out[modality] = fs.with_labels(noisy)
    return out


def noise_report(clean: Mapping[str, FeatureSet], noisy: Mapping[str, FeatureSet]) -> NoiseReport:
    """Measure the label and alignment noise actually present in ``noisy`` relative to ``clean``."""
    label, alignment = {}, {}
    for modality, fs in clean.items():
        other = noisy[modality]
        changed = fs.labels != other.labels
        if changed.ndim == 2:
            changed = changed.any(axis=1)
        labelled = fs.labels.any(axis=1) if fs.multilabel else fs.labels >= 0
        label[modality] = float(changed[labelled].mean()) if labelled.any() else 0.0
        moved = np.any(np.asarray(fs.X) != np.asarray(other.X), axis=1)
        alignment[modality] = float(moved.mean()) if len(moved) else 0.0
    return NoiseReport(label=label, alignment=alignment)


def _derive(seed: int, *parts: str) -> int:
    """A per-purpose seed: the same run seed gives independent streams per modality and noise kind."""
    return (seed * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**32)


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"noise rate {rate} is outside [0, 1]", hint="give a fraction, e.g. 0.4")
    return float(rate)


def _choose(candidates: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate * len(candidates))`` of the candidates, without replacement, in sorted order."""
    k = int(round(rate * len(candidates)))
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]


def _single_label(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(
            f"{what} is defined for single-label data; these labels are multi-hot {labels.shape}",
            hint="use alignment noise on multi-label datasets",
        )
    return labels.astype(np.int64)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    labels = labels.astype(np.int64)
    Y = np.zeros((len(labels), int(labels.max(initial=-1)) + 1), dtype=bool)
    ok = labels >= 0
    Y[np.flatnonzero(ok), labels[ok]] = True
    return Y
