"""Extractor options are checked when the extractor is made, before any file is read (issue 15, item 8).

The extractors and their options are read from the registry and the config dataclasses, so an extractor or a numeric
option added later is tested on arrival: it must declare its range in its config's ``bounds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import typing

import pytest

from extractors import create_extractor, list_extractors
from extractors.errors import ExtractorError
from extractors.registry import get_extractor_class
from pipelines.cli import main

NUMBERS = (int, float)


def numeric_options(name: str) -> list[tuple[str, type, bool]]:
    """``(option, number type, is a tuple)`` of every numeric option of extractor ``name``'s config."""
    config = get_extractor_class(name).Config
    hints = typing.get_type_hints(config)
    out = []
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        args = typing.get_args(hint)
        if hint in NUMBERS:
            out.append((field.name, hint, False))
        elif typing.get_origin(hint) is tuple and args and args[0] in NUMBERS:
            out.append((field.name, args[0], True))
    return out


CASES = [(name, option, kind, is_tuple) for name in list_extractors()
         for option, kind, is_tuple in numeric_options(name)]


def wrong_values(name: str, option: str, kind: type, is_tuple: bool) -> list[typing.Any]:
    """Zero when the range excludes it, a negative value, one past each end of the range, and not a number."""
    config = get_extractor_class(name).Config
    low, high = config.bounds[option]
    step = 1 if kind is int else abs(high) * 1e-3 + 1e-9
    singles = [low - step, high + step, -1, "12"] + ([0] if low > 0 else [])
    if not is_tuple:
        return singles
    default = next(f.default for f in dataclasses.fields(config) if f.name == option)
    return [(*default[:-1], v) for v in singles] + [default[:-1]]  # one element wrong; one element short


def test_every_extractor_has_numeric_options_to_check():
    assert set(list_extractors()) >= {"vgg19-fc7", "hog-color", "doc2vec", "minilm", "mfcc", "lightfield", "c3d-fc6",
                                      "frame-stats"}
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list_extractors())
def test_every_numeric_option_declares_its_range_and_the_defaults_lie_in_it(name):
    config = get_extractor_class(name).Config
    options = [option for option, _, _ in numeric_options(name)]
    assert sorted(config.bounds) == sorted(options), f"{name}: options without a declared range"
    config()  # the defaults are valid


@pytest.mark.parametrize(("name", "option", "kind", "is_tuple"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_a_zero_negative_or_out_of_range_option_is_refused_at_creation_with_one_line_naming_it(name, option, kind,
                                                                                             is_tuple):
    for value in wrong_values(name, option, kind, is_tuple):
        with pytest.raises(ExtractorError) as info:
            create_extractor(name, **{option: value})
        message = str(info.value)
        assert "\n" not in message and f"{option}=" in info.value.message, message
        assert info.value.hint and option in info.value.hint, message


def test_cross_option_rules_are_refused_with_the_fix():
    refused = [("hog-color", {"size": 16, "pixels_per_cell": 16}, "size >= 32"),
               ("vgg19-fc7", {"resize": 64, "crop": 96}, "crop <= resize=64"),
               ("mfcc", {"n_mfcc": 40, "n_mels": 32}, "n_mfcc <= n_mels"),
               ("mfcc", {"delta_width": 4}, "odd"),
               ("frame-stats", {"size": 20, "thumbnail": 8}, "multiple"),
               ("frame-stats", {"colour_bins": 3}, "256"),
               ("doc2vec", {"alpha": 0.01, "min_alpha": 0.02}, "min_alpha <= alpha")]
    for name, overrides, fix in refused:
        with pytest.raises(ExtractorError) as info:
            create_extractor(name, **overrides)
        assert fix in info.value.hint, (name, overrides, info.value)


def test_tuple_options_given_as_lists_become_tuples():
    extractor = create_extractor("hog-color", hsv_bins=[4, 4, 4])
    assert extractor.config.hsv_bins == (4, 4, 4)
    assert extractor.key == create_extractor("hog-color", hsv_bins=(4, 4, 4)).key


@pytest.mark.parametrize(("option", "fix"), [("pixels_per_cell=0", "pixels_per_cell takes an integer from 1 to 512"),
                                             ("size=-5", "size takes an integer from 8 to 4096")])
def test_extract_with_an_invalid_option_exits_non_zero_with_one_line_and_the_fix_before_reading_files(
        option, fix, tmp_path, capsys):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"not read: the option is refused first")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["extract", "--modality", "image", str(tmp_path / "images"), "--workspace", str(tmp_path / "ws"),
                     "--extractor", "hog-color", "--set", option])
    err = capsys.readouterr().err
    lines = err.rstrip("\n").splitlines()
    assert code != 0 and stdout.getvalue() == ""
    assert len(lines) == 2 and lines[0].startswith("error: hog-color: " + option.split("=")[0]), err
    assert lines[1].startswith("  fix: ") and fix in lines[1], err
    assert "Traceback" not in err
    assert not (tmp_path / "ws" / "store").exists()


def flag_and_text_options(name: str) -> list[tuple[str, type]]:
    return [(f.name, type(f.default)) for f in dataclasses.fields(get_extractor_class(name).Config)
            if type(f.default) in (bool, str)]


@pytest.mark.parametrize("name", list_extractors())
def test_flag_and_text_options_take_only_their_type(name):
    for option, kind in flag_and_text_options(name):
        with pytest.raises(ExtractorError) as info:
            create_extractor(name, **{option: 1 if kind is bool else 3})
        assert option in info.value.hint and ("true or false" if kind is bool else "a string") in info.value.hint


def test_a_path_object_is_taken_for_a_file_option_as_its_string(tmp_path):
    assert create_extractor("doc2vec", model_path=tmp_path).config.model_path == str(tmp_path)
