"""MCCA: multiset canonical correlation analysis (regularised, closed form); plain CCA for two modalities.

References: J. R. Kettenring, "Canonical analysis of several sets of variables", Biometrika 58(3), 1971 (the SUMCOR
criterion); Allan Aasbjerg Nielsen, "Multiset canonical correlations analysis and multispectral, truly multitemporal
remote sensing data", IEEE Transactions on Image Processing 11(3), 2002. The SDML/DSCMR tables cite Rupnik and
Shawe-Taylor, "Multi-view canonical correlation analysis", 2010.

What is computed (specs/methods-detail.md §8): linear projections of each modality that maximise the summed correlation
across paired items, without labels. Centre each modality with its training mean, form the covariance blocks
``C_kl = X_k^T X_l / (n - 1)``, and solve the generalised eigenproblem ``A w = lambda B w`` with A the full block matrix
and B its block diagonal plus a ridge ``r_k = ridge * tr(C_kk) / d_k`` on each block (needed when d_k approaches n).
The top ``dim`` eigenvectors, split by modality, are the projections W_k; an item embeds as ``(x - mu_k) W_k``
(optionally scaled by ``lambda^eigen_power``) and is retrieved by cosine. With two modalities this is regularised CCA.

Choices here: ``dim`` defaults to C - 1 (capped by the total width); the tuples are the rows of a paired dataset, or,
for unpaired data, "repeated sampling": every labelled item of the largest modality with a random same-class item of
each other modality (so MCCA uses labels only to form tuples there); one joint space for all K modalities, not
pairwise CCAs. The cost is one dense eigenproblem of size sum_k d_k (fine up to a few thousand dimensions). Label noise
does not touch MCCA on paired data, which MRL's noise tables also show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import scipy.linalg
import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.errors import ConfigError
from crossmodal.featureset import FeatureSet
from crossmodal.methods.base import Callback, default_features, numpy_rng, register_method
from crossmodal.methods.paired import Pairing, class_matched, rows_are_paired
from crossmodal.model import CrossModalModel, FeatureIdentity


@dataclass(frozen=True)
class MCCAConfig(MethodConfig):
    epochs: int = 1  # unused: closed form (as are last_batch and patience)
    batch_size: int = 1  # unused: closed form
    dim: int | None = None  # projection dimension d (10-128 in the literature); None = C - 1
    ridge: float = 1e-3  # r_k = ridge * tr(C_kk) / d_k added to each diagonal block
    eigen_power: float = 0.0  # scale each projection by lambda^p (p = 0: unscaled)
    pairing: Pairing = "auto"  # rows (paired data), class (same-class tuples) or auto (rows when the ids match)


def multiset_cca(blocks: Sequence[np.ndarray], dim: int, *, ridge: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Regularised SUMCOR multiset CCA of row-aligned matrices.

    Args:
        blocks: K float (n, d_k) matrices, row i of each the same tuple, already centred.
        dim: number of projections d.
        ridge: relative ridge (r_k = ridge * tr(C_kk) / d_k).

    Returns:
        (K projections float64 (d_k, d), eigenvalues float64 (d,) in decreasing order).
    """
    n = len(blocks[0])
    X = np.hstack([np.asarray(b, dtype=np.float64) for b in blocks])
    A = X.T @ X / max(n - 1, 1)
    B = np.zeros_like(A)
    start = 0
    for b in blocks:
        d = b.shape[1]
        C_kk = A[start:start + d, start:start + d]
        B[start:start + d, start:start + d] = C_kk + ridge * max(np.trace(C_kk) / d, 1e-12) * np.eye(d)
        start += d
    values, vectors = scipy.linalg.eigh(A, B, subset_by_index=[len(A) - dim, len(A) - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    splits = np.cumsum([b.shape[1] for b in blocks])[:-1]
    return np.split(vectors, splits, axis=0), values


@register_method
class MCCA:
    name: ClassVar[str] = "mcca"
    Config: ClassVar[type[MCCAConfig]] = MCCAConfig

    def fit(self, train: Mapping[str, FeatureSet], val: Mapping[str, FeatureSet] | None, *, config: MCCAConfig,
            device: torch.device, features: Mapping[str, FeatureIdentity] | None = None,
            callbacks: Sequence[Callback] = (), checkpoint_dir: Path | None = None) -> CrossModalModel:
        modalities = list(train)
        if len(modalities) < 2:
            raise ConfigError(f"mcca needs at least two modalities, got {modalities}")
        rows = tuple_rows(train, config.pairing, seed=config.seed)
        num_classes = next(iter(train.values())).num_classes
        total = sum(train[m].dim for m in modalities)
        dim = min(config.dim or max(num_classes - 1, 1), total)
        means = {m: np.asarray(train[m].X, dtype=np.float64)[rows[m]].mean(axis=0) for m in modalities}
        blocks = [np.asarray(train[m].X, dtype=np.float64)[rows[m]] - means[m] for m in modalities]
        projections, values = multiset_cca(blocks, dim, ridge=config.ridge)
        scale = np.clip(values, 1e-12, None) ** config.eigen_power
        model = self.build_model(config, dict(features or default_features(train)), num_classes,
                                 {"dim": dim, "tuples": len(rows[modalities[0]])})
        with torch.no_grad():
            for m, W in zip(modalities, projections):
                W = W * scale
                layer = cast(nn.Linear, model.encoders[m])  # build_model makes each encoder one Linear
                layer.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
                layer.bias.copy_(torch.from_numpy((-means[m] @ W).astype(np.float32)))
        return model.to(device)

    @classmethod
    def build_model(cls, config: MCCAConfig, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return CrossModalModel(method=cls.name, config=config,
                               encoders={m: nn.Linear(f.dim, int(extra["dim"])) for m, f in features.items()},
                               features=features, num_classes=num_classes, extra=dict(extra))


def tuple_rows(train: Mapping[str, FeatureSet], pairing: Pairing, *, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each modality forming the n tuples: the rows themselves for paired data, else same-class
    tuples anchored on every labelled item of the largest modality (tuples lacking a class somewhere are dropped)."""
    modalities = list(train)
    first = train[modalities[0]]
    paired = all(rows_are_paired(first, train[m]) for m in modalities[1:])
    if pairing == "rows" or (pairing == "auto" and paired):
        if len({len(fs) for fs in train.values()}) != 1:
            raise ConfigError("pairing=rows needs as many rows in every modality",
                              hint="use pairing=class (same-class tuples) for unpaired data")
        return {m: np.arange(len(first)) for m in modalities}
    rng = numpy_rng(seed, "tuples")
    anchor = max(modalities, key=lambda m: len(train[m]))
    partners = {m: dict(zip(*(r.tolist() for r in class_matched(train[anchor], train[m], rng))))
                for m in modalities if m != anchor}
    keep = np.array(sorted(set.intersection(*(set(p) for p in partners.values()))), dtype=np.int64)
    if len(keep) < 2:
        raise ConfigError("too few same-class tuples across the modalities for MCCA",
                          hint="the modalities need labelled items of common classes")
    return {m: keep if m == anchor else np.array([partners[m][i] for i in keep], dtype=np.int64) for m in modalities}
