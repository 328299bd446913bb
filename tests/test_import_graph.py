"""segzoo and nnunet_bridge import one way: no cycles, and no import hidden in a function without a reason.

A hidden (deferred) import is how a cycle gets papered over or a heavy module slips into a
light one, so each is listed in DEFERRED with the one reason it may have:

- ``cli-speed``: the module is imported when ``segzoo-nnunet`` or ``segzoo`` starts, which load the
  standard library and the zoo's registry only (no torch, timm, nnU-Net, numpy or omegaconf:
  ``--help`` answers at once);
- ``on-use``: a heavy dependency one feature needs (peft, for LoRA), so ``import segzoo`` never pays for it;
- ``optional``: a dependency the package does not require (onnxruntime, Pillow in the deploy file);
- ``cycle``: importing it at the top would close an import cycle;
- ``env``: nnU-Net reads its environment (``nnUNet_def_n_proc``, its folders) once, when first
  imported, and the caller sets it first;
- ``pending``: not yet justified or moved (segzoo's own, and files of the bridge another change owns).

A new deferred import fails here until it is moved to the top or listed; a justified entry
whose import is gone fails too, so the list stays as short as the code allows.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("segzoo", "nnunet_bridge")
REASONS = {"cli-speed", "on-use", "optional", "cycle", "env", "pending"}
PENDING_BRIDGE_MODULES = ()  # bridge modules whose deferred imports are not yet justified
# (module, imported module): reason
DEFERRED = {
    # the CLI's commands import what they run
    ("nnunet_bridge.cli", "segzoo"): "cli-speed",
    ("nnunet_bridge.cli", "torch"): "cli-speed",
    ("nnunet_bridge.cli", "nnunetv2.inference.predict_from_raw_data"): "cli-speed",
    ("nnunet_bridge.cli", "nnunetv2.utilities.file_path_utilities"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.checkpoint_files"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.config"): "cli-speed",  # omegaconf
    ("nnunet_bridge.cli", "nnunet_bridge.input_check"): "cli-speed",  # numpy
    ("nnunet_bridge.cli", "nnunet_bridge.demo.pipeline"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.distributed"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.export"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.plans"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.trainer"): "cli-speed",
    ("nnunet_bridge.cli", "nnunet_bridge.training.divergence"): "cli-speed",
    # light modules the CLI imports at start-up
    ("nnunet_bridge.preflight", "nnunetv2.utilities.dataset_name_id_conversion"): "cli-speed",
    ("nnunet_bridge.preflight", "nnunetv2.utilities.file_path_utilities"): "cli-speed",
    ("nnunet_bridge.preflight", "segzoo"): "cli-speed",
    ("nnunet_bridge.report.compare", "nnunetv2.utilities.dataset_name_id_conversion"): "cli-speed",
    ("nnunet_bridge.report.compare", "nnunet_bridge.checkpoint_files"): "cli-speed",
    ("nnunet_bridge.report.compare_report", "nnunet_bridge.report.compare_plot"): "cli-speed",
    ("nnunet_bridge.trainer_lookup", "nnunetv2.utilities.find_objects"): "cli-speed",
    ("nnunet_bridge.trainer_lookup", "nnunet_bridge.trainer"): "cycle",
    # the demo
    ("nnunet_bridge.demo.pipeline", "nnunetv2.experiment_planning.plan_and_preprocess_api"): "env",
    ("nnunet_bridge.demo.pipeline", "nnunetv2.run.run_training"): "env",
    ("nnunet_bridge.demo.pipeline", "nnunetv2.inference.predict_from_raw_data"): "env",
    ("nnunet_bridge.demo.pipeline", "nnunetv2.utilities.file_path_utilities"): "env",
    ("nnunet_bridge.demo.pipeline", "nnunet_bridge.demo.baseline"): "env",
    # the deploy file needs numpy, scipy and onnxruntime only
    ("nnunet_bridge.deploy.onnx_predict", "onnxruntime"): "optional",
    ("nnunet_bridge.deploy.onnx_predict", "PIL"): "optional",
    # plans.py belongs to another change: listed until it moves or justifies them
    ("nnunet_bridge.plans", "nnunetv2.paths"): "env",
    ("nnunet_bridge.slices", "nnunetv2.paths"): "env",
    ("nnunet_bridge.slices", "nnunetv2.utilities.dataset_name_id_conversion"): "env",
    ("nnunet_bridge.slices", "nnunetv2.utilities.utils"): "env",
    ("nnunet_bridge.cli", "nnunet_bridge.slices"): "cli-speed",
    ("nnunet_bridge.plans", "nnunetv2.configuration"): "env",
    ("nnunet_bridge.plans", "nnunetv2.experiment_planning.plan_and_preprocess_api"): "env",
    ("nnunet_bridge.deploy.onnx_predict", "nibabel"): "optional",
    ("nnunet_bridge.deploy.onnx_predict", "tifffile"): "optional",
    ("segzoo.export", "onnx"): "optional",
    ("segzoo.export", "onnx_ir"): "optional",
    ("nnunet_bridge.plans", "nnunetv2.utilities.dataset_name_id_conversion"): "env",
    # the zoo
    ("segzoo.export", "onnxruntime"): "optional",
    ("segzoo.lora", "peft"): "on-use",
    # the registry is plain data; a model's entry point imports the builder (torch) when it builds one
    ("segzoo._catalog", "segzoo.models._builder"): "on-use",
    # transformers releases before the module return hidden states without capturing hooks
    ("segzoo.backbones.mit", "transformers.utils.output_capturing"): "optional",
    # `segzoo --help`, `--version` and `list` read the registry only
    ("segzoo.cli", "segzoo._factory"): "cli-speed",
    ("segzoo.cli", "segzoo.export"): "cli-speed",
    ("segzoo.cli", "segzoo.summary"): "cli-speed",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _existing_module(target: str) -> str:
    """``segzoo.lora.apply_lora`` -> ``segzoo.lora``: the longest prefix that is a module of ours."""
    parts = target.split(".")
    while parts:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return target


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f)}
    # `if TYPE_CHECKING:` imports never run: no edge
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import submodule` imports the submodule; `from pkg import name` the package
            targets = [_existing_module(f"{module}.{alias.name}") if _ours(module) else module for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [_existing_module(alias.name) if _ours(alias.name) else alias.name for alias in node.names]
        else:
            continue
        found += [(target, id(node) in nested) for target in dict.fromkeys(targets)]
    return found


def _scan() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Import-time edges between our modules, and every (module, target) imported in a function."""
    edges: dict[str, set[str]] = {}
    deferred = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            for target, in_function in _imports(path):
                if in_function:
                    deferred.add((module, target))
                elif _ours(target) and target != module:
                    edges.setdefault(module, set()).add(target)
    # importing a.b.c runs a's and a.b's __init__ first, which may import further modules: a real edge
    for module, targets in edges.items():
        targets |= {".".join(t.split(".")[:i]) for t in list(targets) for i in range(1, t.count(".") + 1)}
    # a module reading its own package (`from . import x` in a.b) is not a cycle through a's __init__
    return {m: {t for t in ts if t != m and not m.startswith(t + ".")} for m, ts in edges.items()}, deferred


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += edges.get(node, ())
    return seen


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


def test_no_import_cycles_in_segzoo_or_the_bridge():
    edges, _ = _scan()
    assert edges.get("nnunet_bridge.cli") and edges.get("segzoo"), "the scan found no imports: wrong root?"
    assert not any(t.startswith("nnunet_bridge") for m, ts in edges.items() if m.startswith("segzoo") for t in ts), \
        "the zoo must not import the bridge"
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_every_import_in_a_function_is_listed_with_its_reason():
    _, deferred = _scan()
    unlisted = sorted(deferred - DEFERRED.keys())
    assert not unlisted, ("imports inside functions: move them to the top of the module, or list them in "
                          f"DEFERRED with one of {sorted(REASONS)}: {unlisted}")
    # a justified entry whose import is gone is removed; a pending one may go while its module is reworked
    stale = sorted(key for key in DEFERRED.keys() - deferred if DEFERRED[key] != "pending")
    assert not stale, f"DEFERRED lists imports that are no longer in a function; remove them: {stale}"
    assert set(DEFERRED.values()) <= REASONS


def test_the_listed_reasons_hold():
    edges, _ = _scan()
    at_cli_start = _reachable(edges, "nnunet_bridge.cli") | _reachable(edges, "segzoo.cli")
    for (module, target), reason in DEFERRED.items():
        if reason == "cli-speed":  # only a module loaded when segzoo-nnunet starts has to stay light
            assert module in at_cli_start, f"{module} is not imported when a command starts: not cli-speed"
        elif reason == "cycle":
            assert module in _reachable(edges, target), f"{target} does not import {module}: no cycle"
        elif reason == "pending":  # segzoo's, and a bridge file owned elsewhere; never a new bridge module
            assert module.startswith("segzoo") or module in PENDING_BRIDGE_MODULES, (module, target)


def test_light_imports_stay_light():
    """What ``cli-speed``, ``env`` and the deploy file promise, checked in a fresh interpreter."""
    heavy = "{'torch', 'nnunetv2', 'segzoo', 'numpy', 'omegaconf', 'onnxruntime', 'PIL'}"
    code = (
        "import sys\n"
        "import nnunet_bridge.cli\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))\n"
        "import nnunet_bridge.deploy.onnx_predict\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))\n"
        "import nnunet_bridge.demo.pipeline\n"
        "print('nnunetv2.configuration' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["[]", "['numpy']", "False"], out
