"""HCMSL: Hybrid Cross-Modal Similarity Learning (a reconstruction).

Paper: Chengyuan Zhang, Jiayu Song, Xiaofeng Zhu, Lei Zhu, Shichao Zhang, "HCMSL: Hybrid Cross-modal Similarity
Learning for Cross-modal Retrieval", ACM Transactions on Multimedia Computing, Communications, and Applications 17(1),
Article 2, 2021, doi 10.1145/3412847. No public code; only the abstract was readable.

What the paper states (abstract): semantics are captured "from both labeled and unlabeled cross-modal pairs and
intra-modal pairs with same classification label"; coupled deep fully connected networks map the two modalities into
a common subspace, with weight sharing between the two branches to reduce heterogeneity; "two Siamese CNN models are
employed to learn intra-modal similarity from samples of same modality".

What is reconstructed here (specs/methods-detail.md §2.2), in the DSCMR-derived codebase the same group's SCCMR reuses:

* DSCMR's networks: branches ``d -> 2048 -> ReLU`` whose outputs go through ONE shared linear layer ``2048 -> 1024``
  (the common space), and a shared linear classifier P;
* J_cls: cross-entropy of P on the labelled items of both modalities (a multi-hot label is a uniform target over its
  classes);
* J_cross: DSCMR's pairwise likelihood between the batch's images and texts, with S = "shares a label" where both items
  are labelled and S = "is the given pair" where either is unlabelled ("hybrid": label- and pairing-derived
  similarity), plus J_inv, the mean distance between paired representations;
* J_siam: per modality, a Siamese head (tied weights, ``2048 -> 1024 -> 256``) on the branch's hidden layer, trained
  with the margin contrastive loss (margin 1) on every pair of labelled same-modality items in the batch. Feeding the
  heads the branch's hidden layer (rather than raw features) is the choice that lets the intra-modal similarity shape
  the common space; on pre-extracted features "Siamese CNN" becomes "Siamese MLP";
* ``J = J_cls + lambda1 J_cross + lambda2 J_inv + lambda3 (J_siam_image + J_siam_text)`` with DSCMR's 1e-3 and 0.1 and
  lambda3 = 1e-2; Adam lr 1e-4, betas (0.5, 0.999), batch 100, 200 epochs; selection on the validation MAP;
* ``labeled_fraction`` hides the labels of a seeded fraction of the training pairs (semi-supervised setting). It needs
  row-paired data: with same-class sampling every pair is made from labels.

Not offered: the "hybrid similarity" at retrieval time (mixing the cross-modal cosine with an intra-modal one through
the query's paired partner) needs a paired gallery, which ``encode`` cannot see; retrieval uses the common-space cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from crossmodal.encoders import mlp_encoder
from crossmodal.errors import ConfigError
from crossmodal.losses.contrastive import margin_contrastive_loss
from crossmodal.losses.dscmr import invariance_loss, label_similarity, pairwise_likelihood_loss
from crossmodal.losses.sccmr import labelled_cross_entropy
from crossmodal.methods.base import numpy_rng, register_method
from crossmodal.methods.dscmr import dscmr_encoders
from crossmodal.methods.paired import PairBatch, PairData, PairedConfig, PairTrainer, PairwiseMethod


@dataclass(frozen=True)
class HCMSLConfig(PairedConfig):
    epochs: int = 200  # reconstruction (SDML/DSCMR-scale run)
    batch_size: int = 100  # DSCMR's batch
    lr: float = 1e-4  # DSCMR's Adam lr, betas (0.5, 0.999)
    hidden: tuple[int, ...] = (2048,)  # per-branch layers (ReLU after each), as DSCMR
    dim: int = 1024  # common space: the shared linear layer
    siamese: tuple[int, ...] = (1024, 256)  # Siamese head on the branch's hidden layer (last = its output width)
    margin: float = 1.0  # margin of the Siamese contrastive loss (Hadsell et al.)
    lambda_cross: float = 1e-3  # lambda1: cross-modal pairwise likelihood (DSCMR's alpha)
    lambda_inv: float = 1e-1  # lambda2: invariance between paired representations (DSCMR's beta)
    lambda_siam: float = 1e-2  # lambda3: intra-modal Siamese losses
    labeled_fraction: float = 1.0  # fraction of training pairs whose labels are used (the rest count as unlabelled)


class _HCMSLTrainer(PairTrainer):
    labelled_rows: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, config: HCMSLConfig, data: PairData, num_classes: int):
        super().__init__()
        self.config = config
        self.encoder_a, self.encoder_b = dscmr_encoders(data.xa.shape[1], data.xb.shape[1], hidden=config.hidden,
                                                        dim=config.dim)
        self.classifier = nn.Linear(config.dim, num_classes)

        def head() -> nn.Module:
            return mlp_encoder(config.hidden[-1], config.siamese[:-1], config.siamese[-1], bias_last=True,
                               normalize=False, last_init="default")

        self.siamese_a, self.siamese_b = head(), head()
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None
        keep = np.ones(len(data.xa), dtype=bool)
        if config.labeled_fraction < 1:
            if data.pairing != "rows":
                raise ConfigError("labeled_fraction < 1 needs row-paired data (same-class pairs are made from labels)",
                                  hint="use a paired dataset, or labeled_fraction=1")
            rng = numpy_rng(config.seed, data.a, data.b, "labelled")
            keep[rng.permutation(len(keep))[int(round(config.labeled_fraction * len(keep))):]] = False
        self.register_buffer("labelled_rows", torch.from_numpy(keep))

    def embed(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Keeps the branches' hidden outputs for the Siamese heads."""
        (branch_a, shared), (branch_b, _) = self.encoder_a.children(), self.encoder_b.children()
        h_a, h_b = self.hidden = branch_a(batch.xa), branch_b(batch.xb)
        return shared(h_a), shared(h_b)

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        known = self.labelled_rows[batch.rows_a].to(u.dtype)[:, None]  # in row pairing rows_a == rows_b
        ya, yb = batch.ya * known, batch.yb * known
        labelled = (ya.sum(1) > 0) & (yb.sum(1) > 0)
        both = labelled[:, None] & labelled[None, :]
        same_pair = torch.eye(len(u), dtype=u.dtype, device=u.device)
        similarity = torch.where(both, label_similarity(ya, yb), same_pair)
        assert self.hidden is not None, "embed() runs before losses() in every step"
        h_a, h_b = self.hidden
        return {
            "label_loss": (labelled_cross_entropy(self.classifier(u), ya)
                           + labelled_cross_entropy(self.classifier(v), yb)),
            "cross_loss": cfg.lambda_cross * pairwise_likelihood_loss(u, v, similarity),
            "invariance_loss": cfg.lambda_inv * invariance_loss(u, v),
            "siamese_loss": cfg.lambda_siam * (self._siamese(self.siamese_a(h_a), ya)
                                               + self._siamese(self.siamese_b(h_b), yb)),
        }

    def _siamese(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Margin contrastive loss over every pair (i < j) of labelled items of one modality."""
        rows = torch.nonzero(y.sum(1) > 0).flatten()
        i, j = torch.triu_indices(len(rows), len(rows), offset=1, device=s.device)
        if len(i) == 0:
            return s.sum() * 0
        same = label_similarity(y[rows], y[rows])[i, j]
        return margin_contrastive_loss(s[rows[i]], s[rows[j]], same, margin=self.config.margin)


@register_method
class HCMSL(PairwiseMethod):
    name: ClassVar[str] = "hcmsl"
    Config: ClassVar[type[HCMSLConfig]] = HCMSLConfig

    def check(self, config: HCMSLConfig) -> None:
        if not 0 < config.labeled_fraction <= 1:
            raise ConfigError(f"labeled_fraction must be in (0, 1], got {config.labeled_fraction}")

    def make_trainer(self, config: HCMSLConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _HCMSLTrainer(config, data, num_classes)

    @classmethod
    def make_encoders(cls, config: HCMSLConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return dscmr_encoders(d_a, d_b, hidden=config.hidden, dim=config.dim)
