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
trains on one batch of all its items (the code would skip it). Training is the toolkit's (crossmodal/methods/base.py):
each modality's networks are built under the stream ``(seed, "sdml:<modality>")`` and its epochs shuffled by
``(seed, stage, epoch)``; ``patience`` stops a modality after that many epochs without a lower validation label term.

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


def train_modality(
    step: Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]],
    trained: nn.Module,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    keep: nn.Module,
    validation_loss: Callable[[], float | None],
    config: MethodConfig,
    lr: float,
    betas: tuple[float, float],
    callbacks: Sequence[Callback],
    folder: Path | None,
    stage: str,
) -> None:
    """The per-modality loop SDML and MARS share: Adam on ``trained``, shuffled batches of (x, y), and after each
    epoch the validation loss; ``keep`` is restored to its epoch with the lowest (``patience`` may stop earlier).

    Args:
        step: ``step(x, y) -> {name: loss}`` for one batch (float32 (B, d), (B, C)).
        trained: every module the optimiser updates.
        X, Y: float32 (n, d) features and (n, C) label matrix of the modality, on the training device.
        keep: the modules whose best-epoch state is kept (the encoder, and MARS's LabNet).
        validation_loss: the current validation loss, or None without validation data (the last epoch is kept).
        folder: the run's checkpoint folder (``<stage>.pt`` resumes a killed run), or None.
    """
    optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=lr, betas=betas)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        trained.train()
        sizes = batch_sizes(len(X), config.batch_size, config.last_batch)
        for index in index_batches(len(X), sizes, torch_rng(config.seed, stage, epoch)):
            rows = torch.from_numpy(index).to(X.device)
            yield X[rows], Y[rows]

    def on_epoch_end(epoch: int) -> dict[str, float]:
        trained.eval()
        with torch.no_grad():
            loss = validation_loss()
        return {} if loss is None else {"val_loss": loss}

    best = BestSnapshot(keep, "val_loss", higher_is_better=False)
    fit_loop(lambda batch, epoch: step(*batch), batches, epochs=config.epochs, optimizer=optimizer,
             modules={"trained": trained}, on_epoch_end=on_epoch_end, callbacks=callbacks, stage=stage,
             checkpoint=Checkpoint(folder, stage.replace(":", "-")) if folder is not None else None, best=best,
             patience=config.patience)
    best.restore()
    trained.eval()


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


def _encoder(config: SDMLConfig, d: int) -> nn.Module:
    return mlp_encoder(d, config.hidden, config.dim, bias_last=True, normalize=True, last_init="default")


@register_method
class SDML:
    name: ClassVar[str] = "sdml"
    Config: ClassVar[type[SDMLConfig]] = SDMLConfig

    def fit(self, train: Mapping[str, FeatureSet], val: Mapping[str, FeatureSet] | None, *, config: SDMLConfig,
            device: torch.device, features: Mapping[str, FeatureIdentity] | None = None,
            callbacks: Sequence[Callback] = (), checkpoint_dir: Path | None = None) -> CrossModalModel:
        num_classes = next(iter(train.values())).num_classes
        W = common_space(num_classes, dim=config.dim, prior_seed=config.prior_seed,
                         prior_from=config.prior_from).to(device)
        folder = checkpoint_folder(checkpoint_dir, config)
        encoders: dict[str, nn.Module] = {}
        for k, (modality, fs) in enumerate(train.items()):
            stage = f"sdml:{modality}"
            X, Y = training_tensors(fs, modality, device)
            valid = modality_tensors((val or {}).get(modality), device)
            with seeded(config.seed, stage):
                encoder = _encoder(config, fs.dim).to(device)
                decoder = mlp_encoder(config.dim, config.hidden[::-1], fs.dim, bias_last=True,
                                      normalize=config.normalize_reconstruction, last_init="default").to(device)

            def step(x: torch.Tensor, y: torch.Tensor, encoder=encoder, decoder=decoder) -> dict[str, torch.Tensor]:
                z = encoder(x)
                return {"reconstruction_loss": config.alpha * reconstruction_loss(decoder(z), x),
                        "label_loss": (1 - config.alpha) * label_regression_loss(z @ W, y)}

            def validation_loss(encoder=encoder, valid=valid) -> float | None:
                return None if valid is None else label_term(encoder, valid, W)

            train_modality(step, nn.ModuleDict({"encoder": encoder, "decoder": decoder}), X, Y, keep=encoder,
                           validation_loss=validation_loss, config=config,
                           lr=config.lr if k == 0 else config.lr_others, betas=config.betas, callbacks=callbacks,
                           folder=folder, stage=stage)
            encoders[modality] = encoder
        return CrossModalModel(method=self.name, config=config, encoders=encoders,
                               features=dict(features or default_features(train)), num_classes=num_classes,
                               buffers={"prior": W.cpu()})

    @classmethod
    def build_model(cls, config: SDMLConfig, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return CrossModalModel(method=cls.name, config=config,
                               encoders={m: _encoder(config, f.dim) for m, f in features.items()},
                               features=features, num_classes=num_classes,
                               buffers={"prior": torch.zeros(config.dim, num_classes)}, extra=dict(extra))
