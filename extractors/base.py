"""The Extractor extension point: a config-keyed, weight-identified function from raw files to float32 rows."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from crossmodal.common.hashing import file_sha256
from crossmodal.common.modality import MODALITIES
from extractors.errors import ExtractorError, MediaError, MissingDependencyError

__all__ = ["MODALITIES", "Extractor", "ExtractorConfig", "check_finite", "decoder_threads", "file_sha256", "require",
           "set_decoder_threads"]

_decoder_threads: int | None = None


def set_decoder_threads(threads: int | None) -> None:
    """Threads a media library may use to decode one file (FFmpeg's frame threads), for this process; None: its own
    choice. A pipeline whose decoding workers are the parallelism sets 1 in each: FFmpeg's threads there only add
    hand-offs (measured: 9.5 against 9.3 CPU-ms per 32-frame video, and 10 % fewer frame-stats videos per second)."""
    global _decoder_threads
    _decoder_threads = threads


def decoder_threads() -> int | None:
    """What :func:`set_decoder_threads` set (None by default)."""
    return _decoder_threads


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    """Base of every extractor config (a frozen dataclass with the paper's or benchmark's defaults).

    ``bounds`` gives the valid range of every numeric option, inclusive: int bounds take integers only, float bounds
    any number, and a tuple option has the length of its default with every element in the range. An option whose
    default is a bool or a str takes only that type. They are checked when the config is made (``create_extractor``,
    ``--set``), so a wrong value stops a run before any file is read, with one line naming the option and its range.
    A subclass with its own ``__post_init__`` (cross-option rules) calls this one first.
    """

    extractor: ClassVar[str] = "extractor"  # the extractor's name, for messages
    bounds: ClassVar[dict[str, tuple[float, float]]] = {}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            kind = type(field.default)
            if kind is str and isinstance(getattr(self, field.name), os.PathLike):  # a pathlib.Path for a file option
                object.__setattr__(self, field.name, os.fspath(getattr(self, field.name)))
            if kind in (bool, str) and type(getattr(self, field.name)) is not kind:
                self.refuse(field.name, f"{field.name} takes {'true or false' if kind is bool else 'a string'} "
                                        f"(default {field.default!r})")
        for option, (low, high) in self.bounds.items():
            value = getattr(self, option)
            if isinstance(value, list):  # JSON and the CLI give lists where the config keeps tuples
                value = tuple(value)
                object.__setattr__(self, option, value)
            default = next(f.default for f in dataclasses.fields(self) if f.name == option)
            integer = isinstance(low, int) and isinstance(high, int)
            numbers = "integers" if integer else "numbers"
            span = f"{low}" if low == high else f"from {low} to {high}"
            if isinstance(default, tuple):
                valid = f"{len(default)} {numbers} {span}"
                values = value if isinstance(value, tuple) and len(value) == len(default) else None
            else:
                valid = f"{'an integer' if integer else 'a number'} {span}"
                values = (value,)
            if values is None or not all(_in_range(v, low, high, integer) for v in values):
                self.refuse(option, f"{option} takes {valid} (default {default!r})")

    def refuse(self, option: str, hint: str) -> None:
        """Raise the error of a wrong ``option``: ``<extractor>: <option>=<value> is not valid``, with ``hint``."""
        raise ExtractorError(f"{self.extractor}: {option}={getattr(self, option)!r} is not valid", hint=hint)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _in_range(value: Any, low: float, high: float, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return low <= value <= high  # False for NaN


def check_finite(path: str | Path, what: str, values: Any, *, why: str = "") -> None:
    """Refuse a file whose decoded data or an intermediate made from it holds NaN or infinite values.

    Compute the intermediate under ``np.errstate(all="ignore")`` (overflow then gives inf silently, not a numpy
    warning on the user's terminal) and call this on it: the file becomes one error naming it and what overflowed,
    instead of a row of zeros or NaN features.

    Raises:
        MediaError: ``<path>: non-finite <what> (N NaN, M infinite of T values; <why>)``.
    """
    array = np.asarray(values)
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        counts = f"{nan} NaN, {array.size - nan - int(finite.sum())} infinite of {array.size} values"
        raise MediaError(path, f"non-finite {what} ({counts}{'; ' + why if why else ''})")


class Extractor:
    """Base class of extractors.

    Subclasses set ``modality``, ``name``, ``Config`` and ``extensions``, and implement ``dim``, ``load`` and
    ``embed``. ``__call__`` validates the output (shape ``(n, dim)``, float32, finite).
    """

    modality: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type[ExtractorConfig]] = ExtractorConfig
    extensions: ClassVar[tuple[str, ...]] = ()
    # Extensions of this modality that the extractor would read with an optional package missing here, and why (e.g.
    # ".svg" without resvg-py): a pipeline lists such files once, by count, with the reason.
    unreadable: ClassVar[dict[str, str]] = {}
    is_default: ClassVar[bool] = False
    # Config fields that say where or how to get the weights (a file path, allow a download), not what they are: the
    # weights' sha256 identifies them, so these fields stay out of the key and a moved file keeps its features valid.
    key_ignores: ClassVar[tuple[str, ...]] = ()
    # Options added after features were stored, each with the value at which the extractor computes what it computed
    # before the option existed: at that value the option stays out of the key, so stored features keep theirs.
    key_defaults: ClassVar[dict[str, Any]] = {}
    # How the pipeline should decode for this extractor when one model is fed by decoding workers: "spare" workers on
    # the cores the model leaves (cores - 1), "all" on every core when decoding costs more than the model, "inline" in
    # the model's thread when decoding costs less than a hand-off (reading a text).
    decoding: ClassVar[Literal["spare", "all", "inline"]] = "spare"
    # Whether ``embed`` runs on one core (numpy, librosa, gensim; torch models thread themselves): a pipeline with
    # worker processes then runs a copy of the extractor in each, one per core, each decoding and embedding its own
    # files, instead of feeding one model from decoders and leaving the other cores idle.
    single_core: ClassVar[bool] = False

    def __init__(self, config: ExtractorConfig | None = None, *, device: str = "cpu"):
        self.config = config or self.Config()
        self.device = device

    # ---- to implement
    @property
    def dim(self) -> int:
        raise NotImplementedError

    def load(self, path: Path) -> Any:
        """Decode one raw file; raise ``MediaError(path, reason)`` when it cannot be decoded."""
        raise NotImplementedError

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """float32 (len(items), dim) for decoded items."""
        raise NotImplementedError

    def weights_sha256(self) -> str:
        """Identity of the weights ('' for weight-free extractors)."""
        return ""

    # ---- shared
    @property
    def key(self) -> str:
        """``name@hash12``: the name, the config and the weights' identity. Features with equal keys are comparable."""
        identity = {k: v for k, v in self.config.to_dict().items()
                    if k not in self.key_ignores and not (k in self.key_defaults and v == self.key_defaults[k])}
        payload = json.dumps(identity, sort_keys=True, default=str) + self.weights_sha256()
        return f"{self.name}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def accepts(self, path: Path) -> bool:
        return path.suffix.lower() in self.extensions

    def __call__(self, items: Sequence[Any]) -> np.ndarray:
        X = np.ascontiguousarray(self.embed(items), dtype=np.float32)
        if X.shape != (len(items), self.dim):
            raise ExtractorError(f"{self.name} returned shape {X.shape}, expected {(len(items), self.dim)}")
        if not np.isfinite(X).all():
            raise ExtractorError(f"{self.name} produced non-finite values")
        return X

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "key": self.key,
            "dim": self.dim,
            "dtype": "float32",
            "config": self.config.to_dict(),
            "weights_sha256": self.weights_sha256(),
        }


def require(module: str, *, extractor: str, extra: str) -> Any:
    """Import an optional heavy library inside the extractor that needs it, with the install command on failure."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(extractor, module, extra) from exc

