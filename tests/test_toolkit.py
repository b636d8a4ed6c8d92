"""The training toolkit every trained method shares (crossmodal/methods/base.py): seeding, batching with a last-batch
policy, chunked embedding, the best-epoch snapshot, and early stopping through the ``patience`` config field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal.config import with_overrides
from crossmodal.errors import ConfigError
from crossmodal.methods import get_method, list_methods
from crossmodal.methods.base import (
    BestSnapshot,
    batch_sizes,
    derive_seed,
    embed_rows,
    fit_loop,
    index_batches,
    seeded,
    torch_rng,
)
from crossmodal.methods.drcl import DRCL, DRCLConfig
from crossmodal.synthetic import make_synthetic

CPU = torch.device("cpu")


class Recorder:
    def __init__(self):
        self.logs: list[tuple[str, int, dict]] = []

    def on_epoch_end(self, stage, epoch, epochs, logs):
        self.logs.append((stage, epoch, dict(logs)))

    def stage(self, name):
        return [logs for stage, _, logs in self.logs if stage == name]


@pytest.fixture(scope="module")
def data():
    return make_synthetic({"image": 16, "text": 12}, 4, 96, 32, 48, seed=0)


# ------------------------------------------------------------------------------------------------------------ seeding
def test_seeded_builds_the_same_module_every_time_and_leaves_the_global_rng_as_it_was():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded(1, "rsc-image"):
        a = torch.nn.Linear(4, 3)
    with seeded(1, "rsc-image"):
        b = torch.nn.Linear(4, 3)
    with seeded(1, "rsc-text"):
        c = torch.nn.Linear(4, 3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_each_stream_s_seed_depends_on_the_run_seed_and_every_part_of_its_name():
    assert derive_seed(1, "spl-image", 3) == derive_seed(1, "spl-image", 3)
    assert len({derive_seed(1, "spl-image", 3), derive_seed(2, "spl-image", 3), derive_seed(1, "spl-text", 3),
                derive_seed(1, "spl-image", 4)}) == 4


# ----------------------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize(("n", "policy", "sizes"), [
    (70, "drop", [32, 32]), (70, "keep", [32, 32, 6]), (70, "spread", [35, 35]),
    (20, "drop", [20]), (20, "keep", [20]), (20, "spread", [20]), (32, "drop", [32]), (0, "drop", [])])
def test_the_last_batch_policy_decides_what_becomes_of_the_leftover_items(n, policy, sizes):
    assert batch_sizes(n, 32, policy) == sizes


def test_an_epoch_s_batches_are_numpy_index_arrays_of_a_seeded_permutation():
    batches = index_batches(70, batch_sizes(70, 32, "keep"), torch_rng(1, "stage", 1))
    assert all(b.dtype == np.int64 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(70))
    again = index_batches(70, [32, 32, 6], torch_rng(1, "stage", 1))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    assert not np.array_equal(batches[0], index_batches(70, [32, 32, 6], torch_rng(1, "stage", 2))[0])
    dropped = index_batches(70, batch_sizes(70, 32, "drop"), torch_rng(1, "stage", 1))
    assert [len(b) for b in dropped] == [32, 32] and len(set(np.concatenate(dropped).tolist())) == 64


def test_batches_index_any_array_like_with_fancy_indexing(tmp_path: Path):
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(10, 3))
    X[:] = np.arange(30, dtype=np.float32).reshape(10, 3)
    for idx in index_batches(10, [4, 4, 2], torch_rng(0, "memmap")):
        assert np.array_equal(X[idx], np.asarray(X)[idx])


# -------------------------------------------------------------------------------------------------- chunked embedding
def test_embedding_in_chunks_equals_one_pass_and_restores_the_training_mode():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh()).train()
    X = np.random.default_rng(0).normal(size=(11, 5)).astype(np.float32)
    chunked = embed_rows(encoder, X, lambda z: 2 * z, chunk=3)
    with torch.no_grad():
        whole = 2 * encoder(torch.from_numpy(X))
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(embed_rows(encoder, torch.from_numpy(X), chunk=4), whole / 2)
    assert encoder.training


# ------------------------------------------------------------------------------------------------ best-epoch snapshot
def test_the_snapshot_keeps_the_state_of_the_best_epoch_and_restores_it():
    module = torch.nn.Linear(2, 1)
    best = BestSnapshot(module, "val_map", higher_is_better=True)
    states = {}
    for epoch, score in enumerate([0.2, 0.5, 0.4, None], start=1):
        with torch.no_grad():
            module.weight.fill_(epoch)
        states[epoch] = module.weight.clone()
        best.offer({} if score is None else {"val_map": score}, epoch)
    assert (best.epoch, best.value) == (2, 0.5)
    assert not best.exhausted(3, 2) and best.exhausted(4, 2) and not best.exhausted(4, None)
    best.restore()
    assert torch.equal(module.weight, states[2])


def test_a_nan_score_is_beaten_by_any_later_one_and_no_candidate_leaves_the_last_state():
    module = torch.nn.Linear(2, 1)
    best = BestSnapshot(module, "val_loss", higher_is_better=False)
    best.offer({"val_loss": float("nan")}, 1)
    assert best.offer({"val_loss": 9.0}, 2) and best.epoch == 2
    untouched = BestSnapshot(module, "val_loss", higher_is_better=False)
    untouched.offer({"loss": 1.0}, 1)
    last = module.weight.clone()
    untouched.restore()
    assert untouched.epoch == 0 and torch.equal(module.weight, last)


# ----------------------------------------------------------------------------------------------------- early stopping
def test_the_loop_stops_after_patience_epochs_without_a_better_score_and_says_so():
    module = torch.nn.Linear(1, 1)
    scores = iter([0.3, 0.6, 0.5, 0.55, 0.9, 0.1])
    best = BestSnapshot(module, "val_map", higher_is_better=True)
    history = fit_loop(lambda batch, epoch: {}, lambda epoch: [], epochs=6, optimizer=None,
                       on_epoch_end=lambda epoch: {"val_map": next(scores)}, best=best, patience=2)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["early_stop"] == 1.0 and "early_stop" not in history[-2]
    assert [h["best_epoch"] for h in history] == [1, 2, 2, 2]


def test_patience_is_a_config_field_of_every_method_that_overrides_reach():
    for name in list_methods():
        config = with_overrides(get_method(name).Config(), ["patience=5"])
        assert config.patience == 5 and get_method(name).Config().patience is None
    with pytest.raises(ConfigError, match="patience"):
        with_overrides(DRCLConfig(), ["patience=0"])


@pytest.mark.parametrize("name", ["dscmr", "sdml"])
def test_a_method_with_patience_stops_early_and_keeps_its_best_epoch(name, data, tmp_path: Path):
    cls = get_method(name).Config
    config = dataclasses.replace(cls(), epochs=30, batch_size=32, hidden=(32,) if name == "dscmr" else (32, 32),
                                 dim=16, lr=5e-2, patience=2)
    rec = Recorder()
    model = get_method(name)().fit(data.train, data.val, config=config, device=CPU, callbacks=[rec])
    logs = rec.stage(rec.logs[0][0])  # the first pair / modality
    best = int(logs[-1]["best_epoch"])
    assert len(logs) == best + 2 < 30 and logs[-1]["early_stop"] == 1.0
    # validation draws nothing at random, so the first `best` epochs of a run without it are the same epochs
    alone = get_method(name)().fit(data.train, None, config=dataclasses.replace(config, epochs=best, patience=None),
                                   device=CPU)
    modality = "image"
    assert np.array_equal(model.encode(modality, data.test[modality].X), alone.encode(modality, data.test[modality].X))
    # a run resumed after it had stopped does no further epoch
    get_method(name)().fit(data.train, data.val, config=config, device=CPU, checkpoint_dir=tmp_path)
    again = Recorder()
    get_method(name)().fit(data.train, data.val, config=config, device=CPU, checkpoint_dir=tmp_path, callbacks=[again])
    assert again.logs == []


def test_drcl_patience_stops_rsc_on_its_validation_loss_and_never_spl(data):
    train, val = {"text": data.train["text"]}, {"text": data.val["text"]}
    config = DRCLConfig(dim=16, hidden=(32, 32), epochs=12, batch_size=32, lr_spl=1e-2, lr_text=0.05, patience=1)
    rec = Recorder()
    model = DRCL().fit(train, val, config=config, callbacks=[rec])
    assert len(rec.stage("spl:text")) == 12
    rsc = rec.stage("rsc:text")
    summary = model.extra["rsc"]["text"]
    assert len(rsc) < 12 and summary["stopped_at"] == len(rsc) == summary["best_epoch"] + 1
    assert rsc[-1]["val_loss"] >= summary["best_value"]
