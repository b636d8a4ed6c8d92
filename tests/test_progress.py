"""The training log survives a reader racing the writer and a kill in the middle of a line."""

from __future__ import annotations

from pipelines.progress import TrainingLog, read_training_log


def test_a_line_still_being_written_is_not_read_as_a_record(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"stage": "a", "epoch": 1}\n{"stage": "a", "ep')
    assert read_training_log(path) == [{"stage": "a", "epoch": 1}]


def test_reopening_a_log_cut_by_a_kill_drops_the_partial_line_and_appends_on_a_fresh_one(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"stage": "a", "epoch": 1, "epochs": 2}\n{"stage": "a", "ep')
    TrainingLog(path).on_epoch_end("a", 2, 2, {"loss": 0.5})
    assert [(r["stage"], r["epoch"], r["loss"] if "loss" in r else None) for r in read_training_log(path)] == \
        [("a", 1, None), ("a", 2, 0.5)]
