"""What the two-branch (paired) methods share: pairing rows, per-pair training on K-modality data, batching and
model selection on the validation split.

* **Pairing.** A paired dataset (row i of every modality is the same item, detected by equal ids) is trained on its
  rows. Unpaired data, or a paired method given modalities of different sizes, gets pairs by "repeated sampling" of
  same-class items, as the DRCL paper did for its baselines: every item of either modality is paired with a random item
  of the other modality that shares a label, redrawn every epoch. Unlabelled items cannot be matched: left out.
* **Per-pair training.** A two-modality method on K > 2 modalities is trained once per unordered pair (a, b); the
  encoders are stored under ``"a__b"`` (a's encoder trained against b) and ``"b__a"``, and
  ``CrossModalModel.encode(a, X, against=b)`` picks them. With two modalities the keys are the plain modality names.
* **Selection.** Every epoch the pair's validation MAP@all (both directions, averaged) is measured, and the encoders of
  the best epoch are kept. The DSCMR and SCCMR code select on the *test* split; the toolkit never does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from crossmodal.config import MethodConfig
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.featureset import FeatureSet
from crossmodal.methods.base import Callback, Checkpoint, default_features, fit_loop
from crossmodal.model import CrossModalModel, FeatureIdentity

Pairing = Literal["auto", "rows", "class"]


@dataclass(frozen=True)
class PairedConfig(MethodConfig):
    """Fields every two-branch method shares (its subclass sets the paper's defaults)."""

    lr: float = 1e-4  # Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (the DSCMR/SDML code's)
    pairing: Pairing = "auto"  # rows = row i pairs row i; class = same-class sampling; auto = rows when the ids match


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
        train_a, train_b: the FeatureSets (same-class sampling reads their labels). seed: seeds the sampling.
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
        return sample_pairs(self.train_a, self.train_b, np.random.default_rng((self.seed, epoch)))


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


class PairAddOn(Protocol):
    """Extra losses plugged into any two-branch method (SEDEL's modules, crossmodal/methods/sedel.py)."""

    def losses(self, batch: PairBatch, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]: ...


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
    make_addon: Callable[[PairData, PairTrainer], PairAddOn | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CrossModalModel:
    """Train a two-branch method on every modality pair and assemble the model.

    Args:
        method: the method's registry name (recorded in the model).
        train, val: modality -> FeatureSet; val may be None (then the last epoch is kept).
        config: the method's config (seed, epochs, batch_size, lr, betas, pairing).
        make_trainer: builds the method's networks and loss for one pair (called under ``torch.manual_seed(seed)``).
        make_addon: optional extra losses for the pair (SEDEL's modules); None when not asked for.
        extra: JSON facts the method's ``build_model`` needs.

    Returns:
        CrossModalModel whose encoders are keyed per ``pair_keys``.
    """
    modalities = list(train)
    if len(modalities) < 2:
        raise ConfigError(f"{method} needs at least two modalities, got {modalities}")
    encoders: dict[str, nn.Module] = {}
    for a, b, key_a, key_b in pair_keys(modalities):
        torch.manual_seed(config.seed)
        data = PairData.build(a, b, train, pairing=config.pairing, seed=config.seed, device=device)
        trainer = make_trainer(data).to(device)
        addon = make_addon(data, trainer) if make_addon is not None else None
        optimizer = torch.optim.Adam(unique_parameters(trainer), lr=config.lr, betas=config.betas)
        best = BestSnapshot(trainer)

        def batches(epoch: int, data: PairData = data, trainer: PairTrainer = trainer) -> Iterator[PairBatch]:
            rows_a, rows_b = data.pairs(epoch)
            trainer.start_epoch(epoch, data, rows_a, rows_b)
            trainer.train()
            # the order depends on (seed, epoch) only, so a resumed run sees the batches an uninterrupted one would
            for position in index_batches(len(rows_a), config.batch_size, np.random.default_rng((config.seed, epoch))):
                ra = torch.from_numpy(rows_a[position]).to(device)
                rb = torch.from_numpy(rows_b[position]).to(device)
                yield PairBatch(rows_a=ra, rows_b=rb, xa=data.xa[ra], xb=data.xb[rb], ya=data.ya[ra], yb=data.yb[rb],
                                position=torch.from_numpy(position).to(device))

        def step(batch: PairBatch, epoch: int, trainer: PairTrainer = trainer, addon=addon) -> dict[str, torch.Tensor]:
            u, v = trainer.embed(batch)
            parts = trainer.losses(batch, u, v, epoch)
            if addon is not None:
                parts.update(addon.losses(batch, u, v))
            return parts

        def on_epoch_end(epoch: int, a: str = a, b: str = b, trainer: PairTrainer = trainer,
                         best: BestSnapshot = best) -> dict[str, float]:
            score = pair_validation_map(trainer.encoder_a, trainer.encoder_b, val, a, b)
            best.update(score)
            return {} if score is None else {"val_map": score}

        checkpoint = Checkpoint(checkpoint_dir / f"{a}__{b}", "train") if checkpoint_dir is not None else None
        best.resume(checkpoint, "val_map")
        fit_loop(step, batches, epochs=config.epochs, optimizer=optimizer,
                 modules={"trainer": trainer, "best": best.copy}, on_epoch_end=on_epoch_end, callbacks=callbacks,
                 stage=f"{method}:{a}-{b}", checkpoint=checkpoint)
        best.restore()
        trainer.eval()
        encoders[key_a], encoders[key_b] = trainer.encoder_a, trainer.encoder_b
    return CrossModalModel(method=method, config=config, encoders=encoders,
                           features=dict(features or default_features(train)),
                           num_classes=next(iter(train.values())).num_classes, extra=dict(extra or {}))


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


# ------------------------------------------------------------------------------------------- batching and selection
def index_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled epoch of index batches. The last partial batch is dropped (as the reference code does), except when
    ``n < batch_size``: then the epoch is one batch of all n (the reference code would not train at all)."""
    order = rng.permutation(n)
    if n <= batch_size:
        return [order] if n else []
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]


class BestSnapshot:
    """Keeps a copy of a module at its best score (higher is better unless ``minimise``); ``restore`` puts it back.
    A score of None (no validation data) keeps the last state.

    The copy is itself a module (``copy``): pass it to ``fit_loop``'s checkpointed modules, and call ``resume`` with
    the checkpoint, so that a resumed run still returns the best epoch of the whole run.
    """

    def __init__(self, module: nn.Module, *, minimise: bool = False):
        self.module = module
        self.minimise = minimise
        self.score: float | None = None
        self.copy = copy.deepcopy(module)

    def update(self, score: float | None) -> bool:
        if score is None:
            return False
        better = self.score is None or (score < self.score if self.minimise else score > self.score)
        if better:
            self.score = score
            self.copy.load_state_dict(self.module.state_dict())
        return better

    def resume(self, checkpoint: Checkpoint | None, key: str) -> None:
        """Take the best ``key`` logged before a kill as the score to beat (the checkpoint restores ``copy``)."""
        meta = checkpoint.done() if checkpoint is not None else None
        scores = [h[key] for h in (meta or {}).get("history", []) if h.get(key) is not None]
        if scores:
            self.score = min(scores) if self.minimise else max(scores)

    def restore(self) -> None:
        if self.score is not None:
            self.module.load_state_dict(self.copy.state_dict())


def pair_validation_map(encoder_a: nn.Module, encoder_b: nn.Module, val: Mapping[str, FeatureSet] | None,
                        a: str, b: str) -> float | None:
    """Mean of the a->b and b->a MAP@all on the validation split, or None when it has no labelled items of a or b."""
    from crossmodal.metrics import map_at_k

    if val is None or a not in val or b not in val or not _labelled(val[a]) or not _labelled(val[b]):
        return None
    za, zb = embed(encoder_a, val[a].X), embed(encoder_b, val[b].X)
    return 0.5 * (map_at_k(za, val[a].labels, zb, val[b].labels) + map_at_k(zb, val[b].labels, za, val[a].labels))


def embed(encoder: nn.Module, X: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """float32 (n, D) unit-norm embeddings of ``X`` (n, d) by ``encoder`` (in eval mode, no gradient)."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            z = encoder(_tensor(X[start:start + batch_size], device))
            out.append(nn.functional.normalize(z.float(), dim=1).cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, each once (``parameters()`` lists a layer shared by both branches once)."""
    return [p for p in module.parameters() if p.requires_grad]


def _labelled(fs: FeatureSet) -> bool:
    return bool(fs.labels.any(axis=1).any()) if fs.multilabel else bool((fs.labels >= 0).any())


def _tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
