"""Retrieval metrics as the DRCL authors compute them: MAP@k, precision@k and precision-recall curves.

Conventions (specs/drcl.md §6, which follow the authors' evaluation code):

* The gallery is ranked by cosine similarity to the query (both sides are L2-normalised here, so raw features work).
* **Single-label** (labels ``int (n,)``): relevant means the same label. AP@k is normalised by the number of relevant
  items **within the top k** (not in the whole gallery). A query with no relevant item in its top k has AP = 0 and is
  included in the mean. ``k=None`` means the whole gallery.
* **Multi-label** (labels multi-hot ``(n, C)`` with C > 1): relevant means sharing at least one label. AP@k is computed
  the same way, but queries with no relevant item in the top k are **skipped** (not counted as 0). Quirk of the
  reference code: for ``k=None`` ("@all") k is set to the **number of queries**, not the gallery size. This is the
  default (``multilabel_all="num_queries"``) so published numbers reproduce; pass ``multilabel_all="gallery"`` for the
  usual definition. The two only differ when the query and gallery counts differ.
* Labels < 0 (unlabelled) are never relevant to anything.

Ties. The reference ranks with numpy's default (unstable) quicksort of cosine distances. Here ties are broken by gallery
position (a stable ranking), which is deterministic and makes the vectorised code equal to a naive loop; on the authors'
published Wikipedia embeddings it reproduces their logged MAP to within 1e-4 (the last digit depends on the tie
order and on float32 vs float64 cosines).

Everything is vectorised and chunked over queries: a chunk holds about ``2**22`` similarities, so memory stays bounded
whatever the gallery size; MAP@all of 5,000 queries against 5,000 items (512-d) took 0.8 s per pair on a 2-core CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np

from crossmodal.errors import DatasetFormatError, FeatureMismatchError

MultilabelAll = Literal["num_queries", "gallery"]

CHUNK_ELEMENTS = 1 << 22  # similarities held at once (16 MiB of float32, 32 MiB of int64 sort keys)

__all__ = [
    "all_pairs_map",
    "average_precisions",
    "chance_map",
    "expected_average_precision",
    "map_at_k",
    "mean_map",
    "metric_name",
    "pairs_table",
    "pr_curve",
    "precision_at_k",
    "top_k",
]


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def map_at_k(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int | None = None,
    *,
    multilabel_all: MultilabelAll = "num_queries",
    chunk_size: int | None = None,
) -> float:
    """Mean average precision of the top ``k`` gallery items for each query, ranked by cosine similarity.

    Args:
        queries: float (nq, d) query embeddings (any norm; normalised here).
        query_labels: int (nq,) class ids (also accepts (nq, 1) or (1, nq)), or multi-hot (nq, C).
        gallery: float (ng, d) gallery embeddings.
        gallery_labels: labels of the gallery, in the same form as ``query_labels``.
        k: rank cut-off; None = all (see the module docstring for the multi-label quirk).
        multilabel_all: what k=None means for multi-label data: "num_queries" (reference code) or "gallery".
        chunk_size: queries per chunk; default keeps about 4M similarities in memory at once.

    Returns:
        MAP as a Python float in [0, 1].

    Raises:
        FeatureMismatchError: queries and gallery have different widths.
        DatasetFormatError: labels do not match the rows, mix single- and multi-label, or features are not finite.
    """
    ap = average_precisions(queries, query_labels, gallery, gallery_labels, k,
                            multilabel_all=multilabel_all, chunk_size=chunk_size)
    counted = ap[~np.isnan(ap)]
    return float(counted.mean()) if counted.size else 0.0


def average_precisions(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int | None = None,
    *,
    multilabel_all: MultilabelAll = "num_queries",
    chunk_size: int | None = None,
) -> np.ndarray:
    """AP@k of every query (arguments as in :func:`map_at_k`).

    Returns:
        float64 (nq,). Single-label queries with no relevant item in the top k get 0. Multi-label queries with no
        relevant item in the top k are NaN: the multi-label convention leaves them out of the mean.
    """
    task = _Task.build(queries, query_labels, gallery, gallery_labels)
    kk = task.cutoff(k, multilabel_all)
    out = np.empty(task.nq, dtype=np.float64)
    for rows, rel, _ in task.ranked_relevance(kk, chunk_size):
        ap, hits = _ap_from_relevance(rel)
        if task.multilabel:
            ap[hits == 0] = np.nan
        out[rows] = ap
    return out


def precision_at_k(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    *,
    chunk_size: int | None = None,
) -> float:
    """Mean over all queries of (relevant items in the top k) / k; k is capped at the gallery size.

    Args: as in :func:`map_at_k`, with k a positive int.

    Returns:
        precision@k as a Python float.
    """
    task = _Task.build(queries, query_labels, gallery, gallery_labels)
    kk = task.cutoff(k, "gallery")
    total = 0.0
    for _, rel, _ in task.ranked_relevance(kk, chunk_size):
        total += float(rel.sum()) / kk
    return total / task.nq


def pr_curve(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int | None = None,
    *,
    recall_points: Sequence[float] | np.ndarray | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every rank 1..k, averaged over the queries that have a relevant item in the gallery.

    Recall at rank r is (relevant items in the top r) / (relevant items in the whole gallery).

    Args:
        queries, query_labels, gallery, gallery_labels: as in :func:`map_at_k`.
        k: deepest rank (None = the whole gallery).
        recall_points: if given (e.g. ``np.linspace(0, 1, 11)``), return instead the interpolated precision at these
            recall levels: per query, the best precision at any rank whose recall is at least the level (0 when the
            level is not reached within k), then averaged.

    Returns:
        ``(precision, recall)``: float64 (k,) each; or float64 (P,) precision and the (P,) recall points.
    """
    task = _Task.build(queries, query_labels, gallery, gallery_labels)
    kk = task.cutoff(k, "gallery")
    points = None if recall_points is None else np.asarray(recall_points, dtype=np.float64)
    width = kk if points is None else len(points)
    precision_sum = np.zeros(width, dtype=np.float64)
    recall_sum = np.zeros(width, dtype=np.float64)
    counted = 0
    ranks = np.arange(1, kk + 1, dtype=np.float64)
    for _, rel, total in task.ranked_relevance(kk, chunk_size):
        keep = total > 0
        if not keep.any():
            continue
        hits = np.cumsum(rel[keep], axis=1, dtype=np.float64)
        precision = hits / ranks
        recall = hits / total[keep, None]
        counted += int(keep.sum())
        if points is None:
            precision_sum += precision.sum(axis=0)
            recall_sum += recall.sum(axis=0)
            continue
        # Interpolated precision: the best precision from this rank on (a running max from the right).
        best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        best_after = np.concatenate([best_after, np.zeros((len(best_after), 1))], axis=1)  # level never reached -> 0
        # the first rank reaching each level, one level at a time (a rows x ranks x levels mask is 21x the ranking)
        first = np.stack([(recall < p - 1e-12).sum(axis=1) for p in points], axis=1)
        precision_sum += np.take_along_axis(best_after, first, axis=1).sum(axis=0)
    if points is not None:
        return precision_sum / max(counted, 1), points
    return precision_sum / max(counted, 1), recall_sum / max(counted, 1)


def all_pairs_map(
    embeddings: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    k: int | None = None,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    multilabel_all: MultilabelAll = "num_queries",
    chunk_size: int | None = None,
) -> dict[tuple[str, str], float]:
    """MAP@k for every ordered pair of modalities (queries of one, gallery of another), as in the papers' tables.

    Args:
        embeddings: modality -> float (n_m, d) test embeddings in the common space.
        labels: modality -> labels of those rows (int (n_m,) or multi-hot (n_m, C)).
        k: rank cut-off, None = all.
        pairs: the (query, gallery) pairs to compute; default all K(K-1) ordered pairs in the mappings' order.

    Returns:
        {(query_modality, gallery_modality): MAP}. :func:`mean_map` gives the average the papers report.
    """
    pairs = list(pairs) if pairs is not None else list(itertools.permutations(embeddings, 2))
    unit = {m: _unit_rows(embeddings[m], m) for m in {m for pair in pairs for m in pair}}
    return {(q, g): map_at_k(unit[q], labels[q], unit[g], labels[g], k, multilabel_all=multilabel_all,
                             chunk_size=chunk_size) for q, g in pairs}


def mean_map(results: Mapping[tuple[str, str], float]) -> float:
    """The mean over all pairs of an :func:`all_pairs_map` result (the papers' "Avg." column)."""
    return float(np.mean(list(results.values()))) if results else 0.0


def chance_map(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k: int | None = None,
    *,
    multilabel_all: MultilabelAll = "num_queries",
) -> float:
    """The MAP@k a uniformly random ranking of the gallery scores on these labels (the level a table reads against).

    Each query's relevant count R (same label; for multi-label, sharing any label) gives its expected AP@k in closed
    form (:func:`expected_average_precision`), with the conventions of :func:`map_at_k`: the same cut-off (including
    the multi-label "@all" quirk), single-label queries without a relevant item in the top k counting 0. For
    multi-label data, whose queries without a hit are left out of the mean, the result is the ratio
    ``sum E[AP 1(hit)] / sum P(hit)`` over the queries: the large-sample value of that mean (exact when every query
    surely has a hit, as at @all).

    Args:
        query_labels, gallery_labels: as in :func:`map_at_k` (no embeddings: a random ranking needs none).
        k: rank cut-off; None = all.
        multilabel_all: as in :func:`map_at_k`.

    Returns:
        A Python float in [0, 1] (0 when no query has a relevant item).

    Raises:
        DatasetFormatError: labels of different kinds, or no queries or gallery items.
    """
    nq, ng = len(np.asarray(query_labels)), len(np.asarray(gallery_labels))
    q_lab, g_lab = _checked_labels(query_labels, gallery_labels, nq, ng)
    multilabel = q_lab.ndim == 2
    kk = _cutoff(k, nq=nq, ng=ng, multilabel=multilabel, multilabel_all=multilabel_all)
    if multilabel:
        step = max(1, CHUNK_ELEMENTS // ng)
        relevant = np.concatenate([((q_lab[s:s + step].astype(np.float32) @ g_lab.T.astype(np.float32)) > 0).sum(1)
                                   for s in range(0, nq, step)])
    else:
        counts = np.bincount(g_lab[g_lab >= 0], minlength=int(max(q_lab.max(), 0)) + 1)
        relevant = np.where(q_lab >= 0, counts[np.clip(q_lab, 0, None)], 0)
    values, per_value = np.unique(relevant, return_counts=True)
    ap_sum = hit_sum = 0.0
    for r, n in zip(values.tolist(), per_value.tolist()):
        ap, hit = expected_average_precision(ng, r, kk)
        ap_sum += n * ap
        hit_sum += n * hit
    if multilabel:
        return ap_sum / hit_sum if hit_sum > 0 else 0.0
    return ap_sum / nq


def expected_average_precision(n: int, relevant: int, k: int | None = None) -> tuple[float, float]:
    """E[AP@k] of one query under a uniformly random ranking of n gallery items of which ``relevant`` are relevant.

    AP@k is normalised by the hits H within the top k (this module's convention), so conditioned on H = h the h hits
    sit uniformly among the k ranks and the expected AP of that full ranking of k items is (rank r is a hit with
    probability h/k; two ranks both are with h(h-1)/(k(k-1)))::

        g(h, k) = (1/h) sum_r (1/r) E[rel_r (1 + hits before r)] = (h-1)/(k-1) + (Harm_k / k) (k-h)/(k-1)

    with Harm_k the k-th harmonic number (g = 1 when k = 1), and H is hypergeometric (n, relevant, k). At k = n,
    H = relevant surely and this is the known expectation of AP for a random ranking.

    Returns:
        ``(E[AP@k 1(H > 0)], P(H > 0))``: the expectation with a query without a hit counted as 0, and the chance the
        query has a hit (multi-label means leave the others out).
    """
    k = n if k is None else min(int(k), n)
    if relevant <= 0 or n <= 0 or k <= 0:
        return 0.0, 0.0
    relevant = min(int(relevant), n)
    harmonic = float(np.sum(1.0 / np.arange(1, k + 1)))

    def full(h: np.ndarray | int) -> np.ndarray | float:
        return 1.0 if k == 1 else (np.asarray(h) - 1) / (k - 1) + harmonic / k * (k - np.asarray(h)) / (k - 1)

    if k == n:
        return float(full(relevant)), 1.0
    # Hypergeometric P(H = h) from log-factorials (exact in float64 to ~1e-12 for any n that fits in memory).
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])

    def log_comb(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
        return log_fact[a] - log_fact[b] - log_fact[np.asarray(a) - np.asarray(b)]

    h = np.arange(max(1, k - (n - relevant)), min(relevant, k) + 1)
    if h.size == 0:
        return 0.0, 0.0
    p = np.exp(log_comb(relevant, h) + log_comb(n - relevant, k - h) - log_comb(n, k))
    return float(np.sum(p * full(h))), float(np.sum(p))


def metric_name(k: int | None) -> str:
    """``MAP@all`` for k=None, else ``MAP@{k}``."""
    return "MAP@all" if k is None else f"MAP@{k}"


def pairs_table(results: Mapping[int | None, Mapping[tuple[str, str], float]]) -> list[dict[str, str | float]]:
    """Rows for a table: one per (query, gallery) pair, then an ``average`` row.

    Args:
        results: k -> :func:`all_pairs_map` result, e.g. ``{None: at_all, 50: at_50}``.

    Returns:
        ``[{"query": "image", "gallery": "text", "MAP@all": 0.56, "MAP@50": 0.55}, ..., {"query": "average",
        "gallery": "", ...}]``, pairs in the order of the first result.
    """
    if not results:
        return []
    order = list(next(iter(results.values())))
    rows: list[dict[str, str | float]] = [
        {"query": q, "gallery": g, **{metric_name(k): float(r[(q, g)]) for k, r in results.items()}} for q, g in order
    ]
    rows.append({"query": "average", "gallery": "", **{metric_name(k): mean_map(r) for k, r in results.items()}})
    return rows


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, best first, ties broken by the lower column index.

    The result equals ``np.argsort(-similarity, kind="stable")[:, :k]`` but costs a quicksort (or a partition when
    k is small): each float32 score is mapped to an order-preserving int32, packed with its column into one unique int64
    key, and the keys are sorted, so no two keys tie and any sort gives the stable order.

    Args:
        similarity: float32 (n, m) finite scores (float64 is cast to float32); m < 2**32.
        k: 1 <= k <= m.

    Returns:
        int64 (n, k) column indices.
    """
    s = np.ascontiguousarray(similarity, dtype=np.float32) + np.float32(0.0)  # + 0 turns -0.0 into +0.0
    bits = s.view(np.int32)
    key = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)  # int32 ordered like the floats
    np.negative(key, out=key)  # best first
    key <<= 32
    key |= np.arange(s.shape[1], dtype=np.int64)
    if k < s.shape[1]:
        key = np.partition(key, k - 1, axis=1)[:, :k]
    key.sort(axis=1)
    key &= 0xFFFFFFFF
    return key


# ---------------------------------------------------------------------------------------------------------------------
# Internals


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """float32 (n, d) rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DatasetFormatError(f"{name}: embeddings must be 2-D (n, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DatasetFormatError(f"{name}: embeddings contain NaN or inf", hint="check the encoder and its inputs")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def _as_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """int64 (n,) single-label ids, or bool (n, C) multi-hot for a matrix with more than one column."""
    y = np.asarray(labels)
    if y.ndim == 2 and 1 in y.shape and y.size == n:
        y = y.reshape(-1)
    if y.ndim == 1:
        if len(y) != n:
            raise DatasetFormatError(f"{name}: {len(y)} labels for {n} rows")
        return y.astype(np.int64)
    if y.ndim == 2 and y.shape[0] == n:
        return y > 0
    raise DatasetFormatError(f"{name}: labels of shape {y.shape} do not fit {n} rows",
                             hint="give int (n,) class ids or a multi-hot (n, C) matrix")


def _ap_from_relevance(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP of each row of a ranked relevance matrix, normalised by the hits in the row (0 when there are none).

    Args:
        rel: bool (c, k), rel[i, r] = the item at rank r+1 is relevant to query i.

    Returns:
        (ap float64 (c,), hits int64 (c,)).
    """
    rows, cols = np.nonzero(rel)  # row-major: the hits of each row in rank order
    hits = np.bincount(rows, minlength=len(rel))
    start = np.concatenate([[0], np.cumsum(hits)[:-1]])
    nth_hit = np.arange(1, len(rows) + 1) - start[rows]  # 1, 2, ... within each row
    ap = np.bincount(rows, weights=nth_hit / (cols + 1.0), minlength=len(rel))
    return np.divide(ap, hits, out=np.zeros(len(rel)), where=hits > 0), hits


class _Task:
    """Normalised queries and gallery with validated labels; yields ranked relevance chunk by chunk."""

    def __init__(self, q: np.ndarray, q_lab: np.ndarray, g: np.ndarray, g_lab: np.ndarray):
        self.q, self.q_lab, self.g, self.g_lab = q, q_lab, g, g_lab
        self.nq, self.ng = len(q), len(g)
        self.multilabel = q_lab.ndim == 2

    @classmethod
    def build(cls, queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
              gallery_labels: np.ndarray) -> _Task:
        q, g = _unit_rows(queries, "queries"), _unit_rows(gallery, "gallery")
        if q.shape[1] != g.shape[1]:
            raise FeatureMismatchError(f"queries have width {q.shape[1]} but the gallery has width {g.shape[1]}",
                                       hint="embed both sides into the same common space")
        q_lab, g_lab = _checked_labels(query_labels, gallery_labels, len(q), len(g))
        return cls(q, q_lab, g, g_lab)

    def cutoff(self, k: int | None, multilabel_all: MultilabelAll) -> int:
        return _cutoff(k, nq=self.nq, ng=self.ng, multilabel=self.multilabel, multilabel_all=multilabel_all)

    def ranked_relevance(self, k: int, chunk_size: int | None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield (query rows, bool (c, k) relevance in rank order, int64 (c,) relevant items in the whole gallery)."""
        step = chunk_size or max(1, CHUNK_ELEMENTS // self.ng)
        if not self.multilabel:
            class_counts = np.bincount(self.g_lab[self.g_lab >= 0], minlength=int(max(self.q_lab.max(), 0)) + 1)
        for start in range(0, self.nq, step):
            rows = slice(start, min(start + step, self.nq))
            order = top_k(self.q[rows] @ self.g.T, k)
            if self.multilabel:
                shares = (self.q_lab[rows].astype(np.float32) @ self.g_lab.T.astype(np.float32)) > 0
                rel = np.take_along_axis(shares, order, axis=1)
                total = shares.sum(axis=1)
            else:
                q_lab = self.q_lab[rows]
                rel = (self.g_lab[order] == q_lab[:, None]) & (q_lab[:, None] >= 0)
                total = np.where(q_lab >= 0, class_counts[np.clip(q_lab, 0, None)], 0)
            yield rows, rel, total


def _checked_labels(query_labels: np.ndarray, gallery_labels: np.ndarray, nq: int,
                    ng: int) -> tuple[np.ndarray, np.ndarray]:
    """Both label sets validated against their row counts and against each other (the same kind)."""
    if nq == 0 or ng == 0:
        raise DatasetFormatError(f"nothing to rank: {nq} queries and {ng} gallery items")
    q_lab = _as_labels(query_labels, nq, "query labels")
    g_lab = _as_labels(gallery_labels, ng, "gallery labels")
    if q_lab.ndim != g_lab.ndim or (q_lab.ndim == 2 and q_lab.shape[1] != g_lab.shape[1]):
        raise DatasetFormatError(f"query labels {q_lab.shape} and gallery labels {g_lab.shape} are not the same kind",
                                 hint="use class ids (n,) on both sides, or multi-hot (n, C) with one C")
    return q_lab, g_lab


def _cutoff(k: int | None, *, nq: int, ng: int, multilabel: bool, multilabel_all: MultilabelAll) -> int:
    """The rank cut-off ``k`` stands for, at most the gallery's size."""
    if k is None:
        if multilabel_all not in ("num_queries", "gallery"):
            raise DatasetFormatError(f"multilabel_all={multilabel_all!r}", hint="use 'num_queries' or 'gallery'")
        # NOTE: reference quirk (specs/drcl.md §6.3, §9.11): multi-label "@all" ranks the top n_queries items.
        k = nq if (multilabel and multilabel_all == "num_queries") else ng
    if k < 1:
        raise DatasetFormatError(f"k must be a positive rank cut-off, got {k}")
    return min(int(k), ng)
