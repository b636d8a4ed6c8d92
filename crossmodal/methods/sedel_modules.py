"""SEDEL's modules, an option of every two-branch method (``PairedConfig.sedel``; the ``sedel`` method trains a plain
two-branch model by them alone, crossmodal/methods/sedel.py, whose docstring gives the paper and what is reconstructed).

* Weighted InfoNCE (``crossmodal.losses.sedel.weighted_info_nce_loss``): ``hardness`` weights each negative by a
  softmax of its similarity (the default), ``focal`` weights each query by ``(1 - p)^gamma``; applied in both
  directions and averaged, and added to the host method's loss with ``weight``.
* Memory banks (MoCo style, ``queue > 0``): momentum copies of both encoders (``theta~ <- m theta~ + (1 - m) theta``,
  updated before each step from the previous step's weights) embed the batch's positives; FIFO queues of past keys (at
  most ``min(queue, N_train - B)`` each) add negatives. ``mask_same_class`` (off by default; the paper says nothing)
  removes same-class keys from the negatives.

The paper's third module, attention-guided erasing, needs set-valued features (regions, words, frames: ``(n, parts,
d)``); the toolkit's features are one vector per item, so it is not offered until set-valued features exist.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crossmodal.losses.dscmr import label_similarity
from crossmodal.losses.sedel import Weighting, weighted_info_nce_loss

if TYPE_CHECKING:  # paired.py imports this module to offer the option
    from crossmodal.methods.paired import PairBatch, PairTrainer


@dataclass(frozen=True)
class SEDELOptions:
    """SEDEL's modules on a two-branch method: ``--set sedel='{"weight": 1, "queue": 4096}'`` (every field optional)."""

    weight: float = 1.0  # weight of SEDEL's InfoNCE term added to the host loss
    weighting: Weighting = "hardness"  # M2: none, hardness (negatives by softmax(beta s)) or focal ((1-p)^gamma)
    beta: float = 1.0  # M2(a): sharpness of the negative-hardness weights (0 = plain InfoNCE)
    gamma: float = 2.0  # M2(b): focal exponent
    temperature: float = 0.07  # tau of the InfoNCE (MoCo's default)
    queue: int = 0  # M1: memory-bank size per modality (0 = in-batch negatives, no momentum encoders)
    momentum: float = 0.99  # M1: momentum m of the key encoders (MoCo: 0.999; 0.99 for runs under ~50 epochs)
    mask_same_class: bool = False  # not in the paper: drop same-class keys from the negatives


LEGACY_PREFIX = "sedel_"
LEGACY_DROPPED = ("sedel_erasing", "sedel_keep_ratio")  # erasing could only be refused on vector features


def legacy_sedel_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict written before SEDEL became one option, with its ten ``sedel_*`` fields read into ``sedel``: the
    options when ``sedel_weight > 0`` (the modules were on), else None. A dict without them is returned as it is."""
    legacy = {k: v for k, v in data.items() if k.startswith(LEGACY_PREFIX)}
    if not legacy:
        return dict(data)
    rest = {k: v for k, v in data.items() if k not in legacy}
    on = float(legacy.get("sedel_weight", 0.0)) > 0
    options = {k.removeprefix(LEGACY_PREFIX): v for k, v in legacy.items() if k not in LEGACY_DROPPED}
    return {**rest, "sedel": options if on else None}


class SEDELModules:
    """Weighted InfoNCE with optional momentum encoders and memory banks, for one modality pair."""

    def __init__(self, options: SEDELOptions, trainer: PairTrainer, *, num_pairs: int, batch_size: int):
        self.options = options
        self.trainer = trainer
        self.queue_size = max(0, min(options.queue, num_pairs - batch_size))
        self.momentum: tuple[nn.Module, nn.Module] | None = None
        if options.queue > 0:
            self.momentum = (_frozen_copy(trainer.encoder_a), _frozen_copy(trainer.encoder_b))
        self.queues: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # keys, labels, rows

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"sedel_loss": weight * mean of the two directions' weighted InfoNCE}`` of one batch."""
        opt = self.options
        if self.momentum is None:
            keys_a, keys_b = u, v
        else:
            with torch.no_grad():
                for key_encoder, encoder in zip(self.momentum, (self.trainer.encoder_a, self.trainer.encoder_b)):
                    for pk, p in zip(key_encoder.parameters(), encoder.parameters()):
                        pk.mul_(opt.momentum).add_(p.detach(), alpha=1 - opt.momentum)
                keys_a = self.momentum[0](batch.xa)
                keys_b = self.momentum[1](batch.xb)
        loss = 0.5 * (self._nce(u, batch.ya, batch.rows_b, "b", keys_b, batch.yb)
                      + self._nce(v, batch.yb, batch.rows_a, "a", keys_a, batch.ya))
        if self.queue_size:
            self._enqueue("a", keys_a, batch.ya, batch.rows_a)
            self._enqueue("b", keys_b, batch.yb, batch.rows_b)
        return {"sedel_loss": opt.weight * loss}

    def _nce(self, query: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, side: str, keys: torch.Tensor,
             key_labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE of queries against this batch's keys plus the queue of ``side``. Queued copies of a query's own
        partner are never negatives; same-class keys are dropped too when ``mask_same_class``."""
        opt = self.options
        queued, queued_labels, queued_rows = self.queues.get(side, (keys[:0], key_labels[:0], partners[:0]))
        bank, bank_labels = torch.cat([keys, queued]), torch.cat([key_labels, queued_labels])
        exclude = torch.zeros(len(query), len(bank), dtype=torch.bool, device=query.device)
        exclude[:, len(keys):] = queued_rows[None, :] == partners[:, None]
        if opt.mask_same_class:
            exclude |= label_similarity(labels, bank_labels).bool()
        return weighted_info_nce_loss(query, bank, temperature=opt.temperature, weighting=opt.weighting,
                                      beta=opt.beta, gamma=opt.gamma, exclude=exclude)

    def _enqueue(self, side: str, keys: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """Newest first; the oldest entries beyond ``queue_size`` drop out (FIFO)."""
        queued = self.queues.get(side, (keys[:0], labels[:0], rows[:0]))
        new = (keys.detach(), labels.detach(), rows.detach())
        self.queues[side] = (torch.cat([new[0], queued[0]])[: self.queue_size],
                             torch.cat([new[1], queued[1]])[: self.queue_size],
                             torch.cat([new[2], queued[2]])[: self.queue_size])


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied
