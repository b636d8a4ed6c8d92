"""A generated corpus of bad (and a few good) input files across the five modalities, for the bad-input tests.

``make_corpus(root)`` writes ``root/<modality>/<class>/<file>`` (the ImageFolder convention that ``crossmodal
extract`` reads) and returns one ``Case`` per file with what a batch run must do with it:

* ``expect="ok"``: valid input, possibly at an edge (silent or 1-sample audio, a 1x1 image, a 1-frame video, a mesh
  with a single triangle): it must come out as one row of finite features.
* ``expect="error"``: the run must list it in ``errors.jsonl`` with a reason, and go on.
* ``expect="either"``: input whose right outcome is a policy of the loader, not a fact of the file (``why`` says which);
  the run must do exactly one of the two: a row of finite features, or an error with a reason.

The common kinds are made for every modality: zero-byte, truncated at 14 points, random bytes (12 sizes, then 3 sizes
with 2 more seeds), a file of another modality under this modality's extension (a PNG named ``.wav``), a right magic
number followed by garbage, a good file whose name is not valid UTF-8, a symlink loop, a dangling symlink. Each
modality adds its own: decompression-bomb headers, float TIFFs with NaN or inf pixels, SVG bombs (a huge declared
size, an embedded PNG bomb, an entity bomb, nesting that crashes the renderer) and malformed SVG; odd text encodings
and a text over the size limit (a sparse file: no disk); NaN audio samples, finite samples that overflow the spectrum,
a silent FLAC past the duration limit and one whose header claims 3 hours; meshes with no faces, only degenerate
triangles, or coordinates that overflow (near 1e308); videos with no frames, or past the frame limit (9,100 tiny
frames). ``make_feature_files`` writes feature files with NaN or infinite values for the benchmark loaders and the
store. ``missing_path`` names a path that does not exist. Everything is small (bytes to a few KiB; the longest video
and audio a few hundred KiB) and deterministic in ``seed``; making the corpus takes about 2 s.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import struct
import wave
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

MODALITIES = ("image", "text", "audio", "mesh", "video")
EXTENSION = {"image": ".png", "text": ".txt", "audio": ".wav", "mesh": ".off", "video": ".mp4"}
# The modalities' weight-free (or corpus-fitted) extractors at small sizes, as ``crossmodal extract`` options: the runs
# over the corpus are about the files, not the models.
EXTRACTORS = {
    "image": ["--extractor", "hog-color", "--set", "size=32", "--set", "pixels_per_cell=8"],
    "text": ["--extractor", "doc2vec", "--set", "vector_size=16", "--set", "epochs=5", "--set", "min_count=1"],
    "audio": ["--extractor", "mfcc", "--set", "sample_rate=8000"],
    "mesh": ["--extractor", "lightfield", "--set", "resolution=32", "--set", "contour_points=32"],
    "video": ["--extractor", "frame-stats", "--set", "size=16"],
}
Expect = Literal["ok", "error", "either"]


@dataclass(frozen=True)
class Case:
    """One file of the corpus.

    Attributes:
        path: where the file is (it may be a symlink, or a path that does not exist).
        modality: the modality whose folder holds it.
        kind: what is wrong with it (``zero-byte``, ``truncated-50%`` ...), or what edge it is at.
        expect: ``ok`` (one row), ``error`` (listed with a reason) or ``either`` (exactly one of the two).
        why: why that is the expected outcome.
    """

    path: Path
    modality: str
    kind: str
    expect: Expect
    why: str = ""


@dataclass
class Corpus:
    root: Path
    cases: list[Case] = field(default_factory=list)

    def of(self, modality: str, *, expect: Expect | None = None) -> list[Case]:
        return [c for c in self.cases if c.modality == modality and (expect is None or c.expect == expect)]

    @property
    def bad(self) -> list[Case]:
        return [c for c in self.cases if c.expect != "ok"]

    def bad_of(self, modality: str) -> list[Case]:
        return [c for c in self.bad if c.modality == modality]


# ---------------------------------------------------------------------------------------------- good files, by modality


def png_bytes(width: int = 24, height: int = 16, *, seed: int = 0, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 24, height: int = 16, *, seed: int = 0, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def text_bytes(*, seed: int = 0) -> bytes:
    words = ["a", "small", "red", "bird", "sings", "on", "the", "old", "oak", "tree", "near", "river", "bank", "song"]
    rng = np.random.default_rng(seed)
    return (" ".join(rng.choice(words, 12)) + ".\n").encode("utf-8")


def wav_bytes(samples: np.ndarray, *, rate: int = 8000) -> bytes:
    """A 16-bit PCM WAV of int16 ``samples`` (n,) or (n, channels)."""
    samples = np.asarray(samples, dtype=np.int16)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def tone(seconds: float = 0.25, *, rate: int = 8000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.05
    return (np.sin(2 * np.pi * freq * t) * 0.5 + noise).clip(-1, 1) * 32767


def float_wav_bytes(samples: np.ndarray, *, rate: int = 8000) -> bytes:
    """A 32-bit IEEE-float WAV (format tag 3), written by hand so NaN and inf samples survive."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


CUBE_V = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
CUBE_F = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
          (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]


def off_bytes(vertices: list, faces: list, *, header: str | None = None) -> bytes:
    lines = ["OFF", header or f"{len(vertices)} {len(faces)} 0"]
    lines += [" ".join(repr(float(c)) for c in v) for v in vertices]
    lines += [f"{len(f)} " + " ".join(str(i) for i in f) for f in faces]
    return ("\n".join(lines) + "\n").encode()


def obj_bytes(vertices: list, faces: list) -> bytes:
    lines = [f"v {x} {y} {z}" for x, y, z in vertices] + ["f " + " ".join(str(i + 1) for i in f) for f in faces]
    return ("\n".join(lines) + "\n").encode()


def ply_bytes(vertices: list, faces: list) -> bytes:
    head = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
            "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    lines = head + [" ".join(str(float(c)) for c in v) for v in vertices] + [f"3 {a} {b} {c}" for a, b, c in faces]
    return ("\n".join(lines) + "\n").encode()


def stl_bytes(vertices: list, faces: list, *, count: int | None = None) -> bytes:
    """A binary STL; ``count`` overrides the declared triangle count (a header that lies)."""
    out = [b"crossmodal test".ljust(80, b" "), struct.pack("<I", len(faces) if count is None else count)]
    for f in faces:
        out.append(struct.pack("<12fH", 0.0, 0.0, 0.0, *(c for i in f for c in vertices[i]), 0))
    return b"".join(out)


def mp4_bytes(frames: int = 8, *, size: int = 32, seed: int = 0, codec: str = "mpeg4", fmt: str = "mp4") -> bytes:
    """A tiny video of ``frames`` shifting frames (``frames=0``: a container with a video stream and no frame)."""
    import av

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        container.start_encoding()  # writes the header even when no frame follows
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i * 2, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def audio_only_mp4_bytes() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = (tone(0.5, rate=8000) / 32767).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def good_bytes(modality: str, *, seed: int = 0) -> bytes:
    """A small valid file of ``modality`` in its usual extension (``EXTENSION``)."""
    if modality == "image":
        return png_bytes(seed=seed)
    if modality == "text":
        return text_bytes(seed=seed)
    if modality == "audio":
        return wav_bytes(tone(freq=300.0 + 50 * seed, seed=seed))
    if modality == "mesh":
        scale = 1.0 + seed
        return off_bytes([(x * scale, y, z) for x, y, z in CUBE_V], CUBE_F)
    if modality == "video":
        return mp4_bytes(seed=seed)
    raise ValueError(modality)


def svg_bytes(body: str = "", *, width: str | None = "40", height: str | None = "20", extra: str = "") -> bytes:
    size = "".join(f' {k}="{v}"' for k, v in (("width", width), ("height", height)) if v is not None)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"{size}{extra}>'
            f"{body}</svg>").encode()


def float_tiff_bytes(value: float) -> bytes:
    """An 8x8 32-bit float TIFF (PIL mode F) with one pixel set to ``value``."""
    from PIL import Image

    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    pixels[3, 3] = value
    buf = io.BytesIO()
    Image.fromarray(pixels, "F").save(buf, format="TIFF")
    return buf.getvalue()


def flac_bytes(samples: np.ndarray, *, rate: int = 8000, claim_samples: int | None = None) -> bytes:
    """A 16-bit FLAC; ``claim_samples`` rewrites the total sample count in its STREAMINFO header (a lying header)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(samples, np.int16), rate, format="FLAC")
    data = bytearray(buf.getvalue())
    if claim_samples is not None:  # "fLaC", a 4-byte block header, then STREAMINFO: the count is its bits 108..143
        data[21] = (data[21] & 0xF0) | (claim_samples >> 32 & 0x0F)
        data[22:26] = (claim_samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


# --------------------------------------------------------------------------------------------------- bad image headers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bytes(width: int, height: int, *, bad_crc: bool = False) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb when huge) with one tiny IDAT."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if bad_crc:
        ihdr = ihdr[:-4] + bytes(4)
    idat = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def gif_header_bytes(width: int, height: int) -> bytes:
    """A GIF89a whose logical screen and one image claim ``width`` x ``height``, with almost no data."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return head + image + b"\x3b"


def bmp_header_bytes(width: int, height: int) -> bytes:
    """A 24-bit BMP claiming ``width`` x ``height`` with 16 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = bytes(16)
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return head + info + pixels


# ----------------------------------------------------------------------------------------------------------- the corpus

MAGIC = {"image": b"\x89PNG\r\n\x1a\n", "text": b"\xef\xbb\xbf", "audio": b"RIFF\x24\x08\x00\x00WAVEfmt ",
         "mesh": b"OFF\n", "video": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"}
# bytes kept (int; negative: all but) or fraction kept (float)
TRUNCATE_AT = (1, 2, 3, 7, 16, 0.05, 0.1, 0.25, 0.33, 0.5, 0.6, 0.75, 0.9, -1)
RANDOM_SIZES = (1, 2, 3, 16, 64, 100, 512, 1000, 4096, 10_000, 65_536, 100_000)
RANDOM_RESEEDED = (16, 512, 4096)  # sizes drawn again, twice, from further seeds
SVG_READABLE = importlib.util.find_spec("resvg_py") is not None


def _specific(modality: str) -> list[tuple[str, str, bytes, Expect, str]]:
    """(kind, extension, content, expect, why) of the modality's own bad and edge cases."""
    nan, inf = float("nan"), float("inf")
    if modality == "image":
        return [
            ("bomb-png-100000x100000", ".png", png_header_bytes(100_000, 100_000), "error",
             "10^10 pixels is a decompression bomb: refuse before decoding"),
            ("bomb-png-70000x70000", ".png", png_header_bytes(70_000, 70_000), "error", "decompression bomb"),
            ("bomb-gif-65535x65535", ".gif", gif_header_bytes(65_535, 65_535), "error", "decompression bomb"),
            ("bomb-bmp-100000x100000", ".bmp", bmp_header_bytes(100_000, 100_000), "error", "decompression bomb"),
            ("png-zero-width", ".png", png_header_bytes(0, 16), "error", "a 0-pixel-wide image has no content"),
            ("png-bad-header-crc", ".png", png_header_bytes(16, 16, bad_crc=True), "error", "corrupt header"),
            ("png-header-claims-more-pixels", ".png", png_header_bytes(64, 64), "error",
             "the pixel data is shorter than the header says (a truncated stream)"),
            ("jpeg-truncated-scan", ".jpg", jpeg_bytes(seed=3)[:-200], "error", "truncated entropy-coded data"),
            ("edge-1x1-png", ".png", png_bytes(1, 1, seed=4), "ok", "a 1x1 image is an image"),
            ("edge-grayscale-png", ".png", png_bytes(seed=5, mode="L"), "ok", "grayscale is converted to RGB"),
            ("edge-rgba-png", ".png", png_bytes(seed=6, mode="RGBA"), "ok", "alpha is dropped"),
            ("edge-cmyk-jpeg", ".jpg", jpeg_bytes(seed=7, mode="CMYK"), "ok", "CMYK is converted to RGB"),
            ("edge-wide-1x300", ".png", png_bytes(300, 1, seed=8), "ok", "an extreme aspect ratio is still an image"),
            ("tiff-float-nan", ".tif", float_tiff_bytes(nan), "error", "a NaN pixel is a non-finite intermediate"),
            ("tiff-float-inf", ".tif", float_tiff_bytes(inf), "error", "an infinite pixel"),
            ("edge-tiff-float", ".tif", float_tiff_bytes(0.5), "ok", "32-bit float pixels, all finite"),
        ] + _svg_cases()
    if modality == "text":
        return [
            ("latin-1-bytes", ".txt", "café naïve façade über señor".encode("latin-1"), "either",
             "not UTF-8: a loader may refuse it or decode it with a fallback (latin-1 / replacement)"),
            ("utf-16-le-no-bom", ".txt", "a small red bird sings".encode("utf-16-le"), "either",
             "every other byte is NUL: refused as binary, or detected as UTF-16"),
            ("utf-16-be-no-bom", ".txt", "a small red bird sings".encode("utf-16-be"), "either", "as above"),
            ("utf-16-with-bom", ".txt", "a small red bird sings".encode("utf-16"), "either",
             "a BOM makes UTF-16 unambiguous, but a loader may accept UTF-8 only"),
            ("binary-with-nul", ".txt", b"\x00\x01\x02ELF\x00\x00" + bytes(range(256)), "error", "binary, not text"),
            ("whitespace-only", ".txt", b" \n\t\r\n   \n", "error", "an empty document has no features"),
            ("bom-only", ".txt", b"\xef\xbb\xbf", "error", "an empty document after the BOM"),
            ("invalid-utf8-continuation", ".txt", b"a bird \xc3\x28 sings \xa0\xa1", "either",
             "invalid UTF-8: refuse, or decode with replacement characters"),
            ("utf8-cut-mid-character", ".txt", "a bird sings über".encode()[:-3], "either",
             "the last character is cut in half"),
            ("edge-one-word", ".txt", b"bird", "ok", "a one-word document"),
            ("edge-utf8-with-bom", ".txt", b"\xef\xbb\xbf" + text_bytes(seed=9), "ok", "UTF-8 with a BOM"),
            ("edge-long-line", ".txt", (b"bird " * 4000).strip(), "ok", "20 KB on one line is a long document"),
            ("edge-non-ascii-utf8", ".txt", "ein kleiner Vogel singt über dem Fluss — 小鸟".encode(), "ok", "UTF-8"),
            ("edge-long-256k", ".txt", b"".join(text_bytes(seed=s) for s in range(3000))[:262_144], "ok",
             "a 256 KiB document is long, not too long"),
            ("one-60000-letter-word", ".txt", b"b" + b"ird" * 20_000, "error",
             "60 KB without a space: the tokenizer keeps words of 2 to 15 letters, so the document has no word"),
        ]
    if modality == "audio":
        header_only = wav_bytes(np.zeros(0))
        return [
            ("silent-1s", ".wav", wav_bytes(np.zeros(8000)), "ok", "silence is audio: finite features (all equal)"),
            ("one-sample", ".wav", wav_bytes(np.array([1000])), "ok", "1 sample is audio: finite features"),
            ("two-samples-stereo", ".wav", wav_bytes(np.array([[1000, -1000], [0, 0]])), "ok", "tiny stereo"),
            ("edge-stereo-48k", ".wav", wav_bytes(np.stack([tone(0.1, rate=48000)] * 2, 1), rate=48000), "ok",
             "stereo at 48 kHz is resampled and mixed down"),
            ("edge-dc-offset", ".wav", wav_bytes(np.full(4000, 20000)), "ok", "a constant signal"),
            ("edge-float-wav", ".wav", float_wav_bytes(tone(0.25) / 32767), "ok", "32-bit float PCM"),
            ("header-only-0-frames", ".wav", header_only, "error", "a WAV with no samples has no sound"),
            ("nan-samples", ".wav", float_wav_bytes(np.full(2000, nan)), "error", "NaN samples"),
            ("inf-samples", ".wav", float_wav_bytes(np.r_[np.zeros(1000), inf, np.zeros(999)]), "error",
             "infinite samples"),
            ("some-nan-samples", ".wav", float_wav_bytes(np.r_[tone(0.1) / 32767, nan]), "error", "a NaN sample"),
            ("rate-zero-header", ".wav", header_only[:24] + struct.pack("<I", 0) + header_only[28:] + bytes(200),
             "error", "a sample rate of 0 Hz"),
            ("samples-1e30", ".wav", float_wav_bytes(tone(0.25) / 32767 * 1e30), "error",
             "finite samples so large that the float32 spectrum overflows: a non-finite intermediate"),
            ("samples-3e38", ".wav", float_wav_bytes(np.full(2000, 3e38)), "error", "the largest float32 samples"),
            ("edge-samples-1e12", ".wav", float_wav_bytes(tone(0.25) / 32767 * 1e12), "ok",
             "far past full scale, but the spectrum stays finite"),
            ("silent-flac-601s", ".flac", flac_bytes(np.zeros(601 * 8000)), "error",
             "601 s of silence (14 KB): longer than the 600 s limit, refused instead of decoded whole"),
            ("flac-header-claims-3h", ".flac", flac_bytes(np.zeros(8000), claim_samples=3 * 3600 * 8000), "error",
             "its header declares 3 hours: refused before decoding"),
            ("edge-silent-flac-60s", ".flac", flac_bytes(np.zeros(60 * 8000)), "ok", "a minute of silence"),
            ("data-size-lies", ".wav", wav_bytes(tone(0.05))[:40] + struct.pack("<I", 2**31) + bytes(100), "either",
             "the data chunk claims 2 GB but has 100 bytes: read what is there, or refuse"),
        ]
    if modality == "mesh":
        flat = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)]
        return [
            ("no-faces-off", ".off", off_bytes(CUBE_V, []), "error", "a mesh with no faces has no surface"),
            ("no-faces-obj", ".obj", obj_bytes(CUBE_V, []), "error", "a point cloud, not a mesh"),
            ("no-vertices-off", ".off", off_bytes([], []), "error", "an empty mesh"),
            ("degenerate-collinear", ".off", off_bytes(flat, [(0, 1, 2), (1, 2, 3)]), "error",
             "every triangle has zero area"),
            ("degenerate-repeated-index", ".off", off_bytes(CUBE_V, [(0, 0, 1), (2, 2, 2)]), "error",
             "every triangle repeats a vertex"),
            ("degenerate-one-point", ".off", off_bytes([(1, 1, 1)] * 3, [(0, 1, 2)]), "error",
             "all vertices coincide"),
            ("nan-vertex", ".off", off_bytes([(nan, 0, 0)] + CUBE_V[1:], CUBE_F), "error", "a NaN coordinate"),
            ("inf-vertex", ".off", off_bytes([(inf, 0, 0)] + CUBE_V[1:], CUBE_F), "error", "an inf coordinate"),
            ("face-index-out-of-range", ".off", off_bytes(CUBE_V, CUBE_F[:-1] + [(0, 1, 99)]), "error",
             "a face points past the last vertex"),
            ("header-claims-more-vertices", ".off", off_bytes(CUBE_V, CUBE_F, header="80 12 0"), "error",
             "the header says 80 vertices, the file has 8"),
            ("header-claims-1e8-vertices", ".off", off_bytes(CUBE_V[:3], [(0, 1, 2)], header="100000000 1 0"),
             "error", "a lying header must not allocate 10^8 vertices"),
            ("stl-count-lies-1e9", ".stl", stl_bytes(CUBE_V, CUBE_F[:2], count=10**9), "error",
             "a binary STL whose header claims 10^9 triangles"),
            ("edge-single-triangle", ".off", off_bytes([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1, 2)]), "ok",
             "one triangle is a surface (flat, so some views are edge-on)"),
            ("edge-cube-plus-degenerate", ".off", off_bytes(CUBE_V, CUBE_F + [(0, 0, 1)]), "ok",
             "degenerate triangles beside a valid surface are ignored"),
            ("edge-obj", ".obj", obj_bytes(CUBE_V, CUBE_F), "ok", "a cube in OBJ"),
            ("edge-ply", ".ply", ply_bytes(CUBE_V, CUBE_F), "ok", "a cube in PLY"),
            ("edge-stl", ".stl", stl_bytes(CUBE_V, CUBE_F), "ok", "a cube in binary STL"),
            ("overflow-1e308-off", ".off", off_bytes(_scaled(CUBE_V, 1e308), CUBE_F), "error",
             "finite coordinates whose triangle areas overflow float64 (was a row of zeros)"),
            ("overflow-1e200-obj", ".obj", obj_bytes(_scaled(CUBE_V, 1e200), CUBE_F), "error", "areas overflow"),
            ("overflow-mixed-sign-ply", ".ply", ply_bytes([(1e308 if x else -1e308, y, z) for x, y, z in CUBE_V],
                                                          CUBE_F), "error",
             "+-1e308 in float32 properties: infinite once read"),
            ("far-degenerate-vertex", ".off", off_bytes(CUBE_V + [(1e300, 0, 0)], CUBE_F + [(0, 0, 8)]), "error",
             "a vertex at 1e300 (of a zero-area face) does not fit the float32 normalised mesh"),
            ("underflow-1e-300", ".off", off_bytes(_scaled(CUBE_V, 1e-300), CUBE_F), "error",
             "the triangle areas underflow to zero: degenerate"),
            ("edge-large-1e30", ".off", off_bytes(_scaled(CUBE_V, 1e30), CUBE_F), "ok",
             "large but safe coordinates: the descriptor is scale-invariant"),
        ]
    if modality == "video":
        one = mp4_bytes(1, seed=11)
        return [
            ("no-frames-avi", ".avi", mp4_bytes(0, fmt="avi"), "error", "a video stream with no frame"),
            ("no-frames-mp4", ".mp4", mp4_bytes(0), "error", "an MP4 header with a video track and no sample"),
            ("no-frames-mkv", ".mkv", mp4_bytes(0, fmt="matroska"), "error", "a Matroska header and nothing else"),
            ("audio-only", ".mp4", audio_only_mp4_bytes(), "error", "a container with no video stream"),
            ("moov-cut", ".mp4", mp4_bytes(8, seed=12)[:-64], "error", "the index (moov) at the end is cut"),
            ("mdat-zeroed", ".mp4", _zero_middle(mp4_bytes(8, seed=13)), "either",
             "the frames' bytes are zeros: a decoder may give grey frames or refuse"),
            ("png-named-mp4", ".mp4", png_bytes(seed=14), "either",
             "FFmpeg opens a PNG as a one-frame image stream: a loader may accept it as a video or refuse"),
            ("wav-named-mp4", ".mp4", wav_bytes(tone(0.25)), "error", "audio, no video stream"),
            ("edge-one-frame", ".mp4", one, "ok", "one frame is a video (padded to a clip)"),
            ("edge-avi-mjpeg", ".avi", mp4_bytes(4, seed=15, codec="mjpeg", fmt="avi"), "ok", "MJPEG in AVI"),
            ("edge-odd-size", ".mp4", mp4_bytes(3, size=18, seed=16), "ok", "an 18x18 video"),
            ("frames-9100-tiny", ".mp4", mp4_bytes(9100, size=16, seed=17), "error",
             "9,100 frames of 16x16 (340 KB): past the 9,000-frame limit, refused instead of held in memory"),
            ("edge-frames-300-tiny", ".mp4", mp4_bytes(300, size=16, seed=18), "ok", "300 frames is a video"),
        ]
    raise ValueError(modality)


def _scaled(vertices: list, scale: float) -> list:
    return [(x * scale, y * scale, z * scale) for x, y, z in vertices]


def _svg_cases() -> list[tuple[str, str, bytes, Expect, str]]:
    """SVG images: read when resvg-py is installed (else every .svg is listed as unsupported: an error)."""
    ok: Expect = "ok" if SVG_READABLE else "error"
    bomb = base64.b64encode(png_header_bytes(100_000, 100_000)).decode()
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    rect = '<rect x="5" y="5" width="20" height="10" fill="#cc3300"/>'
    return [
        ("edge-svg", ".svg", svg_bytes(rect), ok, "a plain SVG drawing"),
        ("edge-svg-100000x100000", ".svg", svg_bytes(rect, width="100000", height="100000"), ok,
         "a huge declared size is rasterised scaled down to the bound (1024 px), not at 10^10 pixels"),
        ("edge-svg-aspect-100000x1", ".svg", svg_bytes(rect, width="100000", height="1"), ok,
         "an extreme aspect ratio: 1024x1 pixels"),
        ("edge-svg-no-size", ".svg", svg_bytes(rect, width=None, height=None), ok, "no size: 100 x 100"),
        ("edge-svg-rect-1e308", ".svg", svg_bytes('<rect width="1e308" height="1e308"/>'), "either",
         "a shape with overflowing coordinates: drawn clipped, or refused by the renderer"),
        ("svg-embedded-png-bomb", ".svg",
         svg_bytes(f'<image width="4" height="4" href="data:image/png;base64,{bomb}"/>'),
         "error", "an embedded PNG declaring 10^10 pixels (resvg would abort on a 30 GB allocation)"),
        ("svg-entity-bomb", ".svg", f'<?xml version="1.0"?><!DOCTYPE svg [{entities}]>'.encode()
         + svg_bytes("<text>&j;</text>"), "error", "a billion laughs: refused by the XML parser"),
        ("svg-deep-nesting", ".svg", svg_bytes("<g>" * 20_000 + "</g>" * 20_000), "error",
         "20,000 nested groups overflow the renderer's stack: the crash is isolated, the file refused"),
        ("svg-use-loop", ".svg", svg_bytes('<g id="a"><use href="#b"/></g><g id="b"><use href="#a"/></g>'), "error",
         "two groups that use each other"),
        ("svg-malformed", ".svg", svg_bytes(rect)[:-20], "error", "not well-formed XML (cut before its end)"),
        ("svg-html-root", ".svg", b"<html><body><p>not a drawing</p></body></html>", "error", "not an SVG document"),
        ("svg-zero-size", ".svg", svg_bytes(rect, width="0"), "error", "a width of 0"),
        ("svg-links-a-file", ".svg", svg_bytes('<image width="4" height="4" xlink:href="/etc/hostname"/>'), "error",
         "a link to a local file is not followed"),
    ]


def _zero_middle(data: bytes) -> bytes:
    start = data.find(b"mdat") + 4
    return data[:start] + bytes(max(0, len(data) - start - 600)) + data[len(data) - 600:]


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def make_corpus(root: str | Path, *, seed: int = 0, modalities: tuple[str, ...] = MODALITIES,
                good_per_modality: int = 3) -> Corpus:
    """Write the corpus under ``root/<modality>/<class>/`` and return its cases (good files included).

    Good files are in class folders ``good-a``/``good-b``, bad and edge cases in ``bad``/``edge``, so labels come from
    the folders like any user's data.
    """
    root = Path(root)
    corpus = Corpus(root)
    rng = np.random.default_rng(seed)
    goods = {m: good_bytes(m, seed=seed) for m in MODALITIES}
    for m in modalities:
        ext = EXTENSION[m]
        add: Callable[..., None] = _adder(corpus, root / m, m)
        for i in range(good_per_modality):
            add(f"good-{'ab'[i % 2]}/good-{i}{ext}", good_bytes(m, seed=seed + i), "good", "ok", "a valid file")
        add(f"bad/zero-byte{ext}", b"", "zero-byte", "error", "an empty file")
        sizes_cut: set[int] = set()
        for cut in TRUNCATE_AT:
            full = len(goods[m])
            size = int(full * cut) if isinstance(cut, float) else cut if cut > 0 else full + cut
            if size in sizes_cut:  # a fraction of a short file can land on a byte count already made
                continue
            sizes_cut.add(size)
            label = f"truncated-{cut:.0%}" if isinstance(cut, float) else f"truncated-{size}B"
            expect, why = _truncation_outcome(m, size, len(goods[m]))
            add(f"bad/{label}{ext}", goods[m][:size], label, expect, why)
        draws = [(size, 0) for size in RANDOM_SIZES] + [(size, d) for d in (1, 2) for size in RANDOM_RESEEDED]
        for size, draw in draws:
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            lenient = m == "text" and b"\x00" not in data
            name = f"random-{size}B" + (f"-draw{draw}" if draw else "")
            add(f"bad/{name}{ext}", data, f"random-{size}B", "either" if lenient else "error",
                "random bytes, no NUL: refuse as not UTF-8, or decode with a fallback" if lenient else "random bytes")
        if m == "text":  # 16 MiB + 1 byte, sparse: over the text extractors' max_bytes, costing no disk
            sparse = _write(root / m / "bad" / "over-16MiB-sparse.txt", b"")
            os.truncate(sparse, 16 * 2**20 + 1)
            corpus.cases.append(Case(sparse, m, "over-max-bytes", "error",
                                     "a text over the 16 MiB limit is refused before it is read"))
        latin1 = root / m / "good-a" / os.fsdecode(b"caf\xe9-not-utf8" + ext.encode())
        corpus.cases.append(Case(_write(latin1, good_bytes(m, seed=seed + 7)), m, "non-utf8-name", "either",
                                 "a file name in latin-1: a row (the path stored losslessly) or a named reason"))
        for other in MODALITIES:
            if other != m:
                expect, why = ("either", "FFmpeg opens a PNG as a one-frame image") if (m, other) == (
                    "video", "image") else ("error", f"a {other} file under a {m} extension")
                if m == "text":
                    expect, why = _text_outcome(other)
                add(f"bad/{other}-named{ext}", goods[other], f"wrong-extension-{other}", expect, why)
        for size in (10, 200, 2000):
            garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            add(f"bad/magic-then-garbage-{size}B{ext}", MAGIC[m] + garbage, "magic-then-garbage",
                "either" if m == "text" else "error",
                "a UTF-8 BOM then random bytes: refuse as binary or decode with replacement" if m == "text"
                else "the right magic number followed by random bytes")
        for kind, ext2, content, expect, why in _specific(m):
            add(f"{'edge' if expect == 'ok' else 'bad'}/{kind}{ext2}", content, kind, expect, why)
        loop_a, loop_b = root / m / "bad" / f"loop-a{ext}", root / m / "bad" / f"loop-b{ext}"
        os.symlink(loop_b.name, loop_a)
        os.symlink(loop_a.name, loop_b)
        corpus.cases += [Case(loop_a, m, "symlink-loop", "error", "a symlink loop"),
                         Case(loop_b, m, "symlink-loop", "error", "a symlink loop")]
        dangling = root / m / "bad" / f"dangling{ext}"
        os.symlink("does-not-exist" + ext, dangling)
        corpus.cases.append(Case(dangling, m, "dangling-symlink", "error", "a symlink to nothing"))
    return corpus


def _adder(corpus: Corpus, base: Path, modality: str) -> Callable[..., None]:
    def add(rel: str, content: bytes, kind: str, expect: Expect, why: str) -> None:
        corpus.cases.append(Case(_write(base / rel, content), modality, kind, expect, why))

    return add


def _truncation_outcome(modality: str, size: int, full: int) -> tuple[Expect, str]:
    if modality == "text":
        return ("ok", "a truncated UTF-8 text cut at a word is still text") if size > 3 else (
            "either", "a letter or two is a (tiny) document, or too short to embed")
    if modality == "mesh" and size >= full - 1:
        return "either", "the OFF text loses its last newline only"
    if modality == "image" and size >= full - 1:
        return "either", "only the last byte of the end marker's checksum is cut: every pixel is there"
    if modality == "audio" and size > 44:
        return "either", "the WAV header is whole and some samples are there: read them, or refuse the short file"
    return "error", "a truncated file"


def _text_outcome(other: str) -> tuple[Expect, str]:
    if other == "mesh":
        return "ok", "an OFF mesh is ASCII text: as a document it is valid (if meaningless)"
    return "error", f"a binary {other} file is not text"


def missing_path(root: str | Path, modality: str) -> Path:
    """A path in ``root`` that does not exist (for ``crossmodal extract PATH``)."""
    return Path(root) / modality / "no-such-folder" / f"no-such-file{EXTENSION[modality]}"


def make_feature_files(root: str | Path) -> list[tuple[Path, str, str]]:
    """Benchmark feature files with a NaN or infinite value, and feature matrices likewise: ``(path, dataset, what)``.

    For ``inria`` (MAT v5) and ``nus`` (HDF5), a valid file is written with ``crossmodal.datasets.write_benchmark`` and
    one value of one array is replaced: NaN, +inf or -inf in each feature matrix, NaN in the labels (made float).
    ``load_benchmark(dataset, path)`` must refuse every one. ``dataset == "npy"`` is a float32 (6, 8) matrix for the
    store's ``write_shard``, which must refuse it too.
    """
    import h5py
    import scipy.io

    from crossmodal.datasets import write_benchmark
    from crossmodal.synthetic import make_synthetic

    root = Path(root)
    ds = make_synthetic({"image": 16, "text": 8}, 4, 40, 20, 24, seed=0)
    out = []
    for dataset, name, container in (("inria", "INRIA-Websearch.mat", "mat"), ("nus", "nus-wide.h5py", "hdf5")):
        (root / "valid").mkdir(parents=True, exist_ok=True)
        valid = write_benchmark(dataset, root / "valid" / name, ds, container=container)
        if container == "mat":
            arrays = {k: v for k, v in scipy.io.loadmat(valid).items() if not k.startswith("__")}
        else:
            with h5py.File(valid) as f:
                arrays = {k: f[k][()] for k in f}
        for key, value in arrays.items():
            bad_values = ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")) if value.dtype.kind == "f" else (
                (np.nan, "nan"),)
            for bad, what in bad_values:
                poisoned = dict(arrays)
                poisoned[key] = value.astype(np.float64 if value.dtype.kind != "f" else value.dtype, copy=True)
                poisoned[key].flat[min(5, poisoned[key].size - 1)] = bad
                path = root / f"{dataset}-{key}-{what}" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if container == "mat":
                    scipy.io.savemat(path, poisoned)
                else:
                    with h5py.File(path, "w") as f:
                        for k, v in poisoned.items():
                            f.create_dataset(k, data=v)
                out.append((path, dataset, f"{what} in {key}"))
    rng = np.random.default_rng(0)
    for what, value in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        X = rng.random((6, 8), dtype=np.float32)
        X[1, 1] = value
        path = root / f"features-{what}.npy"
        np.save(path, X)
        out.append((path, "npy", f"{what} in a feature matrix"))
    return out


def report(root: str | Path) -> list[dict]:
    """Make the corpus under ``root``, run ``crossmodal extract`` on each modality's folder in a subprocess, and count
    per modality: files tried, crashes (a non-zero exit, a signal or a traceback), valid files without their row (rows
    lost), bad files not listed with a reason, and files in both or neither place."""
    import hashlib
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    root = Path(root)
    corpus = make_corpus(root / "corpus")
    rows = []
    for m in MODALITIES:
        workspace = root / f"workspace-{m}"
        proc = subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())",
                               "extract", "--modality", m, str(corpus.root / m), "--workspace", str(workspace),
                               "--json", *EXTRACTORS[m]], capture_output=True, text=True)
        crashed = proc.returncode != 0 or "Traceback" in proc.stderr
        errors, hashes = set(), set()
        if not crashed:
            summary = json.loads(proc.stdout)
            errors = {json.loads(line)["path"] for line in Path(summary["errors_file"]).read_text().splitlines()}
            hashes = {h for p in Path(summary["table"]).glob("shards/*.parquet")
                      for h in pq.read_table(p).column("content_hash").to_pylist()}
        counts = {"modality": m, "files tried": len(corpus.of(m)), "bad": len(corpus.bad_of(m)),
                  "valid": len(corpus.of(m, expect="ok")), "crashes": int(crashed),
            "rows": len(hashes), "errors listed": len(errors), "rows lost": 0, "bad not listed": 0,
            "both or neither": 0}
        for c in corpus.of(m):
            try:
                row = hashlib.sha256(c.path.read_bytes()).hexdigest() in hashes
            except OSError:
                row = False
            listed = str(c.path) in errors
            counts["rows lost"] += c.expect == "ok" and not row
            counts["bad not listed"] += c.expect == "error" and not listed
            counts["both or neither"] += row == listed
        rows.append(counts)
    return rows


if __name__ == "__main__":  # python tests/badfiles.py [FOLDER]: the figures of a batch run over the corpus
    import sys
    import tempfile

    table = report(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="badfiles-"))
    columns = list(table[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in [*table, {"modality": "total", **{k: sum(r[k] for r in table) for k in columns[1:]}}]:
        print("| " + " | ".join(str(r[k]) for k in columns) + " |")
