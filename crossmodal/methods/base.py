"""The Method extension point, its registry, and the one training loop every method shares (minGPT's generic loop,
open_clip's step returning named losses)."""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import torch

from crossmodal.common.files import TEMPORARY_SUFFIX, atomic_write
from crossmodal.config import MethodConfig
from crossmodal.errors import ModelFileError
from crossmodal.featureset import FeatureSet
from crossmodal.model import CrossModalModel, FeatureIdentity
from crossmodal.registry import Registry


class Callback(Protocol):
    """Receives progress from ``fit_loop``; the CLI's progress bar and the training log are callbacks."""

    def on_epoch_end(self, stage: str, epoch: int, epochs: int, logs: Mapping[str, float]) -> None: ...


class Method(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]

    def fit(
        self,
        train: Mapping[str, FeatureSet],
        val: Mapping[str, FeatureSet] | None,
        *,
        config: MethodConfig,
        device: torch.device,
        features: Mapping[str, FeatureIdentity] | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
    ) -> CrossModalModel: ...

    @classmethod
    def build_model(
        cls, config: MethodConfig, features: Mapping[str, FeatureIdentity], num_classes: int, extra: Mapping[str, Any]
    ) -> CrossModalModel: ...


METHODS: Registry[type] = Registry("method")


def register_method(cls: type) -> type:
    """Class decorator: register a method under ``cls.name`` (duplicates raise)."""
    return METHODS.register(cls)


def get_method(name: str) -> type[Method]:
    return cast("type[Method]", METHODS.get(name))


def create_method(name: str) -> Method:
    return METHODS.get(name)()


def list_methods() -> list[str]:
    return METHODS.names()


def default_features(train: Mapping[str, FeatureSet]) -> dict[str, FeatureIdentity]:
    """Feature identities for features that came from a benchmark file rather than an extractor."""
    return {m: FeatureIdentity(extractor_name="precomputed", extractor_key=f"precomputed-{fs.dim}", dim=fs.dim)
            for m, fs in train.items()}


@dataclass
class EpochResult:
    epoch: int
    logs: dict[str, float] = field(default_factory=dict)


def fit_loop(
    step: Callable[[Any, int], Mapping[str, torch.Tensor]],
    batches: Callable[[int], Iterable[Any]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None,
    modules: Mapping[str, torch.nn.Module] | None = None,
    on_epoch_end: Callable[[int], Mapping[str, float] | None] | None = None,
    callbacks: Sequence[Callback] = (),
    stage: str = "train",
    checkpoint: Checkpoint | None = None,
) -> list[dict[str, float]]:
    """Run ``epochs`` epochs of ``step`` over ``batches(epoch)``; return the per-epoch logs.

    Args:
        step: ``step(batch, epoch) -> {name: scalar tensor}``. Keys ending in ``_loss`` are summed into the loss that is
            back-propagated; every key is logged (as the epoch mean).
        batches: ``batches(epoch)`` yields the epoch's batches (epochs are 1-based).
        optimizer: steps after each batch; ``None`` for loops that only evaluate.
        modules: named modules whose state goes into the checkpoint (with the optimizer's).
        on_epoch_end: ``on_epoch_end(epoch)`` may return more logs (validation loss, quality score ...).
        checkpoint: when given, the state is saved after every epoch and a previous run's state resumes the loop.
    """
    history: list[dict[str, float]] = []
    start = 1
    if checkpoint is not None:
        resumed = checkpoint.restore(modules or {}, optimizer)
        if resumed is not None:
            start, history = resumed["epoch"] + 1, resumed["history"]
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        count = 0
        for batch in batches(epoch):
            parts = step(batch, epoch)
            loss = sum(v for k, v in parts.items() if k.endswith("_loss"))
            if optimizer is not None and isinstance(loss, torch.Tensor) and loss.requires_grad:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
        logs = {k: v / max(count, 1) for k, v in sums.items()}
        if parts_total := [v for k, v in logs.items() if k.endswith("_loss")]:
            logs["loss"] = float(sum(parts_total))
        if on_epoch_end is not None:
            logs.update(on_epoch_end(epoch) or {})
        logs["epoch"] = epoch
        logs["seconds"] = time.perf_counter() - t0
        history.append(logs)
        for cb in callbacks:
            cb.on_epoch_end(stage, epoch, epochs, logs)
        if checkpoint is not None:
            checkpoint.save(epoch, history, modules or {}, optimizer)
    return history


class Checkpoint:
    """Resume state of one ``fit_loop`` stage in one file, ``<stage>.pt``: the modules' and the optimizer's state dicts,
    the extra tensors and the plain meta (epoch, history, extras), written by ``torch.save``.

    It is read back with ``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain containers: a
    file that asks for any other object (code a ``__reduce__`` would run) is refused as a ``ModelFileError``. Each save
    goes through ``atomic_write`` (a temporary file of its own, fsynced, then renamed over the previous one), so a kill
    at any moment leaves either the previous complete checkpoint or the new one.
    """

    FORMAT = 1  # bumped when the layout of the saved dict changes; another number is refused, not misread

    def __init__(self, directory: str | Path, stage: str):
        self.directory = Path(directory)
        self.stage = stage

    @property
    def path(self) -> Path:
        return self.directory / f"{self.stage}.pt"

    def _read(self) -> dict[str, Any] | None:
        """The saved dict, or None when nothing was saved; a file that is not one this class wrote raises."""
        hint = f"delete {self.directory} to train this stage afresh"
        if not self.path.is_file():
            if (self.directory / f"{self.stage}.json").is_file():  # safetensors + JSON, before one torch.save file
                raise ModelFileError(f"checkpoint {self.directory / self.stage}.json was written by an earlier version "
                                     "of crossmodal, which this one does not resume", hint=hint)
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only's refusal of anything but tensors and plain containers
            # torch's message is advice to load it unsafely; only its "WeightsUnpickler error:" part names the object
            found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", str(e))
            raise ModelFileError(f"checkpoint {self.path} holds objects other than tensors and plain values, so it was "
                                 f"not loaded ({found.group(1) if found else type(e).__name__})", hint=hint) from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise ModelFileError(f"checkpoint {self.path} is unreadable ({type(e).__name__}: {e})", hint=hint) from e
        keys = {"format", "epoch", "history", "modules", "optimizer", "tensors", "extra"}
        if not isinstance(state, dict) or state.get("format") != self.FORMAT or not keys <= state.keys():
            raise ModelFileError(f"checkpoint {self.path} is not a format-{self.FORMAT} checkpoint of this version",
                                 hint=hint)
        return state

    def done(self) -> dict[str, Any] | None:
        """The saved meta (``epoch``, ``history``, ``extra``) of a finished or partial stage, or None."""
        state = self._read()
        return None if state is None else {k: state[k] for k in ("epoch", "history", "extra")}

    def save(self, epoch: int, history: list[dict[str, float]], modules: Mapping[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer | None, extra: Mapping[str, torch.Tensor] | None = None,
             extra_json: Mapping[str, Any] | None = None) -> None:
        """Replace the stage's checkpoint with this epoch's state (``extra_json`` holds plain values only)."""
        state = {
            "format": self.FORMAT,
            "epoch": epoch,
            "history": [dict(h) for h in history],
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "tensors": {k: v.detach() for k, v in (extra or {}).items()},
            "extra": dict(extra_json or {}),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: torch.save(state, f))

    def saved(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """The last save read once: its meta (as :meth:`done` gives it) and every tensor (``module.<name>.<key>`` and
        ``extra.<key>``), or None when none was saved."""
        state = self._read()
        if state is None:
            return None
        tensors = {f"module.{name}.{k}": v for name, sd in state["modules"].items() for k, v in sd.items()}
        tensors.update({f"extra.{k}": v for k, v in state["tensors"].items()})
        return {k: state[k] for k in ("epoch", "history", "extra")}, tensors

    def remove(self) -> None:
        """Delete the saved state and any temporary file a kill left half-written."""
        self.path.unlink(missing_ok=True)
        for tmp in self.directory.glob(f"{self.path.name}.*{TEMPORARY_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def restore(self, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None
                ) -> dict[str, Any] | None:
        """Load the saved state into ``modules`` and ``optimizer``; return the meta (epoch, history, ``extra``, and
        the extra tensors as ``tensors``) or None."""
        state = self._read()
        if state is None:
            return None
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        return {k: state[k] for k in ("epoch", "history", "extra", "tensors")}
