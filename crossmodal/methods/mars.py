"""MARS: learning Modality-Agnostic Representation for Scalable cross-media retrieval (a reconstruction).

Paper: Yunbo Wang, Yuxin Peng, "MARS: Learning Modality-Agnostic Representation for Scalable Cross-Media Retrieval",
IEEE Transactions on Circuits and Systems for Video Technology 32(7), 2022, doi 10.1109/TCSVT.2021.3136330. No public
code; only the abstract was readable.

What the paper states (abstract): labels are treated as a modality; a label network (LabNet) parses a label vector into
a semantic representation; per modality a data network (DataNet) produces a modality-*shared* and a modality-*exclusive*
representation "equipped with unbiased semantic classification"; LabNet and the first modality's DataNet are trained
jointly to preserve the semantic similarity between the label-derived and the shared representation; the frozen
LabNet's representation is then privileged information that guides each later DataNet, trained independently. The DRCL
paper groups MARS with SDML as methods guided by a fixed random orthogonal matrix, and plugs its learned prior into MARS
(Table VI), so MARS has SDML's W.

What is reconstructed here (specs/methods-detail.md §6.2):

* LabNet h: ``C -> 1024 -> ReLU -> D`` (L2-normalised); DataNet_k: a trunk ``d_k -> 1024 -> 1024`` (ReLU), a shared
  head s_k (``-> D``, L2-normalised: the retrieval embedding) and an exclusive head e_k (``-> D``); a decoder
  ``[s; e] -> d_k``; a fixed W (D x C) as SDML's, D = 512;
* stage 1 (first modality with LabNet): J_sim, DSCMR's pairwise likelihood between s(x) and h(y) and between h(y) and
  h(y), S = "shares a label"; J_cls = ``mean ||s W - y|| + mean ||h(y) W - y||`` (SDML form); J_rec = ``mean ||dec(s, e)
  - x||``; J_orth = ``mean (cos(s, e))^2``; J_unb: a linear probe classifies e through a gradient-reversal layer, so
  the probe learns to find label information in e and the DataNet learns to remove it (the "unbiased" exclusive part);
  ``J = J_sim + J_cls + 0.5 J_rec + 0.1 J_orth + 0.1 J_unb``;
* stage k >= 2: LabNet frozen; each DataNet alone with J_sim (data-label term only), J_cls, J_rec, J_orth, J_unb;
* SDML's optimiser (Adam lr 1e-4, betas (0.5, 0.999), batch 100, 200 epochs), and SDML's selection: per modality the
  epoch with the lowest validation ``||s W - y||``. Only the trunk and shared head are kept in the model;
* SDML's training (``crossmodal.methods.sdml.FixedSpaceMethod``, the toolkit's loop); LabNet is built under the
  stream ``(seed, "mars:labnet")``, each DataNet under ``(seed, "mars:<modality>")``.

A faithful MARS should land near SDML (within about 0.02 MAP, DRCL Tables II/III). ``prior_from`` (Table VI) replaces
W with a DRCL model's learned prior, as for SDML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.encoders import L2Normalize, mlp_encoder
from crossmodal.losses.dscmr import label_similarity, pairwise_likelihood_loss
from crossmodal.losses.sccmr import labelled_cross_entropy
from crossmodal.losses.sdml import label_regression_loss, reconstruction_loss
from crossmodal.methods.base import register_method, seeded
from crossmodal.methods.sdml import FixedSpaceMethod, ModalityNets


@dataclass(frozen=True)
class MARSConfig(MethodConfig):
    epochs: int = 200  # SDML's schedule (reconstruction)
    batch_size: int = 100  # SDML's batch
    dim: int = 512  # D, the common space (SDML's)
    hidden: tuple[int, ...] = (1024, 1024)  # DataNet trunk widths (ReLU)
    label_hidden: tuple[int, ...] = (1024,)  # LabNet hidden widths (ReLU)
    lambda_rec: float = 0.5  # weight of the reconstruction of x from [s; e]
    lambda_orth: float = 0.1  # weight of the shared/exclusive orthogonality
    lambda_unb: float = 0.1  # weight of the adversarial probe on the exclusive part ("unbiased")
    lr: float = 1e-4  # Adam lr (SDML's)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (SDML's)
    prior_seed: int = 1000  # seed of the random orthogonal W
    prior_from: str | None = None  # DRCL Table VI: a DRCL model directory whose learned prior replaces W


class _DataNet(nn.Module):
    """Trunk with a shared head (the saved encoder: ``trunk -> shared -> L2``) and an exclusive head."""

    def __init__(self, config: MARSConfig, d: int):
        super().__init__()
        width = config.hidden[-1]
        self.encoder = nn.Sequential(
            nn.Sequential(mlp_encoder(d, config.hidden[:-1], width, bias_last=True, normalize=False,
                                      last_init="default"), nn.ReLU()),
            nn.Linear(width, config.dim), L2Normalize())
        self.exclusive = nn.Linear(width, config.dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk, shared, normalize = self.encoder
        h = trunk(x)
        return normalize(shared(h)), self.exclusive(h)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


@register_method
class MARS(FixedSpaceMethod):
    name: ClassVar[str] = "mars"
    Config: ClassVar[type[MARSConfig]] = MARSConfig

    def shared(self, config: MARSConfig, num_classes: int, device: torch.device) -> nn.Module:
        """LabNet, trained with the first modality and frozen after."""
        with seeded(config.seed, "mars:labnet"):
            labnet = mlp_encoder(num_classes, config.label_hidden, config.dim, bias_last=True, last_init="default")
        return labnet.to(device)

    def networks(self, config: MARSConfig, k: int, d: int, num_classes: int, W: torch.Tensor,
                 labnet: nn.Module) -> ModalityNets:
        """DataNet, the decoder of [s; e] and the adversarial probe; LabNet trains with the first modality only."""
        net = _DataNet(config, d)
        decoder = mlp_encoder(2 * config.dim, config.hidden[::-1], d, bias_last=True, normalize=False,
                              last_init="default")
        probe = nn.Linear(config.dim, num_classes)
        first = k == 0
        labnet.requires_grad_(first)
        trained = nn.ModuleDict({"net": net, "decoder": decoder, "probe": probe})
        if first:
            trained["labnet"] = labnet

        def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            s, e = net(x)
            rows = torch.nonzero(y.sum(1) > 0).flatten()
            s_l, y_l = s[rows], y[rows]
            h = labnet(y_l)
            S = label_similarity(y_l, y_l)
            sim = pairwise_likelihood_loss(s_l, h, S)
            cls = label_regression_loss(s @ W, y)
            if first:
                sim = sim + pairwise_likelihood_loss(h, h, S)
                cls = cls + label_regression_loss(h @ W, y_l)
            orth = (nn.functional.cosine_similarity(s, e, dim=1) ** 2).mean()
            unbiased = labelled_cross_entropy(probe(_ReverseGradient.apply(e)), y)
            recon = reconstruction_loss(decoder(torch.cat([s, e], 1)), x)
            return {"similarity_loss": sim, "label_loss": cls, "reconstruction_loss": config.lambda_rec * recon,
                    "orthogonality_loss": config.lambda_orth * orth, "unbiased_loss": config.lambda_unb * unbiased}

        keep = nn.ModuleDict({"encoder": net.encoder, **({"labnet": labnet} if first else {})})
        return ModalityNets(step, trained, keep=keep, encoder=net.encoder, lr=config.lr)

    @classmethod
    def encoder(cls, config: MARSConfig, d: int) -> nn.Module:
        return _DataNet(config, d).encoder
