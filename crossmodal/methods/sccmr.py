"""SCCMR: Soft Contrastive Cross-Modal Retrieval.

Paper: Jiayu Song, Yuxuan Hu, Lei Zhu, Chengyuan Zhang, Jian Zhang, Shichao Zhang, "Soft Contrastive Cross-Modal
Retrieval", Applied Sciences 14(5):1944, 2024, doi 10.3390/app14051944. Authors' code: github.com/Mario0716/SCCMR-master
(derived from DSCMR's; read for understanding, nothing copied).

What the paper states: a deep cross-modal model learns a common subspace with a *soft contrastive* loss (a smooth
boundary in the embedding space) and a *smooth-label cross-entropy* (to "balance the noise data"); its notation names a
temperature and a smoothing parameter; a 3-layer FC stack per modality feeds both losses and a shared label classifier.

What its code does, and what is chosen here (specs/methods-detail.md §1):

* per modality an MLP ``d -> 2048 -> tanh -> 2048 -> tanh -> 1024``, then ONE linear layer shared by both modalities
  (``1024 -> 1024``) giving the common feature, then a shared linear classifier ``1024 -> C``;
* soft contrastive loss: InfoNCE image -> text over the batch's pairs whose logits are ``kappa * cos / 2`` with
  kappa = 0.5, i.e. ``cos / tau`` with ``tau = 4`` (``temperature = 4.0`` here). The paper calls kappa a temperature,
  which would normally divide; ``temperature = 0.5`` is that reading. ``both_directions`` adds text -> image (off, as in
  the code);
* smooth-label cross-entropy on each modality's classifier output with epsilon = 0.9 (the code's value; the usual 0.1
  is a ``--set epsilon=0.1`` away);
* total ``alpha * L_sc + L_sce_image + L_sce_text`` with alpha = 1e-4, Adam lr 1e-4, betas (0.5, 0.999), batch 64,
  100 epochs;
* the epoch is selected on the validation MAP (the code selects on the test set); batches are shuffled.

The paper claims robustness to noise through the label smoothing, i.e. to *label* noise; its noise protocol was not
readable, so the toolkit's benchmark applies MRL's symmetric label noise (crossmodal/noise.py) to it like every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from crossmodal.encoders import mlp_encoder
from crossmodal.losses.contrastive import info_nce_loss
from crossmodal.losses.sccmr import smooth_label_cross_entropy
from crossmodal.methods.base import register_method
from crossmodal.methods.paired import PairBatch, PairData, PairedConfig, PairTrainer, PairwiseMethod, with_shared_layer


@dataclass(frozen=True)
class SCCMRConfig(PairedConfig):
    epochs: int = 100  # code: 100 epochs
    batch_size: int = 64  # code: batch 64
    lr: float = 1e-4  # code: Adam lr 1e-4, betas (0.5, 0.999)
    hidden: tuple[int, ...] = (2048, 2048, 1024)  # per-modality MLP widths (tanh between; the last layer is linear)
    dim: int = 1024  # common space: the shared linear layer 1024 -> 1024
    temperature: float = 4.0  # tau of the soft contrastive InfoNCE: code logits kappa*cos/2, kappa=0.5 -> tau=4
    both_directions: bool = False  # add the text -> image term (the code has image -> text only)
    epsilon: float = 0.9  # label smoothing of the smooth-label cross-entropy (code: 0.9)
    alpha: float = 1e-4  # weight of the soft contrastive loss (code params.json)


def _encoders(config: SCCMRConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
    def branch(d: int) -> nn.Module:
        return mlp_encoder(d, config.hidden[:-1], config.hidden[-1], bias_last=True, activation="tanh",
                           normalize=False, last_init="default")

    return with_shared_layer(branch(d_a), branch(d_b), config.hidden[-1], config.dim)


class _SCCMRTrainer(PairTrainer):
    def __init__(self, config: SCCMRConfig, d_a: int, d_b: int, num_classes: int):
        super().__init__()
        self.config = config
        self.encoder_a, self.encoder_b = _encoders(config, d_a, d_b)
        self.classifier = nn.Linear(config.dim, num_classes)  # the shared label classifier

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        contrastive = info_nce_loss(u, v, temperature=cfg.temperature)
        if cfg.both_directions:
            contrastive = 0.5 * (contrastive + info_nce_loss(v, u, temperature=cfg.temperature))
        smooth = (smooth_label_cross_entropy(self.classifier(u), batch.ya, epsilon=cfg.epsilon)
                  + smooth_label_cross_entropy(self.classifier(v), batch.yb, epsilon=cfg.epsilon))
        return {"contrastive_loss": cfg.alpha * contrastive, "smooth_label_loss": smooth}


@register_method
class SCCMR(PairwiseMethod):
    name: ClassVar[str] = "sccmr"
    Config: ClassVar[type[SCCMRConfig]] = SCCMRConfig

    def make_trainer(self, config: SCCMRConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _SCCMRTrainer(config, data.xa.shape[1], data.xb.shape[1], num_classes)

    @classmethod
    def make_encoders(cls, config: SCCMRConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return _encoders(config, d_a, d_b)
