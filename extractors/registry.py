"""One door to build extractors: ``create_extractor(name, **overrides)``; ``list_extractors(modality=...)``.

Registration is lazy (timm's ``_model_to_module`` idea): ``extractors/__init__.py`` holds one line per extractor,
``register_lazy(name, module, modality=..., default=...)``, and the module, with its torch or librosa imports, is
imported only when the class is first asked for (``create_extractor``, ``get_extractor_class``). Listing names and
choosing a modality's default need no import, so ``crossmodal --help`` and a cold start stay cheap. The class itself
still carries ``@register_extractor``, which checks it against its line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from crossmodal.common.config import check_fields
from crossmodal.common.modality import MODALITIES
from crossmodal.common.registry import Registry
from extractors.errors import ExtractorError, UnknownExtractorError

if TYPE_CHECKING:
    from extractors.base import Extractor

# Lazy entries carry two tags: ``modality`` and ``default`` (the modality's default extractor).
EXTRACTORS: Registry[type[Extractor]] = Registry("extractor", unknown=UnknownExtractorError,
                                                  decorator="@register_extractor")


def register_lazy(name: str, module: str, *, modality: str, default: bool = False) -> None:
    """Declare that ``module`` defines extractor ``name`` (imported on first use). Duplicates and a second default per
    modality raise; the class is checked against this line when it registers."""
    if default and EXTRACTORS.names(modality=modality, default=True):
        raise ValueError(f"modality {modality!r} has two default extractors")
    EXTRACTORS.register_lazy(name, module, modality=modality, default=default)


def register_extractor(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator; the class must match its ``register_lazy`` line (module, modality, default) when it has one,
    and a name registered twice raises."""
    if EXTRACTORS.is_loaded(cls.name):
        raise ValueError(f"extractor {cls.name!r} is registered twice")
    if cls.modality not in MODALITIES:
        raise ValueError(f"extractor {cls.name!r} has unknown modality {cls.modality!r}")
    if cls.name not in EXTRACTORS:  # a class registered from outside the package (a plug-in): declared by its import
        register_lazy(cls.name, cls.__module__, modality=cls.modality, default=cls.is_default)
    tags = EXTRACTORS.tags(cls.name)
    line = (EXTRACTORS.module(cls.name), tags["modality"], tags["default"])
    if line != (cls.__module__, cls.modality, cls.is_default):
        raise ValueError(f"extractor {cls.name!r}: class ({cls.__module__}, {cls.modality}, default={cls.is_default}) "
                         f"does not match its registration line ({line[0]}, {line[1]}, default={line[2]})")
    return EXTRACTORS.register(cls)


def get_extractor_class(name: str) -> type[Extractor]:
    """The class of ``name``, importing its module the first time."""
    return EXTRACTORS.get(name)


def create_extractor(name: str, *, device: str = "cpu", **overrides: Any) -> Extractor:
    """Build the extractor ``name`` with its config's defaults, replaced by ``overrides`` (unknown fields raise)."""
    cls = get_extractor_class(name)
    check_fields(cls.Config, overrides, owner=name, noun="option")
    return cls(cls.Config(**overrides), device=device)


def list_extractors(modality: str | None = None) -> list[str]:
    """Registered names (of ``modality`` when given), sorted; imports nothing."""
    return EXTRACTORS.names() if modality is None else EXTRACTORS.names(modality=modality)


def default_extractor(modality: str) -> str:
    """The default extractor of ``modality``; imports nothing."""
    for name in EXTRACTORS.names(modality=modality, default=True):
        return name
    raise ExtractorError(
        f"no default extractor for modality {modality!r}", hint=f"choose one of {list_extractors(modality)}"
    )


def extension_readers() -> dict[str, list[tuple[str, str]]]:
    """Extension (lower case, with the dot) -> the ``(extractor, modality)`` pairs that read it, by name; the one table
    behind an upload's modality, the files of other modalities an extraction passes over, and the fix it suggests.
    Imports every extractor's module."""
    readers: dict[str, list[tuple[str, str]]] = {}
    for name in list_extractors():
        cls = get_extractor_class(name)
        for ext in cls.extensions:
            readers.setdefault(ext.lower(), []).append((name, str(cls.modality)))
    return readers


def describe_extractor(name: str) -> dict[str, Any]:
    """What ``crossmodal extractors`` shows of ``name`` (its module is imported; nothing is downloaded or loaded).

    Returns:
        ``name, modality, default, dim`` (of the default config), ``extensions``, ``ready`` (True when it can run here:
        its weights are on this machine or it needs none), ``status`` (the weights file, what is missing, or why it
        cannot be built) and ``summary`` (the class docstring's first paragraph, without reST markup).
    """
    from extractors.errors import MissingWeightsError
    from extractors.weights import weights_status

    cls = get_extractor_class(name)
    row: dict[str, Any] = {"name": name, "modality": cls.modality, "default": cls.is_default, "dim": None,
                           "extensions": " ".join(cls.extensions), "ready": False, "status": "",
                           "summary": _summary(cls.__doc__ or "")}
    try:
        extractor = cls(cls.Config())
        row["dim"] = extractor.dim
        if hasattr(extractor, "weights_status"):  # weights found by the extractor's own rules (minilm's folder)
            row["ready"], row["status"] = extractor.weights_status()
        elif hasattr(extractor, "weights_spec"):  # a published file (extractors/weights.py)
            row["ready"], row["status"] = weights_status(extractor.weights_spec(),
                                                         explicit=getattr(extractor.config, "weights", None))
        else:
            row["ready"], row["status"] = True, "no weights needed"
    except MissingWeightsError as exc:
        row["status"] = exc.message.split(" (looked in")[0]
    except ExtractorError as exc:  # a missing library, a bad default config
        row["status"] = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return row


def _summary(doc: str) -> str:
    first = doc.strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", first.replace("``", "")).strip()
