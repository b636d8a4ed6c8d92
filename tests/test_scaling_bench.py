"""The scaling benchmark's core (benchmarks/scaling.py) on two tiny sizes: a row per step and size, and a growth per
step, with positive measured numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scaling import STEPS, fit, markdown, measure  # noqa: E402


def test_every_step_is_measured_at_every_size_and_its_growth_is_fitted(tmp_path):
    rows = measure([15, 30], epochs=1, queries=2, workdir=tmp_path, in_process=True)

    assert sorted((r["step"], r["items"]) for r in rows) == sorted((s, n) for s in STEPS for n in (15, 30))
    for r in rows:
        assert r["seconds"] > 0 and r["peak_mb"] > 0 and r["base_mb"] > 0, r
    assert all(r["extracted"] == r["items"] for r in rows if r["step"].startswith("extract"))
    query = [r for r in rows if r["step"] == "query"]
    assert all(r["query_p50_ms"] > 0 and r["search_p50_ms"] > 0 for r in query)
    assert {tuple(r["built"]) for r in rows if r["step"] == "index exact"} == {("exact",)}
    assert all(r["built"][0].startswith("ivf-ondisk:") for r in rows if r["step"] == "index auto")

    fits = fit(rows)
    assert [f["step"] for f in fits] == list(STEPS)
    for f in fits:
        assert all(math.isfinite(f[k]) for k in ("s_per_item", "mb_per_item", "time_exponent", "memory_exponent"))
        assert all(e["seconds"] > 0 and e["peak_mb"] > 0 for e in f["extrapolated"].values())
    table = markdown(rows, fits, command="python benchmarks/scaling.py --sizes 15 30", epochs=1, queries=2)
    assert table.count("\n| extract image | ") == 3  # two measured rows and one growth row
