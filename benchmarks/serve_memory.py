"""Memory of ``crossmodal serve`` under hostile queries (issue 15, item 1): idle, during and after each query.

A tiny model is built in a temporary workspace (generated digit images and texts, sine-tone sounds and coloured videos
of ten classes; hog-color, doc2vec, mfcc and frame-stats; a DRCL of 32 hidden units, 3 epochs; its indexes). The real
``crossmodal serve`` then runs in its own process on 127.0.0.1 (a free port; nothing else is contacted), and this
script sends it, one at a time, an ordinary image and then hostile queries: a 10 MB text file, a 1 MiB one (the limit),
a typed text of 10,000 characters, a 3-hour silent FLAC and a 590 s one, a 16x16 MP4 of 100,000 frames and a 64x64
one of 8,900, PNGs of 8000x8000 and 9400x9400 pixels and one of 12000x12000 (past the decompression-bomb limit): each
hostile kind past the extractors' limits and just under them. Each query is sent ``--repeat`` times.

Memory is the resident set (VmRSS) of the server process and of its children (the query process), summed, read from
/proc every 20 ms while the query runs. "idle" is that sum once the server is ready (model, extractors and indexes
loaded); "peak" is the most seen during a query; "after" is the sum once it stops moving after the answer (at least 2 s,
and until a replaced query process has loaded the model again). The target: peak <= idle + 1 GB for any file of
<= 64 MiB, after <= idle + 100 MB.

Usage:

    python benchmarks/serve_memory.py                       # the table on stdout
    python benchmarks/serve_memory.py --out benchmarks/results/serve_memory.md
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
from _memory import status_mb

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "from pipelines.cli import run; run()"
CLASSES = 10


def crossmodal(*args: str, cwd: Path) -> None:
    """Run one ``crossmodal`` verb (fails loudly with its output)."""
    done = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"crossmodal {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def write_tone(path: Path, frequency: float, *, seconds: float = 0.5, rate: int = 8000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (8000 * np.sin(2 * math.pi * frequency * t)).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def write_video(path: Path, colour: tuple[int, int, int], *, frames: int, size: int = 16, fps: int = 25) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), colour, np.uint8), format="rgb24")
        for _ in range(frames):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def build_workspace(root: Path, *, per_class: int = 3) -> Path:
    """Data of four modalities for ten classes, extracted, a tiny DRCL trained and indexed; returns the workspace."""
    from pipelines.demo import generate_digits

    data, workspace = root / "data", root / "ws"
    generate_digits(data, per_class=per_class, modalities=["image", "text"], seed=0)
    for digit in range(CLASSES):
        for i in range(per_class):
            write_tone(data / "audio" / str(digit) / f"{i}.wav", 300 + 120 * digit + 7 * i)
            write_video(data / "video" / str(digit) / f"{i}.mp4", (25 * digit, 200 - 15 * digit, 20 * i), frames=12)
    ws = str(workspace)
    crossmodal("extract", "--modality", "image", "--extractor", "hog-color", str(data / "image"), "--workspace", ws,
               cwd=root)
    crossmodal("extract", "--modality", "text", str(data / "text"), "--set", "min_count=1", "--workspace", ws, cwd=root)
    crossmodal("extract", "--modality", "audio", "--extractor", "mfcc", str(data / "audio"), "--workspace", ws,
               cwd=root)
    crossmodal("extract", "--modality", "video", "--extractor", "frame-stats", str(data / "video"), "--workspace", ws,
               cwd=root)
    crossmodal("train", "--name", "bench", "--epochs", "3", "--set", "hidden=[32]", "--set", "dim=16", "--workspace",
               ws, cwd=root)
    crossmodal("index", "--model", "bench", "--workspace", ws, cwd=root)
    return workspace


def hostile_files(folder: Path) -> list[tuple[str, Path | str, str]]:
    """``(what, file or typed text, target)`` for each query, the ordinary one first."""
    import soundfile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    small = folder / "small.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small)
    words = "the number seven written out in words and then some more words to read "
    long_text, limit_text = folder / "ten-megabytes.txt", folder / "one-mebibyte.txt"
    long_text.write_text((words * (10 * 2**20 // len(words) + 1))[: 10 * 2**20])
    limit_text.write_text((words * (2**20 // len(words) + 1))[: 2**20 - 16])
    silent = folder / "three-hours-silent.flac"
    with soundfile.SoundFile(str(silent), "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as out:
        minute = np.zeros(8000 * 60, np.int16)
        for _ in range(180):
            out.write(minute)
    many = folder / "hundred-thousand-frames.mp4"
    write_video(many, (40, 200, 40), frames=100_000)
    allowed_audio = folder / "nine-minutes-silent.flac"
    with soundfile.SoundFile(str(allowed_audio), "w", samplerate=48000, channels=1, format="FLAC") as out:
        second = np.zeros(48000, np.int16)
        for _ in range(590):
            out.write(second)
    allowed_video = folder / "almost-9000-frames.mp4"
    write_video(allowed_video, (200, 40, 40), frames=8900, size=64)
    big, bigger, bomb = folder / "8000x8000.png", folder / "9400x9400.png", folder / "12000x12000.png"
    Image.new("RGB", (8000, 8000), (30, 30, 200)).save(big)
    Image.new("RGB", (9400, 9400), (30, 200, 30)).save(bigger)
    Image.new("L", (12000, 12000), 0).save(bomb)
    return [("ordinary image (64x64 PNG)", small, "text"),
            ("text file, 10 MB", long_text, "image"),
            ("text file, 1 MiB (the text upload limit)", limit_text, "image"),
            ("typed text, 10,000 characters", (words * 200)[:10_000], "image"),
            ("silent FLAC, 3 hours at 8 kHz", silent, "image"),
            ("silent FLAC, 590 s at 48 kHz (under the duration limit)", allowed_audio, "image"),
            ("MP4 16x16, 100,000 frames", many, "image"),
            ("MP4 64x64, 8,900 frames (under the frame limit)", allowed_video, "image"),
            ("PNG 8000x8000", big, "text"),
            ("PNG 9400x9400 (under max_pixels)", bigger, "text"),
            ("PNG 12000x12000 (past max_pixels)", bomb, "text")]


def tree_rss_mb(pid: int, *, children: bool = True) -> float:
    """Resident memory of ``pid`` and (unless ``children`` is False) all its descendants, in MB (from /proc)."""
    descendants: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if children else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            descendants.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(descendants.get(current, []))
        try:
            total += status_mb("VmRSS", current)
        except (OSError, RuntimeError):
            continue
    return total


class Sampler:
    """The highest tree RSS seen while a block runs, read every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mb(self.pid))


def settled_rss_mb(pid: int, *, at_least_s: float = 2.0, within_mb: float = 3.0, at_most_s: float = 90.0) -> float:
    """The tree RSS once it has stopped moving: unchanged (``within_mb``) over 1.5 s, after at least ``at_least_s``
    (a replaced query process takes several seconds to load the model again)."""
    start = time.monotonic()
    time.sleep(at_least_s)
    readings = [tree_rss_mb(pid)]
    while time.monotonic() - start < at_most_s:
        time.sleep(0.5)
        readings.append(tree_rss_mb(pid))
        if len(readings) >= 4 and max(readings[-4:]) - min(readings[-4:]) <= within_mb:
            break
    return readings[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="times each query is sent")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-memory-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        workspace = build_workspace(root)
        queries = hostile_files(root / "queries")
        print(f"workspace and files ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        port = free_port()
        log = open(root / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-c", ENTRY, "serve", "--workspace", str(workspace), "--model",
                                   "bench", "--port", str(port), "--media-root", str(root / "data")],
                                  cwd=root, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=300) as client:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        if client.get("/api/info").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(f"the server did not start:\n{(root / 'server.log').read_text()}")
                    time.sleep(0.2)
                time.sleep(1)
                idle = tree_rss_mb(server.pid)
                idle_server = tree_rss_mb(server.pid, children=False)
                rows = []
                for what, query, target in queries:
                    for attempt in range(args.repeat):
                        if isinstance(query, Path):
                            size = query.stat().st_size
                            request = {"files": {"file": (query.name, query.read_bytes())},
                                       "data": {"target": target, "k": "5"}}
                        else:
                            size = len(query.encode())
                            request = {"files": {"text": (None, query), "target": (None, target), "k": (None, "5")}}
                        before = tree_rss_mb(server.pid)
                        with Sampler(server.pid) as sampler:
                            t0 = time.perf_counter()
                            response = client.post("/api/query", **request)
                            seconds = time.perf_counter() - t0
                        after = settled_rss_mb(server.pid)
                        answer = response.json()
                        said = "" if response.status_code == 200 else answer.get("error", "")[:90]
                        rows.append((what, size, attempt + 1, response.status_code, seconds, before - idle,
                                     sampler.peak - idle, after - idle, said))
                        print(f"{what} #{attempt + 1}: {response.status_code} in {seconds:.2f} s, peak "
                              f"+{sampler.peak - idle:.0f} MB, after +{after - idle:.0f} MB {said}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
        notes = [line for line in (root / "server.log").read_text().splitlines() if line.startswith("note:")]
    table = render(rows, idle=idle, idle_server=idle_server, notes=notes, repeat=args.repeat)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def render(rows: list[tuple], *, idle: float, idle_server: float, notes: list[str], repeat: int) -> str:
    lines = [
        "# `crossmodal serve` memory under hostile queries",
        "",
        f"Command: `python benchmarks/serve_memory.py --repeat {repeat} --out benchmarks/results/serve_memory.md`",
        f"(2 shared CPU cores; commit {commit()})",
        "",
        f"Server idle: **{idle:.0f} MB** resident, the web process {idle_server:.0f} MB and the query process (model, "
        f"extractors and indexes loaded) {idle - idle_server:.0f} MB. Columns are MB above that idle level: before the",
        "query, the peak during it (sampled every 20 ms), and once settled after it. Targets (issue 15):",
        "peak <= +1024 MB, after <= +100 MB. The query process is stopped past +1024 MB (413) and replaced when a",
        "query leaves it more than +100 MB.",
        "",
        "| query | bytes | # | status | seconds | before | peak | after | refusal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for what, size, attempt, status, seconds, before, peak, after, said in rows:
        lines.append(f"| {what} | {size:,} | {attempt} | {status} | {seconds:.2f} | {before:+.0f} | {peak:+.0f} | "
                     f"{after:+.0f} | {said.replace('|', '/')} |")
    worst_peak = max(r[6] for r in rows)
    worst_after = max(r[7] for r in rows)
    lines += ["", f"Worst peak: {worst_peak:+.0f} MB; worst after: {worst_after:+.0f} MB above idle.", ""]
    if notes:
        lines += ["Server notes during the run:", ""] + [f"    {n}" for n in notes] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
