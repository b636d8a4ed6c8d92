"""Crash safety, tried for real: ``crossmodal extract`` and ``crossmodal train`` are SIGKILLed at random moments
(seeded) and re-run; nothing is lost, duplicated or half-written, and training resumes from its last checkpoint. Two
extract processes on one workspace at once leave a consistent store.

The processes are real ones (``sys.executable -c "... from pipelines.cli import main ..."``). The extract runs set
``pipelines.extract.SHARD_SECONDS = 0`` so that every item is committed as a shard of its own: many commits per run,
so kills land before, inside and after the store's atomic commit (``.incomplete`` files, fsync, rename the npy, rename
the parquet).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _extract_media import write_shapes

from extractors.store import FeatureStore
from pipelines.extract import ExtractOptions, run_extract

CHEAP = ["--extractor", "hog-color", "--set", "size=16", "--set", "pixels_per_cell=8", "--workers", "0"]
EXTRACT = ("import sys, pipelines.extract as e; e.SHARD_SECONDS = {seconds}; from pipelines.cli import main; "
           "sys.exit(main(sys.argv[1:]))")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXTRACT.format(seconds=0.0), *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"), env=ENV)


def _wait_for(condition, proc: subprocess.Popen, *, timeout: float = 120.0) -> bool:
    """Poll ``condition()`` every 5 ms until true (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("the process neither progressed nor ended")


def _shards(workspace: Path) -> list[Path]:
    return sorted((workspace / "store" / "image").glob("*/shards/part-*.parquet"))


def _audit(workspace: Path) -> tuple[Counter, dict[str, np.ndarray]]:
    """Check every committed shard and return (rows per content hash, vector per content hash).

    Raises AssertionError on a half-written shard: a parquet without its npy or its checksums, a row-count, dtype or
    width mismatch, a file that differs from its recorded sha256, a leftover ``.incomplete`` file or an orphan ``.npy``
    or ``.sha256``.
    """
    table = FeatureStore(workspace / "store").table("image")
    leftovers = [p.name for p in table.shards.iterdir() if p.name.endswith(".incomplete")
                 or (p.suffix in (".npy", ".sha256") and not p.with_suffix(".parquet").exists())]
    assert not leftovers, f"half-written files left behind: {leftovers}"
    assert table.unchecked() == [] and table.verify() == []
    counts: Counter = Counter()
    vectors: dict[str, np.ndarray] = {}
    for parquet in table.shard_paths():
        X = np.load(parquet.with_suffix(".npy"), allow_pickle=False)
        meta = pq.read_table(parquet)
        assert X.dtype == np.float32 and X.shape == (meta.num_rows, table.dim), f"{parquet.name}: {X.shape}"
        for h, x in zip(meta.column("content_hash").to_pylist(), X):
            counts[h] += 1
            if h in vectors:
                np.testing.assert_array_equal(x, vectors[h], err_msg=f"two different rows for {h}")
            vectors[h] = x
    return counts, vectors


def _photos(tmp_path_factory, per_class: int) -> tuple[Path, dict[str, np.ndarray]]:
    """3 x ``per_class`` tiny images, and the vectors an uninterrupted single run gives them (by content hash)."""
    root = tmp_path_factory.mktemp("photos")
    write_shapes(root, per_class=per_class, seed=7, size=(16, 16))
    reference = tmp_path_factory.mktemp("reference")
    summary = run_extract(reference, "image", [root], ExtractOptions(
        extractor="hog-color", workers=0, progress=False, overrides={"size": 16, "pixels_per_cell": 8}))
    assert summary.extracted == 3 * per_class
    return root, _audit(reference)[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    return _photos(tmp_path_factory, 20)


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Enough files that 25 kills do not exhaust the work."""
    return _photos(tmp_path_factory, 100)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_and_resume(photos, workspace: Path, *, kills: int, seed: int) -> dict[str, int]:
    """SIGKILL ``kills`` extract runs at random moments, then run to the end; return what the kills hit."""
    root, _ = photos
    args = ["extract", "--modality", "image", str(root), "--workspace", str(workspace), *CHEAP]
    rng = random.Random(seed)
    hit = Counter()
    for _ in range(kills):
        before = len(_shards(workspace))
        proc = _start(args, workspace.parent / "stderr.log")
        if rng.random() < 0.2:  # early: interpreter start, imports, scanning, hashing (or the first commits)
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # mid-extraction: after this run's 1st to 3rd commit, anywhere in the next few milliseconds
            commits = rng.randint(1, 3)
            _wait_for(lambda: len(_shards(workspace)) >= before + commits, proc)
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            hit["killed"] += 1
            hit["killed after committing"] += len(_shards(workspace)) > before
        else:
            hit["finished before the kill"] += 1
    final = subprocess.run([sys.executable, "-c", EXTRACT.format(seconds=0.0), *args, "--json"], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    hit["extracted by the last run"] = json.loads(final.stdout)["extracted"]
    return dict(hit)


def _assert_complete(photos, workspace: Path) -> None:
    root, reference = photos
    counts, vectors = _audit(workspace)
    expected = {_sha256(p) for p in root.rglob("*.png")}
    assert set(counts) == expected, f"lost {len(expected - set(counts))}, unexpected {len(set(counts) - expected)}"
    assert max(counts.values()) == 1, f"duplicated rows: {[h for h, c in counts.items() if c > 1][:3]}"
    for h, x in reference.items():
        np.testing.assert_allclose(vectors[h], x, rtol=0, atol=1e-6)


def test_extract_killed_8_times_at_random_moments_resumes_to_exactly_one_row_per_file(photos, tmp_path):
    hit = _kill_and_resume(photos, tmp_path / "ws", kills=8, seed=0)
    _assert_complete(photos, tmp_path / "ws")
    assert hit.get("killed", 0) >= 6 and hit.get("killed after committing", 0) >= 3, hit


@pytest.mark.slow
def test_extract_killed_25_times_at_random_moments_resumes_to_exactly_one_row_per_file(many_photos, tmp_path):
    hit = _kill_and_resume(many_photos, tmp_path / "ws", kills=25, seed=1)
    _assert_complete(many_photos, tmp_path / "ws")
    assert hit.get("killed", 0) >= 20 and hit.get("killed after committing", 0) >= 10, hit


def _concurrent(photos, workspace: Path, processes: int) -> list[dict]:
    root, _ = photos
    args = ["extract", "--modality", "image", str(root), "--workspace", str(workspace), *CHEAP, "--json"]
    procs = [subprocess.Popen([sys.executable, "-c", EXTRACT.format(seconds=0.0), *args], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [err[-1000:] for _, err in outs]
    return [json.loads(out) for out, _ in outs]


def _assert_consistent(photos, workspace: Path, summaries: list[dict]) -> None:
    """Every shard whole, every file in the store once (the processes split the files by claims, none took one
    another had), each summary accounting for every file, and the store's reader gives exactly one row per file."""
    root, reference = photos
    counts, vectors = _audit(workspace)
    assert set(counts) == set(reference) and set(counts.values()) == {1}
    assert sum(s["extracted"] for s in summaries) == len(reference)
    for s in summaries:
        assert s["found"] == s["extracted"] + s["skipped"] + s["by_other_run"] + s["duplicates"] + s["failed"]
    X, meta = FeatureStore(workspace / "store").read("image")
    assert sorted(meta.column("content_hash").to_pylist()) == sorted(reference)
    for h, x in zip(meta.column("content_hash").to_pylist(), X):
        np.testing.assert_allclose(x, reference[h], rtol=0, atol=1e-6)


def test_two_extract_processes_at_once_on_one_workspace_leave_a_consistent_store(photos, tmp_path):
    summaries = _concurrent(photos, tmp_path / "ws", 2)
    _assert_consistent(photos, tmp_path / "ws", summaries)


@pytest.mark.slow
def test_four_extract_processes_at_once_then_a_resume_leave_a_consistent_store(photos, tmp_path):
    summaries = _concurrent(photos, tmp_path / "ws", 4)
    _assert_consistent(photos, tmp_path / "ws", summaries)
    assert _concurrent(photos, tmp_path / "ws", 1)[0]["extracted"] == 0


# ---------------------------------------------------------------------------------------------------------------- train

EPOCHS = 40
STAGES = ("spl:image", "spl:text", "rsc:image", "rsc:text")
TRAIN = ["--preset", "paper", "--set", "dim=16", "--set", "hidden=[32,32]", "--set", "batch_size=32",
         "--set", "lr_spl=0.01", "--set", "lr_image=0.01", "--set", "lr_text=0.01",
         "--epochs", str(EPOCHS), "--device", "cpu"]


@pytest.fixture(scope="module")
def benchmark_file(tmp_path_factory) -> Path:
    from crossmodal.datasets import write_benchmark
    from crossmodal.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("bench")
    return write_benchmark("inria", root / "INRIA-Websearch.mat",
                           make_synthetic({"image": 24, "text": 16}, 4, 64, 32, 48, seed=0))


def _log(out: Path) -> list[dict]:
    from pipelines.progress import read_training_log

    return read_training_log(out / "train_log.jsonl")


def _train_killed(benchmark_file: Path, out: Path, *, kills: int, seed: int) -> list[tuple[dict, dict]]:
    """Kill ``crossmodal train`` ``kills`` times, each inside a different stage, then let it finish; return, per kill,
    (the last log record before it, the first record after the restart)."""
    args = ["train", "--dataset", "inria", "--data", str(benchmark_file), "--out", str(out), *TRAIN]
    code = ("import sys, crossmodal.methods.drcl as d; d.CHECKPOINT_SECONDS = 0; from pipelines.cli import main; "
            "sys.exit(main(sys.argv[1:]))")  # a checkpoint every epoch (DRCL saves at most once a minute by default)
    rng = random.Random(seed)
    seen = []
    for stage in sorted(rng.sample(range(len(STAGES)), kills)):
        target = stage * EPOCHS + rng.randint(3, EPOCHS - 8)  # a few epochs past the stage's start, before its end
        proc = subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert _wait_for(lambda: len(_log(out)) >= target, proc), "training ended before the kill"
        proc.kill()
        proc.wait()
        seen.append(len(_log(out)))
    final = subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    log = _log(out)
    return [(log[n - 1], log[n]) for n in seen]


def test_train_killed_mid_stage_resumes_from_its_last_checkpoint_and_the_model_loads(benchmark_file, tmp_path):
    from crossmodal.model import CrossModalModel

    out = tmp_path / "model"
    for last, first in _train_killed(benchmark_file, out, kills=2, seed=0):
        # the restart continues the stage where its checkpoint stands: the killed epoch, or the one after it
        assert first["stage"] == last["stage"] and last["epoch"] <= first["epoch"] <= last["epoch"] + 1, (last, first)
        assert first["epoch"] > 1
    log = _log(out)
    assert {(r["stage"], r["epoch"]) for r in log} == {(s, e) for s in STAGES for e in range(1, EPOCHS + 1)}
    assert not (out / "checkpoints").exists()
    model = CrossModalModel.load(out, device="cpu")
    assert set(model.features) == {"image", "text"}
    z = model.encode("image", np.random.default_rng(0).standard_normal((3, 24)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_a_disk_that_fills_mid_run_keeps_the_committed_shards_and_the_next_run_completes(photos, tmp_path, monkeypatch):
    import errno

    import pipelines.extract as extract_module
    from extractors.errors import StoreFullError

    root, reference = photos
    real_write = pq.write_table
    calls = {"n": 0}

    def full_after_two_shards(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(extract_module, "SHARD_SECONDS", 0.0)  # a shard per item
    monkeypatch.setattr(pq, "write_table", full_after_two_shards)
    options = ExtractOptions(extractor="hog-color", workers=0, progress=False,
                             overrides={"size": 16, "pixels_per_cell": 8})
    with pytest.raises(StoreFullError, match="no space left on the disk of workspace"):
        run_extract(tmp_path / "ws", "image", [root], options)
    counts, _ = _audit(tmp_path / "ws")
    assert sum(counts.values()) == 2
    monkeypatch.setattr(pq, "write_table", real_write)
    resumed = run_extract(tmp_path / "ws", "image", [root], options)
    assert (resumed.extracted, resumed.skipped) == (len(reference) - 2, 2)
    _assert_complete(photos, tmp_path / "ws")
