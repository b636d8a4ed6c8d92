"""Image extractors: vgg19-fc7's weights and preprocessing against torchvision, hog-color against skimage, bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from _extract_media import png_header, write_shapes
from PIL import Image

from extractors import create_extractor
from extractors import weights as W
from extractors.errors import MediaError, MissingWeightsError
from extractors.image import VGG19_PLAN, _VGG19Fc7

DIVISOR = 16  # widths 4..32 and a 256-d fc7: a VGG-19 of the same structure that runs in milliseconds


@pytest.fixture(autouse=True)
def no_weights_anywhere(tmp_path, monkeypatch):
    for var in ("CROSSMODAL_VGG19_WEIGHTS", W.WEIGHTS_DIR_ENV, W.WEIGHTS_URL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(W.CACHE_DIR_ENV, str(tmp_path / "cache"))


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "vgg19-tiny.pth"
    torch.save(_VGG19Fc7(DIVISOR).state_dict(), path)
    return path


def reference_fc7(state: dict, x: torch.Tensor) -> torch.Tensor:
    """VGG-19 to fc7+ReLU written out with functional ops from the state dict (the oracle)."""
    i = 0
    for layer in VGG19_PLAN:
        if layer == "M":
            x = F.max_pool2d(x, 2)
            i += 1
        else:
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
            i += 2
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    x = F.relu(F.linear(x, state["classifier.0.weight"], state["classifier.0.bias"]))
    return F.relu(F.linear(x, state["classifier.3.weight"], state["classifier.3.bias"]))


def test_the_vgg19_module_has_torchvisions_parameter_names_and_shapes():
    with torch.device("meta"):
        ours = {k: v.shape for k, v in _VGG19Fc7(1).state_dict().items()}
        theirs = {k: v.shape for k, v in torchvision.models.vgg19().state_dict().items()}
    assert ours == theirs


def test_vgg19_fc7_matches_a_functional_forward_after_the_weights_enums_own_transforms(tmp_path, tiny_weights):
    paths = write_shapes(tmp_path / "img", per_class=1, size=(300, 260))
    ext = create_extractor("vgg19-fc7", weights=str(tiny_weights), width_divisor=DIVISOR)
    X = ext([ext.load(p) for p in paths])
    transform = torchvision.models.get_weight("VGG19_Weights.IMAGENET1K_V1").transforms()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    expected = reference_fc7(torch.load(tiny_weights, weights_only=True), batch).numpy()
    assert X.shape == (3, 4096 // DIVISOR) and X.dtype == np.float32
    np.testing.assert_allclose(X, expected, rtol=1e-4, atol=1e-5)
    assert (X >= 0).all()  # after the ReLU


def test_vgg19_fc7_key_follows_the_weights_content_not_their_location(tmp_path, tiny_weights):
    moved = shutil.copy(tiny_weights, tmp_path / "elsewhere.pth")
    key = create_extractor("vgg19-fc7", weights=str(tiny_weights), width_divisor=DIVISOR).key
    assert create_extractor("vgg19-fc7", weights=str(moved), width_divisor=DIVISOR).key == key
    torch.save(_VGG19Fc7(DIVISOR).state_dict(), moved)  # other random weights
    assert create_extractor("vgg19-fc7", weights=str(moved), width_divisor=DIVISOR).key != key


def test_vgg19_fc7_finds_the_published_file_name_in_the_torch_hub_cache(tmp_path, tiny_weights, monkeypatch):
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg19-dcbb9e9d.pth").write_bytes(b"stand-in")
    assert create_extractor("vgg19-fc7").weights_path == hub / "vgg19-dcbb9e9d.pth"


def test_vgg19_fc7_without_weights_stops_with_the_places_looked_and_never_uses_random_weights(tmp_path):
    ext = create_extractor("vgg19-fc7")
    with pytest.raises(MissingWeightsError) as err:
        ext.embed([torch.zeros(3, 224, 224, dtype=torch.uint8)])
    assert "vgg19-dcbb9e9d.pth not found" in err.value.message
    assert any("$CROSSMODAL_VGG19_WEIGHTS" in place for place in err.value.looked)
    assert any(str(tmp_path / "torch-home" / "hub" / "checkpoints") in place for place in err.value.looked)
    assert "--weights" in err.value.hint


def test_hog_color_colour_statistics_of_a_uniform_image_are_exact(tmp_path):
    path = tmp_path / "orange.png"
    Image.new("RGB", (40, 30), (255, 128, 0)).save(path)
    ext = create_extractor("hog-color")
    x = ext([ext.load(path)])[0]
    n_hsv = int(np.prod(ext.config.hsv_bins))
    stats, hist = x[-n_hsv - 6:-n_hsv], x[-n_hsv:]
    np.testing.assert_allclose(stats, [1.0, 128 / 255, 0.0, 0, 0, 0], atol=1e-6)
    assert hist.max() == pytest.approx(1.0) and np.count_nonzero(hist) == 1
    assert x.shape == (ext.dim,) == (1898,)


def test_hog_color_gradient_part_is_skimages_hog_of_the_grey_image(tmp_path):
    from skimage.color import rgb2gray
    from skimage.feature import hog

    path = write_shapes(tmp_path, per_class=1)[2]
    ext = create_extractor("hog-color")
    rgb = ext.load(path)
    expected = hog(rgb2gray(rgb / 255.0), orientations=9, pixels_per_cell=(16, 16),
                   cells_per_block=(2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(ext([rgb])[0, :expected.size], expected, rtol=1e-5, atol=1e-6)


def test_greyscale_palette_and_transparent_images_decode_to_rgb(tmp_path):
    ext = create_extractor("hog-color")
    for mode in ("L", "P", "RGBA", "CMYK"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (20, 20)).save(path)
        assert ext.load(path).shape == (128, 128, 3)


def truncated_png(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    return full.read_bytes()[: full.stat().st_size // 2]


@pytest.mark.parametrize("name, content, reason", [
    ("empty.png", lambda tmp: b"", "empty file"),
    ("random.jpg", lambda tmp: np.random.default_rng(1).bytes(500), "not a decodable image"),
    ("truncated.png", truncated_png, "corrupt or truncated image"),
    ("bomb.png", lambda tmp: png_header(100_000, 100_000), "decompression bomb"),
])
def test_each_kind_of_bad_image_raises_media_error_with_its_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with pytest.raises(MediaError, match=reason) as err:
        create_extractor("hog-color").load(path)
    assert err.value.path == str(path)


def test_an_image_over_the_configured_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(30, 20))  # header only: decoding it would fail, the size check comes first
    with pytest.raises(MediaError, match="30x20 = 600 pixels exceeds the limit of 599"):
        create_extractor("hog-color", max_pixels=599).load(path)
