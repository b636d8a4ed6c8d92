from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.io as sio

from crossmodal.errors import DatasetFormatError, FeatureMismatchError
from crossmodal.metrics import (
    all_pairs_map,
    average_precisions,
    chance_map,
    expected_average_precision,
    map_at_k,
    mean_map,
    pairs_table,
    pr_curve,
    precision_at_k,
    top_k,
)

# ---------------------------------------------------------------------------------------------------------------------
# Oracles: plain Python loops over one query at a time, written from specs/drcl.md §6 and nothing else.


def _naive_rankings(q, g):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    for i in range(len(q)):
        sims = [float(np.dot(qn[i].astype(np.float64), gn[j].astype(np.float64))) for j in range(len(g))]
        yield i, sorted(range(len(g)), key=lambda j: (-sims[j], j))


def _relevant(ql, gl, i, j):
    if np.ndim(ql) == 2:
        return bool(np.any((ql[i] > 0) & (gl[j] > 0)))
    return ql[i] >= 0 and ql[i] == gl[j]


def naive_map(q, ql, g, gl, k=None):
    multilabel = np.ndim(ql) == 2
    if k is None:
        k = len(q) if multilabel else len(g)
    aps = []
    for i, order in _naive_rankings(q, g):
        hits, acc = 0, 0.0
        for rank, j in enumerate(order[:k], start=1):
            if _relevant(ql, gl, i, j):
                hits += 1
                acc += hits / rank
        if hits:
            aps.append(acc / hits)
        elif not multilabel:
            aps.append(0.0)
    return float(np.mean(aps)) if aps else 0.0


def naive_precision_recall(q, ql, g, gl):
    precisions, recalls = [], []
    for i, order in _naive_rankings(q, g):
        rel = [_relevant(ql, gl, i, j) for j in order]
        if sum(rel) == 0:
            continue
        hits = np.cumsum(rel)
        precisions.append(hits / np.arange(1, len(g) + 1))
        recalls.append(hits / sum(rel))
    return np.array(precisions), np.array(recalls)


def _random_case(rng, nq=23, ng=31, dim=6, classes=4, multilabel=False):
    q, g = rng.standard_normal((nq, dim)), rng.standard_normal((ng, dim))
    if multilabel:
        ql = (rng.random((nq, classes)) < 0.3).astype(np.uint8)
        gl = (rng.random((ng, classes)) < 0.3).astype(np.uint8)
    else:
        ql, gl = rng.integers(0, classes, nq), rng.integers(0, classes, ng)
    return q, ql, g, gl


def _tied_case(rng, nq=17, ng=29, classes=3):
    """Unit vectors with entries in {0, +-0.5, +-1}: every cosine is exact in float32, and most of them tie."""
    pool = np.array([v for v in itertools.product([-0.5, 0.5], repeat=4)] + list(np.eye(4)) + list(-np.eye(4)))
    return (pool[rng.integers(0, len(pool), nq)], rng.integers(0, classes, nq),
            pool[rng.integers(0, len(pool), ng)], rng.integers(0, classes, ng))


# ---------------------------------------------------------------------------------------------------------------------
# The DRCL authors' published embeddings reproduce their logged numbers.


@pytest.fixture(scope="module")
def drcl_wiki(shared_data):
    folder = shared_data / "drcl-wiki-reference"
    image = sio.loadmat(folder / "test_embeddings_image.mat")
    text = sio.loadmat(folder / "test_embeddings_text.mat")
    return image["test_fea"], image["test_lab"], text["test_fea"], text["test_lab"]


@pytest.mark.parametrize(("direction", "k", "logged"), [
    ("image->text", None, 0.56190), ("text->image", None, 0.53759),
    ("image->text", 50, 0.55988), ("text->image", 50, 0.68478),
])
def test_published_drcl_wiki_embeddings_give_the_logged_map(drcl_wiki, direction, k, logged):
    img, img_lab, txt, txt_lab = drcl_wiki
    assert img.shape == (462, 2048) and img_lab.shape == (1, 462)
    args = (img, img_lab, txt, txt_lab) if direction == "image->text" else (txt, txt_lab, img, img_lab)
    assert map_at_k(*args, k=k) == pytest.approx(logged, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Vectorised == naive loop.


@pytest.mark.parametrize("k", [None, 1, 5, 31, 100])
def test_single_label_map_equals_a_naive_loop(k):
    case = _random_case(np.random.default_rng(1))
    assert map_at_k(*case, k=k) == pytest.approx(naive_map(*case, k=k), abs=1e-12)


@pytest.mark.parametrize("k", [None, 1, 5, 13])
def test_single_label_map_with_ties_breaks_them_by_gallery_position_like_the_naive_loop(k):
    case = _tied_case(np.random.default_rng(2))
    assert map_at_k(*case, k=k) == pytest.approx(naive_map(*case, k=k), abs=1e-12)


@pytest.mark.parametrize("k", [None, 3, 10])
def test_multi_label_map_skips_zero_hit_queries_like_the_naive_loop(k):
    case = _random_case(np.random.default_rng(3), multilabel=True)
    assert map_at_k(*case, k=k) == pytest.approx(naive_map(*case, k=k), abs=1e-12)


def test_multi_label_map_at_all_ranks_as_deep_as_the_number_of_queries_unless_told_otherwise():
    q, ql, g, gl = _random_case(np.random.default_rng(4), nq=7, ng=40, multilabel=True)
    assert map_at_k(q, ql, g, gl) == pytest.approx(naive_map(q, ql, g, gl, k=7), abs=1e-12)
    assert map_at_k(q, ql, g, gl, multilabel_all="gallery") == pytest.approx(naive_map(q, ql, g, gl, k=40), abs=1e-12)


def test_chunking_over_queries_does_not_change_the_result():
    case = _random_case(np.random.default_rng(5), nq=50, ng=20)
    full = average_precisions(*case)
    np.testing.assert_array_equal(average_precisions(*case, chunk_size=3), full)


def test_top_k_equals_a_stable_argsort_including_ties():
    rng = np.random.default_rng(6)
    scores = rng.integers(-3, 4, size=(9, 40)).astype(np.float32) / 2
    scores[0, :5] = [0.0, -0.0, 0.0, -0.0, 0.0]  # signed zeros are one value
    for k in (1, 7, 40):
        np.testing.assert_array_equal(top_k(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


# ---------------------------------------------------------------------------------------------------------------------
# Known values and conventions.


def test_ap_is_normalised_by_the_hits_within_the_top_k():
    # Gallery ranked [g0, g1, g2, g3] for the query; relevant at ranks 1 and 3 within the top 3; g3 is relevant too.
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.9, 0.3], [0.5, 0.5], [0.0, 1.0]])
    ap = average_precisions(q, np.array([1]), g, np.array([1, 0, 1, 1]), k=3)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_a_single_label_query_with_no_hit_counts_as_zero_but_a_multi_label_one_is_skipped():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert map_at_k(q, np.array([0, 2]), g, np.array([0, 1])) == pytest.approx(0.5)
    multi_q = np.array([[1, 0, 0], [0, 0, 1]])
    multi_g = np.array([[1, 0, 0], [0, 1, 0]])
    assert np.isnan(average_precisions(q, multi_q, g, multi_g)[1])
    assert map_at_k(q, multi_q, g, multi_g) == pytest.approx(1.0)


def test_unlabelled_items_are_never_relevant():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert map_at_k(q, np.array([-1]), g, np.array([-1, -1])) == 0.0


def test_precision_at_k_equals_a_naive_count():
    q, ql, g, gl = _random_case(np.random.default_rng(7))
    expected = np.mean([sum(_relevant(ql, gl, i, j) for j in order[:5]) / 5 for i, order in _naive_rankings(q, g)])
    assert precision_at_k(q, ql, g, gl, 5) == pytest.approx(expected, abs=1e-12)


def test_pr_curve_is_the_mean_precision_and_recall_at_each_rank():
    case = _random_case(np.random.default_rng(8))
    precision, recall = pr_curve(*case)
    p, r = naive_precision_recall(*case)
    np.testing.assert_allclose(precision, p.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(recall, r.mean(axis=0), atol=1e-12)
    assert recall[-1] == pytest.approx(1.0)


def test_interpolated_pr_curve_takes_the_best_precision_at_or_beyond_each_recall_level():
    case = _random_case(np.random.default_rng(9))
    points = np.linspace(0, 1, 11)
    precision, levels = pr_curve(*case, recall_points=points)
    p, r = naive_precision_recall(*case)
    expected = [np.mean([pi[ri >= level - 1e-12].max() for pi, ri in zip(p, r)]) for level in points]
    np.testing.assert_allclose(precision, expected, atol=1e-12)
    np.testing.assert_array_equal(levels, points)


# ---------------------------------------------------------------------------------------------------------------------
# All pairs, tables, scale and errors.


def test_all_pairs_map_computes_every_ordered_pair_and_the_table_adds_their_average():
    rng = np.random.default_rng(10)
    emb = {m: rng.standard_normal((12, 5)) for m in ("image", "text", "audio")}
    lab = {m: rng.integers(0, 3, 12) for m in emb}
    at_all, at_5 = all_pairs_map(emb, lab), all_pairs_map(emb, lab, k=5)
    assert list(at_all) == list(itertools.permutations(emb, 2))
    assert at_all[("audio", "text")] == pytest.approx(map_at_k(emb["audio"], lab["audio"], emb["text"], lab["text"]))
    rows = pairs_table({None: at_all, 5: at_5})
    assert len(rows) == 7 and rows[-1]["query"] == "average"
    assert rows[-1]["MAP@all"] == pytest.approx(mean_map(at_all))
    assert rows[0] == {"query": "image", "gallery": "text", "MAP@all": at_all[("image", "text")],
                       "MAP@5": at_5[("image", "text")]}


def test_map_at_all_of_5000_random_queries_against_5000_items_is_chance():
    rng = np.random.default_rng(11)
    q, g = rng.standard_normal((5000, 16), dtype=np.float32), rng.standard_normal((5000, 16), dtype=np.float32)
    ql, gl = np.arange(5000) % 10, rng.permutation(np.arange(5000) % 10)
    assert map_at_k(q, ql, g, gl) == pytest.approx(0.1, abs=0.01)


def test_queries_and_gallery_of_different_widths_are_refused():
    with pytest.raises(FeatureMismatchError, match="width 3"):
        map_at_k(np.ones((2, 3)), np.zeros(2), np.ones((2, 4)), np.zeros(2))


def test_labels_that_do_not_match_the_rows_are_refused():
    with pytest.raises(DatasetFormatError, match="3 labels for 2 rows"):
        map_at_k(np.ones((2, 3)), np.zeros(3), np.ones((2, 3)), np.zeros(2))


def test_single_label_queries_against_a_multi_label_gallery_are_refused():
    with pytest.raises(DatasetFormatError, match="not the same kind"):
        map_at_k(np.ones((2, 3)), np.zeros(2), np.ones((2, 3)), np.ones((2, 4)))


def test_non_finite_embeddings_are_refused():
    with pytest.raises(DatasetFormatError, match="NaN"):
        map_at_k(np.full((2, 3), np.nan), np.zeros(2), np.ones((2, 3)), np.zeros(2))


# ---------------------------------------------------------------------------------------------------------------------
# Chance level: the MAP of a uniformly random ranking, which every MAP table prints next to the model's.


@pytest.mark.parametrize(("n", "relevant", "k"), [(6, 2, 3), (6, 2, 6), (7, 3, 2), (5, 1, 1), (8, 5, 4), (7, 1, 7)])
def test_the_expected_ap_equals_the_mean_over_every_placement_of_the_relevant_items(n, relevant, k):
    aps, hits = [], []
    for positions in itertools.combinations(range(n), relevant):
        rel = np.zeros((1, n), dtype=bool)
        rel[0, list(positions)] = True
        in_top = rel[:, :k]
        hits.append(in_top.any())
        aps.append(naive_ap(list(in_top[0])))
    ap, hit = expected_average_precision(n, relevant, k)
    assert ap == pytest.approx(np.mean(aps), abs=1e-12)
    assert hit == pytest.approx(np.mean(hits), abs=1e-12)


def naive_ap(relevance):
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevance, start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def test_single_label_chance_is_not_the_class_fraction():
    """One relevant item among 10: a random ranking finds it at rank r with AP 1/r, so E[AP] = H_10 / 10 = 0.293."""
    assert chance_map(np.array([0]), np.array([0] + [1] * 9)) == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("k", [None, 10])
def test_the_chance_level_matches_the_map_of_random_embeddings(multilabel, k):
    """Monte Carlo: map_at_k of 400 draws of Gaussian embeddings (each a uniformly random ranking) averages to the
    closed form within 4 standard errors."""
    rng = np.random.default_rng(0)
    if multilabel:
        ql = (rng.random((30, 6)) < 0.2).astype(np.uint8)
        gl = (rng.random((50, 6)) < 0.2).astype(np.uint8)
    else:
        ql, gl = rng.integers(0, 4, 30), rng.integers(-1, 4, 50)
    draws = [map_at_k(rng.normal(size=(30, 8)), ql, rng.normal(size=(50, 8)), gl, k) for _ in range(400)]
    standard_error = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - chance_map(ql, gl, k)) < 4 * standard_error + 1e-3
