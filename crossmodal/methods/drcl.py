"""DRCL: Deep Reversible Consistency Learning for Cross-modal Retrieval.

Pu, Qin, Peng, Song, Zheng. IEEE Transactions on Multimedia, 2025 (arXiv 2501.05686). Reference code:
github.com/perquisite/DRCL. Clean-room implementation of specs/drcl.md.

Every modality is trained on its own; the only coupling is a shared, frozen prior W (D x C):

1. **SPL** (Selective Prior Learning, §3): from one random orthogonal W0, each modality trains (MLP F_k, W_k) with the
   GCE loss (Eq. 1) and a q that ramps up; its quality score (Eq. 2) is the mean true-class probability on its training
   set. The W_k of the modality with the best peak score becomes the prior W.
2. **RSC** (Reversible Semantic Consistency, §4): each modality trains a fresh MLP against the frozen W with in-batch
   mixup in the common space (Eq. 3), recasting ``r = y~ pinv(W)`` (Eq. 4) and ``J = eta J_L + alpha J_D + beta J_MSE``
   (Eqs. 5-8); the epoch with the lowest validation J is kept.

Because the modalities are independent, ``DRCL.add_modality`` trains one more modality against a saved model's prior
without touching the others, and gives exactly the encoder a full run would have given it.

Where the reference code differs from the paper's stated intent (specs/drcl.md §9), the default follows the paper and a
named option reproduces the code (``crossmodal/presets/drcl-reference-code.json`` sets them all):

* ``spl_q_start_epoch=1``: SPL's first epoch uses q = 0.01. The code starts at q = 0, where its GCE is 0/0 = NaN with
  zero gradients, so its first SPL epoch makes no update (option 0 reproduces that).
* ``prior_epoch="best"``: keep W_k of the best-scoring epoch. The code means to, but keeps a reference to the live
  tensor and so returns the final-epoch W_k ("final").
* ``last_batch="spread"``: every training item is used every epoch, in round(N/B) equal batches (at least one), so
  no step is much smaller than B and a modality with N < B trains on one batch of N (Wikipedia: 2 batches of 1086-1087
  instead of 1024 + a 125-item step). The code drops the N mod B leftover items and never trains a modality with
  N < B ("drop"); "keep" trains on them as a last, smaller batch.
* ``quality_pass="accumulate"``: the quality score is summed over the epoch's own training forward passes (with the
  pre-step parameters of each batch) instead of an extra no-grad pass over the training set after the epoch ("full",
  as the code). This saves about a quarter of SPL's compute; it is a training-set fit either way (§9.5).
* Kept as in the code (the paper states nothing else): the score on the training split (``quality_split``), selection
  by the lowest validation loss (``select_by``), cosines scaled by 2 in J_D (``cosine_scale``), a fixed mixup lambda
  (``mixup_lambda``), mixup of the normalised embeddings without re-normalisation, no augmentation at validation.

The ablations of the paper's Table V are options: ``prior="random"``, ``use_label_loss``, ``use_jd``, ``use_jmse``,
``use_fa``, ``fa_space="input"``, ``q_schedule="fixed"`` with ``q_fixed``.

Choices where the paper is silent: W0 is the orthonormalised (QR) D x C Gaussian, distributed as the first C columns of
``orthogonal_`` on D x D; each stage and modality is seeded from (``seed``, stage, modality), so the result
of a modality does not depend on which other modalities are trained; unlabelled rows are left out of training.
``patience`` (not in the paper; off by default) stops an RSC stage after that many epochs without a better validation
score (``select_by``), and an SPL stage whose quality score is measured on the validation split
(``quality_split="val"``); on the training split (the default) the score is a fit that keeps rising, so SPL runs every
epoch.

The training machinery (seeded streams, batching, best-epoch snapshots, early stopping, checkpoints and resume) is the
toolkit's, crossmodal/methods/base.py; this file holds the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from crossmodal.config import LastBatch, MethodConfig
from crossmodal.device import autocast, resolve_device
from crossmodal.encoders import mlp_encoder
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.featureset import FeatureSet
from crossmodal.losses.drcl import (
    NORM_EPS,
    discrimination_terms,
    feature_augmentation,
    jmse_loss,
    quality_score,
    recast,
)
from crossmodal.losses.gce import gce_loss
from crossmodal.methods import base
from crossmodal.methods.base import (
    BestSnapshot,
    Callback,
    Checkpoint,
    checkpoint_folder,
    default_features,
    embed_rows,
    fit_loop,
    index_batches,
    load_result,
    register_method,
    save_result,
    seeded,
    torch_rng,
)
from crossmodal.model import CrossModalModel, FeatureIdentity
from crossmodal.types import MODALITIES

CHECKPOINT_SECONDS = 60.0  # a stage in progress is saved at most this often (an image encoder's state is ~0.5 GB)
VAL_BLOCK_ELEMENTS = 4096 * 4096  # validation J_D: its n x n residuals whole up to this many entries, in blocks beyond


@dataclass(frozen=True)
class DRCLConfig(MethodConfig):
    """DRCL hyper-parameters; defaults are the paper's Wikipedia values (specs/drcl.md §5), presets hold the others."""

    seed: int = 1  # §5: run seed (--seed); each stage and modality is seeded from it
    epochs: int = 200  # §5: epochs of each stage and modality (Wikipedia 200, XMedia 300, others 100: presets)
    batch_size: int = 1024  # §5: B, both stages
    dim: int = 2048  # §2: D, the common space (paper: 512 for XMedia, XMediaNet, INRIA-Websearch: presets; §9.3)
    hidden: tuple[int, ...] = (4096, 4096)  # §2: hidden widths of every modality's MLP
    prior_seed: int = 1000  # §3.1: seed of the random orthogonal W0
    lr_spl: float = 5e-4  # §3.2: Adam lr of SPL (all modalities)
    lr_image: float = 6e-6  # §5: RSC Adam lr of the image modality (Wikipedia; XMedia 8e-4)
    lr_text: float = 5e-3  # §5: RSC lr of text (Wikipedia; XMedia 3e-4)
    lr_audio: float = 8e-4  # §5: RSC lr of audio (XMedia, from a code comment)
    lr_mesh: float = 3e-3  # §5: RSC lr of 3D (XMedia)
    lr_video: float = 4e-4  # §5: RSC lr of video (XMedia)
    lr_other: float = 1e-4  # RSC lr of a modality outside the five above (not in the paper: a middle value)
    betas: tuple[float, ...] = (0.5, 0.999)  # §3.2, §4: Adam betas of both stages
    eta: float = 1.0  # Eq. 8: weight of J_L
    alpha: float = 0.1  # Eq. 8: weight of J_D
    beta: float = 0.1  # Eq. 8: weight of J_MSE
    gamma: float = 0.9  # Eq. 3: the mixup coefficient lambda (fixed, §9.2)
    mixup_lambda: Literal["fixed", "beta"] = "fixed"  # §9.2: lambda = gamma (code) or drawn per step ~ Beta(a, a)
    mixup_alpha: float = 1.0  # a of Beta(a, a) when mixup_lambda="beta" (not in the paper)
    q_schedule: Literal["ramp", "fixed"] = "ramp"  # §9.1: q = min(q_max, q_step * epoch), or q_fixed (Table V)
    q_step: float = 0.01  # §9.1: growth of q per epoch
    q_max: float = 1.0  # §9.1: q stops growing here (reached at epoch 100)
    q_fixed: float = 1.0  # Table V ablation: the constant q when q_schedule="fixed" (paper: 0.01, 0.5, 1, 2)
    spl_q_start_epoch: Literal[0, 1] = 1  # §9.1: SPL's first q is q_step (1) or 0, the code's no-update epoch (0)
    prior: Literal["spl", "random"] = "spl"  # Table V: the SPL prior, or the random orthogonal W0 itself
    prior_epoch: Literal["best", "final"] = "best"  # §9.4: W_k of the best-scoring epoch, or the code's final one
    quality_split: Literal["train", "val"] = "train"  # §9.5: split the quality score is measured on
    quality_pass: Literal["accumulate", "full"] = "accumulate"  # §3.3: score from the epoch's passes, or a new pass
    select_by: Literal["val_loss", "val_map", "last"] = "val_loss"  # §9.6: RSC epoch kept per modality
    last_batch: LastBatch = "spread"  # §9.10: the N mod B leftover items (see batch_sizes)
    cosine_scale: float = 2.0  # §9.7: the code scales every cosine of J_D by 2
    use_label_loss: bool = True  # Table V: J_L
    use_jd: bool = True  # Table V: J_D
    use_jmse: bool = True  # Table V: J_MSE
    use_fa: bool = True  # Table V: feature augmentation (Eq. 3)
    fa_space: Literal["embedding", "input"] = "embedding"  # Table V: mixup in the common space, or of the inputs

    def lr_for(self, modality: str) -> float:
        """RSC learning rate of ``modality``."""
        return float(getattr(self, f"lr_{modality}")) if modality in MODALITIES else self.lr_other

    def validate(self) -> DRCLConfig:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (mixup and J_D need pairs)"),
            (self.dim >= 1 and all(h >= 1 for h in self.hidden), "dim and hidden widths must be >= 1"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
            (0 <= self.gamma <= 1, "gamma (the mixup lambda) must be in [0, 1]"),
            (self.q_step >= 0 and self.q_max >= 0 and self.q_fixed >= 0, "q values must be >= 0"),
            (self.use_label_loss or self.use_jd or self.use_jmse, "at least one RSC loss must be on"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"DRCL config: {message}", hint="fix the value with --set key=value")
        return self


@dataclass
class _Data:
    """One modality's split on the device: features and label vectors of its labelled rows."""

    X: torch.Tensor  # float32 (n, d_k)
    Y: torch.Tensor  # float32 (n, C) one-hot / multi-hot
    multilabel: bool

    def __len__(self) -> int:
        return int(self.X.shape[0])


class _Prior(nn.Module):
    """The trainable W_k of one SPL run (a module so the shared checkpoint code saves it)."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(W.clone())


@register_method
class DRCL:
    """Deep Reversible Consistency Learning (Pu et al., TMM 2025). See the module docstring."""

    name = "drcl"
    Config = DRCLConfig

    # --------------------------------------------------------------------------------------------------- the model
    @classmethod
    def build_model(cls, config: DRCLConfig, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        """Untrained encoders of the right shapes and a zero prior (``CrossModalModel.load`` fills both)."""
        encoders = {m: _encoder(config, f.dim) for m, f in features.items()}
        return _assemble(config, features, num_classes, encoders, torch.zeros(config.dim, num_classes), extra)

    # --------------------------------------------------------------------------------------------------- training
    def fit(
        self,
        train: Mapping[str, FeatureSet],
        val: Mapping[str, FeatureSet] | None,
        *,
        config: DRCLConfig,
        device: torch.device | str = "cpu",
        features: Mapping[str, FeatureIdentity] | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | str | None = None,
    ) -> CrossModalModel:
        """Run SPL over all modalities, then RSC for each modality against the selected prior.

        Args:
            train: modality -> training FeatureSet (labels single int64 (n,) or multi-hot (n, C)).
            val: modality -> validation FeatureSet, for model selection (a modality without one keeps its last epoch).
            config: the hyper-parameters.
            device: where to train.
            features: modality -> FeatureIdentity recorded in the model (default: "precomputed" features).
            callbacks: receive every epoch's logs (stages ``spl:<modality>`` and ``rsc:<modality>``).
            checkpoint_dir: when given, each stage checkpoints there; re-running the same call resumes after a kill
                and skips finished stages.

        Returns:
            The trained CrossModalModel (encoders per modality, buffer ``prior`` D x C).

        Raises:
            ConfigError: invalid config, or ``checkpoint_dir`` holds a run with another config.
            DatasetFormatError: no modalities, mismatched label spaces, or a modality without labelled rows.
        """
        config = config.validate()
        device = resolve_device(device)
        num_classes = _num_classes(train)
        features = {**default_features(train), **(features or {})}
        ckpt = checkpoint_folder(checkpoint_dir, config)
        data = {m: _to_device(fs, device, f"{m} training split") for m, fs in train.items()}
        val_data = {m: _to_device(val[m], device, f"{m} validation split", allow_empty=True)
                    for m in train if val is not None and m in val}
        prior, spl_summary = self._select_prior(data, val_data, config, num_classes, device, callbacks, ckpt)
        encoders, rsc_summary = {}, {}
        for m in data:
            encoders[m], rsc_summary[m] = self._rsc(m, data[m], val_data.get(m), prior, config, device, callbacks, ckpt)
        extra = {"spl": spl_summary, "rsc": rsc_summary}
        return _assemble(config, {m: features[m] for m in data}, num_classes, encoders, prior, extra)

    def add_modality(
        self,
        model: CrossModalModel,
        modality: str,
        train: FeatureSet,
        val: FeatureSet | None = None,
        *,
        feature: FeatureIdentity | None = None,
        config: DRCLConfig | None = None,
        device: torch.device | str | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | str | None = None,
    ) -> CrossModalModel:
        """Train (or retrain) one modality against ``model``'s frozen prior; the other encoders are left as they are.

        Args:
            model: a trained DRCL model.
            modality: the modality to add.
            train, val: its training and validation FeatureSets, in the model's label space.
            feature: its FeatureIdentity (default: "precomputed" features of its width).
            config: hyper-parameters for this modality (default: the model's). ``dim`` and ``hidden`` must match.
            device: where to train (default: the model's device).

        Returns:
            A new CrossModalModel sharing the existing encoders, with ``modality``'s encoder added or replaced.

        Raises:
            ConfigError: ``model`` is not a DRCL model, or ``config`` changes ``dim``/``hidden``.
            DatasetFormatError: the label space differs from the model's.
        """
        if model.method != self.name or "prior" not in dict(model.named_buffers()):
            raise ConfigError(f"add_modality needs a DRCL model with a prior, got a {model.method!r} model",
                              hint="train the model with --method drcl first")
        config = (config or model.config).validate()
        if (config.dim, tuple(config.hidden)) != (model.config.dim, tuple(model.config.hidden)):
            raise ConfigError(f"config dim/hidden ({config.dim}, {config.hidden}) differ from the model's "
                              f"({model.config.dim}, {model.config.hidden})", hint="keep dim and hidden as trained")
        if train.num_classes != model.num_classes:
            raise DatasetFormatError(f"{modality} has {train.num_classes} classes, the model has {model.num_classes}",
                                     hint="label the new modality with the model's classes")
        device = resolve_device(device) if device is not None else model.device
        prior = model.get_buffer("prior").detach().to(device)
        data = _to_device(train, device, f"{modality} training split")
        val_data = _to_device(val, device, f"{modality} validation split", allow_empty=True) if val else None
        encoder, summary = self._rsc(modality, data, val_data, prior, config, device, callbacks,
                                     checkpoint_folder(checkpoint_dir, config))
        encoders = {**dict(model.encoders.items()), modality: encoder}
        features = {**model.features, modality: feature or default_features({modality: train})[modality]}
        extra = {**model.extra, "rsc": {**model.extra.get("rsc", {}), modality: summary}}
        out = _assemble(config, features, model.num_classes, encoders, prior, extra)
        out.metrics = dict(model.metrics)
        return out.to(device)

    # ------------------------------------------------------------------------------------------------------- SPL
    def _select_prior(self, data: Mapping[str, _Data], val: Mapping[str, _Data], config: DRCLConfig,
                      num_classes: int, device: torch.device, callbacks: Sequence[Callback],
                      ckpt: Path | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """W0, then (unless ``prior="random"``) SPL per modality and the W_k with the best peak quality score."""
        W0 = initial_prior(config.dim, num_classes, seed=config.prior_seed).to(device)
        if config.prior == "random":
            return W0, {"prior": "random"}
        scores, priors, epochs = {}, {}, {}
        for m, d in data.items():
            priors[m], scores[m], epochs[m] = self._spl(m, d, val.get(m), W0, config, device, callbacks, ckpt)
        selected = max(scores, key=lambda m: scores[m])
        return priors[selected], {"prior": "spl", "selected": selected, "scores": scores, "best_epochs": epochs}

    def _spl(self, modality: str, data: _Data, val: _Data | None, W0: torch.Tensor, config: DRCLConfig,
             device: torch.device, callbacks: Sequence[Callback], ckpt: Path | None
             ) -> tuple[torch.Tensor, float, int]:
        """Train (F_k, W_k) with GCE (Eq. 1); return W_k, its peak quality score (Eq. 2) and that score's epoch."""
        stage = f"spl-{modality}"
        done = load_result(ckpt, stage)
        if done is not None:
            meta, tensors = done
            return tensors["W"].to(device), float(meta["score"]), int(meta["best_epoch"])
        quality_data = val if config.quality_split == "val" else data
        if quality_data is None or len(quality_data) == 0:
            raise DatasetFormatError(f"quality_split='val' but {modality} has no validation items",
                                     hint="use --set quality_split=train or give a validation split")
        with seeded(config.seed, stage):
            encoder = _encoder(config, data.X.shape[1]).to(device)
        clf = _Prior(W0)
        optimizer = _adam([*encoder.parameters(), clf.W], config.lr_spl, config.betas, device)
        accumulate = config.quality_pass == "accumulate" and config.quality_split == "train"
        running = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of s_i, count) of this epoch

        def q_of(epoch: int) -> float:
            return _q(config, epoch - 1 + config.spl_q_start_epoch)

        def frozen(epoch: int) -> bool:  # NOTE: the code's (1 - s^0)/0 = NaN has zero gradients: no update (§3.2)
            return config.spl_q_start_epoch == 0 and config.q_schedule == "ramp" and q_of(epoch) == 0

        def step(batch: tuple[torch.Tensor, ...], epoch: int) -> dict[str, torch.Tensor]:
            x, y = batch[0], batch[1]
            with autocast(device):
                logits = encoder(x).float() @ clf.W
            if accumulate:
                running[0] += quality_score(logits.detach(), y, "sum").double()
                running[1] += len(y)
            loss = gce_loss(logits, y, q_of(epoch))
            if frozen(epoch):
                loss = loss * 0.0
            return {"spl_loss": loss}

        def on_epoch_end(epoch: int) -> dict[str, float]:
            if accumulate:
                score = float(running[0] / running[1].clamp_min(1))
                running.zero_()
            else:
                logits = embed_rows(encoder, quality_data.X, lambda z: z @ clf.W, mixed_precision=True)
                score = float(quality_score(logits, quality_data.Y))
            logs = {"quality": score, "q": q_of(epoch)}
            if frozen(epoch):
                logs.update(spl_loss=math.nan, loss=math.nan)  # what the code reports for that epoch
            return logs

        best = BestSnapshot(clf, "quality", higher_is_better=True)  # the W_k of the best-scoring epoch
        patience = config.patience if config.quality_split == "val" else None
        self._train(stage, step, data, config, optimizer, {"encoder": encoder, "prior": clf}, on_epoch_end, best,
                    patience, callbacks, ckpt)
        W = best.tensors["W"] if config.prior_epoch == "best" else clf.W.detach().clone()
        save_result(ckpt, stage, tensors={"W": W}, meta={"score": best.value, "best_epoch": best.epoch})
        return W, best.value, best.epoch

    # ------------------------------------------------------------------------------------------------------- RSC
    def _rsc(self, modality: str, data: _Data, val: _Data | None, prior: torch.Tensor, config: DRCLConfig,
             device: torch.device, callbacks: Sequence[Callback], ckpt: Path | None) -> tuple[nn.Module, dict]:
        """Train F_k against the frozen prior with J (Eq. 8); keep the epoch chosen by ``select_by``."""
        stage = f"rsc-{modality}"
        with seeded(config.seed, stage):
            encoder = _encoder(config, data.X.shape[1]).to(device)
        done = load_result(ckpt, stage)
        if done is not None:
            encoder.load_state_dict({k[len("encoder."):]: v for k, v in done[1].items()})
            return encoder.eval(), done[0]["summary"]
        # One memory layout whether the prior was just trained (a transposed view) or read from a checkpoint: the
        # GEMM kernels round differently per layout, and a resumed run must equal an uninterrupted one bit for bit.
        W = prior.detach().float().contiguous()
        W_pinv = torch.linalg.pinv(W.double()).float()  # C x D, once per modality
        optimizer = _adam(encoder.parameters(), config.lr_for(modality), config.betas, device)

        def terms(z: torch.Tensor, y: torch.Tensor, q: float, *, whole_split: bool = False) -> dict[str, torch.Tensor]:
            parts: dict[str, torch.Tensor] = {}
            if config.use_label_loss:
                parts["label_loss"] = config.eta * gce_loss(z @ W, y, q)
            if config.use_jd:
                if whole_split:  # J_D of a whole split is over its n^2 pairs: bounded memory
                    intra, inter = validation_discrimination(y, z, W_pinv, cosine_scale=config.cosine_scale)
                else:
                    intra, inter = discrimination_terms(y, z, W_pinv, cosine_scale=config.cosine_scale)
                parts.update(jd_loss=config.alpha * (intra + inter), j_intra=intra, j_inter=inter)
            if config.use_jmse:
                parts["jmse_loss"] = config.beta * jmse_loss(recast(y, W_pinv), z)
            return parts

        def step(batch: tuple[Any, ...], epoch: int) -> dict[str, torch.Tensor]:
            x, y, perm, lam = batch
            if config.use_fa and config.fa_space == "input":
                x, y = feature_augmentation(x, y, lam, perm)
            with autocast(device):
                z = encoder(x).float()
            if config.use_fa and config.fa_space == "embedding":
                z, y = feature_augmentation(z, y, lam, perm)
            return terms(z, y, _q(config, epoch))

        if val is not None and len(val) == 0:
            val = None
        by = config.select_by if val is not None else "last"

        def on_epoch_end(epoch: int) -> dict[str, float]:
            logs: dict[str, float] = {"q": _q(config, epoch)}
            if val is not None:
                with torch.inference_mode():
                    z = embed_rows(encoder, val.X, mixed_precision=True)
                    parts = terms(z, val.Y, _q(config, epoch), whole_split=True)
                logs["val_loss"] = float(sum(v for k, v in parts.items() if k.endswith("_loss")))
                if by == "val_map":
                    logs["val_map"] = _recast_map(z, val, W_pinv)
            return logs

        best = BestSnapshot(encoder, by, higher_is_better=by == "val_map") if by != "last" else None
        history = self._train(stage, step, data, config, optimizer, {"encoder": encoder}, on_epoch_end, best,
                              config.patience, callbacks, ckpt)
        if best is not None:
            best.restore()
        summary = {"select_by": by, "best_epoch": best.epoch if best is not None else config.epochs,
                   "best_value": best.meta()["best_value"] if best is not None else None,
                   "lr": config.lr_for(modality), "epochs": config.epochs, "train_items": len(data),
                   "final_loss": history[-1].get("loss") if history else None}
        if len(history) < config.epochs:
            summary["stopped_at"] = len(history)  # early stopping (patience)
        save_result(ckpt, stage, modules={"encoder": encoder}, meta={"summary": summary})
        return encoder.eval(), summary

    # --------------------------------------------------------------------------------------------------- a stage
    def _train(self, stage: str, step: Callable, data: _Data, config: DRCLConfig, optimizer: torch.optim.Optimizer,
               modules: Mapping[str, nn.Module], on_epoch_end: Callable, best: BestSnapshot | None,
               patience: int | None, callbacks: Sequence[Callback], ckpt: Path | None) -> list[dict[str, float]]:
        """The toolkit's loop over this stage's shuffled batches, checkpointed at most every CHECKPOINT_SECONDS."""
        checkpoint = Checkpoint(ckpt, stage, every_seconds=CHECKPOINT_SECONDS) if ckpt is not None else None
        for module in modules.values():
            module.train()
        return fit_loop(step, lambda epoch: _batches(data, config, stage, epoch), epochs=config.epochs,
                        optimizer=optimizer, modules=modules, on_epoch_end=on_epoch_end, callbacks=callbacks,
                        stage=stage.replace("-", ":", 1), checkpoint=checkpoint, best=best, patience=patience)


# ------------------------------------------------------------------------------------------------------- helpers
def initial_prior(dim: int, num_classes: int, *, seed: int) -> torch.Tensor:
    """W0: a random D x C matrix with orthonormal columns (specs/drcl.md §3.1).

    The QR factor of a Gaussian D x C matrix (signs fixed by diag(R)) has the distribution of the first C columns of
    ``torch.nn.init.orthogonal_`` on a D x D matrix, at a fraction of the cost.

    Returns:
        float32 (D, C) on the CPU.

    Raises:
        ConfigError: C > D (the columns cannot be orthonormal).
    """
    if num_classes > dim:
        raise ConfigError(f"dim D={dim} is smaller than the number of classes C={num_classes}",
                          hint=f"use --set dim={num_classes} or larger")
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))).float()


def validation_discrimination(targets: torch.Tensor, z: torch.Tensor, prior_pinv: torch.Tensor, *,
                              cosine_scale: float = 2.0,
                              block_elements: int = VAL_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J_intra, J_inter)`` of a whole split without gradients, in bounded memory.

    ``discrimination_terms`` holds five n x n matrices at once: fine for a batch, but 320 MB for a validation split of
    4,096 rows and 200 GB for one of 10^5. Up to ``block_elements`` entries (n <= 4,096 by default) this takes its
    operations in its order, so its floats, but frees each n x n matrix once summed (two at a time). Beyond, row i of
    the residuals is ``cos_rr[i] - n_i n^T`` and ``cos_rz[i] - cos_rz[:, i]``, where ``cos_rr = y_hat G y_hat^T``,
    ``cos_rz = y_hat P^T`` and ``P = n W^+^T``, taken in blocks of rows of at most ``block_elements`` entries, their
    squares summed in float64 (the whole-matrix sum's rounding differs in the last bits only).

    Inputs:
        targets: float32 (n, C) label vectors. z: float32 (n, D) embeddings. prior_pinv: float32 (C, D) = pinv(W).

    Returns:
        float32 scalars ``(J_intra, J_inter)``, as ``crossmodal.losses.drcl.discrimination_terms`` defines them.
    """
    with torch.no_grad():
        pinv_gram = prior_pinv @ prior_pinv.T  # (C, C)
        inv_r = ((targets @ pinv_gram) * targets).sum(dim=1).clamp_min(0).sqrt().clamp_min(NORM_EPS).reciprocal()
        y_hat = targets * inv_r[:, None]
        n = z * z.norm(dim=1).clamp_min(NORM_EPS).reciprocal()[:, None]
        count, scale2 = len(z) * len(z), cosine_scale * cosine_scale
        if count <= block_elements:
            residual = torch.addmm(y_hat @ pinv_gram @ y_hat.T, n, n.T, alpha=-1.0)
            intra = scale2 * residual.square_().sum() / count
            del residual
            cos_rz = y_hat @ (n @ prior_pinv.T).T
            residual = cos_rz - cos_rz.T
            del cos_rz
            return intra, scale2 * residual.square_().sum() / count
        left, projected = y_hat @ pinv_gram, n @ prior_pinv.T  # (n, C) each: cos_rr = left y_hat^T, cos_rz = y_hat P^T
        intra = inter = torch.zeros((), dtype=torch.float64, device=z.device)
        step = max(1, block_elements // len(z))
        for start in range(0, len(z), step):
            rows = slice(start, start + step)
            residual = torch.addmm(left[rows] @ y_hat.T, n[rows], n.T, alpha=-1.0)
            intra = intra + residual.square_().sum(dtype=torch.float64)
            residual = y_hat[rows] @ projected.T - projected[rows] @ y_hat.T
            inter = inter + residual.square_().sum(dtype=torch.float64)
        return (intra * scale2 / count).float(), (inter * scale2 / count).float()


def _q(config: DRCLConfig, epoch: int) -> float:
    """The GCE regulatory factor q at (0- or 1-based) ``epoch`` (§9.1)."""
    if config.q_schedule == "fixed":
        return config.q_fixed
    return min(config.q_max, round(config.q_step * epoch, 10))


def _encoder(config: DRCLConfig, in_dim: int) -> nn.Module:
    return mlp_encoder(in_dim, config.hidden, config.dim)


def _assemble(config: DRCLConfig, features: Mapping[str, FeatureIdentity], num_classes: int,
              encoders: Mapping[str, nn.Module], prior: torch.Tensor, extra: Mapping[str, Any]) -> CrossModalModel:
    model = CrossModalModel(method=DRCL.name, config=config, encoders=encoders, features=features,
                            num_classes=num_classes, buffers={"prior": prior}, extra=dict(extra))
    return model.eval()


def _adam(params: Any, lr: float, betas: Sequence[float], device: torch.device) -> torch.optim.Adam:
    # The fused kernel is 5-6x faster than the default on CPU (one pass over ~42 M parameters per step) and exact.
    return torch.optim.Adam(params, lr=lr, betas=(betas[0], betas[1]), fused=device.type in ("cpu", "cuda"))


def batch_sizes(n: int, config: DRCLConfig, *, what: str = "training split") -> list[int]:
    """Sizes of one epoch's minibatches of ``n`` items (``DRCLConfig.last_batch``, the toolkit's ``batch_sizes``).

    Raises:
        DatasetFormatError: ``last_batch="drop"`` with fewer items than the batch size: the reference code never trains
            such a modality, and "drop" reproduces the code.
    """
    if config.last_batch == "drop" and n < config.batch_size:
        raise DatasetFormatError(f"{what}: {n} training items < batch_size {config.batch_size} with last_batch='drop', "
                                 "so it would never train (specs/drcl.md §9.10)",
                                 hint=f"use --set batch_size={n} or --set last_batch=spread")
    return base.batch_sizes(n, config.batch_size, config.last_batch)


def _batches(data: _Data, config: DRCLConfig, stage: str, epoch: int) -> Iterator[tuple[Any, ...]]:
    """One epoch's shuffled batches ``(x, y, mixup permutation, lambda)``, fixed by (seed, stage, epoch)."""
    sizes = batch_sizes(len(data), config, what=stage)
    g = torch_rng(config.seed, stage, epoch)
    device = data.X.device
    for idx in index_batches(len(data), sizes, g):
        lam = config.gamma
        if config.mixup_lambda == "beta":
            rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
            lam = float(rng.beta(config.mixup_alpha, config.mixup_alpha))
        perm = torch.randperm(len(idx), generator=g).to(device)
        rows = torch.from_numpy(idx).to(device)
        yield data.X.index_select(0, rows), data.Y.index_select(0, rows), perm, lam


def _recast_map(z: torch.Tensor, data: _Data, W_pinv: torch.Tensor) -> float:
    """MAP@all of embeddings against the recast representations ``y W^+`` of the same items' labels.

    Every modality is pulled towards the same ``y W^+``, so this predicts cross-modal MAP without any other modality.
    """
    from crossmodal.metrics import map_at_k

    Y = data.Y.cpu().numpy()
    labels = Y if data.multilabel else Y.argmax(1)
    return float(map_at_k(z.cpu().numpy(), labels, (data.Y @ W_pinv).cpu().numpy(), labels))


def _to_device(fs: FeatureSet, device: torch.device, what: str, *, allow_empty: bool = False) -> _Data:
    """The labelled rows of ``fs`` as device tensors (DRCL is supervised: unlabelled rows cannot train it)."""
    Y = fs.label_matrix()
    keep = Y.sum(axis=1) > 0
    if not keep.any() and not allow_empty:
        raise DatasetFormatError(f"{what}: no labelled items", hint="DRCL needs class labels for training")
    X = np.ascontiguousarray(fs.X if keep.all() else fs.X[keep], dtype=np.float32)
    return _Data(X=torch.from_numpy(X).to(device), Y=torch.from_numpy(Y[keep]).to(device), multilabel=fs.multilabel)


def _num_classes(train: Mapping[str, FeatureSet]) -> int:
    if not train:
        raise DatasetFormatError("no modalities to train", hint="give at least one modality's training features")
    counts = {m: fs.num_classes for m, fs in train.items()}
    if len(set(counts.values())) != 1:
        raise DatasetFormatError(f"modalities disagree on the number of classes: {counts}",
                                 hint="all modalities must share one label space")
    return next(iter(counts.values()))
