"""Items with the same bytes (the same picture under two names or two classes) after the store: each is its own row in
training, in the splits and in the index, sharing its features."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from extractors.store import StoreRow
from pipelines.workspace import Workspace


def fill(ws: Workspace) -> None:
    """image and text of 4 classes x 5 items; the texts "0/0_1" and "1/1_0" have the bytes of "0/0_0"."""
    rng = np.random.default_rng(0)
    items = [(f"{c}/{c}_{n}", (str(c),)) for c in range(4) for n in range(5)]
    for modality in ("image", "text"):
        table = ws.store.open({"name": "fake", "modality": modality, "key": "fake@000", "dim": 4})
        X = rng.normal(0, 0.1, (len(items), 4)).astype(np.float32)
        X[:, 1] += [int(labels[0]) for _, labels in items]
        twins = {"0/0_1", "1/1_0"} if modality == "text" else set()
        hashes = [f"{modality}:0/0_0" if item in twins else f"{modality}:{item}" for item, _ in items]
        X[[i for i, (item, _) in enumerate(items) if item in twins]] = X[0]
        table.write_shard(X, [StoreRow(content_hash=h, item_id=item, source_path=f"/raw/{item}", labels=labels)
                              for h, (item, labels) in zip(hashes, items)])


def test_every_item_with_shared_bytes_is_in_the_dataset_and_all_of_them_in_one_split(tmp_path):
    ws = Workspace(tmp_path)
    fill(ws)
    data = ws.datasets(["image", "text"], seed=2)
    assert data.paired
    where = {i: s for s in ("train", "val", "test") for i in getattr(data, s)["text"].ids}
    assert len(where) == 20
    assert where["0/0_0"] == where["0/0_1"] == where["1/1_0"]


def test_the_index_lists_each_item_with_shared_bytes_as_its_own_hit(tmp_path):
    from crossmodal.index import load_index
    from pipelines.index import build_index
    from pipelines.query import _load_index
    from pipelines.train import train_in_workspace

    ws = Workspace(tmp_path)
    fill(ws)
    train_in_workspace(workspace=tmp_path, name="m", epochs=1, seed=2, progress=False)
    build_index(tmp_path, model="m", backend="exact", gallery="all", device="cpu")
    folder = tmp_path / "index" / "m" / "text"
    gallery = pq.read_table(folder / "gallery.parquet").to_pylist()
    assert len(gallery) == len({row["id"] for row in gallery}) == 20
    _, rows = _load_index(str(folder), 0)
    scores, ids = load_index(folder).search(np.asarray(_embedding(tmp_path, "0/0_0")), 3)
    assert {rows[str(i)]["item_id"] for i in ids[0]} == {"0/0_0", "0/0_1", "1/1_0"}


def _embedding(workspace, item: str) -> np.ndarray:
    from crossmodal.model import CrossModalModel

    ws = Workspace(workspace)
    table = ws.table("text")
    net = CrossModalModel.load(ws.model_dir("m"), device="cpu")
    return net.encode("text", np.asarray(table.X[[table.item_id.index(item)]]))
