"""A non-finite value met between a file and its features is an error for that file (issue 15, item 5): one MediaError
naming the file and what was not finite, and no numpy warning on the user's terminal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from badfiles import CUBE_F, CUBE_V, float_tiff_bytes, float_wav_bytes, off_bytes, ply_bytes, tone

from extractors import create_extractor
from extractors.base import check_finite
from extractors.errors import MediaError


@pytest.fixture(autouse=True)
def numpy_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_check_finite_names_the_file_what_and_how_many():
    check_finite("a.off", "areas", np.ones(3))
    with pytest.raises(MediaError) as info:
        check_finite("a.off", "triangle areas", np.array([1.0, np.inf, np.nan, -np.inf]), why="coordinates overflow")
    assert str(info.value) == "a.off: non-finite triangle areas (1 NaN, 2 infinite of 4 values; coordinates overflow)"
    assert info.value.path == "a.off"


def scaled_cube(scale: float) -> list:
    return [(x * scale, y * scale, z * scale) for x, y, z in CUBE_V]


@pytest.mark.parametrize(("name", "content", "what"), [
    ("cube-1e308.off", off_bytes(scaled_cube(1e308), CUBE_F), "non-finite triangle areas"),
    ("cube-1e100.off", off_bytes(scaled_cube(1e100), CUBE_F), "non-finite triangle areas"),
    ("plus-minus-1e308.ply", ply_bytes([(1e308 if x else -1e308, y, z) for x, y, z in CUBE_V], CUBE_F),
     "non-finite vertex coordinates (0 NaN, 8 infinite"),  # its properties are float32: 1e308 reads as inf
    ("far-vertex.off", off_bytes(CUBE_V + [(1e300, 0, 0)], CUBE_F + [(0, 0, 8)]), "non-finite normalised coordinates"),
    ("nan.off", off_bytes([(float("nan"), 0, 0)] + CUBE_V[1:], CUBE_F), "non-finite vertex coordinates (1 NaN"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "")
def test_a_mesh_whose_coordinates_overflow_is_an_error_not_a_row_of_zeros(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    extractor = create_extractor("lightfield", resolution=32, contour_points=32)
    with pytest.raises(MediaError) as info:
        extractor.load(path)
    assert what in info.value.reason
    assert info.value.path == str(path)


def test_a_large_but_representable_mesh_gives_the_features_of_the_unit_one(tmp_path):
    extractor = create_extractor("lightfield", resolution=32, contour_points=32)
    rows = []
    for scale in (1.0, 1e30):
        path = tmp_path / f"cube-{scale:g}.off"
        path.write_bytes(off_bytes(scaled_cube(scale), CUBE_F))
        rows.append(extractor([extractor.load(path)])[0])
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-5)
    assert np.abs(rows[1]).sum() > 0


@pytest.mark.parametrize("amplitude", [1e19, 1e30, 3e38 / 32767])
def test_audio_samples_that_overflow_the_spectrum_are_an_error_naming_the_file(tmp_path, amplitude):
    path = tmp_path / "loud.wav"
    path.write_bytes(float_wav_bytes(tone(0.25) / 32767 * amplitude))
    extractor = create_extractor("mfcc", sample_rate=8000)
    with pytest.raises(MediaError, match="non-finite mel energies") as info:
        extractor.load(path)
    assert info.value.path == str(path) and "samples reach" in info.value.reason


def test_audio_far_past_full_scale_but_within_float32_gives_finite_features(tmp_path):
    path = tmp_path / "loud.wav"
    path.write_bytes(float_wav_bytes(tone(0.25) / 32767 * 1e12))
    extractor = create_extractor("mfcc", sample_rate=8000)
    assert np.isfinite(extractor([extractor.load(path)])).all()


@pytest.mark.parametrize(("value", "counts"), [(float("nan"), "1 NaN, 0 infinite"),
                                               (float("inf"), "0 NaN, 1 infinite")])
def test_a_float_image_with_a_nan_or_inf_pixel_is_an_error(tmp_path, value, counts):
    path = tmp_path / "float.tif"
    path.write_bytes(float_tiff_bytes(value))
    with pytest.raises(MediaError, match=f"non-finite pixel values \\({counts} of 64 values\\)"):
        create_extractor("hog-color", size=32, pixels_per_cell=8).load(path)
