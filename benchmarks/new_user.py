"""A new user's first hour, scripted: real media from ../shared/data through the CLI, every promise checked.

Runs the installed ``crossmodal`` command in subprocesses, as a person would, in a fresh workspace, and checks what
issue 11 asks of the tool:

* every input file ends as a row in the store or a named reason in ``errors.jsonl`` (Tux Paint's images, PNG and SVG;
  its description texts; its sounds; files of other kinds in the same folders count as given too);
* each mistake a user can make (a wrong path, an empty folder, nothing readable, a bad option, one modality, a bad
  model name, an unknown model, a missing query file, weights that cannot be had offline) exits non-zero with one line
  and its fix, and no traceback;
* train and evaluate print their MAP tables with the query and gallery sizes and the chance level;
* ``--help`` answers in under 0.5 s;
* the weights download path works against a local HTTP server (tests/test_weights.py, run here).

Usage::

    python benchmarks/new_user.py                     # writes benchmarks/results/new_user.md
    python benchmarks/new_user.py --keep /tmp/nu      # keep the workspace and the copied data there

Takes about 5-10 minutes on 2 cores (mostly MFCC's numba warm-up and the SVG rasteriser's child processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "new_user.md"
HELP_LIMIT_S = 0.5
# What a user points each modality at, and the weight-free (or corpus-fitted) extractor used: no weights can be had
# on these machines. The folders hold the other modalities' files too, as real collections do.
MODALITIES = {
    "image": ("hog-color", []),
    "text": ("doc2vec", ["--set", "epochs=20"]),
    "audio": ("mfcc", []),
}


def crossmodal(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["crossmodal", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_mistake(name: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """A mistake must exit non-zero with at most two lines (the error and its fix) and no traceback."""
    r = crossmodal(*args, env=env)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    ok = r.returncode != 0 and "Traceback" not in r.stderr and 1 <= len(lines) <= 2
    return {"check": name, "command": "crossmodal " + " ".join(args), "exit": r.returncode, "ok": ok,
            "output": " / ".join(lines)[:300]}


def help_times() -> dict:
    verbs = ["", "extract", "train", "evaluate", "index", "query", "serve", "demo", "extractors", "benchmark"]
    times = {}
    for verb in verbs:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            r = crossmodal(*([verb] if verb else []), "--help")
            best = min(best, time.perf_counter() - t0)
            assert r.returncode == 0, r.stderr
        times[f"crossmodal {verb} --help".replace("  ", " ")] = best
    return times


def accounting(workspace: Path, folder: Path, summary: dict) -> dict:
    """Every file under ``folder`` is a stored row or a line of the run's errors file: count both ways."""
    given = {str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}
    from extractors.store import FeatureStore, stored_path

    table = FeatureStore(workspace / "store").table(summary["modality"], summary["key"])
    meta = table.metadata().to_pylist()
    stored = {stored_path(r["source_path"], r.get("source_path_bytes")) for r in meta}
    errors = [json.loads(line) for line in Path(summary["errors_file"]).read_text().splitlines() if line.strip()]
    reasons = {e["path"]: e.get("message") or e.get("error") for e in errors}
    unnamed = [p for p in reasons if not reasons[p]]
    # Files of other modalities' extensions are not items of this run; the summary counts them by suffix.
    passed_over = dict(summary["passed_over"])
    lost = []
    for path in sorted(given - stored - set(reasons)):
        suffix = os.path.splitext(path)[1].lower()
        if passed_over.get(suffix, 0) > 0:
            passed_over[suffix] -= 1
        else:
            lost.append(path)
    return {"modality": summary["modality"], "files given": len(given), "found": summary["found"],
            "other modalities": sum(summary["passed_over"].values()),
            "rows": len(meta), "extracted": summary["extracted"], "duplicates": summary["duplicates"],
            "failed": summary["failed"], "unsupported": summary["unsupported"], "unlabelled": summary["unlabelled"],
            "with a reason": len(reasons), "lost": len(lost) + len(unnamed), "lost examples": lost[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (DATA / "tuxpaint").is_dir():
        print(f"needs {DATA / 'tuxpaint'} (the shared data)", file=sys.stderr)
        return 2
    base = args.keep or Path(tempfile.mkdtemp(prefix="crossmodal-new-user-"))
    base.mkdir(parents=True, exist_ok=True)
    ws = base / "workspace"
    shutil.rmtree(ws, ignore_errors=True)
    started = time.perf_counter()
    report: dict = {"help": help_times()}

    empty = base / "empty"
    empty.mkdir(exist_ok=True)
    unreadable = base / "only-dat"
    shutil.rmtree(unreadable, ignore_errors=True)
    (unreadable / "animals").mkdir(parents=True)
    for p in sorted((DATA / "tuxpaint" / "animals").rglob("*.dat"))[:5]:
        shutil.copy(p, unreadable / "animals" / p.name)
    w = ["--workspace", str(ws)]
    offline = {"CROSSMODAL_OFFLINE": "1"}
    # No -e on the path mistakes: the modality's default (VGG-19, whose weights are not here) must not hide them.
    mistakes = [
        ("a path that does not exist", ["extract", "-m", "image", str(base / "no-such-folder"), *w]),
        ("an empty folder", ["extract", "-m", "image", str(empty), *w]),
        ("no file of a readable extension", ["extract", "-m", "image", str(unreadable), *w]),
        ("an option out of range", ["extract", "-m", "image", str(unreadable), "-e", "hog-color", "--set",
                                    "pixels_per_cell=0", *w]),
        ("a model name that is a path", ["train", "--name", "../../escaped", *w]),
        ("evaluate an unknown model", ["evaluate", "--model", "nosuch", *w]),
    ]
    report["mistakes"] = [one_line_mistake(name, a) for name, a in mistakes]
    report["mistakes"].append(one_line_mistake(
        "VGG-19 weights offline and not cached", ["extract", "-m", "image", str(DATA / "tuxpaint" / "animals"),
                                                  "-e", "vgg19-fc7", *w],
        env={**offline, "TORCH_HOME": str(base / "empty-torch-home")}))

    report["extract"], report["accounting"] = [], []
    tux = DATA / "tuxpaint"
    for i, (modality, (extractor, sets)) in enumerate(MODALITIES.items()):
        t0 = time.perf_counter()
        r = crossmodal("extract", "-m", modality, str(tux), "-e", extractor, *sets, *w, "--json")
        if r.returncode != 0:
            print(r.stdout, r.stderr, file=sys.stderr)
            return 1
        summary = json.loads(r.stdout)
        report["extract"].append({"modality": modality, "extractor": extractor, "seconds": time.perf_counter() - t0})
        report["accounting"].append(accounting(ws, tux, summary))
        if i == 0:
            report["mistakes"].append(one_line_mistake("train with one labelled modality", ["train", *w]))

    t0 = time.perf_counter()
    r = crossmodal("train", "--name", "tux", *w)
    report["train"] = {"exit": r.returncode, "seconds": time.perf_counter() - t0, "stdout": r.stdout,
                       "stderr": r.stderr}
    r = crossmodal("evaluate", "--model", "tux", *w)
    report["evaluate"] = {"exit": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    r = crossmodal("index", "--model", "tux", *w)
    report["index"] = {"exit": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    report["mistakes"].append(one_line_mistake(
        "query a file that does not exist", ["query", str(base / "missing.png"), "--target", "text", "--model", "tux",
                                             *w]))
    report["mistakes"].append(one_line_mistake(
        "query a target the model does not have", ["query", "--text", "a koala", "--target", "video", "--model",
                                                   "tux", *w]))
    koala = tux / "animals" / "marsupials" / "koala.png"
    r = crossmodal("query", str(koala), "--target", "text", "--model", "tux", "-k", "5", *w)
    report["query"] = {"exit": r.returncode, "stdout": r.stdout, "stderr": r.stderr}

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_weights.py"],
                       capture_output=True, text=True, cwd=ROOT)
    report["weights"] = {"exit": r.returncode, "last": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "",
                         "seconds": time.perf_counter() - t0}
    report["seconds"] = time.perf_counter() - started
    text, failures = render(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


def render(report: dict) -> tuple[str, list[str]]:
    failures: list[str] = []
    out = ["# A new user's run on real media (Tux Paint), checked", "",
           "Command: `python benchmarks/new_user.py` (2-core VM, no GPU, no weights on disk; "
           f"{report['seconds']:.0f} s in all).", "", "## `--help`", "", "| command | best of 3 (s) | under 0.5 s |",
           "|---|---:|---|"]
    for cmd, s in report["help"].items():
        out.append(f"| `{cmd}` | {s:.2f} | {'yes' if s < HELP_LIMIT_S else 'NO'} |")
        if s >= HELP_LIMIT_S:
            failures.append(f"{cmd} took {s:.2f} s")
    out += ["", "## Every file accounted for", "",
            "Each modality's extractor is pointed at the whole `tuxpaint/` folder (images, texts, sounds and `.dat` "
            "files side by side). A file of another modality's extension is counted in the summary by suffix "
            "('passed over'); any other file must be a row or a line with its reason in the run's errors.jsonl.", "",
            "| modality | files given | other modalities' (counted) | found | rows | extracted | duplicates | failed "
            "| unsupported | unlabelled | with a reason | lost |", "|---|" + "---:|" * 11]
    for a in report["accounting"]:
        out.append(f"| {a['modality']} | {a['files given']} | {a['other modalities']} | {a['found']} | {a['rows']} | "
                   f"{a['extracted']} | {a['duplicates']} | {a['failed']} | {a['unsupported']} | {a['unlabelled']} | "
                   f"{a['with a reason']} | {a['lost']} |")
        if a["lost"] or a["found"] + a["other modalities"] != a["files given"]:
            failures.append(f"{a['modality']}: {a['lost']} files lost ({a['lost examples']}), found {a['found']} "
                            f"of {a['files given']}")
    out += ["", "Extraction time: " + ", ".join(f"{e['modality']} ({e['extractor']}) {e['seconds']:.0f} s"
                                                for e in report["extract"]) + ".",
            "", "## Mistakes: non-zero exit, one line and its fix", "", "| mistake | exit | ok | what it printed |",
            "|---|---:|---|---|"]
    for m in report["mistakes"]:
        out.append(f"| {m['check']} | {m['exit']} | {'yes' if m['ok'] else 'NO'} | {m['output'].replace('|', '/')} |")
        if not m["ok"]:
            failures.append(f"mistake '{m['check']}' exit {m['exit']}: {m['output']}")
    for verb in ("train", "evaluate"):
        r = report[verb]
        has = all(word in r["stdout"] for word in ("chance", "queries", "gallery"))
        if r["exit"] != 0 or not has:
            failures.append(f"{verb}: exit {r['exit']}, table with sizes and chance: {has}")
        out += ["", f"## `crossmodal {verb}` (exit {r['exit']})", "", "```", r["stdout"].rstrip(),
                *([r["stderr"].rstrip()] if r["stderr"].strip() else []), "```"]
    for verb in ("index", "query"):
        r = report[verb]
        if r["exit"] != 0:
            failures.append(f"{verb}: exit {r['exit']}: {r['stderr'][-300:]}")
        out += ["", f"## `crossmodal {verb}` (exit {r['exit']})", "", "```", r["stdout"].rstrip(), "```"]
    wt = report["weights"]
    out += ["", "## Weights download against a local HTTP server", "",
            f"`python -m pytest tests/test_weights.py`: exit {wt['exit']}, `{wt['last']}` ({wt['seconds']:.0f} s)."]
    if wt["exit"] != 0:
        failures.append(f"tests/test_weights.py: {wt['last']}")
    out += ["", "## Verdict", "", "all checks pass" if not failures else "FAILED:\n" + "\n".join(
        f"- {f}" for f in failures), ""]
    return "\n".join(out), failures


if __name__ == "__main__":
    sys.exit(main())
