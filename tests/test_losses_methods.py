"""The losses of the non-DRCL methods, each against a naive loop or a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossmodal.losses.contrastive import cosine_matrix, hinge_triplet_loss, info_nce_loss, margin_contrastive_loss
from crossmodal.losses.dscmr import invariance_loss, label_similarity, pairwise_likelihood_loss
from crossmodal.losses.rcar import predicted_alignment, refurbished_targets, soft_margin
from crossmodal.losses.sccmr import labelled_cross_entropy, smooth_label_cross_entropy
from crossmodal.losses.sdml import label_regression_loss, reconstruction_loss
from crossmodal.losses.sedel import weighted_info_nce_loss


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)


def test_info_nce_matches_a_naive_loop_with_extra_keys_and_exclusions(pair):
    q, k = pair
    exclude = torch.zeros(5, 7, dtype=torch.bool)
    exclude[0, 3] = exclude[2, 6] = True
    exclude[1, 1] = True  # a positive is never excluded
    tau = 0.3
    expected = []
    for i in range(5):
        terms = [math.exp(_cos(q[i], k[j]) / tau) for j in range(7) if j == i or not exclude[i, j]]
        expected.append(-math.log(math.exp(_cos(q[i], k[i]) / tau) / sum(terms)))
    got = info_nce_loss(q, k, temperature=tau, exclude=exclude, reduction="none")
    assert got.tolist() == pytest.approx(expected)
    assert float(info_nce_loss(q, k, temperature=tau, exclude=exclude)) == pytest.approx(sum(expected) / 5)


@pytest.mark.parametrize("hardest", [True, False])
def test_hinge_triplet_loss_matches_a_naive_loop_with_per_pair_margins(pair, hardest):
    a, b = pair[0], pair[1][:5]
    margins = torch.tensor([0.2, 0.0, 0.5, 0.1, 0.3], dtype=torch.float64)
    expected = []
    for i in range(5):
        s_ii = _cos(a[i], b[i])
        to_b = [max(0.0, margins[i].item() - s_ii + _cos(a[i], b[j])) for j in range(5) if j != i]
        to_a = [max(0.0, margins[i].item() - s_ii + _cos(b[i], a[j])) for j in range(5) if j != i]
        expected.append(max(to_b) + max(to_a) if hardest else (sum(to_b) + sum(to_a)) / 4)
    got = hinge_triplet_loss(a, b, margin=margins, hardest=hardest, reduction="none")
    assert got.tolist() == pytest.approx(expected)


def test_margin_contrastive_loss_hand_values():
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]])
    same = torch.tensor([1.0, 0.0, 0.0])
    # d = 5, 5, 1: similar pair 5^2; dissimilar beyond the margin 0; dissimilar at d=1 with margin 2: (2 - 1)^2
    assert margin_contrastive_loss(a, b, same, margin=2.0, reduction="none").tolist() == pytest.approx([25, 0, 1])


def test_label_regression_loss_skips_unlabelled_rows():
    predicted = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]])
    targets = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    assert float(label_regression_loss(predicted, targets)) == pytest.approx(math.sqrt(2) / 2)


def test_reconstruction_loss_is_the_mean_row_distance():
    assert float(reconstruction_loss(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2))) == pytest.approx(2.5)


def test_pairwise_likelihood_matches_a_naive_loop(pair):
    a, b = pair
    S = torch.tensor([[float((i + j) % 2 == 0) for j in range(7)] for i in range(5)], dtype=torch.float64)
    expected = sum(math.log(1 + math.exp(0.5 * _cos(a[i], b[j]))) - S[i, j].item() * 0.5 * _cos(a[i], b[j])
                   for i in range(5) for j in range(7)) / 35
    assert float(pairwise_likelihood_loss(a, b, S)) == pytest.approx(expected)


def test_label_similarity_is_one_where_labels_overlap():
    ya = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    yb = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert label_similarity(ya, yb).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_invariance_loss_hand_value():
    assert float(invariance_loss(torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))) \
        == pytest.approx(2.5)


def test_smooth_label_cross_entropy_is_cross_entropy_against_the_smoothed_target():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=g)
    y = F.one_hot(torch.tensor([0, 3, 2, 4]), 5).float()
    eps = 0.9
    q = (1 - eps) * y + eps / 5
    expected = -(q * torch.log_softmax(logits, 1)).sum(1).mean()
    assert float(smooth_label_cross_entropy(logits, y, epsilon=eps)) == pytest.approx(float(expected), rel=1e-6)
    assert float(smooth_label_cross_entropy(logits, y, epsilon=0.0)) == pytest.approx(
        float(F.cross_entropy(logits, y.argmax(1))), rel=1e-6)


def test_labelled_cross_entropy_averages_over_labelled_rows_only():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, generator=g)
    y = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    log_p = torch.log_softmax(logits, 1)
    expected = (-log_p[0, 1] - 0.5 * (log_p[2, 0] + log_p[2, 3])) / 2
    assert float(labelled_cross_entropy(logits, y)) == pytest.approx(float(expected), rel=1e-6)


def test_weighted_info_nce_reduces_to_info_nce_without_weighting(pair):
    q, k = pair
    plain = info_nce_loss(q, k, temperature=0.2, reduction="none")
    for kwargs in ({"weighting": "hardness", "beta": 0.0}, {"weighting": "focal", "gamma": 0.0},
                   {"weighting": "none"}):
        got = weighted_info_nce_loss(q, k, temperature=0.2, reduction="none", **kwargs)
        assert got.tolist() == pytest.approx(plain.tolist())


def test_hardness_weighted_info_nce_matches_a_naive_loop(pair):
    q, k = pair
    tau, beta = 0.2, 1.5
    expected = []
    for i in range(5):
        s = [_cos(q[i], k[j]) / tau for j in range(7)]
        negatives = [j for j in range(7) if j != i]
        z = sum(math.exp(beta * s[j]) for j in negatives)
        weighted = sum(len(negatives) * math.exp(beta * s[j]) / z * math.exp(s[j]) for j in negatives)
        expected.append(-math.log(math.exp(s[i]) / (math.exp(s[i]) + weighted)))
    got = weighted_info_nce_loss(q, k, temperature=tau, weighting="hardness", beta=beta, reduction="none")
    assert got.tolist() == pytest.approx(expected)


def test_focal_weighted_info_nce_weighs_each_query_by_its_normalised_hardness(pair):
    q, k = pair
    log_p = -info_nce_loss(q, k, temperature=0.2, reduction="none")
    hard = (1 - log_p.exp()) ** 2
    expected = -(hard / hard.mean()) * log_p
    got = weighted_info_nce_loss(q, k, temperature=0.2, weighting="focal", gamma=2.0, reduction="none")
    assert got.tolist() == pytest.approx(expected.tolist())


def test_soft_margin_hand_values():
    targets = torch.tensor([0.0, 0.5, 1.0])
    assert soft_margin(targets, margin=0.2, phi="linear").tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert soft_margin(targets, margin=0.2, phi="exp").tolist() == pytest.approx(
        [0.0, 0.2 * (math.sqrt(10) - 1) / 9, 0.2])


def test_refurbished_target_mixes_the_given_label_and_the_prediction_by_the_noise_posterior():
    w = torch.tensor([0.0, 1.0, 0.25])
    p = torch.tensor([0.3, 0.3, 0.2])
    assert refurbished_targets(w, p).tolist() == pytest.approx([1.0, 0.3, 0.75 + 0.25 * 0.2])


def test_predicted_alignment_averages_both_directions_softmax_on_the_positive(pair):
    a, b = pair[0], pair[1][:5]
    s = cosine_matrix(a, b) / 0.1
    i = 2
    expected = 0.5 * (math.exp(s[i, i]) / s[i].exp().sum() + math.exp(s[i, i]) / s[:, i].exp().sum())
    assert float(predicted_alignment(a, b, temperature=0.1)[i]) == pytest.approx(float(expected))
