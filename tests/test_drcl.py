"""DRCL (crossmodal/methods/drcl.py) on tiny synthetic data: its stages, options, ablations, resume and quality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from crossmodal.config import with_overrides
from crossmodal.datasets import load_benchmark, write_benchmark
from crossmodal.errors import ConfigError, DatasetFormatError
from crossmodal.evaluation import evaluate, evaluate_embeddings, label_regression_embeddings
from crossmodal.methods import drcl as drcl_module
from crossmodal.methods import get_method
from crossmodal.methods.base import default_features
from crossmodal.methods.drcl import DRCL, DRCLConfig, batch_sizes, initial_prior
from crossmodal.synthetic import make_synthetic

TINY = DRCLConfig(dim=16, hidden=(32, 32), epochs=3, batch_size=32, lr_spl=1e-2, lr_image=1e-2, lr_text=1e-2)


@pytest.fixture(scope="module")
def data():
    return make_synthetic({"image": 24, "text": 16}, 4, 64, 32, 64, seed=0)


class Recorder:
    def __init__(self, fail_at: tuple[str, int] | None = None):
        self.logs: list[tuple[str, int, dict]] = []
        self.fail_at = fail_at

    def on_epoch_end(self, stage, epoch, epochs, logs):
        self.logs.append((stage, epoch, dict(logs)))
        if (stage, epoch) == self.fail_at:
            raise KeyboardInterrupt("killed")

    def stage(self, name):
        return [logs for stage, _, logs in self.logs if stage == name]


def fit(train, val=None, callbacks=(), checkpoint_dir=None, **changes):
    config = dataclasses.replace(TINY, **changes)
    return DRCL().fit(train, val, config=config, callbacks=callbacks, checkpoint_dir=checkpoint_dir)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_drcl_is_registered_with_the_papers_defaults():
    assert get_method("drcl") is DRCL
    c = DRCLConfig()
    assert (c.dim, c.hidden, c.batch_size, c.epochs, c.lr_spl, c.betas) == (2048, (4096, 4096), 1024, 200, 5e-4,
                                                                            (0.5, 0.999))
    assert (c.alpha, c.beta, c.eta, c.gamma, c.prior_seed, c.seed) == (0.1, 0.1, 1.0, 0.9, 1000, 1)
    assert (c.lr_for("image"), c.lr_for("text"), c.lr_for("mesh")) == (6e-6, 5e-3, 3e-3)
    assert with_overrides(c, ["lr_text=1e-3", "hidden=[8, 8]", "prior=random"]).hidden == (8, 8)


def test_initial_prior_has_orthonormal_columns_and_depends_only_on_its_seed():
    W = initial_prior(64, 5, seed=1000)
    torch.testing.assert_close(W.T @ W, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(W, initial_prior(64, 5, seed=1000), rtol=0, atol=0)
    assert not torch.allclose(W, initial_prior(64, 5, seed=1001))
    with pytest.raises(ConfigError):
        initial_prior(4, 5, seed=0)


def test_q_ramps_by_a_hundredth_per_epoch_from_the_first_epoch(data):
    rec = Recorder()
    fit({"image": data.train["image"]}, callbacks=[rec])
    assert [logs["q"] for logs in rec.stage("spl:image")] == [0.01, 0.02, 0.03]
    assert [logs["q"] for logs in rec.stage("rsc:image")] == [0.01, 0.02, 0.03]


def test_reference_code_mode_makes_no_update_in_the_first_spl_epoch(data):
    train = {"image": data.train["image"]}
    code = fit(train, epochs=1, spl_q_start_epoch=0, prior_epoch="final")
    torch.testing.assert_close(code.prior, initial_prior(16, 4, seed=1000), rtol=0, atol=0)
    paper = fit(train, epochs=1, prior_epoch="final")
    assert (paper.prior - initial_prior(16, 4, seed=1000)).abs().max() > 1e-3


def test_spl_selects_the_prior_of_the_modality_with_the_best_peak_score(data):
    both = fit(data.train)
    scores = both.extra["spl"]["scores"]
    selected = both.extra["spl"]["selected"]
    assert selected == max(scores, key=scores.get)
    alone = fit({selected: data.train[selected]})  # each modality's SPL run does not depend on the others
    torch.testing.assert_close(both.prior, alone.prior, rtol=0, atol=0)


def test_best_prior_epoch_keeps_the_w_of_the_best_scoring_epoch(data):
    train, val = {"image": data.train["image"]}, {"image": data.val["image"]}
    best = fit(train, val, epochs=8, quality_split="val")
    epoch = best.extra["spl"]["best_epochs"]["image"]
    assert epoch < 8
    final = fit(train, val, epochs=epoch, quality_split="val", prior_epoch="final")
    torch.testing.assert_close(best.prior, final.prior, rtol=0, atol=0)


def test_spl_stops_on_patience_only_when_its_score_is_measured_on_the_validation_split(data):
    train, val = {"image": data.train["image"]}, {"image": data.val["image"]}
    on_val, on_train = Recorder(), Recorder()
    model = fit(train, val, epochs=40, patience=1, quality_split="val", callbacks=[on_val])
    best_epoch = model.extra["spl"]["best_epochs"]["image"]
    assert best_epoch + 1 < 40 and len(on_val.stage("spl:image")) == best_epoch + 1
    fit(train, val, epochs=40, patience=1, callbacks=[on_train])  # a training-set fit: every epoch runs
    assert len(on_train.stage("spl:image")) == 40


def test_full_quality_pass_scores_the_trained_network_on_the_whole_training_set(data):
    accumulated, full = Recorder(), Recorder()
    fit({"image": data.train["image"]}, callbacks=[accumulated])
    fit({"image": data.train["image"]}, callbacks=[full], quality_pass="full")
    a = [logs["quality"] for logs in accumulated.stage("spl:image")]
    f = [logs["quality"] for logs in full.stage("spl:image")]
    assert a != f and np.allclose(a, f, atol=0.05)  # pre-step vs end-of-epoch parameters: close, not equal


def test_random_prior_ablation_uses_w0_and_skips_spl(data):
    rec = Recorder()
    model = fit(data.train, prior="random", callbacks=[rec])
    torch.testing.assert_close(model.prior, initial_prior(16, 4, seed=1000), rtol=0, atol=0)
    assert not [s for s, _, _ in rec.logs if s.startswith("spl")]


@pytest.mark.parametrize(("switch", "missing"), [
    ("use_jd", {"jd_loss", "j_intra", "j_inter"}), ("use_jmse", {"jmse_loss"}), ("use_label_loss", {"label_loss"})])
def test_each_loss_ablation_removes_its_term(data, switch, missing):
    rec = Recorder()
    fit({"image": data.train["image"]}, epochs=1, prior="random", callbacks=[rec], **{switch: False})
    logged = set(rec.stage("rsc:image")[0])
    assert missing.isdisjoint(logged)
    assert {"label_loss", "jd_loss", "jmse_loss"} - missing <= logged


def test_without_fa_the_training_loss_equals_the_unaugmented_loss_of_a_fixed_q(data):
    # With FA off, lambda=1 mixup and no mixup are the same computation.
    a, b = Recorder(), Recorder()
    fit({"text": data.train["text"]}, epochs=2, prior="random", use_fa=False, callbacks=[a])
    fit({"text": data.train["text"]}, epochs=2, prior="random", gamma=1.0, callbacks=[b])
    assert [x["loss"] for x in a.stage("rsc:text")] == pytest.approx([x["loss"] for x in b.stage("rsc:text")],
                                                                      rel=1e-6)


def test_fixed_q_ablation_uses_the_same_q_every_epoch(data):
    rec = Recorder()
    fit({"image": data.train["image"]}, prior="random", q_schedule="fixed", q_fixed=0.5, callbacks=[rec])
    assert [logs["q"] for logs in rec.stage("rsc:image")] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(("n", "last_batch", "sizes"), [
    (2173, "spread", [1087, 1086]), (2173, "keep", [1024, 1024, 125]), (2173, "drop", [1024, 1024]),
    (1500, "spread", [1500]), (1600, "spread", [800, 800]), (300, "spread", [300]), (300, "keep", [300])])
def test_batches_use_every_item_unless_the_reference_codes_drop_is_asked(n, last_batch, sizes):
    assert batch_sizes(n, DRCLConfig(last_batch=last_batch)) == sizes


def test_a_modality_with_fewer_items_than_the_batch_trains_on_one_smaller_batch(data):
    small = {"image": data.train["image"].subset(np.arange(20))}
    model = fit(small, epochs=1, prior="random")
    assert model.extra["rsc"]["image"]["train_items"] == 20
    with pytest.raises(DatasetFormatError, match="never train"):
        fit(small, epochs=1, prior="random", last_batch="drop")


def test_rsc_keeps_the_epoch_with_the_lowest_validation_loss(data):
    train, val = {"text": data.train["text"]}, {"text": data.val["text"]}
    rec = Recorder()
    picked = fit(train, val, epochs=5, prior="random", lr_text=0.05, callbacks=[rec])
    losses = [logs["val_loss"] for logs in rec.stage("rsc:text")]
    best = picked.extra["rsc"]["text"]["best_epoch"]
    assert best == int(np.argmin(losses)) + 1 and best < 5
    last = fit(train, val, epochs=best, prior="random", lr_text=0.05, select_by="last")
    assert_same_state(state(picked.encoders["text"]), state(last.encoders["text"]))


def test_validation_map_selection_keeps_the_epoch_with_the_highest_map(data):
    rec = Recorder()
    model = fit({"text": data.train["text"]}, {"text": data.val["text"]}, epochs=4, prior="random",
                select_by="val_map", callbacks=[rec])
    maps = [logs["val_map"] for logs in rec.stage("rsc:text")]
    assert all(0 < m <= 1 for m in maps)
    assert model.extra["rsc"]["text"]["best_epoch"] == int(np.argmax(maps)) + 1


def test_add_modality_trains_only_the_new_encoder_and_matches_a_full_run(data):
    full = fit(data.train, data.val, prior="random")
    image_only = fit({"image": data.train["image"]}, {"image": data.val["image"]}, prior="random")
    before = state(image_only.encoders["image"])
    grown = DRCL().add_modality(image_only, "text", data.train["text"], data.val["text"])
    assert grown.modalities == ["image", "text"]
    assert_same_state(state(grown.encoders["image"]), before)
    assert_same_state(state(grown.encoders["text"]), state(full.encoders["text"]))
    torch.testing.assert_close(grown.prior, full.prior, rtol=0, atol=0)


def test_add_modality_refuses_another_label_space(data):
    model = fit({"image": data.train["image"]}, prior="random", epochs=1)
    other = make_synthetic({"text": 16}, 5, 32, 8, 8, seed=1)
    with pytest.raises(DatasetFormatError, match="classes"):
        DRCL().add_modality(model, "text", other.train["text"])


def test_training_resumes_after_a_kill_and_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    monkeypatch.setattr(drcl_module, "CHECKPOINT_SECONDS", 0.0)
    reference = fit(data.train, data.val)
    with pytest.raises(KeyboardInterrupt):
        fit(data.train, data.val, checkpoint_dir=tmp_path, callbacks=[Recorder(fail_at=("rsc:text", 2))])
    rec = Recorder()
    resumed = fit(data.train, data.val, checkpoint_dir=tmp_path, callbacks=[rec])
    # Finished stages are skipped; the kill came before epoch 2 was saved, so text resumes at epoch 2.
    assert [(s, e) for s, e, _ in rec.logs] == [("rsc:text", 2), ("rsc:text", 3)]
    torch.testing.assert_close(resumed.prior, reference.prior, rtol=0, atol=0)
    for m in ("image", "text"):
        assert_same_state(state(resumed.encoders[m]), state(reference.encoders[m]))
    assert resumed.extra == reference.extra


def test_a_checkpoint_folder_of_another_config_is_refused(data, tmp_path):
    fit({"image": data.train["image"]}, epochs=1, prior="random", checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="epochs"):
        fit({"image": data.train["image"]}, epochs=2, prior="random", checkpoint_dir=tmp_path)


def test_drcl_beats_an_untrained_encoder_and_a_linear_baseline_on_a_benchmark_file(tmp_path):
    path = write_benchmark("inria", tmp_path / "INRIA-Websearch.mat",
                           make_synthetic({"image": 24, "text": 16}, 4, 64, 32, 64, seed=0))
    ds = load_benchmark("inria", path)
    config = dataclasses.replace(TINY, epochs=20)
    model = DRCL().fit(ds.train, ds.val, config=config)
    drcl = evaluate(model, ds.test, ks=(None,), pr_curves=False)["average"]["MAP@all"]
    untrained = DRCL.build_model(config, default_features(ds.train), ds.num_classes, {})
    chance = evaluate(untrained, ds.test, ks=(None,), pr_curves=False)["average"]["MAP@all"]
    linear = evaluate_embeddings(label_regression_embeddings(ds.train, ds.test), ds.test, ks=(None,))
    assert drcl > linear["average"]["MAP@all"] + 0.1
    assert drcl > chance + 0.2


def test_drcl_trains_on_multi_label_data(data):
    ds = make_synthetic({"image": 24, "text": 16}, 4, 64, 32, 64, seed=2, multilabel=True)
    config = dataclasses.replace(TINY, epochs=20)
    model = DRCL().fit(ds.train, ds.val, config=config)
    untrained = DRCL.build_model(config, default_features(ds.train), ds.num_classes, {})
    trained_map = evaluate(model, ds.test, ks=(None,), pr_curves=False)["average"]["MAP@all"]
    assert trained_map > evaluate(untrained, ds.test, ks=(None,), pr_curves=False)["average"]["MAP@all"] + 0.05
