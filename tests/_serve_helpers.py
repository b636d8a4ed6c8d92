"""Helpers shared by the web-server tests: a tiny media gallery, a fake query function and a live uvicorn server."""

from __future__ import annotations

import contextlib
import math
import socket
import stat
import struct
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EXTENSIONS = frozenset({".png", ".jpg", ".txt", ".wav", ".obj", ".mp4"})
MODALITY_OF = {".png": "image", ".jpg": "image", ".txt": "text", ".wav": "audio", ".obj": "mesh", ".mp4": "video"}
TETRAHEDRON = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


def write_png(path: Path, *, colour: tuple[int, int, int] = (200, 30, 30), size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), 255, np.uint8)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
    Image.fromarray(pixels).save(path)
    return path


def write_wav(path: Path, *, seconds: float = 0.2, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [int(8000 * math.sin(2 * math.pi * 440 * t / rate)) for t in range(int(seconds * rate))]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def write_mp4(path: Path, *, frames: int = 6, size: int = 32) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[:, : (i + 1) * size // frames] = (40, 200, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def make_gallery(workspace: Path) -> dict[tuple[str, str], Path]:
    """One file of each modality (two images) inside ``workspace/raw``; returns ``{(modality, item_id): path}``.

    Ids follow the store's convention (the path under the root without its suffix), so they contain a slash and the
    text, audio, mesh and video of digit 7 share the id ``7/seven``, as the items of a pair do.
    """
    raw = workspace / "raw"
    files = [
        write_png(raw / "7" / "red.png"),
        write_png(raw / "3" / "blue.png", colour=(30, 30, 200)),
        raw / "7" / "seven.txt",
        write_wav(raw / "7" / "seven.wav"),
        raw / "7" / "seven.obj",
        write_mp4(raw / "7" / "seven.mp4"),
    ]
    files[2].write_text("the number seven, written out in words\n", encoding="utf-8")
    files[4].write_text(TETRAHEDRON)
    return {(MODALITY_OF[p.suffix], p.relative_to(raw).with_suffix("").as_posix()): p for p in files}


class FakeQuery:
    """Stands in for ``pipelines.query.query``: records each call and ranks the gallery items of the target modality.

    While a call runs it checks the upload is a private file that exists, and it remembers the upload's bytes.
    """

    def __init__(self, gallery: dict[tuple[str, str], Path], *, delay: float = 0.0):
        self.gallery = gallery
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def __call__(self, workspace: Path, *, model: str, file: Path | None = None, text: str | None = None, target: str,
                 k: int = 10, device: str = "auto") -> dict[str, Any]:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            call = {"workspace": workspace, "model": model, "file": file, "text": text, "target": target, "k": k}
            if file is not None:
                call["bytes"] = file.read_bytes()
                call["folder_mode"] = stat.S_IMODE(file.parent.stat().st_mode)
            with self._lock:
                self.calls.append(call)
            time.sleep(self.delay)
            ids = [i for modality, i in self.gallery if modality == target][:k]
            modality = MODALITY_OF[file.suffix] if file else "text"
            query = {"modality": modality, "file": str(file) if file else None, "text": text,
                     "extractor": f"fake-{modality}@0", "model": model}
            results = [{"rank": r + 1, "score": round(1.0 - 0.1 * r, 4), "item_id": i, "label": i.split("/")[0],
                        "source_path": str(self.gallery[target, i]), "modality": target} for r, i in enumerate(ids)]
            return {"query": query, "target": target, "k": k, "results": results}
        finally:
            with self._lock:
                self.running -= 1


def fake_info(workspace: Path, model: str) -> dict[str, Any]:
    return {"model": model, "method": "drcl", "modalities": ["image", "text", "audio", "mesh", "video"],
            "targets": ["image", "text", "audio", "mesh", "video"]}


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


_TINY: dict[str, Path] = {}


def tiny_workspace(tmp_path_factory: Any) -> tuple[Path, Path]:
    """A real workspace, built once per test session through the CLI: digits images and texts (3 per class), extracted
    (hog-color, doc2vec), a DRCL model ``tiny`` (32-wide, 3 epochs) and its indexes. Returns (workspace, raw data)."""
    from pipelines.cli import main
    from pipelines.demo import generate_digits

    if "root" not in _TINY:
        root = tmp_path_factory.mktemp("tiny")
        data, workspace = root / "data", root / "ws"
        generate_digits(data, per_class=3, modalities=["image", "text"], seed=0)
        for argv in (["extract", "--modality", "image", "--extractor", "hog-color", str(data / "image")],
                     ["extract", "--modality", "text", str(data / "text"), "--set", "min_count=1"],
                     ["train", "--name", "tiny", "--epochs", "3", "--set", "hidden=[32]", "--set", "dim=16"],
                     ["index", "--model", "tiny"]):
            code = main([*argv, "--workspace", str(workspace)])
            if code != 0:
                raise RuntimeError(f"crossmodal {' '.join(argv)} exited with {code}")
        _TINY["root"] = root
    return _TINY["root"] / "ws", _TINY["root"] / "data"
