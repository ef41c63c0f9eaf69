"""The house's layout: imports only go down, and every module has one job (at most 400 lines).

The graph is read from the source (every import, function-local ones included), so a cycle cannot hide
behind a lazy import."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "hald").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else the package itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import hald.x.y` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def layer(module: str) -> str:
    """First-level package (hald.data.replay -> data); a base module is its own layer (hald.errors)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(g).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_no_import_cycle_between_modules():
    g = graph()
    assert cycle(g) is None, f"import cycle between modules: {' -> '.join(cycle(g))}"


def test_no_import_cycle_between_packages():
    g: dict[str, set[str]] = {}
    for m, deps in graph().items():
        g.setdefault(layer(m), set()).update(layer(d) for d in deps if layer(d) != layer(m))
    found = cycle(g)
    assert found is None, f"import cycle between first-level packages: {' -> '.join(found)}"


def test_base_modules_import_nothing_above_them():
    base = {"hald.errors", "hald.seeding", "hald.artifacts", "hald.units", "hald.dist", "hald.console"}
    for m in base:  # the root package (`hald.__version__`) holds no code
        assert graph()[m] <= base | {"hald"}, f"{m} imports {sorted(graph()[m] - base)}"


@pytest.mark.parametrize("below, above", [("data", {"labels", "train", "distill", "pipeline", "evaluate"}),
                                          ("models", {"data", "labels", "train", "distill", "pipeline"}),
                                          ("evaluate", {"pipeline"})])
def test_lower_layers_never_import_higher_ones(below, above):
    bad = {(m, d) for m, deps in graph().items() if layer(m) == below for d in deps if layer(d) in above}
    assert not bad, f"{below}/ imports upward: {sorted(bad)}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_the_graph_reader_sees_function_local_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from hald.errors import InputError\n    import hald.dist\n")
    assert imports_of("hald.x", p, {"hald.errors", "hald.dist", "hald.x"}) == {"hald.errors", "hald.dist"}
    assert cycle({"a": {"b"}, "b": {"a"}}) is not None and cycle({"a": {"b"}, "b": set()}) is None
