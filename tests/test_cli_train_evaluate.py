"""``crossmodal train`` then ``crossmodal evaluate`` on a benchmark-format file, in-process; user errors: one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossmodal.datasets import write_benchmark
from crossmodal.synthetic import make_synthetic
from pipelines.cli import main
from pipelines.train import resolve_config

TINY = ["--set", "dim=16", "--set", "hidden=[32,32]", "--set", "batch_size=32", "--set", "lr_spl=0.01",
        "--set", "lr_image=0.01", "--set", "lr_text=0.01", "--epochs", "2"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = write_benchmark("inria", root / "INRIA-Websearch.mat",
                           make_synthetic({"image": 24, "text": 16}, 4, 64, 32, 48, seed=0))
    out = root / "model"
    code = main(["train", "--dataset", "inria", "--data", str(data), "--out", str(out), "--device", "cpu", *TINY])
    assert code == 0
    return data, out


def test_train_writes_the_model_folder(bench):
    _, out = bench
    assert {"model.safetensors", "card.json", "config.json", "train_log.jsonl", "curves.png"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [
        (s, e) for s in ("spl:image", "spl:text", "rsc:image", "rsc:text") for e in (1, 2)]
    config = json.loads((out / "config.json").read_text())
    assert (config["dim"], config["epochs"], config["hidden"]) == (16, 2, [32, 32])


def test_the_card_names_its_data_source_and_test_metrics(bench):
    data, out = bench
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == {"kind": "benchmark", "dataset": "inria", "path": str(data.resolve())}
    assert "data_source" not in card["extra"]
    pairs = [(p["query"], p["target"]) for p in card["metrics"]["pairs"]]
    assert pairs == [("image", "text"), ("text", "image")]
    assert 0 < card["metrics"]["average"]["MAP@all"] <= 1


def test_evaluate_json_reproduces_the_training_metrics_and_saves_pr_curves(bench, capsys):
    _, out = bench
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    card = json.loads((out / "card.json").read_text())
    assert result["average"]["MAP@all"] == pytest.approx(card["metrics"]["average"]["MAP@all"], abs=1e-12)
    assert set(result["average"]) == {"MAP@all", "MAP@50"}
    assert (out / "pr_curves.png").stat().st_size > 1000
    assert set(result["pr"]) == {"image->text", "text->image"}


def test_evaluate_prints_the_paper_style_table(bench, capsys):
    _, out = bench
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "10", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for needle in ("image -> text", "text -> image", "average", "MAP@all", "MAP@10"):
        assert needle in text


def test_evaluate_finds_a_moved_benchmark_file_with_data(bench, tmp_path, capsys):
    data, out = bench
    moved = tmp_path / "moved.mat"
    moved.write_bytes(data.read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--data", str(moved), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"][0]["query"] == "image"


def test_label_noise_is_recorded_in_the_card(bench, tmp_path):
    data, _ = bench
    out = tmp_path / "noisy"
    assert main(["train", "--dataset", "inria", "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--label-noise", "0.5", *TINY, "--set", "prior=random", "--epochs", "1"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["extra"]["noise"] == {"label_noise": 0.5, "alignment_noise": None, "seed": 1}


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--dataset", "cifar", "--data", "x.mat", "--out", "o"], "unknown dataset 'cifar'"),
    (["train", "--dataset", "inria", "--out", "o"], "--dataset inria needs --data FILE"),
    (["train", "--dataset", "inria", "--data", "DATA"], "needs --out DIR"),
    (["train", "--dataset", "synthetic", "--data", "DATA", "--out", "o"], "--data is for benchmark files"),
    (["train", "--data", "DATA", "--workspace", "EMPTY"], "--data needs --dataset"),
    (["train", "--dataset", "inria", "--data", "DATA", "--out", "o", "--set", "lr_foo=1"], "no field(s) lr_foo"),
    (["train", "--dataset", "inria", "--data", "DATA", "--out", "o", "--alignment-noise", "half:0.2"], "KIND:RATE"),
    (["train", "--dataset", "inria", "--data", "DATA", "--out", "o", "--preset", "nope"], "no preset 'nope'"),
    (["train", "--dataset", "inria", "--data", "DATA", "--out", "o", "--name", "x"], "are for workspace mode"),
    (["train", "--out", "o", "--workspace", "EMPTY"], "need --dataset"),
    (["evaluate", "EMPTY"], "no trained model here"),
])
def test_user_errors_are_one_line_with_a_fix(bench, tmp_path, capsys, args, message):
    data, _ = bench
    args = [str(data) if a == "DATA" else str(tmp_path) if a == "EMPTY" else a for a in args]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_dataset_preset_sets_the_papers_values_and_overrides_come_last():
    xmedia = resolve_config("drcl", dataset="xmedia")
    assert (xmedia.dim, xmedia.epochs, xmedia.lr_text, xmedia.lr_mesh) == (512, 300, 3e-4, 3e-3)
    tuned = resolve_config("drcl", dataset="xmedia", epochs=5, overrides=["dim=64"])
    assert (tuned.dim, tuned.epochs, tuned.lr_text) == (64, 5, 3e-4)
    code = resolve_config("drcl", dataset="wiki", preset="drcl-reference-code")
    assert (code.prior_epoch, code.last_batch, code.spl_q_start_epoch, code.dim) == ("final", "drop", 0, 2048)


# ------------------------------------------------------------------------------------------- workspace mode (issue 11)
WS_TINY = ["--device", "cpu", "--epochs", "1", "--set", "hidden=[8]", "--set", "dim=4"]


def _store(root, modality, key, *, per_class=5, classes="abcd", labelled=True, dim=6):
    """One shard of class-structured fake features (feature 1 = the class) under ``store/<modality>/<key>``."""
    from extractors.store import StoreRow
    from pipelines.workspace import Workspace

    table = Workspace(root).store.open({"name": key.split("@")[0], "modality": modality, "key": key, "dim": dim})
    items = [(f"{c}/{n}", c) for c in classes for n in range(per_class)]
    X = np.random.default_rng(len(key)).normal(0, 0.1, (len(items), dim)).astype(np.float32)
    X[:, 1] += [classes.index(c) for _, c in items]
    table.write_shard(X, [StoreRow(content_hash=f"{modality}:{key}:{item}", item_id=item, source_path=f"/raw/{item}",
                                   labels=(c,) if labelled else ()) for item, c in items])


def test_train_says_which_table_each_modality_used_its_split_counts_and_the_chance_level(tmp_path, capsys):
    _store(tmp_path, "image", "pixels@0a")
    _store(tmp_path, "text", "words@0b")
    capsys.readouterr()
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", *WS_TINY]) == 0
    out, err = capsys.readouterr()
    assert "pixels (pixels@0a)" in out and "the store's only image table" in out
    assert "| 12    | 4   | 4    |" in out.replace("│", "|")  # 4 classes x 5 items: 3 train, 1 val, 1 test each
    for column in ("queries", "gallery", "MAP@all", "chance@all", "MAP@50", "chance@50"):
        assert column in out
    assert "warning: 1 epoch is far fewer than the 200 the auto recipe drcl-auto was tuned for" in err
    assert "note: preset drcl-auto: no paper dataset to match" in err  # workspace training fits the recipe


def test_two_tables_of_one_modality_are_refused_until_one_is_chosen(tmp_path, capsys):
    _store(tmp_path, "image", "pixels@0a")
    _store(tmp_path, "text", "doc2vec@1c")
    _store(tmp_path, "text", "minilm@2d")
    capsys.readouterr()
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", *WS_TINY]) == 2
    err = capsys.readouterr().err
    assert "2 text feature tables" in err and "will not guess" in err and "--extractor text=doc2vec" in err
    assert not (tmp_path / "models" / "m").exists()
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", "--extractor", "text=minilm", "--json",
                 *WS_TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["features"] == {"image": "pixels@0a", "text": "minilm@2d"}
    assert [f["why"].split(";")[0] for f in result["features_used"]] == [
        "the store's only image table", "the table asked for (text=minilm)"]


def test_training_with_one_labelled_modality_is_an_error_with_the_fix(tmp_path, capsys):
    _store(tmp_path, "image", "pixels@0a")
    _store(tmp_path, "text", "words@0b", labelled=False)
    capsys.readouterr()
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", *WS_TINY]) == 2
    err = capsys.readouterr().err
    assert "at least 2 modalities" in err and "labelled features of image" in err and "crossmodal extract" in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("verb", [["train", "--name"], ["index", "--model"], ["evaluate", "--model"],
                                  ["query", "--text", "cat", "--target", "image", "--model"]])
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", ".hidden", "a/b", ""])
def test_a_model_name_that_is_not_an_identifier_is_refused_by_every_verb(tmp_path, capsys, verb, name):
    workspace = tmp_path / "deep" / "ws"
    _store(workspace, "image", "pixels@0a")
    _store(workspace, "text", "words@0b")
    capsys.readouterr()
    assert main([*verb, name, "--workspace", str(workspace), *(WS_TINY if verb[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert "is not a name" in err and "letters, digits" in err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir() and "store" not in p.parts) == ["deep", "ws"]


def test_a_config_the_method_refuses_leaves_no_model_folder(tmp_path, capsys):
    _store(tmp_path, "image", "pixels@0a", per_class=5)
    _store(tmp_path, "text", "words@0b", per_class=4)  # unpaired: row counts differ
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", "--method", "mcca", "--set", "pairing=rows",
                 "--device", "cpu"]) == 2
    assert "pairing=rows needs as many rows" in capsys.readouterr().err
    assert not (tmp_path / "models" / "m").exists()


def test_evaluate_takes_a_model_name_and_a_workspace_and_prints_train_s_rows(tmp_path, capsys):
    _store(tmp_path, "image", "pixels@0a")
    _store(tmp_path, "text", "words@0b")
    _store(tmp_path, "audio", "mfcc@0c")
    assert main(["train", "--workspace", str(tmp_path), "--name", "m", "--json", *WS_TINY]) == 0
    trained = json.loads(capsys.readouterr().out)["metrics"]
    assert main(["evaluate", "--model", "m", "--workspace", str(tmp_path), "--json", "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    pairs = [(p["query"], p["target"]) for p in evaluated["pairs"]]
    assert pairs == [(p["query"], p["target"]) for p in trained["pairs"]]
    assert pairs[:2] == [("image", "text"), ("image", "audio")]  # canonical order, not the card's alphabetical one
    assert evaluated["average"]["MAP@all"] == pytest.approx(trained["average"]["MAP@all"], abs=1e-12)
    assert evaluated["pairs"][0]["queries"] == 4 and evaluated["pairs"][0]["gallery"] == 4
    assert main(["evaluate", str(tmp_path / "models" / "m"), "--json", "--device", "cpu"]) == 0  # a folder still works
    assert json.loads(capsys.readouterr().out)["average"] == evaluated["average"]


def test_far_fewer_epochs_than_the_paper_preset_warns_with_the_number_it_expects():
    warnings: list[str] = []
    resolve_config("drcl", dataset="wiki", epochs=10, warnings=warnings)
    assert len(warnings) == 1 and "far fewer than the 200 the preset drcl-wiki was tuned for" in warnings[0]
    resolve_config("drcl", dataset="wiki", epochs=60, warnings=warnings)  # above a quarter: no warning
    assert len(warnings) == 1
