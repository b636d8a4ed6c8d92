"""Digit glyphs: the fonts found on this machine and binary masks of the ten digits drawn in them.

Every generator of the digits dataset (images, meshes, videos) starts from a glyph mask, so the shape of a "7" is the
thing the modalities share. Fonts come from the system font folders and from matplotlib's bundled TrueType fonts
(present wherever matplotlib is), plus Pillow's built-in default font; a font that draws digits as identical boxes
(symbol fonts) is left out.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""English number words, index = digit."""

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""Class names of the digits dataset: the folder names ``0`` .. ``9`` (their sorted order is the digit order)."""

PIL_DEFAULT_FONT = "<pil-default>"
"""Stands for Pillow's built-in font in a list of font paths."""

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts", "/Library/Fonts",
              "C:/Windows/Fonts")

# Fonts whose code points for "0".."9" hold symbols, not digits (TeX math symbols, STIX size variants, fallbacks).
_SYMBOL_FONTS = ("cmsy", "cmex", "cmmi", "stixsiz", "stixnonuni", "lastresort", "symbol", "wingding", "webding",
                 "dingbat", "emoji", "opensymbol")


@functools.lru_cache(maxsize=1)
def digit_fonts(max_fonts: int = 16) -> tuple[str, ...]:
    """Fonts that draw ten distinct digits, in a fixed order: TrueType files first (sorted by file name), then Pillow's.

    Args:
        max_fonts: keep at most this many TrueType fonts (spread over the sorted list), so generation stays fast and
            the choice does not depend on how many fonts a machine has beyond that.

    Returns:
        Font paths (str); ``PIL_DEFAULT_FONT`` for Pillow's built-in font.
    """
    import matplotlib

    dirs = [Path(os.path.expanduser(d)) for d in _FONT_DIRS]
    dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    by_name: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for path in sorted(d.rglob("*.ttf")):
                by_name.setdefault(path.name.lower(), path)  # the same font installed twice counts once
    usable = [str(p) for name, p in sorted(by_name.items())
              if not name.startswith(_SYMBOL_FONTS) and _draws_distinct_digits(str(p))]
    if len(usable) > max_fonts:
        usable = [usable[i] for i in np.linspace(0, len(usable) - 1, max_fonts).round().astype(int)]
    return (*usable, PIL_DEFAULT_FONT)


def load_font(font: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font at ``font`` (a .ttf path or ``PIL_DEFAULT_FONT``) at ``size`` pixels."""
    if font == PIL_DEFAULT_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(font, size=size)


def glyph_coverage(digit: int, font: str, size: int, *, fill: float = 0.8) -> np.ndarray:
    """The digit drawn in ``font``, scaled so its taller side is ``fill * size`` and centred in a square canvas.

    The glyph is drawn large and shrunk with area averaging, so thin strokes survive at small sizes.

    Args:
        digit: 0-9.
        font: a path from ``digit_fonts()``.
        size: side of the canvas in pixels.
        fill: the glyph's larger side as a fraction of the canvas.

    Returns:
        float32 (size, size) ink coverage in [0, 1].
    """
    big = _glyph_image(digit, font)
    scale = fill * size / max(big.size)
    w, h = max(1, round(big.width * scale)), max(1, round(big.height * scale))
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(big.resize((w, h), Image.Resampling.BOX), ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def glyph_mask(digit: int, font: str, size: int, *, fill: float = 0.8) -> np.ndarray:
    """bool (size, size), True where ``glyph_coverage`` is at least one half."""
    return glyph_coverage(digit, font, size, fill=fill) >= 0.5


@functools.lru_cache(maxsize=512)
def _glyph_image(digit: int, font: str) -> Image.Image:
    """The digit drawn at 160 px, cropped to its ink (mode L)."""
    pil_font = load_font(font, 160)
    canvas = Image.new("L", (320, 320), 0)
    ImageDraw.Draw(canvas).text((80, 40), str(digit), fill=255, font=pil_font)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def _draws_distinct_digits(font: str) -> bool:
    try:
        masks = [glyph_mask(d, font, 32) for d in range(10)]
    except OSError:  # not a readable TrueType file
        return False
    if any(m.sum() < 8 for m in masks):
        return False
    flat = {m.tobytes() for m in masks}
    return len(flat) == 10
