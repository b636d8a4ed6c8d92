"""Tiny generated media for the extraction tests: class-structured images and texts, and broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
TOPICS = {
    "animals": ["the cat chased a small mouse around the barn", "a dog and a cat sleep by the warm fire",
                "the horse and the cow graze in the green field", "birds sing while the cat watches the tree"],
    "finance": ["the stock market fell as investors sold their shares", "banks raised interest rates on loans today",
                "shares of the company rose after strong earnings", "investors bought bonds as the market dropped"],
}


def write_shapes(root: Path, *, per_class: int = 3, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """``root/<shape>/<i>.png``: a filled circle, square or triangle on a random background."""
    rng = np.random.default_rng(seed)
    paths = []
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = size
            img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            box = [w * 0.2, h * 0.2, w * 0.8, h * 0.8]
            if shape == "circle":
                draw.ellipse(box, fill=(255, 0, 0))
            elif shape == "square":
                draw.rectangle(box, fill=(0, 255, 0))
            else:
                draw.polygon([(w * 0.5, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=(0, 0, 255))
            paths.append(root / shape / f"{i}.png")
            img.save(paths[-1])
    return paths


def write_texts(root: Path) -> list[Path]:
    """``root/<topic>/<i>.txt``, one sentence each."""
    paths = []
    for topic, sentences in TOPICS.items():
        (root / topic).mkdir(parents=True, exist_ok=True)
        for i, sentence in enumerate(sentences):
            paths.append(root / topic / f"{i}.txt")
            paths[-1].write_text(sentence + "\n")
    return paths


def png_header(width: int, height: int) -> bytes:
    """An RGB PNG that claims ``width`` x ``height`` but holds no pixel data: a decompression-bomb header."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + _chunk(
        b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
