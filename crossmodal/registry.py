"""The core's registries (methods, index backends) are the kernel's :class:`crossmodal.common.registry.Registry`."""

from __future__ import annotations

from crossmodal.common.registry import Registry

__all__ = ["Registry"]
