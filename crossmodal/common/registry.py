"""A small name -> class registry: one door to build things, duplicates refused (timm's register/create/list).

Entries may be lazy (timm's ``_model_to_module``): ``register_lazy(name, module, **tags)`` records where a class is
defined (and tags such as its modality), and the module is imported the first time ``get(name)`` asks for it, so
listing names, even by tag, imports nothing. The extractors (extractors/registry.py), the methods and the index backends
(crossmodal) each hold one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from crossmodal.common.errors import CrossmodalError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> registered objects (classes), or the module that registers each when imported.

    Args:
        kind: what the names name, for messages ("method", "extractor").
        unknown: the error raised for an unknown name, built as ``unknown(kind, name, valid_names)``; a subclass of
            :class:`UnknownNameError` (the hint lists the closest names).
        decorator: how a module registers its class, for the message of a module that did not.
    """

    def __init__(self, kind: str, *, unknown: Callable[[str, str, Iterable[str]], UnknownNameError] = UnknownNameError,
                 decorator: str = "register"):
        self.kind = kind
        self.unknown = unknown
        self.decorator = decorator
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it when imported
        self._tags: dict[str, dict[str, Any]] = {}

    def register(self, obj: T, name: str | None = None) -> T:
        """Register ``obj`` under ``name`` (default ``obj.name``); a name registered twice, or from another module than
        its ``register_lazy`` line says, raises ``ValueError`` (a bug of the code, not of a user's input)."""
        name = name or obj.name  # type: ignore[attr-defined]
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        module = getattr(obj, "__module__", None)
        if name in self._lazy and module != self._lazy[name]:
            raise ValueError(f"{self.kind} {name!r} is declared in {self._lazy[name]} but registered from {module}")
        self._items[name] = obj
        return obj

    def register_lazy(self, name: str, module: str, **tags: Any) -> None:
        """Declare that importing ``module`` registers ``name``; the import waits for the first ``get(name)``."""
        if name in self._lazy or name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = module
        self._tags[name] = tags

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in's probe in a test); unknown names are ignored."""
        for table in (self._items, self._lazy, self._tags):
            table.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered under ``name``, importing its module the first time.

        Raises:
            UnknownNameError: (``unknown``) no such name; the hint gives the closest ones.
            CrossmodalError: the module declared for ``name`` does not register it.
        """
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])
            if name not in self._items:
                raise CrossmodalError(f"{self.kind} {name!r}: module {self._lazy[name]} defines no class registered "
                                      "under it", hint=f"decorate the class with {self.decorator}")
        try:
            return self._items[name]
        except KeyError:
            raise self.unknown(self.kind, name, self.names()) from None

    def module(self, name: str) -> str | None:
        """The module that defines ``name`` as its ``register_lazy`` line says (None for a name registered directly)."""
        return self._lazy.get(name)

    def tags(self, name: str) -> dict[str, Any]:
        """The tags of ``name``'s ``register_lazy`` line ({} when none)."""
        return dict(self._tags.get(name, {}))

    def is_loaded(self, name: str) -> bool:
        """Whether ``name``'s object is registered already (its module imported)."""
        return name in self._items

    def names(self, **tags: Any) -> list[str]:
        """Registered names, sorted; with ``tags``, those whose ``register_lazy`` line has these values. Imports
        nothing."""
        every = set(self._items) | set(self._lazy)
        return sorted(n for n in every if all(self._tags.get(n, {}).get(k) == v for k, v in tags.items()))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._lazy
