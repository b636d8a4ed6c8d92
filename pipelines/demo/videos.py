"""Short videos of a digit: sliding across the frame, being drawn (revealed stroke by stroke along a sweep), or zooming
in while it turns. Encoded with PyAV (MPEG-4 part 2 video in .mp4 and .avi containers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from extractors.base import require
from pipelines.demo.glyphs import digit_fonts, glyph_coverage

VIDEO_SIZE = 64
"""Side of the frames in pixels."""

VIDEO_FORMATS: tuple[str, ...] = (".mp4", ".avi")
"""File formats, used in turn."""

# NOTE: libx264 gives different bytes for the same frames from run to run (even with one thread), which would change the
# content hash of a regenerated video; FFmpeg's MPEG-4 part 2 encoder is byte-for-byte reproducible.
ENCODER = "mpeg4"

FPS = 12
MOTIONS: tuple[str, ...] = ("slide", "draw", "zoom")


def digit_frames(digit: int, rng: np.random.Generator) -> np.ndarray:
    """Frames of one video of ``digit``: 16-32 frames; a random font, size, light-on-dark colours, motion (a slide of
    up to 10% of the frame, a left-to-right or other sweep that draws it, or a zoom from 60% with a turn of up to 20
    degrees) and pixel noise.

    Returns:
        uint8 (T, VIDEO_SIZE, VIDEO_SIZE, 3) RGB frames.
    """
    fonts = digit_fonts()
    size = VIDEO_SIZE
    glyph = glyph_coverage(digit, fonts[rng.integers(len(fonts))], size, fill=float(rng.uniform(0.65, 0.85)))
    count = int(rng.integers(16, 33))
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    t = np.linspace(0.0, 1.0, count)
    # A light digit on a dark ground, as chalk on a board: the weight-free video features (colour histograms, grey
    # thumbnails) cannot tell a dark-on-light digit from its negative, and random polarity halves what they can learn.
    background = rng.uniform(0, 80, 3).astype(np.float32)
    foreground = rng.uniform(175, 255, 3).astype(np.float32)
    source = Image.fromarray((glyph * 255).astype(np.uint8))
    if motion == "slide":
        start, end = rng.uniform(-0.1, 0.1, (2, 2)) * size
        alphas = [np.asarray(source.rotate(0, translate=tuple(start + s * (end - start)))) for s in t]
    elif motion == "draw":
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        progress = (xx * direction[0] + yy * direction[1]) / np.abs(direction).sum() + 0.5  # 0 .. 1 across the frame
        alphas = [np.asarray(source) * (progress <= 0.15 + 0.85 * s) for s in t]
    else:
        turn = rng.uniform(-20, 20)
        alphas = [np.asarray(_zoomed(source, 0.6 + 0.4 * s).rotate(turn * s, resample=Image.Resampling.BILINEAR))
                  for s in t]
    alpha = np.stack(alphas).astype(np.float32)[..., None] / 255.0
    frames = alpha * foreground + (1 - alpha) * background
    frames += rng.normal(0, rng.uniform(2, 10), frames.shape)
    return frames.clip(0, 255).astype(np.uint8)


def write_video(path: Path, digit: int, rng: np.random.Generator) -> Path:
    """Render a video of ``digit`` (``digit_frames``) and encode it at ``path`` (format from the suffix)."""
    av = require("av", extractor="digits demo (videos)", extra="video")
    frames = digit_frames(digit, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(ENCODER, rate=FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 400_000
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


def _zoomed(image: Image.Image, scale: float) -> Image.Image:
    """``image`` shrunk by ``scale`` about its centre, on a black canvas of the same size."""
    w = max(1, round(image.width * scale))
    canvas = Image.new("L", image.size, 0)
    canvas.paste(image.resize((w, w), Image.Resampling.BILINEAR), ((image.width - w) // 2, (image.height - w) // 2))
    return canvas
