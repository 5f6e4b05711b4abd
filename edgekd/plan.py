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


def trace_layers(model: nn.Module, example: torch.Tensor) -> tuple[set[str], dict[str, int]]:
    """One forward pass: the layers that feed the model's output with no other layer in between
    (their channels are the output's, so they cannot be pruned), and each layer's input rank (a
    Linear on 3-D input exports as MatMul, not Gemm).

    Output layers are found by walking the autograd graph back from the output through
    channel-preserving ops (mean, flatten, add, BatchNorm, ...) until a layer is reached.
    """
    made_by: dict[object, str] = {}  # the autograd node that produced each layer's output
    ranks: dict[str, int] = {}

    def hook(_module, inputs, out, name):
        made_by[out.grad_fn] = name  # taken before any in-place op replaces the tensor's grad_fn
        ranks[name] = inputs[0].dim()

    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
        for name, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
    try:
        with torch.enable_grad():
            out = model.eval()(example.clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    outputs, seen = set(), set()
    todo = [o.grad_fn for o in (out if isinstance(out, (tuple, list)) else [out])]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            outputs.add(made_by[fn])
        else:
            todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return outputs, ranks


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
    outputs, ranks = trace_layers(teacher, example)
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
                if ov.weight_bits is not None:
                    bits = None if ov.weight_bits == "float" else ov.weight_bits
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
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            op = "Conv"
        else:
            op = "Gemm" if ranks.get(name, 2) == 2 else "MatMul"
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
    """Ranges the types cannot express, checked before any work starts."""
    d, b = recipe.distill, recipe.bench
    checks = [
        (
            "prune.keep_ratio",
            recipe.prune.keep_ratio,
            0.0 < recipe.prune.keep_ratio <= 1.0,
            "in (0, 1]",
        ),
        ("distill.epochs", d.epochs, d.epochs >= 1, ">= 1"),
        ("distill.batch_size", d.batch_size, d.batch_size >= 1, ">= 1"),
        ("distill.lr", d.lr, d.lr > 0, "> 0"),
        ("distill.temperature", d.temperature, d.temperature > 0, "> 0"),
        ("distill.alpha", d.alpha, 0.0 <= d.alpha <= 1.0, "in [0, 1]"),
        (
            "verify.min_agreement",
            recipe.verify.min_agreement,
            0.0 <= recipe.verify.min_agreement <= 1.0,
            "in [0, 1]",
        ),
        (
            "bench.batches",
            b.batches,
            bool(b.batches) and min(b.batches) >= 1,
            "a non-empty list of sizes >= 1",
        ),
        ("bench.warmup", b.warmup, b.warmup >= 0, ">= 0"),
        ("bench.min_runs", b.min_runs, b.min_runs >= 1, ">= 1"),
        ("bench.min_seconds", b.min_seconds, b.min_seconds >= 0, ">= 0"),
        ("bench.threads", b.threads, b.threads is None or b.threads >= 1, "null or >= 1"),
    ]
    blocks = [("quant.block_size", recipe.quant.block_size)] + [
        (f"quant.overrides[{i}].block_size", o.block_size)
        for i, o in enumerate(recipe.quant.overrides)
    ]
    checks += [
        (key, v, v is None or (v >= 2 and v % 2 == 0), "an even number >= 2") for key, v in blocks
    ]
    for key, value, ok, rule in checks:
        if not ok:
            raise UsageError(f"{key} must be {rule}, got {value}")
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
