"""Proof that regional compilation runs compiled graphs: per part, how often they ran.

``module.compile()`` puts a wrapper in front of the module that is called on every
forward, whether dynamo then runs a compiled graph or falls back to eager (recompile
limit hit, frame skipped, ``torch._dynamo.disable``, ``torch.compiler.set_stance("force_eager")``).
Counting calls of that wrapper proves nothing. Here a counting backend wraps the real
one and counts each execution of the function it returned, i.e. of the compiled graph
itself; each part (``blocks``, ``neck``, ``head``) gets its own counting backend, so every
graph is attributed to one part. ``benchmarks/check_regional_compile.py`` and the compile
tests share this module so that the check the GPU suite runs is the one the tests prove.

    runs = compile_counting(model, backend="aot_eager")
    model(x)
    assert not runs.ran_eager()        # every compiled module ran a compiled graph
    print(runs.as_dict())              # {"blocks": {"modules": 4, "graphs": 1, "runs": 4}, ...}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch._dynamo.utils import counters

from .compilation import _check_compilable, regional_parts

__all__ = ["CompiledRuns", "PartRuns", "compile_counting", "dynamo_counts"]

CompilerFn = Callable[[torch.fx.GraphModule, list[Any]], Callable[..., Any]]  # backend(gm, example_inputs)


@dataclass
class PartRuns:
    """One part of a regionally compiled model."""

    modules: int  # modules compiled in place (each is called once per model forward)
    graphs: int = 0  # graphs the backend compiled for them (first compiles, recompiles, graph-break pieces)
    runs: int = 0  # executions of those compiled graphs


class CompiledRuns:
    """Counting backends, one per part, around one real backend; and what they counted.

    Args:
        backend: the real backend, a name (``"inductor"``, ``"aot_eager"``, ``"eager"``) or a
            callable ``backend(gm, example_inputs)``.
        modules: how many modules each part compiles (``{"blocks": 24, "neck": 1, "head": 1}``).

    :func:`compile_counting` builds one for regional compilation; for a whole graph,
    ``runs = CompiledRuns("inductor", {"model": 1})`` and
    ``compile_model(model, "whole", backend=runs.backend_for("model"))``.
    """

    def __init__(self, backend: str | CompilerFn, modules: dict[str, int]) -> None:
        self.parts = {part: PartRuns(count) for part, count in modules.items()}
        real = torch._dynamo.lookup_backend(backend)
        # one backend object per part, reused for all its modules: dynamo only shares a
        # graph between modules compiled with the same backend (one graph for all blocks)
        self._backends = {part: self._counting(part, real) for part in self.parts}

    def backend_for(self, part: str) -> CompilerFn:
        """The counting backend to compile ``part``'s modules with."""
        return self._backends[part]

    def reset(self) -> None:
        """Zero the graph and run counts (compiled graphs stay cached)."""
        for counts in self.parts.values():
            counts.graphs = counts.runs = 0

    def ran_eager(self, forwards: int = 1) -> dict[str, str]:
        """Parts whose compiled graphs ran fewer times than their modules were called in
        ``forwards`` model forwards since the last :meth:`reset`, each with what it missed.
        A module whose frame breaks runs several graphs per call, which can hide another
        module's eager call: read ``graphs`` too."""
        return {
            part: f"{counts.runs} compiled-graph runs for {counts.modules * forwards} module calls"
            for part, counts in self.parts.items() if counts.runs < counts.modules * forwards
        }

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {part: asdict(counts) for part, counts in self.parts.items()}

    def _counting(self, part: str, real: CompilerFn) -> CompilerFn:
        counts = self.parts[part]

        def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
            counts.graphs += 1
            compiled = real(gm, example_inputs)

            def run(*args: Any) -> Any:
                counts.runs += 1
                return compiled(*args)

            return run

        backend.__name__ = f"counting_{part}"
        return backend


def compile_counting(model: nn.Module, backend: str | CompilerFn = "inductor", **compile_kwargs: Any) -> CompiledRuns:
    """Compile ``model`` regionally in place, as :func:`segzoo.compile_model` does, through
    counting backends around ``backend``; return the counts, which grow as the model runs.

    ``compile_kwargs`` go to ``torch.compile`` (``dynamic``, ``fullgraph``), except ``mode``
    and ``options``: inductor settings, which torch.compile hands to a named inductor only.
    :func:`segzoo.uncompile_model` undoes it like any compilation.
    """
    if compile_kwargs.keys() & {"mode", "options"}:
        raise ValueError("compile_counting takes no mode or options: they would not reach inductor "
                         "through a counting backend")
    _check_compilable(model)
    parts = regional_parts(model)
    runs = CompiledRuns(backend, {part: len(modules) for part, modules in parts.items()})
    for part, modules in parts.items():
        for module in modules:
            module.compile(backend=runs.backend_for(part), **compile_kwargs)
    return runs


def dynamo_counts() -> dict[str, int]:
    """Dynamo's own process-wide counters, summed: frames compiled (and succeeded), graphs,
    graph breaks. Compare two snapshots to see what a step added."""
    return {
        "frames": counters["frames"]["total"], "frames_ok": counters["frames"]["ok"],
        "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
    }
