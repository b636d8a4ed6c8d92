from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.benchmark import BenchmarkResult, parse_rates
from pipelines.cli import main

TINY = ["--set", "hidden=[16]", "--set", "dim=16", "--set", "sdml.hidden=[16,16]", "--set", "batch_size=64"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["benchmark", "--methods", "sdml,mcca,dscmr", "--dataset", "synthetic", "--noise", "0,0.5",
                 "--seeds", "2", "--epochs", "1", *TINY, "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out


def test_benchmark_writes_the_table_the_plot_and_the_json(report):
    assert (report / "benchmark.png").stat().st_size > 0
    data = json.loads((report / "benchmark.json").read_text())
    assert len(data["runs"]) == 3 * 2 * 2  # methods x rates x seeds
    table = (report / "benchmark.md").read_text()
    assert "| method | noise 0 | noise 0.5 |" in table
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")][1:] == \
        ["| sdml", "| mcca", "| dscmr", "| chance (random ranking)", "| effective rate"]
    assert "image->text 400x400" in table  # the synthetic set's test split: 400 queries, 400 gallery items
    assert "Warning: 1 epoch is far fewer than the 500 dscmr's defaults were tuned for" in table  # once per method
    assert table.count("Warning: 1 epoch") == 2  # sdml (200) and dscmr (500); MCCA is closed-form (1)


def test_table_cells_are_the_mean_and_std_over_seeds_of_the_runs(report):
    data = json.loads((report / "benchmark.json").read_text())
    values = [r["MAP@all"] for r in data["runs"] if r["method"] == "dscmr" and r["noise"] == 0.5]
    assert f"{np.mean(values):.3f} ± {np.std(values):.3f}" in (report / "benchmark.md").read_text()


def test_label_noise_leaves_mcca_on_paired_data_unchanged(report):
    runs = json.loads((report / "benchmark.json").read_text())["runs"]
    by_rate = {r["noise"]: r["MAP@all"] for r in runs if r["method"] == "mcca" and r["seed"] == 0}
    assert by_rate[0.0] == by_rate[0.5]


def test_effective_label_noise_is_reported_below_the_requested_rate(report):
    last = (report / "benchmark.md").read_text().strip().splitlines()[-1]
    effective = float(last.split(" | ")[-1].rstrip(" |"))
    assert 0.5 * 0.85 < effective < 0.5  # about r (C - 1) / C with C = 10


def test_alignment_noise_is_reported_at_exactly_the_requested_rate(tmp_path):
    code = main(["benchmark", "--methods", "mcca", "--dataset", "synthetic", "--noise", "0.3", "--seeds", "1",
                 "--noise-kind", "alignment-complete", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "benchmark.md").read_text().strip().endswith("| effective rate | 0.300 |")


def test_prior_transfer_adds_sdml_and_mars_rows_trained_on_the_drcl_prior(tmp_path):
    code = main(["benchmark", "--methods", "drcl,sdml", "--dataset", "synthetic", "--noise", "0", "--seeds", "1",
                 "--epochs", "1", *TINY, "--set", "mars.hidden=[16,16]", "--set", "drcl.hidden=[16,16]",
                 "--prior-transfer", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    methods = [r["method"] for r in json.loads((tmp_path / "benchmark.json").read_text())["runs"]]
    assert methods == ["drcl", "sdml+drcl-prior", "mars+drcl-prior", "sdml"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "sdmll"], "unknown method"),
    (["--methods", "sdml", "--set", "sdml.no_such_field=1"], "no_such_field"),
    (["--methods", "sdml", "--set", "mcca.dim=3"], "not benchmarked"),
    (["--methods", "mcca", "--dataset", "synthetic-xmedia", "--noise-kind", "alignment-partial", "--noise", "0.2"],
     "paired"),
    (["--methods", "mcca", "--noise", "0,1.5"], "noise rates"),
    (["--methods", "mcca", "--dataset", "wiki"], "--data"),
])
def test_benchmark_user_errors_exit_2_with_one_line_and_a_fix(argv, message, tmp_path, capsys):
    assert main(["benchmark", *argv, "--seeds", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err


def test_parse_rates_reads_comma_separated_fractions():
    assert parse_rates("0, 0.2,0.8") == [0.0, 0.2, 0.8]


def test_summary_of_an_empty_cell_is_left_out():
    result = BenchmarkResult(dataset="d", noise_kind="label", rates=[0.0, 0.4], methods=["a"], seeds=[0],
                             settings={}, runs=[{"method": "a", "noise": 0.0, "seed": 0, "MAP@all": 0.5}])
    assert result.summary() == [{"method": "a", "noise": 0.0, "MAP@all": 0.5, "std": 0.0, "runs": 1}]


def test_tuned_benchmark_gives_every_method_the_same_trials_and_writes_the_budget_under_the_table(tmp_path):
    code = main(["benchmark", "--methods", "dscmr,mcca", "--dataset", "synthetic", "--noise", "0", "--seeds", "1",
                 "--epochs", "1", "--set", "hidden=[16]", "--set", "dim=16", "--tune", "2", "--out", str(tmp_path),
                 "--device", "cpu"])
    assert code == 0
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert [(t["method"], t["budget"]["trials"], len(t["trials"])) for t in data["tuning"]] == [("dscmr", 2, 2),
                                                                                                ("mcca", 2, 2)]
    dscmr = next(r for r in data["runs"] if r["method"] == "dscmr")
    assert dscmr["seed"] == 0 and 0 < dscmr["MAP@all"] <= 1
    table = (tmp_path / "benchmark.md").read_text()
    assert "tuned=2 trials" in table and "| chance (random ranking) |" in table
    assert "Tuning budget, the same for every method at every noise rate: 2 trials of Optuna" in table
    assert "| mcca | 0 |" in table and "ridge=" in table  # each method's chosen values, below the table


def test_tuning_with_prior_transfer_is_refused_with_a_fix(tmp_path, capsys):
    assert main(["benchmark", "--methods", "drcl,sdml", "--prior-transfer", "--tune", "2", "--seeds", "1",
                 "--out", str(tmp_path)]) == 2
    assert "run --prior-transfer without --tune" in capsys.readouterr().err
