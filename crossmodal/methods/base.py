"""The Method extension point, its registry, and the one training toolkit every trained method shares (minGPT's
generic loop, open_clip's step returning named losses).

The toolkit, one of each:

* **Seeding** (:func:`derive_seed`, :func:`torch_rng`, :func:`numpy_rng`, :func:`seeded`). Every random draw of a run
  comes from a generator of its own whose seed is derived from the config's ``seed`` and the name of what it draws
  (``("rsc-image", epoch)``, ``("image-text", "pairs", epoch)`` ...), never from the global RNG, which training leaves
  as it found it. Module initialisation, whose ``nn.init`` calls take no generator, runs inside :func:`seeded`: a
  ``torch.random.fork_rng`` seeded the same way. So a stage's result depends on (seed, stage) alone: not on which other
  stages or modalities ran before it, nor on what the caller did with the global RNG.
* **Batching** (:func:`batch_sizes`, :func:`index_batches`): one shuffled epoch as a list of numpy int64 index arrays,
  applied as ``X[idx]`` (so any array-like with fancy indexing works), with an explicit last-batch policy,
  ``MethodConfig.last_batch``.
* **Chunked embedding** (:func:`embed_rows`): an encoder over many rows in no-grad chunks, in eval mode.
* **Best-epoch snapshot and early stopping** (:class:`BestSnapshot`, ``fit_loop(best=..., patience=...)``): the state
  of the epoch with the best validation score is kept, saved with the checkpoint, and restored at the end; with
  ``MethodConfig.patience`` the loop stops after that many epochs without a better score.
* **Resume** (:class:`Checkpoint`, :func:`checkpoint_folder`, :func:`save_result`, :func:`load_result`): a stage's
  state after each epoch (optionally at most every ``every_seconds``), a folder stamped with the run's config, and the
  result of a finished stage.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import numpy as np
import torch
from torch import nn

from crossmodal.common.files import TEMPORARY_SUFFIX, atomic_write
from crossmodal.config import LastBatch, MethodConfig
from crossmodal.device import autocast
from crossmodal.errors import ConfigError, ModelFileError
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


# ------------------------------------------------------------------------------------------------------------ seeding
def derive_seed(seed: int, *parts: object) -> int:
    """The seed of one random stream of a run: crc32 of ``"seed/part/..."`` (stable across processes and versions,
    unlike ``hash``)."""
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode())


def torch_rng(seed: int, *parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` for the stream ``(seed, *parts)`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def numpy_rng(seed: int, *parts: object) -> np.random.Generator:
    """A numpy Generator for the stream ``(seed, *parts)``, for draws made on numpy arrays (same-class pairing)."""
    return np.random.default_rng(derive_seed(seed, *parts))


@contextlib.contextmanager
def seeded(seed: int, *parts: object) -> Iterator[None]:
    """Run the block (building modules: ``nn.init`` takes no generator) under the global RNG seeded for the stream
    ``(seed, *parts)``, inside ``fork_rng``, so the caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *parts))
        yield


# ----------------------------------------------------------------------------------------------------------- batching
def batch_sizes(n: int, batch_size: int, last_batch: LastBatch) -> list[int]:
    """Sizes of one epoch's minibatches of ``n`` items under a last-batch policy (``MethodConfig.last_batch``).

    * ``drop``: ``n // batch_size`` full batches, the ``n mod batch_size`` leftover items unused this epoch; a set of at
      most one batch is one batch of all ``n`` (rather than no training at all);
    * ``keep``: the full batches, then the leftover items as a last, smaller batch;
    * ``spread``: every item, in ``round(n / batch_size)`` (at least one) batches whose sizes differ by at most one.
    """
    if n == 0:
        return []
    if last_batch == "drop":
        return [batch_size] * (n // batch_size) if n > batch_size else [n]
    if last_batch == "keep":
        return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    count = max(1, round(n / batch_size))
    return [n // count + (i < n % count) for i in range(count)]


def index_batches(n: int, sizes: Sequence[int], generator: torch.Generator) -> list[np.ndarray]:
    """One shuffled epoch: a ``torch.randperm(n, generator=generator)`` cut into consecutive batches of ``sizes``
    (from :func:`batch_sizes`; items past their sum are left out).

    Returns:
        int64 (size,) numpy index arrays, one per batch, to apply as ``X[idx]``.
    """
    order = torch.randperm(n, generator=generator).numpy()
    return np.split(order[:sum(sizes)], np.cumsum(sizes)[:-1]) if sizes else []


# -------------------------------------------------------------------------------------------------- chunked embedding
EMBED_CHUNK = 4096  # rows per no-grad forward pass


def embed_rows(encoder: nn.Module, X: torch.Tensor | np.ndarray,
               fn: Callable[[torch.Tensor], torch.Tensor] | None = None, *, chunk: int = EMBED_CHUNK,
               mixed_precision: bool = False) -> torch.Tensor:
    """``fn(encoder(X))`` in no-grad chunks of ``chunk`` rows, concatenated along rows, with the encoder in eval mode
    (its mode is restored after).

    Args:
        X: float (n, d): a tensor on the encoder's device, or an array-like (numpy, memmap) moved chunk by chunk.
        fn: applied to each chunk's float32 output (default: none).
        mixed_precision: run the encoder under ``crossmodal.device.autocast`` (bf16 on CUDA), as a method that trains
            under it evaluates.

    Returns:
        float32 (n, D) tensor on the encoder's device.
    """
    device = X.device if isinstance(X, torch.Tensor) else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    parts = []
    with torch.inference_mode(), autocast(device, enabled=mixed_precision):
        for i in range(0, len(X), chunk):
            x = X[i:i + chunk]
            if not isinstance(x, torch.Tensor):
                x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            z = encoder(x).float()
            parts.append(fn(z) if fn is not None else z)
    encoder.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 0, device=device)


# ------------------------------------------------------------------------------------- best epoch and early stopping
class BestSnapshot:
    """The state of ``module`` at the epoch with the best ``logs[key]`` so far; ``restore`` puts it back.

    ``fit_loop(best=...)`` offers it every epoch's logs, saves it with the checkpoint and reloads it on resume, so a
    resumed run still returns the best epoch of the whole run. An epoch whose logs lack ``key`` (no validation data)
    is not a candidate; when no epoch was, ``restore`` leaves the last state. A NaN score is beaten by any later one.
    """

    def __init__(self, module: nn.Module, key: str, *, higher_is_better: bool):
        self.module, self.key, self.higher_is_better = module, key, higher_is_better
        self.value = math.nan
        self.epoch = 0  # 0: no candidate yet
        self.tensors: dict[str, torch.Tensor] = {}

    def offer(self, logs: Mapping[str, float], epoch: int) -> bool:
        """Keep a copy of the module's state if ``logs[key]`` is the best so far (copied into the previous
        snapshot's memory); return whether it was."""
        value = logs.get(self.key)
        if value is None:
            return False
        better = value > self.value if self.higher_is_better else value < self.value
        if not (math.isnan(self.value) or better):
            return False
        self.value, self.epoch = float(value), epoch
        state = self.module.state_dict()
        if self.tensors.keys() == state.keys():
            with torch.no_grad():
                for k, v in state.items():
                    self.tensors[k].copy_(v)
        else:
            self.tensors = {k: v.detach().clone() for k, v in state.items()}
        return True

    def exhausted(self, epoch: int, patience: int | None) -> bool:
        """True when ``patience`` epochs up to ``epoch`` brought no better score (never without a candidate)."""
        return patience is not None and self.epoch > 0 and epoch - self.epoch >= patience

    def restore(self) -> None:
        """Load the best state into the module (nothing when no epoch was a candidate)."""
        if self.epoch:
            self.module.load_state_dict(self.tensors)

    def meta(self) -> dict[str, Any]:
        return {"best_value": None if math.isnan(self.value) else self.value, "best_epoch": self.epoch}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        """Take back a checkpoint's ``meta()`` and tensors (moved to the module's device)."""
        value = meta.get("best_value")
        self.value = math.nan if value is None else float(value)
        self.epoch = int(meta.get("best_epoch", 0))
        device = next(iter(self.module.state_dict().values())).device
        self.tensors = {k: v.to(device) for k, v in tensors.items()}


# ------------------------------------------------------------------------------------------------------------ the loop
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
    best: BestSnapshot | None = None,
    patience: int | None = None,
) -> list[dict[str, float]]:
    """Run up to ``epochs`` epochs of ``step`` over ``batches(epoch)``; return the per-epoch logs.

    Args:
        step: ``step(batch, epoch) -> {name: scalar tensor}``. Keys ending in ``_loss`` are summed into the loss that is
            back-propagated; every key is logged (as the epoch mean).
        batches: ``batches(epoch)`` yields the epoch's batches (epochs are 1-based).
        optimizer: steps after each batch; ``None`` for loops that only evaluate.
        modules: named modules whose state goes into the checkpoint (with the optimizer's).
        on_epoch_end: ``on_epoch_end(epoch)`` may return more logs (validation loss, quality score ...).
        checkpoint: when given, the state is saved after every epoch (at most every ``checkpoint.every_seconds``) and a
            previous run's state resumes the loop.
        best: offered every epoch's logs (the loop then logs ``best_epoch``); saved and resumed with the checkpoint.
            The caller restores it when the loop returns.
        patience: with ``best``, stop after this many epochs without a better score (the last epoch's logs then hold
            ``early_stop: 1``); None runs every epoch.
    """
    history: list[dict[str, float]] = []
    start = 1
    if checkpoint is not None:
        resumed = checkpoint.restore(modules or {}, optimizer)
        if resumed is not None:
            start, history = resumed["epoch"] + 1, resumed["history"]
            if best is not None:
                best.load(resumed["extra"], resumed["tensors"])
    for epoch in range(start, epochs + 1):
        if best is not None and best.exhausted(epoch - 1, patience):
            break  # a resumed run that had already stopped early
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
        stop = False
        if best is not None:
            best.offer(logs, epoch)
            if best.epoch:
                logs["best_epoch"] = float(best.epoch)
            stop = best.exhausted(epoch, patience)
            if stop and epoch < epochs:
                logs["early_stop"] = 1.0
        logs["epoch"] = epoch
        logs["seconds"] = time.perf_counter() - t0
        history.append(logs)
        for cb in callbacks:
            cb.on_epoch_end(stage, epoch, epochs, logs)
        if checkpoint is not None:
            checkpoint.save_if_due(epoch, history, modules or {}, optimizer, best)
        if stop:
            break
    return history


# ------------------------------------------------------------------------------------------------------------- resume
class Checkpoint:
    """Resume state of one ``fit_loop`` stage in one file, ``<stage>.pt``: the modules' and the optimizer's state dicts,
    the extra tensors (the best snapshot's) and the plain meta (epoch, history, extras), written by ``torch.save``.

    It is read back with ``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain containers: a
    file that asks for any other object (code a ``__reduce__`` would run) is refused as a ``ModelFileError``. Each save
    goes through ``atomic_write`` (a temporary file of its own, fsynced, then renamed over the previous one), so a kill
    at any moment leaves either the previous complete checkpoint or the new one.

    ``every_seconds`` > 0 makes the loop's saves (``save_if_due``) skip an epoch that ends sooner than that after the
    previous save (a large encoder's state is ~0.5 GB); a resumed run then repeats the epochs since.
    """

    FORMAT = 2  # bumped when the layout of the saved dict changes; another number is refused, not misread
    # 2: the best snapshot is the extra tensors + best_value/best_epoch (1 kept it as a module in some methods)

    def __init__(self, directory: str | Path, stage: str, *, every_seconds: float = 0.0):
        self.directory = Path(directory)
        self.stage = stage
        self.every_seconds = every_seconds
        self._saved_at = time.monotonic()

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
        self._saved_at = time.monotonic()

    def save_if_due(self, epoch: int, history: list[dict[str, float]], modules: Mapping[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, best: BestSnapshot | None = None) -> None:
        """``save`` (with the best snapshot) unless the previous save is less than ``every_seconds`` old."""
        if time.monotonic() - self._saved_at < self.every_seconds:
            return
        self.save(epoch, history, modules, optimizer, best.tensors if best is not None else None,
                  best.meta() if best is not None else None)

    def saved(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """The last save read once: its meta (``epoch``, ``history``, ``extra``) and every tensor
        (``module.<name>.<key>`` and ``extra.<key>``), or None when none was saved."""
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


def checkpoint_folder(directory: Path | str | None, config: MethodConfig) -> Path | None:
    """The checkpoint folder of a run, stamped with its config (``config.json``); a folder that holds a run with
    another config is refused, since resuming it would mix the two.

    Raises:
        ConfigError: the folder's stamp differs from ``config`` (the differing fields are named).
    """
    if directory is None:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "config.json"
    wanted = json.loads(json.dumps(config.to_dict()))
    if stamp.is_file():
        held = json.loads(stamp.read_text())
        if held != wanted:
            changed = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
            raise ConfigError(f"{directory} holds checkpoints of a run with another config ({', '.join(changed)})",
                              hint="delete that folder, or use another output folder")
    else:
        stamp.write_text(json.dumps(wanted, indent=2))
    return directory


def save_result(folder: Path | None, stage: str, *, modules: Mapping[str, nn.Module] | None = None,
                tensors: Mapping[str, torch.Tensor] | None = None, meta: Mapping[str, Any] | None = None) -> None:
    """Record a finished stage (``<stage>-result.pt``: modules' state, tensors, plain meta) and delete its in-progress
    checkpoint, which is no longer needed. Nothing without a folder."""
    if folder is None:
        return
    Checkpoint(folder, f"{stage}-result").save(0, [], modules or {}, None, tensors, meta)
    Checkpoint(folder, stage).remove()


def load_result(folder: Path | None, stage: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """A finished stage's ``(meta, tensors)`` as ``save_result`` wrote them (module states as ``<module>.<key>``), or
    None when the stage has not finished."""
    if folder is None:
        return None
    saved = Checkpoint(folder, f"{stage}-result").saved()  # one read: a result may hold a whole encoder
    if saved is None:
        return None
    meta, tensors = saved
    return meta["extra"], {k.split(".", 1)[1]: v for k, v in tensors.items()}
