# ruff: noqa: I001  (one import line appended per method)
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
from crossmodal.methods import drcl  # noqa: F401
from crossmodal.methods import sdml  # noqa: F401
from crossmodal.methods import mars  # noqa: F401
from crossmodal.methods import dscmr  # noqa: F401
from crossmodal.methods import mcca  # noqa: F401
from crossmodal.methods import sccmr  # noqa: F401
from crossmodal.methods import hcmsl  # noqa: F401
from crossmodal.methods import rcar  # noqa: F401
from crossmodal.methods import sedel  # noqa: F401
