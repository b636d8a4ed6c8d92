"""Device runner: the leaderboard tasks in parallel worker processes, results tarred into $OUT every 20 s."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

t0 = time.time()
budget, workers = float(sys.argv[1]), int(sys.argv[2])
deadline = t0 + budget
out = os.environ["OUT"]
os.makedirs("/tmp/lbout", exist_ok=True)
tasks = [line.split() for line in open("../tasks.txt") if line.strip()]
RUN = ["--trials", "6", "--seeds", "3", "--epoch-cap", "40", "--tune-timeout", "150"]
done = threading.Event()


def pack():
    tmp = os.path.join(out, "results.tgz.part")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add("/tmp/lbout", arcname="lbout")
    os.replace(tmp, os.path.join(out, "results.tgz"))


def packer():
    while not done.wait(20):
        pack()


def run(i, args):
    left = deadline - time.time()
    if left < 45:
        return f"task {i} skipped: {' '.join(args)}"
    cmd = ["python3", "benchmarks/leaderboard.py", "--device", "cuda", "--cache", "../data", "--out",
           f"/tmp/lbout/{i}", *(RUN if "--run" in args else []), *args]
    start = time.time()
    with open(f"/tmp/lbout/{i}.log", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    line = f"task {i} rc={rc} {time.time() - start:.0f}s (t={time.time() - t0:.0f}): {' '.join(args)}"
    print(line, flush=True)
    return line


threading.Thread(target=packer, daemon=True).start()
with ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(lambda a: run(*a), enumerate(tasks)))
done.set()
pack()
print("\n".join(r for r in results if "skipped" in r))
print(f"all done in {time.time() - t0:.0f}s")
