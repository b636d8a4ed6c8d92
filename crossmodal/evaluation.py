"""Evaluate a model as the papers do: MAP@all and MAP@k for every ordered pair of modalities, their average, PR curves.

Queries are the test split of one modality and the gallery the test split of another (specs/drcl.md §6.1); the
metrics and their conventions are those of ``crossmodal.metrics``. Each modality's test set is embedded once (or once
per partner, for methods that train one encoder per pair).

``label_regression_embeddings`` is the linear baseline the quality tests and benchmarks compare against.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from crossmodal.errors import DatasetFormatError
from crossmodal.featureset import FeatureSet
from crossmodal.metrics import chance_map, map_at_k, metric_name, pr_curve
from crossmodal.model import CrossModalModel
from crossmodal.types import MODALITIES

PR_RECALL_POINTS = np.linspace(0.0, 1.0, 21)  # recall levels of the saved precision-recall curves


def evaluate(model: CrossModalModel, test: Mapping[str, FeatureSet], ks: Sequence[int | None] = (None, 50), *,
             pr_curves: bool = True) -> dict[str, Any]:
    """MAP@k of every ordered pair of the model's modalities present in ``test``, the average, and PR curves.

    Args:
        model: a trained model; modalities of ``test`` it has no encoder for are left out.
        test: modality -> test FeatureSet (features from the extractor recorded in the model).
        ks: cut-offs; None = MAP@all.
        pr_curves: also compute the interpolated precision at PR_RECALL_POINTS for every pair.

    Returns:
        ``{"pairs": [{"query", "target", "queries", "gallery", "MAP@all", "MAP@50", "chance": {"MAP@all", "MAP@50"}}
        ...], "average": {"MAP@all", "MAP@50"}, "chance": {"MAP@all", "MAP@50"}, "pr": {"image->text": {"recall":
        [...], "precision": [...]}}}`` (JSON-serialisable): ``queries``/``gallery`` are the pair's test sizes and
        ``chance`` the MAP a random ranking scores on those labels (``crossmodal.metrics.chance_map``).

    Raises:
        DatasetFormatError: fewer than two of the model's modalities are in ``test``.
    """
    # Canonical modality order, so a table reads the same whatever order the test split or the card listed them in.
    modalities = sorted((m for m in test if m in model.features),
                        key=lambda m: MODALITIES.index(m) if m in MODALITIES else len(MODALITIES))
    cache: dict[str, np.ndarray] = {}

    def embed(modality: str, partner: str) -> np.ndarray:
        key = f"{modality}__{partner}" if f"{modality}__{partner}" in model.encoders else modality
        if key not in cache:
            cache[key] = model.encode(modality, test[modality].X, against=partner)
        return cache[key]

    return _evaluate(modalities, lambda q, g: (embed(q, g), embed(g, q)), test, ks, pr_curves)


def evaluate_embeddings(embeddings: Mapping[str, np.ndarray], test: Mapping[str, FeatureSet],
                        ks: Sequence[int | None] = (None, 50), *, pr_curves: bool = False) -> dict[str, Any]:
    """``evaluate`` for embeddings computed elsewhere (baselines): modality -> float32 (n_m, d) rows of ``test``."""
    return _evaluate(list(embeddings), lambda q, g: (embeddings[q], embeddings[g]), test, ks, pr_curves)


def label_regression_embeddings(train: Mapping[str, FeatureSet], test: Mapping[str, FeatureSet], *,
                                ridge: float = 1e-3) -> dict[str, np.ndarray]:
    """Linear baseline: per modality, the ridge regression of one-hot labels on the features, applied to ``test``.

    Each modality gets ``B_k = argmin |[X_k 1] B - Y|^2 + ridge * n * |B|^2`` on its own training split (features
    standardised first), so every modality lands in the shared C-dimensional label space; retrieval then ranks by
    cosine there. It is the linear counterpart of DRCL's per-modality MLP towards a fixed label-derived target.

    Returns:
        modality -> float32 (n_test, C) embeddings.
    """
    out = {}
    for m, fs in test.items():
        tr = train[m]
        Y = tr.label_matrix()
        keep = Y.sum(axis=1) > 0
        X = np.asarray(tr.X, dtype=np.float64)[keep]
        mean, std = X.mean(axis=0), X.std(axis=0) + 1e-8
        A = np.hstack([(X - mean) / std, np.ones((len(X), 1))])
        B = np.linalg.solve(A.T @ A + ridge * len(X) * np.eye(A.shape[1]), A.T @ Y[keep])
        At = np.hstack([(np.asarray(fs.X, dtype=np.float64) - mean) / std, np.ones((len(fs), 1))])
        out[m] = (At @ B).astype(np.float32)
    return out


def _evaluate(modalities: Sequence[str], pair_embeddings: Callable[[str, str], tuple[np.ndarray, np.ndarray]],
              test: Mapping[str, FeatureSet], ks: Sequence[int | None], pr_curves: bool) -> dict[str, Any]:
    if len(modalities) < 2:
        raise DatasetFormatError(f"cross-modal evaluation needs two modalities with test items, got {list(modalities)}",
                                 hint="give the test split of at least two of the model's modalities")
    rows: list[dict[str, Any]] = []
    pr: dict[str, dict[str, list[float]]] = {}
    for q, g in itertools.permutations(modalities, 2):
        queries, gallery = pair_embeddings(q, g)
        args = (queries, test[q].labels, gallery, test[g].labels)
        rows.append({"query": q, "target": g, "queries": len(queries), "gallery": len(gallery),
                     **{metric_name(k): map_at_k(*args, k) for k in ks},
                     "chance": {metric_name(k): chance_map(test[q].labels, test[g].labels, k) for k in ks}})
        if pr_curves:
            precision, recall = pr_curve(*args, recall_points=PR_RECALL_POINTS)
            pr[f"{q}->{g}"] = {"recall": recall.tolist(), "precision": precision.tolist()}
    average = {metric_name(k): float(np.mean([r[metric_name(k)] for r in rows])) for k in ks}
    chance = {metric_name(k): float(np.mean([r["chance"][metric_name(k)] for r in rows])) for k in ks}
    result: dict[str, Any] = {"pairs": rows, "average": average, "chance": chance}
    if pr_curves:
        result["pr"] = pr
    return result
