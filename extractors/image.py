"""Image extractors: ``vgg19-fc7`` (the benchmarks' feature, default) and ``hog-color`` (weight-free, offline).

``vgg19-fc7``: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
with torchvision's ``VGG19_Weights.IMAGENET1K_V1``. The preprocessing is that enum's ``transforms()`` (resize the short
side to 256 bilinearly with antialiasing, centre crop 224, ImageNet mean/std), and the feature is fc7 after its ReLU
(4096-d), as the Wikipedia / XMedia / NUS-WIDE image features were made.

``hog-color``: Dalal & Triggs' HOG (CVPR 2005) on the grey image resized to a square, plus colour statistics
(per-channel RGB mean and std, a joint HSV histogram); no weights, no download, a few milliseconds per image.

SVG files are rasterised with resvg (the ``resvg-py`` wheel, in the ``image`` extra) and then go through the same
preprocessing as any image. Choices: the picture is drawn on white (an SVG's background is transparent, and alpha is
dropped, so transparent would read as black); at its declared size (``width``/``height`` in any CSS unit, else the
``viewBox``, else 100 x 100 as in resvg), scaled down to fit :data:`SVG_MAX_SIDE` on its longer side, so a file that
declares 100000 x 100000 costs at most 1024 x 1024 pixels; text is not drawn (no fonts are loaded: the raster is the
same on every machine, and loading the system fonts costs 0.5 s per file); links to other files are refused (an SVG
is read from its own bytes; embedded ``data:`` images are fine). resvg runs in a forked child process limited to
:data:`SVG_RENDER_MEMORY` bytes above the caller and :data:`SVG_RENDER_SECONDS` seconds, because a hostile SVG can
crash it (an embedded PNG declaring 10^10 pixels aborts on a 30 GB allocation; a few hundred nested groups overflow its
stack): the file becomes one error instead of the process dying. Without ``resvg-py``, ``.svg`` is not among the image
extensions and :data:`UNREADABLE` says why.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib.util
import io
import os
import re
import resource
import select
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from extractors.base import Extractor, ExtractorConfig, check_finite, require
from extractors.errors import MediaError
from extractors.registry import register_extractor
from extractors.weights import PretrainedExtractor, WeightsSpec, load_into

RASTER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SVG_READABLE = importlib.util.find_spec("resvg_py") is not None  # found without importing it
IMAGE_EXTENSIONS = RASTER_EXTENSIONS + ((".svg",) if SVG_READABLE else ())
#: Extensions of image files that the image extractors could read with a package missing here, and why.
UNREADABLE: dict[str, str] = {} if SVG_READABLE else {
    ".svg": "SVG images need the resvg-py package: pip install 'crossmodal-toolkit[image]'"}
SVG_MAX_SIDE = 1024  # an SVG is rasterised at its declared size, or scaled down to fit SVG_MAX_SIDE^2 (aspect kept)
SVG_RENDER_MEMORY = 1 << 30  # bytes the rendering child may allocate above its parent's size
SVG_RENDER_SECONDS = 30.0  # wall-clock limit of one rendering
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
        if Path(path).suffix.lower() == ".svg":
            return decode_svg(path, max_pixels=max_pixels)
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise MediaError(path, f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                       f"{max_pixels} (possible decompression bomb)",
                                 hint="raise it with --set max_pixels=N if the file is trusted")
            img.load()
            if img.mode == "F":  # 32-bit float pixels (a TIFF) may be NaN or inf, which convert() would hide
                check_finite(path, "pixel values", np.asarray(img))
            # No copy where none is needed (each is 4 bytes per pixel: three made a 89-megapixel PNG cost 1,027 MB):
            # exif_transpose copies an upright image unless in place, convert() copies even an RGB one; an image whose
            # file is still open (an animation's first frame) is copied all the same, which closes the file.
            if exif_transpose:
                ImageOps.exif_transpose(img, in_place=True)
            return img if img.mode == "RGB" and getattr(img, "fp", None) is None else img.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(path, "not a decodable image (PIL: cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(path, f"possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated data, bad header fields, unreadable file
        raise MediaError(path, f"corrupt or truncated image ({exc})") from None


_SVG_NS = "{http://www.w3.org/2000/svg}"
_HREFS = ("href", "{http://www.w3.org/1999/xlink}href")
# CSS absolute units in pixels at 96 dpi, and resvg's font-relative defaults (16 px font, ex = em / 2)
_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "em": 16.0,
          "ex": 8.0}
_LENGTH = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(px|pt|pc|mm|cm|in|em|ex|%)?\s*")


def decode_svg(path: Path, *, max_pixels: int, max_side: int = SVG_MAX_SIDE):
    """Rasterise an SVG file as an RGB ``PIL.Image`` on white (see the module docstring for every choice).

    Raises:
        MediaError: not well-formed XML, not an SVG, a link to another file, no valid size, an embedded image over
            ``max_pixels``, or the renderer failed, crashed, ran out of its memory or time.
    """
    from PIL import Image

    resvg_py = require("resvg_py", extractor="image extractors", extra="image")
    width, height = svg_size(path, max_pixels=max_pixels)
    scale = min(1.0, max_side / max(width, height))
    box = (max(1, round(width * scale)), max(1, round(height * scale)))  # resvg fits the picture in it, aspect kept

    def render() -> bytes:
        return resvg_py.svg_to_bytes(svg_path=str(path), width=box[0], height=box[1], background="white",
                                     skip_system_fonts=True, dpi=96.0)

    png = run_isolated(path, render, what="the SVG renderer (resvg)")
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB")


def svg_size(path: Path, *, max_pixels: int) -> tuple[float, float]:
    """The size an SVG declares, in pixels (CSS units at 96 dpi), after checking the whole document.

    The XML is read with the standard library's expat, which refuses entity expansion bombs.

    Raises:
        MediaError: malformed XML, a root other than ``<svg>``, a link to another file, an embedded raster image over
            ``max_pixels``, or no valid size.
    """
    import base64
    import binascii
    import xml.etree.ElementTree as ET

    from PIL import Image, UnidentifiedImageError

    root = None
    try:
        for event, elem in ET.iterparse(path, events=("start", "end")):
            if event == "end":
                if elem is not root:
                    elem.clear()  # keeps memory flat on big files
                continue
            if root is None:
                root = elem
                if elem.tag not in (f"{_SVG_NS}svg", "svg"):
                    raise MediaError(path, f"not an SVG document (its root element is <{elem.tag}>)")
            href = next((elem.get(k) for k in _HREFS if elem.get(k)), "").strip()
            if href.startswith("data:") and ";base64," in href[:80] and not href.startswith("data:image/svg"):
                try:
                    with Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))) as embedded:
                        size = embedded.size
                except Image.DecompressionBombError:  # PIL's own refusal, at twice its limit
                    size = (max_pixels + 1, 1)
                except (binascii.Error, ValueError, OSError, UnidentifiedImageError):
                    continue  # an embedded image that does not decode is left out by the renderer too
                if size[0] * size[1] > max_pixels:
                    raise MediaError(path, f"an embedded image is over the limit of {max_pixels} pixels "
                                           "(a decompression bomb)", hint="raise it with --set max_pixels=N if the "
                                           "file is trusted")
            elif href and not href.startswith(("#", "data:")):
                raise MediaError(path, f"links to another file ({href[:80]!r}), which is not read",
                                 hint="embed linked images in the SVG (Inkscape: Extensions > Images > Embed)")
    except ET.ParseError as exc:
        raise MediaError(path, f"not a well-formed SVG (XML: {exc})") from None
    if root is None:
        raise MediaError(path, "not an SVG document (no root element)")
    box = [float(v) for v in re.split(r"[\s,]+", root.get("viewBox", "").strip()) if v][2:4] \
        if _is_viewbox(root.get("viewBox")) else [None, None]
    width, height = (_svg_length(root.get(name), side) for name, side in zip(("width", "height"), box))
    if width is None or height is None or not all(0 < s < float("inf") for s in (width, height)):
        raise MediaError(path, f"the SVG declares no valid size (width={root.get('width')!r}, "
                               f"height={root.get('height')!r}, viewBox={root.get('viewBox')!r})")
    return width, height


def _is_viewbox(value: str | None) -> bool:
    parts = [p for p in re.split(r"[\s,]+", (value or "").strip()) if p]
    try:
        return len(parts) == 4 and all(float(p) > 0 for p in parts[2:])
    except ValueError:
        return False


def _svg_length(value: str | None, viewbox_side: float | None) -> float | None:
    """A root ``width`` or ``height`` in pixels: absent or a percentage is relative to the viewBox, as in resvg."""
    if value is None or not value.strip():
        return viewbox_side if viewbox_side is not None else 100.0
    m = _LENGTH.fullmatch(value)
    if m is None:
        return None
    number, unit = float(m.group(1)), m.group(2) or ""
    if unit == "%":
        return None if viewbox_side is None else viewbox_side * number / 100
    return number * _UNITS[unit]


def run_isolated(path: Path, work: Callable[[], bytes], *, what: str, memory: int = SVG_RENDER_MEMORY,
                 seconds: float = SVG_RENDER_SECONDS) -> bytes:
    """``work()`` (bytes) in a forked child with ``memory`` bytes of address space above the caller's and ``seconds``
    of wall clock: a native library that aborts or overflows its stack on a hostile file costs that file only.

    Raises:
        MediaError: ``work`` raised, the child died (its signal is named), or it ran out of time.
    """
    with open("/proc/self/statm") as f:  # the child starts as a copy of this process: its limit is added to our size
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            os.close(read_end)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # a native library's own crash report is not the user's,
            faulthandler.disable()  # nor Python's (pytest enables it, on a copy of stderr)
            # the pipes of renderings that other threads started: held open here, their readers would wait for us
            os.closerange(3, write_end)
            os.closerange(write_end + 1, os.sysconf("SC_OPEN_MAX"))
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)  # a caller under a budget keeps it
            limit = size + memory if soft == resource.RLIM_INFINITY else min(soft, size + memory)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            try:
                payload, code = b"\x00" + work(), 0
            except Exception as exc:  # the library's own error (resvg raises ValueError) goes to the parent as text
                payload = b"\x01" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(code)
    os.close(write_end)
    chunks, deadline, timed_out = [], time.monotonic() + seconds, False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:  # interrupted (Ctrl-C): the child goes too, no orphan left rendering
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_end)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        raise MediaError(path, f"{what} ran past its limit of {seconds:g} s")
    data = b"".join(chunks)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise MediaError(path, f"{what} crashed on this file ({name}; over {memory >> 20} MiB of memory, or its stack)")
    if data[:1] != b"\x00":
        detail = data[1:].decode("utf-8", "replace") or f"exit status {os.WEXITSTATUS(status)}"
        raise MediaError(path, f"{what} cannot read it ({detail})")
    return data[1:]


@dataclasses.dataclass(frozen=True)
class VGG19Config(ExtractorConfig):
    weights: str = ""  # state-dict file (.pth or .safetensors); '' = $CROSSMODAL_VGG19_WEIGHTS, weights dir, hub cache
    allow_download: bool = True  # download IMAGENET1K_V1 into the torch hub cache when missing (unless offline)
    resize: int = 256  # IMAGENET1K_V1 transforms: short side resized to 256 (bilinear, antialiased)
    crop: int = 224  # then centre-cropped to 224x224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet channel mean
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # ImageNet channel std
    width_divisor: int = 1  # 1 = VGG-19; k > 1 divides every width by k (tests load small state dicts this way)
    max_pixels: int = 89_478_485  # larger images are refused as decompression bombs (PIL's default limit)

    extractor = "vgg19-fc7"
    # crop: VGG's five 2x2 pools need 32 pixels; std: 0 would divide by zero; max_pixels: 2^32 RGB pixels are 12 GB
    bounds = {"resize": (32, 4096), "crop": (32, 4096), "mean": (0.0, 1.0), "std": (1e-3, 10.0),
              "width_divisor": (1, 64), "max_pixels": (1, 1 << 32)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop > self.resize:
            self.refuse("crop", f"the centre crop must fit in the resized image: use crop <= resize={self.resize}")


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
class VGG19Fc7(PretrainedExtractor):
    """VGG-19 (torchvision IMAGENET1K_V1 weights), fc7 after ReLU, 4096-d: the benchmarks' image feature."""

    modality: ClassVar[str] = "image"
    name: ClassVar[str] = "vgg19-fc7"
    Config = VGG19Config
    config: VGG19Config  # what __init__ makes of Config: typed so that its fields type-check
    extensions = IMAGE_EXTENSIONS
    unreadable = UNREADABLE
    is_default = True
    key_ignores = ("weights", "allow_download", "max_pixels")
    weights_enum: ClassVar[str] = "VGG19_Weights.IMAGENET1K_V1"

    def __init__(self, config: VGG19Config | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._model: torch.nn.Module | None = None

    @property
    def dim(self) -> int:
        return 4096 // self.config.width_divisor

    def weights_spec(self) -> WeightsSpec:
        spec = WeightsSpec.from_torchvision(self.weights_enum, extractor=self.name, env_name="VGG19",
                                            alternative="hog-color")
        if self.config.width_divisor != 1:  # a reduced architecture never matches the published file
            spec = dataclasses.replace(spec, filename=f"vgg19-fc7-width{self.config.width_divisor}.pth", url="")
        return spec

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

    extractor = "hog-color"
    bounds = {"size": (8, 4096), "orientations": (1, 180), "pixels_per_cell": (1, 512), "cells_per_block": (1, 64),
              "hsv_bins": (1, 256), "max_pixels": (1, 1 << 32)}

    def __post_init__(self) -> None:
        super().__post_init__()
        block = self.pixels_per_cell * self.cells_per_block
        if block > self.size:
            self.refuse("size", f"a HOG block ({self.cells_per_block} cells of {self.pixels_per_cell} pixels) must "
                                f"fit in the image: use size >= {block}, or smaller cells")


@register_extractor
class HogColor(Extractor):
    """HOG of the grey image plus RGB mean/std and an HSV histogram; weight-free and fast."""

    modality: ClassVar[str] = "image"
    name: ClassVar[str] = "hog-color"
    Config = HogColorConfig
    config: HogColorConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = IMAGE_EXTENSIONS
    unreadable = UNREADABLE
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


__all__ = ["IMAGE_EXTENSIONS", "UNREADABLE", "HogColor", "VGG19Fc7", "decode_image", "decode_svg"]
