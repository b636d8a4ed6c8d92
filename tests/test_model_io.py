"""A trained model saves as safetensors + a JSON card and loads back to identical embeddings; tampering is refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from crossmodal.errors import ModelFileError
from crossmodal.methods import get_method, list_methods
from crossmodal.methods.drcl import DRCL, DRCLConfig
from crossmodal.model import CrossModalModel, FeatureIdentity
from crossmodal.synthetic import make_synthetic


@pytest.fixture(scope="module")
def trained():
    ds = make_synthetic({"image": 24, "text": 16}, 4, 48, 16, 32, seed=3)
    config = DRCLConfig(dim=16, hidden=(32, 32), epochs=2, batch_size=32, lr_image=1e-2, lr_text=1e-2)
    model = DRCL().fit(ds.train, ds.val, config=config)
    model.metrics = {"average": {"MAP@all": 0.5}}
    return model, ds


def test_a_saved_model_loads_back_to_identical_embeddings(trained, tmp_path):
    model, ds = trained
    model.save(tmp_path)
    loaded = CrossModalModel.load(tmp_path)
    assert loaded.config == model.config
    assert loaded.features == model.features
    np.testing.assert_array_equal(loaded.prior.numpy(), model.prior.numpy())
    for m in ("image", "text"):
        np.testing.assert_array_equal(loaded.encode(m, ds.test[m].X), model.encode(m, ds.test[m].X))


def test_the_card_records_method_config_features_seed_metrics_and_versions(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path)
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["method"] == "drcl" and card["seed"] == 1 and card["num_classes"] == 4
    assert card["config"]["hidden"] == [32, 32] and card["config"]["dim"] == 16
    assert card["features"]["text"]["dim"] == 16
    assert card["metrics"] == {"average": {"MAP@all": 0.5}}
    assert card["extra"]["spl"]["selected"] in ("image", "text")
    assert {"torch", "safetensors", "crossmodal"} <= set(card["versions"])


def test_a_tampered_weights_file_is_refused(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path)
    weights = tmp_path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF  # flip one byte of a tensor
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="sha256"):
        CrossModalModel.load(tmp_path)


def test_a_folder_without_a_model_is_an_error_with_a_fix(tmp_path):
    with pytest.raises(ModelFileError) as info:
        CrossModalModel.load(tmp_path)
    assert "crossmodal train" in info.value.hint


@pytest.mark.parametrize("method", list_methods())
def test_every_method_s_model_passes_the_load_time_shape_check(method, tmp_path):
    """Loading builds the card's model on the meta device first and compares it with the weights file's header; shared
    layers (SCCMR's) are stored once, under one name, and still match."""
    cls = get_method(method)
    config = cls.Config()
    sizes = {k: v for k, v in (("hidden", (8, 8)), ("dim", 4)) if hasattr(config, k)}
    features = {m: FeatureIdentity(m, f"{m}@0", d) for m, d in (("image", 24), ("text", 16), ("audio", 8))}
    model = cls.build_model(dataclasses.replace(config, **sizes), features, 3, {"dim": 4} if method == "mcca" else {})
    loaded = CrossModalModel.load(model.save(tmp_path))
    X = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode("text", X, against="image"), model.encode("text", X, against="image"))
