"""What the two-branch (paired) methods share: pairing rows, per-pair training on K-modality data, model selection on
the validation split, SEDEL's modules as an option of every one of them, and ``PairwiseMethod``, the Method a
two-branch model subclasses.

* **Pairing.** A paired dataset (row i of every modality is the same item, detected by equal ids) is trained on its
  rows. Unpaired data, or a paired method given modalities of different sizes, gets pairs by "repeated sampling" of
  same-class items, as the DRCL paper did for its baselines: every item of either modality is paired with a random item
  of the other modality that shares a label, redrawn every epoch. Unlabelled items cannot be matched: left out.
* **Per-pair training.** A two-modality method on K > 2 modalities is trained once per unordered pair (a, b); the
  encoders are stored under ``"a__b"`` (a's encoder trained against b) and ``"b__a"``, and
  ``CrossModalModel.encode(a, X, against=b)`` picks them. With two modalities the keys are the plain modality names.
* **Selection.** Every epoch the pair's validation MAP@all (both directions, averaged) is measured, and the encoders of
  the best epoch are kept (``patience`` stops a pair after that many epochs without a better one). The DSCMR and SCCMR
  code select on the *test* split; the toolkit never does.
* **Training** is the toolkit's (crossmodal/methods/base.py): a pair's modules are built under the stream
  ``(seed, a, b)``, its epochs shuffled by ``(seed, a, b, epoch)`` with ``last_batch`` (default ``drop``, the reference
  codes'; a set of at most one batch is one batch), and same-class pairs drawn from ``(seed, a, b, "pairs", epoch)``.
* **SEDEL's modules** (crossmodal/methods/sedel_modules.py) join any two-branch method through its ``sedel`` field
  (``--set sedel='{"queue": 4096}'``; null, the default, leaves them out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.featureset import FeatureSet
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
    numpy_rng,
    seeded,
    torch_rng,
)
from crossmodal.methods.sedel_modules import SEDELModules, SEDELOptions, legacy_sedel_options
from crossmodal.model import CrossModalModel, FeatureIdentity

Pairing = Literal["auto", "rows", "class"]


@dataclass(frozen=True)
class PairedConfig(MethodConfig):
    """Fields every two-branch method shares (its subclass sets the paper's defaults)."""

    lr: float = 1e-4  # Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (the DSCMR/SDML code's)
    pairing: Pairing = "auto"  # rows = row i pairs row i; class = same-class sampling; auto = rows when the ids match
    sedel: SEDELOptions | None = None  # SEDEL's modules added to the method's loss (None: off)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """As ``MethodConfig.from_dict``; a card written before SEDEL became one option (ten ``sedel_*`` fields) is
        read into ``sedel``."""
        return super().from_dict(legacy_sedel_options(data))


# ----------------------------------------------------------------------------------------------------------- pairing
def rows_are_paired(a: FeatureSet, b: FeatureSet) -> bool:
    """True when row i of ``a`` and of ``b`` are the same item (same length, same ids)."""
    return len(a) == len(b) and np.array_equal(a.ids, b.ids)


def class_matched(anchor: FeatureSet, other: FeatureSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each labelled item of ``anchor``, a random item of ``other`` sharing one of its labels.

    Returns:
        (anchor rows, other rows), int64 (m,) each; anchor items with no same-class item in ``other`` are dropped.
    """
    if anchor.multilabel != other.multilabel:
        raise DatasetFormatError("cannot pair single-label with multi-label modalities")
    if not anchor.multilabel:
        rows, partners = [], []
        for c in np.unique(anchor.labels[anchor.labels >= 0]):
            members = np.flatnonzero(other.labels == c)
            if len(members) == 0:
                continue
            mine = np.flatnonzero(anchor.labels == c)
            rows.append(mine)
            partners.append(members[rng.integers(len(members), size=len(mine))])
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows).astype(np.int64), np.concatenate(partners).astype(np.int64)
    Ya, Yb = anchor.labels.astype(np.float32), other.labels.astype(np.float32)
    anchors: list[int] = []
    matches: list[int] = []
    for i in np.flatnonzero(Ya.any(axis=1)):
        members = np.flatnonzero(Yb @ Ya[i] > 0)
        if len(members):
            anchors.append(int(i))
            matches.append(int(members[rng.integers(len(members))]))
    return np.asarray(anchors, np.int64), np.asarray(matches, np.int64)


def sample_pairs(a: FeatureSet, b: FeatureSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Repeated sampling: every labelled item of either modality paired with a random same-class item of the other.

    Returns:
        (rows of a, rows of b), int64 (m,) each, m <= len(a) + len(b).

    Raises:
        DatasetFormatError: no item of ``a`` shares a class with an item of ``b``.
    """
    ia, ib = class_matched(a, b, rng)
    jb, ja = class_matched(b, a, rng)
    rows_a, rows_b = np.concatenate([ia, ja]), np.concatenate([ib, jb])
    if len(rows_a) == 0:
        raise DatasetFormatError("no item of one modality shares a class with the other: nothing to pair",
                                 hint="same-class pairing needs labelled items of common classes")
    return rows_a, rows_b


def resolve_pairing(a: FeatureSet, b: FeatureSet, pairing: Pairing) -> Literal["rows", "class"]:
    if pairing == "auto":
        return "rows" if rows_are_paired(a, b) else "class"
    if pairing == "rows" and len(a) != len(b):
        raise ConfigError(f"pairing=rows needs as many rows in both modalities ({len(a)} vs {len(b)})",
                          hint="use pairing=class (same-class sampling) for unpaired data")
    return pairing


# ---------------------------------------------------------------------------------------------------- pair training
@dataclass
class PairData:
    """The training data of one modality pair, on the training device.

    Attributes:
        a, b: the two modality names.
        xa, xb: float32 (n_a, d_a), (n_b, d_b) features. ya, yb: float32 (n, C) label matrices (zero = unlabelled).
        pairing: ``rows`` or ``class`` (see the module docstring).
        train_a, train_b: the FeatureSets (same-class sampling reads their labels). seed: the run's seed.
    """

    a: str
    b: str
    xa: torch.Tensor
    xb: torch.Tensor
    ya: torch.Tensor
    yb: torch.Tensor
    pairing: Literal["rows", "class"]
    train_a: FeatureSet
    train_b: FeatureSet
    seed: int

    @classmethod
    def build(cls, a: str, b: str, train: Mapping[str, FeatureSet], *, pairing: Pairing, seed: int,
              device: torch.device) -> PairData:
        fa, fb = train[a], train[b]
        return cls(a=a, b=b, xa=_tensor(fa.X, device), xb=_tensor(fb.X, device),
                   ya=_tensor(fa.label_matrix(), device), yb=_tensor(fb.label_matrix(), device),
                   pairing=resolve_pairing(fa, fb, pairing), train_a=fa, train_b=fb, seed=seed)

    def pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's (rows of a, rows of b): all rows when paired, else a fresh same-class sample."""
        if self.pairing == "rows":
            rows = np.arange(len(self.xa))
            return rows, rows
        return sample_pairs(self.train_a, self.train_b, numpy_rng(self.seed, self.a, self.b, "pairs", epoch))


@dataclass
class PairBatch:
    """One batch of pairs: rows of a and b, their features and label matrices, and their position in the epoch."""

    rows_a: torch.Tensor
    rows_b: torch.Tensor
    xa: torch.Tensor
    xb: torch.Tensor
    ya: torch.Tensor
    yb: torch.Tensor
    position: torch.Tensor  # int64 (B,) index of each pair in this epoch's pair list


class PairTrainer(nn.Module):
    """A method's networks for one pair and its loss. Subclasses set ``encoder_a``/``encoder_b`` (the modules that go
    into the saved model) plus any training-only heads, and implement ``losses``."""

    encoder_a: nn.Module
    encoder_b: nn.Module

    def embed(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Common-space representations (B, D) of the batch's two sides (before any normalisation)."""
        return self.encoder_a(batch.xa), self.encoder_b(batch.xb)

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """Named losses of one batch; keys ending in ``_loss`` are summed and back-propagated."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, data: PairData, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
        """Called before each epoch with its pairs (RCAR refits its beta mixture here)."""


def fit_pairwise(
    method: str,
    train: Mapping[str, FeatureSet],
    val: Mapping[str, FeatureSet] | None,
    *,
    config: PairedConfig,
    device: torch.device,
    features: Mapping[str, FeatureIdentity] | None,
    callbacks: Sequence[Callback],
    checkpoint_dir: Path | None,
    make_trainer: Callable[[PairData], PairTrainer],
    extra: Mapping[str, Any] | None = None,
) -> CrossModalModel:
    """Train a two-branch method on every modality pair and assemble the model.

    Args:
        method: the method's registry name (recorded in the model).
        train, val: modality -> FeatureSet; val may be None (then the last epoch is kept).
        config: the method's config (seed, epochs, batch_size, last_batch, patience, lr, betas, pairing, sedel).
        make_trainer: builds the method's networks and loss for one pair (called under the pair's seeded stream).
        extra: JSON facts the method's ``build_model`` needs.

    Returns:
        CrossModalModel whose encoders are keyed per ``pair_keys``.
    """
    modalities = list(train)
    if len(modalities) < 2:
        raise ConfigError(f"{method} needs at least two modalities, got {modalities}")
    folder = checkpoint_folder(checkpoint_dir, config)
    encoders: dict[str, nn.Module] = {}
    for a, b, key_a, key_b in pair_keys(modalities):
        data = PairData.build(a, b, train, pairing=config.pairing, seed=config.seed, device=device)
        with seeded(config.seed, a, b):
            trainer = make_trainer(data).to(device)
        sedel = (SEDELModules(config.sedel, trainer, num_pairs=max(len(data.xa), len(data.xb)),
                              batch_size=config.batch_size) if config.sedel is not None else None)
        optimizer = torch.optim.Adam(unique_parameters(trainer), lr=config.lr, betas=config.betas)

        def batches(epoch: int, data: PairData = data, trainer: PairTrainer = trainer) -> Iterator[PairBatch]:
            rows_a, rows_b = data.pairs(epoch)
            trainer.start_epoch(epoch, data, rows_a, rows_b)
            trainer.train()
            sizes = batch_sizes(len(rows_a), config.batch_size, config.last_batch)
            for position in index_batches(len(rows_a), sizes, torch_rng(config.seed, data.a, data.b, epoch)):
                ra = torch.from_numpy(rows_a[position]).to(device)
                rb = torch.from_numpy(rows_b[position]).to(device)
                yield PairBatch(rows_a=ra, rows_b=rb, xa=data.xa[ra], xb=data.xb[rb], ya=data.ya[ra], yb=data.yb[rb],
                                position=torch.from_numpy(position).to(device))

        def step(batch: PairBatch, epoch: int, trainer: PairTrainer = trainer,
                 sedel: SEDELModules | None = sedel) -> dict[str, torch.Tensor]:
            u, v = trainer.embed(batch)
            parts = trainer.losses(batch, u, v, epoch)
            if sedel is not None:
                parts.update(sedel.losses(batch, u, v))
            return parts

        def on_epoch_end(epoch: int, a: str = a, b: str = b, trainer: PairTrainer = trainer) -> dict[str, float]:
            score = pair_validation_map(trainer.encoder_a, trainer.encoder_b, val, a, b)
            return {} if score is None else {"val_map": score}

        best = BestSnapshot(trainer, "val_map", higher_is_better=True)
        fit_loop(step, batches, epochs=config.epochs, optimizer=optimizer, modules={"trainer": trainer},
                 on_epoch_end=on_epoch_end, callbacks=callbacks, stage=f"{method}:{a}-{b}",
                 checkpoint=Checkpoint(folder / f"{a}__{b}", "train") if folder is not None else None, best=best,
                 patience=config.patience)
        best.restore()
        trainer.eval()
        encoders[key_a], encoders[key_b] = trainer.encoder_a, trainer.encoder_b
    return CrossModalModel(method=method, config=config, encoders=encoders,
                           features=dict(features or default_features(train)),
                           num_classes=next(iter(train.values())).num_classes, extra=dict(extra or {}))


class PairwiseMethod:
    """The Method of a two-branch model trained pair by pair (``fit_pairwise``), SEDEL's modules included when its
    config's ``sedel`` is set: a subclass sets ``name`` and ``Config`` and gives the pair's trainer and encoders."""

    name: ClassVar[str]
    Config: ClassVar[type[PairedConfig]]

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
            make_trainer=lambda data: self.make_trainer(config, data, next(iter(train.values())).num_classes))

    @classmethod
    def build_model(cls, config: Any, features: Mapping[str, FeatureIdentity], num_classes: int,
                    extra: Mapping[str, Any]) -> CrossModalModel:
        return build_pairwise_model(cls.name, config, features, num_classes, extra,
                                    lambda d_a, d_b: cls.make_encoders(config, d_a, d_b))


def build_pairwise_model(
    method: str,
    config: MethodConfig,
    features: Mapping[str, FeatureIdentity],
    num_classes: int,
    extra: Mapping[str, Any],
    make_encoders: Callable[[int, int], tuple[nn.Module, nn.Module]],
) -> CrossModalModel:
    """The untrained model of a two-branch method: ``make_encoders(d_a, d_b)`` for every pair, keyed per
    ``pair_keys`` (so shared layers are shared exactly as in training)."""
    encoders: dict[str, nn.Module] = {}
    for a, b, key_a, key_b in pair_keys(list(features)):
        encoders[key_a], encoders[key_b] = make_encoders(features[a].dim, features[b].dim)
    return CrossModalModel(method=method, config=config, encoders=encoders, features=features,
                           num_classes=num_classes, extra=dict(extra))


def with_shared_layer(branch_a: nn.Module, branch_b: nn.Module, width: int, dim: int) -> tuple[nn.Module, nn.Module]:
    """Two encoders ending in ONE ``Linear(width -> dim)`` shared by both branches (DSCMR's weight sharing, which
    SCCMR and HCMSL keep)."""
    shared = nn.Linear(width, dim)
    return nn.Sequential(branch_a, shared), nn.Sequential(branch_b, shared)


def pair_keys(modalities: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(a, b, key of a's encoder, key of b's encoder) for every unordered pair; plain names for two modalities."""
    if len(modalities) == 2:
        a, b = modalities
        return [(a, b, a, b)]
    return [(a, b, f"{a}__{b}", f"{b}__{a}")
            for i, a in enumerate(modalities) for b in modalities[i + 1:]]


# ------------------------------------------------------------------------------------------------------- selection
def pair_validation_map(encoder_a: nn.Module, encoder_b: nn.Module, val: Mapping[str, FeatureSet] | None,
                        a: str, b: str) -> float | None:
    """Mean of the a->b and b->a MAP@all on the validation split, or None when it has no labelled items of a or b."""
    from crossmodal.metrics import map_at_k

    if val is None or a not in val or b not in val or not _labelled(val[a]) or not _labelled(val[b]):
        return None
    za, zb = embed(encoder_a, val[a].X), embed(encoder_b, val[b].X)
    return 0.5 * (map_at_k(za, val[a].labels, zb, val[b].labels) + map_at_k(zb, val[b].labels, za, val[a].labels))


def embed(encoder: nn.Module, X: np.ndarray) -> np.ndarray:
    """float32 (n, D) unit-norm embeddings of ``X`` (n, d) by ``encoder`` (the toolkit's ``embed_rows``)."""
    return embed_rows(encoder, X, lambda z: nn.functional.normalize(z, dim=1)).cpu().numpy()


def unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, each once (``parameters()`` lists a layer shared by both branches once)."""
    return [p for p in module.parameters() if p.requires_grad]


def _labelled(fs: FeatureSet) -> bool:
    return bool(fs.labels.any(axis=1).any()) if fs.multilabel else bool((fs.labels >= 0).any())


def _tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
