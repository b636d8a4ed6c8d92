"""The auto recipe (crossmodal.recipe): rules that fit the data's shape, each said with its reason; when it is chosen
over a paper preset; the short learning-rate search on the validation split."""

from __future__ import annotations

import json

import pytest

from crossmodal.config import with_overrides
from crossmodal.errors import ConfigError
from crossmodal.methods import get_method, list_methods
from crossmodal.recipe import (
    AUTO,
    PAPER,
    DataShape,
    choose_preset,
    decide_preset,
    rules,
    search_learning_rate,
)
from crossmodal.synthetic import make_synthetic
from pipelines.train import PRESETS_DIR, resolve_config

TINY = DataShape(items={"image": 30, "text": 30}, widths={"image": 4, "text": 4}, num_classes=4)
WIKI_SIFT_LDA = DataShape(items={"image": 2173, "text": 2173}, widths={"image": 128, "text": 10}, num_classes=10)
WIKI_PAPER = DataShape(items={"image": 2173, "text": 2173}, widths={"image": 4096, "text": 300}, num_classes=10)
LARGE = DataShape(items={"image": 32000, "text": 32000}, widths={"image": 4096, "text": 300}, num_classes=200)


def _values(method, shape):
    return {c.field: c.value for c in rules(method, shape).choices}


@pytest.mark.parametrize("shape", [TINY, WIKI_SIFT_LDA, LARGE], ids=["30 items", "wikipedia", "32000 items"])
def test_drcl_rules_give_sane_values_from_tiny_to_large_data(shape):
    v = _values("drcl", shape)
    assert v["batch_size"] <= shape.n_min and v["batch_size"] & (v["batch_size"] - 1) == 0  # a power of two
    assert 256 <= v["hidden"][0] <= 4096 and len(v["hidden"]) == 2  # the paper's depth
    assert shape.num_classes <= v["dim"] <= 1024 and 20 <= v["epochs"] <= 200
    assert 4e-4 <= v["lr_image"] == v["lr_text"] == v["lr_spl"] <= 2e-3
    assert v["q_schedule"] == "fixed" and v["q_fixed"] == 0.5 and v["select_by"] == "val_loss"


def test_the_rules_scale_with_the_data():
    tiny, wiki, large = (_values("drcl", s) for s in (TINY, WIKI_SIFT_LDA, LARGE))
    assert tiny["batch_size"] == 16 and wiki["batch_size"] == 64 and large["batch_size"] == 256
    assert tiny["hidden"] == (256, 256) and wiki["hidden"] == (512, 512) and large["hidden"] == (1024, 1024)
    assert wiki["lr_image"] == 1e-3  # the Wikipedia measurement: Adam 1e-3 at batch 64 led at 0.290
    assert tiny["epochs"] == 200 and large["epochs"] == 24  # about 3,000 steps, in [20, 200]


def test_every_method_gets_a_recipe_that_its_config_accepts_and_every_choice_has_a_reason():
    for method in list_methods():
        recipe = rules(method, WIKI_SIFT_LDA)
        config = recipe.apply(get_method(method).Config())  # a value of the wrong kind would raise here
        assert all(c.why for c in recipe.choices) and len(recipe.lines()) <= len(recipe.choices)
        if method != "mcca":  # closed form: no batch, rate or epochs to choose
            assert config.batch_size == 64 and config.patience == 10


def test_drcl_auto_preset_holds_the_recipes_data_independent_choices():
    preset = json.loads((PRESETS_DIR / "drcl-auto.json").read_text())
    assert preset.items() <= _values("drcl", TINY).items()


def test_data_far_from_the_papers_gets_the_recipe_and_the_reason():
    kind, why = choose_preset("drcl", "wiki-sift-lda", WIKI_SIFT_LDA)
    assert kind == AUTO and "128-d image features against the paper's 4096-d, 32.0x > 4x" in why
    kind, why = choose_preset("drcl", None, TINY)
    assert kind == AUTO and "no paper dataset to match" in why


def test_data_shaped_like_the_papers_keeps_the_paper_preset_and_says_so():
    kind, why = choose_preset("drcl", "wiki", WIKI_PAPER)
    assert kind == PAPER and "close to the paper's Wikipedia" in why and "drcl-wiki" in why
    assert choose_preset("sdml", None, TINY)[0] == PAPER  # other methods: their papers' values unless asked


def test_resolve_config_fits_the_recipe_to_far_data_and_notes_why():
    ds = make_synthetic({"image": 6, "text": 5}, 4, 40, 8, 8, seed=0)
    notes: list[str] = []
    config = resolve_config("drcl", dataset="wiki", data=ds, notes=notes, device="cpu")
    assert config.batch_size == 32 and config.hidden == (256, 256) and config.q_schedule == "fixed"
    assert notes[0].startswith("preset drcl-auto: the data is far from the paper's Wikipedia")
    assert "batch_size=32 (" in notes[0] and "skipped" in notes[1]  # 8 validation items: too few to rank rates


def test_preset_paper_picks_the_datasets_paper_preset_even_for_far_data():
    ds = make_synthetic({"image": 6, "text": 5}, 4, 40, 8, 8, seed=0)
    notes: list[str] = []
    config = resolve_config("drcl", dataset="xmedia", preset="paper", data=ds, notes=notes)
    assert config.batch_size == 1024 and config.lr_mesh == 3e-3 and config.epochs == 300  # drcl-xmedia.json
    assert notes == ["--preset paper: the preset drcl-xmedia, tuned for XMedia: 4,000 images/texts, 800 audio, 400 3D, "
                     "969 videos (VGG, BoW, MFCC, LightField, C3D features), 20 classes"]


def test_the_reference_code_preset_is_applied_as_written_whatever_the_data():
    ds = make_synthetic({"image": 6, "text": 5}, 4, 40, 8, 8, seed=0)
    config = resolve_config("drcl", dataset="wiki", preset="drcl-reference-code", data=ds)
    assert config == resolve_config("drcl", preset="drcl-reference-code")
    assert config.q_schedule == "ramp" and config.hidden == (4096, 4096) and config.last_batch == "drop"


def test_the_auto_recipe_without_data_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="fits the training data") as e:
        decide_preset("drcl", dataset=None, preset="drcl-auto", train=None)
    assert "--tune" in e.value.hint


def test_learning_rate_search_tries_three_rates_and_keeps_the_best_validation_map():
    ds = make_synthetic({"image": 12, "text": 8}, 4, 96, 40, 8, seed=0)
    config = with_overrides(get_method("dscmr").Config(), ["hidden=[16]", "dim=8", "epochs=3", "lr=1e-3"])
    said: list[str] = []
    chosen, tried = search_learning_rate("dscmr", config, ds.train, ds.val, device="cpu", epochs=1, say=said.append)
    assert [t["lr"] for t in tried] == [1e-3, 3.33e-4, 3e-3]  # the rule's first, then a third and three times it
    assert chosen.lr == max(tried, key=lambda t: t["val_map"])["lr"] and chosen.epochs == 3  # full epochs restored
    assert len(said) == 4 and said[-1].startswith("learning-rate search: chose lr")


def test_learning_rate_search_moves_drcls_encoder_rates_and_leaves_its_spl_rate():
    ds = make_synthetic({"image": 12, "text": 8}, 4, 96, 40, 8, seed=0)
    config = with_overrides(get_method("drcl").Config(), ["hidden=[16]", "dim=8", "epochs=3", "batch_size=32",
                                                          "lr_spl=7e-4", "lr_image=1e-3", "lr_text=1e-3"])
    said: list[str] = []
    chosen, tried = search_learning_rate("drcl", config, ds.train, ds.val, device="cpu", epochs=1, say=said.append)
    best = max(tried, key=lambda t: t["val_map"])["lr"]
    assert [t["lr"] for t in tried] == [1e-3, 3.33e-4, 3e-3]  # around the encoders' rate, not SPL's
    assert (chosen.lr_image, chosen.lr_text, chosen.lr_spl) == (best, best, 7e-4)
    assert "lr_spl 0.0007 stays at the rule" in said[-1]


def test_learning_rate_search_stops_at_its_time_budget_and_says_so():
    ds = make_synthetic({"image": 12, "text": 8}, 4, 96, 40, 8, seed=0)
    config = with_overrides(get_method("dscmr").Config(), ["hidden=[16]", "dim=8", "epochs=2"])
    said: list[str] = []
    _, tried = search_learning_rate("dscmr", config, ds.train, ds.val, device="cpu", epochs=1, budget_s=0.0,
                                    say=said.append)
    assert len(tried) == 1 and any("budget spent after 1 of 3 rates" in line for line in said)


def test_learning_rate_search_is_skipped_for_a_run_no_longer_than_its_candidates():
    ds = make_synthetic({"image": 12, "text": 8}, 4, 96, 40, 8, seed=0)
    config = with_overrides(get_method("dscmr").Config(), ["hidden=[16]", "dim=8", "epochs=1"])
    said: list[str] = []
    chosen, tried = search_learning_rate("dscmr", config, ds.train, ds.val, device="cpu", say=said.append)
    assert chosen == config and tried == []
    assert said == ["learning-rate search: skipped, the run's 1 epochs are no longer than a candidate's 5; the rule's "
                    "rate stays"]


def test_train_cli_says_which_preset_it_chose_and_preset_paper_is_one_flag_away(tmp_path, capsys):
    from pipelines.cli import main

    tiny = ["--set", "hidden=[16,16]", "--set", "dim=16", "--epochs", "1", "--device", "cpu", "--json"]
    assert main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "auto"), *tiny]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["notes"][0].startswith("preset drcl-auto: no paper preset for synthetic")
    assert auto["config"]["batch_size"] == 32 and auto["config"]["q_schedule"] == "fixed"
    assert main(["train", "--dataset", "synthetic", "--preset", "paper", "--out", str(tmp_path / "paper"),
                 *tiny]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["notes"][0] == "--preset paper: drcl's defaults (its paper's values), tuned for the paper datasets"
    assert paper["config"]["batch_size"] == 1024 and paper["config"]["q_schedule"] == "ramp"
