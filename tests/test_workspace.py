"""The workspace: class names to indices, seeded stratified splits recorded in the store, datasets from the store."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from crossmodal.errors import ConfigError
from extractors.store import StoreRow
from pipelines.workspace import Workspace


def _add(ws: Workspace, modality: str, rows: list[tuple[str, tuple[str, ...]]], *, key: str = "fake@000",
         split: str | None = None, dim: int = 4) -> None:
    """Write one shard of (item id, labels) rows with features that encode the row (feature 0 = running number)."""
    table = ws.store.open({"name": key.split("@")[0], "modality": modality, "key": key, "dim": dim})
    X = np.zeros((len(rows), dim), dtype=np.float32)
    X[:, 0] = np.arange(len(rows))
    meta = [StoreRow(content_hash=f"{modality}:{key}:{item}", item_id=item, source_path=f"/raw/{item}",
                     labels=labels, split=split) for item, labels in rows]
    table.write_shard(X, meta)


def _digits(per_class: int, *, classes: str = "0123456789", start: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"{c}/{c}_{n:03d}", (c,)) for c in classes for n in range(start, start + per_class)]


def test_splits_are_stratified_per_class_and_recorded_in_the_store(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(10))
    splits = ws.splits(seed=3)
    per_class = Counter((h.split(":")[-1][0], s) for h, s in splits.items())
    assert all(per_class[(c, "train")] == 7 and per_class[(c, "val")] == 1 and per_class[(c, "test")] == 2
               for c in "0123456789")
    assert json.loads((tmp_path / "store" / "splits-3.json").read_text())["splits"] == splits


def test_splits_of_another_seed_differ_and_the_same_seed_repeats(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(10))
    first = ws.splits(seed=1)
    (tmp_path / "store" / "splits-1.json").unlink()
    assert ws.splits(seed=1) == first
    assert ws.splits(seed=2) != first


def test_items_added_later_keep_the_recorded_splits_and_refill_each_class(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(5))
    before = ws.splits(seed=1)
    _add(ws, "image", _digits(5, start=5))
    after = ws.splits(seed=1)
    assert {h: after[h] for h in before} == before
    counts = Counter(after.values())
    assert counts["test"] == 20 and counts["val"] == 10 and counts["train"] == 70


def test_a_split_given_by_a_manifest_wins(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(10))
    _add(ws, "text", _digits(10), split="test")
    splits = ws.splits(seed=1)
    assert all(s == "test" for h, s in splits.items() if h.startswith("text:"))
    assert all(splits[f"image:fake@000:{item}"] == "test" for item, _ in _digits(10))  # pairs follow their manifest


def test_items_sharing_id_and_label_across_modalities_share_a_split_and_make_a_paired_dataset(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(6))
    _add(ws, "audio", list(reversed(_digits(6))))
    data = ws.datasets(["image", "audio"], seed=5)
    assert data.paired
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(data, split)["image"].ids, getattr(data, split)["audio"].ids)
        np.testing.assert_array_equal(getattr(data, split)["image"].labels, getattr(data, split)["audio"].labels)


def test_class_names_map_to_indices_by_their_sorted_union_over_modalities(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", [("a/1", ("apple",)), ("b/1", ("banana",)), ("b/2", ("banana",))])
    _add(ws, "text", [("c/1", ("cherry",)), ("b/1", ("banana",)), ("c/2", ("cherry",))])
    assert ws.class_names(["image", "text"]) == ["apple", "banana", "cherry"]
    data = ws.datasets(["image", "text"], seed=1)
    everything = {m: np.concatenate([getattr(data, s)[m].labels for s in ("train", "val", "test")]) for m in data.train}
    assert sorted(everything["image"].tolist()) == [0, 1, 1]
    assert sorted(everything["text"].tolist()) == [1, 2, 2]
    assert data.num_classes == 3 and not data.paired


def test_items_with_several_labels_give_multi_hot_labels(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", [(f"x{i}", ("sea", "sky") if i % 2 else ("sky",)) for i in range(10)])
    data = ws.datasets(["image"], seed=1)
    labels = np.concatenate([getattr(data, s)["image"].labels for s in ("train", "val", "test")])
    assert labels.dtype == np.uint8 and labels.shape == (10, 2)
    assert sorted(map(tuple, labels.tolist())) == [(0, 1)] * 5 + [(1, 1)] * 5


def test_unlabelled_items_stay_out_of_every_split(tmp_path):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(3) + [("loose/1", ()), ("loose/2", ())])
    assert len(ws.splits(seed=1)) == 30
    data = ws.datasets(["image"], seed=1)
    assert sum(len(getattr(data, s)["image"]) for s in ("train", "val", "test")) == 30


def test_the_features_extracted_last_stand_for_a_modality_and_the_choice_is_printed_once(tmp_path, capsys):
    import os
    import time

    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(3), key="old@000")
    _add(ws, "image", _digits(3), key="new@000", dim=6)
    old = next((tmp_path / "store" / "image" / "old@000" / "shards").glob("*.parquet"))
    os.utime(old, (time.time() + 60, time.time() + 60))
    assert ws.feature_key("image") == "old@000"
    assert ws.datasets(["image"], seed=1).train["image"].dim == 4
    err = capsys.readouterr().err
    assert err.count("note: ") == 1
    assert "image has 2 feature tables; using old@000, the one extracted last (also: new@000)" in err
    assert "--extractor image=KEY" in err


def test_a_modality_with_one_table_uses_it_without_a_note(tmp_path, capsys):
    ws = Workspace(tmp_path)
    _add(ws, "image", _digits(3), key="only@000")
    assert ws.feature_key("image") == "only@000"
    assert [(t.key, t.items, t.labelled) for t in ws.feature_tables("image")] == [("only@000", 30, 30)]
    assert capsys.readouterr().err == ""


def test_an_empty_store_raises_a_config_error_naming_the_extract_command(tmp_path):
    with pytest.raises(ConfigError, match="no labelled features") as info:
        Workspace(tmp_path).datasets(seed=1)
    assert "crossmodal extract" in info.value.hint


@pytest.fixture()
def trained_workspace(tmp_path):
    """Fake image and text features of 10 classes x 5 items (feature 1 = the class), a DRCL model 'm' trained."""
    from pipelines.train import train_in_workspace

    ws = Workspace(tmp_path)
    for modality in ("image", "text"):
        rows = _digits(5)
        table = ws.store.open({"name": "fake", "modality": modality, "key": "fake@000", "dim": 4})
        X = np.random.default_rng(0).normal(0, 0.1, (len(rows), 4)).astype(np.float32)
        X[:, 1] += [int(labels[0]) for _, labels in rows]
        table.write_shard(X, [StoreRow(content_hash=f"{modality}:{item}", item_id=item, source_path=item,
                                       labels=labels) for item, labels in rows])
    result = train_in_workspace(workspace=tmp_path, name="m", epochs=2, seed=4, progress=False)
    return ws, result


def test_training_in_a_workspace_fits_the_auto_recipe_to_the_store_and_says_so(trained_workspace):
    ws, result = trained_workspace
    config = result.model.config  # 30 items per modality: the recipe's smallest widths, a batch within the 30
    assert config.hidden == (256, 256) and config.dim == 128 and config.batch_size == 16  # 10 classes: 8 x 10 -> 128
    assert config.q_schedule == "fixed" and config.select_by == "val_loss"
    assert config.epochs == 2 and config.seed == 4
    assert any(note.startswith("preset drcl-auto: no paper dataset to match") for note in result.notes)
    assert any("learning-rate search: skipped" in note for note in result.notes)  # 10 validation items per modality
    assert result.counts == {m: {"train": 30, "val": 10, "test": 10} for m in ("image", "text")}
    assert result.to_dict()["features"] == {"image": "fake@000", "text": "fake@000"}


def test_the_test_split_of_a_workspace_model_is_the_one_drawn_with_its_seed(trained_workspace):
    from crossmodal.model import read_card
    from pipelines.datasource import load_test_split

    ws, result = trained_workspace
    card = read_card(result.model_dir)
    assert card["source"] == {"kind": "workspace", "workspace": str(ws.root.resolve()), "split_seed": 4}
    test = load_test_split(card)
    expected = ws.datasets(["image", "text"], seed=4).test
    for modality in ("image", "text"):
        np.testing.assert_array_equal(test[modality].ids, expected[modality].ids)
        np.testing.assert_array_equal(test[modality].X, expected[modality].X)


def test_adding_a_modality_to_a_model_that_does_not_exist_says_to_train_it_first(tmp_path):
    from crossmodal.errors import NotTrainedError
    from pipelines.train import train_in_workspace

    with pytest.raises(NotTrainedError, match="no trained model 'photos'"):
        train_in_workspace(workspace=tmp_path, name="photos", add_modality="video", progress=False)
