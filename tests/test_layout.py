"""Layout: every module imports on its own, and the parts of banscan import each other without a cycle, downward.

Parts are the top-level modules and subpackages (``banscan.detectors``, ``banscan.cli``, ...); imports inside
functions count, since a lazy import is still a dependency. ``docs/architecture.md`` describes the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import banscan

ROOT = Path(banscan.__file__).parent
LAYERS = [  # lower layers first; a part may import its own layer or a lower one
    {"_utils", "params", "data", "checkpoints", "models", "noise", "train", "synthetic", "jsonl"},
    {"detectors", "attacks", "mitigation"},
    {"zoo", "bench", "bench_report", "calibrate", "plots", "demo", "distributed"},
    {"cli", "__main__"},
]
# Upward imports still to remove: none (issue 16 moved mitigate_zoo to bench, the experiments layer).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The banscan modules that module ``name`` imports anywhere in its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            cands = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in cands if c in mods and c != name}
    return out


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else None


def _part_graph() -> dict[str, set[str]]:
    mods, graph = _modules(), {}
    for name, path in mods.items():
        a = _part(name)
        if a is None:
            continue
        graph.setdefault(a, set()).update(b for b in map(_part, _imports(name, path, mods)) if b not in (None, a))
    return graph


def test_every_module_imports_in_a_fresh_interpreter():
    # One interpreter per module would take a minute; one that forgets banscan between modules tests the same.
    # ``__main__`` is left out: importing it runs the command line.
    names = sorted(m for m in _modules() if m != "banscan.__main__")
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'banscan' or m.startswith('banscan.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_import_graph_has_no_cycle():
    graph = _part_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph.get(v, ())):
            assert state.get(w) != 1, f"import cycle: {' -> '.join(path[path.index(w):] + [w])}"
            if w not in state:
                visit(w, path + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])


def test_dependencies_point_down():
    level = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    graph = _part_graph()
    assert set(graph) <= set(level), f"parts without a layer: {sorted(set(graph) - set(level))}"
    upward = {(a, b) for a, bs in graph.items() for b in bs if level[b] > level[a]}
    assert upward <= KNOWN_UPWARD, f"imports from a lower layer into a higher one: {sorted(upward - KNOWN_UPWARD)}"
