"""The type check is part of the default test run: mypy over ``crossmodal/`` and ``extractors/`` with the settings of
pyproject.toml's ``[tool.mypy]`` (the same command a developer runs as ``mypy``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_type_errors_in_the_core_and_the_extractors():
    pytest.importorskip("mypy", reason="mypy comes with the dev extra: pip install -e '.[dev]'")
    # The cache (.mypy_cache, git-ignored) makes a rerun take ~1 s; a cold run took ~25 s on 2 shared cores.
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues found" in done.stdout
