from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest
import scipy.io as sio

from crossmodal.datasets import WIKI_VAL_SIZE, XMEDIA_TEST_SIZES, load_benchmark, write_benchmark
from crossmodal.errors import DatasetFormatError, UnknownNameError
from crossmodal.featureset import CrossModalDataset, FeatureSet
from crossmodal.synthetic import make_synthetic


def assert_same_data(loaded: CrossModalDataset, original: CrossModalDataset) -> None:
    for split in ("train", "val", "test"):
        a, b = getattr(loaded, split), getattr(original, split)
        assert sorted(a) == sorted(b)
        for m in a:
            np.testing.assert_array_equal(a[m].X, b[m].X)
            np.testing.assert_array_equal(a[m].labels, b[m].labels)
            assert a[m].num_classes == b[m].num_classes


def _concat(a, b):
    return FeatureSet.build(np.concatenate([a.X, b.X]), np.concatenate([a.labels, b.labels]), num_classes=a.num_classes)


def paired(n_val=4, n_test=5, *, multilabel=False, seed=0):
    return make_synthetic({"image": 4, "text": 3}, 3, 12, n_val, n_test, seed=seed, multilabel=multilabel)


def five_views(n_test=6, *, test_sizes=None):
    dims = {"image": 4, "text": 3, "audio": 2, "mesh": 3, "video": 2}
    ds = make_synthetic(dims, 3, 9, 4, n_test, seed=1, paired=False)
    if test_sizes:
        ds = CrossModalDataset(ds.name, ds.train, ds.val, {m: fs.subset(slice(0, test_sizes[m]))
                                                           for m, fs in ds.test.items()}, paired=False)
    return ds


# ---------------------------------------------------------------------------------------------------------------------
# Each format round-trips.


def test_wiki_mat_round_trips_with_the_first_231_test_pairs_as_validation(tmp_path):
    ds = paired(n_val=WIKI_VAL_SIZE)
    write_benchmark("wiki", tmp_path / "wiki.mat", ds)
    assert {"train_imgs_deep", "train_texts_doc", "test_imgs_labels"} <= set(sio.loadmat(tmp_path / "wiki.mat"))
    loaded = load_benchmark("wiki", tmp_path)  # a folder finds wiki.mat
    assert_same_data(loaded, ds)
    assert loaded.paired and loaded.test["image"].ids[0] == f"test/{WIKI_VAL_SIZE}"
    np.testing.assert_array_equal(loaded.test["image"].ids, loaded.test["text"].ids)


def test_wiki_hdf5_variant_is_recognised_by_content_not_by_name(tmp_path):
    ds = paired(n_val=WIKI_VAL_SIZE)
    write_benchmark("wiki", tmp_path / "wiki_deep_doc2vec_data_corr_ae.h5py", ds)
    (tmp_path / "wiki_deep_doc2vec_data_corr_ae.h5py").rename(tmp_path / "features.mat")
    with h5py.File(tmp_path / "features.mat") as f:
        assert "train_text" in f and "valid_imgs_deep" not in f
    assert_same_data(load_benchmark("wiki", tmp_path / "features.mat"), ds)


def test_an_hdf5_file_without_h5py_installed_names_the_extra_that_brings_it(tmp_path, monkeypatch):
    write_benchmark("wiki", tmp_path / "wiki.h5", paired(n_val=WIKI_VAL_SIZE))
    monkeypatch.setitem(sys.modules, "h5py", None)  # what `import h5py` meets when it is not installed
    with pytest.raises(DatasetFormatError, match="h5py") as refused:
        load_benchmark("wiki", tmp_path / "wiki.h5")
    assert refused.value.hint == "pip install 'crossmodal-toolkit[hdf5]'"


def test_matlab_v73_files_are_read_transposed(tmp_path):
    ds = paired(n_val=WIKI_VAL_SIZE)
    splits = {"train": (ds.train["image"], ds.train["text"]),
              "test": tuple(_concat(ds.val[m], ds.test[m]) for m in ("image", "text"))}
    path = tmp_path / "wiki.mat"
    with h5py.File(path, "w", userblock_size=512) as f:  # v7.3: a 512-byte MATLAB header, then column-major HDF5
        for prefix, (image, text) in splits.items():
            f[f"{prefix}_imgs_deep"], f[f"{prefix}_texts_doc"] = image.X.T, text.X.T
            f[f"{prefix}_imgs_labels"] = image.labels[None, :].astype(np.float64)  # MATLAB doubles, a column
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, written by a test")
    assert_same_data(load_benchmark("wiki", path), ds)


def test_nus_round_trips_multi_hot_labels(tmp_path):
    ds = paired(multilabel=True)
    write_benchmark("nus", tmp_path / "nus.h5py", ds)
    loaded = load_benchmark("nus", tmp_path / "nus.h5py")
    assert_same_data(loaded, ds)
    assert loaded.test["text"].multilabel and loaded.test["text"].labels.dtype == np.uint8


def test_nus_without_validation_keys_validates_on_the_first_5000_test_pairs(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "nus.h5py", "w") as f:
        for split, n in (("train", 6), ("test", 5003)):
            f[f"{split}_imgs_deep"], f[f"{split}_texts"] = rng.random((n, 2)), rng.random((n, 3))
            f[f"{split}_imgs_labels"] = np.arange(n) % 2
    loaded = load_benchmark("nus-wide", tmp_path / "nus.h5py")
    assert (len(loaded.val["image"]), len(loaded.test["text"])) == (5000, 3)


def test_inria_round_trips_and_keeps_text_labels_that_differ(tmp_path):
    ds = paired()
    noisy = ds.train["text"].with_labels((ds.train["text"].labels + 1) % 3)
    ds = CrossModalDataset(ds.name, {"image": ds.train["image"], "text": noisy}, ds.val, ds.test, paired=True)
    write_benchmark("inria", tmp_path / "INRIA-Websearch.mat", ds)
    assert "tr_txt_lab" in sio.loadmat(tmp_path / "INRIA-Websearch.mat")
    assert_same_data(load_benchmark("INRIA-Websearch", tmp_path), ds)


def test_xmedia_round_trips_with_the_published_test_sizes_and_the_rest_as_validation(tmp_path):
    ds = five_views(n_test=500, test_sizes=XMEDIA_TEST_SIZES)
    write_benchmark("xmedia", tmp_path / "XMediaFeatures.mat", ds)
    assert sio.loadmat(tmp_path / "XMediaFeatures.mat")["A_te"].shape == (100 + 4, 2)
    loaded = load_benchmark("xmedia", tmp_path)
    assert_same_data(loaded, ds)
    assert not loaded.paired and loaded.test["mesh"].ids[0] == "mesh/test/0" and len(loaded.test["video"]) == 87


def test_xmedianet_round_trips_through_cell_arrays(tmp_path):
    ds = five_views()
    write_benchmark("xmedianet", tmp_path / "x.mat", ds)
    assert sio.loadmat(tmp_path / "x.mat")["valid"].shape == (1, 5)
    assert_same_data(load_benchmark("xmedianet", tmp_path / "x.mat"), ds)


def test_wiki_sift_lda_format_round_trips(tmp_path):
    ds = paired(n_val=WIKI_VAL_SIZE)
    write_benchmark("wiki-sift-lda", tmp_path / "wikiData_with_labels.mat", ds)
    assert_same_data(load_benchmark("wiki-sift-lda", tmp_path), ds)


# ---------------------------------------------------------------------------------------------------------------------
# Labels.


def test_class_ids_map_onto_the_sorted_training_classes_and_unknown_or_negative_ids_are_unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"tr_img": rng.random((4, 2)), "tr_txt": rng.random((4, 2)), "tr_img_lab": np.array([[9, 3, 7, 3]]),
              "val_img": rng.random((2, 2)), "val_txt": rng.random((2, 2)), "val_img_lab": np.array([[-1], [7]]),
              "te_img": rng.random((2, 2)), "te_txt": rng.random((2, 2)), "te_img_lab": np.array([5, 9])}
    sio.savemat(tmp_path / "inria.mat", arrays)
    ds = load_benchmark("inria", tmp_path / "inria.mat")
    assert ds.num_classes == 3
    np.testing.assert_array_equal(ds.train["text"].labels, [2, 0, 1, 0])
    np.testing.assert_array_equal(ds.val["image"].labels, [-1, 1])
    np.testing.assert_array_equal(ds.test["image"].labels, [-1, 2])


# ---------------------------------------------------------------------------------------------------------------------
# Errors name the file and the key.


@pytest.fixture
def inria_file(tmp_path):
    path = tmp_path / "inria.mat"
    write_benchmark("inria", path, paired())
    return path


def _rewrite(path, **changes):
    arrays = {k: v for k, v in sio.loadmat(path).items() if not k.startswith("__")}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    sio.savemat(path, arrays)


def test_a_missing_key_is_named_with_the_file(inria_file):
    _rewrite(inria_file, te_txt=None)
    with pytest.raises(DatasetFormatError, match=r"inria\.mat: key 'te_txt' is missing"):
        load_benchmark("inria", inria_file)


def test_features_that_are_not_a_matrix_are_refused(inria_file):
    _rewrite(inria_file, val_img=np.zeros((2, 2, 2)))
    with pytest.raises(DatasetFormatError, match=r"inria\.mat: key 'val_img' must be a 2-D"):
        load_benchmark("inria", inria_file)


def test_a_label_count_that_does_not_match_the_features_is_refused(inria_file):
    _rewrite(inria_file, tr_img_lab=np.zeros((1, 11)))
    with pytest.raises(DatasetFormatError, match=r"key 'tr_img_lab' has 11 labels but 'tr_img' has 12 rows"):
        load_benchmark("inria", inria_file)


def test_paired_modalities_with_different_row_counts_are_refused(inria_file):
    _rewrite(inria_file, te_txt=np.zeros((4, 3)))
    with pytest.raises(DatasetFormatError, match="'te_img' has 5 rows but 'te_txt' has 4"):
        load_benchmark("inria", inria_file)


def test_an_unreadable_file_is_refused(tmp_path):
    (tmp_path / "wiki.mat").write_bytes(b"this is not a MAT file" * 10)
    with pytest.raises(DatasetFormatError, match=r"wiki\.mat: not a readable MAT"):
        load_benchmark("wiki", tmp_path / "wiki.mat")


def test_a_folder_without_the_benchmark_file_is_refused(tmp_path):
    with pytest.raises(DatasetFormatError, match="looked for XMediaFeatures.mat"):
        load_benchmark("xmedia", tmp_path)


def test_an_unknown_benchmark_name_suggests_close_names(tmp_path):
    with pytest.raises(UnknownNameError, match="xmedia"):
        load_benchmark("xmedai", tmp_path)


def test_writing_wiki_with_another_validation_size_is_refused(tmp_path):
    with pytest.raises(DatasetFormatError, match="fixes it at 231"):
        write_benchmark("wiki", tmp_path / "wiki.mat", paired(n_val=5))


# ---------------------------------------------------------------------------------------------------------------------
# The real Wikipedia SIFT/LDA benchmark.


def test_the_real_wikipedia_sift_lda_benchmark_loads_with_its_published_shapes(shared_data):
    ds = load_benchmark("wiki-sift-lda", shared_data / "wikipedia-sift-lda")
    assert ds.paired and ds.num_classes == 10 and ds.modalities == ["image", "text"]
    assert [ds.train["image"].X.shape, ds.train["text"].X.shape] == [(2173, 128), (2173, 10)]
    assert [len(ds.val["image"]), len(ds.test["text"])] == [231, 462]
    assert np.bincount(ds.test["image"].labels).tolist() == [23, 55, 62, 58, 49, 40, 35, 26, 50, 64]
    assert ds.train["image"].ids[0] == ds.train["text"].ids[0] == "b3150b0c281960b6a6d33407824fd40a-3"
