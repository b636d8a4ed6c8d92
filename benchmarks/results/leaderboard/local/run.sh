#!/usr/bin/env bash
# The leaderboard as run for benchmarks/results/leaderboard: each line of tasks.txt (dataset, method, noise kind,
# rates) is one benchmarks/leaderboard.py --run call on the local CPU, two at a time with one thread each (2 cores);
# lines listed in skip.txt are left out; a line at noise 0 alone (RCAR's clean-pair reference) writes OUT/<...>-clean.
# Usage, from the repository root, after `python benchmarks/leaderboard.py --prepare --datasets digits,tuxpaint`:
#   bash benchmarks/results/leaderboard/local/run.sh OUT [TASKS [TRIALS [TUNE_SEED]]]   # default: tasks.txt, 6, 0
#   python benchmarks/leaderboard.py --render OUT/*-label/*/leaderboard.json --out benchmarks/results/leaderboard
#   python benchmarks/leaderboard.py --render OUT/*-complete/*/*/leaderboard.json --out benchmarks/results/leaderboard
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?give an output folder}"
tasks="${2:-$here/tasks.txt}"
trials="${3:-6}"
tune_seed="${4:-0}"
mkdir -p "$out"
one() {
  local ds=$1 m=$2 kind=$3 noise=$4
  if grep -qx "$ds $m $kind" "$here/skip.txt"; then echo "$ds $m $kind: skipped"; return; fi
  local tag="$ds-$m-$kind$( [ "$noise" = 0 ] && echo -clean )"; mkdir -p "$out/$tag"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/leaderboard.py --run --datasets "$ds" --noise "$noise" \
    --noise-kind "$kind" --methods "$m" --trials "$trials" --tune-seed "$tune_seed" --seeds 3 --epoch-cap 40 --device cpu \
    --out "$out/$tag" > "$out/$tag/log" 2>&1
  echo "$ds $m $kind $noise rc=$? $SECONDS s"
}
export -f one
export here out trials tune_seed
xargs -P 2 -L 1 bash -c 'one "$@"' _ < "$tasks"
