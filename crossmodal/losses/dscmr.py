"""The common-space losses of DSCMR (Zhen et al., CVPR 2019); its label-space term J1 is
``crossmodal.losses.sdml.label_regression_loss``. HCMSL and MARS reuse the pairwise likelihood."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.losses.contrastive import cosine_matrix
from crossmodal.losses.gce import Reduction, reduce


def label_similarity(ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """float32 (n, m): 1 where rows of ``ya`` (n, C) and ``yb`` (m, C) share a label, else 0 (DSCMR's S)."""
    return ((ya @ yb.T) > 0).to(ya.dtype)


def pairwise_likelihood_loss(
    a: torch.Tensor, b: torch.Tensor, similarity: torch.Tensor, *, scale: float = 0.5, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Negative log-likelihood of the pairwise similarities (the common-space discrimination loss).

    Equation:
        DSCMR Eq. 2-4 (J2, one of its three matrices): with ``Theta_ij = scale * cos(a_i, b_j)``,
        ``L = mean_ij [ log(1 + exp(Theta_ij)) - S_ij Theta_ij ]``.

    Inputs:
        a: float32 (n, D). b: float32 (m, D). similarity: float32 (n, m) S in {0, 1}.
        scale: the 1/2 of DSCMR's Theta. reduction: ``mean`` over all n*m entries, ``sum`` or ``none`` (n, m).

    Reference:
        Zhen, Hu, Wang, Peng, "Deep Supervised Cross-Modal Retrieval", CVPR 2019.
    """
    theta = scale * cosine_matrix(a, b)
    return reduce(F.softplus(theta) - similarity * theta, reduction)


def invariance_loss(u: torch.Tensor, v: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Modality invariance: mean L2 distance between the paired common representations.

    Equation:
        DSCMR Eq. 6 (J3): ``(1/n) sum_i ||u_i - v_i||_2`` (row norms as in the authors' code).

    Inputs:
        u, v: float32 (n, D) paired rows. reduction: ``mean``, ``sum`` or ``none`` (n,).

    Reference:
        Zhen, Hu, Wang, Peng, "Deep Supervised Cross-Modal Retrieval", CVPR 2019.
    """
    return reduce((u - v).norm(dim=1), reduction)
