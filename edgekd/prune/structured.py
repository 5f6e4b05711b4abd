"""Dependency-aware channel pruning with Torch-Pruning, recorded so it can be replayed exactly.

A pruned model cannot be rebuilt from its state dict alone; instead of pickling modules we keep
the list of (layer, removed channel indices) and replay it on a fresh copy of the teacher.
"""

from __future__ import annotations

import dataclasses

import torch
import torch_pruning as tp
from torch import nn

from ..data.inputs import Example, call
from ..data.outputs import flatten
from ..errors import StageError
from ..models.clone import clone_model
from ..plan import COMPRESSIBLE, Plan
from .heads import find_attention, prune_heads

Decision = dict  # {"layer": str, "idxs": list[int]}


def prune_channels(model: nn.Module, plan: Plan, example: Example) -> list[Decision]:
    """Remove the lowest-magnitude channel groups to each layer's keep ratio, and the weakest
    attention heads whole (``heads``) as far as the narrowest of its q/k/v layers asks; return
    the decisions."""
    ratios = {
        m: 1.0 - lp.keep_ratio
        for name, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE) and (lp := plan.layer(name)) and lp.keep_ratio < 1.0
    }
    if not ratios:
        return []
    names = {m: n for n, m in model.named_modules()}
    # heads go as far as the narrowest of q/k/v asks: removing one removes it from all three,
    # so a layer's pruning measured alone (sensitivity) is the damage of the heads it removes
    attention = {a: 1.0 - max([ratios.pop(p, 0.0) for p in a.projections])
                 for a in find_attention(model)}  # fmt: skip
    ignored = [m for m in names if isinstance(m, COMPRESSIBLE) and m not in ratios]
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        round_to=4,  # keeps channel counts 2:4- and kernel-friendly
    )
    expected = _output_shapes(model, example)
    decisions = []
    for group in pruner.step(interactive=True) if ratios else ():
        root = group[0].dep.target.module
        decisions.append({"layer": names[root], "idxs": [int(i) for i in group[0].idxs]})
        group.prune()
    for a, keep in attention.items():
        if (idxs := prune_heads(pruner.DG, a, keep)) is not None:
            decisions.append({"layer": names[a.projections[0]], "idxs": idxs})
    _check_still_works(model, example, expected)
    return decisions


class PruningBroke(StageError):
    """Torch-Pruning cannot follow every reshape: the pruned model no longer runs or changed its
    output shape."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"channel pruning broke the forward pass ({why}); a reshape or flatten it could not "
            "follow sits near the pruned layers: add them to prune.skip"
        )
        self.why = why


def _output_shapes(model: nn.Module, example: Example) -> list[list[int]]:
    with torch.no_grad():
        return [list(t.shape) for t in flatten(call(model, example))]


def _check_still_works(model: nn.Module, example: Example, expected: list[list[int]]) -> None:
    if why := _breakage(model, example, expected):
        raise PruningBroke(why)


def _breakage(model: nn.Module, example: Example, expected: list[list[int]]) -> str | None:
    try:
        shapes = _output_shapes(model, example)
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    if shapes != expected:
        return f"output shape {_join(expected)} -> {_join(shapes)}"
    return None


def _join(shapes: list[list[int]]) -> str:
    return ", ".join(str(s) for s in shapes)


def pruning_breaks(model: nn.Module, plan: Plan, example: Example) -> dict[str, str]:
    """The layers whose channel removal, at their planned keep ratio, breaks the forward pass
    (a reshape into attention heads, a BatchNorm over another axis), each with what broke.
    All are tried together on a copy; only if that fails, one at a time in order, each kept
    with those before it that worked (a layer can break the forward only beside another: a
    residual stream's width read by an attention reshape), so a plan that works costs one trial."""

    def fails(names: set[str]) -> str | None:
        trial = keeping(plan, {lp.name: lp.keep_ratio for lp in plan.layers if lp.name in names})
        try:
            prune_channels(clone_model(model).eval(), trial, example)
        except Exception as exc:
            return why_broke(exc)
        return None

    pruned = [lp.name for lp in plan.layers if lp.keep_ratio < 1.0]
    if not pruned or fails(set(pruned)) is None:
        return {}
    works: set[str] = set()
    broken = {}
    for name in pruned:
        if why := fails(works | {name}):
            broken[name] = why
        else:
            works.add(name)
    return broken


def keeping(plan: Plan, keeps: dict[str, float]) -> Plan:
    """``plan`` with only the layers named in ``keeps`` pruned, to those ratios."""
    return Plan(
        layers=[dataclasses.replace(lp, keep_ratio=keeps.get(lp.name, 1.0)) for lp in plan.layers],
        targets=plan.targets,
        adjustments=[],
        embeddings=plan.embeddings,
    )


def why_broke(exc: Exception) -> str:
    """What broke when pruning raised ``exc``: the forward pass it left (``PruningBroke``), or
    Torch-Pruning's own failure on a graph it misreads."""
    if isinstance(exc, PruningBroke):
        return exc.why
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def kept_channels(teacher: nn.Module, student: nn.Module) -> dict[str, list[int]]:
    """Output channels per layer, teacher vs student: what pruning really did, whatever was asked."""
    before = {
        n: m.weight.shape[0] for n, m in teacher.named_modules() if isinstance(m, COMPRESSIBLE)
    }
    return {n: [before[n], m.weight.shape[0]] for n, m in student.named_modules() if n in before}


def replay_pruning(model: nn.Module, decisions: list[Decision], example: Example) -> nn.Module:
    """Apply recorded decisions to a fresh teacher copy, giving the same architecture."""
    if not decisions:
        return model
    attention = find_attention(model)  # head widths as the teacher has them
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for d in decisions:
        layer = model.get_submodule(d["layer"])
        prune_fn = graph.get_pruner_of_module(layer).prune_out_channels
        graph.get_pruning_group(layer, prune_fn, idxs=d["idxs"]).prune()
    for a in attention:
        a.sync()
    return model


def kept_heads(teacher: nn.Module, student: nn.Module) -> dict[str, list[int]]:
    """Heads per attention layer, teacher vs student."""
    names = {m: n for n, m in teacher.named_modules()}
    after = dict(student.named_modules())
    return {names[a.module]: [a.heads, getattr(after[names[a.module]], a.count)]
            for a in find_attention(teacher)}  # fmt: skip
