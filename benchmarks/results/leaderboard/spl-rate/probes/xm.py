"""Usage: python PROBES/xm.py VARIANT[,VARIANT...]|summary LEADERBOARD.json

Run on commit 7306152's benchmarks/results/leaderboard/xmedia/leaderboard.json.

DRCL's tuned xmedia cell at label noise 0 with its RSC rates scaled per modality (variants below), 3 seeds."""
from __future__ import annotations

import json
import sys
import time

sys.path.insert(0, "benchmarks")  # run from the repository root
import numpy as np
from leaderboard import load

from crossmodal.device import resolve_device
from pipelines.benchmark import benchmark_dataset
from pipelines.train import resolve_config

ds = load("xmedia")
r = json.load(open(sys.argv[2]))
cell = [c for c in r["cells"] if c["method"] == "drcl" and c["noise"] == 0][0]
t = cell["tuning"]
base = t.get("best_overrides") or t.get("overrides")
print(list(t.keys())) if base is None else None
print(base)
lr = 0.0006606
mode = sys.argv[1]
def lrs(mods, f):
    return [f"lr_{m}={lr*f:.4g}" for m in mods]
variants = {
    "base": [],
    "others-x3.2": lrs(["text", "audio", "mesh", "video"], 3.19),
    "small-x3.2": lrs(["audio", "mesh", "video"], 3.19),
    "all-x3.2": lrs(["image", "text", "audio", "mesh", "video"], 3.19),
}
variants["all-x3.2-e200"] = variants["all-x3.2"] + ["epochs=200"]
variants["all-x3.2-valmap"] = variants["all-x3.2"] + ["select_by=val_map"]
variants["all-x3.2-spl"] = variants["all-x3.2"] + [f"lr_spl={lr*3.19:.4g}"]
variants["all-x8"] = lrs(["image", "text", "audio", "mesh", "video"], 8)
variants["all-x3.2-q0.15"] = variants["all-x3.2"] + ["q_fixed=0.15"]

if mode == "summary":
    cfg = resolve_config("drcl", overrides=base, seed=0)
    from crossmodal.methods import create_method
    m = create_method("drcl").fit(dict(ds.train), ds.val, config=cfg, device=resolve_device("cpu"))
    for k, v in m.extra["rsc"].items():
        print(k, v)
    print(m.extra["spl"])
else:
    for name in mode.split(","):
        s = time.perf_counter()
        res = benchmark_dataset(ds, methods=["drcl"], noise=[0.0], seeds=3, overrides=[*base, *variants[name]],
                                device="cpu")
        v = [x["MAP@all"] for x in res.runs]
        print(name, f"{np.mean(v):.3f} ± {np.std(v):.3f}", f"{time.perf_counter()-s:.0f}s", flush=True)
        by = {}
        for x in res.runs:
            for p in x["pairs"]:
                by.setdefault(p["query"], []).append(p["MAP@all"])
                by.setdefault(p["target"], []).append(p["MAP@all"])
        print("    per modality (as query or target):", {k: round(float(np.mean(v)), 3) for k, v in by.items()},
              flush=True)
