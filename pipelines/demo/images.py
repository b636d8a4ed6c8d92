"""Images of digits: a glyph in a random font and colours, rotated, scaled, shifted, blurred and noised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pipelines.demo.glyphs import digit_fonts, glyph_coverage

IMAGE_SIZE = 64
"""Side of the generated images in pixels (extractors resize to their own input size)."""

IMAGE_FORMATS: tuple[str, ...] = (".png", ".jpg")
"""File formats, used in turn, so both decoders are exercised."""


def write_image(path: Path, digit: int, rng: np.random.Generator) -> Path:
    """Draw one distorted image of ``digit`` and save it at ``path`` (format from the suffix).

    Distortions: font, foreground and background colours (at least 100 grey levels apart), rotation of up to 25
    degrees, scale 0.55-0.9, a shift of up to 12% of the side, a blur and Gaussian pixel noise.
    """
    fonts = digit_fonts()
    font = fonts[rng.integers(len(fonts))]
    ink = glyph_coverage(digit, font, IMAGE_SIZE, fill=float(rng.uniform(0.55, 0.9)))
    glyph = Image.fromarray((ink * 255).astype(np.uint8)).rotate(
        float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR,
        translate=tuple(float(v) for v in rng.uniform(-0.12, 0.12, 2) * IMAGE_SIZE))
    alpha = np.asarray(glyph, dtype=np.float32)[..., None] / 255.0
    background, foreground = _contrasting_colours(rng)
    pixels = alpha * foreground + (1 - alpha) * background
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.0))))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(2, 14), (IMAGE_SIZE, IMAGE_SIZE, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
    return path


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours, float32 (3,), whose mean grey levels differ by at least 100 (either may be the darker)."""
    while True:
        background, foreground = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if abs(background.mean() - foreground.mean()) >= 100:
            return background, foreground
