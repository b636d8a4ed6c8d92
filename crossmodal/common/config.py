"""Typed ``key=value`` overrides checked against a frozen dataclass's fields: the one parser of ``--set``.

A method's config (crossmodal/config.py) and an extractor's (``crossmodal extract --set``, ``create_extractor``) both go
through here: an item that is not ``key=value``, a key that is not a field and a value of the wrong type are each a
:class:`ConfigError` naming it, with the valid fields in the hint.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from crossmodal.common.errors import ConfigError

C = TypeVar("C")

Overrides = Iterable[str] | Mapping[str, Any] | None


def split_overrides(items: Overrides, *, example: str = "epochs=10") -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: "value"}`` (stripped; a mapping passes through, None gives {}).

    Raises:
        ConfigError: an item without ``=``; the hint shows ``example``.
    """
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    raw: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not key=value", hint=f"write e.g. --set {example}")
        raw[key.strip()] = value.strip()
    return raw


def check_fields(cls: type, keys: Iterable[str], *, owner: str | None = None, noun: str = "field") -> None:
    """Refuse the keys that are not fields of the dataclass ``cls``.

    Raises:
        ConfigError: ``<owner> has no <noun>(s) a, b`` (owner: the class name by default), the valid ones in the hint.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - fields)
    if unknown:
        raise ConfigError(f"{owner or cls.__name__} has no {noun}(s) {', '.join(unknown)}",
                          hint=f"valid {noun}s: {', '.join(sorted(fields))}")


def parse_overrides(cls: type, items: Overrides, *, owner: str | None = None, noun: str = "field") -> dict[str, Any]:
    """``key=value`` items (or a mapping of raw values, e.g. JSON) -> ``{field: value}`` typed by ``cls``'s fields.

    String values parse as JSON when they can (``hidden=[4, 2]``, ``prior_from=null``), then are checked against the
    field's type (:func:`coerce_field`).

    Raises:
        ConfigError: not ``key=value``, an unknown field, or a value of the wrong type.
    """
    first = dataclasses.fields(cls)[0] if dataclasses.fields(cls) else None
    example = f"{first.name}={json.dumps(first.default, default=str)}" if first else "key=value"
    raw = split_overrides(items, example=example)
    check_fields(cls, raw, owner=owner, noun=noun)
    hints = typing.get_type_hints(cls)
    return {k: coerce_field(hints[k], v, k) for k, v in raw.items()}


def with_overrides(config: C, overrides: Overrides) -> C:
    """Return ``config`` (a dataclass) with ``key=value`` overrides applied, every field typed (``parse_overrides``).

    Raises:
        ConfigError: an unknown key, a malformed item or a value of the wrong type.
    """
    merged = {**dataclasses.asdict(config), **split_overrides(overrides)}  # type: ignore[call-overload]
    return type(config)(**parse_overrides(type(config), merged))


def coerce_field(tp: Any, value: Any, key: str) -> Any:
    """``value`` as the field ``key`` of type ``tp`` takes it: a JSON string parsed, an int made a float for a float
    field, a list made a tuple; bools are never numbers.

    Raises:
        ConfigError: ``config field 'key' expects <type>, got <value>``.
    """
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
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a composed option: a JSON object of its fields
            if isinstance(value, tp):
                return value
            if isinstance(value, Mapping):
                return tp(**parse_overrides(tp, value, owner=f"{key} ({tp.__name__})"))
        if origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(tp):
                if arg is type(None) and value is None:
                    return None
                if arg is type(None):
                    continue
                try:
                    return coerce_field(arg, value, key)
                except ConfigError:
                    if isinstance(value, Mapping) and dataclasses.is_dataclass(arg):
                        raise  # the composed option's own message (its unknown or mistyped field)
                    continue
        if tp is Any:
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config field {key!r} expects {getattr(tp, '__name__', tp)}, got {value!r}")
