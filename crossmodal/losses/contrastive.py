"""Contrastive losses between two sets of embeddings: InfoNCE, the bidirectional hinge triplet (VSE++) and the
margin contrastive loss of Siamese networks (Hadsell et al.). Cross-modal terms take ``(query, keys)`` pairs in which
row i of ``query`` is the positive partner of row i of ``keys``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.losses.gce import Reduction, reduce


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 (n, m) cosine similarities of the rows of ``a`` (n, D) and ``b`` (m, D)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def info_nce_loss(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    temperature: float,
    exclude: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """InfoNCE: cross-entropy of picking key i for query i among all keys, on cosine logits divided by a temperature.

    Equation:
        ``L_i = -log( exp(s_ii) / sum_j exp(s_ij) )`` with ``s_ij = cos(q_i, k_j) / tau`` (Oord et al. 2018, Eq. 4;
        SCCMR's soft contrastive loss is this with ``tau = 4``, i.e. logits ``0.5 * cos / 2``).

    Inputs:
        query: float32 (B, D). keys: float32 (K, D), K >= B; key i is the positive of query i, keys beyond B (a memory
        bank) are extra negatives.
        temperature: tau > 0.
        exclude: optional bool (B, K); True removes that key from query i's denominator (false negatives such as
        same-class items). The positive is never removed.
        reduction: ``mean``, ``sum`` or ``none`` (B,).

    Reference:
        van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018.
    """
    logits = masked_cosine_logits(query, keys, temperature, exclude)
    target = torch.arange(len(query), device=query.device)
    return reduce(F.cross_entropy(logits, target, reduction="none"), reduction)


def hinge_triplet_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    margin: float | torch.Tensor = 0.2,
    hardest: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Bidirectional hinge triplet loss on cosine similarities, with the hardest or the average negative.

    Equation:
        With ``s_ij = cos(a_i, b_j)`` and margin ``m_i``:
        ``L_i = agg_{j != i} [m_i - s_ii + s_ij]_+ + agg_{j != i} [m_i - s_ii + s_ji]_+`` where ``agg`` is ``max``
        (VSE++, Faghri et al. 2018, Eq. 5) or the mean over the B - 1 negatives (NCR's warm-up form). A per-pair margin
        ``m_i`` is NCR's soft margin.

    Inputs:
        a, b: float32 (B, D) paired rows. margin: a float or float32 (B,) per-pair margins.
        hardest: max over negatives (True) or their mean (False).
        reduction: ``mean``, ``sum`` or ``none`` (B,).

    Reference:
        Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives", BMVC 2018;
        Huang et al., "Learning with Noisy Correspondence for Cross-modal Matching", NeurIPS 2021.
    """
    s = cosine_matrix(a, b)
    n = len(s)
    m = torch.as_tensor(margin, dtype=s.dtype, device=s.device).reshape(-1, 1) if torch.is_tensor(margin) else margin
    positive = s.diagonal().reshape(-1, 1)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    cost_b = (m - positive + s).clamp_min(0) * off  # query a_i against the other b_j
    cost_a = (m - positive + s.T).clamp_min(0) * off  # query b_i against the other a_j
    if hardest:
        per_pair = cost_b.max(dim=1).values + cost_a.max(dim=1).values
    else:
        per_pair = (cost_b.sum(dim=1) + cost_a.sum(dim=1)) / max(n - 1, 1)
    return reduce(per_pair, reduction)


def margin_contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, *, margin: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """The contrastive loss of Siamese networks: pull similar pairs together, push dissimilar ones beyond a margin.

    Equation:
        ``L = s d^2 + (1 - s) max(0, m - d)^2`` with ``d = ||a - b||_2`` (Hadsell, Chopra, LeCun 2006, Eq. 4, without
        its factor 1/2).

    Inputs:
        a, b: float32 (P, D) the two members of each pair. same: float32 or bool (P,), 1 for a similar pair.
        margin: m > 0. reduction: ``mean``, ``sum`` or ``none`` (P,).

    Reference:
        Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
    """
    d = (a - b).norm(dim=1)
    s = same.to(d.dtype)
    return reduce(s * d.pow(2) + (1 - s) * (margin - d).clamp_min(0).pow(2), reduction)


def masked_cosine_logits(query: torch.Tensor, keys: torch.Tensor, temperature: float,
                         exclude: torch.Tensor | None) -> torch.Tensor:
    """Cosine logits / tau of queries against keys, with excluded (never positive) keys set to -inf."""
    logits = cosine_matrix(query, keys) / temperature
    if exclude is not None:
        exclude = exclude.clone()
        exclude[:, : len(query)].fill_diagonal_(False)
        logits = logits.masked_fill(exclude, float("-inf"))
    return logits
