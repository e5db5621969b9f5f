"""The package tree is the architecture: imports go down the layers only, with no cycles."""

import ast
from pathlib import Path

from support import REPO

# Each layer may import the layers after it in this list (and itself), never those before it.
LAYERS = ["cli", "api", "benchmarking", "exporting", "training", "edge", "data", "core", "base"]
BASE = {"aekit", "aekit.errors", "aekit.lazy", "aekit.quiet"}


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*REPO.glob("aekit/**/*.py"), *REPO.glob("cli/*.py")]:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        parts = ["aekit", *parts] if parts[0] == "cli" else parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports(path: Path, known: set[str]) -> set[str]:
    """Every aekit module a file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aekit"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("aekit")}
    return found & known


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    return module.split(".")[1]


def test_imports_go_down_the_layers_and_never_round_in_a_cycle():
    files = module_files()
    graph = {module: imports(path, set(files)) - {module} for module, path in files.items()}
    assert len(graph) >= 45 and all(layer(m) in LAYERS for m in graph), sorted(graph)
    upward = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if m != "aekit" and LAYERS.index(layer(d)) < LAYERS.index(layer(m))  # aekit/__init__ names the API lazily
    ]
    assert upward == []
    seen, cycles = {}, []

    def visit(module, path):
        if seen.get(module) == "open":
            cycles.append(path[path.index(module) :])
            return
        if seen.get(module) == "done":
            return
        seen[module] = "open"
        for dep in sorted(graph[module]):
            visit(dep, [*path, dep])
        seen[module] = "done"

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []


def test_no_module_is_long_enough_to_hide_several_ideas():
    long = {m: len(p.read_text().splitlines()) for m, p in module_files().items()}
    assert {m: n for m, n in long.items() if n > 650} == {}
