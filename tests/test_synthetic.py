from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import ConfigError
from crossmodal.metrics import map_at_k
from crossmodal.synthetic import make_synthetic


def test_the_same_seed_gives_the_same_dataset_and_another_seed_a_different_one():
    a, b = (make_synthetic({"image": 8, "text": 5}, 3, 10, 4, 6, seed=7) for _ in range(2))
    c = make_synthetic({"image": 8, "text": 5}, 3, 10, 4, 6, seed=8)
    for split in ("train", "val", "test"):
        for m in ("image", "text"):
            np.testing.assert_array_equal(getattr(a, split)[m].X, getattr(b, split)[m].X)
            np.testing.assert_array_equal(getattr(a, split)[m].labels, getattr(b, split)[m].labels)
    assert not np.allclose(a.train["image"].X, c.train["image"].X)


def test_adding_a_modality_leaves_the_others_unchanged():
    a = make_synthetic({"image": 8, "text": 5}, 3, 10, 4, 6, seed=7)
    b = make_synthetic({"image": 8, "text": 5, "audio": 3}, 3, 10, 4, 6, seed=7)
    np.testing.assert_array_equal(a.test["text"].X, b.test["text"].X)


def test_shapes_dtypes_and_ids_follow_the_requested_sizes():
    ds = make_synthetic({"image": 8, "3d": 5}, 4, 12, 3, 7, seed=0)
    assert ds.modalities == ["image", "mesh"] and ds.paired and ds.num_classes == 4
    assert ds.train["mesh"].X.shape == (12, 5) and ds.val["image"].X.shape == (3, 8)
    assert ds.test["image"].X.dtype == np.float32 and ds.test["image"].labels.dtype == np.int64
    np.testing.assert_array_equal(ds.test["image"].ids, ds.test["mesh"].ids)
    np.testing.assert_array_equal(ds.test["image"].labels, ds.test["mesh"].labels)


def test_unpaired_modalities_draw_their_own_items_with_their_own_ids():
    ds = make_synthetic({"image": 8, "text": 8}, 4, 40, 3, 7, seed=0, paired=False)
    assert not ds.paired and ds.train["text"].ids[0] == "text/train/0"
    assert not np.array_equal(ds.train["image"].labels, ds.train["text"].labels)


@pytest.mark.parametrize("n", [30, 31, 38])
def test_classes_are_balanced_within_one_item_in_every_split(n):
    ds = make_synthetic({"image": 4}, 4, n, n, n, seed=3)
    for split in (ds.train, ds.val, ds.test):
        counts = np.bincount(split["image"].labels, minlength=4)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_multi_label_items_carry_one_or_two_classes():
    labels = make_synthetic({"image": 4}, 5, 200, 0, 0, seed=0, multilabel=True).train["image"].labels
    assert labels.shape == (200, 5) and labels.dtype == np.uint8
    assert set(labels.sum(axis=1).tolist()) == {1, 2}


def test_raw_features_carry_classes_within_a_modality_but_are_at_chance_across_modalities():
    test = make_synthetic({"image": 32, "text": 32}, 10, 0, 0, 1000, seed=0).test
    img, txt = test["image"], test["text"]
    chance = map_at_k(img.X, img.labels, txt.X, np.random.default_rng(0).permutation(txt.labels))
    assert abs(map_at_k(img.X, img.labels, txt.X, txt.labels) - chance) < 0.03
    assert map_at_k(img.X, img.labels, img.X, img.labels) > chance + 0.15


def test_invalid_sizes_are_refused():
    with pytest.raises(ConfigError, match="num_classes=1"):
        make_synthetic({"image": 4}, 1, 10, 2, 2, seed=0)
    with pytest.raises(ConfigError, match="unknown modality"):
        make_synthetic({"smell": 4}, 3, 10, 2, 2, seed=0)
