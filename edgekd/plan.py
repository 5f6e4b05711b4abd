"""The CompressionPlan: recipe + targets + teacher resolved into one decision per layer.

Written once per run (``plan.json``) and read by every later stage and by the report, so that
what was trained, what was exported and what the report claims can never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .recipe import Recipe
from .targets import Target

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class LayerPlan:
    name: str
    op: str  # ONNX op the layer exports to: Conv, Gemm or MatMul
    weight_shape: list[int]  # the teacher's
    keep_ratio: float
    sparsity: str | None  # "2:4" or None
    weight_bits: int | None  # None: float weights
    block_size: int | None  # None: per output channel
    symmetric: bool
    activation_bits: int | None  # None: float activations
    runs_as: dict[str, str] = field(default_factory=dict)  # "target/runtime" -> how it executes
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    layers: list[LayerPlan]
    targets: list[str]
    adjustments: list[str]  # requests a target could not run, and what they became

    def layer(self, name: str) -> LayerPlan | None:
        return next((lp for lp in self.layers if lp.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            layers=[LayerPlan(**lp) for lp in data["layers"]],
            targets=data["targets"],
            adjustments=data["adjustments"],
        )


def output_layers(model: nn.Module, example: torch.Tensor) -> set[str]:
    """Layers whose output *is* the model's output: their channels cannot be pruned away."""
    produced: dict[int, str] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: produced.__setitem__(id(out), name))
        for name, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return {produced[id(o)] for o in outs if id(o) in produced}


def sparsity_ineligible(module: nn.Module) -> str | None:
    """Why 2:4 cannot apply (groups of 4 run along the input dimension), or None."""
    fan_in = module.weight.shape[1]
    if fan_in % 4:
        return f"input dimension {fan_in} is not a multiple of 4"
    return None


def resolve_plan(
    recipe: Recipe, targets: list[Target], teacher: nn.Module, example: torch.Tensor
) -> Plan:
    _check_recipe_values(recipe)
    q = recipe.quant
    outputs = output_layers(teacher, example)
    loadable = _loadable_bits(targets)
    adjustments: dict[str, list[str]] = {}
    layers = []
    for name, module in teacher.named_modules():
        if not isinstance(module, COMPRESSIBLE):
            continue
        notes = []
        keep = recipe.prune.keep_ratio
        if _matches(name, recipe.prune.skip):
            keep, sparsity = 1.0, None
            notes.append("prune.skip: left dense")
        else:
            sparsity = "2:4" if recipe.prune.sparsity == "2:4" else None
        if keep < 1.0 and name in outputs:
            keep = 1.0
            notes.append("model output: channels kept")
        if sparsity and (why := sparsity_ineligible(module)):
            sparsity = None
            notes.append(f"no 2:4: {why}")
        bits: int | None = q.weight_bits
        block = q.block_size if q.granularity == "block" else None
        for ov in q.overrides:
            if _matches(name, [ov.match]):
                bits = ov.weight_bits
                block = ov.block_size if ov.block_size is not None else block
        if block and module.weight.shape[1] < block:
            block = None
            notes.append("input dimension below block size: per-channel scales")
        if bits is not None and bits not in loadable:
            legal = min((b for b in loadable if b > bits), default=8)
            why = f"W{bits} -> W{legal}: {_who_cannot_load(targets, bits)} cannot load {bits}-bit weights"
            adjustments.setdefault(why, []).append(name)
            bits = legal
        if bits == 8 and q.symmetric and (narrow := _int8_weight_bits(targets)) < 8:
            why = f"W8 -> {narrow}-bit range in int8: {_who_narrows(targets)} int8 kernels can saturate on CPUs without VNNI"
            adjustments.setdefault(why, []).append(name)
            bits = narrow
        op = "Conv" if isinstance(module, (nn.Conv1d, nn.Conv2d)) else "Gemm"
        lp = LayerPlan(
            name=name,
            op=op,
            weight_shape=list(module.weight.shape),
            keep_ratio=keep,
            sparsity=sparsity,
            weight_bits=bits,
            block_size=block if bits is not None else None,
            symmetric=q.symmetric,
            activation_bits=q.activation_bits
            if q.activation_bits < 32 and bits is not None
            else None,
            notes=notes,
        )
        lp.runs_as = {
            f"{t.name}/{rt.name}": rt.runs_as(op, bits, sparsity == "2:4")
            for t in targets
            for rt in t.runtimes
        }
        layers.append(lp)
    if not layers:
        raise UsageError("the teacher has no Conv or Linear layers to compress")
    return Plan(
        layers=layers,
        targets=[t.name for t in targets],
        adjustments=[
            f"{why} ({len(names)} layers: {', '.join(names)})" for why, names in adjustments.items()
        ],
    )


def _check_recipe_values(recipe: Recipe) -> None:
    if not 0.0 < recipe.prune.keep_ratio <= 1.0:
        raise UsageError(f"prune.keep_ratio must be in (0, 1], got {recipe.prune.keep_ratio}")
    if recipe.quant.block_size < 2 or recipe.quant.block_size % 2:
        raise UsageError(
            f"quant.block_size must be an even number >= 2, got {recipe.quant.block_size}"
        )
    for pattern in [*recipe.prune.skip, *(o.match for o in recipe.quant.overrides)]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"recipe regex '{pattern}' is invalid ({exc})") from None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(re.fullmatch(p, name) or re.search(p, name) for p in patterns)


def _loadable_bits(targets: list[Target]) -> set[int]:
    sets = [set(rt.weight_bits) for t in targets for rt in t.runtimes]
    return set.intersection(*sets) if sets else {2, 3, 4, 8}


def _who_cannot_load(targets: list[Target], bits: int) -> str:
    return ", ".join(
        f"{rt.name} ({t.name})" for t in targets for rt in t.runtimes if bits not in rt.weight_bits
    )


def _int8_weight_bits(targets: list[Target]) -> int:
    return min((rt.int8_weight_bits for t in targets for rt in t.runtimes), default=8)


def _who_narrows(targets: list[Target]) -> str:
    return ", ".join(
        f"{rt.name} ({t.name})" for t in targets for rt in t.runtimes if rt.int8_weight_bits < 8
    )
