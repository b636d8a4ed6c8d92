"""Bad input, tried for real: the generated corpus of tests/badfiles.py (over 300 files across the five
modalities, most of them bad, mixed with good and edge-case files) goes through ``crossmodal extract`` once per
modality. The run never crashes and prints no traceback (its decoding processes included), extracts every good file,
and lists every bad one in ``errors.jsonl`` with a reason. A path that does not exist stops a run with one line naming
it. Feature files with NaN or infinite values are refused by the benchmark loaders and by the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from badfiles import EXTRACTORS, MODALITIES, Case, make_corpus, make_feature_files, missing_path

from crossmodal.datasets import load_benchmark
from crossmodal.errors import DatasetFormatError
from extractors.errors import StoreError
from extractors.store import FeatureStore, StoreRow
from pipelines.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@contextlib.contextmanager
def stderr_of_every_process():
    """What this process and the processes it starts write to stderr (file descriptor 2), as a list of one string."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            with contextlib.redirect_stderr(io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)):
                yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            captured.append(file.read().decode("utf-8", "replace"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """Per modality, one ``crossmodal extract`` over the modality's folder: its exit code, what every process printed
    on stderr, its errors by path, and the content hashes in the store."""
    cache: dict[str, dict] = {}

    def run(modality: str) -> dict:
        if modality not in cache:
            workspace = tmp_path_factory.mktemp(f"ws-{modality}")
            argv = ["extract", "--modality", modality, str(corpus.root / modality), "--workspace", str(workspace),
                    "--workers", "2", "--json", *EXTRACTORS[modality]]
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout), stderr_of_every_process() as stderr:
                code = main(argv)
            summary = json.loads(stdout.getvalue())
            errors = {}
            for line in Path(summary["errors_file"]).read_text().splitlines():
                record = json.loads(line)
                assert record["path"] not in errors, f"{record['path']} is listed twice"
                errors[record["path"]] = record
            hashes = [h for p in FeatureStore(workspace / "store").table(modality).shard_paths()
                      for h in pq.read_table(p).column("content_hash").to_pylist()]
            cache[modality] = {"code": code, "summary": summary, "errors": errors, "hashes": hashes,
                               "stderr": stderr[0]}
        return cache[modality]

    return run


def _hash(case: Case) -> str | None:
    try:
        return hashlib.sha256(case.path.read_bytes()).hexdigest()
    except OSError:  # a symlink loop, a dangling link
        return None


def _outcome(case: Case, result: dict) -> str:
    row = _hash(case) in result["hashes"]
    error = str(case.path) in result["errors"]
    return {(True, False): "row", (False, True): "error", (True, True): "both", (False, False): "neither"}[row, error]


def test_the_corpus_holds_at_least_300_files_most_of_them_bad_across_the_five_modalities(corpus):
    bad = corpus.bad  # expected errors, and files whose outcome is a loader's policy (latin-1 text ...)
    assert len(corpus.cases) >= 300 and len(bad) >= 250
    assert {c.modality for c in bad} == set(MODALITIES)
    assert min(sum(c.modality == m for c in bad) for m in MODALITIES) >= 40
    kinds = {c.kind for c in corpus.cases}
    assert {"overflow-1e308-off", "samples-1e30", "svg-embedded-png-bomb", "svg-malformed", "silent-flac-601s",
            "frames-9100-tiny", "over-max-bytes", "non-utf8-name"} <= kinds


@pytest.mark.parametrize("modality", MODALITIES)
def test_extract_over_bad_files_exits_normally_with_a_summary_and_no_traceback(modality, corpus, runs):
    result = runs(modality)
    assert result["code"] == 0
    assert "Traceback" not in result["stderr"] and "Warning" not in result["stderr"], result["stderr"][-3000:]
    s = result["summary"]
    assert s["extracted"] == len(set(result["hashes"]))
    assert s["found"] == s["extracted"] + s["duplicates"] + s["skipped"] + s["failed"] + s["unsupported"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_valid_file_among_bad_ones_gets_exactly_one_row(modality, corpus, runs):
    result = runs(modality)
    lost = [(c.kind, _outcome(c, result), result["errors"].get(str(c.path), {}).get("message"))
            for c in corpus.of(modality, expect="ok") if _outcome(c, result) != "row"]
    assert not lost, f"valid files without their row: {lost}"
    assert len(result["hashes"]) == result["summary"]["extracted"] + result["summary"]["duplicates"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_bad_file_is_listed_in_errors_jsonl_with_a_reason(modality, corpus, runs):
    result = runs(modality)
    wrong = [(c.kind, _outcome(c, result)) for c in corpus.of(modality, expect="error")
             if _outcome(c, result) != "error"]
    assert not wrong, f"bad files not (only) listed as errors: {wrong}"
    for c in corpus.of(modality, expect="error"):
        record = result["errors"][str(c.path)]
        assert record["error"] and len(record["message"]) > 5, record


@pytest.mark.parametrize("modality", MODALITIES)
def test_files_whose_outcome_is_a_loader_policy_end_up_in_exactly_one_place(modality, corpus, runs):
    result = runs(modality)
    wrong = [(c.kind, _outcome(c, result)) for c in corpus.of(modality, expect="either")
             if _outcome(c, result) not in ("row", "error")]
    assert not wrong


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_file_is_a_row_or_a_named_reason_and_nothing_unknown_is_listed(modality, corpus, runs):
    result = runs(modality)
    assert {_outcome(c, result) for c in corpus.of(modality)} <= {"row", "error"}
    assert all(record["message"] for record in result["errors"].values())
    assert set(result["errors"]) <= {str(c.path) for c in corpus.of(modality)}


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_path_that_does_not_exist_stops_the_run_with_one_line_naming_it(modality, corpus, tmp_path, capsys):
    missing = missing_path(corpus.root, modality)
    code = main(["extract", "--modality", modality, str(missing), "--workspace", str(tmp_path / "ws"),
                 *EXTRACTORS[modality]])
    err = capsys.readouterr().err
    assert code != 0 and str(missing) in err.splitlines()[0] and "Traceback" not in err, err


def test_benchmark_loaders_refuse_feature_files_with_nan_or_inf(tmp_path):
    files = [(p, d, what) for p, d, what in make_feature_files(tmp_path) if d != "npy"]
    accepted = []
    for path, dataset, what in files:
        try:
            load_benchmark(dataset, path)
        except DatasetFormatError as exc:
            assert path.name in str(exc) or str(path) in str(exc)
        else:
            accepted.append(f"{dataset}: {what}")
    assert len(files) >= 30 and not accepted


def test_the_store_refuses_feature_matrices_with_nan_or_inf(tmp_path):
    table = FeatureStore(tmp_path / "store").open({"name": "fake", "modality": "image", "key": "fake@0", "dim": 8})
    for path, _, what in [f for f in make_feature_files(tmp_path / "files") if f[1] == "npy"]:
        X = np.load(path)
        with pytest.raises(StoreError, match="non-finite"):
            table.write_shard(X, [StoreRow(f"h{i}", f"item{i}", f"/x/{i}.png") for i in range(len(X))])
    assert table.shard_paths() == [] and len(list(table.shards.glob("*.incomplete"))) == 0
