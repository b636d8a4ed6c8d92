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


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
RETAINED_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed host memory in the process instead of returning it to the kernel.

    Training frees and reallocates the same large tensors every step (each weight gradient of a 4096 x 4096 layer is
    64 MB). glibc serves blocks over 32 MB with fresh ``mmap`` pages and unmaps them on free, so every step pays page
    faults and zeroing: about 6 % of a DRCL epoch on CPU, all of it kernel time. Serving every block from the heap and
    trimming it only beyond ``RETAINED_BYTES`` free removes that; the cost is that the process keeps its peak heap.

    A process-wide policy, so it is set by the applications that train (``crossmodal train``, the benchmarks), not by
    the library. Returns False (and changes nothing) where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES))
