"""``crossmodal train`` then ``crossmodal evaluate`` on a benchmark-format file, in-process; user errors: one line."""

from __future__ import annotations

import json

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
    assert card["extra"]["data_source"] == {"kind": "benchmark", "dataset": "inria", "path": str(data.resolve())}
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
    (["train", "--dataset", "inria", "--out", "o"], "--dataset needs --data FILE and --out DIR"),
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
