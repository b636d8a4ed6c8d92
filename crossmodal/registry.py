"""A small name -> class registry: one door to build things, duplicates refused (timm's register/create/list).

Entries may be lazy (timm's ``_model_to_module``): ``register_lazy(name, module)`` records where a class is defined, and
the module is imported the first time ``get(name)`` asks for it, so listing names imports nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from crossmodal.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it when imported

    def register(self, obj: T, name: str | None = None) -> T:
        name = name or obj.name  # type: ignore[attr-defined]
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        module = getattr(obj, "__module__", None)
        if name in self._lazy and module != self._lazy[name]:
            raise ValueError(f"{self.kind} {name!r} is declared in {self._lazy[name]} but registered from {module}")
        self._items[name] = obj
        return obj

    def register_lazy(self, name: str, module: str) -> None:
        """Declare that importing ``module`` registers ``name``; the import waits for the first ``get(name)``."""
        if name in self._lazy or name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = module

    def decorator(self) -> Callable[[T], T]:
        return self.register

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])
            if name not in self._items:
                raise ValueError(f"{self.kind} {name!r}: importing {self._lazy[name]} did not register it")
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._lazy
