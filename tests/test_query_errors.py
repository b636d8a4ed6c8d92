"""What a user sees when a step is missing or does not fit: one line naming the problem, a fix, exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from extractors.store import StoreRow
from pipelines.cli import main
from pipelines.workspace import Workspace

TINY = ["--set", "hidden=[16]", "--set", "dim=16", "--set", "epochs=3", "--set", "batch_size=8"]


def _error(capsys) -> str:
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Generated images (hog-color) and made-up text features for the same items; a tiny DRCL trained, not indexed."""
    from pipelines.demo import generate_digits

    root = tmp_path_factory.mktemp("errors")
    generate_digits(root / "data", per_class=3, seed=0, modalities=["image"])
    ws = root / "ws"
    assert main(["extract", "--modality", "image", str(root / "data" / "image"), "--extractor", "hog-color",
                 "--workspace", str(ws), "--workers", "0"]) == 0
    images = Workspace(ws).table("image")
    table = Workspace(ws).store.open({"name": "made-up", "modality": "text", "key": "made-up@000", "dim": 10})
    rng = np.random.default_rng(0)
    X = np.eye(10, dtype=np.float32)[[int(labels[0]) for labels in images.labels]] + rng.normal(0, 0.1, (30, 10))
    table.write_shard(X.astype(np.float32), [StoreRow(content_hash=f"text-{h}", item_id=item, source_path=f"{item}.txt",
                                                      labels=labels)
                                             for h, item, labels in zip(images.content_hash, images.item_id,
                                                                        images.labels)])
    assert main(["train", "--workspace", str(ws), "--name", "m", *TINY]) == 0
    return root, ws


@pytest.fixture()
def indexed(workspace, tmp_path):
    """A copy of the workspace with the model indexed."""
    root, ws = workspace
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    assert main(["index", "--workspace", str(copy), "--model", "m"]) == 0
    return root, copy


def test_query_before_training_says_to_train_first(tmp_path, capsys):
    code = main(["query", "--text", "seven", "--target", "image", "--workspace", str(tmp_path)])
    err = _error(capsys)
    assert code == 2 and "no trained model 'default'" in err and "fix: train one first: crossmodal train" in err


def test_indexing_before_training_says_to_train_first(tmp_path, capsys):
    assert main(["index", "--workspace", str(tmp_path), "--model", "photos"]) == 2
    assert "no trained model 'photos'" in _error(capsys)


def test_training_on_an_empty_store_says_to_extract_first(tmp_path, capsys):
    assert main(["train", "--workspace", str(tmp_path)]) == 2
    err = _error(capsys)
    assert "labelled features" in err and "crossmodal extract" in err


def test_query_before_indexing_says_to_build_the_index(workspace, capsys):
    root, ws = workspace
    image = next((root / "data" / "image" / "5").iterdir())
    assert main(["query", str(image), "--target", "text", "--workspace", str(ws), "--model", "m"]) == 2
    err = _error(capsys)
    assert "no text index for model 'm'" in err and "crossmodal index --model m" in err


def test_a_file_of_an_extension_no_extractor_reads_is_refused_naming_what_the_model_reads(indexed, capsys):
    root, ws = indexed
    odd = root / "query.xyz"
    odd.write_bytes(b"\x00")
    assert main(["query", str(odd), "--target", "text", "--workspace", str(ws), "--model", "m"]) == 2
    err = _error(capsys)
    assert "no modality of the model reads '.xyz'" in err and "image (.jpg" in err


def test_a_query_file_that_does_not_exist_is_refused_with_the_path_and_the_fix(indexed, tmp_path, capsys):
    _, ws = indexed
    assert main(["query", str(tmp_path / "gone.png"), "--target", "text", "--workspace", str(ws), "--model", "m"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"error: no such file: {tmp_path / 'gone.png'}", "  fix: check the path (nothing was searched)"]


def test_an_unknown_target_modality_is_refused(indexed, capsys):
    _, ws = indexed
    assert main(["query", "--text", "seven", "--target", "smell", "--workspace", str(ws), "--model", "m"]) == 2
    assert "unknown modality 'smell'" in _error(capsys)


def test_a_query_modality_the_model_does_not_encode_is_refused(indexed, tmp_path, capsys):
    _, ws = indexed
    spoken = tmp_path / "seven.wav"
    spoken.write_bytes(b"RIFF")
    assert main(["query", str(spoken), "--target", "image", "--workspace", str(ws), "--model", "m",
                 "--modality", "audio"]) == 2
    err = _error(capsys)
    assert "model 'm' has no audio encoder" in err and "--add-modality audio" in err


def test_a_model_whose_extractor_key_differs_from_the_current_extractor_is_refused_with_both_keys(indexed, capsys):
    root, ws = indexed
    card = json.loads((ws / "models" / "m" / "card.json").read_text())
    trained_key = card["features"]["image"]["extractor_key"]
    record = ws / "store" / "image" / trained_key / "extractor.json"
    description = json.loads(record.read_text())
    description["config"]["size"] = 64  # what another version or config of the extractor would give
    record.write_text(json.dumps(description))
    image = next((root / "data" / "image" / "2").iterdir())
    assert main(["query", str(image), "--target", "text", "--workspace", str(ws), "--model", "m"]) == 2
    err = _error(capsys)
    assert trained_key in err and "hog-color@" in err.replace(trained_key, "")
    assert "the model was trained on features of key" in err


def test_an_index_built_before_the_model_was_retrained_is_refused(indexed, capsys):
    root, ws = indexed
    assert main(["train", "--workspace", str(ws), "--name", "m", *TINY, "--seed", "2"]) == 0
    image = next((root / "data" / "image" / "2").iterdir())
    assert main(["query", str(image), "--target", "text", "--workspace", str(ws), "--model", "m"]) == 2
    err = _error(capsys)
    assert "built from an earlier version of model 'm'" in err and "crossmodal index" in err


def test_a_query_needs_exactly_one_of_a_file_and_a_text(indexed, capsys):
    root, ws = indexed
    image = next((root / "data" / "image" / "2").iterdir())
    assert main(["query", str(image), "--text", "two", "--target", "text", "--workspace", str(ws), "--model",
                 "m"]) == 2
    assert "give one query" in _error(capsys)


def _image_query_json(indexed, capsys, digit: str, k: int) -> tuple[Path, dict]:
    """The first image of class ``digit`` queried against the texts with ``--json``: (the image, the printed JSON)."""
    root, ws = indexed
    image = sorted((root / "data" / "image" / digit).iterdir())[0]
    capsys.readouterr()
    assert main(["query", str(image), "--target", "text", "--workspace", str(ws), "--model", "m", "--k", str(k),
                 "--json"]) == 0
    return image, json.loads(capsys.readouterr().out)


def test_an_image_query_of_the_indexed_model_ranks_text_items(indexed, capsys):
    _, result = _image_query_json(indexed, capsys, "2", 4)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3, 4]
    assert {r["modality"] for r in result["results"]} == {"text"}
    assert all(r["source_path"].endswith(".txt") for r in result["results"])


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_text_query_is_refused_without_naming_a_temporary_file(indexed, capsys, text):
    _, ws = indexed
    assert main(["query", "--text", text, "--target", "image", "--workspace", str(ws), "--model", "m"]) == 2
    err = _error(capsys)
    assert "the text query is empty" in err
    assert "/tmp" not in err and "query.txt" not in err


def test_the_json_of_a_query_is_the_declared_schema_the_server_answers_with(indexed, capsys):
    """``query --json`` and ``/api/query`` share one declaration (``QueryResult``): the CLI's output passes it."""
    from pipelines.query import QueryResult

    TypeAdapter = pytest.importorskip("pydantic").TypeAdapter  # installed with the server's extra (ui)

    image, printed = _image_query_json(indexed, capsys, "3", 2)
    assert TypeAdapter(QueryResult).validate_python(printed, strict=True) == printed
    assert printed["query"]["file"] == str(image) and printed["k"] == 2
