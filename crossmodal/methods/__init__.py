# ruff: noqa: I001  (one registration line appended per method)
"""Methods: one file each, registered by name. A method's module is imported the first time it is asked for
(``get_method``/``create_method``); ``list_methods`` imports none of them. Adding a method is one file plus one line."""

from __future__ import annotations

from crossmodal.methods.base import (
    METHODS,
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
METHODS.register_lazy("drcl", "crossmodal.methods.drcl")
METHODS.register_lazy("sdml", "crossmodal.methods.sdml")
METHODS.register_lazy("mars", "crossmodal.methods.mars")
METHODS.register_lazy("dscmr", "crossmodal.methods.dscmr")
METHODS.register_lazy("mcca", "crossmodal.methods.mcca")
METHODS.register_lazy("sccmr", "crossmodal.methods.sccmr")
METHODS.register_lazy("hcmsl", "crossmodal.methods.hcmsl")
METHODS.register_lazy("rcar", "crossmodal.methods.rcar")
METHODS.register_lazy("sedel", "crossmodal.methods.sedel")
