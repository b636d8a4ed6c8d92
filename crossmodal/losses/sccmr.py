"""SCCMR's smooth-label cross-entropy (Song et al., Applied Sciences 2024). Its soft contrastive term is
``crossmodal.losses.contrastive.info_nce_loss`` with temperature 4 (logits ``kappa * cos / 2`` with kappa = 0.5)."""

from __future__ import annotations

import torch

from crossmodal.losses.gce import Reduction, reduce


def smooth_label_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, epsilon: float, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Cross-entropy against label-smoothed targets.

    Equation:
        SCCMR §3.5: ``L_i = (eps / C) sum_c -log p_ic + (1 - eps) sum_c -y_ic log p_ic`` with ``p = softmax(logits)``,
        i.e. the cross-entropy against ``q = (1 - eps) y + eps / C``. Multi-hot targets sum over their positive
        classes, as the authors' code does.

    Inputs:
        logits: float32 (B, C). targets: float32 (B, C) one-hot or multi-hot. epsilon: smoothing in [0, 1]
        (0.9 in the authors' code). reduction: ``mean``, ``sum`` or ``none`` (B,).

    Reference:
        Song, Hu, Zhu, Zhang, Zhang, Zhang, "Soft Contrastive Cross-Modal Retrieval", Applied Sciences 14(5):1944, 2024.
    """
    log_p = torch.log_softmax(logits, dim=1)
    C = logits.shape[1]
    per_row = -(epsilon / C) * log_p.sum(dim=1) - (1 - epsilon) * (targets * log_p).sum(dim=1)
    return reduce(per_row, reduction)


def labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against label targets normalised to sum 1, averaged over the labelled rows only.

    Equation:
        ``(1/|L|) sum_{i in L} sum_c -(y_ic / sum_c' y_ic') log p_ic``: the usual cross-entropy for one-hot targets,
        a uniform target over the classes of a multi-hot one; rows with no label contribute nothing. The
        classification term of HCMSL's and RCAR's reconstructions.

    Inputs:
        logits: float32 (B, C). targets: float32 (B, C) one-hot, multi-hot or all-zero (unlabelled).

    Returns:
        float32 scalar (zero, with a gradient path, when no row is labelled).
    """
    mass = targets.sum(1, keepdim=True)
    per_row = -(targets / mass.clamp_min(1e-12) * torch.log_softmax(logits, dim=1)).sum(1)
    return per_row.sum() / (mass[:, 0] > 0).sum().clamp_min(1)
