"""The Method extension point, its registry, and the one training loop every method shares (minGPT's generic loop,
open_clip's step returning named losses)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from crossmodal.config import MethodConfig
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


def get_method(name: str) -> type:
    return METHODS.get(name)


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
    """Resume state of one ``fit_loop`` stage: module and optimizer tensors in safetensors, the rest in JSON.

    The tensors of epoch e go to their own file ``<stage>-e<e>.safetensors``; the JSON, renamed into place last, names
    the file it belongs to, and only then are older tensor files deleted. A kill at any moment therefore leaves a JSON
    whose tensors are complete and of the same epoch.
    """

    def __init__(self, directory: str | Path, stage: str):
        self.directory = Path(directory)
        self.stage = stage

    def _tensors(self, epoch: int) -> Path:
        return self.directory / f"{self.stage}-e{epoch}.safetensors"

    @property
    def _meta(self) -> Path:
        return self.directory / f"{self.stage}.json"

    def done(self) -> dict[str, Any] | None:
        """The saved meta of a finished or partial stage, or None."""
        if not self._meta.is_file():
            return None
        return json.loads(self._meta.read_text())

    def save(self, epoch: int, history: list[dict[str, float]], modules: Mapping[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer | None, extra: Mapping[str, torch.Tensor] | None = None,
             extra_json: Mapping[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, module in modules.items():
            for k, v in module.state_dict().items():
                tensors[f"module.{name}.{k}"] = v.detach().cpu().contiguous().clone()
        opt_meta: dict[str, Any] = {}
        if optimizer is not None:
            state = optimizer.state_dict()
            for pid, pstate in state["state"].items():
                for k, v in pstate.items():
                    if isinstance(v, torch.Tensor):
                        tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous().clone().reshape(v.shape)
                    else:
                        opt_meta[f"{pid}.{k}"] = v
            opt_meta["__param_groups__"] = state["param_groups"]
        for k, v in (extra or {}).items():
            tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
        target = self._tensors(epoch)
        tmp = target.with_suffix(".safetensors.incomplete")
        save_file(tensors, str(tmp))
        tmp.replace(target)
        meta = {"epoch": epoch, "history": _finite(history), "optimizer": opt_meta, "extra": dict(extra_json or {}),
                "tensors_file": target.name}
        tmp_meta = self._meta.with_suffix(".json.incomplete")
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(self._meta)
        for old in self.directory.glob(f"{self.stage}-e*.safetensors"):
            if old != target:
                old.unlink(missing_ok=True)

    def saved_tensors(self) -> dict[str, torch.Tensor] | None:
        """Every tensor of the last save (``module.*``, ``optim.*``, ``extra.*`` keys), or None when none was saved."""
        from safetensors.torch import load_file

        meta = self.done()
        path = self.directory / meta["tensors_file"] if meta else None
        return load_file(str(path)) if path is not None and path.is_file() else None

    def remove(self) -> None:
        """Delete the saved state, the JSON first so that no JSON is ever left without its tensors."""
        self._meta.unlink(missing_ok=True)
        for old in self.directory.glob(f"{self.stage}-e*.safetensors"):
            old.unlink(missing_ok=True)

    def restore(self, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None
                ) -> dict[str, Any] | None:
        """Load the saved state into ``modules`` and ``optimizer``; return the meta (epoch, history, extras) or None."""
        meta = self.done()
        tensors = self.saved_tensors()
        if meta is None or tensors is None:
            return None
        for name, module in modules.items():
            prefix = f"module.{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        if optimizer is not None and "__param_groups__" in meta["optimizer"]:
            state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, pid, name = k.split(".", 2)
                    state.setdefault(int(pid), {})[name] = v
            for k, v in meta["optimizer"].items():
                if k != "__param_groups__":
                    pid, name = k.split(".", 1)
                    state.setdefault(int(pid), {})[name] = v
            optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["__param_groups__"]})
        meta["tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return meta


def _finite(history: list[dict[str, float]]) -> list[dict[str, float | None]]:
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in h.items()} for h in history]
