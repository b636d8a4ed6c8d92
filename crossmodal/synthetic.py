"""Synthetic cross-modal benchmarks: one shared class structure, seen by each modality through its own random view.

Generative model, per item i of class y_i:

* a latent point ``z_i = P[y_i, mode_i] + intra * e_i`` in R^latent_dim with ``e_i ~ N(0, I)``. Each class owns
  ``modes_per_class`` random prototypes that come in antipodal pairs (p, -p): a class's mean sits near the origin, so
  no linear function of z picks it out (an XOR pattern) while a nonlinear one can;
* for each modality m, a private nuisance ``u_im ~ N(0, I)`` (``nuisance_dim`` wide, scaled by ``nuisance``) that
  carries no class information;
* the features ``x_im = s_m * (W2_m relu(W1_m [z_i; u_im] + b1_m) + b2_m + noise * N(0, I))``: a random
  one-hidden-layer ReLU network per modality (its own weights and output width) with per-feature scales.

Each modality is a different nonlinear map of the latent space, so raw features of two modalities live in unrelated
spaces: cross-modal MAP of raw features is at chance. With the defaults (10 classes, 2,000 training items, widths 64
and 48) a linear classifier on one modality's features reaches about 0.7-0.8 test accuracy and a one-hidden-layer MLP
about 0.95, so a method has to learn nonlinear encoders to do well. With ``paired=True`` row i of every modality is
the same item (same z and label, its own nuisance and noise); otherwise each modality draws its own items.

Every random stream is derived from ``(seed, role, modality)``: the same seed gives the same arrays, and adding a
modality does not change the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from crossmodal.errors import ConfigError
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.types import canonical_modality

SPLITS = ("train", "val", "test")

SYNTHETIC_SETS: dict[str, dict] = {  # name -> make_synthetic arguments: class-structured sets shaped as the benchmarks
    "synthetic": {"dims": {"image": 64, "text": 32}, "num_classes": 10, "n_train": 800, "n_val": 200, "n_test": 400,
                  "paired": True, "seed": 0},
    "synthetic-xmedia": {"dims": {"image": 64, "text": 48, "audio": 29, "mesh": 47, "video": 64}, "num_classes": 20,
                         "n_train": 600, "n_val": 100, "n_test": 200, "paired": False, "seed": 0},
}
"""The named synthetic sets ``crossmodal benchmark`` and ``crossmodal train`` take as ``--dataset``."""

__all__ = ["SYNTHETIC_SETS", "make_synthetic"]


def make_synthetic(
    dims: Mapping[str, int],
    num_classes: int,
    n_train: int,
    n_val: int,
    n_test: int,
    *,
    seed: int,
    paired: bool = True,
    latent_dim: int = 16,
    modes_per_class: int = 2,
    intra: float = 0.6,
    nuisance_dim: int = 8,
    nuisance: float = 1.0,
    noise: float = 0.1,
    multilabel: bool = False,
    name: str = "synthetic",
) -> CrossModalDataset:
    """Make a class-structured dataset with one nonlinear random view per modality.

    Args:
        dims: modality -> feature width, e.g. ``{"image": 64, "text": 32}`` (``3d`` is accepted for mesh).
        num_classes: C, the number of classes (>= 2).
        n_train, n_val, n_test: items per split (per modality). Classes are balanced: counts differ by at most one.
        seed: the one seed every stream derives from.
        paired: True = row i of every modality is the same item (shared ids ``"<split>/<i>"``); False = independent
            items per modality (ids ``"<modality>/<split>/<i>"``).
        latent_dim: width of the shared latent space.
        modes_per_class: prototypes per class, in antipodal pairs (1 = one convex blob per class, linearly easy).
        intra: standard deviation of the intra-class variation, relative to the unit-variance prototypes.
        nuisance_dim: width of each modality's private, class-free latent.
        nuisance: scale of that private latent (0 removes it).
        noise: standard deviation of the additive feature noise, relative to each feature's spread.
        multilabel: False = one class per item (int64 labels); True = one balanced class plus, for half of the items, a
            second one, with uint8 multi-hot labels (the latent is the mean of the two classes' prototypes).
        name: the dataset's name.

    Returns:
        A CrossModalDataset with float32 features.

    Raises:
        ConfigError: a modality name, width, class count or split size is invalid.
    """
    dims = {canonical_modality(m): int(d) for m, d in dims.items()}
    if not dims or min(dims.values()) < 1:
        raise ConfigError(f"dims must map at least one modality to a positive width, got {dims}")
    if num_classes < 2 or min(n_train, n_val, n_test) < 0 or modes_per_class < 1 or latent_dim < 1:
        raise ConfigError(f"invalid synthetic sizes: num_classes={num_classes}, n=({n_train}, {n_val}, {n_test}),"
                          f" modes_per_class={modes_per_class}, latent_dim={latent_dim}",
                          hint="need num_classes >= 2, split sizes >= 0, modes_per_class >= 1, latent_dim >= 1")
    prototypes = _rng(seed, "prototypes").standard_normal((num_classes, modes_per_class, latent_dim))
    prototypes[:, 1::2] = -prototypes[:, 0::2][:, : modes_per_class // 2]  # antipodal pairs (see the module doc)
    views = {m: _View.random(_rng(seed, "view", m), latent_dim + nuisance_dim, dim) for m, dim in dims.items()}
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test)))
    out: dict[str, dict[str, FeatureSet]] = {}
    for split, n in sizes.items():
        out[split] = {}
        for m, view in views.items():
            item_rng = _rng(seed, "items", split) if paired else _rng(seed, "items", split, m)
            labels, z = _items(item_rng, prototypes, n, intra=intra, multilabel=multilabel)
            own = _rng(seed, "nuisance", split, m)
            u = nuisance * own.standard_normal((n, nuisance_dim))
            X = view(np.concatenate([z, u], axis=1), own, noise=noise)
            ids = [f"{split}/{i}" if paired else f"{m}/{split}/{i}" for i in range(n)]
            out[split][m] = FeatureSet.build(X, labels, ids, num_classes=num_classes, source=f"{name}:{split}:{m}")
    return CrossModalDataset(name=name, train=out["train"], val=out["val"], test=out["test"], paired=paired)


def _rng(seed: int, *roles: str) -> np.random.Generator:
    """An independent generator for ``(seed, roles...)``; names are hashed so the streams do not depend on order."""
    return np.random.default_rng([seed, *(zlib.crc32(role.encode()) for role in roles)])


def _items(rng: np.random.Generator, prototypes: np.ndarray, n: int, *, intra: float,
           multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, latent z float64 (n, latent_dim)) of n items with balanced primary classes."""
    num_classes, modes, latent_dim = prototypes.shape
    primary = rng.permutation(np.arange(n) % num_classes)
    centre = prototypes[primary, rng.integers(0, modes, n)]
    labels: np.ndarray = primary
    if multilabel:
        second = (primary + rng.integers(1, num_classes, n)) % num_classes  # a different class
        has_second = rng.random(n) < 0.5
        centre = np.where(has_second[:, None], (centre + prototypes[second, rng.integers(0, modes, n)]) / 2, centre)
        labels = np.zeros((n, num_classes), dtype=np.uint8)
        labels[np.arange(n), primary] = 1
        labels[np.flatnonzero(has_second), second[has_second]] = 1
    return labels, centre + intra * rng.standard_normal((n, latent_dim))


class _View:
    """A modality's random nonlinear map from the latent (plus nuisance) space to its feature space."""

    def __init__(self, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray, scale: np.ndarray):
        self.W1, self.b1, self.W2, self.b2, self.scale = W1, b1, W2, b2, scale

    @classmethod
    def random(cls, rng: np.random.Generator, in_dim: int, out_dim: int) -> _View:
        hidden = max(2 * out_dim, 4 * in_dim)
        W1 = rng.standard_normal((in_dim, hidden)) / np.sqrt(in_dim)
        b1 = 0.5 * rng.standard_normal(hidden)
        W2 = rng.standard_normal((hidden, out_dim)) / np.sqrt(hidden)
        b2 = rng.standard_normal(out_dim)
        # One overall magnitude per modality (CNN activations vs topic proportions) times a spread per feature.
        scale = np.exp(rng.normal(0.0, 1.0) + rng.normal(0.0, 0.3, out_dim))
        return cls(W1, b1, W2, b2, scale)

    def __call__(self, latent: np.ndarray, rng: np.random.Generator, *, noise: float) -> np.ndarray:
        x = (np.maximum(latent @ self.W1 + self.b1, 0.0) @ self.W2 + self.b2) * self.scale
        x += noise * self.scale * rng.standard_normal(x.shape)
        return x.astype(np.float32)
