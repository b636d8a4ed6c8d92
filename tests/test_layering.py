"""The arrows point one way: pipelines -> crossmodal, pipelines -> extractors; never back (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"crossmodal": {"pipelines", "extractors"}, "extractors": {"pipelines", "crossmodal"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_core_packages_do_not_import_the_layers_above_or_beside_them(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
        if imported_packages(p) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_every_python_file_starts_with_the_future_import():
    missing = []
    for package in ("crossmodal", "extractors", "pipelines", "tests", "benchmarks"):
        for p in (ROOT / package).rglob("*.py"):
            text = p.read_text()
            if text.strip() and "from __future__ import annotations" not in text:
                missing.append(str(p.relative_to(ROOT)))
    assert missing == []
