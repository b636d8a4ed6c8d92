"""SEDEL's weighted InfoNCE (Pan and Huang, IJMIR 2022): harder pairs weigh more. The paper's formula was not
readable; both readings of specs/methods-detail.md §4.2 M2 are offered, the negative-hardness one as the default."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from crossmodal.losses.contrastive import info_nce_loss, masked_cosine_logits
from crossmodal.losses.gce import Reduction, reduce

Weighting = Literal["none", "hardness", "focal"]


def weighted_info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    temperature: float,
    weighting: Weighting = "hardness",
    beta: float = 1.0,
    gamma: float = 2.0,
    exclude: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """InfoNCE whose harder negatives (``hardness``) or harder queries (``focal``) get larger, detached weights.

    Equation:
        With ``s_ij = cos(q_i, k_j) / tau``, positive ``i`` and negatives ``N_i``:

        * ``hardness`` (Robinson et al. 2021 style): ``w_ij = |N_i| softmax_{j in N_i}(beta s_ij)`` and
          ``L_i = -log( e^{s_ii} / (e^{s_ii} + sum_{j in N_i} w_ij e^{s_ij}) )``; ``beta = 0`` is plain InfoNCE.
        * ``focal``: ``p_i`` the softmax probability of the positive,
          ``omega_i = (1 - p_i)^gamma / mean_B (1 - p)^gamma`` and ``L_i = -omega_i log p_i``; ``gamma = 0`` is plain
          InfoNCE.
        * ``none``: plain InfoNCE.

    Inputs:
        query: float32 (B, D). keys: float32 (K, D), K >= B, key i the positive of query i (rows beyond B are
        memory-bank negatives). exclude: optional bool (B, K) keys removed from the negatives. reduction: ``mean``,
        ``sum`` or ``none`` (B,).

    Reference:
        Pan and Huang, "Semantic-enhanced discriminative embedding learning for cross-modal retrieval", IJMIR 2022;
        Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard Negative Samples", ICLR 2021.
    """
    if weighting == "none":
        return info_nce_loss(query, keys, temperature=temperature, exclude=exclude, reduction=reduction)
    logits = masked_cosine_logits(query, keys, temperature, exclude)
    B = len(query)
    rows = torch.arange(B, device=query.device)
    positive = logits[rows, rows]
    if weighting == "focal":
        log_p = positive - torch.logsumexp(logits, dim=1)
        hard = (1 - log_p.exp()).pow(gamma).detach()
        return reduce(-(hard / hard.mean().clamp_min(1e-12)) * log_p, reduction)
    if weighting != "hardness":
        raise ValueError(f"unknown weighting {weighting!r}; choose none, hardness or focal")
    negatives = logits.clone()
    negatives[rows, rows] = float("-inf")
    finite = torch.isfinite(negatives)
    count = finite.sum(dim=1, keepdim=True).to(logits.dtype)
    scaled = torch.where(finite, beta * negatives, torch.full_like(negatives, float("-inf")))  # 0 * -inf would be NaN
    weights = (count * F.softmax(scaled, dim=1)).detach()
    # log sum_j w_ij e^{s_ij} over the negatives, with log w = -inf where w = 0 (the positive and excluded keys)
    log_negatives = torch.logsumexp(negatives + torch.log(weights.clamp_min(1e-30)), dim=1)
    per_row = torch.logaddexp(positive, log_negatives) - positive
    return reduce(per_row, reduction)
