"""CrossModalModel: one encoder per modality into a common space, saved as safetensors + a JSON card.

Nothing is ever unpickled: weights are flat named tensors (safetensors), everything else is JSON. ``load`` rebuilds the
modules from the card through the method registry, then loads the tensors with ``strict=True``.

A model folder is input like any other, so nothing in it is trusted before it is checked, and nothing is allocated
before the checks pass (``CrossModalModel.load``): the card is validated against its schema (``ModelCard``: types,
required fields, bounds), the weights must match the card's sha256 (a card without one is refused), the safetensors
header is read on its own (8 + at most ``MAX_HEADER_BYTES`` bytes) and must describe tensors that fit the file, and the
model the card describes is first built on torch's ``meta`` device (shapes, no memory) and must have exactly the
header's tensor names and shapes. So a forged card can make the loader allocate at most what the weights file itself
holds, which is also bounded by ``MAX_PARAMETERS``.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossmodal.common.files import atomic_write
from crossmodal.common.hashing import file_sha256
from crossmodal.common.versions import library_versions as versions_of
from crossmodal.device import resolve_device
from crossmodal.errors import ConfigError, FeatureMismatchError, ModelFileError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "crossmodal-model/1"
CARD_LIBRARIES = ("python", "torch", "numpy", "safetensors")  # whose versions a card records

MAX_CLASSES = 1_000_000  # the largest label sets of the field (ImageNet-21k, NUS tags) are far below
MAX_FEATURE_DIM = 65_536  # 16x the widest extractor here (VGG-19 fc7, C3D fc6: 4096)
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32; DRCL's paper presets on five modalities hold ~0.2 G
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
MAX_NAME_CHARS = 256
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1}


@dataclass(frozen=True)
class FeatureIdentity:
    """What a modality's input features were: the extractor that made them and their width."""

    extractor_name: str
    extractor_key: str
    dim: int


@dataclass(frozen=True)
class ModelCard:
    """The fields of ``card.json`` that loading relies on, each checked for type and bounds (``from_json``).

    Attributes:
        method: registry name of the method. config: its config as a JSON object (checked by ``Config.from_dict``).
        num_classes: C, in [1, MAX_CLASSES]. features: modality -> FeatureIdentity, widths in [1, MAX_FEATURE_DIM].
        weights_sha256: 64 lowercase hex digits, the sha256 of ``model.safetensors`` (required).
        extra: the method's JSON facts. metrics: the recorded evaluation.
        source: where the training data came from (``{"kind": ..., its parameters}``, pipelines.datasource), or None.
            Cards written before this field kept it as ``extra.data_source``; it is read from there.
    """

    method: str
    config: dict[str, Any]
    num_classes: int
    features: dict[str, FeatureIdentity]
    weights_sha256: str
    extra: dict[str, Any]
    metrics: dict[str, Any]
    source: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, card: Any, *, source: str | Path) -> ModelCard:
        """Validate a parsed card.

        Raises:
            ModelFileError: a field is missing, of the wrong type or out of bounds (the message names it).
        """

        def bad(what: str, hint: str = "re-run crossmodal train; a card is written by it, not by hand") -> None:
            raise ModelFileError(f"{source}: {what}", hint=hint)

        if not isinstance(card, dict):
            bad(f"model card is a JSON {type(card).__name__}, not an object")
        for key in ("method", "config", "features", "num_classes", "weights_sha256"):
            if key not in card:
                bad(f"model card has no {key!r}", hint="re-run crossmodal train (every model it saves records it)"
                    if key == "weights_sha256" else "re-run crossmodal train")
        if card.get("format", CARD_FORMAT) != CARD_FORMAT:
            bad(f"model card format {card.get('format')!r} is not {CARD_FORMAT!r}")
        method, config, num_classes = card["method"], card["config"], card["num_classes"]
        if not _is_name(method):
            bad(f"model card 'method' must be a name, got {_short(method)}")
        if not isinstance(config, dict):
            bad(f"model card 'config' must be an object, got {_short(config)}")
        if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
            bad(f"model card 'num_classes' must be an integer in [1, {MAX_CLASSES:,}], got {_short(num_classes)}")
        digest = card["weights_sha256"]
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            bad(f"model card 'weights_sha256' must be 64 hex digits, got {_short(digest)}")
        raw_features = card["features"]
        if not isinstance(raw_features, dict) or not raw_features:
            bad(f"model card 'features' must be a non-empty object, got {_short(raw_features)}")
        features = {}
        for modality, f in raw_features.items():
            fields = {"extractor_name", "extractor_key", "dim"}
            if not _is_name(modality) or not isinstance(f, dict) or set(f) != fields:
                bad(f"model card feature {_short(modality)} must be {{extractor_name, extractor_key, dim}}, "
                    f"got {_short(f)}")
            if not (isinstance(f["extractor_name"], str) and isinstance(f["extractor_key"], str)
                    and len(f["extractor_name"]) <= MAX_NAME_CHARS and len(f["extractor_key"]) <= MAX_NAME_CHARS):
                bad(f"model card feature {modality!r}: extractor name and key must be strings")
            if not _is_int(f["dim"]) or not 1 <= f["dim"] <= MAX_FEATURE_DIM:
                bad(f"model card feature {modality!r}: width must be an integer in [1, {MAX_FEATURE_DIM:,}], got "
                    f"{_short(f['dim'])}")
            features[modality] = FeatureIdentity(f["extractor_name"], f["extractor_key"], f["dim"])
        extra, metrics = card.get("extra", {}), card.get("metrics", {})
        if not isinstance(extra, dict) or not isinstance(metrics, dict):
            bad("model card 'extra' and 'metrics' must be objects")
        origin = card.get("source")  # where the training data came from (``source`` names the card's own path)
        if origin is None and isinstance(extra.get("data_source"), dict):  # a card from before the source field
            origin, extra = extra["data_source"], {k: v for k, v in extra.items() if k != "data_source"}
        if origin is not None and not (isinstance(origin, dict) and isinstance(origin.get("kind"), str)):
            bad(f"model card 'source' must be an object with a 'kind', got {_short(origin)}")
        return cls(method=method, config=config, num_classes=num_classes, features=features, weights_sha256=digest,
                   extra=extra, metrics=metrics, source=origin)


class CrossModalModel(nn.Module):
    """Encoders (one per modality, or one per ``modality__partner`` for methods trained per pair) and method tensors.

    Args:
        method: registry name of the method that built it.
        config: the method's config (a dataclass).
        encoders: modality (or ``modality__partner``) -> module mapping float32 (n, d_k) to (n, D).
        features: modality -> FeatureIdentity of its input features.
        num_classes: C.
        buffers: extra tensors the method needs at inference (DRCL: ``prior`` W, D x C).
        metrics: evaluation results recorded in the card.

    Attributes:
        source: where the training data came from, recorded in the card (set by whoever trains; None otherwise).
    """

    def __init__(
        self,
        *,
        method: str,
        config: Any,
        encoders: Mapping[str, nn.Module],
        features: Mapping[str, FeatureIdentity],
        num_classes: int,
        buffers: Mapping[str, torch.Tensor] | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.method = method
        self.config = config
        self.encoders = nn.ModuleDict(dict(encoders))
        self.features = dict(features)
        self.num_classes = num_classes
        self.metrics = dict(metrics or {})
        self.extra = dict(extra or {})  # JSON-serialisable facts the method needs to rebuild itself
        self.source: dict[str, Any] | None = None
        for name, tensor in (buffers or {}).items():
            self.register_buffer(name, tensor.detach().clone())

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def encoder_for(self, modality: str, against: str | None = None) -> nn.Module:
        if against is not None and f"{modality}__{against}" in self.encoders:
            return self.encoders[f"{modality}__{against}"]
        if modality in self.encoders:
            return self.encoders[modality]
        raise FeatureMismatchError(
            f"model ({self.method}) has no encoder for modality {modality!r}"
            + (f" against {against!r}" if against else ""),
            hint=f"it encodes {', '.join(self.modalities)}; train the modality first (crossmodal train --add-modality)",
        )

    def encode(self, modality: str, X: np.ndarray, *, against: str | None = None, batch_size: int = 4096) -> np.ndarray:
        """Embed features of one modality.

        Args:
            modality: the modality of ``X``.
            X: float32 (n, d_k) features from the extractor recorded in ``features[modality]``.
            against: the target modality, for methods trained per pair (ignored by joint-space methods).

        Returns:
            float32 (n, D), each row of unit L2 norm.

        Raises:
            FeatureMismatchError: ``X`` has the wrong width.
        """
        encoder = self.encoder_for(modality, against)
        X = np.asarray(X, dtype=np.float32)
        expected = self.features[modality].dim if modality in self.features else None
        if X.ndim != 2 or (expected is not None and X.shape[1] != expected):
            raise FeatureMismatchError(
                f"{modality} features have shape {X.shape}, the model expects width {expected}"
                f" (extractor {self.features[modality].extractor_key})",
                hint="extract with the extractor recorded in the model card",
            )
        device = self.device
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size])).to(device)
                z = encoder(xb).float()
                out.append(torch.nn.functional.normalize(z, dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, self.embedding_dim(modality, against)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def embedding_dim(self, modality: str, against: str | None = None) -> int:
        encoder = self.encoder_for(modality, against)
        probe = torch.zeros(1, self.features[modality].dim, device=self.device)
        with torch.inference_mode():
            return int(encoder(probe).shape[1])

    # ----------------------------------------------------------------------------------------------------------- I/O
    def card(self) -> dict[str, Any]:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else asdict(self.config)
        return {
            "format": "crossmodal-model/1",
            "method": self.method,
            "config": cfg,
            "num_classes": self.num_classes,
            "features": {m: asdict(f) for m, f in self.features.items()},
            "encoders": list(self.encoders),
            "seed": cfg.get("seed"),
            "metrics": self.metrics,
            "extra": self.extra,
            "source": self.source,
            "versions": library_versions(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``card.json`` (with the weights' sha256) into ``directory``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.cpu_copy()
        atomic_write(directory / WEIGHTS_FILE, lambda f: save_model(model, f.name))
        card = self.card()
        card["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
        atomic_write(directory / CARD_FILE, json.dumps(card, indent=2, sort_keys=True))  # the card last: a whole save
        return directory

    def cpu_copy(self) -> CrossModalModel:
        return self if self.device.type == "cpu" else _clone_to_cpu(self)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CrossModalModel:
        """Rebuild a saved model from its card and weights, checking everything before allocating (module docstring).

        Raises:
            ModelFileError: a file is missing, the card is not valid JSON or breaks its schema, the weights do not
                match the card's sha256 or the shapes it describes, or the model would be too large.
            UnknownNameError: the card names a method that is not registered.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from crossmodal.methods import get_method

        directory = Path(directory)
        card = ModelCard.from_json(read_card(directory), source=directory / CARD_FILE)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelFileError(f"{weights}: weights file missing", hint="re-run crossmodal train")
        if file_sha256(weights) != card.weights_sha256:
            raise ModelFileError(
                f"{weights}: sha256 does not match the card; the file was modified or corrupted",
                hint="re-run crossmodal train, or restore the original file",
            )
        shapes = safetensors_shapes(weights)
        method_cls = get_method(card.method)
        try:
            config = method_cls.Config.from_dict(card.config)
        except ConfigError as exc:
            raise ModelFileError(f"{directory / CARD_FILE}: the config does not fit {card.method}: {exc.message}",
                                 hint="re-run crossmodal train") from exc

        def build() -> CrossModalModel:
            return method_cls.build_model(config, card.features, card.num_classes, card.extra)

        try:
            with torch.device("meta"):  # shapes only: what the card asks for costs no memory yet
                _check_shapes(build(), shapes, weights)
        except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as exc:
            raise ModelFileError(f"{directory / CARD_FILE}: describes a model that cannot be built "
                                 f"({type(exc).__name__}: {str(exc)[:200]})", hint="re-run crossmodal train") from exc
        model = build()
        model.metrics = card.metrics
        model.source = card.source
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ModelFileError(f"{weights}: cannot load weights ({exc})", hint="re-run crossmodal train") from exc
        return model.to(resolve_device(device)).eval()


def read_card(directory: str | Path) -> dict[str, Any]:
    """The parsed ``card.json`` of a model folder, validated against ``ModelCard`` (returned as the raw JSON).

    Raises:
        ModelFileError: no card, not JSON, or a field missing, mistyped or out of bounds.
    """
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{directory}: no trained model here ({CARD_FILE} missing)", hint="run crossmodal train first"
        )
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a valid model card ({exc})") from exc
    ModelCard.from_json(card, source=path)
    return card


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header, read alone (the tensors are not loaded).

    The header must be a JSON object of ``{dtype, shape, data_offsets}`` entries whose byte ranges match their shapes
    and lie in the file, with at most ``MAX_PARAMETERS`` elements in all.

    Raises:
        ModelFileError: not a safetensors file, or a header that does not fit the file.
    """
    path = Path(path)
    size = path.stat().st_size

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}", hint="re-run crossmodal train, or restore the original file")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad("not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise bad(f"not a safetensors file (header length {length} for a file of {size} bytes)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise bad("not a safetensors file (header is not a JSON object)")
    data_bytes, shapes, total = size - 8 - length, {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = SAFETENSORS_DTYPE_BYTES[dtype]
            if not all(_is_int(n) and n >= 0 for n in (*shape, start, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {_short(name)} has a malformed header entry {_short(entry)}") from exc
        count = math.prod(shape)
        if end - start != count * itemsize or end > data_bytes:
            raise bad(f"tensor {_short(name)} of shape {shape} ({dtype}) does not fit its bytes {start}..{end} of "
                      f"{data_bytes}")
        total += count
        shapes[name] = tuple(shape)
    if total > MAX_PARAMETERS:
        raise bad(f"{total:,} parameters, above the {MAX_PARAMETERS:,} a model may hold")
    return shapes


def _check_shapes(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], weights: Path) -> None:
    """The model's tensors (names and shapes, from a meta-device build) must be the weights file's, no more, no less.

    A tensor shared between modules appears once in the file under one of its names (safetensors drops duplicates).

    Raises:
        ModelFileError: a name or a shape differs.
    """
    groups: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(tensor), []).append((name, tensor))
    described = {name for group in groups.values() for name, _ in group}
    unexpected = sorted(set(shapes) - described)
    problems = [f"unexpected tensor {unexpected[0]!r}"] if unexpected else []
    for group in groups.values():
        stored = [(name, t) for name, t in group if name in shapes]
        if not stored:
            problems.append(f"missing tensor {group[0][0]!r}")
        problems += [f"{name!r} is {list(shapes[name])} in the file, {list(t.shape)} in the card"
                     for name, t in stored if tuple(t.shape) != shapes[name]]
    if problems:
        raise ModelFileError(f"{weights}: the weights do not match the model the card describes ({problems[0]}"
                             + (f", and {len(problems) - 1} more" if len(problems) > 1 else "") + ")",
                             hint="re-run crossmodal train, or restore the original card and weights")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def library_versions() -> dict[str, str]:
    """The card's record of what made the model: crossmodal's version and its libraries' (``python`` included)."""
    import crossmodal

    return {"crossmodal": crossmodal.__version__, **versions_of(CARD_LIBRARIES)}


def _clone_to_cpu(model: CrossModalModel) -> CrossModalModel:
    import copy

    return copy.deepcopy(model).cpu()
