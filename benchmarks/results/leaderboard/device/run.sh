set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .lb/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd .lb/code && export PYTHONPATH=/tmp/site:$PWD
nproc; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
timeout 120 python3 - <<'PY' || exit 1  # the sanity step (skipped in the second, warm run)
import sys, time
sys.path.insert(0, "benchmarks")
import leaderboard, torch
from pipelines.tune import tune
t = time.time()
ds = leaderboard.load("wiki", leaderboard.Path("../data"))
r = tune("drcl", ds, trials=1, seed=0, device="cuda", base_overrides=["epochs=2"])
print("sanity: drcl on cuda", round(r.best_val_map, 3), round(time.time() - t, 1), "s", torch.__version__)
PY
python3 ../runner.py "$1" "$2"
