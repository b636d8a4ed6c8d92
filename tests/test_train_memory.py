"""Training's memory does not grow faster than its features: a split is copied out of the store a bounded gather at a
time, the training splits are let go before the evaluation, and DRCL's validation J_D (over all n^2 pairs of the
split) holds two n x n matrices at once, and row blocks of them past VAL_BLOCK_ELEMENTS."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch

import pipelines.workspace as workspace_module
from crossmodal.losses.drcl import discrimination_terms
from crossmodal.methods.drcl import validation_discrimination
from extractors.store import ShardedRows, StoreRow
from pipelines.workspace import Workspace


def fill(ws: Workspace, items: int, dim: int) -> None:
    """image and text tables of ``items`` labelled items of 3 classes, in shards of 1,000 rows."""
    rng = np.random.default_rng(0)
    for modality in ("image", "text"):
        table = ws.store.open({"name": "fake", "modality": modality, "key": "fake@000", "dim": dim})
        for start in range(0, items, 1000):
            ids = range(start, min(start + 1000, items))
            table.write_shard(rng.normal(size=(len(ids), dim)).astype(np.float32),
                              [StoreRow(content_hash=f"{modality}:{i}", item_id=f"{i % 3}/{i}",
                                        source_path=f"/raw/{i}", labels=(str(i % 3),)) for i in ids])


def test_a_split_is_gathered_from_the_store_a_bounded_number_of_rows_at_a_time(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    fill(ws, 3000, 16)
    expected = ws.datasets(["image", "text"])
    asked: list[int] = []
    original = ShardedRows.__getitem__
    monkeypatch.setattr(ShardedRows, "__getitem__", lambda self, idx: asked.append(np.size(idx)) or original(self, idx))
    monkeypatch.setattr(workspace_module, "GATHER_BYTES", 100 * 16 * 4)  # 100 rows of 16 floats
    got = ws.datasets(["image", "text"])
    assert max(asked) == 100
    for split in ("train", "val", "test"):
        for m in ("image", "text"):
            np.testing.assert_array_equal(getattr(got, split)[m].X, getattr(expected, split)[m].X)
            assert getattr(got, split)[m].X.dtype == np.float32


def test_copying_the_splits_out_of_the_store_peaks_near_the_features_themselves(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    fill(ws, 6000, 512)
    monkeypatch.setattr(workspace_module, "GATHER_BYTES", 1 << 18)  # a quarter MB, as 16 MB is to a large table
    ws.splits(1)  # drawn and recorded first: the read below is what training repeats
    tracemalloc.start()
    try:
        data = ws.datasets(["image", "text"])
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    features = sum(fs.X.nbytes for split in (data.train, data.val, data.test) for fs in split.values())
    assert features == 2 * 6000 * 512 * 4
    # Measured: 24.6 MB of features, 25.1 MB held after, 30.6 MB at the peak; one gather of a whole split (its read
    # buffers, their join and the copy) peaked at 52.1 MB.
    assert current < features + 2_000_000
    assert peak < features + 7_000_000  # ~0.4 KB of metadata per row while the tables are open


def expected_splits(ws: Workspace, modality: str, classes: list[str], *, multilabel: bool) -> dict[str, tuple]:
    """Each split of ``modality`` as the datasets rule says, item by item in Python: (ids, labels, X)."""
    table, assignment = ws.table(modality), ws.splits(1)
    out = {}
    for split in ("train", "val", "test"):
        rows = sorted((i for i, h in enumerate(table.content_hash) if assignment.get(h) == split),
                      key=lambda i: table.item_id[i])
        if multilabel:
            labels = np.array([[int(c in table.labels[i]) for c in classes] for i in rows], dtype=np.uint8)
        else:
            labels = np.array([classes.index(table.labels[i][0]) for i in rows], dtype=np.int64)
        out[split] = ([table.item_id[i] for i in rows], labels, np.asarray(table.X)[rows])
    return out


def test_the_splits_hold_the_rows_labels_and_order_the_item_by_item_rule_gives(tmp_path):
    ws = Workspace(tmp_path)
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c", "d"]
    for modality in ("image", "text"):
        table = ws.store.open({"name": "fake", "modality": modality, "key": "fake@000", "dim": 6})
        for shard in range(3):
            ids = [f"{rng.integers(100)}-{shard}-{i}" for i in range(40)]  # out of order, some labels repeat a class
            labels = [tuple(rng.choice(classes, rng.integers(1, 3))) if i % 9 else () for i in range(40)]
            table.write_shard(rng.normal(size=(40, 6)).astype(np.float32),
                              [StoreRow(content_hash=f"{modality}:{shard}:{i}", item_id=ids[i],
                                        source_path=f"/raw/{ids[i]}", labels=labels[i]) for i in range(40)])
    data = ws.datasets(["image", "text"])
    assert data.train["image"].multilabel
    for modality in ("image", "text"):
        for split, (ids, labels, X) in expected_splits(ws, modality, classes, multilabel=True).items():
            got = getattr(data, split)[modality]
            assert got.ids.tolist() == ids
            np.testing.assert_array_equal(got.labels, labels)
            np.testing.assert_array_equal(got.X, X)


def test_single_label_splits_hold_class_indices_in_the_item_by_item_order(tmp_path):
    ws = Workspace(tmp_path)
    fill(ws, 2500, 8)
    data = ws.datasets(["image", "text"])
    for modality in ("image", "text"):
        for split, (ids, labels, X) in expected_splits(ws, modality, ["0", "1", "2"], multilabel=False).items():
            got = getattr(data, split)[modality]
            assert got.ids.tolist() == ids and got.labels.dtype == np.int64
            np.testing.assert_array_equal(got.labels, labels)
            np.testing.assert_array_equal(got.X, X)


def test_validation_j_d_in_row_blocks_equals_the_whole_matrix_sum():
    g = torch.Generator().manual_seed(0)
    n, classes, dim = 700, 5, 32
    y = torch.nn.functional.one_hot(torch.randint(classes, (n,), generator=g), classes).float()
    y[::7] = ((y[::7] + (torch.rand(len(y[::7]), classes, generator=g) > 0.6).float()) > 0).float()  # multi-hot
    y[3] = 0  # an unlabelled row: a zero recast
    z = torch.randn(n, dim, generator=g)
    z[5] = 0  # a zero embedding: its cosine is clamped
    W_pinv = torch.linalg.pinv(torch.linalg.qr(torch.randn(dim, classes, generator=g))[0])
    whole = discrimination_terms(y, z, W_pinv, cosine_scale=2.0)
    blocked = validation_discrimination(y, z, W_pinv, cosine_scale=2.0, block_elements=128 * n)
    for a, b in zip(whole, blocked):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-5, atol=0.0)


def test_a_validation_split_within_one_block_gives_the_same_floats_as_before():
    g = torch.Generator().manual_seed(1)
    y = torch.nn.functional.one_hot(torch.randint(4, (200,), generator=g), 4).float()
    z = torch.randn(200, 16, generator=g)
    W_pinv = torch.linalg.pinv(torch.linalg.qr(torch.randn(16, 4, generator=g))[0])
    for a, b in zip(discrimination_terms(y, z, W_pinv), validation_discrimination(y, z, W_pinv)):
        assert torch.equal(a, b)


def test_fit_and_save_empties_the_splits_handed_over_before_it_evaluates_and_keeps_them_otherwise(tmp_path,
                                                                                                  monkeypatch):
    from crossmodal.evaluation import evaluate
    from crossmodal.methods.drcl import DRCLConfig
    from crossmodal.synthetic import make_synthetic
    from pipelines import train as train_module

    ds = make_synthetic({"image": 12, "text": 10}, 3, 60, 12, 24, seed=0)
    config = DRCLConfig(epochs=1, batch_size=16, hidden=(16,), dim=8)
    seen: list[tuple[int, int]] = []
    train, val = dict(ds.train), dict(ds.val)

    def evaluating(model, test, *args, **kwargs):  # what fit_and_save still holds when it evaluates
        seen.append((len(train), len(val)))
        return evaluate(model, test, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluating)
    released = train_module.fit_and_save("drcl", train, val, ds.test, config=config, device="cpu", out=tmp_path / "a",
                                         progress=False, release=True)
    kept_train, kept_val = dict(ds.train), dict(ds.val)
    kept = train_module.fit_and_save("drcl", kept_train, kept_val, ds.test, config=config, device="cpu",
                                     out=tmp_path / "b", progress=False)
    assert seen[0] == (0, 0) and train == {} and val == {}
    assert len(kept_train) == len(kept_val) == 2
    assert released.metrics == kept.metrics  # the same model and test split either way
