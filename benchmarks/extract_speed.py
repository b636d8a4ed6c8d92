"""Extraction throughput: items/s through the full pipeline beside the bare model on already-decoded input.

For each extractor, ``--items`` small generated files of its modality (real ModelNet meshes, rescaled so each file is
distinct, when ../shared/data is present) are extracted twice in the same process:

* **pipeline**: :func:`pipelines.extract.run_extract` into a temporary workspace (scan, hash, decode in processes,
  embed in batches, write shards); its ``items_per_second`` counts the extraction phase;
* **bare model**: every file decoded first (``extractor.load``), then only ``extractor(batch)`` is timed.

The ratio pipeline / bare is the issue's target (>= 0.9: decoding must not be the bottleneck). The single-core
extractors (``Extractor.single_core``: hog-color, doc2vec, mfcc, frame-stats) run a copy of the model in each worker
process, so their pipeline can beat one bare model. Beside it, the machine's limit: with every core busy, a pipeline
cannot beat cores / (decode CPU + model CPU) per item. Where decoding costs more CPU than the model (``frame-stats``: an
MPEG-4 video decodes in several times the milliseconds its statistics take) that limit is below the bare model's rate,
and steady / limit is the figure that says whether the pipeline wastes anything.

``vgg19-fc7`` and ``c3d-fc6`` run with RANDOM weights made here, only to time the forward pass (these machines cannot
download the real ones): their features mean nothing.

``--files N`` adds a memory run: N tiny files through the pipeline with ``--memory-extractor`` while a thread samples
the memory of the process and its workers; at the start, middle and end of the run it shows whether memory stays flat.

Usage:

    OMP_NUM_THREADS=2 python benchmarks/extract_speed.py --items 1000 --heavy-items 48 --fast-items 4000 --files 10000
    python benchmarks/extract_speed.py --extractors mfcc,lightfield --items 16      # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extractors import create_extractor  # noqa: E402
from extractors.base import set_decoder_threads  # noqa: E402
from extractors.registry import get_extractor_class  # noqa: E402
from pipelines.extract import ExtractOptions, decode_workers, models_in_workers, run_extract  # noqa: E402

ALL = ("hog-color", "vgg19-fc7", "minilm", "doc2vec", "mfcc", "lightfield", "frame-stats", "c3d-fc6")
RANDOM_WEIGHTS = ("vgg19-fc7", "c3d-fc6")
HEAVY = ("vgg19-fc7", "c3d-fc6", "lightfield")  # seconds per item on 2 cores: measured on --heavy-items files
FAST = ("doc2vec",)  # a fraction of a millisecond per item: measured on --fast-items files
SHARED_MESHES = ROOT.parent / "shared" / "data" / "meshes"
WORDS = ("the small red bird sings on an old oak tree near the river bank while a dog sleeps and the market falls as "
         "investors sell shares of banks after the storm").split()


# --------------------------------------------------------------------------------------------------- generated media


def write_images(root: Path, n: int, rng: np.random.Generator) -> None:
    from PIL import Image, ImageDraw

    for i in range(n):
        img = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, 280), rng.integers(0, 200)
            draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(_file(root, i, ".png"))


def write_texts(root: Path, n: int, rng: np.random.Generator) -> None:
    for i in range(n):
        _file(root, i, ".txt").write_text(" ".join(rng.choice(WORDS, 60)) + ".\n")


def write_audio(root: Path, n: int, rng: np.random.Generator, *, seconds: float = 1.0, rate: int = 16000) -> None:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        y = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(_file(root, i, ".wav")), y.astype(np.float32), rate, subtype="PCM_16")


def write_meshes(root: Path, n: int, rng: np.random.Generator) -> None:
    import open3d as o3d

    sources = sorted(SHARED_MESHES.rglob("*.off")) if SHARED_MESHES.is_dir() else []
    shapes = [o3d.io.read_triangle_mesh(str(p)) for p in sources] or [
        o3d.geometry.TriangleMesh.create_torus(), o3d.geometry.TriangleMesh.create_cone(),
        o3d.geometry.TriangleMesh.create_box(1, 2, 3) + o3d.geometry.TriangleMesh.create_sphere(0.8)]
    for i in range(n):
        mesh = o3d.geometry.TriangleMesh(shapes[i % len(shapes)])
        mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) * rng.uniform(0.5, 2.0, 3))
        o3d.io.write_triangle_mesh(str(_file(root, i, ".ply")), mesh)


def write_videos(root: Path, n: int, rng: np.random.Generator, *, frames: int = 32) -> None:
    import av

    for i in range(n):
        with av.open(str(_file(root, i, ".mp4")), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for t in range(frames):
                frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * t, axis=1), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


WRITERS: dict[str, Callable[[Path, int, np.random.Generator], None]] = {
    "image": write_images, "text": write_texts, "audio": write_audio, "mesh": write_meshes, "video": write_videos,
}


def _file(root: Path, i: int, ext: str) -> Path:
    folder = root / f"class{i % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"item{i:05d}{ext}"


# ------------------------------------------------------------------------------------------------------ measurements


@dataclasses.dataclass
class Row:
    extractor: str
    modality: str
    dim: int
    items: int
    pipeline_per_s: float  # N items / extraction-phase seconds of run_extract
    steady_per_s: float  # (N - 1) / (seconds for N - seconds for 1 item): without the one-time model build
    bare_per_s: float
    bare_cpu_s: float  # process CPU seconds per item of the bare model (all threads): wall on an idle machine is less
    decode_cpu_s: float  # CPU seconds per item of ``extractor.load`` (one thread)
    threads: int  # the pipeline's worker processes
    replicated: bool  # each worker runs its own copy of the model (a single_core extractor)
    busy_per_s: float  # the bare model while every other core runs a busy loop in another process
    note: str

    @property
    def ratio(self) -> float:
        return self.steady_per_s / self.bare_per_s if self.bare_per_s else float("nan")

    @property
    def single_threaded(self) -> bool:
        return self.bare_cpu_s * self.bare_per_s < 1.3

    @property
    def limit_per_s(self) -> float:
        """The most a pipeline can do on this machine: no more than every core busy with decoding plus the model's CPU
        time; where one model is fed by decoders, also no more than the bare model, and for a model on one core no
        more than it runs while the other cores work (they decode), which on this VM costs it up to 10 %."""
        machine = (os.cpu_count() or 1) / (self.decode_cpu_s + self.bare_cpu_s)
        if self.replicated:
            return machine
        return min(self.busy_per_s if self.single_threaded and self.threads else self.bare_per_s, machine)


def bare_rate(extractor: Any, decoded: list[Any], batch_size: int, *, busy_cores: int = 0) -> tuple[float, float]:
    """(items per second, CPU seconds per item) of ``extractor(batch)`` over ``decoded``, with ``busy_cores`` other
    processes spinning meanwhile (what decoding does to the model's core on a machine whose cores share hardware)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy_cores)]
    try:
        time.sleep(0.3 if spinners else 0.0)
        start, cpu = time.perf_counter(), time.process_time()
        for b in range(0, len(decoded), batch_size):
            extractor(decoded[b:b + batch_size])
        return len(decoded) / (time.perf_counter() - start), (time.process_time() - cpu) / len(decoded)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def random_weights(name: str, folder: Path) -> dict[str, str]:
    """Overrides pointing ``name`` at a file of random weights of its architecture (timing only)."""
    import torch

    torch.manual_seed(0)
    if name == "c3d-fc6":
        from extractors.video import C3D

        state = C3D().state_dict()
    else:
        import torchvision

        state = torchvision.models.vgg19(weights=None).state_dict()
    path = folder / f"{name}-RANDOM.pth"
    torch.save(state, path)
    return {"weights": str(path)}


def measure(name: str, *, items: int, batch_size: int, workers: int | None, decode: str | None, work: Path,
            seed: int) -> Row:
    modality = get_extractor_class(name).modality
    media = work / f"media-{name}"
    WRITERS[modality](media, items, np.random.default_rng(seed))
    overrides = random_weights(name, work) if name in RANDOM_WEIGHTS else {}
    files = sorted(p for p in media.rglob("*") if p.is_file())

    extractor = create_extractor(name, **overrides)
    prepare = getattr(extractor, "prepare", None)
    if prepare is not None:  # doc2vec fits on the corpus first (not timed)
        from extractors.base import file_sha256

        prepare([(file_sha256(p), p) for p in files], cache_dir=work / f"fitted-{name}")
    set_decoder_threads(1)  # as in the pipeline's decoding processes
    cpu = time.process_time()
    decoded = [extractor.load(p) for p in files]
    decode_cpu = (time.process_time() - cpu) / len(files)
    set_decoder_threads(None)
    extractor(decoded[:1])  # warm-up: lazy model build, numba kernels, cached rays
    with threadpool_limits(limits=1, user_api="blas"):  # as the pipeline runs it (pipelines.extract.extract_items)
        bare, bare_cpu = bare_rate(extractor, decoded, batch_size)
        busy = bare_rate(extractor, decoded, batch_size, busy_cores=(os.cpu_count() or 1) - 1)[0]

    def pipeline_seconds(folder: Path, expected: int, run: int = 0) -> float:
        summary = run_extract(work / f"ws-{name}-{expected}-{run}", modality, [folder], ExtractOptions(
            extractor=name, overrides=overrides, batch_size=batch_size, workers=workers, device="cpu", progress=False,
            decode=decode))
        if summary.extracted != expected:
            raise RuntimeError(f"{name}: the pipeline extracted {summary.extracted} of {expected} items ({summary})")
        return expected / summary.items_per_second

    one = work / f"one-{name}"
    (one / "class0").mkdir(parents=True)
    (one / "class0" / files[0].name).write_bytes(files[0].read_bytes())
    first = min(pipeline_seconds(one, 1, run) for run in range(2))  # the first run also pays process-wide warm-ups
    total = pipeline_seconds(media, items)
    steady = (items - 1) / (total - first) if total > first else float("nan")
    note = "RANDOM weights (timing only)" if name in RANDOM_WEIGHTS else ""
    if name == "lightfield":
        note = f"256x256: {1 / bare:.2f} s/mesh bare, {bare_cpu:.2f} CPU-s/mesh"
    return Row(name, modality, extractor.dim, items, items / total, steady, bare, bare_cpu, decode_cpu,
               decode_workers(extractor, workers, decode=decode), models_in_workers(extractor, workers, decode=decode),
               busy, note)


def _memory_mb() -> float:
    """Proportional set size (MB) of this process and every process below it (the pipeline's workers): pages the
    forked workers share with it count once, not once per process as resident sizes would."""
    total, pending = 0.0, [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
        except (OSError, StopIteration):  # a worker that exited meanwhile
            continue
    return total


def memory_run(name: str, *, files: int, batch_size: int, workers: int | None, work: Path) -> dict[str, float]:
    """Memory (MB, :func:`_memory_mb`) at the start, middle and end of a pipeline run over ``files`` tiny files, and
    the peak."""
    modality = get_extractor_class(name).modality
    media = work / f"memory-{name}"
    rng = np.random.default_rng(1)
    if modality == "audio":
        write_audio(media, files, rng, seconds=0.05, rate=8000)
    else:
        WRITERS[modality](media, files, rng)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), _memory_mb()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    before = _memory_mb()
    sampler.start()
    start = time.perf_counter()
    summary = run_extract(work / f"ws-memory-{name}", modality, [media], ExtractOptions(
        extractor=name, batch_size=batch_size, workers=workers, device="cpu", progress=False))
    end = time.perf_counter()
    done.set()
    sampler.join()
    if summary.extracted != files:
        raise RuntimeError(f"memory run: extracted {summary.extracted} of {files}")

    def at(fraction: float) -> float:
        t = start + fraction * (end - start)
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    return {"files": files, "before": before, "start": at(0.05), "middle": at(0.5), "end": at(1.0),
            "peak": max(s[1] for s in samples), "items_per_s": summary.items_per_second, "seconds": end - start}


# ------------------------------------------------------------------------------------------------------------ report


def report(rows: list[Row], memory: dict[str, float] | None, memory_extractor: str, args: argparse.Namespace) -> str:
    import torch

    lines = [
        "# Extraction throughput",
        "",
        f"`{' '.join(['python', 'benchmarks/extract_speed.py', *sys.argv[1:]])}`: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch threads "
        f"{torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.workers if args.workers is not None else 'the pipeline default number of'} decoding threads, CPU only. "
        "Nothing else ran on the machine.",
        "",
        "| extractor | modality | dim | items | pipeline items/s | pipeline steady items/s | bare model items/s | "
        "ratio steady/bare | workers | decode CPU ms/item | bare CPU ms/item | bare, other cores busy | "
        "machine limit items/s | steady/limit | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {r.extractor} | {r.modality} | {r.dim} | {r.items} | {r.pipeline_per_s:.2f} | "
              f"{r.steady_per_s:.2f} | {r.bare_per_s:.2f} | {r.ratio:.2f} | {r.threads} | {1e3 * r.decode_cpu_s:.2f} | "
              f"{1e3 * r.bare_cpu_s:.2f} | {r.busy_per_s:.2f}{'' if r.single_threaded else ' (uses every core)'} | "
              f"{r.limit_per_s:.2f} | {r.steady_per_s / r.limit_per_s:.2f} | {r.note} |" for r in rows]
    lines += ["", "pipeline: `run_extract` (scan, sha256, decode in worker processes, embed, shard writes), extraction "
              "phase, N items. steady: (N - 1) / (T(N) - T(1)), which removes the one-time model build of a fresh "
              "extractor. bare: `extractor(batch)` on inputs decoded beforehand, after a warm-up call. ratio = "
              "steady / bare (target >= 0.9). decode / bare CPU: process CPU time (every thread) per item of "
              "`extractor.load` (one FFmpeg thread, as in the worker processes) and of the bare model, numpy's "
              "BLAS on one thread as in the pipeline. workers: the pipeline's worker processes; *each runs a copy "
              "of the model* for the single-core extractors (hog-color, doc2vec, mfcc, frame-stats), which is why "
              "their pipeline beats one bare model, else they only decode. bare, other cores busy: the bare model "
              "while a busy loop runs in another process on every other core. machine limit: cores / (decode CPU + "
              "bare CPU) for the single-core extractors; for the others also at most the bare model's rate (for a "
              "single-threaded model with decoding workers, its rate with the other cores busy). Where decoding "
              "costs more CPU than the model (frame-stats) the limit is below the bare rate; steady/limit says how "
              "much of what is possible the pipeline gets."]
    if memory is not None:
        lines += ["", f"## Memory over a long run ({memory_extractor}, {memory['files']:,} tiny files)", "",
                  "Proportional set size of the process and its worker processes (shared pages counted once).", "",
                  "| before | start | middle | end | peak | items/s | seconds |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {memory['before']:.0f} MB | {memory['start']:.0f} MB | {memory['middle']:.0f} MB | "
                  f"{memory['end']:.0f} MB | {memory['peak']:.0f} MB | {memory['items_per_s']:.1f} | "
                  f"{memory['seconds']:.0f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractors", default=",".join(ALL), help="comma-separated names")
    parser.add_argument("--items", type=int, default=48, help="files per extractor")
    parser.add_argument("--heavy-items", type=int, default=12, help=f"files for {', '.join(HEAVY)}")
    parser.add_argument("--fast-items", type=int, default=400, help=f"files for {', '.join(FAST)}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, help="worker processes of the pipeline (default: the pipeline's choice "
                        "per extractor, pipelines.extract.decode_workers)")
    parser.add_argument("--decode", choices=["processes", "threads"], help="the pipeline's decoding (default: its own)")
    parser.add_argument("--files", type=int, default=0, help="also run the memory run over this many tiny files")
    parser.add_argument("--memory-extractor", default="mfcc")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extract_speed.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows: list[Row] = []
    memory = None
    with tempfile.TemporaryDirectory(prefix="extract-speed-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("CROSSMODAL_CACHE_DIR", str(work / "cache"))  # keep random-weight hashes out of ~/.cache
        for name in args.extractors.split(","):
            name = name.strip()
            items = args.heavy_items if name in HEAVY else args.fast_items if name in FAST else args.items
            row = measure(name, items=items, batch_size=args.batch_size,
                          workers=args.workers, decode=args.decode, work=work, seed=args.seed)
            rows.append(row)
            print(f"{row.extractor:12s} pipeline {row.pipeline_per_s:8.2f}/s  steady {row.steady_per_s:8.2f}/s  "
                  f"bare {row.bare_per_s:8.2f}/s  ratio {row.ratio:5.2f}  {row.note}", flush=True)
        if args.files:
            memory = memory_run(args.memory_extractor, files=args.files, batch_size=args.batch_size,
                                workers=args.workers, work=work)
            print(f"memory ({args.memory_extractor}, {args.files} files): " +
                  ", ".join(f"{k} {v:.0f}" for k, v in memory.items()), flush=True)
    text = report(rows, memory, args.memory_extractor, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
