"""RCAR: Robust Cross-modal retrieval with Alignment Refurbishment (a reconstruction).

Paper: Jinyi Guo, Jieyu Ding, "Robust cross-modal retrieval with alignment refurbishment", Frontiers of Information
Technology & Electronic Engineering 24(10):1403-1415, 2023, doi 10.1631/FITEE.2200514. No public code; the abstract and
the opening of the introduction were readable.

What the paper states: training pairs may be *noise-aligned* (paired but mismatched in meaning); RCAR (1) uses
multi-task learning to slow down the overfitting to the noise so that clean and noisy pairs become separable by their
loss, (2) fits a two-component beta mixture to divide clean from noisy alignments, (3) refurbishes each pair's
alignment label according to the posterior probability of the noise component; it defines *partial* and *complete*
noise and claims robustness to both.

What is reconstructed here (specs/methods-detail.md §3), following the recipes RCAR names (NCR, Huang et al.,
NeurIPS 2021, with Arazo et al.'s beta mixture, ICML 2019):

* two MLP encoders ``d -> 1024 -> 1024`` into the common space;
* warm-up (``warmup_epochs``): the bidirectional hinge loss averaged over the negatives (NCR's warm-up form, which
  memorises noise slowly) plus an auxiliary task a wrong pairing cannot corrupt: classification of each modality's
  embedding by a shared classifier (an item's label is right even when its pairing is wrong), or per-modality
  reconstruction (``aux="reconstruction"``) for unlabelled data. That is our reading of "multi-task learning";
* after warm-up, at the start of every epoch: each pair's warm-up loss (in eval mode, against the other pairs of its
  batch-sized chunk) is fitted by the beta mixture (crossmodal/beta_mixture.py) giving w_i = P(noisy); during the
  epoch each pair's target is refurbished to ``(1 - w_i) + w_i p_i``, with p_i the model's own belief that the pair
  matches (the softmax of the positive in both directions, temperature 0.05), and the pair is trained with the
  hardest-negative hinge (VSE++) whose margin is ``0.2 * phi(target)`` (NCR's soft margin, phi exponential), plus the
  auxiliary task;
* Adam lr 2e-4, batch 128, 40 epochs, warm-up 5 (NCR's values, scaled to small feature sets); NCR's gradient clipping
  (2.0) is not applied (the shared training loop has none); the epoch is selected on the validation MAP.

Alignment noise (crossmodal/noise.py) uses the toolkit's class-aware reading of partial/complete, which the paper's
exact definitions may not match. RCAR is an instance-level method: its alignment loss treats every other item of the
batch, same class or not, as a negative; class knowledge enters only through the auxiliary classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from crossmodal.beta_mixture import noise_posterior
from crossmodal.encoders import mlp_encoder
from crossmodal.losses.contrastive import hinge_triplet_loss
from crossmodal.losses.rcar import predicted_alignment, refurbished_targets, soft_margin
from crossmodal.losses.sccmr import labelled_cross_entropy
from crossmodal.losses.sdml import reconstruction_loss
from crossmodal.methods.base import numpy_rng, register_method
from crossmodal.methods.paired import PairBatch, PairData, PairedConfig, PairTrainer, PairwiseMethod


@dataclass(frozen=True)
class RCARConfig(PairedConfig):
    epochs: int = 40  # NCR: 40 epochs
    batch_size: int = 128  # NCR: batch 128
    lr: float = 2e-4  # NCR: Adam lr 2e-4
    betas: tuple[float, float] = (0.9, 0.999)  # NCR: Adam defaults
    hidden: tuple[int, ...] = (1024,)  # per-modality MLP hidden widths (ReLU)
    dim: int = 1024  # D, the common space (NCR: 1024)
    warmup_epochs: int = 5  # multi-task warm-up before the first beta-mixture fit
    margin: float = 0.2  # hinge margin alpha (NCR/VSE++)
    soft_margin: Literal["linear", "exp"] = "exp"  # phi of the soft margin (NCR: exponential)
    temperature: float = 0.05  # tau of the model's predicted alignment p_i
    aux: Literal["classification", "reconstruction"] = "classification"  # the auxiliary task of the multi-task warm-up
    lambda_aux: float = 1.0  # weight of the auxiliary task
    bmm_iterations: int = 10  # EM iterations of the beta mixture (Arazo et al.)


def _encoders(config: RCARConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
    return (mlp_encoder(d_a, config.hidden, config.dim, bias_last=True, normalize=False, last_init="default"),
            mlp_encoder(d_b, config.hidden, config.dim, bias_last=True, normalize=False, last_init="default"))


class _RCARTrainer(PairTrainer):
    def __init__(self, config: RCARConfig, data: PairData, num_classes: int):
        super().__init__()
        self.config = config
        d_a, d_b = data.xa.shape[1], data.xb.shape[1]
        self.encoder_a, self.encoder_b = _encoders(config, d_a, d_b)
        if config.aux == "classification":
            self.classifier = nn.Linear(config.dim, num_classes)
        else:
            self.decoder_a, self.decoder_b = (
                mlp_encoder(config.dim, config.hidden[::-1], d, bias_last=True, normalize=False, last_init="default")
                for d in (d_a, d_b))
        self.noise = torch.zeros(0)  # w_i of this epoch's pairs; empty during warm-up

    def start_epoch(self, epoch: int, data: PairData, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
        if epoch <= self.config.warmup_epochs:
            self.noise = torch.zeros(0)
            return
        losses = np.zeros(len(rows_a))
        rng = numpy_rng(self.config.seed, data.a, data.b, "noise-chunks", epoch)
        self.eval()
        with torch.no_grad():
            order = rng.permutation(len(rows_a))
            for chunk in np.array_split(order, max(1, len(order) // self.config.batch_size)):
                u = self.encoder_a(data.xa[torch.from_numpy(rows_a[chunk]).to(data.xa.device)])
                v = self.encoder_b(data.xb[torch.from_numpy(rows_b[chunk]).to(data.xb.device)])
                losses[chunk] = hinge_triplet_loss(u, v, margin=self.config.margin, hardest=False,
                                                   reduction="none").cpu().numpy()
        self.train()
        w = noise_posterior(losses, iterations=self.config.bmm_iterations)
        self.noise = torch.from_numpy(w.astype(np.float32)).to(data.xa.device)

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        parts = {"aux_loss": cfg.lambda_aux * self._aux(batch, u, v)}
        if len(self.noise) == 0:
            parts["align_loss"] = hinge_triplet_loss(u, v, margin=cfg.margin, hardest=False)
            return parts
        w = self.noise[batch.position]
        target = refurbished_targets(w, predicted_alignment(u, v, temperature=cfg.temperature))
        margins = soft_margin(target, margin=cfg.margin, phi=cfg.soft_margin)
        parts["align_loss"] = hinge_triplet_loss(u, v, margin=margins, hardest=True)
        parts["noisy_fraction"] = (w > 0.5).float().mean()  # logged, not trained: the beta mixture's split
        return parts

    def _aux(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.config.aux == "reconstruction":
            return reconstruction_loss(self.decoder_a(u), batch.xa) + reconstruction_loss(self.decoder_b(v), batch.xb)
        return (labelled_cross_entropy(self.classifier(u), batch.ya)
                + labelled_cross_entropy(self.classifier(v), batch.yb))


@register_method
class RCAR(PairwiseMethod):
    name: ClassVar[str] = "rcar"
    Config: ClassVar[type[RCARConfig]] = RCARConfig

    def make_trainer(self, config: RCARConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _RCARTrainer(config, data, num_classes)

    @classmethod
    def make_encoders(cls, config: RCARConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return _encoders(config, d_a, d_b)
