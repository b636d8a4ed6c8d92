"""Every registered method on a tiny synthetic set (parametrized over the registry), plus the shared pairing and the
method-specific options (prior transfer, SEDEL's modules on any two-branch method, MCCA's closed form)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal.config import with_overrides
from crossmodal.errors import ConfigError, DatasetFormatError, ModelFileError
from crossmodal.evaluation import evaluate
from crossmodal.featureset import FeatureSet
from crossmodal.methods import Checkpoint, get_method, list_methods
from crossmodal.methods.mcca import MCCA, MCCAConfig
from crossmodal.methods.paired import sample_pairs
from crossmodal.methods.sdml import SDML
from crossmodal.methods.sedel_modules import SEDELModules, SEDELOptions
from crossmodal.model import CrossModalModel
from crossmodal.synthetic import make_synthetic

CPU = torch.device("cpu")
# Tiny widths and a large learning rate so that a few epochs on ~100 items train every method; each override applies
# to the methods whose config has that field.
TINY = {"epochs": 10, "batch_size": 32, "hidden": (32,), "dim": 16, "siamese": (32, 16), "warmup_epochs": 2,
        "lr": 1e-2, "lr_others": 1e-2, "lr_spl": 1e-2, "lr_image": 1e-2, "lr_text": 1e-2,
        "lr_audio": 1e-2, "lr_mesh": 1e-2, "lr_video": 1e-2, "lr_other": 1e-2,
        # SCCMR's code smooths with 0.9, which leaves a tenth of the gradient on the true class: too slow for 10 epochs
        "epsilon": 0.1}


def tiny(name: str, **overrides):
    cls = get_method(name).Config
    fields = {f.name for f in dataclasses.fields(cls)}
    sedel = {"sedel": SEDELOptions(queue=32)} if name == "sedel" else {}  # a bank the tiny set can fill
    return cls(**{k: v for k, v in {**TINY, **sedel, **overrides}.items() if k in fields})


@pytest.fixture(scope="module")
def data():
    return make_synthetic({"image": 16, "text": 12}, 4, 96, 32, 48, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    cache: dict[str, CrossModalModel] = {}

    def fit(name: str) -> CrossModalModel:
        if name not in cache:
            cache[name] = get_method(name)().fit(data.train, data.val, config=tiny(name), device=CPU)
        return cache[name]

    return fit


def _map(model: CrossModalModel, test) -> float:
    return evaluate(model, test, pr_curves=False)["average"]["MAP@all"]


@pytest.mark.parametrize("name", list_methods())
def test_method_beats_an_untrained_encoder_on_test_map(name, data, fitted):
    model = fitted(name)
    torch.manual_seed(0)
    untrained = get_method(name).build_model(model.config, model.features, model.num_classes, model.extra)
    assert _map(model, data.test) > _map(untrained, data.test) + 0.03


@pytest.mark.parametrize("name", list_methods())
def test_save_and_load_give_identical_embeddings(name, data, fitted, tmp_path):
    model = fitted(name)
    loaded = CrossModalModel.load(model.save(tmp_path / name))
    for m, fs in data.test.items():
        assert np.array_equal(loaded.encode(m, fs.X), model.encode(m, fs.X))


def test_paired_method_trains_every_pair_of_three_unpaired_modalities():
    ds = make_synthetic({"image": 16, "text": 12, "audio": 8}, 4, 48, 16, 24, seed=1, paired=False)
    model = get_method("dscmr")().fit(ds.train, ds.val, config=tiny("dscmr", epochs=2), device=CPU)
    assert sorted(model.encoders) == ["audio__image", "audio__text", "image__audio", "image__text", "text__audio",
                                      "text__image"]
    X = ds.test["image"].X
    assert not np.allclose(model.encode("image", X, against="text"), model.encode("image", X, against="audio"))


def test_same_class_sampling_pairs_every_labelled_item_with_an_item_of_its_class():
    rng = np.random.default_rng(0)
    a = FeatureSet.build(np.zeros((30, 2)), rng.integers(0, 3, 30), num_classes=4)
    b = FeatureSet.build(np.zeros((20, 2)), np.r_[rng.integers(0, 3, 18), 3, -1], num_classes=4)
    rows_a, rows_b = sample_pairs(a, b, rng)
    assert np.array_equal(a.labels[rows_a], b.labels[rows_b])
    # every item of a appears (its class exists in b), and every labelled item of b whose class a has (not 3, not -1)
    assert len(rows_a) == 30 + 18


def test_two_modality_mcca_is_cca_by_whitening_and_svd():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    X = np.c_[z, rng.normal(size=(400, 3))] @ rng.normal(size=(5, 5))
    Y = np.c_[z + 0.3 * rng.normal(size=(400, 2)), rng.normal(size=(400, 2))] @ rng.normal(size=(4, 4))
    train = {"image": FeatureSet.build(X, np.zeros(400)), "text": FeatureSet.build(Y, np.zeros(400))}
    model = MCCA().fit(train, None, config=MCCAConfig(dim=2, ridge=0.0), device=CPU)
    u = model.encoders["image"](torch.from_numpy(X).float()).detach().numpy()
    v = model.encoders["text"](torch.from_numpy(Y).float()).detach().numpy()
    found = [abs(np.corrcoef(u[:, k], v[:, k])[0, 1]) for k in range(2)]

    def inverse_sqrt(C):
        w, V = np.linalg.eigh(C)
        return V @ np.diag(w ** -0.5) @ V.T

    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Cxx, Cyy, Cxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    canonical = np.linalg.svd(inverse_sqrt(Cxx) @ Cxy @ inverse_sqrt(Cyy), compute_uv=False)[:2]
    assert found == pytest.approx(canonical.tolist(), abs=1e-3)


def test_sdml_uses_the_learned_prior_of_a_drcl_model(data, fitted, tmp_path):
    drcl = fitted("drcl")
    source = drcl.save(tmp_path / "drcl")
    config = tiny("sdml", epochs=1, dim=drcl.prior.shape[0], prior_from=str(source))
    model = SDML().fit(data.train, data.val, config=config, device=CPU)
    assert torch.equal(model.prior, drcl.prior)


def test_prior_from_with_another_common_dimension_is_a_config_error(data, fitted, tmp_path):
    source = fitted("drcl").save(tmp_path / "drcl")
    config = tiny("mars", epochs=1, dim=fitted("drcl").prior.shape[0] + 1, prior_from=str(source))
    with pytest.raises(ConfigError, match="prior"):
        get_method("mars")().fit(data.train, data.val, config=config, device=CPU)


@pytest.mark.parametrize("name", ["dscmr", "sccmr", "hcmsl", "rcar"])
def test_sedel_s_modules_join_any_two_branch_method_through_its_sedel_option(name, data):
    class Logs:
        def __init__(self):
            self.keys: set[str] = set()

        def on_epoch_end(self, stage, epoch, epochs, logs):
            self.keys |= set(logs)

    plain, with_sedel = Logs(), Logs()
    get_method(name)().fit(data.train, None, config=tiny(name, epochs=1), device=CPU, callbacks=[plain])
    config = with_overrides(tiny(name, epochs=1), ['sedel={"queue": 32, "weighting": "focal"}'])
    assert config.sedel == SEDELOptions(queue=32, weighting="focal")
    get_method(name)().fit(data.train, None, config=config, device=CPU, callbacks=[with_sedel])
    assert with_sedel.keys - plain.keys == {"sedel_loss"}


def test_the_sedel_method_without_its_modules_is_refused(data):
    with pytest.raises(ConfigError, match="sedel must be set"):
        get_method("sedel")().fit(data.train, None, config=tiny("sedel", sedel=None), device=CPU)


@pytest.mark.parametrize(("method", "weight", "expected"), [
    ("dscmr", 0.0, None), ("sedel", 1.0, SEDELOptions(queue=4096)), ("rcar", 0.5, SEDELOptions(weight=0.5))])
def test_a_card_written_with_the_ten_sedel_fields_loads_into_the_sedel_option(method, weight, expected):
    old = {"sedel_weight": weight, "sedel_weighting": "hardness", "sedel_beta": 1.0, "sedel_gamma": 2.0,
           "sedel_temperature": 0.07, "sedel_queue": 4096 if method == "sedel" else 0, "sedel_momentum": 0.99,
           "sedel_mask_same_class": False, "sedel_erasing": False, "sedel_keep_ratio": 0.5, "epochs": 3}
    config = get_method(method).Config.from_dict(old)
    assert config.sedel == expected and config.epochs == 3


def test_a_mistyped_sedel_option_is_named():
    with pytest.raises(ConfigError, match="wieght"):
        with_overrides(tiny("dscmr"), ['sedel={"wieght": 1}'])


def test_memory_bank_keeps_the_newest_keys_up_to_its_size():
    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_a, self.encoder_b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)

    modules = SEDELModules(SEDELOptions(queue=5), Branches(), num_pairs=100, batch_size=2)
    rows = [torch.tensor([i, i + 1]) for i in (0, 2, 4, 6)]
    for r in rows:
        modules._enqueue("b", torch.randn(2, 2), torch.zeros(2, 1), r)
    assert modules.queues["b"][2].tolist() == [6, 7, 4, 5, 2]


def test_rcar_refits_its_beta_mixture_only_after_the_warm_up(data):
    class Logs:
        def __init__(self):
            self.epochs: list[dict] = []

        def on_epoch_end(self, stage, epoch, epochs, logs):
            self.epochs.append(dict(logs))

    logs = Logs()
    get_method("rcar")().fit(data.train, data.val, config=tiny("rcar", epochs=4, warmup_epochs=2), device=CPU,
                             callbacks=[logs])
    assert ["noisy_fraction" in e for e in logs.epochs] == [False, False, True, True]


def test_labeled_fraction_keeps_the_labels_of_exactly_that_fraction_of_pairs(data):
    from crossmodal.methods.hcmsl import _HCMSLTrainer
    from crossmodal.methods.paired import PairData

    pairs = PairData.build("image", "text", data.train, pairing="auto", seed=1, device=CPU)
    trainer = _HCMSLTrainer(tiny("hcmsl", labeled_fraction=0.25), pairs, num_classes=4)
    assert int(trainer.labelled_rows.sum()) == 24  # of 96 pairs
    with pytest.raises(ConfigError, match="labeled_fraction"):
        get_method("hcmsl")().fit(data.train, None, config=tiny("hcmsl", labeled_fraction=0.0), device=CPU)


def test_checkpoint_dir_lets_a_two_branch_method_resume(data, tmp_path: Path):
    config = tiny("dscmr", epochs=3)
    first = get_method("dscmr")().fit(data.train, None, config=config, device=CPU, checkpoint_dir=tmp_path)
    again = get_method("dscmr")().fit(data.train, None, config=config, device=CPU, checkpoint_dir=tmp_path)
    for m, fs in data.test.items():
        assert np.array_equal(first.encode(m, fs.X), again.encode(m, fs.X))


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: the stand-in for any code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on a raw pickle's protocol
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_a_checkpoint_holding_a_pickled_object_is_refused_on_resume_and_its_code_never_runs(writer, data, tmp_path):
    config = tiny("dscmr", epochs=1)
    get_method("dscmr")().fit(data.train, None, config=config, device=CPU, checkpoint_dir=tmp_path)
    saved = tmp_path / "image__text" / "train.pt"
    assert saved.is_file()
    marker = tmp_path / "pwned"
    hostile = {"format": Checkpoint.FORMAT, "epoch": 1, "history": [], "modules": {}, "optimizer": None, "tensors": {},
               "extra": {"x": _Payload(marker)}}
    if writer == "torch.save":
        torch.save(hostile, saved)
    else:
        saved.write_bytes(pickle.dumps(hostile))
    with pytest.raises(ModelFileError, match="objects other than tensors") as refused:
        get_method("dscmr")().fit(data.train, None, config=config, device=CPU, checkpoint_dir=tmp_path)
    assert str(tmp_path) in refused.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("name", ["sdml", "mars"])
def test_a_modality_without_training_items_is_named(name, data):
    train = {**data.train, "text": data.train["text"].subset(slice(0, 0))}
    with pytest.raises(DatasetFormatError, match="text has no training items"):
        get_method(name)().fit(train, None, config=tiny(name, epochs=1), device=CPU)


def test_a_checkpoint_of_the_earlier_safetensors_and_json_layout_is_named_not_silently_restarted(tmp_path):
    (tmp_path / "train.json").write_text('{"epoch": 3, "tensors_file": "train-e3.safetensors"}')
    with pytest.raises(ModelFileError, match="earlier version"):
        Checkpoint(tmp_path, "train").restore({}, None)


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    module(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    checkpoint = Checkpoint(tmp_path, "stage")
    checkpoint.save(1, [{"loss": 1.0}], {"m": module}, optimizer, {"best": torch.arange(3.0)}, {"note": "e1"})
    at_epoch_1 = {k: v.clone() for k, v in module.state_dict().items()}
    adam_1 = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    def killed_halfway(obj, f):  # a kill after part of the new file reached the disk
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    with torch.no_grad():
        module.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(2, [{"loss": 1.0}, {"loss": 0.5}], {"m": module}, optimizer)
    monkeypatch.undo()

    fresh = torch.nn.Linear(4, 3)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    meta = Checkpoint(tmp_path, "stage").restore({"m": fresh}, fresh_optimizer)
    assert meta is not None and meta["epoch"] == 1 and meta["history"] == [{"loss": 1.0}]
    assert meta["extra"] == {"note": "e1"} and torch.equal(meta["tensors"]["best"], torch.arange(3.0))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, at_epoch_1[k])
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], adam_1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage.pt"]


class _KillAt:
    """A callback that kills the run (KeyboardInterrupt) at the end of ``epoch``, after that epoch is logged."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, stage, epoch, epochs, logs):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("name", ["dscmr", "sdml", "mars"])
def test_a_resumed_run_still_returns_the_best_validation_epoch(name, data, tmp_path: Path):
    """Killed at the end of epoch 3 of 4 (its checkpoint not yet written), resumed: the encoders of one whole run."""
    config = tiny(name, epochs=4)
    whole = get_method(name)().fit(data.train, data.val, config=config, device=CPU)
    with pytest.raises(KeyboardInterrupt):
        get_method(name)().fit(data.train, data.val, config=config, device=CPU, checkpoint_dir=tmp_path,
                               callbacks=[_KillAt(3)])
    resumed = get_method(name)().fit(data.train, data.val, config=config, device=CPU, checkpoint_dir=tmp_path)
    for m, fs in data.test.items():
        assert np.array_equal(resumed.encode(m, fs.X), whole.encode(m, fs.X))


def test_a_checkpoint_folder_of_another_config_is_refused_by_every_trained_method(data, tmp_path: Path):
    get_method("dscmr")().fit(data.train, None, config=tiny("dscmr", epochs=1), device=CPU, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="epochs"):
        get_method("dscmr")().fit(data.train, None, config=tiny("dscmr", epochs=2), device=CPU,
                                  checkpoint_dir=tmp_path)
