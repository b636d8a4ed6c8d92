"""A small name -> class registry: one door to build things, duplicates refused (timm's register/create/list)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from crossmodal.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, obj: T, name: str | None = None) -> T:
        name = name or obj.name  # type: ignore[attr-defined]
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def decorator(self) -> Callable[[T], T]:
        return self.register

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
