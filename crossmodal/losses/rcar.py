"""RCAR's alignment refurbishment (Guo and Ding, FITEE 2023), in the form of NCR's soft-margin rectification.

RCAR's own formulas were not readable; the pieces below are the recipe its abstract names (a beta mixture over per-pair
losses, then refurbished alignment labels) written as NCR (Huang et al., NeurIPS 2021) and Arazo et al. (ICML 2019)
define them. See crossmodal/methods/rcar.py for what is a reconstruction.
"""

from __future__ import annotations

from typing import Literal

import torch

from crossmodal.losses.contrastive import cosine_matrix


def predicted_alignment(a: torch.Tensor, b: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """The model's belief that each given pair matches: the mean of both directions' softmax on the positive.

    Equation:
        ``p_i = 1/2 (softmax_j(s_ij)_i + softmax_j(s_ji)_i)`` with ``s_ij = cos(a_i, b_j) / tau`` (the InfoNCE form of
        NCR's predicted correspondence, specs/methods-detail.md §3.2b).

    Inputs:
        a, b: float32 (B, D) paired rows. temperature: tau > 0.

    Returns:
        float32 (B,) in [0, 1], detached.
    """
    with torch.no_grad():
        s = cosine_matrix(a, b) / temperature
        return 0.5 * (s.softmax(dim=1).diagonal() + s.softmax(dim=0).diagonal())


def refurbished_targets(noise_probability: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Refurbish the alignment label of each pair: trust the given pairing as much as it is probably clean.

    Equation:
        ``y^_i = (1 - w_i) * 1 + w_i * p_i`` (bootstrapping with the beta-mixture posterior, Arazo et al. 2019, Eq. 8;
        NCR's rectified correspondence), where 1 is the observed "aligned" label of every given pair.

    Inputs:
        noise_probability: float32 (B,) w_i = P(noisy | loss_i). predicted: float32 (B,) p_i in [0, 1].

    Returns:
        float32 (B,) refurbished alignment targets in [0, 1].
    """
    return (1 - noise_probability) + noise_probability * predicted


def soft_margin(targets: torch.Tensor, *, margin: float, phi: Literal["linear", "exp"] = "exp") -> torch.Tensor:
    """Per-pair margins that shrink with the refurbished alignment target.

    Equation:
        ``m_i = margin * phi(y^_i)`` with ``phi(y) = y`` (linear) or ``(10^y - 1) / 9`` (NCR's exponential form), so a
        pair judged noisy (y^ -> 0) is barely pulled together.

    Inputs:
        targets: float32 (B,) in [0, 1]. margin: the hinge margin (0.2 in NCR). phi: ``linear`` or ``exp``.

    Returns:
        float32 (B,).
    """
    if phi == "linear":
        return margin * targets
    if phi == "exp":
        return margin * (torch.pow(10.0, targets) - 1) / 9
    raise ValueError(f"unknown soft-margin phi {phi!r}; choose linear or exp")
