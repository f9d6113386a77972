"""The package's layering, on the import graph of src/progdistill read with `ast` (imports inside functions and
`if TYPE_CHECKING:` blocks included, and `importlib.import_module("progdistill...")` calls):

- every module sits in exactly one layer of LAYERS;
- no module imports one of a higher layer;
- training and evaluation never reach each other, directly or through any chain of imports;
- no two modules import each other.

Importing a module first runs the module-level imports of every package above it, so those count as imports of
the module too (a package `__init__` that imported a higher layer at module level would fail here).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "progdistill"
ROOT = "progdistill"

# Low to high. A package name stands for the package and every module in it; the root package stands for itself
# only (it is the public face, allowed to reach everything, and imported by nothing).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("math", ("progdistill.conditioning", "progdistill.diffusion", "progdistill.data")),
    ("nets", ("progdistill.nets",)),
    ("denoiser", ("progdistill.denoiser", "progdistill.guidance", "progdistill.compiling")),
    ("checkpoint and config", ("progdistill.checkpoint", "progdistill.config", "progdistill.presets",
                               "progdistill.runfolder")),
    ("sampling and build", ("progdistill.sampling", "progdistill.build")),
    ("training, evaluation and interop", ("progdistill.training", "progdistill.evaluation", "progdistill.interop")),
    ("command line", ("progdistill.cli",)),
    ("package root", (ROOT,)),
)
# Neither of these may reach the other, by any path.
SEPARATE = ("progdistill.training", "progdistill.evaluation")


def module_name(path: Path, src: Path) -> str:
    """The dotted name of a source file under `src` (a package's `__init__.py` is the package)."""
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that one import statement or import_module call imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
        # `from PKG import name` runs PKG itself unless every name is a module of PKG (then only those count).
        plain_names = len(submodules) < len(node.names)
        return submodules | ({target} & modules if plain_names or target not in modules else set())
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        function = node.func
        called = (function.attr if isinstance(function, ast.Attribute)
                  else function.id if isinstance(function, ast.Name) else None)
        if called == "import_module" and isinstance(node.args[0].value, str):
            return {node.args[0].value} & modules
    return set()


def _imports(tree: ast.Module, package: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(every module imported anywhere in the file, those imported at module level, outside any function)."""
    everywhere: set[str] = set()
    module_level: set[str] = set()
    pending: list[tuple[ast.AST, bool]] = [(tree, True)]
    while pending:
        node, at_module_level = pending.pop()
        found = _resolve(node, package, modules)
        everywhere |= found
        if at_module_level:
            module_level |= found
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        pending.extend((child, at_module_level and not inside_function) for child in ast.iter_child_nodes(node))
    return everywhere, module_level


def _parents(name: str) -> list[str]:
    """The packages above a module, nearest first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def import_graph(src: Path = SRC, implicit: bool = True) -> dict[str, set[str]]:
    """{module: the package modules it imports}; with `implicit`, also what its enclosing packages import at module
    level (Python runs each package's `__init__` before the module)."""
    paths = {module_name(p, src): p for p in src.rglob("*.py")}
    modules = set(paths)
    explicit: dict[str, set[str]] = {}
    module_level: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        explicit[name], module_level[name] = _imports(ast.parse(path.read_text()), package, modules)
        explicit[name].discard(name)
    if not implicit:
        return explicit
    return {name: (targets | {t for p in _parents(name) if p in modules for t in module_level[p]}) - {name}
            for name, targets in explicit.items()}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer a module belongs to (the longest matching name decides); None if none."""
    best: tuple[int, int] | None = None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name != ROOT and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    return None if best is None else best[1]


def shortest_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest import chain from start to any module of the package `goal`, or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if current == goal or current.startswith(goal + "."):
            path = [current]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            return path[::-1]
        for target in sorted(graph[current]):
            if target not in came_from:
                came_from[target] = current
                queue.append(target)
    return None


def _short(name: str) -> str:
    return name.removeprefix(ROOT + ".")


def test_every_module_has_one_layer():
    names = [name for _, group in LAYERS for name in group]
    assert len(names) == len(set(names)), "a name listed in two layers"
    assert sorted(m for m in import_graph() if layer_of(m) is None) == []


def test_no_import_from_a_lower_layer_into_a_higher_one():
    graph = import_graph()
    upward = sorted(f"{_short(a)} ({LAYERS[layer_of(a)][0]}) imports {_short(b)} ({LAYERS[layer_of(b)][0]})"
                    for a, targets in graph.items() for b in targets
                    if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a))
    assert upward == []


@pytest.mark.parametrize("source, other", [SEPARATE, SEPARATE[::-1]])
def test_training_and_evaluation_never_reach_each_other(source, other):
    graph = import_graph()
    paths = [shortest_path(graph, name, other) for name in sorted(graph)
             if name == source or name.startswith(source + ".")]
    assert [" -> ".join(map(_short, path)) for path in paths if path] == []


def test_no_two_modules_import_each_other():
    graph = import_graph(implicit=False)
    pairs = sorted((a, b) for a, targets in graph.items() for b in targets
                   if a < b and a in graph.get(b, set())
                   and not (b.startswith(a + ".") or a.startswith(b + ".")))  # a package and its own modules
    assert pairs == []


# ------------------------------------------------------------------------------------- the graph reader itself


def test_graph_reader_sees_lazy_relative_and_package_imports(tmp_path):
    package = tmp_path / "pkg"
    for folder in ("low", "high"):
        (package / folder).mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low/__init__.py": "from .basic import VALUE\n",
        "low/basic.py": "VALUE = 1\n",
        "low/lazy.py": "def f():\n    from ..high.top import g\n    return g\n",
        "low/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import top\n",
        "low/dynamic.py": "import importlib\nimportlib.import_module('pkg.high.top')\n",
        "low/sibling.py": "from . import basic\n",
        "high/__init__.py": "def later():\n    from ..low import lazy\n",
        "high/top.py": "import pkg.low.basic\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    explicit = import_graph(package, implicit=False)
    assert explicit["pkg.low.lazy"] == {"pkg.high.top"}
    assert explicit["pkg.low.typed"] == {"pkg.high.top"}
    assert explicit["pkg.low.dynamic"] == {"pkg.high.top"}
    assert explicit["pkg.low.sibling"] == {"pkg.low.basic"}  # `from . import module`: that module, not the package
    assert explicit["pkg.high"] == {"pkg.low.lazy"}
    graph = import_graph(package)
    # pkg.low's module-level import runs whenever a module of pkg.low is imported; pkg.high's lazy one does not.
    assert graph["pkg.low.sibling"] == {"pkg.low.basic"}
    assert graph["pkg.high.top"] == {"pkg.low.basic"}
    assert graph["pkg.low.lazy"] == {"pkg.high.top", "pkg.low.basic"}
    assert shortest_path(graph, "pkg.high.top", "pkg.low") == ["pkg.high.top", "pkg.low.basic"]
    assert shortest_path(graph, "pkg.low.basic", "pkg.high") is None
