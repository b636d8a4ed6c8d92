"""Per-modality encoders: the MLP of DRCL (specs/drcl.md §2), reusable by every method.

DRCL (Pu et al., IEEE TMM 2025) gives each modality an independent MLP ``d_k -> 4096 -> 4096 -> D`` with ReLU, a last
Linear without bias whose weight is drawn from U(-1/sqrt(d_k), +1/sqrt(d_k)) (d_k is the *input* width, as the reference
code does), and a row-wise L2 normalisation of the output. There is no dropout and no normalisation layer (§9.9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "gelu", "tanh", "sigmoid"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class L2Normalize(nn.Module):
    """Divide each row by its L2 norm (the reference divides with no epsilon; 1e-12 only guards an all-zero row)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(h.float(), dim=1, eps=1e-12)


def mlp_encoder(
    in_dim: int,
    hidden: Sequence[int] = (4096, 4096),
    out_dim: int = 2048,
    *,
    bias_last: bool = False,
    activation: Activation = "relu",
    normalize: bool = True,
    last_init: Literal["inverse_sqrt_input", "default"] = "inverse_sqrt_input",
) -> nn.Sequential:
    """Build the MLP ``in_dim -> hidden... -> out_dim`` (DRCL's ``Data_Net`` with the defaults).

    Args:
        in_dim: d_k, the width of the modality's input features.
        hidden: widths of the hidden layers, each followed by ``activation``.
        out_dim: D, the width of the common space.
        bias_last: whether the last Linear has a bias (DRCL: no).
        activation: the non-linearity after each hidden layer.
        normalize: end with a row-wise L2 normalisation, so the output lies on the unit sphere (DRCL: yes).
        last_init: ``"inverse_sqrt_input"`` draws the last weight from U(±1/sqrt(in_dim)) as DRCL does; ``"default"``
            keeps PyTorch's Kaiming-uniform init. Hidden layers always use PyTorch's default init.

    Returns:
        ``nn.Sequential`` mapping float32 (n, in_dim) to float32 (n, out_dim) (unit rows when ``normalize``).
        Uses the global torch RNG for its init: seed it (or fork it) before calling for reproducible weights.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        # In place: the Linear's output is not needed for its backward, and a fresh (batch, width) buffer per layer
        # costs an allocation and a pass over memory.
        act = nn.ReLU(inplace=True) if activation == "relu" else _ACTIVATIONS[activation]()
        layers += [nn.Linear(width, h), act]
        width = h
    last = nn.Linear(width, out_dim, bias=bias_last)
    if last_init == "inverse_sqrt_input":
        bound = 1.0 / math.sqrt(in_dim)
        with torch.no_grad():
            last.weight.uniform_(-bound, bound)
    layers.append(last)
    if normalize:
        layers.append(L2Normalize())
    return nn.Sequential(*layers)


def linear_layers(encoder: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an encoder in order (used to count its multiply-adds)."""
    return [m for m in encoder.modules() if isinstance(m, nn.Linear)]
