"""Start-up stays cheap: the CLI and every --help import no torch nor any heavy modality library (lazy registries)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "transformers", "librosa", "sentence_transformers", "open3d", "gensim", "faiss", "ray",
         "sklearn", "matplotlib", "pandas", "scipy", "numpy")


def modules_left_by(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_library():
    assert modules_left_by("import pipelines.cli") == []


def test_help_of_the_command_and_of_every_verb_imports_no_heavy_library():
    code = """
import contextlib, io
from pipelines.cli import app, main
import typer.main
verbs = sorted(typer.main.get_command(app).commands)
assert len(verbs) >= 10, verbs
for args in [["--help"], *[[verb, "--help"] for verb in verbs]]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(args) == 0, args
    assert "Usage" in out.getvalue(), args
    assert "<bool>" not in out.getvalue(), args  # flags read as flags, not as options taking a value
"""
    assert modules_left_by(code) == []


def test_listing_extractors_by_name_imports_none_of_them():
    code = """
from extractors import default_extractor, list_extractors
assert "c3d-fc6" in list_extractors("video") and default_extractor("image") == "vgg19-fc7"
"""
    assert modules_left_by(code) == []


def test_every_extractor_registration_line_names_the_module_that_defines_its_class():
    from extractors.registry import EXTRACTORS, get_extractor_class

    for name in EXTRACTORS.names():
        cls, tags = get_extractor_class(name), EXTRACTORS.tags(name)
        assert (cls.name, cls.__module__, cls.modality, cls.is_default) == (name, EXTRACTORS.module(name),
                                                                            tags["modality"], tags["default"])


def test_every_method_is_registered_lazily_and_builds_from_its_name():
    from crossmodal.methods import METHODS, create_method, list_methods

    assert set(list_methods()) >= {"drcl", "sdml", "mars", "dscmr", "mcca", "sccmr", "hcmsl", "rcar", "sedel"}
    for name in list_methods():
        assert create_method(name).name == name
    assert sorted(METHODS._items) == list_methods()


def test_a_registration_line_that_disagrees_with_its_class_is_refused():
    from extractors.registry import EXTRACTORS, register_extractor, register_lazy

    class Probe:
        name, modality, is_default = "startup-probe", "image", False

    Probe.__module__ = "somewhere.else"
    register_lazy("startup-probe", "extractors.nowhere", modality="image")
    try:
        with pytest.raises(ValueError, match="does not match its registration line"):
            register_extractor(Probe)
    finally:
        EXTRACTORS.unregister("startup-probe")
