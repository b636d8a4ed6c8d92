from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import ConfigError
from crossmodal.featureset import FeatureSet
from crossmodal.noise import (
    alignment_noise,
    asymmetric_label_noise,
    corrupt,
    noise_report,
    symmetric_label_noise,
)

C = 5


def _labels(n: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, C, n)


def _paired(n: int = 100) -> dict[str, FeatureSet]:
    labels = _labels(n)
    rng = np.random.default_rng(1)
    ids = [f"pair/{i}" for i in range(n)]
    return {m: FeatureSet.build(rng.normal(size=(n, d)), labels, ids, num_classes=C)
            for m, d in (("image", 6), ("text", 4))}


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8, 1.0])
def test_symmetric_noise_redraws_exactly_the_requested_fraction(rate):
    labels = _labels()
    # with 10^9 classes a re-drawn label (almost surely) differs from the true one, so every re-draw is visible
    noisy = symmetric_label_noise(labels, 10**9, rate, seed=3)
    assert (noisy != labels).sum() == round(rate * len(labels))


def test_symmetric_noise_draws_new_labels_from_exactly_c_classes():
    noisy = symmetric_label_noise(np.zeros(20000, dtype=np.int64), C, 1.0, seed=0)
    counts = np.bincount(noisy, minlength=C + 1)
    assert counts[C] == 0  # MRL's off-by-one would put about 1/(C+1) of them on a class C that does not exist
    assert np.allclose(counts[:C] / 20000, 1 / C, atol=0.02)


def test_symmetric_noise_effective_rate_is_about_r_times_c_minus_1_over_c():
    labels = _labels(20000)
    noisy = symmetric_label_noise(labels, C, 0.5, seed=1)
    assert (noisy != labels).mean() == pytest.approx(0.5 * (C - 1) / C, abs=0.01)


def test_label_noise_is_reproducible_per_seed():
    labels = _labels()
    assert np.array_equal(symmetric_label_noise(labels, C, 0.4, seed=7), symmetric_label_noise(labels, C, 0.4, seed=7))
    assert not np.array_equal(symmetric_label_noise(labels, C, 0.4, seed=7),
                              symmetric_label_noise(labels, C, 0.4, seed=8))


def test_symmetric_noise_never_touches_unlabelled_items():
    labels = _labels()
    labels[:50] = -1
    noisy = symmetric_label_noise(labels, C, 1.0, seed=0)
    assert np.all(noisy[:50] == -1) and np.all(noisy[50:] >= 0)


def test_asymmetric_noise_flips_exactly_r_of_each_mapped_class_to_its_partner():
    labels = np.repeat(np.arange(4), 50)
    noisy = asymmetric_label_noise(labels, 4, 0.4, seed=2)
    changed = noisy != labels
    flipped_classes = np.unique(labels[changed])
    assert len(flipped_classes) == 2  # half of the classes are mapped
    for a in flipped_classes:
        targets = np.unique(noisy[changed & (labels == a)])
        assert len(targets) == 1 and targets[0] not in flipped_classes  # onto one class of the other half
        assert changed[labels == a].sum() == 20  # exactly round(0.4 * 50)


@pytest.mark.parametrize("kind", ["partial", "complete"])
def test_alignment_noise_moves_exactly_the_requested_rows_to_partners_of_the_right_class(kind):
    labels = _labels()
    partner = alignment_noise(labels, kind, 0.3, seed=4)
    moved = partner != np.arange(len(labels))
    assert moved.sum() == 60
    same_class = labels[partner[moved]] == labels[moved]
    assert np.all(same_class) if kind == "partial" else not np.any(same_class)


def test_partial_alignment_noise_on_a_singleton_class_is_refused():
    with pytest.raises(ConfigError, match="partner"):
        alignment_noise(np.array([0, 1, 1, 1]), "partial", 1.0, seed=0)


def test_corrupt_changes_only_the_training_split_it_is_given_and_keeps_the_input():
    train = _paired()
    before = {m: fs.labels.copy() for m, fs in train.items()}
    noisy = corrupt(train, label_noise=0.4, seed=0, paired=True)
    for m in train:
        assert np.array_equal(train[m].labels, before[m])  # the caller's split is not modified
        assert (noisy[m].labels != before[m]).sum() <= 40
    # each modality gets its own noise (MRL corrupts modalities independently)
    assert not np.array_equal(noisy["image"].labels, noisy["text"].labels)


def test_corrupt_alignment_keeps_ids_and_labels_and_reports_the_rate():
    train = _paired()
    noisy = corrupt(train, alignment_noise=("complete", 0.4), seed=5, paired=True)
    report = noise_report(train, noisy)
    assert report.alignment == {"image": 0.0, "text": 0.4}
    assert report.label == {"image": 0.0, "text": 0.0}
    assert np.array_equal(noisy["text"].ids, train["text"].ids)


def test_corrupt_refuses_alignment_noise_on_unpaired_data():
    with pytest.raises(ConfigError, match="paired"):
        corrupt(_paired(), alignment_noise=("partial", 0.2), seed=0, paired=False)


def test_noise_report_measures_the_effective_label_rate():
    train = _paired()
    noisy = corrupt(train, label_noise=1.0, seed=0, paired=True)
    report = noise_report(train, noisy)
    for m in train:
        assert report.label[m] == pytest.approx((noisy[m].labels != train[m].labels).mean())
        assert 0.6 < report.label[m] < 0.95  # about (C - 1) / C = 0.8
