"""End to end through the CLI (``main([...])``) on generated digits: extract every modality, train, index, query."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.cli import main

# Weight-free or packaged extractors, at sizes that keep the run short (the Light Field Descriptor at 24 px).
EXTRACTORS = {"image": ("hog-color", []), "text": ("minilm", []), "audio": ("mfcc", []),
              "mesh": ("lightfield", ["--set", "resolution=24"]), "video": ("frame-stats", [])}
TINY_DRCL = ["--set", "hidden=[64]", "--set", "dim=16", "--set", "batch_size=16", "--set", "epochs=40"]

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with 4 generated files per digit in each modality, extracted, a tiny DRCL trained and indexed."""
    from pipelines.demo import generate_digits

    root = tmp_path_factory.mktemp("e2e")
    data, ws = root / "data", root / "ws"
    generate_digits(data, per_class=4, seed=0)
    for modality, (name, sets) in EXTRACTORS.items():
        assert main(["extract", "--modality", modality, str(data / modality), "--extractor", name, "--workspace",
                     str(ws), "--workers", "0", *sets]) == 0
    assert main(["train", "--workspace", str(ws), "--name", "tiny", *TINY_DRCL]) == 0
    assert main(["index", "--workspace", str(ws), "--model", "tiny"]) == 0
    return data, ws


@needs_espeak
def test_the_trained_model_records_every_modality_and_its_extractor(trained):
    _, ws = trained
    card = json.loads((ws / "models" / "tiny" / "card.json").read_text())
    assert {m: f["extractor_name"] for m, f in card["features"].items()} == {m: n for m, (n, _) in EXTRACTORS.items()}
    assert card["source"]["kind"] == "workspace"
    assert card["extra"]["classes"] == [str(d) for d in range(10)]
    for name in ("model.safetensors", "config.json", "train_log.jsonl", "curves.png"):
        assert (ws / "models" / "tiny" / name).is_file()


@needs_espeak
def test_every_modality_has_an_index_of_its_whole_gallery(trained, capsys):
    _, ws = trained
    capsys.readouterr()
    assert main(["index", "--workspace", str(ws), "--model", "tiny", "--json"]) == 0
    built = _json(capsys)["indexes"]
    assert sorted(i["modality"] for i in built) == sorted(EXTRACTORS)
    assert all(i["items"] == 40 and i["dim"] == 16 for i in built)


@needs_espeak
def test_a_typed_word_finds_recordings_of_that_digit_first(trained, capsys):
    _, ws = trained
    capsys.readouterr()
    assert main(["query", "--text", "seven", "--target", "audio", "--workspace", str(ws), "--model", "tiny",
                 "--k", "3", "--json"]) == 0
    result = _json(capsys)
    assert result["query"]["modality"] == "text" and result["target"] == "audio"
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    assert result["results"][0]["label"] == "7"
    assert result["results"][0]["source_path"].endswith(".wav")


@needs_espeak
def test_a_recording_finds_texts_of_its_digit_first(trained, capsys):
    data, ws = trained
    capsys.readouterr()
    spoken = sorted((data / "audio" / "4").glob("*.wav"))[0]
    assert main(["query", str(spoken), "--target", "text", "--workspace", str(ws), "--model", "tiny", "--json"]) == 0
    result = _json(capsys)
    assert result["query"]["modality"] == "audio"
    assert result["results"][0]["label"] == "4"
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 10


@needs_espeak
def test_a_modality_added_later_trains_against_the_saved_prior_without_touching_the_others(trained, tmp_path):
    from safetensors.numpy import load_file

    _, ws = trained
    before = load_file(str(ws / "models" / "tiny" / "model.safetensors"))
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    assert main(["train", "--workspace", str(copy), "--name", "tiny", "--add-modality", "video", "--epochs", "5"]) == 0
    after = load_file(str(copy / "models" / "tiny" / "model.safetensors"))
    assert set(after) == set(before)
    for name, tensor in before.items():
        if not name.startswith("encoders.video."):
            assert (after[name] == tensor).all(), name
    assert any((after[n] != t).any() for n, t in before.items() if n.startswith("encoders.video."))


@pytest.mark.slow
@needs_espeak
def test_the_demo_prints_the_map_table_and_finds_the_spoken_seven_among_images(tmp_path, capsys):
    assert main(["demo", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    result = _json(capsys)
    assert [e["name"] for e in result["extractors"]][2:4] == ["mfcc", "lightfield"]
    assert result["training"]["metrics"]["average"]["MAP@all"] > 0.6
    spoken_seven = result["queries"][0]
    assert spoken_seven["query"]["modality"] == "audio" and spoken_seven["results"][0]["label"] == "7"
