"""Extraction on a local Ray cluster of 2 workers gives the same store, row for row, as a single-process run."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from _extract_media import write_shapes  # noqa: E402

from extractors.store import FeatureStore  # noqa: E402
from pipelines.distributed import run_extract_ray  # noqa: E402
from pipelines.extract import ExtractOptions, run_extract  # noqa: E402

# hog-color at 32x32 costs ~1 ms an image: the test measures the plumbing, not the extractor.
CHEAP = {"size": 32, "pixels_per_cell": 8}
# batches (and shards) of 2 items, so that 2 actors share even 12 images
TINY_SHARDS = ExtractOptions(extractor="hog-color", overrides=CHEAP, progress=False, workers=0, shard_size=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_shapes(root, per_class=4, seed=3)  # 12 images in 3 classes
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def _rows(workspace: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """content hash -> (vector, metadata) of the only image table, from the raw shards (no de-duplication)."""
    table = FeatureStore(workspace / "store").table("image")
    rows: dict[str, tuple[np.ndarray, dict]] = {}
    for parquet in table.shard_paths():
        X = np.load(parquet.with_suffix(".npy"))
        for x, meta in zip(X, pq.read_table(parquet).to_pylist()):
            assert meta["content_hash"] not in rows, f"{meta['source_path']} has two rows"
            rows[meta["content_hash"]] = (x, meta)
    return rows


def _errors(summary) -> list[dict]:
    return [json.loads(line) for line in Path(summary.errors_file).read_text().splitlines()]


def test_ray_extraction_gives_the_same_rows_as_a_single_process_run(cluster, photos, tmp_path):
    local = run_extract(tmp_path / "local", "image", [photos],
                        ExtractOptions(extractor="hog-color", overrides=CHEAP, progress=False, workers=0))
    distributed = run_extract_ray(tmp_path / "ray", "image", [photos], TINY_SHARDS)
    expected, got = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert local.extracted == distributed.extracted == 12
    assert sorted(got) == sorted(expected)
    for h, (x, meta) in expected.items():
        np.testing.assert_allclose(got[h][0], x, rtol=0, atol=1e-6)
        assert got[h][1] == meta
    # 13 items (the broken one too) in tasks of 2: 7 tasks, each committing its own shard
    assert len(FeatureStore(tmp_path / "ray" / "store").table("image").shard_paths()) == 7
    assert [e["path"] for e in _errors(distributed)] == [e["path"] for e in _errors(local)] == [
        str(photos / "circle" / "broken.png")]


def test_ray_extraction_resumes_skipping_what_the_store_holds(cluster, photos, tmp_path):
    first = run_extract_ray(tmp_path, "image", [photos / "circle", photos / "square"], TINY_SHARDS)
    again = run_extract_ray(tmp_path, "image", [photos / "circle", photos / "square", photos / "triangle"],
                            TINY_SHARDS)
    assert (first.extracted, again.extracted, again.skipped, again.duplicates) == (8, 4, 8, 0)
    assert len(_rows(tmp_path)) == 12


def test_ray_extraction_gives_items_with_the_same_bytes_their_own_rows_embedded_once(cluster, photos, tmp_path):
    twins = tmp_path / "twins"
    for shape in ("circle", "square"):
        (twins / shape).mkdir(parents=True)
        (twins / shape / "same.png").write_bytes((photos / "circle" / "0.png").read_bytes())
    summary = run_extract_ray(tmp_path / "ws", "image", [twins], TINY_SHARDS)
    assert (summary.extracted, summary.duplicates) == (1, 1)
    X, meta = FeatureStore(tmp_path / "ws" / "store").read("image")
    assert meta.column("item_id").to_pylist() == ["circle/same", "square/same"]
    np.testing.assert_array_equal(X[0], X[1])


def test_cli_extract_with_ray_runs_on_the_cluster(cluster, photos, tmp_path, capsys):
    from pipelines.cli import main

    code = main(["extract", "--modality", "image", str(photos), "--extractor", "hog-color", "--set", "size=32",
                 "--set", "pixels_per_cell=8", "--workspace", str(tmp_path), "--ray", "auto", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert (code, summary["extracted"], summary["failed"]) == (0, 12, 1)
    assert summary["run_id"].endswith("-ray")
    assert ray.is_initialized()  # the runner joined the test's cluster and left it running


def test_ray_extraction_of_a_manifest_gives_its_ids_labels_and_splits_and_names_its_bad_rows(cluster, photos,
                                                                                              tmp_path):
    manifest = tmp_path / "list.jsonl"  # beside, not in, the photos other tests scan
    rows = [{"path": str(photos / "circle" / "0.png"), "labels": ["round", "red"], "split": "train", "id": "c0"},
            {"path": str(photos / "square" / "1.png"), "label": "boxy", "split": "test", "id": "s1"},
            {"path": str(photos / "triangle" / "2.png")},
            {"path": str(photos / "circle" / "broken.png"), "label": "round"},
            {"path": str(photos / "circle" / "gone.png"), "label": "round"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    options = dataclasses.replace(TINY_SHARDS, labels_from=str(manifest))
    local = run_extract(tmp_path / "local", "image", [], options)
    distributed = run_extract_ray(tmp_path / "ray", "image", [], options)
    expected, got = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert (distributed.found, distributed.extracted, distributed.failed) == (local.found, local.extracted,
                                                                              local.failed) == (5, 3, 2)
    assert {h: meta for h, (_, meta) in got.items()} == {h: meta for h, (_, meta) in expected.items()}
    assert sorted((tuple(m["labels"]), m["split"]) for _, m in got.values()) == [
        ((), None), (("boxy",), "test"), (("round", "red"), "train")]
    assert {m["item_id"] for _, m in got.values()} >= {"c0", "s1"}
    assert sorted((e["path"], e["error"]) for e in _errors(distributed)) == sorted(
        (e["path"], e["error"]) for e in _errors(local))


class _Cluster:
    """What ray.cluster_resources() reports for a cluster of ``cpus`` CPUs and ``gpus`` GPUs."""

    def __init__(self, cpus: int, gpus: int):
        self.resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_extraction_actors_are_one_per_gpu_holding_it_else_one_per_cpu():
    from crossmodal.errors import ConfigError
    from pipelines.distributed import _pool

    gpu = _pool(_Cluster(64, 4), "auto", None, todo=10_000, shard_size=1024)
    assert (gpu["actors"], gpu["gpu"], gpu["remote"]) == (4, True, {"num_gpus": 1, "num_cpus": 1})
    assert gpu["batch"] == 625 and "4 GPU actors" in gpu["why"]  # 10,000 items: about four batches an actor
    cpu = _pool(_Cluster(64, 4), "cpu", None, todo=10_000, shard_size=1024)
    assert (cpu["actors"], cpu["gpu"], cpu["remote"]) == (64, False, {"num_cpus": 1})
    assert "--device cpu" in cpu["why"]
    assert _pool(_Cluster(2, 0), "auto", None, todo=3, shard_size=1024)["actors"] == 2  # no GPU: one per CPU
    assert _pool(_Cluster(8, 0), "auto", None, todo=3, shard_size=1024)["actors"] == 3  # no actor without a batch
    with pytest.raises(ConfigError, match="no GPU"):
        _pool(_Cluster(8, 0), "cuda", None, todo=3, shard_size=1024)


def test_ray_extraction_leaves_items_another_run_claimed_and_extracts_them_once_it_lets_go(cluster, photos, tmp_path):
    import threading

    from pipelines.extract import plan_extract

    plan = plan_extract(tmp_path, "image", [photos], TINY_SHARDS)
    circles = [it.content_hash for it in plan.todo if it.path.parent.name == "circle"]
    assert len(plan.table.claim(circles, owner="another run")) == 5  # 4 circles and the broken one
    others = {it.content_hash for it in plan.todo} - set(circles)

    def give_up() -> None:  # once the Ray run has written the squares and triangles, the other run lets go unwritten
        deadline = time.monotonic() + 120  # a Ray run that never writes them fails the assertions, not the suite
        while not others <= plan.table.known_hashes() and time.monotonic() < deadline:
            time.sleep(0.2)
        plan.table.release("another run")

    releaser = threading.Thread(target=give_up, daemon=True)
    releaser.start()
    summary = run_extract_ray(tmp_path, "image", [photos], TINY_SHARDS)
    releaser.join()
    assert (summary.extracted, summary.failed, summary.by_other_run) == (12, 1, 0)
    assert len(_rows(tmp_path)) == 12  # each image once
    assert plan.table.claims() == []
