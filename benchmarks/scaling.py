"""How the cost of each step (extract, train, index, query) grows with the number of items: a table to read off what a
collection needs.

For each ``--sizes`` N, cheap synthetic media are generated once: N images of three shape classes
(``tests/_extract_media.write_shapes``, 64x48 PNG) and N one-line texts of the same three classes (words drawn from a
per-class vocabulary plus filler words, each text unique). Then every step runs in a fresh child process, on one thread
(``OMP_NUM_THREADS=1``: the machine is shared, and one thread keeps the sizes comparable, where DRCL would otherwise
use one thread on small data and all cores on larger), so that its peak resident memory is its own:

* extract image: ``pipelines.extract.run_extract`` with ``hog-color`` (1,898-d), in-process (``workers=0``);
* extract text: the same with ``doc2vec`` (300-d, fitted on the extracted corpus: no download);
* train: ``crossmodal train --modalities image,text`` (workspace mode, DRCL, the auto recipe) with ``--epochs``
  epochs per stage (fixed, so that time measures items, not early stopping);
* index exact: ``crossmodal index --backend exact`` (embeds both galleries, streams them into the index);
* index auto: ``crossmodal index --backend auto --memory-budget 1KB``: the budget is set below the vectors' bytes so
  that ``auto`` takes its past-memory branch (IVF with lists on disk), the path a collection that outgrows memory takes;
  with the default budget ``auto`` is exact at these sizes;
* query: ``pipelines.query.query`` (what ``crossmodal query --text ... --target image`` runs) on the exact index: the
  first (cold: loads model, extractor and index) and the p50 of ``--queries`` more (warm caches, as a server answers),
  and the p50 of the index's ``search`` alone (k=10, one query vector at a time).

Per step and size: wall seconds of the step inside its child (imports excluded), peak RSS of the child (``VmHWM``, which
counts memory-mapped pages it touched) and its RSS after the imports (``base``). Per step (``fit``): seconds and MB per
item between the two largest sizes, the exponent of a log-log fit over every size of time and of the peak's growth above
base, and an extrapolation to 10^5 and 10^6 items. The 10^7 measurements of the store and of the index are in
benchmarks/results/store_scale.md and benchmarks/results/index_scale.md.

Usage:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scaling.py --sizes 300 1000 3000 \\
        --out benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from benchmarks._memory import peak_rss_mb, rss_mb  # noqa: E402

FEATURE_DIMS = {"image": 1898, "text": 300}  # hog-color and doc2vec widths: the features training holds per item
STEPS = ("extract image", "extract text", "train", "index auto", "index exact", "query")
EXTRAPOLATE_TO = (100_000, 1_000_000)
CLASS_WORDS = {
    "circle": "round circle ring disc wheel orb loop curve red ball".split(),
    "square": "square box block cube corner tile frame grid green edge".split(),
    "triangle": "triangle pyramid peak wedge point arrow spike cone blue slope".split(),
}
FILLER = "the a of and small large bright dark drawn shape picture figure on with near".split()


def make_media(root: Path, n: int, seed: int = 0) -> int:
    """``root/image/<class>/<i>.png`` and ``root/text/<class>/<i>.txt``, ``n // 3`` of each per class; the number of
    items per modality."""
    from tests._extract_media import write_shapes

    per_class = max(1, n // len(CLASS_WORDS))
    write_shapes(root / "image", per_class=per_class, seed=seed)
    rng = np.random.default_rng(seed)
    for name, words in CLASS_WORDS.items():
        (root / "text" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            drawn = list(rng.choice(words, 4)) + list(rng.choice(FILLER, 4))
            rng.shuffle(drawn)
            (root / "text" / name / f"{i}.txt").write_text(" ".join(drawn) + f" number {i}\n")
    return per_class * len(CLASS_WORDS)


def run_step(step: str, ws: Path, data: Path, *, epochs: int, queries: int) -> dict:
    """Run one step in this process (imports first, then the timed work); what it measured."""
    from crossmodal.index import load_index
    from pipelines.extract import ExtractOptions, run_extract
    from pipelines.index import build_index
    from pipelines.query import query
    from pipelines.train import train_in_workspace

    base = rss_mb()
    peak_rss_mb(reset=True)
    result: dict = {}
    start = time.perf_counter()
    if step.startswith("extract"):
        modality = step.split()[1]
        summary = run_extract(ws, modality, [data / modality], ExtractOptions(
            extractor="hog-color" if modality == "image" else "doc2vec", workers=0, progress=False))
        result["extracted"] = summary.extracted
    elif step == "train":
        trained = train_in_workspace(workspace=ws, modalities=["image", "text"], name="m", epochs=epochs, device="cpu",
                                     progress=False)
        config = trained.model.config  # the auto recipe widens the MLPs with the items: part of the memory's growth
        result["model"] = f"hidden {'x'.join(map(str, config.hidden))}, dim {config.dim}, batch {config.batch_size}"
    elif step.startswith("index"):
        built = build_index(ws, model="m", backend=step.split()[1], device="cpu",
                            memory_budget=1024 if step == "index auto" else None)
        result["built"] = sorted({entry["backend"] for entry in built["indexes"]})
        (ws / "built.json").write_text(json.dumps(built["indexes"]))  # where the query step finds the image index
    else:
        texts = ["a round red circle", "a green square box", "a blue triangle pointing up"]
        query(ws, model="m", text=texts[0], target="image", k=10, device="cpu")
        result["cold_s"] = round(time.perf_counter() - start, 3)
        times = []
        for i in range(queries):
            t0 = time.perf_counter()
            query(ws, model="m", text=texts[i % len(texts)], target="image", k=10, device="cpu")
            times.append(time.perf_counter() - t0)
        result["query_p50_ms"] = round(1000 * float(np.median(times)), 3)
        index = load_index(next(Path(entry["path"]) for entry in json.loads((ws / "built.json").read_text())
                                if entry["modality"] == "image"))
        rng = np.random.default_rng(0)
        searches = []
        for _ in range(10 * queries):
            q = rng.standard_normal((1, index.dim)).astype(np.float32)
            t0 = time.perf_counter()
            index.search(q / np.linalg.norm(q), 10)
            searches.append(time.perf_counter() - t0)
        result["search_p50_ms"] = round(1000 * float(np.median(searches)), 3)
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["peak_mb"] = round(peak_rss_mb(), 1)
    result["base_mb"] = round(base, 1)
    return result


def measure(sizes: list[int], *, epochs: int, queries: int, workdir: Path | None = None,
            in_process: bool = False) -> list[dict]:
    """Every step at every size, each in a fresh child process; one row per (step, size).

    ``in_process`` runs the steps in this process instead (the smoke test: it pays the imports once); each step's
    peak is then still reset at its start, but counts what earlier steps left allocated."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="scaling-", dir=workdir) as tmp:
            data, ws = Path(tmp) / "data", Path(tmp) / "ws"
            items = make_media(data, n)
            for step in STEPS:
                if in_process:
                    rows.append({"step": step, "items": items,
                                 **run_step(step, ws, data, epochs=epochs, queries=queries)})
                    continue
                child = subprocess.run([sys.executable, __file__, "--step", step, "--workspace", str(ws), "--data",
                                        str(data), "--epochs", str(epochs), "--queries", str(queries)],
                                       capture_output=True, text=True, check=False, env=env)
                if child.returncode:
                    sys.exit(f"step {step!r} at {items} items failed:\n{child.stderr[-4000:]}")
                row = {"step": step, "items": items, **json.loads(child.stdout.splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def fit(rows: list[dict]) -> list[dict]:
    """Per step: seconds and MB per item between the two largest sizes, log-log exponents over every size, and the
    extrapolations.

    The per-item costs are the marginal ones at the largest sizes, not a fit over every size: below a shard (1,024
    rows) a step's buffers still grow with the items and fixed costs weigh most, so the smallest sizes would bend a
    line through them away from the regime a large collection is in."""
    fits = []
    for step in STEPS:
        mine = sorted((r for r in rows if r["step"] == step), key=lambda r: r["items"])
        n = np.array([r["items"] for r in mine], dtype=float)
        t = np.array([r["seconds"] for r in mine])
        peak = np.array([r["peak_mb"] for r in mine])
        growth = np.maximum(peak - np.array([r["base_mb"] for r in mine]), 1e-3)
        t_slope, m_slope = (t[-1] - t[-2]) / (n[-1] - n[-2]), (peak[-1] - peak[-2]) / (n[-1] - n[-2])
        t_exp, m_exp = np.polyfit(np.log(n), np.log(t), 1)[0], np.polyfit(np.log(n), np.log(growth), 1)[0]
        entry = {"step": step, "s_per_item": float(t_slope), "mb_per_item": float(m_slope),
                 "time_exponent": float(t_exp), "memory_exponent": float(m_exp), "extrapolated": {}}
        for big in EXTRAPOLATE_TO:
            # The line on, or the power law through the largest size where the step grows faster than linearly; never
            # less than measured at the largest size (noise can make a slope negative).
            seconds = max(t[-1] + t_slope * (big - n[-1]), t[-1] * (big / n[-1]) ** max(t_exp, 0), t[-1])
            mb = max(peak[-1] + m_slope * (big - n[-1]), peak[-1])
            if step == "query":  # one warm query: its fixed part plus the index search, which grows with the gallery
                search = np.array([r["search_p50_ms"] for r in mine])
                per_item = (search[-1] - search[-2]) / (n[-1] - n[-2])
                seconds = (mine[-1]["query_p50_ms"] + max(per_item * (big - n[-1]), 0)) / 1000
            entry["extrapolated"][str(big)] = {"seconds": float(seconds), "peak_mb": float(mb)}
        fits.append(entry)
    return fits


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{1000 * seconds:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _memory(mb: float) -> str:
    return f"{mb:,.0f} MB" if mb < 10_000 else f"{mb / 1024:,.1f} GB"


def markdown(rows: list[dict], fits: list[dict], *, command: str, epochs: int, queries: int) -> str:
    sizes = sorted({r["items"] for r in rows})
    lines = [
        "# How each step's cost grows with items (extract, train, index, query)",
        "",
        "Measured by `benchmarks/scaling.py` (its docstring says exactly what each step runs); command:",
        "",
        f"    {command}",
        "",
        f"Machine: {os.cpu_count()} CPUs (shared with other jobs while this ran), {platform.python_version()}, "
        "one thread per step (`OMP_NUM_THREADS=1`), each step in a fresh process. Items per modality: "
        f"{', '.join(f'{s:,}' for s in sizes)} images (64x48 PNG, 3 shape classes, hog-color 1,898-d) and as many "
        f"one-line texts (doc2vec 300-d, fitted on them); DRCL trained with `--epochs {epochs}` per stage; "
        f"query p50 over {queries} text-to-image queries after a cold one, index search p50 over {10 * queries}.",
        "",
        "## Measured",
        "",
        "| step | items | seconds | peak RSS MB | RSS after imports MB | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        notes = []
        if "built" in r:
            notes.append("built " + ", ".join(r["built"]))
        if "model" in r:
            notes.append(r["model"])
        if "query_p50_ms" in r:
            notes.append(f"cold query {r['cold_s']} s, query p50 {r['query_p50_ms']} ms, "
                         f"index search alone p50 {r['search_p50_ms']} ms")
        lines.append(f"| {r['step']} | {r['items']:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} |"
                     f" {'; '.join(notes)} |")
    lines += [
        "",
        "## Growth, and what your collection needs",
        "",
        "Seconds and MB per item: the marginal cost of one more item, between the two largest sizes (below a shard of "
        "1,024 rows buffers still grow and fixed costs weigh most). Exponent: slope of a log-log fit over every size "
        "(1 = linear; below 1 where a fixed cost, such as loading a model or a first-batch warm-up, still dominates); "
        "memory exponent: of the peak's growth above the RSS after imports. The 10^5 and 10^6 columns are "
        "**extrapolations**, not measurements: time is the larger of the line on from the largest size and the power "
        "law through it (so a step that grows faster than linearly is not under-estimated), peak RSS the line on from "
        "the largest size; one thread, this machine. Query: the warm p50 of one query (the query p50 at the largest "
        "size plus the exact index search's growth per item), with the peak of the querying process. Exact search is "
        "linear in the gallery: index_scale.md measures it at 10^6 and 10^7, and `auto` switches to an approximate "
        "index above its size threshold or the memory budget.",
        "",
        "| step | s / item | MB / item | time exponent | memory exponent | 10^5 items (extrapolated) |"
        " 10^6 items (extrapolated) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for f in fits:
        cells = [f"{_duration(e['seconds'])}, {_memory(e['peak_mb'])}" for e in f["extrapolated"].values()]
        lines.append(f"| {f['step']} | {f['s_per_item']:.2e} | {f['mb_per_item']:.3f} | {f['time_exponent']:.2f} | "
                     f"{f['memory_exponent']:.2f} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "**What training holds** (the train rows): the float32 features of every split (train and validation for the "
        "fit, test for the evaluation: 4 x (1,898 + 300) = 8,792 bytes per item here), the only part that keeps "
        "growing with the items; the model and its optimiser, which the auto recipe widens with the training items "
        "(the notes; 4,096 wide from about 131,000 training items on); and one phase's transient at a time: DRCL's "
        "validation J_D (two n x n float32 matrices up to 4,096 validation rows, row blocks of 4,096^2 entries "
        "beyond), the evaluation's "
        "ranking chunks (about 2^22 similarities each: constant once the test split passes 2,048 items) and, while "
        "the splits are drawn, about 0.7 KB of Python state per item (`Workspace.splits`). Split rows are copied out "
        "of the store 16 MB at a time and chosen with Arrow compute: no Python object per row. **Query**: the gallery "
        "rows are read from a memory-mapped Arrow copy of `gallery.parquet` (made by the first query), the hits' rows "
        "only; `load_index` hashes only the files changed since they last passed (`index.verified.json`).",
        "",
        _train_floor(rows),
        "",
        "Measured, not extrapolated, at 10^5 to 10^7 items: the store's steps (append, reopen, iterate, sample, "
        "compact at 128-d) in [store_scale.md](store_scale.md), and the index's build, peak memory and latency (exact "
        "against IVF with lists on disk) in [index_scale.md](index_scale.md); the Ray path in "
        "[ray_scale.md](ray_scale.md).",
        "",
    ]
    return "\n".join(lines)


def _train_floor(rows: list[dict]) -> str:
    """What the train rows say about a large collection: the largest size's peak less its features, and that floor
    plus the features at 10^6 items (the growth between two sizes can miss them when the peak moves between
    phases)."""
    largest = max((r for r in rows if r["step"] == "train"), key=lambda r: r["items"])
    per_item = 4 * (FEATURE_DIMS["image"] + FEATURE_DIMS["text"]) / 2**20
    floor = largest["peak_mb"] - per_item * largest["items"]
    return (f"Reading the train rows for a large collection: at {largest['items']:,} items the peak less the "
            f"features is {floor:,.0f} MB (imports, the model, one phase's transient); a collection of these "
            f"features needs that plus {per_item * 2**20:,.0f} bytes per item, "
            f"{_memory(floor + per_item * 1e6)} at 10^6 items, and the model's growth to 4,096 wide (about 0.4 GB "
            "more of weights and optimiser state, estimated from the widths). "
            "The MB / item column can be below the features' when the peak moves from one phase to another between "
            "the two largest sizes (the evaluation's chunks at the smaller, DRCL's validation at the larger).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--epochs", type=int, default=5, help="DRCL epochs per stage (fixed)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", type=Path, help="Markdown file to write (and a .json beside it)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # a child: run one step
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.workspace, args.data, epochs=args.epochs, queries=args.queries)))
        return
    if len(args.sizes) < 2:
        parser.error("give at least two --sizes (a growth needs two points; the results file uses three or more)")
    command = "OMP_NUM_THREADS=1 nice -n 10 python " + shlex.join(["benchmarks/scaling.py", *sys.argv[1:]])
    rows = measure(sorted(args.sizes), epochs=args.epochs, queries=args.queries)
    fits = fit(rows)
    text = markdown(rows, fits, command=command, epochs=args.epochs, queries=args.queries)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, "fits": fits},
                                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
