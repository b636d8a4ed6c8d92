"""Fair tuning (pipelines/tune.py): N seeded trials on the validation split, the test split never read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crossmodal.featureset import FeatureSet
from crossmodal.synthetic import make_synthetic
from pipelines.tune import KEYS, search_space, tune

pytest.importorskip("optuna")

TINY = ("hidden=[16]", "dim=8", "epochs=2")  # dscmr's one hidden layer, a few seconds per trial on a CPU


@pytest.fixture(scope="module")
def data():
    return make_synthetic({"image": 12, "text": 8}, 4, 96, 40, 40, seed=0)


def _poisoned(ds):
    """The same data with a test split of random features and shuffled labels: a tuner that read it would choose
    differently."""
    rng = np.random.default_rng(7)
    test = {m: FeatureSet.build(rng.normal(size=fs.X.shape) * 100, rng.permutation(fs.labels), fs.ids,
                                num_classes=fs.num_classes) for m, fs in ds.test.items()}
    return dataclasses.replace(ds, test=test)


def test_tune_runs_the_trials_asked_for_and_records_its_budget(data):
    result = tune("dscmr", data, trials=3, seed=0, base_overrides=TINY)
    assert len(result.trials) == 3 and all(t.val_map is not None and t.seconds > 0 for t in result.trials)
    assert result.best_val_map == max(t.val_map for t in result.trials)
    assert result.budget["trials"] == 3 and result.budget["completed"] == 3 and "TPE (seed 0)" in result.budget[
        "sampler"]
    assert len(result.budget["space"]) == 6 and "validation MAP@all" in result.describe_budget()
    best = result.best_config(seed=2)
    assert best.seed == 2 and best.epochs == 2  # the base overrides stay in the best config


def test_the_same_seed_chooses_the_same_config_and_a_poisoned_test_split_changes_nothing(data):
    first = tune("dscmr", data, trials=2, seed=3, base_overrides=TINY)
    again = tune("dscmr", _poisoned(data), trials=2, seed=3, base_overrides=TINY)
    assert again.best_overrides == first.best_overrides
    assert [t.val_map for t in again.trials] == pytest.approx([t.val_map for t in first.trials])


def test_every_method_searches_the_same_number_of_parameters(data):
    from crossmodal.recipe import DataShape

    shape = DataShape.of(data.train)
    sizes = {m: len(search_space(m, shape)) for m in KEYS if m != "mcca"}
    assert set(sizes.values()) == {6}  # rate, batch, width scale, patience and two of the method's own
    assert [p.name for p in search_space("mcca", shape)] == ["ridge", "eigen_power"]  # closed form: no rate


def test_a_closed_form_method_is_tuned_on_its_own_keys(data):
    result = tune("mcca", data, trials=2, seed=0)
    assert {k for t in result.trials for k in t.params} == {"ridge", "eigen_power"}
    assert any(o.startswith("ridge=") for o in result.best_overrides)


def test_zero_trials_are_refused_with_a_hint(data):
    from crossmodal.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 1 trial") as e:
        tune("dscmr", data, trials=0)
    assert "--tune N" in e.value.hint


def test_drcls_search_can_switch_its_reversible_terms_off_together():
    import optuna

    from crossmodal.methods.drcl import DRCLConfig
    from pipelines.tune import trial_overrides

    reversible = KEYS["drcl"][1]
    assert reversible.suggest(optuna.trial.FixedTrial({"reversible_on": False})) == 0.0
    assert reversible.suggest(optuna.trial.FixedTrial({"reversible_on": True, "reversible": 0.3})) == 0.3
    assert "or 0 (off)" in reversible.describe()
    assert trial_overrides("drcl", DRCLConfig(), {"reversible": 0.0}) == ["alpha=0", "beta=0"]


def test_drcls_searched_rate_moves_its_encoders_and_leaves_spl_at_the_rule_for_the_trials_batch():
    from crossmodal.methods.drcl import DRCLConfig
    from pipelines.tune import trial_overrides

    items = trial_overrides("drcl", DRCLConfig(), {"lr": 5e-3, "batch_size": 256})
    assert "lr_image=0.005" in items and "lr_text=0.005" in items
    assert [i for i in items if i.startswith("lr_spl=")] == ["lr_spl=0.002"]  # 1e-3 x sqrt(256 / 64)


def test_trial_i_of_every_method_tries_the_same_shared_values(data):
    shared = ("lr", "batch_size", "width_scale", "patience")
    runs = [tune(m, data, trials=3, seed=5, base_overrides=TINY) for m in ("drcl", "sdml")]
    drcl, sdml = ([{k: t.params[k] for k in shared} for t in r.trials] for r in runs)
    assert drcl == sdml and len({d["lr"] for d in drcl}) == 3
    assert runs[0].budget["common_random_numbers"] == list(shared)
