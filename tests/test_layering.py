"""The arrows point one way (ARCHITECTURE.md): pipelines -> crossmodal, pipelines -> extractors, extractors ->
crossmodal.common only; crossmodal.common imports nothing else of ours; and no import cycle anywhere."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("crossmodal", "extractors", "pipelines")
# package (folder) -> the modules of ours it may import, by prefix; anything else of ours is refused.
ALLOWED = {
    "crossmodal/common": ("crossmodal.common",),
    "crossmodal": ("crossmodal",),
    "extractors": ("extractors", "crossmodal.common"),
}


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute dotted names of the modules ``path`` imports (``from a import b`` gives ``a.b`` when it is a module of
    ours, and ``a``); relative imports are resolved against the file's package. ``top_level_only``: the statements that
    run when the module is imported (module body, ``if``/``try``/``with`` blocks), not those inside functions."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    nodes = _top_level(tree.body) if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            submodules = {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
            names.update(submodules)
            if len(submodules) < len(node.names) or not top_level_only:
                names.add(base)  # a name defined in ``base`` (``from pkg import sub`` needs only ``pkg.sub`` done)
    return names


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If) and not _is_type_checking(node.test):
            out.extend(_top_level(node.body) + _top_level(node.orelse))
        elif isinstance(node, ast.Try):
            out.extend(_top_level(node.body + node.orelse + node.finalbody))
            for handler in node.handlers:
                out.extend(_top_level(handler.body))
        elif isinstance(node, ast.With):
            out.extend(_top_level(node.body))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def files_of(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    # A file belongs to the most specific package named in ALLOWED (crossmodal/common is not checked as crossmodal).
    deeper = [f for f in ALLOWED if f != folder and f.startswith(folder + "/")]
    return [p for p in files if not any(p.is_relative_to(ROOT / d) for d in deeper)]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_package_imports_only_what_the_architecture_allows_of_ours(folder):
    offenders = {}
    for path in files_of(folder):
        wrong = sorted(n for n in imports(path) if ours(n) and not any(n == a or n.startswith(f"{a}.")
                                                                        for a in ALLOWED[folder]))
        if wrong:
            offenders[str(path.relative_to(ROOT))] = wrong
    assert offenders == {}


def test_the_kernel_needs_only_the_standard_library_and_numpy():
    outside = {}
    for path in files_of("crossmodal/common"):
        names = {n.split(".")[0] for n in imports(path)} - set(sys.stdlib_module_names) - {"numpy", "crossmodal"}
        if names:
            outside[str(path.relative_to(ROOT))] = sorted(names)
    assert outside == {}


def module_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours each imports when it is imported (packages count as their __init__)."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for package in OURS for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        graph[module] = {n for n in imports(path, top_level_only=True) if n in paths and n != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_ours_imports_itself_back_through_others():
    assert cycles(module_graph()) == []


def test_the_cycle_finder_finds_a_cycle_and_nothing_in_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_python_file_starts_with_the_future_import():
    missing = []
    for package in ("crossmodal", "extractors", "pipelines", "tests", "benchmarks"):
        for p in (ROOT / package).rglob("*.py"):
            text = p.read_text()
            if text.strip() and "from __future__ import annotations" not in text:
                missing.append(str(p.relative_to(ROOT)))
    assert missing == []
