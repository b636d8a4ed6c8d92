"""The one place that decides the device (STYLE.md rule 6)."""

from __future__ import annotations

import contextlib

import torch

from crossmodal.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a ``torch.device``; ``auto`` picks CUDA when present.

    Raises:
        ConfigError: CUDA was asked for and is not available, or the name is not a device.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available", hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"not a device: {name!r}", hint="use auto, cpu or cuda") from exc


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a ``nullcontext`` on CPU, where fp32 is both faster and exact."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
