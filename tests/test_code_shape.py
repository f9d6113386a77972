"""The shape the code keeps (issue 22): no module of src/ over 400 lines, no function over 60 lines except the
tables of command-line options, and the round loop and the training loop short enough to read at a glance."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "progdistill"
MAX_MODULE, MAX_FUNCTION = 400, 60
OPTION_TABLES = {"register"}  # a command's argument-parser table (cli/*.py)


def _functions():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _length(node) -> int:
    """Lines of a function's body (its signature and docstring excluded)."""
    body = node.body[1:] if ast.get_docstring(node) else node.body
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_module_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert long == {}


def test_no_function_over_60_lines_except_option_tables():
    long = {f"{p.relative_to(SRC)}:{f.name}": _length(f) for p, f in _functions()
            if _length(f) > MAX_FUNCTION and not (p.parent.name == "cli" and f.name in OPTION_TABLES)}
    assert long == {}


def test_the_round_loop_and_the_training_loop_are_short():
    lengths = {f"{p.name}:{f.name}": _length(f) for p, f in _functions()
               if (p.name, f.name) in {("rounds.py", "distill"), ("loop.py", "fit")}}
    assert set(lengths) == {"rounds.py:distill", "loop.py:fit"}
    assert all(n < 40 for n in lengths.values()), lengths


def test_the_readme_layout_names_every_module():
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    missing = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.name != "__init__.py" and p.name != "__main__.py" and p.stem not in layout]
    assert missing == []


def test_no_module_outside_the_registry_asks_which_method_runs():
    """A method is one entry of training/methods.py's METHODS; nothing in training/, cli/ or evaluation/ compares
    distill.method with a method's name (config/schema.py's torch-free validation is the known exception)."""
    import re

    from progdistill.config.choices import DISTILL_METHODS
    from progdistill.training.methods import METHODS

    assert tuple(METHODS) == DISTILL_METHODS
    names = "|".join(DISTILL_METHODS)
    asks = re.compile(rf"""method\)?\s*[!=]=\s*["']({names})["']|\.get\(["']method["']\)\s*[!=]=""")
    found = []
    for folder in ("training", "cli", "evaluation"):
        for path in (SRC / folder).rglob("*.py"):
            if path.name == "methods.py" and folder == "training":
                continue
            found += [f"{path.relative_to(SRC)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if asks.search(line)]
    assert found == []


def test_no_module_outside_the_family_registry_asks_which_network_family_it_has():
    """A network family is one entry of nets/families.py's FAMILIES (what it takes, builds, exports); nothing else
    in src/ compares a model's kind or model.arch with a family's name."""
    import re

    from progdistill.config.choices import NET_KINDS
    from progdistill.nets.families import FAMILIES

    assert tuple(FAMILIES) == NET_KINDS
    names = "|".join(FAMILIES)
    asks = re.compile(rf"""(kind|arch|["']kind["']\))\)?\s*(==|!=|in|not in)\s*[(\["']+({names})["']""")
    found = [f"{path.relative_to(SRC)}:{i}" for path in SRC.rglob("*.py") if path.name != "families.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if asks.search(line)]
    assert found == []
