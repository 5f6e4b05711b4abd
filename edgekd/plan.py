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
    activation_symmetric: bool = False  # zero point 0, for runtimes that need it (TensorRT)
    runs_as: dict[str, str] = field(default_factory=dict)  # "target/runtime" -> how it executes
    kernels: dict[str, str] = field(default_factory=dict)  # "target/runtime" -> int8, int4, float
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    layers: list[LayerPlan]
    targets: list[str]
    adjustments: list[str]  # requests a target could not run, and what they became
    # target -> the CPU its facts were resolved for, and each runtime's default precision there
    target_facts: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            target_facts=data.get("target_facts", {}),  # absent in runs made before CPU facts
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
    outputs, ranks = trace_layers(teacher, example)
    runtimes = [(t, rt) for t in targets for rt in t.runtimes]
    strict = [f"{rt.name} ({t.name})" for t, rt in runtimes if rt.symmetric_only]
    adjustments: dict[str, list[str]] = {}
    layers = []
    for name, module in teacher.named_modules():
        if not isinstance(module, COMPRESSIBLE):
            continue
        op = (
            "Conv"
            if isinstance(module, (nn.Conv1d, nn.Conv2d))
            else ("Gemm" if ranks.get(name, 2) == 2 else "MatMul")
        )
        notes: list[str] = []
        keep, sparsity = _prune_choice(recipe.prune, name, module, name in outputs, notes)
        bits, block = _weight_choice(recipe.quant, name, module, notes)
        bits, reasons = _legal_bits(bits, op, runtimes, recipe.quant.symmetric or bool(strict))
        for why in reasons:
            adjustments.setdefault(why, []).append(name)
        symmetric = recipe.quant.symmetric
        if strict and not symmetric and bits is not None:
            symmetric = True
            adjustments.setdefault(
                f"asymmetric -> symmetric quantization: {', '.join(strict)} needs zero points of 0",
                [],
            ).append(name)
        quantized_acts = recipe.quant.activation_bits < 32 and bits is not None
        lp = LayerPlan(
            name=name,
            op=op,
            weight_shape=list(module.weight.shape),
            keep_ratio=keep,
            sparsity=sparsity,
            weight_bits=bits,
            block_size=block if bits is not None else None,
            symmetric=symmetric,
            activation_bits=recipe.quant.activation_bits if quantized_acts else None,
            activation_symmetric=bool(strict) and quantized_acts,
            notes=notes,
        )
        lp.runs_as = {
            f"{t.name}/{rt.name}": rt.runs_as(op, bits, sparsity == "2:4", lp.activation_bits)
            for t, rt in runtimes
        }
        lp.kernels = {
            f"{t.name}/{rt.name}": rt.kernel(op, bits, lp.activation_bits) for t, rt in runtimes
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
        target_facts={
            t.name: {
                "cpu": t.describe_cpu(),
                "inference_precision": {rt.name: rt.inference_precision for rt in t.runtimes},
            }
            for t in targets
        },
    )


def _prune_choice(
    cfg, name: str, module: nn.Module, feeds_output: bool, notes: list[str]
) -> tuple[float, str | None]:
    keep, sparsity = cfg.keep_ratio, ("2:4" if cfg.sparsity == "2:4" else None)
    if _matches(name, cfg.skip):
        keep, sparsity = 1.0, None
        notes.append("prune.skip: left dense")
    if keep < 1.0 and feeds_output:
        keep = 1.0
        notes.append("model output: channels kept")
    if sparsity and (why := sparsity_ineligible(module)):
        sparsity = None
        notes.append(f"no 2:4: {why}")
    return keep, sparsity


def _weight_choice(
    cfg, name: str, module: nn.Module, notes: list[str]
) -> tuple[int | None, int | None]:
    """The recipe's bits and block size for this layer, overrides applied in order."""
    bits: int | None = cfg.weight_bits
    block = cfg.block_size if cfg.granularity == "block" else None
    for ov in cfg.overrides:
        if _matches(name, [ov.match]):
            if ov.weight_bits is not None:
                bits = None if ov.weight_bits == "float" else ov.weight_bits
            block = ov.block_size if ov.block_size is not None else block
    if block and module.weight.shape[1] < block:
        block = None
        notes.append("input dimension below block size: per-channel scales")
    return bits, block


def _legal_bits(
    bits: int | None, op: str, runtimes: list, symmetric: bool
) -> tuple[int | None, list[str]]:
    """The nearest bits every target runtime can run for this op, and why the request changed."""
    reasons: list[str] = []
    if bits is None:
        return bits, reasons
    loadable = set.intersection(*(set(rt.loads(op)) for _, rt in runtimes)) if runtimes else {bits}
    if bits not in loadable:
        legal = min((b for b in loadable if b > bits), default=8)
        who = ", ".join(f"{rt.name} ({t.name})" for t, rt in runtimes if bits not in rt.loads(op))
        reasons.append(f"W{bits} -> W{legal}: {who} cannot load {bits}-bit {op} weights")
        bits = legal
    narrow = min((rt.int8_weight_bits for _, rt in runtimes), default=8)
    if bits == 8 and symmetric and narrow < 8:
        who = ", ".join(f"{rt.name} ({t.name})" for t, rt in runtimes if rt.int8_weight_bits < 8)
        reasons.append(
            f"W8 -> {narrow}-bit range in int8: {who} int8 kernels can saturate on a CPU without VNNI"
        )
        bits = narrow
    return bits, reasons


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
        (
            "plan.max_accuracy_drop",
            recipe.plan.max_accuracy_drop,
            0 < recipe.plan.max_accuracy_drop <= 100,
            "in (0, 100] points",
        ),
        (
            "plan.latency_target",
            recipe.plan.latency_target,
            recipe.plan.latency_target is None or recipe.plan.latency_target > 0,
            "null or > 0 (student p50 / teacher p50)",
        ),
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
