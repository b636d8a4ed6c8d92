"""Smoke test of benchmarks/leaderboard.py's core: tune, evaluate over seeds, tables, plot, on a tiny synthetic set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import leaderboard  # noqa: E402  (a benchmark script, not a package)

from crossmodal.synthetic import make_synthetic  # noqa: E402


def test_leaderboard_tunes_each_method_evaluates_it_and_writes_table_json_and_plot(tmp_path):
    ds = make_synthetic({"image": 16, "text": 8}, 4, 60, 24, 32, seed=0, paired=True, name="tiny")
    saved = []
    result = leaderboard.leaderboard(ds, methods=["drcl", "mcca"], noise=[0.0], seeds=1, trials=1, epochs=2,
                                     record=lambda r: saved.append(len(r["cells"])))
    assert saved == [1, 2]  # a partial result after every (method, rate) cell
    cells = {c["method"]: c for c in result["cells"]}
    assert set(cells) == {"drcl", "mcca"}
    for cell in cells.values():
        assert 0 < cell["mean"] <= 1 and cell["std"] == 0  # one seed
        assert cell["tuning"]["budget"]["trials"] == 1
        assert set(cell["runs"][0]["pairs"]) == {"image->text", "text->image"}
    assert 0 < result["chance"]["MAP@all"] < 1
    leaderboard.write(result, tmp_path)
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| drcl |" in table and "| chance (random ranking) |" in table and "1 Optuna TPE trials" in table
    assert "noise 0: DRCL" in table  # the goal's status is stated
    assert json.loads((tmp_path / "leaderboard.json").read_text())["cells"][0]["method"] == "drcl"
    assert (tmp_path / "leaderboard.png").stat().st_size > 0


def test_a_dataset_written_as_npz_reads_back_with_the_same_splits(tmp_path):
    ds = make_synthetic({"image": 6, "text": 4}, 3, 12, 6, 9, seed=1, paired=True, name="tiny")
    back = leaderboard.load_npz(leaderboard.save_npz(ds, tmp_path / "tiny.npz"))
    assert (back.name, back.paired, back.num_classes) == ("tiny", True, 3)
    for split in ("train", "val", "test"):
        for m in ("image", "text"):
            a, b = getattr(ds, split)[m], getattr(back, split)[m]
            assert (a.X == b.X).all() and (a.labels == b.labels).all() and list(a.ids) == list(b.ids)


def test_a_probe_swaps_sdmls_parts_into_drcl_only_while_it_runs():
    import torch

    from crossmodal.methods import drcl
    from crossmodal.methods.drcl import DRCLConfig

    config = DRCLConfig(hidden=(8,), dim=4)
    logits, y = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    with leaderboard.swapped(("label", "encoder")):
        assert drcl._encoder(config, 6)[-2].bias is not None  # SDML's last Linear has a bias
        assert float(drcl.gce_loss(logits, y, 0.5)) == 2.0  # ||z W - y||: the row norm of (2, 0)
    assert drcl._encoder(config, 6)[-2].bias is None and float(drcl.gce_loss(logits, y, 0.5)) < 0.1


def test_runs_tuned_with_different_tuner_seeds_join_into_paired_differences_and_a_verdict():
    def result(seed, drcl, sdml):
        def cell(method, means):
            return {"method": method, "noise": 0.0, "mean": sum(means) / len(means),
                    "runs": [{"MAP@all": m} for m in means], "tuning": {"budget": {"trials": 20}}}
        return {"dataset": "tiny", "noise_kind": "label", "budget": {"tune_seed": seed},
                "cells": [cell("drcl", drcl), cell("sdml", sdml)]}

    rows = leaderboard.tuner_seeds([result(0, [0.5, 0.7], [0.5, 0.5]), result(1, [0.4, 0.4], [0.5, 0.5]),
                                    {**result(2, [0.9], [0.1]), "dataset": "other"}])
    (row,) = [r for r in rows if r["dataset"] == "tiny"]
    assert row["tuner_seeds"] == [0, 1] and row["methods"]["drcl"]["per_seed"] == pytest.approx([0.6, 0.4])
    assert row["differences"] == pytest.approx([0.1, -0.1]) and row["gap"] == pytest.approx(0.0)
    assert row["goal_met"] and row["drcl_std_all_runs"] == pytest.approx(0.1224745, abs=1e-6)
    table = leaderboard.tuner_seeds_markdown(rows)
    assert "| tiny | label 0 |" in table and "+0.100 / -0.100" in table and "| met |" in table
