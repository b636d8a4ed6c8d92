"""SEDEL: plug-in modules for two-branch cross-modal models, and a base two-branch model trained by them alone.

Paper: Hao Pan and Jun Huang, "Semantic-enhanced discriminative embedding learning for cross-modal retrieval",
International Journal of Multimedia Information Retrieval (IJMIR) 11, 2022, doi 10.1007/s13735-022-00237-6.

What the paper states (abstract; the full text and any code were not reachable): three modules, each "integrated into
three existing cross-modal retrieval models", that steadily improve them:

1. attention-guided erasing: the attention may weigh irrelevant parts; erasing the non-attended parts makes the model
   focus on the relevant ones;
2. large-scale negative sampling with momentum-updated memory banks, so the hardest negatives are more likely sampled;
3. a weighted InfoNCE that gives harder pairs larger weights.

What is a reconstruction here (specs/methods-detail.md §4.2): the weighted InfoNCE and the momentum memory banks, as
``SEDELOptions`` / ``SEDELModules`` (crossmodal/methods/sedel_modules.py), an option of every two-branch method
(``dscmr``, ``sccmr``, ``hcmsl``, ``rcar``: ``--set sedel='{"queue": 4096}'``). Attention-guided erasing needs
set-valued features (regions, words, frames, clips), and the toolkit's features are one global vector per item
(FeatureSet.X is (n, d)), so there is nothing to erase: it is left out until set-valued features exist.

The ``sedel`` method itself is a plain two-branch model (an MLP per modality into a common space) trained by the
modules alone, without labels: the closest thing to "a base model plus SEDEL" that runs on global features. Its config
is the pairwise config with the modules on (a 4096-key memory bank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from crossmodal.encoders import mlp_encoder
from crossmodal.errors import ConfigError
from crossmodal.methods.base import register_method
from crossmodal.methods.paired import PairBatch, PairData, PairedConfig, PairTrainer, PairwiseMethod
from crossmodal.methods.sedel_modules import SEDELOptions


@dataclass(frozen=True)
class SEDELConfig(PairedConfig):
    """A base two-branch model trained by SEDEL's modules (reconstruction; the paper's base models are not named)."""

    epochs: int = 100  # not stated; enough for the small feature benchmarks
    batch_size: int = 128  # not stated; NCR/VSE-family default
    lr: float = 2e-4  # not stated; NCR/VSE-family default
    hidden: tuple[int, ...] = (1024,)  # hidden widths of each modality's MLP
    dim: int = 1024  # D, the common space
    sedel: SEDELOptions | None = SEDELOptions(queue=4096)  # the modules are the whole loss; M1 bank capped at N - B


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
        if config.sedel is None or config.sedel.weight <= 0:
            raise ConfigError("the sedel method is trained by its modules alone: sedel must be set, with weight > 0",
                              hint="to use a plain base model, train dscmr, sccmr, hcmsl or rcar instead")

    def make_trainer(self, config: SEDELConfig, data: PairData, num_classes: int) -> PairTrainer:
        return _SEDELTrainer(config, data.xa.shape[1], data.xb.shape[1])

    @classmethod
    def make_encoders(cls, config: SEDELConfig, d_a: int, d_b: int) -> tuple[nn.Module, nn.Module]:
        return _encoders(config, d_a, d_b)
