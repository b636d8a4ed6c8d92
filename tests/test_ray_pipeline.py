"""The index built on a local Ray cluster of 2 workers, part by part and merged by list, answers like a local build."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")

from crossmodal.errors import ConfigError  # noqa: E402
from crossmodal.index import load_index  # noqa: E402
from extractors.store import StoreRow  # noqa: E402
from pipelines.distributed import run_index_ray  # noqa: E402
from pipelines.index import build_index  # noqa: E402
from pipelines.workspace import Workspace  # noqa: E402

SPEC = "ivf-ondisk:IVF4,Flat"  # a flat coarse quantiser: k-means with faiss's fixed seed, the same on both sides


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """60 image and 60 text items of 4 classes, each table in 3 shards (one item stored twice), and a 1-epoch DRCL
    model 'm'."""
    from pipelines.train import train_in_workspace

    root = tmp_path_factory.mktemp("ws")
    rng = np.random.default_rng(0)
    for modality in ("image", "text"):
        table = Workspace(root).store.open({"name": "fake", "modality": modality, "key": "fake@0", "dim": 6})
        centres = rng.normal(size=(4, 6))
        for shard in range(3):
            items = range(20 * shard, 20 * shard + 20)
            X = np.stack([centres[i % 4] + 0.3 * rng.normal(size=6) for i in items]).astype(np.float32)
            table.write_shard(X, [StoreRow(content_hash=f"{modality}{i}", item_id=f"{i % 4}/{i}", source_path=f"/{i}",
                                           labels=(str(i % 4),)) for i in items])
        table.write_shard(X[:1], [StoreRow(content_hash=f"{modality}59", item_id="3/59", source_path="/59",
                                           labels=("3",))])  # the same item again: the gallery keeps its first row
    train_in_workspace(workspace=root, name="m", epochs=1, overrides=["hidden=[8]", "dim=4"], device="cpu",
                       progress=False)
    return root


def _search(folder, queries):
    """Every gallery item for each query, best first (all of them: no tie falls across a cut-off)."""
    index = load_index(folder)
    return index.search(queries, len(index))


def _assert_same_answers(got, expected, tol=1e-5):
    """The same scores, and the same items at each rank but among items whose scores tie within ``tol``: embeddings
    computed in other batches (a part of the gallery, a shard) differ in the last float bits, which reorders ties."""
    (scores, ids), (want_scores, want_ids) = got, expected
    np.testing.assert_allclose(scores, want_scores, atol=tol)
    for row, want_row, want in zip(ids, want_ids, want_scores):
        cuts = [0, *(np.flatnonzero(np.diff(want) < -tol) + 1), len(want)]
        for a, b in zip(cuts, cuts[1:]):
            assert set(row[a:b]) == set(want_row[a:b])


def test_an_index_built_on_ray_in_parts_answers_like_a_local_build(cluster, workspace):
    local = build_index(workspace, model="m", backend=SPEC, device="cpu")
    local_dir = workspace / "index" / "local"
    (workspace / "index" / "m").rename(local_dir)
    result = run_index_ray(workspace, model="m", backend=SPEC, parts=3)
    queries = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    assert [(r["modality"], r["items"], r["parts"]) for r in result["indexes"]] == [("image", 60, 3), ("text", 60, 3)]
    for built, expected in zip(result["indexes"], local["indexes"]):
        modality = built["modality"]
        _assert_same_answers(_search(built["path"], queries), _search(local_dir / modality, queries))
        assert pq.read_table(f"{built['path']}/gallery.parquet").equals(
            pq.read_table(local_dir / modality / "gallery.parquet"))
        assert built["backend"] == expected["backend"] == SPEC and "3 parts merged by list" in built["why"]
    assert not list((workspace / "index" / "m" / "image").glob("part-*"))  # the parts are gone once merged


def test_a_ray_build_refuses_a_backend_that_is_not_an_ivf(workspace):
    with pytest.raises(ConfigError, match="merges IVF lists") as err:
        run_index_ray(workspace, model="m", backend="faiss:HNSW32")
    assert "ivf-ondisk" in err.value.hint


def test_cli_index_with_ray_builds_the_test_gallery_like_a_local_build(cluster, workspace, capsys):
    from pipelines.cli import main

    local = build_index(workspace, model="m", backend=SPEC, gallery="test", device="cpu")
    local_dir = workspace / "index" / "local-test"
    (workspace / "index" / "m").rename(local_dir)
    code = main(["index", "--model", "m", "--backend", SPEC, "--gallery", "test", "--ray", "auto",
                 "--workspace", str(workspace), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and ray.is_initialized()  # it joined the test's cluster and left it running
    assert [(r["items"], r["parts"]) for r in result["indexes"]] == [(r["items"], 2) for r in local["indexes"]]
    assert 0 < local["indexes"][0]["items"] < 60
    queries = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    for built in result["indexes"]:
        _assert_same_answers(_search(built["path"], queries), _search(local_dir / built["modality"], queries))
