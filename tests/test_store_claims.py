"""Claims: concurrent extractions on one table split the items instead of both extracting every one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import extractors.store as store_module
from extractors.store import FeatureStore, FeatureTable, StoreRow

DIM = 4


@pytest.fixture
def table(tmp_path) -> FeatureTable:
    description = {"name": "toy", "modality": "image", "key": "toy@000000000000", "dim": DIM, "dtype": "float32",
                   "config": {}}
    return FeatureStore(tmp_path / "store").open(description)


def store(table: FeatureTable, hashes: list[str]) -> None:
    table.write_shard(np.zeros((len(hashes), DIM), np.float32),
                      [StoreRow(h, f"id-{h}", f"/raw/{h}.png") for h in hashes])


def test_a_second_run_gets_only_the_items_the_first_did_not_claim_and_neither_gets_stored_ones(table):
    store(table, ["done"])
    assert table.claim(["a", "b", "done", "a"], owner="run-1") == ["a", "b"]
    assert table.claim(["b", "c", "d", "done"], owner="run-2") == ["c", "d"]
    assert table.claim(["a", "e"], owner="run-1") == ["a", "e"]  # an owner keeps what it holds
    assert {(c.owner, c.items, c.live) for c in table.claims()} == {("run-1", 3, True), ("run-2", 2, True)}


def test_released_items_are_free_again_and_committed_ones_are_skipped_as_stored(table):
    table.claim(["a", "b"], owner="run-1")
    store(table, ["a"])  # run-1 committed a, then stopped
    table.release("run-1")
    assert table.claim(["a", "b"], owner="run-2") == ["b"]
    assert [c.owner for c in table.claims()] == ["run-2"]


def test_the_claim_of_a_killed_run_is_stale_and_taken_over(table):
    child = textwrap.dedent(f"""
        import os
        from extractors.store import FeatureTable
        print(FeatureTable({str(table.path)!r}).claim(["a", "b"], owner="killed"), flush=True)
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "['a', 'b']", done.stderr
    [claim] = table.claims()
    assert (claim.owner, claim.live) == ("killed", False)
    assert table.claim(["a", "b", "c"], owner="next") == ["a", "b", "c"]
    assert [c.owner for c in table.claims()] == ["next"]


def test_a_claim_whose_process_id_now_names_another_process_is_stale(table):
    table.claim(["a"], owner="old")
    path = next(table.claims_dir.glob("*.json"))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "started": record["started"] - 1}))  # same pid, started at another time
    assert table.claim(["a"], owner="new") == ["a"]


def test_a_claim_of_another_host_lives_until_it_is_not_renewed_for_the_ttl(table):
    table.claim(["a", "b"], owner="remote")
    path = next(table.claims_dir.glob("*.json"))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "host": f"not-{socket.gethostname()}", "pid": 1}))
    assert table.claim(["a", "b"], owner="local") == []
    path.write_text(json.dumps({**record, "host": "elsewhere", "time": time.time() - store_module.CLAIM_TTL - 1}))
    assert table.claim(["a", "b"], owner="local") == ["a", "b"]


def test_concurrent_claims_of_overlapping_items_give_each_item_to_exactly_one_owner(table):
    items = [f"h{i}" for i in range(300)]
    got: dict[str, list[str]] = {}

    def run(owner: str, offset: int) -> None:
        mine: list[str] = []
        for lo in range(0, 300, 25):  # claims in batches, interleaved with the other owners
            batch = items[(lo + offset) % 300:] + items[:(lo + offset) % 300]
            mine += table.claim(batch[:25], owner=owner)
        got[owner] = mine

    threads = [threading.Thread(target=run, args=(f"run-{k}", k * 100)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [h for mine in got.values() for h in mine]
    assert sorted(set(claimed)) == sorted(items)
    assert len(claimed) == len(set(claimed))  # no item claimed by two owners
