"""The losses of DRCL's two stages (specs/drcl.md §3-§4): quality score, feature augmentation, recasting, J_D, J_MSE.

Reference: Pu, Qin, Peng, Song, Zheng, "Deep Reversible Consistency Learning for Cross-modal Retrieval", IEEE TMM 2025
(arXiv 2501.05686). The label losses (Eq. 1 and Eq. 7) are the GCE of ``crossmodal.losses.gce``.
"""

from __future__ import annotations

from typing import Any

import torch

from crossmodal.losses.gce import Reduction, log_target_probability, reduce

NORM_EPS = 1e-3  # cosines divide by max(|a|, 1e-3) max(|b|, 1e-3): the reference's max(|a||b|, 1e-6) for norms >= 1e-3


def quality_score(logits: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Quality score of a learned prior: the mean probability of the true class(es).

    Equation:
        DRCL Eq. 2: ``S_k = (1/N_k) sum_i y_i^T softmax(F_k(x_i) W_k)``.

    Inputs:
        logits: float32 (N, C) = ``F_k(x) W_k``. targets: float32 (N, C) one-hot or multi-hot.
        reduction: ``"mean"`` (the score), ``"sum"`` (to accumulate over batches) or ``"none"``.

    Reference:
        Pu et al., TMM 2025, §III-B (Selective Prior Learning).
    """
    return reduce(log_target_probability(logits, targets).exp(), reduction)


def feature_augmentation(z: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch mixup in the common space: every sample is replaced by its mix with a permuted partner.

    Equation:
        DRCL Eq. 3: ``z~_i = lam z_i + (1 - lam) z_perm(i)``, ``y~_i = lam y_i + (1 - lam) y_perm(i)``. The mixed
        embedding is not re-normalised (specs/drcl.md §9.8).

    Inputs:
        z: float32 (B, D) embeddings. targets: float32 (B, C) label vectors. lam: the mixing coefficient (paper: 0.9).
        perm: int64 (B,) a permutation of 0..B-1 (an index may map to itself).

    Returns:
        ``(z~ float32 (B, D), y~ float32 (B, C))``.

    Reference:
        Pu et al., TMM 2025, §III-C (Feature Augmentation); Zhang et al., "mixup", ICLR 2018.
    """
    return lam * z + (1.0 - lam) * _PermuteRows.apply(z, perm), lam * targets + (1.0 - lam) * targets[perm]


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` for a permutation, whose backward gathers with the inverse permutation: indexing's generic backward
    is an accumulating scatter, serial on the CPU and 1-2 % of an RSC epoch there."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(perm)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (perm,) = ctx.saved_tensors
        return grad.index_select(0, torch.argsort(perm)), None


def recast(targets: torch.Tensor, prior_pinv: torch.Tensor) -> torch.Tensor:
    """Modality-invariant representation recasting: the label vector mapped back into the common space.

    Equation:
        DRCL Eq. 4: ``r_i = y~_i W^+`` (so ``r_i W = y~_i`` exactly when W has full column rank: "reversible").

    Inputs:
        targets: float32 (B, C) (mixed) label vectors. prior_pinv: float32 (C, D) = pinv(W).

    Returns:
        float32 (B, D).
    """
    return targets @ prior_pinv


def jmse_loss(recast_targets: torch.Tensor, z: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Squared distance between the recast label representation and the (mixed) embedding.

    Equation:
        DRCL Eq. 5: ``J_MSE = mean_{i,d} (r_id - z~_id)^2`` (mean over all B*D elements, as the reference code).

    Inputs:
        recast_targets: float32 (B, D) = ``recast(y~, W^+)``. z: float32 (B, D) mixed embeddings.
        reduction: ``"mean"`` over B*D elements, ``"sum"``, or ``"none"`` for the (B,) per-row sums.
    """
    if reduction == "mean":
        return torch.nn.functional.mse_loss(z, recast_targets)
    return reduce((recast_targets - z).square().sum(dim=1), reduction)


def discrimination_terms(targets: torch.Tensor, z: torch.Tensor, prior_pinv: torch.Tensor, *,
                         cosine_scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of J_D: match the similarity structures of recast labels and features, and symmetrise them.

    Equation:
        DRCL Eq. 6, with ``r = y~ W^+`` and ``Theta(a, b) = cosine_scale * cs(a, b)`` (the code scales by 2):
        ``J_intra = mean_{i,j} (Theta(r_i, r_j) - Theta(z~_i, z~_j))^2`` and
        ``J_inter = mean_{i,j} (Theta(r_i, z~_j) - Theta(r_j, z~_i))^2``, both over all B^2 entries (diagonal too).
        ``cs(a, b) = a/max(|a|, 1e-3) . b/max(|b|, 1e-3)``: the reference's ``a.b / max(|a||b|, 1e-6)`` whenever both
        norms are at least 1e-3 (a mixed unit embedding is shorter only when nearly opposite vectors are mixed with
        lambda near 0.5).

    Inputs:
        targets: float32 (B, C) (mixed) label vectors y~. z: float32 (B, D) mixed embeddings z~.
        prior_pinv: float32 (C, D) = pinv(W). The recast r is taken in this factored form because it has rank <= C:
        ``r r^T = y~ (W^+ W^+^T) y~^T`` and ``r z~^T = y~ (z~ W^+^T)^T`` cost O(B C^2 + B^2 C) instead of O(B^2 D), so
        the only B x B x D products left are ``z~ z~^T`` and its gradient (one product, by symmetry).

    Returns:
        ``(J_intra, J_inter)``, float32 scalars; ``J_D = J_intra + J_inter``.

    Reference:
        Pu et al., TMM 2025, §III-D (Reversible Semantic Consistency); specs/drcl.md §4 and §9.7.
    """
    pinv_gram = prior_pinv @ prior_pinv.T  # (C, C)
    inv_r = ((targets @ pinv_gram) * targets).sum(dim=1).clamp_min(0).sqrt().clamp_min(NORM_EPS).reciprocal()
    y_hat = targets * inv_r[:, None]  # r_i / |r_i| = y_hat_i W^+
    cos_rr = y_hat @ pinv_gram @ y_hat.T
    return _DiscriminationTerms.apply(z, y_hat, cos_rr, prior_pinv, cosine_scale)


class _DiscriminationTerms(torch.autograd.Function):
    """J_intra and J_inter of ``z`` with their gradient written out: two B x B residuals kept, and the backward is
    three products (the Gram's, rank C, rank C) with the loss weights folded into them. Autograd of the plain
    expression allocates some twenty B x B temporaries per step (a B x B pass costs as much as 3 % of the Gram)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, y_hat: torch.Tensor, cos_rr: torch.Tensor,
                prior_pinv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        norms = z.norm(dim=1)
        inv_z = norms.clamp_min(NORM_EPS).reciprocal()
        n = z * inv_z[:, None]  # z~_i / max(|z~_i|, eps)
        residual_zz = torch.addmm(cos_rr, n, n.T, alpha=-1.0)  # cs(r_i, r_j) - cs(z~_i, z~_j)
        cos_rz = y_hat @ (n @ prior_pinv.T).T  # [i, j] = cs(r_i, z~_j)
        residual_rz = cos_rz - cos_rz.T
        count, scale2 = residual_zz.numel(), scale * scale
        intra = scale2 * residual_zz.square().sum() / count
        inter = scale2 * residual_rz.square().sum() / count
        ctx.save_for_backward(n, inv_z, norms, y_hat, prior_pinv, residual_zz, residual_rz)
        ctx.scale2 = scale2
        return intra, inter

    @staticmethod
    def backward(ctx: Any, grad_intra: torch.Tensor, grad_inter: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None, None]:
        n, inv_z, norms, y_hat, prior_pinv, residual_zz, residual_rz = ctx.saved_tensors
        count = residual_zz.numel()
        # Weights folded into the products and the rest in place: a (B, D) pass costs a tenth of the Gram here.
        # d intra / d n = -4 s^2 / B^2 (cos_rr - n n^T) n (the residual is symmetric)
        grad_n = torch.addmm(n.new_zeros(()), residual_zz, n, beta=0.0,
                             alpha=float(-4.0 * ctx.scale2 / count * grad_intra))
        # d inter / d cos_rz = 4 s^2 / B^2 residual_rz (antisymmetric); through cos_rz = y_hat (n W^+^T)^T
        grad_p = residual_rz.T @ y_hat * (4.0 * ctx.scale2 / count * grad_inter)  # (B, C)
        grad_n.addmm_(grad_p, prior_pinv)
        # n = z / max(|z|, eps): project out the radial part where the norm is not clamped
        radial = torch.linalg.vecdot(n, grad_n) * (norms > NORM_EPS).to(n.dtype)
        grad_z = grad_n.addcmul_(n, radial[:, None], value=-1.0).mul_(inv_z[:, None])
        return grad_z, None, None, None, None


def discrimination_loss(targets: torch.Tensor, z: torch.Tensor, prior_pinv: torch.Tensor, *,
                        cosine_scale: float = 2.0) -> torch.Tensor:
    """J_D of DRCL Eq. 6: ``J_intra + J_inter`` (see ``discrimination_terms`` for the equation and inputs)."""
    intra, inter = discrimination_terms(targets, z, prior_pinv, cosine_scale=cosine_scale)
    return intra + inter
