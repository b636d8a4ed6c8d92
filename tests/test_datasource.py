"""Where data comes from (pipelines.datasource): the card records the source, evaluate reloads the test split from it,
and the data modules import each other one way only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossmodal.datasets import load_benchmark, write_benchmark
from crossmodal.errors import ConfigError
from crossmodal.model import read_card
from crossmodal.synthetic import make_synthetic
from pipelines.cli import main
from pipelines.datasource import (
    BenchmarkFile,
    SyntheticSource,
    WorkspaceSource,
    card_source,
    data_source,
    load_test_split,
)
from pipelines.evaluate import evaluate_model_dir
from pipelines.train import TrainOptions, train_on_source

TINY = ["dim=16", "hidden=[16]", "batch_size=32", "epochs=1"]
SMALL = {"dims": {"image": 8, "text": 6}, "num_classes": 3, "n_train": 30, "n_val": 9, "n_test": 12, "seed": 5}


@pytest.fixture(scope="module")
def inria(tmp_path_factory):
    """A tiny INRIA-format file and a DRCL model trained on it (``crossmodal train --dataset inria``)."""
    root = tmp_path_factory.mktemp("inria")
    data = write_benchmark("inria", root / "INRIA-Websearch.mat", make_synthetic({"image": 12, "text": 8}, 3, 30, 9, 12,
                                                                                   seed=1))
    out = root / "model"
    assert main(["train", "--dataset", "inria", "--data", str(data), "--out", str(out), "--device", "cpu",
                 *(arg for item in TINY for arg in ("--set", item))]) == 0
    return data, out


def test_the_card_records_the_synthetic_source_with_its_generator_parameters(tmp_path):
    source = SyntheticSource("small", SMALL)
    result = train_on_source(source, tmp_path / "m", TrainOptions(device="cpu", overrides=tuple(TINY), progress=False))
    card = read_card(result.model_dir)
    assert card["source"] == {"kind": "synthetic", "name": "small", "parameters": SMALL}
    test = load_test_split(card)
    expected = make_synthetic(**SMALL, name="small").test
    for modality in ("image", "text"):
        np.testing.assert_array_equal(test[modality].X, expected[modality].X)


def test_evaluate_reloads_a_benchmark_file_models_test_split_through_its_source(inria):
    data, out = inria
    card = read_card(out)
    assert card_source(card) == BenchmarkFile("inria", data.resolve())
    test = load_test_split(card)
    expected = load_benchmark("inria", data).test
    assert sorted(test) == ["image", "text"]
    for modality in test:
        np.testing.assert_array_equal(test[modality].ids, expected[modality].ids)
        np.testing.assert_array_equal(test[modality].X, expected[modality].X)
    result = evaluate_model_dir(out, device="cpu")
    assert result["average"]["MAP@all"] == pytest.approx(card["metrics"]["average"]["MAP@all"], abs=1e-12)


def test_a_card_from_before_the_source_field_still_loads_and_evaluates(inria, tmp_path):
    from crossmodal.model import CrossModalModel

    _, out = inria
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "card.json"):
        (old / name).write_bytes((out / name).read_bytes())
    card = json.loads((old / "card.json").read_text())
    card["extra"]["data_source"] = card.pop("source")  # where cards kept it before
    (old / "card.json").write_text(json.dumps(card))
    assert CrossModalModel.load(old).source == card["extra"]["data_source"]
    result = evaluate_model_dir(old, device="cpu")
    assert result["average"]["MAP@all"] == pytest.approx(card["metrics"]["average"]["MAP@all"], abs=1e-12)


def test_evaluate_of_a_synthetic_model_regenerates_its_test_split_from_the_card(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["train", "--dataset", "synthetic", "--out", str(out), "--device", "cpu", "--json",
                 *(arg for item in TINY for arg in ("--set", item))]) == 0
    trained = json.loads(capsys.readouterr().out)["metrics"]
    assert read_card(out)["source"]["kind"] == "synthetic"
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["average"]["MAP@all"] == pytest.approx(trained["average"]["MAP@all"], abs=1e-12)


def test_the_options_name_one_source_each(tmp_path):
    assert data_source(None, workspace=tmp_path, split_seed=3) == WorkspaceSource(tmp_path, split_seed=3)
    assert data_source("wiki", tmp_path / "wiki.mat") == BenchmarkFile("wiki", tmp_path / "wiki.mat")
    assert data_source("synthetic").load().name == "synthetic"
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'") as info:
        data_source("cifar", tmp_path)
    assert "synthetic" in info.value.hint and "wiki" in info.value.hint


def test_the_data_modules_are_on_no_import_cycle_even_counting_imports_inside_functions():
    from test_layering import OURS, ROOT, cycles, imports

    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for package in OURS for p in (ROOT / package).rglob("*.py")}
    graph = {m: {n for n in imports(p) if n in paths and n != m} for m, p in paths.items()}
    data_modules = {f"pipelines.{m}" for m in ("datasource", "train", "workspace", "evaluate", "benchmark")}
    assert [c for c in cycles(graph) if data_modules & set(c)] == []
    assert "pipelines.train" not in graph["pipelines.workspace"]


def test_a_card_whose_source_is_not_an_object_is_refused_naming_the_card(inria, tmp_path):
    from crossmodal.errors import ModelFileError

    _, out = inria
    card = json.loads((out / "card.json").read_text())
    card["source"] = "somewhere"
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="'source' must be an object with a 'kind'") as info:
        read_card(tmp_path)
    assert str(tmp_path / "card.json") in info.value.message


def test_data_given_for_a_model_not_trained_on_a_benchmark_file_is_refused(tmp_path):
    card = {"source": {"kind": "synthetic", "name": "small", "parameters": SMALL}, "features": {}}
    with pytest.raises(ConfigError, match="--data is for models trained on a benchmark file") as info:
        card_source(card, data=tmp_path / "wiki.mat")
    assert "synthetic set small" in info.value.message and info.value.hint == "drop --data"
    with pytest.raises(ConfigError, match="does not say which data it was trained on"):
        card_source({"features": {}, "extra": {}})
