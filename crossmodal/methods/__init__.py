"""Methods: one file each, registered by name. Importing this package registers them all."""

from __future__ import annotations

from crossmodal.methods.base import (
    Callback,
    Checkpoint,
    Method,
    create_method,
    fit_loop,
    get_method,
    list_methods,
    register_method,
)

__all__ = ["Callback", "Checkpoint", "Method", "create_method", "fit_loop", "get_method", "list_methods",
           "register_method"]
