"""Start-up cost of the ``crossmodal`` command: wall time and peak memory of ``--help`` and of each verb's ``--help``.

Each command runs ``--repeat`` times in a fresh process (what a user's shell does); the table gives the median wall
time, the median CPU time (user + system: on a shared, busy machine the wall time also counts waiting for a core, the
CPU time does not), the peak resident memory of the process (``ru_maxrss`` from ``os.wait4``, so each run is measured
alone), and the heavy libraries the command imported (``torch``, ``transformers``, ``librosa``...), read from a second
run of the same command under ``python -X importtime``.

The command runs through the installed console script's own interpreter (``python -c 'from pipelines.cli import run;
run()'``, exactly what the ``crossmodal`` entry point does) so that a version manager's shim (pyenv's bash wrapper adds
~0.1 s) does not blur the numbers.

Usage:

    python benchmarks/startup.py --repeat 5                       # a Markdown table on stdout
    python benchmarks/startup.py --repeat 5 --json out.json
    python benchmarks/startup.py --root /tmp/old-checkout    # the same commands on another checkout (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout that runs (``python -c`` puts the cwd first on the path)
VERBS = ("version", "serve", "extract", "extractors", "train", "evaluate", "benchmark", "index", "query", "demo")
HEAVY = ("torch", "torchvision", "transformers", "librosa", "sentence_transformers", "open3d", "gensim", "numpy",
         "scipy", "pandas", "matplotlib", "faiss")
ENTRY = "from pipelines.cli import run; run()"


def run_once(args: list[str], root: Path) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit code) of one fresh ``crossmodal ARGS`` process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *args], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def heavy_imports(args: list[str], root: Path) -> list[str]:
    """The top-level heavy packages the command imported (from ``-X importtime``, which lists every import)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", ENTRY, *args], cwd=root, capture_output=True,
                          text=True, check=False)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    # a package counts by any of its modules (transformers' own line can be missing: it becomes a lazy module)
    tops = {name.split(".")[0] for name in imported}
    return [name for name in HEAVY if name in tops]


def measure(commands: list[list[str]], repeat: int, root: Path) -> list[dict]:
    rows = []
    for args in commands:
        runs = [run_once(args, root) for _ in range(repeat)]
        rows.append({
            "command": " ".join(["crossmodal", *args]),
            "seconds": round(statistics.median(r[0] for r in runs), 3),
            "max_seconds": round(max(r[0] for r in runs), 3),
            "cpu_seconds": round(statistics.median(r[1] for r in runs), 3),
            "rss_mib": round(statistics.median(r[2] for r in runs)),
            "exit_codes": sorted({r[3] for r in runs}),
            "heavy_imports": heavy_imports(args, root),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| command | median wall s | max wall s | median CPU s | peak RSS MiB | heavy imports |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| `{r['command']}` | {r['seconds']:.2f} | {r['max_seconds']:.2f} | {r['cpu_seconds']:.2f} | "
              f"{r['rss_mib']} | {', '.join(r['heavy_imports']) or 'none'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command (median reported)")
    parser.add_argument("--verbs", default=",".join(VERBS), help="comma-separated verbs whose --help is timed")
    parser.add_argument("--extra", action="append", default=[],
                        help="another command line to time, e.g. --extra 'extractors' (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    commands = [["--help"], *[[verb, "--help"] for verb in args.verbs.split(",") if verb]]
    commands += [extra.split() for extra in args.extra]
    rows = measure(commands, args.repeat, args.root.resolve())
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
