from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

import crossmodal.index
from crossmodal.errors import ConfigError, FeatureMismatchError, ModelFileError, NotTrainedError, UnknownNameError
from crossmodal.index import (
    build_from_batches,
    build_ivf_shard,
    choose_spec,
    create_index,
    list_index_backends,
    load_index,
    merge_ivf_shards,
    parse_bytes,
    resolve_spec,
    train_ivf,
)

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 16)).astype(np.float32)
    return X, np.array([f"item-{i}" for i in range(len(X))]), rng.standard_normal((20, 16)).astype(np.float32)


def brute_force(X, Q, k):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Qn @ Xn.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def built(spec, X, ids, **kwargs):
    index = create_index(spec, X.shape[1], **kwargs)
    index.add(X[:250], ids[:250])  # two batches, as a store would feed them
    index.add(X[250:], ids[250:])
    return index


def test_exact_search_equals_brute_force_cosine(data):
    X, ids, Q = data
    scores, found = built("exact", X, ids).search(Q, 10)
    expected_scores, expected_rows = brute_force(X, Q, 10)
    np.testing.assert_array_equal(found, ids[expected_rows])
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    assert scores.dtype == np.float32 and found.shape == (20, 10)


def test_exact_search_breaks_ties_by_the_order_items_were_added():
    index = create_index("exact", 2)
    index.add(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]), ["a", "b", "c", "d"])
    scores, found = index.search(np.array([[1.0, 0.0]]), 3)
    assert found.tolist() == [["b", "c", "d"]] and scores.tolist() == [[1.0, 1.0, 1.0]]


def test_exact_search_with_inner_product_does_not_normalise():
    index = create_index("exact", 2, metric="ip")
    index.add(np.array([[1.0, 0.0], [3.0, 0.0]]), ["a", "b"])
    scores, found = index.search(np.array([[2.0, 0.0]]), 2)
    assert found.tolist() == [["b", "a"]] and scores.tolist() == [[6.0, 2.0]]


@needs_faiss
def test_faiss_flat_equals_exact_search(data):
    X, ids, Q = data
    exact_scores, exact_ids = built("exact", X, ids).search(Q, 10)
    scores, found = built("faiss:Flat", X, ids).search(Q, 10)
    np.testing.assert_array_equal(found, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


@needs_faiss
def test_hnsw_finds_nearly_all_true_neighbours(data):
    X, ids, Q = data
    _, found = built("faiss:HNSW32", X, ids).search(Q, 10)
    _, exact_rows = brute_force(X, Q, 10)
    recall = np.mean([len(set(f) & set(ids[e])) / 10 for f, e in zip(found, exact_rows)])
    assert recall >= 0.95


@needs_faiss
def test_ivf_probing_every_list_is_exact(data):
    X, ids, Q = data
    index = built("faiss:IVF8,Flat", X, ids, search_params="nprobe=8")
    _, exact_rows = brute_force(X, Q, 5)
    np.testing.assert_array_equal(index.search(Q, 5)[1], ids[exact_rows])
    assert index.trained_on == 250  # trained on the first batch it was given


@needs_faiss
def test_ivf_pq_trains_on_a_bounded_sample():
    X = np.random.default_rng(1).standard_normal((12_000, 8)).astype(np.float32)
    index = create_index("faiss:IVF4,PQ2x4", 8)
    index.add(X, [str(i) for i in range(len(X))])
    assert index.trained_on == 10_000 and len(index) == 12_000


@pytest.mark.parametrize("spec", ["exact", pytest.param("faiss:HNSW32", marks=needs_faiss)])
def test_a_saved_index_loads_and_answers_the_same(tmp_path, data, spec):
    X, ids, Q = data
    index = built(spec, X, ids)
    index.extra = {"model": "tiny"}
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert (loaded.spec, len(loaded), loaded.extra) == (spec, 600, {"model": "tiny"})
    for got, expected in zip(loaded.search(Q, 7), index.search(Q, 7)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["vectors.npy", "ids.parquet"])
def test_a_tampered_file_is_refused(tmp_path, data, name):
    X, ids, _ = data
    built("exact", X, ids).save(tmp_path / "idx")
    raw = bytearray((tmp_path / "idx" / name).read_bytes())
    raw[-20] ^= 0xFF
    (tmp_path / "idx" / name).write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="sha256 differs"):
        load_index(tmp_path / "idx")


def test_an_index_description_that_disagrees_with_the_files_is_refused(tmp_path, data):
    X, ids, _ = data
    built("exact", X, ids).save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["count"] = 5
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="says 5"):
        load_index(tmp_path / "idx")


def test_a_folder_without_an_index_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="no index.json"):
        load_index(tmp_path)


@needs_faiss
def test_auto_is_exact_for_small_collections_and_approximate_for_large_ones():
    roomy = 100 * 2**30  # the vectors fit in memory
    assert resolve_spec("auto", dim=512, size=5_000, memory_budget=roomy) == "exact"
    assert resolve_spec("auto", dim=512) == "exact"
    assert resolve_spec("auto", dim=512, size=500_000, memory_budget=roomy) == "faiss:HNSW32"
    assert resolve_spec("auto", dim=512, size=4_000_000, memory_budget=roomy) == "faiss:IVF8192_HNSW32,SQ8"


def test_backends_are_listed_and_an_unknown_one_is_refused():
    assert list_index_backends() == ["exact", "faiss", "ivf-ondisk"]
    with pytest.raises(UnknownNameError, match="exact"):
        create_index("exakt", 4)


@needs_faiss
def test_a_bad_factory_string_is_a_config_error():
    with pytest.raises(ConfigError, match="IVFxx"):
        create_index("faiss:IVFxx", 4)


def test_vectors_or_queries_of_another_width_are_refused(data):
    X, ids, _ = data
    index = built("exact", X, ids)
    with pytest.raises(FeatureMismatchError, match="width 16"):
        index.search(np.ones((2, 8)), 3)
    with pytest.raises(FeatureMismatchError, match="ids"):
        index.add(np.ones((2, 16)), ["a"])


def test_searching_an_empty_index_is_refused():
    with pytest.raises(NotTrainedError, match="empty"):
        create_index("exact", 4).search(np.ones((1, 4)), 1)


def test_a_missing_faiss_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"crossmodal-toolkit\[ann\]"):
        create_index("faiss:HNSW32", 4)


def test_auto_without_faiss_keeps_exact_search_and_says_why(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    spec, why = choose_spec("auto", dim=64, size=500_000)
    assert spec == "exact" and "faiss:HNSW32" in why and "faiss is not installed" in why


@pytest.fixture(scope="module")
def tiny_model_workspace(tmp_path_factory):
    """A workspace with 20 image and 20 text items (4 classes) and a 1-epoch DRCL model 'm'."""
    from extractors.store import StoreRow
    from pipelines.train import train_in_workspace
    from pipelines.workspace import Workspace

    root = tmp_path_factory.mktemp("ws")
    rng = np.random.default_rng(0)
    for modality in ("image", "text"):
        table = Workspace(root).store.open({"name": "fake", "modality": modality, "key": "fake@0", "dim": 6})
        table.write_shard(rng.normal(size=(20, 6)).astype(np.float32),
                          [StoreRow(content_hash=f"{modality}{i}", item_id=f"{i % 4}/{i}", source_path=f"/{i}",
                                    labels=(str(i % 4),)) for i in range(20)])
    train_in_workspace(workspace=root, name="m", epochs=1, overrides=["hidden=[8]", "dim=4"], device="cpu",
                       progress=False)
    return root


def test_index_auto_chooses_from_each_gallery_s_size_and_says_why(tiny_model_workspace, monkeypatch):
    """Issue 11: the gallery size never reached the chooser, so auto always built the exact index."""
    import crossmodal.index
    from pipelines.index import build_index

    result = build_index(tiny_model_workspace, model="m", backend="auto", device="cpu")
    assert [(r["backend"], r["items"]) for r in result["indexes"]] == [("exact", 20), ("exact", 20)]
    assert "auto: 20 items, below 200,000" in result["indexes"][0]["why"]
    if importlib.util.find_spec("faiss") is None:
        return
    monkeypatch.setattr(crossmodal.index, "AUTO_EXACT_LIMIT", 10)  # 20 items now count as a large gallery
    result = build_index(tiny_model_workspace, model="m", backend="auto", device="cpu")
    assert {r["backend"] for r in result["indexes"]} == {"faiss:HNSW32"}
    meta = json.loads((tiny_model_workspace / "index" / "m" / "image" / "index.json").read_text())
    assert meta["backend"] == "faiss" and meta["options"] == "HNSW32"


# -- auto by memory, streaming builds, on-disk IVF and its shards ----------------------------------------------------


@pytest.fixture(scope="module")
def clustered():
    """4,000 vectors of 16 dims from a mixture of 20 Gaussians (so an IVF's lists mean something), ids and queries."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, 16)).astype(np.float32)
    X = (centres[rng.integers(0, 20, 4_000)] + 0.35 * rng.standard_normal((4_000, 16))).astype(np.float32)
    Q = (centres[rng.integers(0, 20, 60)] + 0.35 * rng.standard_normal((60, 16))).astype(np.float32)
    return X, np.array([f"item-{i}" for i in range(len(X))]), Q


def batches_of(X, ids, size=700):
    for start in range(0, len(X), size):
        yield X[start:start + size], ids[start:start + size]


def recall_at_10(found, truth):
    return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])


def test_memory_sizes_read_with_their_units_and_a_bad_one_is_a_config_error():
    assert parse_bytes("2GB") == 2 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(ConfigError, match="not a memory size"):
        parse_bytes("lots")


@needs_faiss
def test_auto_keeps_exact_under_the_threshold_and_goes_on_disk_when_the_vectors_exceed_the_budget():
    spec, why = choose_spec("auto", dim=128, size=10_000, memory_budget=2 * 10**9)
    assert spec == "exact" and "below 200,000" in why and "within the memory budget, 2.0 GB" in why
    spec, why = choose_spec("auto", dim=128, size=10_000_000, memory_budget=2 * 10**9)
    assert spec == "ivf-ondisk:IVF16384_HNSW32,Flat"
    assert "5.1 GB of vectors (10,000,000 x 128 float32) exceed the memory budget, 2.0 GB" in why
    assert resolve_spec("auto", dim=16, size=4_000, memory_budget=1_000) == "ivf-ondisk:IVF64_HNSW32,Flat"


@needs_faiss
def test_on_disk_ivf_finds_90_percent_of_the_exact_top_10_on_clustered_data(tmp_path, clustered):
    X, ids, Q = clustered
    built = build_from_batches("auto", 16, batches_of(X, ids), tmp_path / "ivf", size=len(X), memory_budget=1_000,
                               train_sample=X[::2])
    _, exact_ids = built_exact(X, ids).search(Q, 10)
    assert built.spec.startswith("ivf-ondisk:")
    assert recall_at_10(built.index.search(Q, 10)[1], exact_ids) >= 0.9
    assert recall_at_10(load_index(tmp_path / "ivf").search(Q, 10)[1], exact_ids) >= 0.9


def built_exact(X, ids):
    index = create_index("exact", X.shape[1])
    index.add(X, ids)
    return index


@pytest.mark.parametrize("spec", ["exact", pytest.param("ivf-ondisk:IVF32,Flat", marks=needs_faiss),
                                  pytest.param("faiss:IVF32,Flat", marks=needs_faiss)])
def test_a_streaming_build_answers_like_an_index_built_in_memory(tmp_path, clustered, spec):
    X, ids, Q = clustered
    in_memory = create_index(spec, 16)
    in_memory.train(X[:2_000])
    in_memory.add(X, ids)
    streamed = build_from_batches(spec, 16, batches_of(X, ids), tmp_path / "s", train_sample=X[:2_000])
    assert len(streamed.index) == len(X) and streamed.count == len(X)
    (scores, found), (expected_scores, expected) = load_index(tmp_path / "s").search(Q, 10), in_memory.search(Q, 10)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)  # batches of 700 or of 4,000: other roundings


@needs_faiss
def test_a_streaming_build_without_a_sample_trains_on_the_first_vectors_of_the_stream(tmp_path, clustered):
    X, ids, _ = clustered
    built = build_from_batches("ivf-ondisk:IVF16,Flat", 16, batches_of(X, ids), tmp_path / "s")
    assert built.index.trained_on == len(X) and len(built.index) == len(X)  # 10,000 wanted; the stream has 4,000


def test_exact_search_block_by_block_equals_one_block(monkeypatch, clustered):
    X, ids, Q = clustered
    index = built_exact(np.vstack([X, X[:50]]), np.concatenate([ids, [f"again-{i}" for i in range(50)]]))
    whole = index.search(Q, 10)
    monkeypatch.setattr(crossmodal.index, "SEARCH_BLOCK", 333)  # 13 blocks, duplicates across blocks tie
    blocked = index.search(Q, 10)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_array_equal(blocked[0], whole[0])
    repeats = [(row.index(f"item-{i[6:]}"), k) for row in blocked[1].tolist() for k, i in enumerate(row)
               if i.startswith("again-")]
    assert repeats and all(first < again for first, again in repeats)  # ties go to the item added first


def test_exact_index_keeps_its_chunks_apart_when_searched(clustered):
    X, ids, Q = clustered
    index = create_index("exact", 16)
    for chunk, chunk_ids in batches_of(X, ids):
        index.add(chunk, chunk_ids)
    index.search(Q, 5)
    assert len(index._vectors) == 6  # no concatenated copy of the gallery next to the chunks


@needs_faiss
def test_shards_built_apart_and_merged_answer_like_one_build(tmp_path, clustered):
    X, ids, Q = clustered
    trained = train_ivf("IVF32,Flat", 16, X[:2_000], tmp_path / "trained.faiss")
    assert build_ivf_shard(trained, batches_of(X[:1_500], ids[:1_500]), tmp_path / "part-0.faiss") == 1_500
    assert build_ivf_shard(trained, batches_of(X[1_500:], ids[1_500:]), tmp_path / "part-1.faiss") == 2_500
    merged = merge_ivf_shards([tmp_path / "part-0.faiss", tmp_path / "part-1.faiss"], tmp_path / "merged")
    single = build_from_batches("ivf-ondisk:IVF32,Flat", 16, batches_of(X, ids), tmp_path / "one",
                                train_sample=X[:2_000])
    for got, expected in zip(load_index(tmp_path / "merged").search(Q, 10), single.index.search(Q, 10)):
        np.testing.assert_array_equal(got, expected)
    assert len(merged) == len(X) and merged.spec == "ivf-ondisk:IVF32,Flat"


@needs_faiss
def test_shards_of_different_trained_indexes_are_refused(tmp_path, clustered):
    X, ids, _ = clustered
    for name, sample in (("a", X[:1_000]), ("b", X[1_000:2_000])):
        train_ivf("IVF8,Flat", 16, sample, tmp_path / f"{name}.faiss")
        build_ivf_shard(tmp_path / f"{name}.faiss", batches_of(X[:100], ids[:100]), tmp_path / f"{name}-0.faiss")
    with pytest.raises(ModelFileError, match="another trained index"):
        merge_ivf_shards([tmp_path / "a-0.faiss", tmp_path / "b-0.faiss"], tmp_path / "merged")


@needs_faiss
def test_an_on_disk_index_moved_to_another_folder_still_loads(tmp_path, clustered):
    X, ids, Q = clustered
    build_from_batches("ivf-ondisk:IVF16,Flat", 16, batches_of(X, ids), tmp_path / "a")
    expected = load_index(tmp_path / "a").search(Q, 10)
    (tmp_path / "a").rename(tmp_path / "b")
    np.testing.assert_array_equal(load_index(tmp_path / "b").search(Q, 10)[1], expected[1])


@needs_faiss
def test_the_summary_says_what_was_built_and_why(tmp_path, clustered):
    X, ids, _ = clustered
    built = build_from_batches("auto", 16, batches_of(X, ids), tmp_path / "i", size=len(X), memory_budget=100_000)
    assert built.summary.startswith("built ivf-ondisk (IVF64_HNSW32,Flat; nlist=64, nprobe=64) of 4,000 vectors in ")
    assert "because auto: 256 kB of vectors (4,000 x 16 float32) exceed the memory budget, 100 kB" in built.summary


@needs_faiss
def test_cli_index_auto_reaches_the_chooser_and_prints_what_it_built_and_why(tiny_model_workspace, capsys):
    from pipelines.cli import main

    code = main(["index", "--model", "m", "--workspace", str(tiny_model_workspace), "--backend", "auto",
                 "--memory-budget", "100", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "image: built ivf-ondisk (IVF1_HNSW32,Flat; nlist=1, nprobe=1) of 20 vectors in" in printed
    words = " ".join(printed.split())  # the table wraps; the summary lines do not
    assert "because auto: 320 B of vectors (20 x 4 float32) exceed the memory budget, 100 B" in words
    assert load_index(tiny_model_workspace / "index" / "m" / "text").spec == "ivf-ondisk:IVF1_HNSW32,Flat"


def test_a_bad_memory_budget_is_refused_with_the_fix(tiny_model_workspace, capsys):
    from pipelines.cli import main

    assert main(["index", "--model", "m", "--workspace", str(tiny_model_workspace), "--memory-budget", "lots"]) != 0
    assert "fix: e.g. 2GB" in capsys.readouterr().err


def test_two_builds_of_one_model_at_once_do_not_collide(tiny_model_workspace):
    """Each build stages in a folder of its own and swaps it in under a lock: both finish, one whole index stays."""
    import subprocess

    script = ("import sys; from pipelines.index import build_index; "
              f"build_index({str(tiny_model_workspace)!r}, model='m', backend=sys.argv[1], device='cpu')")
    runs = [subprocess.Popen([sys.executable, "-c", script, "exact"], stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    errors = [run.communicate()[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    index_dir = tiny_model_workspace / "index"
    assert sorted(p.name for p in index_dir.iterdir() if not p.name.endswith(".lock")) == ["m"]
    assert len(load_index(index_dir / "m" / "image")) == 20


def test_a_test_gallery_streams_only_the_test_split_with_its_rows_in_order(tiny_model_workspace):
    import pyarrow.parquet as pq

    from pipelines.index import build_index
    from pipelines.workspace import Workspace

    result = build_index(tiny_model_workspace, model="m", backend="exact", gallery="test", device="cpu")
    source = json.loads((tiny_model_workspace / "models" / "m" / "card.json").read_text())["source"]
    splits = Workspace(tiny_model_workspace).splits(int(source["split_seed"]))
    expected = [f"image{i}" for i in range(20) if splits.get(f"image{i}") == "test"]
    rows = pq.read_table(tiny_model_workspace / "index" / "m" / "image" / "gallery.parquet").to_pydict()
    assert 0 < len(expected) < 20 and result["indexes"][0]["items"] == len(expected)
    assert rows["content_hash"] == expected and rows["id"] == [f"{h}/{k}" for k, h in enumerate(expected)]
    index = load_index(tiny_model_workspace / "index" / "m" / "image")
    assert index.ids.tolist() == rows["id"]


@needs_faiss
def test_an_on_disk_build_in_many_shards_probing_every_list_equals_exact_search(tmp_path, monkeypatch, clustered):
    X, ids, Q = clustered
    monkeypatch.setattr(crossmodal.index, "ONDISK_SHARD_BYTES", 700 * (16 * 4 + 8))  # 700 rows a shard: 6 shards
    built = build_from_batches("ivf-ondisk:IVF16,Flat", 16, batches_of(X, ids, 1_000), tmp_path / "i",
                               search_params="nprobe=16")
    assert built.count == len(X) and not list((tmp_path / "i").glob(".shards-*"))  # the shards are gone
    assert (tmp_path / "i" / "index.ivfdata").stat().st_size == len(X) * (16 * 4 + 8)  # the lists, nothing more
    np.testing.assert_array_equal(load_index(tmp_path / "i").search(Q, 10)[1], built_exact(X, ids).search(Q, 10)[1])
