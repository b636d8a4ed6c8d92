"""DRCL's losses against hand-computed values and naive loops (specs/drcl.md §3-§4)."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.encoders import mlp_encoder
from crossmodal.losses.drcl import (
    discrimination_loss,
    discrimination_terms,
    feature_augmentation,
    jmse_loss,
    quality_score,
    recast,
)
from crossmodal.losses.gce import gce_loss


def test_gce_matches_the_formula_on_a_hand_computed_example():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    targets = torch.tensor([[0.0, 1.0]])
    assert gce_loss(logits, targets, 0.5).item() == pytest.approx((1 - 0.75**0.5) / 0.5, rel=1e-6)


def test_gce_with_q_one_is_one_minus_the_true_class_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    targets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    p = torch.softmax(logits, dim=1)
    expected = ((1 - p[0, 1]) + (1 - p[1, 0])) / 2
    assert gce_loss(logits, targets, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gce_at_q_zero_is_cross_entropy_and_small_q_approaches_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    targets = torch.nn.functional.one_hot(labels, 5).float()
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    assert gce_loss(logits, targets, 0.0).item() == pytest.approx(ce, rel=1e-6)
    assert gce_loss(logits, targets, 1e-6).item() == pytest.approx(ce, rel=1e-4)


def test_gce_with_mixed_targets_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g)
    targets = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    q = 0.3
    naive = 0.0
    for i in range(4):
        p = [math.exp(v) / sum(math.exp(u) for u in logits[i].tolist()) for v in logits[i].tolist()]
        s = sum(t * pc for t, pc in zip(targets[i].tolist(), p))
        naive += (1 - s**q) / q
    assert gce_loss(logits, targets, q, reduction="sum").item() == pytest.approx(naive, rel=1e-5)
    assert gce_loss(logits, targets, q).item() == pytest.approx(naive / 4, rel=1e-5)


def test_gce_gives_finite_gradients_for_tiny_probabilities_and_zero_target_rows():
    logits = torch.tensor([[80.0, -80.0], [1.0, 2.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # row 0: p_true ~ 1e-70; row 1: no target
    for q in (0.0, 0.01, 1.0):
        loss = gce_loss(logits, targets, q, reduction="none")
        loss[0].backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None
    assert gce_loss(logits, targets, 0.5, reduction="none")[1].item() == pytest.approx(2.0)  # 1/q
    assert gce_loss(logits, targets, 0.0, reduction="none")[0].item() == pytest.approx(160.0, rel=1e-5)


def test_quality_score_is_the_mean_true_class_probability():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])  # p = [.25, .75], [.8, .2]
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert quality_score(logits, targets).item() == pytest.approx((0.75 + 0.2) / 2, rel=1e-6)
    assert quality_score(logits, targets, "sum").item() == pytest.approx(0.95, rel=1e-6)


def test_feature_augmentation_mixes_each_sample_with_its_permuted_partner():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y = torch.eye(3)
    perm = torch.tensor([2, 1, 0])
    z_mix, y_mix = feature_augmentation(z, y, 0.9, perm)
    torch.testing.assert_close(z_mix[0], torch.tensor([0.9 + 0.1 * 0.6, 0.1 * 0.8]))
    torch.testing.assert_close(z_mix[1], z[1])  # mapped to itself
    torch.testing.assert_close(y_mix[2], torch.tensor([0.1, 0.0, 0.9]))


def test_feature_augmentation_back_propagates_like_plain_indexing():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    weights = torch.randn(6, 4, generator=g)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    (feature_augmentation(z, torch.eye(6), 0.7, perm)[0] * weights).sum().backward()
    expected = torch.autograd.grad(((0.7 * z + 0.3 * z[perm]) * weights).sum(), z)[0]
    torch.testing.assert_close(z.grad, expected)


def test_recast_inverts_the_prior_exactly():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([[1.0, 0, 0, 0], [0, 0.9, 0.1, 0]], dtype=torch.float64)
    r = recast(y, torch.linalg.pinv(W))
    torch.testing.assert_close(r @ W, y)


def _naive_discrimination(y, z, pinv, scale):
    r = y @ pinv
    B = len(y)

    def cs(a, b):
        return (a @ b) / (a.norm() * b.norm()).clamp_min(1e-6)

    intra = sum((scale * cs(r[i], r[j]) - scale * cs(z[i], z[j])) ** 2 for i in range(B) for j in range(B)) / B**2
    inter = sum((scale * cs(r[i], z[j]) - scale * cs(r[j], z[i])) ** 2 for i in range(B) for j in range(B)) / B**2
    return intra, inter


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_discrimination_terms_match_a_naive_double_loop_with_explicit_recasts(scale):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(8, 3, generator=g)
    pinv = torch.linalg.pinv(W)
    y = feature_augmentation(torch.zeros(5, 1), torch.eye(3)[[0, 1, 2, 0, 1]], 0.9, torch.tensor([1, 2, 3, 4, 0]))[1]
    z = torch.randn(5, 8, generator=g, requires_grad=True)
    intra, inter = discrimination_terms(y, z, pinv, cosine_scale=scale)
    n_intra, n_inter = _naive_discrimination(y, z, pinv, scale)
    torch.testing.assert_close(intra, n_intra, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inter, n_inter, rtol=1e-5, atol=1e-6)
    grad = torch.autograd.grad(intra + inter, z)[0]
    naive_grad = torch.autograd.grad(n_intra + n_inter, z)[0]
    torch.testing.assert_close(grad, naive_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(discrimination_loss(y, z, pinv, cosine_scale=scale), intra + inter)


def test_jmse_is_the_mean_over_all_elements():
    r = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert jmse_loss(r, z).item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    torch.testing.assert_close(jmse_loss(r, z, reduction="none"), torch.tensor([5.0, 2.0]))


def test_mlp_encoder_has_drcl_shapes_init_and_unit_outputs():
    torch.manual_seed(0)
    enc = mlp_encoder(300, (32, 32), 16)
    linears = [m for m in enc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (300, 32, True), (32, 32, True), (32, 16, False)]
    assert linears[-1].weight.abs().max().item() <= 1 / math.sqrt(300)  # U(±1/sqrt(d_k)), d_k the input width
    assert linears[-1].weight.abs().max().item() > 0.8 / math.sqrt(300)
    out = enc(torch.randn(7, 300))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))


def test_discrimination_terms_pass_gradcheck_for_each_term_including_a_clamped_short_row():
    g = torch.Generator().manual_seed(4)
    pinv = torch.linalg.pinv(torch.randn(6, 3, generator=g, dtype=torch.float64))
    y = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 1]]
    z = torch.randn(4, 6, generator=g, dtype=torch.float64)
    z[3] *= 1e-4 / z[3].norm()  # below the 1e-3 norm floor: its scale is a constant there
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: discrimination_terms(y, z, pinv, cosine_scale=2.0), (z,))
