"""The house plan of ARCHITECTURE.md, checked: which room may import which, no import circles, and a control
plane that starts without torch, ray or deepspeed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "orchestrator"
# room -> rooms it may import (ARCHITECTURE.md, "Allowed arrows").
ALLOWED = {
    "control": {"control", "core", "storage", "workloads"},
    "runtime": {"runtime", "core", "storage", "workloads"},
    "core": {"core", "storage", "workloads"},
    "storage": {"storage", "core"},
    "workloads": {"workloads", "core", "storage"},
}
HEAVY = ("torch", "ray", "deepspeed")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported orchestrator module, at module level?) for every import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [(name, id(node) in top_level) for name in names if name.startswith("orchestrator.")]
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The module an imported name lives in (`pkg.mod.func` -> `pkg.mod`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_every_module_is_in_a_room():
    homeless = [m for m in MODULES if room(m) is None and m not in ("orchestrator", "orchestrator.__main__")]
    assert homeless == []


def test_imports_follow_the_allowed_arrows():
    wrong = []
    for module, path in MODULES.items():
        source = room(module)
        for name, _ in imports(path):
            target = resolve(name)
            if source and target and room(target) not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_circles():
    graph = {m: {resolve(n) for n, _ in imports(p)} - {None, m} for m, p in MODULES.items()}
    # A package's __init__ re-exporting its own modules is not a circle.
    graph = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_control_plane_and_shared_ground_start_without_heavy_imports():
    torch_free = [m for m in MODULES if room(m) in ("control", "core", "storage")
                  or m in ("orchestrator.workloads", "orchestrator.workloads.facts")
                  or m.endswith((".config", ".facts"))]
    assert "orchestrator.control.cli.main" in torch_free
    code = (f"import importlib, sys\nfor m in {sorted(torch_free)!r}: importlib.import_module(m)\n"
            f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert proc.stdout.strip() == "[]"


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
