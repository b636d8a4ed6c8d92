"""DSCMR: Deep Supervised Cross-Modal Retrieval.

Paper: Liangli Zhen, Peng Hu, Xu Wang, Dezhong Peng, "Deep Supervised Cross-Modal Retrieval", CVPR 2019,
pp. 10394-10403. Authors' code: github.com/penghu-cs/DSCMR (read for understanding; nothing copied).

What the paper and its code state (specs/methods-detail.md §7): two branches (image ``d -> 2048``, ReLU; text likewise)
whose outputs go through ONE linear layer shared by both (``2048 -> 1024``) into the common space, and a linear
classifier P shared by both. The loss is ``J = J1 + alpha J2 + beta J3``:

* J1, label-space discrimination: ``mean ||P u - y||_2 + mean ||P v - y||_2`` (row norms);
* J2, common-space discrimination: the pairwise-similarity likelihood over the image-image, image-text and text-text
  matrices with ``Theta = cos / 2`` and S = "shares a label";
* J3, modality invariance: ``mean ||u_i - v_i||_2`` over the pairs;

with alpha = 1e-3, beta = 0.1, Adam lr 1e-4, betas (0.5, 0.999), batch 100, 500 epochs (the code's values).

Choices here: the epoch is selected on the *validation* MAP (the code selects on the test set, which makes its
published numbers optimistic); batches are shuffled (the code's loader does not shuffle); P is a linear layer with a
bias. On more than two modalities it is trained per pair (crossmodal/methods/paired.py). SEDEL's modules plug in
through the ``sedel`` option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from crossmodal.encoders import mlp_encoder
from crossmodal.losses.dscmr import invariance_loss, label_similarity, pairwise_likelihood_loss
from crossmodal.losses.sdml import label_regression_loss
from crossmodal.methods.base import register_method
from crossmodal.methods.paired import PairBatch, PairData, PairedConfig, PairTrainer, PairwiseMethod, with_shared_layer


@dataclass(frozen=True)
class DSCMRConfig(PairedConfig):
    epochs: int = 500  # code: MAX_EPOCH 500
    batch_size: int = 100  # code: batch 100
    lr: float = 1e-4  # code: Adam lr 1e-4, betas (0.5, 0.999)
    hidden: tuple[int, ...] = (2048,)  # per-branch layers (ReLU after each): code d -> 2048
    dim: int = 1024  # common space: the shared linear layer 2048 -> 1024
    alpha: float = 1e-3  # weight of J2 (common-space discrimination)
    beta: float = 1e-1  # weight of J3 (modality invariance)


def dscmr_encoders(d_a: int, d_b: int, *, hidden: tuple[int, ...], dim: int) -> tuple[nn.Module, nn.Module]:
    """DSCMR's two encoders: per branch ``d -> hidden...`` with ReLU after each layer, then one shared
    ``Linear(hidden[-1] -> dim)``. Each is ``Sequential(branch, shared)``."""
    def branch(d: int) -> nn.Module:
        return nn.Sequential(mlp_encoder(d, hidden[:-1], hidden[-1], bias_last=True, normalize=False,
                                         last_init="default"), nn.ReLU())

    return with_shared_layer(branch(d_a), branch(d_b), hidden[-1], dim)


class _DSCMRTrainer(PairTrainer):
    def __init__(self, config: DSCMRConfig, d_a: int, d_b: int, num_classes: int):
        super().__init__()
        self.config = config
        self.encoder_a, self.encoder_b = dscmr_encoders(d_a, d_b, hidden=config.hidden, dim=config.dim)
        self.classifier = nn.Linear(config.dim, num_classes)  # P, shared by both modalities

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        j1 = label_regression_loss(self.classifier(u), batch.ya) + label_regression_loss(self.classifier(v), batch.yb)
        j2 = (pairwise_likelihood_loss(u, u, label_similarity(batch.ya, batch.ya))
              + pairwise_likelihood_loss(u, v, label_similarity(batch.ya, batch.yb))
              + pairwise_likelihood_loss(v, v, label_similarity(batch.yb, batch.yb)))
        return {"label_loss": j1, "common_loss": self.config.alpha * j2,
                "invariance_loss": self.config.beta * invariance_loss(u, v)}


@register_method
class DSCMR(PairwiseMethod):
    name: ClassVar[str] = "dscmr"
    Config: ClassVar[type[DSCMRConfig]] = DSCMRConfig

    def make_trainer(self, config: DSCMRConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _DSCMRTrainer(config, data.xa.shape[1], data.xb.shape[1], num_classes)

    @classmethod
    def make_encoders(cls, config: DSCMRConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return dscmr_encoders(d_a, d_b, hidden=config.hidden, dim=config.dim)
