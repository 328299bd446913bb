"""The zoo's modules import one way: no cycles, and no import of a segzoo module hidden in a function.

Hidden imports are how cycles get papered over; the few that defer a heavy optional
dependency until it is needed are listed here with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segzoo"
# (module, imported module): deferred on purpose
DEFERRED = {
    ("segzoo.models.segmenter", "segzoo.lora"),  # peft loads only when a model gets LoRA
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported segzoo module, inside a function?) for every import of a segzoo module in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f)}
    # `if TYPE_CHECKING:` imports never run: no edge
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("segzoo"):
                found.append((_existing_module(target), id(node) in nested))
    return found


def _existing_module(target: str) -> str:
    """``segzoo.lora.apply_lora`` -> ``segzoo.lora``: the longest prefix that is a module."""
    parts = target.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return target


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    edges: dict[str, set[str]] = {}
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for target, in_function in _imports(path):
            if target == module or target == "segzoo":
                continue  # `from . import __version__`-style reads of the package itself
            edges.setdefault(module, set()).add(target)
            if in_function and (module, target) not in DEFERRED:
                hidden.append((module, target))
    return edges, hidden


def _parents(module: str) -> list[str]:
    """``segzoo.a.b.c`` -> ``["segzoo.a", "segzoo.a.b"]``: the packages importing it runs first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_segzoo_modules():
    edges, _ = _graph()
    # importing segzoo.a.b runs segzoo.a's __init__ first, which may import further modules: a real edge
    for module, targets in edges.items():
        targets |= {parent for t in list(targets) for parent in _parents(t) if not module.startswith(parent + ".")
                    and parent != module}
    # a module reading its own package (`from . import x` in segzoo.a.b) is not a cycle through segzoo.a's __init__
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_no_segzoo_import_is_hidden_in_a_function():
    _, hidden = _graph()
    assert hidden == [], f"imports inside functions (move them to the top or list why in DEFERRED): {hidden}"
