"""Two extractions started at once on one workspace split the work through the table's claims: every item is extracted
once in all, the store holds each row once, and each run's summary accounts for every file (what it extracted, and
what the other run did); the claims of a run that died are taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from _extract_media import write_shapes

from extractors.store import FeatureStore
from pipelines.extract import ExtractOptions, plan_extract, run_extract

CHEAP = ["--extractor", "hog-color", "--set", "size=32", "--set", "pixels_per_cell=8", "--workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"}
# A run as `crossmodal extract`, with two changes to make the race real on a loaded machine: each image takes 50 ms
# to decode, and the run waits after planning until the other run has planned too (so that both hold all 24 items in
# their todo list, as two runs started at the same moment do).
RUN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import pipelines.extract as e
    from extractors.image import HogColor
    from pipelines.cli import main

    load = HogColor.load
    HogColor.load = lambda self, path: (time.sleep(0.05), load(self, path))[1]
    plan, me, other = e.plan_extract, Path(sys.argv[1]), Path(sys.argv[2])

    def plan_then_meet(*args, **kwargs):
        planned = plan(*args, **kwargs)
        me.touch()
        deadline = time.monotonic() + 120
        while not other.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return planned

    e.plan_extract = plan_then_meet
    sys.exit(main(sys.argv[3:]))
""")


def _summary_accounts_for_every_file(s: dict) -> bool:
    return s["found"] == (s["extracted"] + s["skipped"] + s["duplicates"] + s["failed"] + s["unsupported"]
                          + s["by_other_run"])


def _rows(workspace: Path) -> Counter:
    """Rows per content hash over the raw shards (no de-duplication on read)."""
    table = FeatureStore(workspace / "store").table("image")
    return Counter(h for p in table.shard_paths() for h in pq.read_table(p).column("content_hash").to_pylist())


def test_two_runs_started_at_once_extract_each_item_once_in_all_and_each_summary_accounts_for_every_file(tmp_path):
    write_shapes(tmp_path / "photos", per_class=8)  # 24 images
    for shape in ("circle", "triangle"):  # a broken file each run may hold while it waits for the other's items
        (tmp_path / "photos" / shape / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image " + shape.encode())
    args = ["extract", "--modality", "image", str(tmp_path / "photos"), "--workspace", str(tmp_path / "ws"), *CHEAP,
            "--shard-size", "4", "--batch-size", "2", "--json"]
    flags = [tmp_path / "planned-a", tmp_path / "planned-b"]
    procs = [subprocess.Popen([sys.executable, "-c", RUN, str(me), str(other), *args], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (flags, flags[::-1])]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    a, b = (json.loads(out) for out, _ in outs)
    assert a["extracted"] + b["extracted"] == 24  # each item extracted once in all
    # a file that fails is never stored, so each run tries it (once the run holding it has let it go) and names it
    assert a["found"] == b["found"] == 26 and a["failed"] == b["failed"] == 2
    assert a["extracted"] > 0 and b["extracted"] > 0  # the work was split, not done by whoever came first
    assert a["by_other_run"] == b["extracted"] and b["by_other_run"] == a["extracted"]
    assert _summary_accounts_for_every_file(a) and _summary_accounts_for_every_file(b)
    rows = _rows(tmp_path / "ws")
    assert len(rows) == 24 and set(rows.values()) == {1}
    assert FeatureStore(tmp_path / "ws" / "store").table("image").claims() == []  # both released theirs


def test_the_claims_of_a_run_that_died_are_taken_over(tmp_path):
    write_shapes(tmp_path / "photos", per_class=2)
    options = ExtractOptions(extractor="hog-color", overrides={"size": 32, "pixels_per_cell": 8}, workers=0,
                             progress=False)
    plan = plan_extract(tmp_path / "ws", "image", [tmp_path / "photos"], options)
    hashes = [it.content_hash for it in plan.todo]
    child = textwrap.dedent(f"""
        import os
        from extractors.store import FeatureTable
        FeatureTable({str(plan.table.path)!r}).claim({hashes!r}, owner="killed")
        os._exit(9)
    """)
    subprocess.run([sys.executable, "-c", child], check=False, timeout=120)
    assert [(c.owner, c.live) for c in plan.table.claims()] == [("killed", False)]
    summary = run_extract(tmp_path / "ws", "image", [tmp_path / "photos"], options)
    assert (summary.extracted, summary.by_other_run) == (6, 0)
    assert plan.table.claims() == []
