"""SEDEL: three plug-in modules for two-branch cross-modal models, and a base two-branch model that uses them.

Paper: Hao Pan and Jun Huang, "Semantic-enhanced discriminative embedding learning for cross-modal retrieval",
International Journal of Multimedia Information Retrieval (IJMIR) 11, 2022, doi 10.1007/s13735-022-00237-6.

What the paper states (abstract; the full text and any code were not reachable): three modules, each "integrated into
three existing cross-modal retrieval models", that steadily improve them:

1. attention-guided erasing: the attention may weigh irrelevant parts; erasing the non-attended parts makes the model
   focus on the relevant ones;
2. large-scale negative sampling with momentum-updated memory banks, so the hardest negatives are more likely sampled;
3. a weighted InfoNCE that gives harder pairs larger weights.

What is a reconstruction here (specs/methods-detail.md §4.2):

* Weighted InfoNCE (``crossmodal.losses.sedel.weighted_info_nce_loss``): ``hardness`` weights each negative by a
  softmax of its similarity (the default), ``focal`` weights each query by ``(1 - p)^gamma``; applied in both
  directions and averaged.
* Memory banks (MoCo style): momentum copies of both encoders (``theta~ <- m theta~ + (1 - m) theta``, updated before
  each step from the previous step's weights) embed the batch's positives; FIFO queues of past keys (at most
  ``min(queue, N_train - B)`` each) add negatives. ``sedel_mask_same_class`` (off by default; the paper says nothing)
  removes same-class keys from the negatives.
* Attention-guided erasing needs set-valued features (regions, words, frames, clips): an attention pools the parts and
  a second, erased view keeps only the top-``rho`` attended parts and is trained with the same loss. The toolkit's
  features are one global vector per item (FeatureSet.X is (n, d)), so there is nothing to erase: asking for it on
  them raises a ConfigError. ``SetEncoder`` and ``erased_view`` implement it for (n, parts, d) inputs.

The modules plug into ``dscmr``, ``sccmr``, ``hcmsl`` and ``rcar`` through their ``sedel_*`` config fields
(``sedel_weight > 0`` turns them on). The ``sedel`` method itself is a plain two-branch model (an MLP per modality into
a common space) trained by the modules alone, without labels: the closest thing to "a base model plus SEDEL" that runs
on global features.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from crossmodal.encoders import mlp_encoder
from crossmodal.errors import ConfigError
from crossmodal.featureset import FeatureSet
from crossmodal.losses.dscmr import label_similarity
from crossmodal.losses.sedel import Weighting, weighted_info_nce_loss
from crossmodal.methods.base import Callback, register_method
from crossmodal.methods.paired import (
    PairBatch,
    PairData,
    PairedConfig,
    PairTrainer,
    build_pairwise_model,
    fit_pairwise,
)
from crossmodal.model import CrossModalModel, FeatureIdentity


@dataclass(frozen=True)
class SEDELOptions(PairedConfig):
    """SEDEL's module switches, shared by every two-branch method (all off unless ``sedel_weight > 0``)."""

    sedel_weight: float = 0.0  # weight of SEDEL's InfoNCE term added to the host loss (0 = modules off)
    sedel_weighting: Weighting = "hardness"  # M2: none, hardness (negatives by softmax(beta s)) or focal ((1-p)^gamma)
    sedel_beta: float = 1.0  # M2(a): sharpness of the negative-hardness weights (0 = plain InfoNCE)
    sedel_gamma: float = 2.0  # M2(b): focal exponent
    sedel_temperature: float = 0.07  # tau of the InfoNCE (MoCo's default)
    sedel_queue: int = 0  # M1: memory-bank size per modality (0 = in-batch negatives, no momentum encoders)
    sedel_momentum: float = 0.99  # M1: momentum m of the key encoders (MoCo: 0.999; 0.99 for runs under ~50 epochs)
    sedel_mask_same_class: bool = False  # not in the paper: drop same-class keys from the negatives
    sedel_erasing: bool = False  # M3: attention-guided erasing; needs set-valued features (refused on vectors)
    sedel_keep_ratio: float = 0.5  # M3: fraction rho of the parts the erased view keeps


def sedel_addon(config: SEDELOptions, data: PairData, trainer: PairTrainer) -> SEDELModules | None:
    """SEDEL's modules for one pair of a two-branch method, or None when ``sedel_weight == 0``.

    Raises:
        ConfigError: erasing was asked for on vector features.
    """
    if config.sedel_erasing:
        check_set_features(data.xa, data.a)
        check_set_features(data.xb, data.b)
    if config.sedel_weight <= 0:
        return None
    return SEDELModules(config, trainer, num_pairs=max(len(data.xa), len(data.xb)))


class PairwiseMethod:
    """The Method of a two-branch model trained pair by pair (``fit_pairwise``) with SEDEL's modules plugged in
    (``sedel_addon``): a subclass sets ``name`` and ``Config`` and gives the pair's trainer and encoders."""

    name: ClassVar[str]
    Config: ClassVar[type[SEDELOptions]]

    def check(self, config: Any) -> None:
        """Refuse a config the method cannot train, before any data is touched (nothing to refuse by default)."""

    def make_trainer(self, config: Any, data: PairData, num_classes: int) -> PairTrainer:
        raise NotImplementedError

    @classmethod
    def make_encoders(cls, config: Any, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def fit(self, train: Mapping[str, FeatureSet], val: Mapping[str, FeatureSet] | None, *, config: Any,
            device: torch.device, features: Mapping[str, FeatureIdentity] | None = None,
            callbacks: Sequence[Callback] = (), checkpoint_dir: Path | None = None) -> CrossModalModel:
        self.check(config)
        return fit_pairwise(
            self.name, train, val, config=config, device=device, features=features, callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            make_trainer=lambda data: self.make_trainer(config, data, next(iter(train.values())).num_classes),
            make_addon=lambda data, trainer: sedel_addon(config, data, trainer))

    @classmethod
    def build_model(cls, config: Any, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return build_pairwise_model(cls.name, config, features, num_classes, extra,
                                    lambda d_a, d_b: cls.make_encoders(config, d_a, d_b))


def check_set_features(X: torch.Tensor | np.ndarray, modality: str) -> None:
    """Raise ConfigError unless ``X`` is set-valued, float (n, parts, d)."""
    if X.ndim != 3:
        raise ConfigError(
            f"SEDEL's attention-guided erasing needs set-valued {modality} features (n, parts, d); these are one "
            f"global vector per item {tuple(X.shape)}, so there is nothing to erase",
            hint="turn it off (--set sedel_erasing=false), or extract region/frame/word features",
        )


class SEDELModules:
    """Weighted InfoNCE with optional momentum encoders and memory banks, for one modality pair."""

    def __init__(self, config: SEDELOptions, trainer: PairTrainer, *, num_pairs: int):
        self.config = config
        self.trainer = trainer
        self.queue_size = max(0, min(config.sedel_queue, num_pairs - config.batch_size))
        self.momentum: tuple[nn.Module, nn.Module] | None = None
        if config.sedel_queue > 0:
            self.momentum = tuple(_frozen_copy(m) for m in (trainer.encoder_a, trainer.encoder_b))  # type: ignore
        self.queues: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # keys, labels, rows

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        if self.momentum is None:
            keys_a, keys_b = u, v
        else:
            with torch.no_grad():
                for key_encoder, encoder in zip(self.momentum, (self.trainer.encoder_a, self.trainer.encoder_b)):
                    for pk, p in zip(key_encoder.parameters(), encoder.parameters()):
                        pk.mul_(cfg.sedel_momentum).add_(p.detach(), alpha=1 - cfg.sedel_momentum)
                keys_a = self.momentum[0](batch.xa)
                keys_b = self.momentum[1](batch.xb)
        loss = 0.5 * (self._nce(u, batch.ya, batch.rows_b, "b", keys_b, batch.yb)
                      + self._nce(v, batch.yb, batch.rows_a, "a", keys_a, batch.ya))
        if self.queue_size:
            self._enqueue("a", keys_a, batch.ya, batch.rows_a)
            self._enqueue("b", keys_b, batch.yb, batch.rows_b)
        return {"sedel_loss": cfg.sedel_weight * loss}

    def _nce(self, query: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, side: str, keys: torch.Tensor,
             key_labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE of queries against this batch's keys plus the queue of ``side``. Queued copies of a query's own
        partner are never negatives; same-class keys are dropped too when ``sedel_mask_same_class``."""
        cfg = self.config
        queued, queued_labels, queued_rows = self.queues.get(side, (keys[:0], key_labels[:0], partners[:0]))
        bank, bank_labels = torch.cat([keys, queued]), torch.cat([key_labels, queued_labels])
        exclude = torch.zeros(len(query), len(bank), dtype=torch.bool, device=query.device)
        exclude[:, len(keys):] = queued_rows[None, :] == partners[:, None]
        if cfg.sedel_mask_same_class:
            exclude |= label_similarity(labels, bank_labels).bool()
        return weighted_info_nce_loss(query, bank, temperature=cfg.sedel_temperature, weighting=cfg.sedel_weighting,
                                      beta=cfg.sedel_beta, gamma=cfg.sedel_gamma, exclude=exclude)

    def _enqueue(self, side: str, keys: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """Newest first; the oldest entries beyond ``queue_size`` drop out (FIFO)."""
        queued = self.queues.get(side, (keys[:0], labels[:0], rows[:0]))
        self.queues[side] = tuple(torch.cat([new.detach(), old])[: self.queue_size]  # type: ignore[assignment]
                                  for new, old in zip((keys, labels, rows), queued))


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


# ----------------------------------------------------------------------------------- M3: attention-guided erasing
class SetEncoder(nn.Module):
    """Encoder of set-valued features: an MLP per part, then attention pooling over the parts.

    ``forward(parts, keep=None)``: parts float32 (n, P, d) -> float32 (n, D); ``keep`` bool (n, P) restricts the
    attention to the kept parts (the erased view). ``attention(parts)`` gives the weights float32 (n, P).
    """

    def __init__(self, part_dim: int, hidden: Sequence[int], dim: int):
        super().__init__()
        self.part = mlp_encoder(part_dim, hidden, dim, bias_last=True, normalize=False, last_init="default")
        self.score = nn.Linear(dim, 1)

    def attention(self, parts: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self._weights(self.part(parts), keep)

    def forward(self, parts: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = self.part(parts)
        return (self._weights(h, keep).unsqueeze(-1) * h).sum(dim=1)

    def _weights(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(h).squeeze(-1)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores.softmax(dim=1)


def erase_low_attention(attention: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """bool (n, P): True for the ``ceil(keep_ratio * P)`` most attended parts of each item (the rest is erased)."""
    if not 0 < keep_ratio <= 1:
        raise ConfigError(f"sedel_keep_ratio must be in (0, 1], got {keep_ratio}")
    keep = math.ceil(keep_ratio * attention.shape[1])
    top = attention.topk(keep, dim=1).indices
    return torch.zeros_like(attention, dtype=torch.bool).scatter_(1, top, True)


def erased_view(encoder: SetEncoder, parts: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The erased embedding of set-valued ``parts`` (n, P, d): attention restricted to the top-attended parts, chosen
    with the current (detached) attention, so the loss on this view rewards attention on the informative parts."""
    with torch.no_grad():
        keep = erase_low_attention(encoder.attention(parts), keep_ratio)
    return encoder(parts, keep)


# ----------------------------------------------------------------------------------------------- the SEDEL method
@dataclass(frozen=True)
class SEDELConfig(SEDELOptions):
    """A base two-branch model trained by SEDEL's modules (reconstruction; the paper's base models are not named)."""

    epochs: int = 100  # not stated; enough for the small feature benchmarks
    batch_size: int = 128  # not stated; NCR/VSE-family default
    lr: float = 2e-4  # not stated; NCR/VSE-family default
    hidden: tuple[int, ...] = (1024,)  # hidden widths of each modality's MLP
    dim: int = 1024  # D, the common space
    sedel_weight: float = 1.0  # the modules are the whole loss here
    sedel_queue: int = 4096  # M1 memory bank (capped at N_train - B)


class _SEDELTrainer(PairTrainer):
    def __init__(self, config: SEDELConfig, d_a: int, d_b: int):
        super().__init__()
        self.encoder_a, self.encoder_b = _encoders(config, d_a, d_b)

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {}  # the SEDEL modules (added by fit_pairwise) are the whole loss


def _encoders(config: SEDELConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
    return (mlp_encoder(d_a, config.hidden, config.dim, bias_last=True, normalize=False),
            mlp_encoder(d_b, config.hidden, config.dim, bias_last=True, normalize=False))


@register_method
class SEDEL(PairwiseMethod):
    name: ClassVar[str] = "sedel"
    Config: ClassVar[type[SEDELConfig]] = SEDELConfig

    def check(self, config: SEDELConfig) -> None:
        if config.sedel_weight <= 0:
            raise ConfigError("the sedel method is trained by its modules alone: sedel_weight must be > 0",
                              hint="to use a plain base model, train dscmr, sccmr, hcmsl or rcar instead")

    def make_trainer(self, config: SEDELConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _SEDELTrainer(config, data.xa.shape[1], data.xb.shape[1])

    @classmethod
    def make_encoders(cls, config: SEDELConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return _encoders(config, d_a, d_b)
