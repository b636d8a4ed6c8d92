"""Typed configs: frozen dataclasses with the paper's defaults, JSON presets and validated ``key=value`` overrides
(parsed by the kernel, crossmodal/common/config.py, as the extractors' options are)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from crossmodal.common.config import coerce_field, parse_overrides, with_overrides
from crossmodal.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only annotations name it

__all__ = ["LastBatch", "MethodConfig", "coerce_field", "load_preset", "parse_overrides", "with_overrides"]

C = TypeVar("C")

LastBatch = Literal["spread", "drop", "keep"]  # crossmodal.methods.base.batch_sizes


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses add fields with the paper's defaults, one comment each."""

    seed: int = 1  # seed of the run: every random stream is derived from it (crossmodal.methods.base, seeding)
    epochs: int = 200
    batch_size: int = 1024
    last_batch: LastBatch = "drop"  # the N mod B leftover items of an epoch: drop, keep (a smaller batch) or spread
    patience: int | None = None  # stop after this many epochs without a better validation score (None: all epochs)

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or null, got {self.patience}",
                              hint="use --set patience=5, or patience=null to run every epoch")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return cls(**parse_overrides(cls, data))  # type: ignore[call-arg]


def load_preset(cls: type[C], path: str | Path | Traversable) -> C:
    """``path`` may be a packaged preset (``importlib.resources``' Traversable) as well as a file."""
    try:
        data = json.loads((Path(path) if isinstance(path, str) else path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset ({exc})") from exc
    return cls.from_dict(data)  # type: ignore[attr-defined]
