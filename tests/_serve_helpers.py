"""Helpers shared by the web-server tests: a tiny media gallery, a fake query function and a live uvicorn server."""

from __future__ import annotations

import contextlib
import math
import os
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


_KEPT: list[np.ndarray] = []


def hungry_query(workspace: Path, *, model: str, file: Path | None = None, text: str | None = None, target: str,
                 k: int = 10, device: str = "auto") -> dict[str, Any]:
    """A query for ``QueryProcess`` tests, run in its child: ``text`` is ``"MB"`` (touch MB megabytes for 0.3 s, then
    free them), ``"keep MB"`` (touch them and keep them) or ``"crash"`` (end the process without answering)."""
    if text == "crash":
        os._exit(3)
    words = (text or "0").split()
    held = np.ones(int(float(words[-1]) * 2**20) // 8)  # ones, not zeros: every page is touched and resident
    if words[0] == "keep":
        _KEPT.append(held)
    time.sleep(0.3)
    return {"query": {"modality": "text", "file": None, "text": text, "extractor": "hungry@0", "model": model},
            "target": target, "k": k, "results": []}


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
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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


# --------------------------------------------------------------------------------------------- malformed requests
BOUNDARY = "crossmodal0boundary"


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY, end: bool = True) -> bytes:
    """A multipart body from raw ``(part headers, content)`` pairs, so that each piece can be broken on purpose."""
    body = b"".join(f"--{boundary}\r\n{headers}\r\n\r\n".encode("utf-8", "surrogateescape") + content + b"\r\n"
                    for headers, content in parts)
    return body + (f"--{boundary}--\r\n".encode() if end else b"")


def field(name: str, value: str | bytes) -> tuple[str, bytes]:
    return f'Content-Disposition: form-data; name="{name}"', value if isinstance(value, bytes) else value.encode()


def upload(filename: str, content: bytes = b"\x89PNG\r\n", name: str = "file") -> tuple[str, bytes]:
    return f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/png', content


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
TEXT = field("text", "seven")
TARGET = field("target", "image")


def malformed_requests() -> list[tuple[str, str, str, dict[str, str | bytes], bytes]]:
    """``(name, method, path, headers, body)`` of requests a client gets wrong, each of which must be refused with a
    4xx and a one-line JSON message: broken multipart, bad fields and values, wrong content types, foreign hosts and
    origins, unknown routes and methods, traversal in item ids. The Host is 127.0.0.1:8000 unless a header says."""
    rng = np.random.default_rng(15)
    post: list[tuple[str, dict[str, str | bytes], bytes]] = []

    def form(name: str, *parts: tuple[str, bytes], content_type: str = MULTIPART, **options: Any) -> None:
        post.append((name, {"Content-Type": content_type}, multipart(*parts, **options)))

    # the multipart framing itself
    form("boundary in the header differs from the body's", TEXT, TARGET, content_type="multipart/form-data; boundary=x")
    for length in (257, 5000):  # RFC 2046 says at most 70; python-multipart refuses past 256
        b = "b" * length
        form(f"boundary of {length} characters", TEXT, TARGET, boundary=b,
             content_type=f"multipart/form-data; boundary={b}")
    for b in ('""', "a b", ";", "=="):
        form(f"odd boundary {b!r}", TEXT, TARGET, content_type=f"multipart/form-data; boundary={b}")
    for size in (0, 1, 100, 4096, 65_536):
        post.append((f"{size} random bytes", {"Content-Type": MULTIPART}, rng.bytes(size)))
    post.append(("body is the boundary alone", {"Content-Type": MULTIPART}, f"--{BOUNDARY}".encode()))
    post.append(("body ends inside a part header", {"Content-Type": MULTIPART},
                 f"--{BOUNDARY}\r\nContent-Disposition: form-da".encode()))
    post.append(("no closing boundary", {"Content-Type": MULTIPART}, multipart(TEXT, TARGET, end=False)))
    post.append(("LF line endings", {"Content-Type": MULTIPART}, multipart(TEXT, TARGET).replace(b"\r\n", b"\n")))
    post.append(("CR line endings", {"Content-Type": MULTIPART}, multipart(TEXT, TARGET).replace(b"\r\n", b"\r")))
    post.append(("garbage before the first boundary", {"Content-Type": MULTIPART},
                 b"\x00\xff" * 500 + b"\r\n" + multipart(TEXT, TARGET)))
    for size in (9_000, 20_000, 1_000_000):
        form(f"part header of {size} bytes", (f'Content-Disposition: form-data; name="text"; x="{"a" * size}"',
                                              b"seven"), TARGET)
    form("part with 200 headers", ("\r\n".join(["X-A: b"] * 200) + '\r\nContent-Disposition: form-data; name="text"',
                                   b"seven"), TARGET)
    form("part header without a colon", ("Content-Disposition form-data name=text", b"seven"), TARGET)
    form("part without Content-Disposition", ("Content-Type: text/plain", b"seven"), TARGET)
    form("Content-Disposition without a name", ("Content-Disposition: form-data", b"seven"), TARGET)
    form("field name of undecodable bytes", ('Content-Disposition: form-data; name="\udcff\udcfe"', b"x"), TEXT, TARGET)
    form("field value of undecodable bytes", field("text", b"\xff\xfe\xfd"), field("target", b"\xff\xfe"))
    # fields: which, how many, how large
    form("no field at all")
    form("a target but no file or text", TARGET)
    form("a text but no target", TEXT)
    form("both a file and a text", upload("a.png"), TEXT, TARGET)
    form("two files", upload("a.png"), upload("b.png"), TARGET)
    form("a file under another name", upload("a.png", name="picture"), TARGET)
    form("the text sent as a file", upload("seven.txt", b"seven", name="text"), TARGET)
    form("the file sent as a value", field("file", "a.png"), TARGET)
    form("an unknown field", TEXT, TARGET, field("callback", "x"))
    form("the target twice", TEXT, TARGET, field("target", "text"))
    form("six fields", TEXT, TARGET, *[field(f"f{i}", "x") for i in range(4)])
    form("a field of 65 KiB", field("text", "x" * 65_537), TARGET)
    form("a text of 10,001 characters", field("text", "x" * 10_001), TARGET)
    form("a text of spaces", field("text", "   "), TARGET)
    for filename in ("", "evil.exe", "a.png\x00.exe", "../../etc/passwd", "a." + "p" * 300, ".png", "\udcff"):
        form(f"upload named {filename[:30]!r}", upload(filename), TARGET)
    form("a text file of 2 MiB", upload("long.txt", b"word " * 420_000), TARGET)
    # field values
    for k in ("\u00b2", "-1", "1e9", "", " ", "0", "101", "10.0", "0x10", "\uff11\uff10", "\u0663", "9" * 100,
              "1_0", "+5", "NaN", "inf", "\x00", "5 5", "None", "[1]", "99999999999999999999999"):
        form(f"k={k[:24]!r}", TEXT, TARGET, field("k", k))
    for target in ("smell", "", "../image", "x" * 1000, "\x00", "image\r\nX-Injected: 1"):
        form(f"target={target[:12]!r}", TEXT, field("target", target))
    # content types
    for content_type in ("application/json", "text/plain", "application/octet-stream", "multipart/mixed; boundary=x",
                         "multipart/form-data", "multipart/form-data; boundary=", ";;;", "\u00e9", "",
                         "multipart/form-data; boundary=\u00e9t\u00e9"):
        post.append((f"Content-Type {content_type!r}", {"Content-Type": content_type.encode()},
                     multipart(TEXT, TARGET)))
    post.append(("a url-encoded form", {"Content-Type": "application/x-www-form-urlencoded"},
                 b"text=seven&target=image"))
    # sizes announced
    for length in ("99999999999999999999", "67108865"):
        post.append((f"Content-Length {length}", {"Content-Type": MULTIPART, "Content-Length": length}, b""))
    # who is asking
    for host in ("attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", "[::1", "127.0.0.1:abc",
                 "127.0.0.1:99999", "", "user@127.0.0.1", "127.0.0.2", "127.0.0.1:8000/x", "127.0.0.1 ", "::1",
                 "\u00e9.localhost"):
        post.append((f"Host {host!r}", {"Content-Type": MULTIPART, "Host": host.encode()}, multipart(TEXT, TARGET)))
    for origin in ("http://attacker.example", "http://127.0.0.1:9999", "null", "https://127.0.0.1:8000",
                   "http://localhost:8000", "http://127.0.0.1:8000.attacker.example", "javascript:alert(1)"):
        post.append((f"Origin {origin!r}", {"Content-Type": MULTIPART, "Origin": origin}, multipart(TEXT, TARGET)))

    requests = [(name, "POST", "/api/query", headers, body) for name, headers, body in post]
    for path in ("/api/media/image/../../../etc/passwd", "/api/media/image/..%2f..%2fetc%2fpasswd",
                 "/api/media/image/%2e%2e/%2e%2e/secret", "/api/media/image//etc/passwd", "/api/media/image/%00",
                 "/api/media/smell/7/red", "/api/media/image/", "/api/media/image/" + "a" * 5000,
                 "/api/preview/image/..%5c..%5cwindows", "/api/preview/audio/7/seven", "/api/media/image/7/red%00.png",
                 "/api/nothing", "/static/../pipelines/serve.py", "/%2e%2e/%2e%2e/etc/passwd", "/api/media/image/~"):
        requests.append((f"GET {path[:50]}", "GET", path, {}, b""))
    requests.append(("GET of the query route", "GET", "/api/query", {}, b""))
    requests.append(("PUT of the query route", "PUT", "/api/query", {"Content-Type": MULTIPART},
                     multipart(TEXT, TARGET)))
    requests.append(("DELETE of the page", "DELETE", "/", {}, b""))
    requests.append(("GET with a foreign Host", "GET", "/api/media/image/7/red", {"Host": "attacker.example"}, b""))
    return requests
