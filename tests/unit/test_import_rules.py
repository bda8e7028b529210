"""The house rules (README "Project layout"), checked on the source, not on trust.

- who may import whom: the contract (diffuzz/contract/) nothing of the project; the model (sim/)
  and the kernel side (kernel_runner/) only the contract; the engine (diffuzz/engine/) the
  contract and both sides; the front door (diffuzz/cli/) anything;
- no import circle anywhere, counting every import statement: type-only ones (under
  TYPE_CHECKING) and the lazy ones inside functions too;
- sim/ uses the standard library only; kernel_runner/ the standard library and pyelftools (bcc
  only in its bcc backend);
- no source file much over 400 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("diffuzz", "sim", "kernel_runner")
MAX_LINES = 420  # "about 400"

# room -> the rooms it may import from (itself always)
ALLOWED = {
    "diffuzz.contract": {"diffuzz.contract"},
    "sim": {"diffuzz.contract"},
    "kernel_runner": {"diffuzz.contract"},
    "diffuzz.engine": {"diffuzz.contract", "sim", "kernel_runner"},
    "diffuzz.cli": {"diffuzz.contract", "diffuzz.engine", "sim", "kernel_runner"},
    "diffuzz": set(),  # diffuzz/__init__.py: imports nothing (no eager engine import)
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[str]:
    """Every module of the project this file imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [n for n in names if n in MODULES]
    return found


def _third_party(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}


def _room(module: str) -> str:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    raise AssertionError(f"{module} is in no room: put it in diffuzz/contract, engine or cli")


def test_every_module_is_in_a_room_and_imports_only_what_its_room_may() -> None:
    problems = []
    for name, path in MODULES.items():
        room = _room(name)
        for dep in _imports(path):
            if dep == "diffuzz" and room != "diffuzz":
                continue  # the package itself (its __init__ imports nothing)
            other = _room(dep)
            if other != room and other not in ALLOWED[room]:
                problems.append(f"{name} ({room}) imports {dep} ({other})")
    assert not problems, "\n".join(problems)


def test_no_import_circle() -> None:
    graph = {name: {d for d in _imports(path) if d != name} for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_model_and_the_kernel_side_stay_light() -> None:
    for name, path in MODULES.items():
        extra = _third_party(path)
        if name.startswith("sim"):
            assert not extra, f"{name} imports {extra}: sim/ is standard library only"
        elif name.startswith("kernel_runner"):
            allowed = {"elftools"} | ({"bcc"} if name == "kernel_runner.bcc_backend" else set())
            assert extra <= allowed, f"{name} imports {extra - allowed}"


def test_no_source_file_is_much_over_400_lines() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_rule_checker_sees_a_broken_rule(tmp_path: Path) -> None:
    # The checks above read real files; make sure the reader finds imports at every depth.
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sim.world import World\n"
                   "def f():\n    import kernel_runner.local\n")
    assert _imports(src) == ["sim.world", "kernel_runner.local"]
