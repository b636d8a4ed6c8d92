"""Memory of extracting one hostile file, per modality: peak resident memory above the idle process (issue 15, item 1).

Target: any single file of at most 64 MiB costs at most 1 GB above the idle process. The files are built here, each the
kind that used to take memory in proportion to its length rather than its size: a 3-hour silent FLAC of about 0.5 MB,
a 16x16 video of 100,000 frames (MP4, whose index lists its frames, and Matroska, whose index does not), a 64 MiB
text, a decompression-bomb header, a 64 MiB mesh; and, beside each refusal, a file just inside the limit (an image at
89 megapixels, 599 s of audio at 192 kHz...), the most an accepted file can cost.

Each case runs in a process of its own, which imports the libraries, builds the extractor (the idle level is its RSS
then), resets the kernel's peak (``/proc/self/clear_refs``), decodes and embeds the one file, and reports the peak
(``VmHWM`` of ``/proc/self/status``) minus the idle level. A refusal (a ``MediaError`` naming the limit) is an outcome
like an embedding. ``c3d-fc6`` runs with RANDOM weights of 1/64 of C3D's widths (no weights on these machines): its
rows measure the decoded frames, which do not depend on the widths, not the model's own activations; and at the limit
with ``clip_stride=1024`` (9 clips of the 9,000 frames instead of 562), which keeps the same frames in memory and only
shortens the run. Linux only.

Usage:

    python benchmarks/extract_memory.py                 # every case, about 3 minutes on 2 cores
    python benchmarks/extract_memory.py --cases audio   # the cases whose name contains "audio"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _memory import peak_rss_mb, rss_mb

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB = 1024
MiB = 2**20


# ------------------------------------------------------------------------------------------------ hostile files


def silent_flac(path: Path, *, seconds: float, rate: int = 16000) -> None:
    """Silence compresses to almost nothing: 3 hours at 16 kHz is about 0.5 MB."""
    import soundfile as sf

    block = np.zeros(rate * 60, np.int16)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds * rate), len(block)):
            f.write(block[:min(len(block), int(seconds * rate) - start)])


def tone_flac(path: Path, *, seconds: float, rate: int) -> None:
    """A 440 Hz tone (whole periods per second, so every second is the same block): decoded at ``rate``, then
    resampled to 22,050 Hz, where the decoder's and the resampler's memory both count."""
    import soundfile as sf

    second = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 32767).astype(np.int16)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(second)


def silent_m4a(path: Path, *, seconds: float, rate: int = 8000) -> None:
    """AAC in MP4: soundfile cannot read it, so PyAV decodes it frame by frame, without a length known beforehand."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        block = np.zeros((1, 1024), np.float32)
        for k in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def tiny_video(path: Path, *, frames: int) -> None:
    """A 16x16 grey video: a few bytes per frame, so 100,000 frames fit in about a megabyte."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        image = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 90, np.uint8), format="rgb24")
        for k in range(frames):
            image.pts = k
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def words_text(path: Path, *, size: int) -> None:
    """English-like words with spaces: every tokeniser sees many tokens."""
    line = b"the quick brown fox jumps over the lazy dog while seven wizards quietly judge the boxing match\n"
    with open(path, "wb") as f:
        f.write(line * (size // len(line)) + line[:size % len(line)])


def one_word_text(path: Path, *, size: int) -> None:
    """One word without any whitespace: nowhere to cut a prefix, the worst case of minilm's bounded tokenisation."""
    path.write_bytes(b"a" * size)


def gradient_png(path: Path, *, side: int) -> None:
    from PIL import Image

    row = np.linspace(0, 255, side).astype(np.uint8)
    Image.fromarray(np.broadcast_to(row, (side, side))).convert("RGB").save(path, compress_level=1)


def bomb_png(path: Path, *, side: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from _extract_media import png_header

    path.write_bytes(png_header(side, side))


def random_stl(path: Path, *, size: int) -> None:
    """A binary STL of random triangles in the unit cube, ``size`` bytes: 84 + 50 per triangle."""
    count = (size - 84) // 50
    record = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    triangles = np.zeros(count, record)
    triangles["vertices"] = np.random.default_rng(0).random((count, 3, 3), dtype=np.float32)
    with open(path, "wb") as f:
        f.write(b"\0" * 80 + count.to_bytes(4, "little"))
        triangles.tofile(f)


def surface_stl(path: Path, *, triangles: int) -> None:
    """A binary STL of small triangles scattered over a sphere: as many triangles as a big scan, cheap to ray-cast."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((triangles, 1, 3)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    record = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    rows = np.zeros(triangles, record)
    rows["vertices"] = centres + 0.01 * rng.standard_normal((triangles, 3, 3)).astype(np.float32)
    with open(path, "wb") as f:
        f.write(b"\0" * 80 + triangles.to_bytes(4, "little"))
        rows.tofile(f)


def c3d_tiny_weights(path: Path) -> None:
    import torch

    from extractors.video import C3D

    torch.manual_seed(0)
    torch.save(C3D(1 / 64).state_dict(), path)


def doc2vec_model(folder: Path) -> None:
    from extractors import create_extractor
    from extractors.text import save_doc2vec

    sentences = ["the quick brown fox jumps over the lazy dog", "seven wizards quietly judge the boxing match"] * 20
    save_doc2vec(create_extractor("doc2vec", min_count=1, epochs=5).fit(sentences), folder)


# (name, file, builder) and (case, extractor, file, config)
FILES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("3 h silent FLAC", "silent-3h.flac", lambda p: silent_flac(p, seconds=3 * 3600)),
    ("599 s tone FLAC, 44.1 kHz", "tone-599s.flac", lambda p: tone_flac(p, seconds=599, rate=44100)),
    ("599 s tone FLAC, 192 kHz", "tone-599s-192k.flac", lambda p: tone_flac(p, seconds=599, rate=192_000)),
    ("15 min silent AAC (.m4a)", "silent-15min.m4a", lambda p: silent_m4a(p, seconds=900)),
    ("16x16 MP4, 100,000 frames", "frames-100k.mp4", lambda p: tiny_video(p, frames=100_000)),
    ("16x16 MKV, 100,000 frames", "frames-100k.mkv", lambda p: tiny_video(p, frames=100_000)),
    ("16x16 MP4, 9,000 frames", "frames-9000.mp4", lambda p: tiny_video(p, frames=9000)),
    ("64 MiB text", "words-64MiB.txt", lambda p: words_text(p, size=64 * MiB)),
    ("16 MiB text (the limit)", "words-16MiB.txt", lambda p: words_text(p, size=16 * MiB)),
    ("16 MiB text, one word", "one-word-16MiB.txt", lambda p: one_word_text(p, size=16 * MiB)),
    ("9459x9459 PNG (the 89 Mpx limit)", "gradient-89Mpx.png", lambda p: gradient_png(p, side=9459)),
    ("PNG header of 10^10 px", "bomb.png", lambda p: bomb_png(p, side=100_000)),
    ("64 MiB binary STL", "random-64MiB.stl", lambda p: random_stl(p, size=64 * MiB)),
    ("STL of 500,000 triangles", "surface-500k.stl", lambda p: surface_stl(p, triangles=500_000)),
]
CASES: list[tuple[str, str, str, dict]] = [
    ("audio", "mfcc", "silent-3h.flac", {}),
    ("audio", "mfcc", "tone-599s.flac", {}),
    ("audio", "mfcc", "tone-599s-192k.flac", {}),
    ("audio", "mfcc", "silent-15min.m4a", {}),
    ("video", "frame-stats", "frames-100k.mp4", {}),
    ("video", "frame-stats", "frames-100k.mkv", {}),
    ("video", "frame-stats", "frames-9000.mp4", {}),
    ("video", "c3d-fc6", "frames-100k.mkv", {"width_multiplier": 1 / 64}),
    ("video", "c3d-fc6", "frames-9000.mp4", {"width_multiplier": 1 / 64, "clip_stride": 1024}),
    ("text", "minilm", "words-64MiB.txt", {}),
    ("text", "minilm", "words-16MiB.txt", {}),
    ("text", "minilm", "one-word-16MiB.txt", {}),
    ("text", "minilm", "words-16MiB.txt", {"max_chunks": 8}),
    ("text", "doc2vec", "words-64MiB.txt", {}),
    ("text", "doc2vec", "words-16MiB.txt", {}),
    ("image", "hog-color", "gradient-89Mpx.png", {}),
    ("image", "hog-color", "bomb.png", {}),
    ("mesh", "lightfield", "random-64MiB.stl", {}),
    ("mesh", "lightfield", "surface-500k.stl", {}),
]


# -------------------------------------------------------------------------------------------------- measuring


def run_case(extractor: str, path: Path, config: dict) -> dict:
    """In the child: build the extractor, then measure load + embed of ``path`` above that idle level."""
    from extractors import MediaError, create_extractor

    ext = create_extractor(extractor, **config)
    ext.dim  # noqa: B018 (models that load lazily load now, before the idle level)
    if extractor == "minilm":
        ext.windowed_prefix("warm up")
    if extractor == "doc2vec":
        ext.model  # noqa: B018 (gensim and the model, loaded on first use)
    idle = rss_mb()
    peak_rss_mb(reset=True)  # VmHWM := VmRSS: the peak of what follows, not of the imports
    started = time.perf_counter()
    try:
        row = ext([ext.load(path)])
        outcome = f"embedded, {row.shape[1]} values"
    except MediaError as exc:
        outcome = f"refused: {exc.reason}"
    return {"idle_mb": idle, "above_idle_mb": peak_rss_mb() - idle,
            "seconds": time.perf_counter() - started, "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="only the cases whose modality, extractor or file contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract_memory.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(run_case(job["extractor"], Path(job["path"]), job["config"])))
        return

    cases = [c for c in CASES if not args.cases or any(args.cases in str(part) for part in c[:3])]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="extract-memory-") as tmp:
        folder = Path(tmp)
        names = {file: name for name, file, _ in FILES}
        for name, file, build in FILES:
            if any(case[2] == file for case in cases):
                build(folder / file)
        weights, model = folder / "c3d-tiny.pth", folder / "doc2vec"
        c3d_tiny_weights(weights)
        doc2vec_model(model)
        rows = []
        for modality, extractor, file, config in cases:
            config = dict(config)
            config.update({"c3d-fc6": {"weights": str(weights)}, "doc2vec": {"model_path": str(model)}}.get(extractor,
                                                                                                            {}))
            job = json.dumps({"extractor": extractor, "path": str(folder / file), "config": config})
            env = dict(os.environ, CROSSMODAL_CACHE_DIR=str(folder / "cache"), HF_HUB_OFFLINE="1",
                       TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
            done = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True, text=True,
                                  env=env, cwd=ROOT, check=False)
            if done.returncode:
                raise SystemExit(f"{extractor} on {file} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            options = ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("weights", "model_path"))
            rows.append((modality, extractor + (f" ({options})" if options else ""), names[file],
                         (folder / file).stat().st_size, result))
            print(f"{modality:6} {rows[-1][1]:40} {names[file]:28} {result['above_idle_mb']:8.1f} MB "
                  f"{result['seconds']:6.1f} s  {result['outcome'][:90]}", flush=True)
    write_table(args.out, rows, time.perf_counter() - started, args.cases)


def write_table(out: Path, rows: list, seconds: float, selection: str) -> None:
    worst = max(r[4]["above_idle_mb"] for r in rows)
    lines = [
        "# Extraction memory per hostile file (issue 15, item 1)",
        "",
        f"Target: any single file of at most 64 MiB costs at most {TARGET_MB} MB above the idle process. "
        f"Worst case here: **{worst:.0f} MB** ({'met' if worst <= TARGET_MB else 'NOT met'}).",
        "",
        "| modality | extractor | file | file size | above idle (MB) | idle (MB) | seconds | outcome |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for modality, extractor, name, size, r in rows:
        outcome = r["outcome"].replace("|", "/")
        lines.append(f"| {modality} | {extractor} | {name} | {size / MiB:.2f} MiB | {r['above_idle_mb']:.1f} | "
                     f"{r['idle_mb']:.0f} | {r['seconds']:.1f} | {outcome} |")
    command = "python benchmarks/extract_memory.py" + (f" --cases {selection}" if selection else "")
    lines += [
        "",
        "Above idle: the kernel's peak resident size (VmHWM, reset just before the file) minus the resident size of "
        "the process with its extractor built, for decoding and embedding that one file in a fresh process. "
        "c3d-fc6 runs with random weights of 1/64 of C3D's widths: its rows measure the decoded frames, not C3D's "
        "activations (which depend on clips_per_batch, not on the file); clip_stride=1024 embeds 9 of the 562 clips "
        "to keep the run short, with the same frames in memory.",
        "",
        f"Command: `{command}` ({seconds:.0f} s in all; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
