"""Usage: python PROBES/spl.py DATASET NOISE OUT.json TUNER-SEED-LEADERBOARD.json...

DRCL's tuned config vs the same with lr_spl at the recipe's rule for its batch (SPL decoupled from the RSC rate)."""
from __future__ import annotations

import json
import sys
import time

sys.path.insert(0, "benchmarks")  # run from the repository root
import numpy as np
from leaderboard import load

from crossmodal.recipe import rule_lr
from pipelines.benchmark import benchmark_dataset

name, noise, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
files = sys.argv[4:]
ds = load(name)
rows = []
for f in files:
    r = json.load(open(f))
    cell = [c for c in r["cells"] if c["method"] == "drcl" and c["noise"] == noise][0]
    base = cell["tuning"]["best_overrides"]
    batch = int([o for o in base if o.startswith("batch_size=")][-1].split("=")[1])
    lr = float([o for o in base if o.startswith("lr_image=")][-1].split("=")[1])
    rule = rule_lr(batch)
    for variant, extra in (("tuned", []), ("lr_spl-rule", [f"lr_spl={rule}"])):
        s = time.perf_counter()
        res = benchmark_dataset(ds, methods=["drcl"], noise=[noise], seeds=3, overrides=[*base, *extra], device="cpu")
        v = [x["MAP@all"] for x in res.runs]
        rows.append({"file": f, "variant": variant, "lr": lr, "lr_spl": rule if extra else lr, "batch": batch,
                     "mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v})
        print(name, noise, f.split("/")[-3], variant, f"lr {lr:g} lr_spl {rows[-1]['lr_spl']:g}",
              f"{np.mean(v):.3f} ± {np.std(v):.3f}", f"{time.perf_counter()-s:.0f}s", flush=True)
json.dump(rows, open(out, "w"), indent=1)
