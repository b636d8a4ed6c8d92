"""SDML: Scalable Deep Multimodal Learning.

Paper: Peng Hu, Liangli Zhen, Dezhong Peng, Pei Liu, "Scalable Deep Multimodal Learning for Cross-Modal Retrieval",
SIGIR 2019, pp. 635-644. Authors' code: github.com/penghu-cs/SDML (read for understanding; nothing copied).

What the paper and code state (specs/methods-detail.md §5): the common space is *predefined* by a fixed random matrix
W (D x C, the first C columns of a random D x D orthogonal matrix, D = 512), never trained, so each modality can be
trained alone, in any order, and a new modality added later. Per modality an encoder ``d -> 1024 -> 1024 -> D``
(ReLU, L2-normalised output) and a decoder ``D -> 1024 -> 1024 -> d`` (also L2-normalised in the code), trained with

    J_k = alpha * mean_i ||g(f(x_i)) - x_i||_2 + (1 - alpha) * mean_{labelled i} ||f(x_i) W - y_i||_2

(row norms, unlabelled items only in the first term), alpha = 0.5; Adam betas (0.5, 0.999), lr 1e-4 for the first
modality and 2e-4 for the others, batch 100, 200 epochs; the epoch kept per modality is the one with the lowest
validation label term.

Choices here: W is drawn as DRCL's W0 is (``crossmodal.methods.drcl.initial_prior``: the same distribution as the first
C columns of a random orthogonal matrix), from ``prior_seed``; the decoder's output normalisation (a quirk: a unit
vector is compared with the raw input) is kept by default and can be turned off; a modality smaller than a batch
trains on one batch of all its items (the code would skip it). ``FixedSpaceMethod`` (here, shared with MARS) trains
each modality with the toolkit (crossmodal/methods/base.py): its networks built under the stream
``(seed, "sdml:<modality>")``, its epochs shuffled by ``(seed, stage, epoch)``; ``patience`` stops a modality after
that many epochs without a lower validation label term.

DRCL's Table VI (prior transfer): ``prior_from`` names a saved DRCL model directory whose learned ``prior`` buffer
(D x C) replaces the random W; D and C must match (else ConfigError). The paper reports about +0.02 MAP from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.encoders import mlp_encoder
from crossmodal.errors import ConfigError, DatasetFormatError, ModelFileError
from crossmodal.featureset import FeatureSet
from crossmodal.losses.sdml import label_regression_loss, reconstruction_loss
from crossmodal.methods.base import (
    BestSnapshot,
    Callback,
    Checkpoint,
    batch_sizes,
    checkpoint_folder,
    default_features,
    embed_rows,
    fit_loop,
    index_batches,
    register_method,
    seeded,
    torch_rng,
)
from crossmodal.model import CrossModalModel, FeatureIdentity


@dataclass(frozen=True)
class SDMLConfig(MethodConfig):
    epochs: int = 200  # code: 200 epochs per modality
    batch_size: int = 100  # code: batch 100
    dim: int = 512  # D, the predefined common space (code --output_shape 512)
    hidden: tuple[int, ...] = (1024, 1024)  # encoder hidden widths (ReLU); the decoder mirrors them
    alpha: float = 0.5  # weight of the reconstruction term; 1 - alpha weighs the label term
    lr: float = 1e-4  # Adam lr of the first modality (code)
    lr_others: float = 2e-4  # Adam lr of every later modality (code)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (code)
    prior_seed: int = 1000  # seed of the random orthogonal W (the code ships a fixed OrthP_512X512.mat)
    normalize_reconstruction: bool = True  # code quirk: the decoder output is L2-normalised before ||g(f(x)) - x||
    prior_from: str | None = None  # DRCL Table VI: a DRCL model directory whose learned prior replaces W


def common_space(num_classes: int, *, dim: int, prior_seed: int, prior_from: str | None) -> torch.Tensor:
    """The fixed W (D x C): the learned prior of the model at ``prior_from``, or a random matrix with orthonormal
    columns drawn from ``prior_seed``."""
    from crossmodal.methods.drcl import initial_prior

    if prior_from is None:
        return initial_prior(dim, num_classes, seed=prior_seed)
    return load_prior(prior_from, dim=dim, num_classes=num_classes)


def load_prior(path: str | Path, *, dim: int, num_classes: int) -> torch.Tensor:
    """The ``prior`` buffer (float32 D x C) of a saved model (DRCL's learned W), for Table VI's prior transfer.

    Raises:
        ModelFileError: no model there, or it has no ``prior``.
        ConfigError: its shape is not (dim, num_classes).
    """
    from safetensors import safe_open

    from crossmodal.model import WEIGHTS_FILE, read_card

    card = read_card(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights}: weights file missing", hint="train the DRCL model first")
    with safe_open(str(weights), framework="pt") as f:
        if "prior" not in f.keys():
            raise ModelFileError(f"{path}: the {card['method']} model has no learned prior",
                                 hint="prior_from needs a DRCL model directory")
        prior = f.get_tensor("prior").float()
    if tuple(prior.shape) != (dim, num_classes):
        raise ConfigError(
            f"the prior of {path} is {tuple(prior.shape)}, this model needs D x C = ({dim}, {num_classes})",
            hint=f"set dim={prior.shape[0]} to match the DRCL model, on data with {prior.shape[1]} classes")
    return prior


def modality_tensors(fs: FeatureSet | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(X float32 (n, d), label matrix float32 (n, C)) on ``device``, or None for a missing split."""
    if fs is None or len(fs) == 0:
        return None
    return (torch.from_numpy(np.ascontiguousarray(fs.X, dtype=np.float32)).to(device),
            torch.from_numpy(fs.label_matrix()).to(device))


def training_tensors(fs: FeatureSet, modality: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``modality_tensors`` of a training split, which must hold items."""
    tensors = modality_tensors(fs, device)
    if tensors is None:
        raise DatasetFormatError(f"{modality} has no training items", hint="leave that modality out, or give it items")
    return tensors


def label_term(encoder: nn.Module, valid: tuple[torch.Tensor, torch.Tensor], W: torch.Tensor) -> float:
    """The validation label term ``mean ||f(x) W - y||`` SDML and MARS select on (the encoder run in chunks)."""
    return float(label_regression_loss(embed_rows(encoder, valid[0], lambda z: z @ W), valid[1]))


@dataclass
class ModalityNets:
    """The networks one modality of SDML or MARS trains, and its loss."""

    step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]  # (x, y) of a batch -> named losses
    trained: nn.Module  # every module the optimiser updates
    keep: nn.Module  # the modules whose best-epoch state is kept (the encoder; MARS's LabNet too, with the first)
    encoder: nn.Module  # the saved encoder, x -> the common space
    lr: float  # its Adam learning rate


class FixedSpaceMethod:
    """The Method of SDML and MARS: a fixed common space W (``common_space``), and each modality trained alone, in the
    order of ``train``, by the toolkit's loop: its networks (``networks``) built under the stream
    ``(seed, "<name>:<modality>")``, Adam, shuffled batches of (x, y), and the epoch with the lowest validation label
    term ``mean ||f(x) W - y||`` kept (``patience`` may stop earlier). A subclass sets ``name`` and ``Config`` and gives
    ``networks`` and ``encoder``."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]

    def shared(self, config: Any, num_classes: int, device: torch.device) -> Any:
        """What every modality's networks share (MARS's LabNet), built once before the first; nothing by default."""
        return None

    def networks(self, config: Any, k: int, d: int, num_classes: int, W: torch.Tensor, shared: Any) -> ModalityNets:
        """The networks of the ``k``-th modality (0-based), whose features are ``d`` wide."""
        raise NotImplementedError

    @classmethod
    def encoder(cls, config: Any, d: int) -> nn.Module:
        """An untrained encoder of the saved model's shape."""
        raise NotImplementedError

    def fit(self, train: Mapping[str, FeatureSet], val: Mapping[str, FeatureSet] | None, *, config: Any,
            device: torch.device, features: Mapping[str, FeatureIdentity] | None = None,
            callbacks: Sequence[Callback] = (), checkpoint_dir: Path | None = None) -> CrossModalModel:
        num_classes = next(iter(train.values())).num_classes
        W = common_space(num_classes, dim=config.dim, prior_seed=config.prior_seed,
                         prior_from=config.prior_from).to(device)
        folder = checkpoint_folder(checkpoint_dir, config)
        shared = self.shared(config, num_classes, device)
        encoders: dict[str, nn.Module] = {}
        for k, (modality, fs) in enumerate(train.items()):
            stage = f"{self.name}:{modality}"
            X, Y = training_tensors(fs, modality, device)
            with seeded(config.seed, stage):
                nets = self.networks(config, k, fs.dim, num_classes, W, shared)
            nets.trained.to(device)
            valid = modality_tensors((val or {}).get(modality), device)
            self._train(nets, X, Y, valid, W, config, callbacks, folder, stage)
            encoders[modality] = nets.encoder
        return CrossModalModel(method=self.name, config=config, encoders=encoders,
                               features=dict(features or default_features(train)), num_classes=num_classes,
                               buffers={"prior": W.cpu()})

    def _train(self, nets: ModalityNets, X: torch.Tensor, Y: torch.Tensor,
               valid: tuple[torch.Tensor, torch.Tensor] | None, W: torch.Tensor, config: Any,
               callbacks: Sequence[Callback], folder: Path | None, stage: str) -> None:
        trained = nets.trained
        optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=nets.lr,
                                     betas=config.betas)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            trained.train()
            sizes = batch_sizes(len(X), config.batch_size, config.last_batch)
            for index in index_batches(len(X), sizes, torch_rng(config.seed, stage, epoch)):
                rows = torch.from_numpy(index).to(X.device)
                yield X[rows], Y[rows]

        def on_epoch_end(epoch: int) -> dict[str, float]:
            trained.eval()
            return {} if valid is None else {"val_loss": label_term(nets.encoder, valid, W)}

        best = BestSnapshot(nets.keep, "val_loss", higher_is_better=False)
        fit_loop(lambda batch, epoch: nets.step(*batch), batches, epochs=config.epochs, optimizer=optimizer,
                 modules={"trained": trained}, on_epoch_end=on_epoch_end, callbacks=callbacks, stage=stage,
                 checkpoint=Checkpoint(folder, stage.replace(":", "-")) if folder is not None else None, best=best,
                 patience=config.patience)
        best.restore()
        trained.eval()

    @classmethod
    def build_model(cls, config: Any, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return CrossModalModel(method=cls.name, config=config,
                               encoders={m: cls.encoder(config, f.dim) for m, f in features.items()},
                               features=features, num_classes=num_classes,
                               buffers={"prior": torch.zeros(config.dim, num_classes)}, extra=dict(extra))


@register_method
class SDML(FixedSpaceMethod):
    name: ClassVar[str] = "sdml"
    Config: ClassVar[type[SDMLConfig]] = SDMLConfig

    def networks(self, config: SDMLConfig, k: int, d: int, num_classes: int, W: torch.Tensor,
                 shared: Any) -> ModalityNets:
        """An encoder and a mirrored decoder, trained by ``alpha`` reconstruction + ``1 - alpha`` label terms."""
        encoder = self.encoder(config, d)
        decoder = mlp_encoder(config.dim, config.hidden[::-1], d, bias_last=True,
                              normalize=config.normalize_reconstruction, last_init="default")

        def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            z = encoder(x)
            return {"reconstruction_loss": config.alpha * reconstruction_loss(decoder(z), x),
                    "label_loss": (1 - config.alpha) * label_regression_loss(z @ W, y)}

        return ModalityNets(step, nn.ModuleDict({"encoder": encoder, "decoder": decoder}), keep=encoder,
                            encoder=encoder, lr=config.lr if k == 0 else config.lr_others)

    @classmethod
    def encoder(cls, config: SDMLConfig, d: int) -> nn.Module:
        return mlp_encoder(d, config.hidden, config.dim, bias_last=True, normalize=True, last_init="default")
