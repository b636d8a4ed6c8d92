"""Image extractors: ``vgg19-fc7`` (the benchmarks' feature, default) and ``hog-color`` (weight-free, offline).

``vgg19-fc7``: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
with torchvision's ``VGG19_Weights.IMAGENET1K_V1``. The preprocessing is that enum's ``transforms()`` (resize the short
side to 256 bilinearly with antialiasing, centre crop 224, ImageNet mean/std), and the feature is fc7 after its ReLU
(4096-d), as the Wikipedia / XMedia / NUS-WIDE image features were made.

``hog-color``: Dalal & Triggs' HOG (CVPR 2005) on the grey image resized to a square, plus colour statistics
(per-channel RGB mean and std, a joint HSV histogram); no weights, no download, a few milliseconds per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from extractors.base import Extractor, ExtractorConfig, require
from extractors.errors import MediaError
from extractors.registry import register_extractor
from extractors.weights import WeightsSpec, download_allowed, load_into, resolve_weights, weights_sha256

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# torchvision's VGG-19 layer plan ("E"): channels per 3x3 convolution, "M" a 2x2 max pool.
VGG19_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def decode_image(path: Path, *, max_pixels: int, exif_transpose: bool = True):
    """Open an image file as an RGB ``PIL.Image`` (first frame of an animation).

    Raises:
        MediaError: empty, unreadable, not an image, truncated, or more than ``max_pixels`` pixels (a decompression
            bomb: checked from the header, before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if Path(path).stat().st_size == 0:
            raise MediaError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise MediaError(path, f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                       f"{max_pixels} (possible decompression bomb)",
                                 hint="raise it with --set max_pixels=N if the file is trusted")
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(path, "not a decodable image (PIL: cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(path, f"possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated data, bad header fields, unreadable file
        raise MediaError(path, f"corrupt or truncated image ({exc})") from None


@dataclasses.dataclass(frozen=True)
class VGG19Config(ExtractorConfig):
    weights: str = ""  # state-dict file (.pth or .safetensors); '' = $CROSSMODAL_VGG19_WEIGHTS, weights dir, hub cache
    allow_download: bool = False  # download IMAGENET1K_V1 into the torch hub cache when not found (needs network)
    resize: int = 256  # IMAGENET1K_V1 transforms: short side resized to 256 (bilinear, antialiased)
    crop: int = 224  # then centre-cropped to 224x224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet channel mean
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # ImageNet channel std
    width_divisor: int = 1  # 1 = VGG-19; k > 1 divides every width by k (tests load small state dicts this way)
    max_pixels: int = 89_478_485  # larger images are refused as decompression bombs (PIL's default limit)


class _VGG19Fc7(torch.nn.Module):
    """VGG-19 up to fc7 + ReLU, with torchvision's parameter names (``features.N``, ``classifier.{0,3}``)."""

    def __init__(self, divisor: int):
        super().__init__()
        from torchvision.models.vgg import make_layers

        plan = [c if c == "M" else int(c) // divisor for c in VGG19_PLAN]
        self.features = make_layers(plan, batch_norm=False)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((7, 7))
        hidden = 4096 // divisor
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(int(plan[-2]) * 7 * 7, hidden), torch.nn.ReLU(True), torch.nn.Dropout(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(True), torch.nn.Dropout(),
            torch.nn.Linear(hidden, 1000),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:5](x)  # fc6, ReLU, dropout (identity in eval), fc7, ReLU


@register_extractor
class VGG19Fc7(Extractor):
    """VGG-19 (torchvision IMAGENET1K_V1 weights), fc7 after ReLU, 4096-d: the benchmarks' image feature."""

    modality: ClassVar[str] = "image"
    name: ClassVar[str] = "vgg19-fc7"
    Config = VGG19Config
    extensions = IMAGE_EXTENSIONS
    is_default = True
    key_ignores = ("weights", "allow_download", "max_pixels")
    weights_enum: ClassVar[str] = "VGG19_Weights.IMAGENET1K_V1"

    def __init__(self, config: VGG19Config | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._weights_path: Path | None = None
        self._model: torch.nn.Module | None = None

    @property
    def dim(self) -> int:
        return 4096 // self.config.width_divisor

    @property
    def weights_path(self) -> Path:
        """The resolved weights file (searched once; see extractors/weights.py for the order)."""
        if self._weights_path is None:
            spec = WeightsSpec.from_torchvision(self.weights_enum, extractor=self.name, env_name="VGG19")
            if self.config.width_divisor != 1:  # a reduced architecture never matches the published file
                spec = dataclasses.replace(spec, filename=f"vgg19-fc7-width{self.config.width_divisor}.pth", url="")
            self._weights_path = resolve_weights(spec, explicit=self.config.weights,
                                                 allow_download=download_allowed(self.config.allow_download))
        return self._weights_path

    def weights_sha256(self) -> str:
        return weights_sha256(self.weights_path)

    def build_model(self) -> torch.nn.Module:
        """The network with the weights loaded (strict), in eval mode, on the extractor's device."""
        model = load_into(_VGG19Fc7(self.config.width_divisor), self.weights_path, extractor=self.name)
        return model.eval().to(self.device)

    def load(self, path: Path) -> torch.Tensor:
        """Decode, resize and crop as IMAGENET1K_V1's ``transforms()`` does: uint8 (3, crop, crop)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        img = F.pil_to_tensor(decode_image(path, max_pixels=self.config.max_pixels))
        img = F.resize(img, [self.config.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(img, [self.config.crop])

    def embed(self, items: Sequence[torch.Tensor]) -> np.ndarray:
        """float32 (n, dim) fc7 activations of uint8 (3, crop, crop) images."""
        if self._model is None:
            self._model = self.build_model()
        mean = torch.tensor(self.config.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            x = torch.stack(list(items)).to(self.device, non_blocking=True).float().div_(255)
            return self._model((x - mean) / std).float().cpu().numpy()


@dataclasses.dataclass(frozen=True)
class HogColorConfig(ExtractorConfig):
    size: int = 128  # the image is resized (whole, aspect not kept) to size x size before HOG
    orientations: int = 9  # HOG orientation bins (Dalal & Triggs 2005)
    pixels_per_cell: int = 16  # HOG cell side in pixels
    cells_per_block: int = 2  # HOG block side in cells (L2-Hys block normalisation)
    hsv_bins: tuple[int, int, int] = (8, 4, 4)  # joint hue x saturation x value histogram
    max_pixels: int = 89_478_485  # larger images are refused as decompression bombs (PIL's default limit)


@register_extractor
class HogColor(Extractor):
    """HOG of the grey image plus RGB mean/std and an HSV histogram; weight-free and fast."""

    modality: ClassVar[str] = "image"
    name: ClassVar[str] = "hog-color"
    Config = HogColorConfig
    extensions = IMAGE_EXTENSIONS
    key_ignores = ("max_pixels",)
    single_core = True  # scikit-image and numpy

    @property
    def dim(self) -> int:
        c = self.config
        cells = c.size // c.pixels_per_cell
        blocks = cells - c.cells_per_block + 1
        return blocks * blocks * c.cells_per_block**2 * c.orientations + 6 + int(np.prod(c.hsv_bins))

    def load(self, path: Path) -> np.ndarray:
        """uint8 (size, size, 3) RGB."""
        from PIL import Image

        img = decode_image(path, max_pixels=self.config.max_pixels)
        return np.asarray(img.resize((self.config.size, self.config.size), Image.Resampling.BILINEAR))

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self._describe(img) for img in items]).astype(np.float32)

    def _describe(self, rgb: np.ndarray) -> np.ndarray:
        skimage = require("skimage", extractor=self.name, extra="image")
        from PIL import Image
        from skimage.feature import hog

        c = self.config
        rgb01 = rgb / 255.0  # float64: exact statistics; the float32 cast comes once, at the end
        h = hog(skimage.color.rgb2gray(rgb01), orientations=c.orientations, pixels_per_cell=(c.pixels_per_cell,) * 2,
                cells_per_block=(c.cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)
        # PIL's HSV conversion (uint8 channels) is ~40x faster than skimage's rgb2hsv; bins are equal-width in each
        hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).reshape(-1, 3).astype(np.int64)
        bins = np.array(c.hsv_bins)
        idx = hsv * bins // 256
        cell = (idx[:, 0] * bins[1] + idx[:, 1]) * bins[2] + idx[:, 2]
        hist = np.bincount(cell, minlength=int(bins.prod())) / len(cell)
        flat = rgb01.reshape(-1, 3)
        return np.concatenate([h, flat.mean(0), flat.std(0), hist])


__all__ = ["IMAGE_EXTENSIONS", "HogColor", "VGG19Fc7", "decode_image"]
