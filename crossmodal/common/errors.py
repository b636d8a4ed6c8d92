"""The one base of the errors a user can cause: a message naming the thing and what was expected, and a ``hint``.

``crossmodal.errors`` and ``extractors.errors`` derive their errors from it, and the CLI prints every one as one line
plus its hint (pipelines/cli/_errors.py). Every error pickles whole, whatever its constructor takes, so that an error
raised in a worker process reaches the parent with its message, hint and attributes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class CrossmodalError(Exception):
    """Base of every error a user can cause. ``hint`` says how to fix it; ``exit_code`` is the CLI's."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than (message, hint) (a path and a reason, a kind and a name): rebuild from
        # the state instead of calling the constructor again with ``args``, which would fail or change the message.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[CrossmodalError], args: tuple, state: dict[str, Any]) -> CrossmodalError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(CrossmodalError):
    """A configuration value or override is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the hint lists the closest valid names (or all of them when none is close)."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid names: {', '.join(valid)}"
        super().__init__(f"unknown {kind} {name!r}", hint=hint)
        self.kind = kind
        self.name = name
