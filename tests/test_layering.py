"""The package's layering: sampling sits below training and evaluation, so neither imports the other, and no two
modules import each other (lazy imports inside functions included)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "progdistill"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def test_training_and_evaluation_do_not_import_each_other():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("progdistill.training"):
            assert not [t for t in targets if t.startswith("progdistill.evaluation")], (name, targets)
        if name.startswith("progdistill.evaluation"):
            assert not [t for t in targets if t.startswith("progdistill.training")], (name, targets)


def test_no_two_modules_import_each_other():
    graph = import_graph()
    pairs = sorted((a, b) for a, targets in graph.items() for b in targets
                   if a < b and a in graph.get(b, set())
                   and not (b.startswith(a + ".") or a.startswith(b + ".")))  # a package and its own modules
    assert pairs == []
