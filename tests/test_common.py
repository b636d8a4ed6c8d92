"""The shared kernel (crossmodal/common): errors, registry, overrides, hashing, atomic writes, version records."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import os
import pickle
import platform
import threading
import time

import numpy as np
import pytest

from crossmodal.common.config import parse_overrides, with_overrides
from crossmodal.common.errors import ConfigError, CrossmodalError, UnknownNameError
from crossmodal.common.files import atomic_write
from crossmodal.common.hashing import file_sha256
from crossmodal.common.modality import MODALITIES, canonical_modality
from crossmodal.common.registry import Registry
from crossmodal.common.versions import library_versions

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


class Probe:
    name = "drcl"


def test_a_registry_refuses_a_name_twice_and_names_the_closest_for_an_unknown_one():
    reg: Registry[type] = Registry("thing")
    reg.register(Probe)
    with pytest.raises(ValueError, match="'drcl' is registered twice"):
        reg.register(Probe)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_lazy("drcl", __name__)
    with pytest.raises(UnknownNameError) as info:
        reg.get("dcrl")
    assert (info.value.message, info.value.hint) == ("unknown thing 'dcrl'", "did you mean drcl?")
    with pytest.raises(UnknownNameError, match="valid names: drcl"):
        reg.get("zzzz")


def test_a_lazy_entry_is_listed_by_tag_without_importing_and_its_module_must_register_it():
    reg: Registry[type] = Registry("thing", decorator="@register_thing")
    reg.register_lazy("probe", "tests.test_common", colour="red")  # this module registers nothing there
    assert reg.names(colour="red") == ["probe"] and reg.names(colour="blue") == [] and not reg.is_loaded("probe")
    with pytest.raises(CrossmodalError, match="defines no class registered under it") as info:
        reg.get("probe")
    assert info.value.hint == "decorate the class with @register_thing"


def test_the_core_and_the_extractors_use_the_one_registry_with_their_own_unknown_name_error():
    from crossmodal.index import INDEX_BACKENDS
    from crossmodal.methods import METHODS
    from extractors.errors import UnknownExtractorError
    from extractors.registry import EXTRACTORS, create_extractor

    assert {type(METHODS), type(INDEX_BACKENDS), type(EXTRACTORS)} == {Registry}
    with pytest.raises(UnknownExtractorError, match="did you mean hog-color"):
        create_extractor("hog-colour")


@dataclasses.dataclass(frozen=True)
class Options:
    size: int = 64
    scale: float = 1.0
    bins: tuple[int, ...] = (4, 4)
    mode: str | None = None


def test_overrides_are_typed_by_field():
    parsed = parse_overrides(Options, ["size=32", "scale=2", " bins = [2, 3, 5] ", "mode=null"])
    assert parsed == {"size": 32, "scale": 2.0, "bins": (2, 3, 5), "mode": None}
    assert isinstance(parsed["scale"], float)
    assert with_overrides(Options(), {"size": 16}) == Options(size=16)


@pytest.mark.parametrize(("items", "message", "hint"), [
    (["size"], "--set 'size' is not key=value", "write e.g. --set size=64"),
    (["sise=3"], "hog has no option(s) sise", "valid options: bins, mode, scale, size"),
    (["size=3.5"], "config field 'size' expects int, got 3.5", None),
    (["size=true"], "config field 'size' expects int, got True", None),
    (["bins=[1, \"a\"]"], "config field 'bins' expects int, got 'a'", None),
])
def test_a_bad_override_is_a_config_error_naming_it(items, message, hint):
    with pytest.raises(ConfigError) as info:
        parse_overrides(Options, items, owner="hog", noun="option")
    assert (info.value.message, info.value.hint) == (message, hint)


def test_3d_is_the_mesh_modality_and_an_unknown_modality_lists_the_valid_ones():
    assert canonical_modality("3d") == "mesh" and MODALITIES.index("mesh") == 3
    with pytest.raises(ConfigError, match="unknown modality 'smell'") as info:
        canonical_modality("smell")
    assert info.value.hint == "choose one of image, text, audio, mesh, video (or 3d for mesh)"


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 700_000)  # over two 1 MiB blocks
    assert file_sha256(path) == hashlib.sha256(b"abc" * 700_000).hexdigest()


def test_library_versions_give_python_and_installed_packages_and_leave_out_the_absent():
    versions = library_versions(["python", "numpy", "no-such-package-here"])
    assert versions == {"python": platform.python_version(), "numpy": np.__version__}


def test_atomic_write_replaces_the_file_whole_from_bytes_text_or_a_writer(tmp_path):
    path = tmp_path / "a.json"
    assert atomic_write(path, "é{}") == path and path.read_text(encoding="utf-8") == "é{}"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "x.npy", lambda f: np.save(f, np.arange(3)))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2] and sorted(os.listdir(tmp_path)) == ["a.json", "x.npy"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["card.json"]


def test_two_writers_of_one_file_never_collide_and_the_file_is_always_one_of_theirs(tmp_path):
    path = tmp_path / "extractor.json"
    payloads = [bytes([i]) * 300_000 for i in (1, 2)]
    failures: list[BaseException] = []

    def writer(payload: bytes) -> None:
        def chunked(f):  # written in pieces, so that the two threads' writes interleave
            for start in range(0, len(payload), 30_000):
                f.write(payload[start:start + 30_000])
                time.sleep(0)

        try:
            for _ in range(40):
                atomic_write(path, chunked, durable=False)
                assert path.read_bytes() in payloads
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and path.read_bytes() in payloads and os.listdir(tmp_path) == ["extractor.json"]
