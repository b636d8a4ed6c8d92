"""Typed configs: frozen dataclasses with the paper's defaults, JSON presets and validated ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from crossmodal.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only annotations name it

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses add fields with the paper's defaults, one comment each."""

    seed: int = 1  # global seed of the run
    epochs: int = 200
    batch_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - fields)
        if unknown:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}", hint=f"valid fields: {valid}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: coerce_field(hints[k], v, k) for k, v in data.items()})  # type: ignore[call-arg]


def with_overrides(config: C, overrides: Iterable[str] | dict[str, Any]) -> C:
    """Return ``config`` with ``key=value`` overrides applied; values parse as JSON when they can, typed by field.

    Raises:
        ConfigError: an unknown key, a malformed item or a value of the wrong type.
    """
    if not isinstance(overrides, dict):
        parsed: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value", hint="write e.g. --set lr_spl=1e-4")
            key, _, raw = item.partition("=")
            parsed[key.strip()] = raw.strip()
        overrides = parsed
    merged = {**dataclasses.asdict(config), **overrides}  # type: ignore[call-overload]
    return type(config).from_dict(merged)  # type: ignore[attr-defined]


def load_preset(cls: type[C], path: str | Path | Traversable) -> C:
    """``path`` may be a packaged preset (``importlib.resources``' Traversable) as well as a file."""
    try:
        data = json.loads((Path(path) if isinstance(path, str) else path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset ({exc})") from exc
    return cls.from_dict(data)  # type: ignore[attr-defined]


def coerce_field(tp: Any, value: Any, key: str) -> Any:
    if isinstance(value, str) and tp is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    origin = typing.get_origin(tp)
    try:
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is bool and isinstance(value, bool):
            return value
        if tp is str and isinstance(value, str):
            return value
        if origin in (tuple,) and isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            inner = args[0] if args else Any
            return tuple(coerce_field(inner, v, key) for v in value)
        if origin is typing.Literal and value in typing.get_args(tp):
            return value
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            for arg in typing.get_args(tp):
                if arg is type(None) and value is None:
                    return None
                if arg is type(None):
                    continue
                try:
                    return coerce_field(arg, value, key)
                except ConfigError:
                    continue
        if tp is Any:
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config field {key!r} expects {getattr(tp, '__name__', tp)}, got {value!r}")
