"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), as DRCL uses it for SPL (Eq. 1) and for J_L (Eq. 7).

Works with one-hot, mixed (mixup) and multi-hot targets: the "true-class probability" is ``s_i = sum_c y_ic p_ic``.
"""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]


def log_target_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log s_i = log sum_c y_ic softmax(logits_i)_c``, computed with log-sum-exp (no underflow, no NaN gradient).

    Args:
        logits: float32 (B, C).
        targets: float32 (B, C), non-negative weights (one-hot, mixed or multi-hot).

    Returns:
        float32 (B,); ``-inf`` for a row whose targets are all zero (its gradient is zero).
    """
    positive = targets > 0
    has_target = positive.any(dim=1)
    # Rows with no positive target get a finite dummy row so log-sum-exp's backward stays finite; they are reset below.
    weighted = torch.where(positive, logits + torch.log(targets.clamp_min(torch.finfo(logits.dtype).tiny)),
                           torch.where(has_target[:, None], torch.full_like(logits, float("-inf")), logits))
    log_s = torch.logsumexp(weighted, dim=1) - torch.logsumexp(logits, dim=1)
    return torch.where(has_target, log_s, torch.full_like(log_s, float("-inf")))


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float, reduction: Reduction = "mean") -> torch.Tensor:
    """Generalized cross-entropy ``(1 - s_i^q) / q``.

    Equation:
        DRCL Eq. 1 (SPL, with ``logits = F_k(x) W_k``) and Eq. 7 (J_L, with mixed ``logits = z~ W``, ``targets = y~``):
        ``L = (1/B) sum_i (1 - s_i^q) / q`` with ``s_i = sum_c y_ic softmax(logits_i)_c``. ``q -> 0`` is the
        cross-entropy ``-log s_i`` (used exactly when ``q == 0``); ``q = 1`` is the MAE-like ``1 - s_i``.

    Inputs:
        logits: float32 (B, C). targets: float32 (B, C), non-negative (one-hot, mixup-mixed or multi-hot).
        q: the regulatory factor, ``q >= 0``.
        reduction: ``"mean"`` over rows (the paper's 1/B), ``"sum"``, or ``"none"`` for the (B,) vector.

    Reference:
        Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
        NeurIPS 2018; Pu et al., "Deep Reversible Consistency Learning for Cross-modal Retrieval", TMM 2025.

    Returns:
        float32 scalar (or (B,) for ``"none"``). A row with all-zero targets costs ``1/q`` (``inf`` when ``q == 0``)
        and has no gradient.
    """
    if q < 0:
        raise ValueError(f"gce_loss needs q >= 0, got {q}")
    log_s = log_target_probability(logits, targets)
    per_row = -log_s if q == 0 else -torch.expm1(q * log_s) / q
    return reduce(per_row, reduction)


def reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Apply an explicit reduction (``mean``, ``sum`` or ``none``) to a per-item loss."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}; choose mean, sum or none")
