"""The shared kernel (crossmodal/common): errors, registry, overrides, hashing, atomic writes, version records."""

from __future__ import annotations

import importlib
import inspect
import pickle

import pytest

from crossmodal.common.errors import ConfigError, CrossmodalError, UnknownNameError

# Every module of ours that defines error classes; the test walks the subclasses of the one base from here.
ERROR_MODULES = ("crossmodal.errors", "extractors.errors", "extractors.weights", "pipelines.serve")


def every_error_class() -> list[type[CrossmodalError]]:
    for module in ERROR_MODULES:
        importlib.import_module(module)
    found, todo = [], [CrossmodalError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def an_instance(cls: type[CrossmodalError]) -> CrossmodalError:
    """``cls`` built with a made-up value for each argument its constructor requires (an int where it says int)."""
    args, kwargs = [], {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        value = 418 if "int" in str(p.annotation) else f"<{p.name}>"
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = "the fix" if p.name == "hint" else value
        elif p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty:
            args.append(value)
    return cls(*args, **kwargs)


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__qualname__)
def test_every_error_of_ours_pickles_whole_with_its_message_hint_and_attributes(cls):
    error = an_instance(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (str(copy), copy.args, copy.__dict__) == (str(error), error.args, error.__dict__)


def test_the_walk_finds_the_errors_of_the_core_the_extractors_and_the_server():
    names = {cls.__qualname__ for cls in every_error_class()}
    assert {"UnknownNameError", "MediaError", "MissingWeightsError", "UnknownExtractorError", "StoreFullError",
            "WeightsChecksumError", "QueryBudgetError", "FeatureMismatchError"} <= names


def test_an_unknown_extractor_is_an_unknown_name_and_an_extractor_error():
    from extractors.errors import ExtractorError, UnknownExtractorError

    error = UnknownExtractorError("extractor", "vgg19", ["vgg19-fc7", "hog-color"])
    assert isinstance(error, (ExtractorError, UnknownNameError, ConfigError, KeyError))
    assert str(error) == "unknown extractor 'vgg19' (hint: did you mean vgg19-fc7?)"
