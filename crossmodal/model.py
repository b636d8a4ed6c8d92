"""CrossModalModel: one encoder per modality into a common space, saved as safetensors + a JSON card.

Nothing is ever unpickled: weights are flat named tensors (safetensors), everything else is JSON. ``load`` rebuilds the
modules from the card through the method registry, then loads the tensors with ``strict=True``.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossmodal.device import resolve_device
from crossmodal.errors import FeatureMismatchError, ModelFileError
from crossmodal.files import file_sha256

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"


@dataclass(frozen=True)
class FeatureIdentity:
    """What a modality's input features were: the extractor that made them and their width."""

    extractor_name: str
    extractor_key: str
    dim: int


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
            "versions": library_versions(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``card.json`` (with the weights' sha256) into ``directory``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_FILE + ".incomplete")
        save_model(self.cpu_copy(), str(tmp))
        tmp.replace(directory / WEIGHTS_FILE)
        card = self.card()
        card["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
        tmp_card = directory / (CARD_FILE + ".incomplete")
        tmp_card.write_text(json.dumps(card, indent=2, sort_keys=True))
        tmp_card.replace(directory / CARD_FILE)
        return directory

    def cpu_copy(self) -> CrossModalModel:
        return self if self.device.type == "cpu" else _clone_to_cpu(self)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CrossModalModel:
        """Rebuild a saved model from its card and weights (never unpickling); verifies the weights' sha256.

        Raises:
            ModelFileError: a file is missing, the card is not valid JSON, or the weights do not match the card.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from crossmodal.methods import get_method

        directory = Path(directory)
        card = read_card(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelFileError(f"{weights}: weights file missing", hint="re-run crossmodal train")
        if card.get("weights_sha256") and file_sha256(weights) != card["weights_sha256"]:
            raise ModelFileError(
                f"{weights}: sha256 does not match the card; the file was modified or corrupted",
                hint="re-run crossmodal train, or restore the original file",
            )
        method_cls = get_method(card["method"])
        config = method_cls.Config.from_dict(card["config"])
        features = {m: FeatureIdentity(**f) for m, f in card["features"].items()}
        model = method_cls.build_model(config, features, card["num_classes"], card.get("extra", {}))
        model.metrics = card.get("metrics", {})
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ModelFileError(f"{weights}: cannot load weights ({exc})", hint="re-run crossmodal train") from exc
        return model.to(resolve_device(device)).eval()


def read_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{directory}: no trained model here ({CARD_FILE} missing)", hint="run crossmodal train first"
        )
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a valid model card ({exc})") from exc
    for key in ("method", "config", "features", "num_classes"):
        if key not in card:
            raise ModelFileError(f"{path}: model card has no {key!r}")
    return card


def library_versions() -> dict[str, str]:
    import numpy
    import safetensors

    import crossmodal

    return {
        "crossmodal": crossmodal.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
    }


def _clone_to_cpu(model: CrossModalModel) -> CrossModalModel:
    import copy

    return copy.deepcopy(model).cpu()
