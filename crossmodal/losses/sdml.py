"""The regression losses of SDML (Hu et al., SIGIR 2019), reused by DSCMR's label-space term: mean row L2 norms."""

from __future__ import annotations

import torch

from crossmodal.losses.gce import Reduction, reduce


def label_regression_loss(predicted: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
                          ) -> torch.Tensor:
    """Mean L2 distance between predicted label vectors and targets, over the labelled rows only.

    Equation:
        SDML Eq. 3 (second term): ``(1/|L|) sum_{i in L} ||z_i W - y_i||_2`` with ``predicted = z W``; DSCMR's J1 is
        the same with ``predicted = P^T u``. Row norms, not squared, as the authors' code computes them.

    Inputs:
        predicted: float32 (B, C). targets: float32 (B, C) one-hot or multi-hot; all-zero rows (unlabelled) are
        skipped. reduction: ``mean`` over labelled rows, ``sum``, or ``none`` (B,) with zeros for unlabelled rows.

    Reference:
        Hu, Zhen, Peng, Liu, "Scalable Deep Multimodal Learning for Cross-Modal Retrieval", SIGIR 2019;
        Zhen, Hu, Wang, Peng, "Deep Supervised Cross-Modal Retrieval", CVPR 2019.

    Returns:
        float32 scalar (zero, with a gradient path, when no row is labelled).
    """
    labelled = targets.sum(dim=1) > 0
    per_row = (predicted - targets).norm(dim=1) * labelled
    if reduction == "mean":
        return per_row.sum() / labelled.sum().clamp_min(1)
    return reduce(per_row, reduction)


def reconstruction_loss(reconstructed: torch.Tensor, inputs: torch.Tensor, reduction: Reduction = "mean"
                        ) -> torch.Tensor:
    """Mean row L2 distance between a decoder's output and the encoder's input.

    Equation:
        SDML Eq. 3 (first term): ``(1/B) sum_i ||g(f(x_i)) - x_i||_2`` (row norms, not squared, as in the code).

    Inputs:
        reconstructed, inputs: float32 (B, d). reduction: ``mean``, ``sum`` or ``none`` (B,).

    Reference:
        Hu, Zhen, Peng, Liu, "Scalable Deep Multimodal Learning for Cross-Modal Retrieval", SIGIR 2019.
    """
    return reduce((reconstructed - inputs).norm(dim=1), reduction)
