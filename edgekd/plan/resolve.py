"""Recipe + targets + teacher resolved into the choices each layer may take.

A fixed preset gives each layer one choice. A searching recipe (``plan.search``, the ``auto``
preset) gives each layer its candidates: channel keep ratios, the weight formats the targets run
faster than float, 2:4 where a target accelerates it. The sensitivity and latency stages measure
the candidates and the plan stage picks one per layer (``search.py``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.inputs import Example, call
from ..data.outputs import flatten
from ..errors import UsageError
from ..recipe import Recipe
from ..targets import Target

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
    feeds_output: bool = False  # the model's output comes from it with no layer in between
    # the range the activation right after it keeps (ReLU6: [0, 6]; ReLU: [0, None]), so its
    # int8 output is calibrated within it and not wasted on values the activation cuts off
    output_clamp: list[float | None] | None = None
    # the layer whose output alone this one reads, through activations only: when both are int8,
    # this layer's input Q is the only one between them, so runtimes keep the chain in integers
    input_from: str | None = None
    # the layer whose output this one reads as it is, beside other readers (a residual add): the
    # two share one int8 quantizer, so the tensor is quantized once for all of them
    shares_quant_with: str | None = None
    # the module (a block) whose output this layer reads beside a residual add and nothing else:
    # its int8 input quantizer is applied there, so the add reads the same codes and runtimes
    # fuse it into integer kernels (QLinearAdd; OpenVINO's u8 convolution with a sum)
    skip_from: str | None = None
    runs_as: dict[str, str] = field(default_factory=dict)  # "target/runtime" -> how it executes
    kernels: dict[str, str] = field(default_factory=dict)  # "target/runtime" -> int8, int4, float
    notes: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # CHOICE_FIELDS each


# The fields of a LayerPlan that one choice sets; the rest describe the layer.
CHOICE_FIELDS = (
    "keep_ratio", "sparsity", "weight_bits", "block_size", "symmetric", "activation_bits",
    "activation_symmetric",
)  # fmt: skip


def choice_of(lp: LayerPlan) -> dict[str, Any]:
    return {f: getattr(lp, f) for f in CHOICE_FIELDS}


def format_label(choice: dict[str, Any]) -> str:
    """The number format alone, e.g. ``W4 block 32 asym`` or ``W8 per-channel sym, A8``."""
    if choice.get("weight_bits") is None:
        return "float"
    granularity = f"block {choice['block_size']}" if choice.get("block_size") else "per-channel"
    acts = f", A{choice['activation_bits']}" if choice.get("activation_bits") else ""
    sym = "sym" if choice.get("symmetric") else "asym"
    return f"W{choice['weight_bits']} {granularity} {sym}{acts}"


def part_labels(choice: dict[str, Any]) -> list[str]:
    """The parts of a choice the sensitivity stage measures alone, by their row labels."""
    parts = [f"keep {choice['keep_ratio']:g}"] if choice["keep_ratio"] < 1.0 else []
    parts += ["2:4"] if choice["sparsity"] else []
    return parts + ([format_label(choice)] if choice["weight_bits"] is not None else [])


def choice_label(choice: dict[str, Any]) -> str:
    """e.g. ``keep 0.5, 2:4, W8 per-channel sym, A8``; ``float`` for the teacher's own layer."""
    parts = [f"keep {choice['keep_ratio']:g}"] if choice.get("keep_ratio", 1.0) < 1.0 else []
    parts += ["2:4"] if choice.get("sparsity") else []
    fmt = format_label(choice)
    return ", ".join([*parts, fmt] if fmt != "float" or not parts else parts)


def kept_shape(weight_shape: list[int], keep: float, inputs_pruned: bool) -> list[int]:
    """A weight's shape once ``keep`` of its output channels remain, and of its input channels
    when the layer before is pruned alike (a depthwise weight has one input per group).
    Torch-Pruning (``round_to=4`` in ``prune.structured``) keeps ``int(n * keep)`` rounded down
    to a multiple of 4."""
    out, fan_in, *kernel = weight_shape

    def kept(n: int) -> int:
        k = int(n * keep)
        return n if keep >= 1.0 else max(k - k % 4, min(k, 1))

    return [kept(out), kept(fan_in) if inputs_pruned and fan_in > 1 else fan_in, *kernel]


def with_choice(lp: LayerPlan, choice: dict[str, Any], runtimes: list) -> LayerPlan:
    """``lp`` set to one of its candidates, with how each ``(target, runtime)`` runs it."""
    chosen = dataclasses.replace(lp, **{f: choice[f] for f in CHOICE_FIELDS})
    chosen.runs_as = {
        f"{t.name}/{rt.name}": rt.runs_as(
            lp.op, chosen.weight_bits, chosen.sparsity == "2:4", chosen.activation_bits
        )
        for t, rt in runtimes
    }
    chosen.kernels = {
        f"{t.name}/{rt.name}": rt.kernel(lp.op, chosen.weight_bits, chosen.activation_bits)
        for t, rt in runtimes
    }
    return chosen


@dataclass
class Plan:
    layers: list[LayerPlan]
    targets: list[str]
    adjustments: list[str]  # requests a target could not run, and what they became
    # target -> the CPU its facts were resolved for, and each runtime's default precision there
    target_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)  # how the choices were picked, if searched
    # embedding table (nn.Embedding) -> code width of its rows (per-row scales); absent: float
    embeddings: dict[str, int] = field(default_factory=dict)

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
            search=data.get("search", {}),
            embeddings=data.get("embeddings", {}),  # absent in runs made before tables were
        )


@dataclass
class Traced:
    outputs: set[str]  # layers that feed the model's output with no other layer in between
    ranks: dict[str, int]  # each layer's input rank
    clamps: dict[str, list[float | None]]  # layers whose every consumer is one clamping activation
    fed_by: dict[str, str]  # layer -> the layer whose output alone it reads (past BN, clamps)
    skip_from: dict[str, str]  # layer -> the module whose output it shares with a residual add
    reads_output: dict[str, str]  # layer -> the layer whose output it reads among other readers
    calls: dict[str, int]  # layer or embedding table -> how often the forward calls it (or never)
    unread: set[str]  # layers called whose output never reaches the model's (a pooler unread)


def trace_layers(model: nn.Module, example: Example) -> Traced:
    """One forward pass: the layers that feed the model's output with no other layer in between
    (their channels are the output's, so they cannot be pruned), each layer's input rank (a
    Linear on 3-D input exports as MatMul, not Gemm), and the clamping activation (ReLU, ReLU6,
    hardtanh, clamp) each layer's output goes through, past a BatchNorm that folding removes;
    which layer reads that output as its sole consumer; and which layers share their input
    with a residual add and nothing else (and the module, not a layer, that produced it).

    Both come from the autograd graph and who consumes each node's output: an output layer has
    a path to the model's output through non-layer ops only (mean, flatten, add, BatchNorm, ...).
    """
    made_by: dict[object, str] = {}  # the autograd node that produced each layer's output
    reads: dict[object, str] = {}  # the autograd node that produced each layer's input
    produced: dict[object, list[str]] = {}  # ... and each other module's output, innermost first
    ranks: dict[str, int] = {}

    calls: dict[str, int] = {}

    def hook(module, inputs, out, name):
        calls[name] = calls.get(name, 0) + 1
        if not isinstance(module, COMPRESSIBLE):
            if isinstance(out, torch.Tensor):
                produced.setdefault(out.grad_fn, []).append(name)  # innermost first
            return
        made_by[out.grad_fn] = name  # taken before any in-place op replaces the tensor's grad_fn
        reads.setdefault(inputs[0].grad_fn, name)
        ranks[name] = inputs[0].dim()

    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
        for name, m in model.named_modules()
        if name  # the model itself: its output feeds no layer
    ]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the graph must start at the weights when the inputs are token ids
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            out = call(model.eval(), _tracked(example))
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    seen: set = set()
    users: dict[object, list] = {}  # autograd node -> the nodes that consume its output
    todo = [o.grad_fn for o in flatten(out)]  # every output: a dict's, a tuple's
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for next_fn, _ in fn.next_functions:
            users.setdefault(next_fn, []).append(fn)
            todo.append(next_fn)
    outputs = {made_by[fn] for fn in made_by if _reaches_output(fn, users, made_by)}
    clamps, fed_by, reads_output = {}, {}, {}
    for fn, name in made_by.items():
        after = users.get(fn, [])
        while len(after) == 1 and "BatchNorm" in type(after[0]).__name__:
            fn, after = after[0], users.get(after[0], [])
        if len(after) > 1 and fn in reads:
            reads_output[reads[fn]] = name
        bounds = {_clamp_bounds(user) for user in after}
        if len(bounds) == 1 and None not in bounds:
            clamps[name] = list(bounds.pop())
        while len(after) == 1 and _clamp_bounds(after[0]) is not None:
            fn, after = after[0], users.get(after[0], [])
        if len(after) == 1 and fn in reads:  # one consumer, and it is a layer's input
            fed_by[reads[fn]] = name
    # the innermost module that returns the tensor and runs once: a ReLU a block calls twice is
    # no place for a hook (its other call is elsewhere), the block that returns it is
    once = {fn: next((n for n in names if calls[n] == 1), None) for fn, names in produced.items()}
    skip_from = {
        reads[fn]: module
        for fn, module in once.items()
        if module
        and fn in reads
        and not _from_layer(fn, made_by)  # a layer's int8 output is quantized for all readers
        and len(users.get(fn, [])) == 2  # the layer, and ...
        and sum(type(u).__name__.startswith("AddBackward") for u in users[fn]) == 1  # an add
    }
    tables = {name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    layer_calls = {name: n for name, n in calls.items() if name in ranks or name in tables}
    unread = {name for fn, name in made_by.items() if fn not in seen}
    return Traced(outputs, ranks, clamps, fed_by, skip_from, reads_output, layer_calls, unread)


def _tracked(example: Example) -> Example:
    """A copy of the example whose floating inputs autograd tracks (token ids cannot be)."""
    if isinstance(example, dict):
        return {name: _tracked(t) for name, t in example.items()}
    return example.clone().requires_grad_(example.is_floating_point())


def _from_layer(fn, made_by: dict) -> bool:
    """Whether ``fn`` is a layer's output, or that through a BatchNorm folding removes."""
    if "BatchNorm" in type(fn).__name__:
        fn = fn.next_functions[0][0]
    return fn in made_by


def _reaches_output(fn, users: dict, made_by: dict) -> bool:
    """Whether a path from ``fn`` to the model's output passes no other layer."""
    todo, seen = [fn], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        after = users.get(node, [])
        if not after:
            return True
        todo.extend(user for user in after if user not in made_by)
    return False


def _clamp_bounds(fn) -> tuple[float | None, float | None] | None:
    """(low, high) of a clamping activation's autograd node; None for any other op."""
    kind = type(fn).__name__
    if kind.startswith("Relu"):
        return 0.0, None
    if kind.startswith("Hardtanh"):
        return float(fn._saved_min_val), float(fn._saved_max_val)
    if kind.startswith("Clamp") and hasattr(fn, "_saved_min"):  # scalar bounds only
        low, high = fn._saved_min, fn._saved_max
        return (None if low is None else float(low)), (None if high is None else float(high))
    return None


def sparsity_ineligible(module: nn.Module) -> str | None:
    """Why 2:4 cannot apply (groups of 4 run along the input dimension), or None."""
    fan_in = module.weight.shape[1]
    if fan_in % 4:
        return f"input dimension {fan_in} is not a multiple of 4"
    return None


def resolve_plan(
    recipe: Recipe, targets: list[Target], teacher: nn.Module, example: Example
) -> Plan:
    _check_recipe_values(
        recipe, [n for n, m in teacher.named_modules() if isinstance(m, COMPRESSIBLE)]
    )
    traced = trace_layers(teacher, example)
    outputs, ranks = traced.outputs, traced.ranks
    runtimes = [(t, rt) for t in targets for rt in t.runtimes]
    strict = [f"{rt.name} ({t.name})" for t, rt in runtimes if rt.symmetric_only]
    adjustments: dict[str, list[str]] = {}
    layers = []
    for name, module in teacher.named_modules():
        if not isinstance(module, COMPRESSIBLE):
            continue
        if name not in traced.calls or name in traced.unread:  # in no exported graph
            why = "not called by" if name not in traced.calls else "its output unread in"
            adjustments.setdefault(f"{why} the teacher's forward: left as it is", []).append(name)
            continue
        op = (
            "Conv"
            if isinstance(module, (nn.Conv1d, nn.Conv2d))
            else ("Gemm" if ranks.get(name, 2) == 2 else "MatMul")
        )
        notes: list[str] = []
        calls = traced.calls[name]
        keep, sparsity = _prune_choice(recipe.prune, name, module, name in outputs, calls, notes)
        bits, block = _weight_choice(recipe.quant, name, module, notes)
        for note in (n for n in notes if n.startswith("block ") and bits is not None):
            adjustments.setdefault(note, []).append(name)
        bits, reasons = _legal_bits(bits, op, runtimes, recipe.quant.symmetric or bool(strict))
        for why in reasons if not recipe.plan.search else ():  # a search reports its own
            adjustments.setdefault(why, []).append(name)
        symmetric = recipe.quant.symmetric
        if strict and not symmetric and bits is not None and not recipe.plan.search:
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
            feeds_output=name in outputs,
            output_clamp=traced.clamps.get(name),
            input_from=traced.fed_by.get(name),
            skip_from=traced.skip_from.get(name),
            shares_quant_with=traced.reads_output.get(name),
            notes=notes,
        )
        if recipe.plan.search:
            removable = not _matches(name, recipe.prune.skip) and name not in outputs and calls == 1
            lp.candidates = _candidates(recipe, name, module, op, removable, runtimes, strict)
            lp.notes = [n for n in notes if n.startswith(("prune.skip", "model output", "called "))]
        else:
            lp.candidates = [choice_of(lp)]
        lp = with_choice(lp, lp.candidates[0], runtimes)
        layers.append(lp)
    if not layers:
        raise UsageError("the teacher has no Conv or Linear layers to compress")
    if not recipe.plan.search:  # a search measures each layer's pruning alone (sensitivity)
        _keep_where_pruning_breaks(layers, targets, teacher, example, runtimes, adjustments)
        _note_heads(layers, teacher, adjustments)
    embeddings = _embedding_plan(recipe, teacher, traced, runtimes, adjustments)  # notes first
    plan = Plan(
        embeddings=embeddings,
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
    if not recipe.plan.search:  # a search fits its pick (plan stage)
        plan.adjustments += fit_blocks_to_pruning(plan, teacher, example)
    return plan


def _embedding_plan(
    recipe: Recipe, teacher: nn.Module, traced: Traced, runtimes: list,
    adjustments: dict[str, list[str]],
) -> dict[str, int]:  # fmt: skip
    """The embedding tables quantized, and to what width: the recipe's, where every runtime
    loads an integer Gather table (MiniLM's word table is half its weights). A table whose
    weight another module holds too (a language model's output layer tied to it) stays float:
    the two would quantize one tensor two ways."""
    bits = recipe.quant.embedding_bits
    holders: dict[int, int] = {}
    for m in teacher.modules():
        for p in m.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    tables, tied = [], []
    for n, m in teacher.named_modules():
        if isinstance(m, nn.Embedding) and n in traced.calls:
            (tied if holders[id(m.weight)] > 1 else tables).append(n)
    if tied and bits != "float":
        adjustments.setdefault("embedding tables stay float: their weight is tied to another "
                               "layer's", []).extend(tied)  # fmt: skip
    if bits == "float" or not tables:
        return {}
    refusing = [f"{rt.name} ({t.name})" for t, rt in runtimes if bits not in rt.loads("Gather")]
    if refusing:
        why = f"embedding tables stay float: {', '.join(refusing)} loads no {bits}-bit table"
        adjustments.setdefault(why, []).extend(tables)
        return {}
    return dict.fromkeys(tables, bits)


def _note_heads(layers: list[LayerPlan], teacher: nn.Module, adjustments: dict) -> None:
    """Where an attention layer's q/k/v keep ratios differ (one skipped), say what pruning will
    do: heads are removed whole from all three, as far as the narrowest asks."""
    from ..prune.heads import find_attention  # prune reads the plan

    keeps = {lp.name: lp.keep_ratio for lp in layers}
    names = {m: n for n, m in teacher.named_modules()}
    for a in find_attention(teacher):
        asked = [keeps.get(names[p], 1.0) for p in a.projections]
        if len(set(asked)) > 1:
            adjustments.setdefault(
                f"attention heads are removed whole from query, key and value: "
                f"{names[a.module]} keeps {min(asked):g} of its heads in all three",
                [],
            ).extend(names[p] for p in a.projections)


def _keep_where_pruning_breaks(
    layers: list[LayerPlan], targets: list[Target], teacher: nn.Module, example, runtimes: list,
    adjustments: dict[str, list[str]],
) -> None:  # fmt: skip
    """Channels kept, with a note, on layers whose pruning breaks the forward pass: found by
    pruning a copy of the teacher now, before anything is trained."""
    from ..prune.structured import pruning_breaks  # prune reads the plan

    broken = pruning_breaks(teacher, Plan(layers, [t.name for t in targets], []), example)
    for i, lp in enumerate(layers):
        if lp.name in broken:
            lp.notes.append(
                f"channels kept: removing them breaks the forward pass ({broken[lp.name]})"
            )
            layers[i] = with_choice(lp, {**choice_of(lp), "keep_ratio": 1.0}, runtimes)
            layers[i].candidates = [choice_of(layers[i])]
            adjustments.setdefault(
                "channels kept: removing them breaks the teacher's forward pass", []
            ).append(lp.name)


FLOAT = {"weight_bits": None, "block_size": None, "symmetric": False, "activation_bits": None,
         "activation_symmetric": False}  # fmt: skip
SEARCH_BLOCK = 32  # blocked INT4 along the input: the form MatMulNBits and OpenVINO's u4 take


def _candidates(
    recipe: Recipe, name: str, module: nn.Module, op: str, removable: bool, runtimes: list,
    strict: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every choice a search may give this layer; the first is the teacher's own (dense float).

    Weight formats are the widths some target runtime runs faster than float (target files,
    measured by benchmarks/cpu_kernels.py) and every runtime loads, with the input precision
    their kernels need; both input precisions where no runtime insists. 2:4 only where a
    runtime has sparse kernels for the op and the layer meets NVIDIA's shape rule for them
    (output channels % 8, input % 16). A ``quant.overrides`` entry fixes the layer's format."""
    keeps = sorted({1.0, *(k for k in recipe.plan.keep_ratios if removable and k < 1.0)})[::-1]
    fixed = [ov for ov in recipe.quant.overrides if ov.weight_bits and _matches(name, [ov.match])]
    widths: list[int | None]
    if fixed:
        widths = [None if fixed[-1].weight_bits == "float" else fixed[-1].weight_bits]
    else:
        loadable = set.intersection(*(set(rt.loads(op)) for _, rt in runtimes))
        fast = {b for _, rt in runtimes for b in rt.faster_than_float.get(op, ())} & loadable
        widths = [None, *sorted(fast, reverse=True)]
    formats = []
    for bits in widths:
        if bits is None:
            formats.append(FLOAT)
            continue
        symmetric = bits == 8 or recipe.quant.symmetric or bool(strict)
        bits, _ = _legal_bits(bits, op, runtimes, symmetric)
        block = (
            SEARCH_BLOCK
            if bits <= 4 and op != "Conv" and module.weight.shape[1] % SEARCH_BLOCK == 0
            else None
        )
        int8_in = any(op in rt.needs_int8_activations for _, rt in runtimes)
        float_in = any(op in rt.needs_float_activations for _, rt in runtimes)
        for acts in ([8] if int8_in or not float_in else []) + (
            [None] if float_in or not int8_in else []
        ):
            formats.append({"weight_bits": bits, "block_size": block, "symmetric": symmetric,
                            "activation_bits": acts, "activation_symmetric": bool(strict) and acts == 8})  # fmt: skip
    out, fan_in = module.weight.shape[:2]
    sparse = [None]
    if any(op in rt.sparse_2of4 for _, rt in runtimes) and out % 8 == 0 and fan_in % 16 == 0:
        sparse.append("2:4")
    found = []
    for k in keeps:  # a block fits the fan-in the layer has when the one before keeps k too
        kept_in = kept_shape(list(module.weight.shape), k, inputs_pruned=True)[1]
        for s in sparse:
            for f in formats:
                c = {"keep_ratio": k, "sparsity": s, **f}
                c["block_size"] = fit_block(c["block_size"], kept_in)[0]
                found += [c] if c not in found else []
    return found


def _prune_choice(
    cfg, name: str, module: nn.Module, feeds_output: bool, calls: int, notes: list[str]
) -> tuple[float, str | None]:
    keep, sparsity = cfg.keep_ratio, ("2:4" if cfg.sparsity == "2:4" else None)
    if _matches(name, cfg.skip):
        keep, sparsity = 1.0, None
        notes.append("prune.skip: left dense")
    if keep < 1.0 and feeds_output:
        keep = 1.0
        notes.append("model output: channels kept")
    if keep < 1.0 and calls > 1:  # its output feeds its own input: channels are not its own
        keep = 1.0
        notes.append(f"called {calls} times: channels kept")
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
    fitted, note = fit_block(block, module.weight.shape[1])
    notes += [note] if note else []
    return bits, fitted


def fit_block(block: int | None, fan_in: int) -> tuple[int | None, str | None]:
    """The block size a layer of ``fan_in`` inputs can take, and why it changed: runtimes
    reject a last, partial block (OpenVINO's u4), so the largest of 128-16 that divides it
    (at most ``block``), else per-channel scales."""
    if not block or fan_in % block == 0:
        return block, None
    if fan_in < block:
        return None, "input dimension below block size: per-channel scales"
    fits = next((b for b in (128, 64, 32, 16) if b <= block and fan_in % b == 0), None)
    return fits, f"block {block} does not divide the input dimension {fan_in}: " + (
        f"block {fits}" if fits else "per-channel scales"
    )


def fit_blocks_to_pruning(plan: Plan, teacher: nn.Module, example: Example) -> list[str]:
    """Each blocked layer's block fitted to its fan-in once the plan's channels are gone (a
    layer reading a pruned one has fewer inputs than its own choice saw); returns the notes."""
    from ..models.clone import clone_model  # prune reads the plan
    from ..prune.structured import prune_channels

    if not any(lp.block_size for lp in plan.layers) or all(
        lp.keep_ratio >= 1 for lp in plan.layers
    ):
        return []  # no block, or every fan-in the teacher's: the choices fitted them already
    pruned = clone_model(teacher).eval()
    prune_channels(pruned, plan, example)
    notes = []
    for i, lp in enumerate(plan.layers):
        block, note = fit_block(lp.block_size, pruned.get_submodule(lp.name).weight.shape[1])
        if note:
            fitted = dataclasses.replace(lp, block_size=block, notes=[*lp.notes, note])
            if len(lp.candidates) == 1:  # a fixed preset: its one choice is the plan's
                fitted.candidates = [choice_of(fitted)]
            plan.layers[i] = fitted
            notes.append(f"{lp.name}: {note}")
    return notes


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


def _check_recipe_values(recipe: Recipe, layers: list[str]) -> None:
    """What the recipe's schema cannot check alone, before any work starts: each layer pattern
    matches some Conv/Linear layer of this teacher (ranges and regex syntax are the schema's)."""
    patterns = [(f"prune.skip[{i}]", p) for i, p in enumerate(recipe.prune.skip)] + [
        (f"quant.overrides[{i}].match", o.match) for i, o in enumerate(recipe.quant.overrides)
    ]
    for key, pattern in patterns:
        if layers and not any(_matches(layer, [pattern]) for layer in layers):
            shown = ", ".join(layers[:6]) + (
                f", ... ({len(layers)} in all)" if len(layers) > 6 else ""
            )
            raise UsageError(
                f"{key} '{pattern}' matches no layer of the teacher (patterns match whole names); "
                f"its Conv/Linear layers: {shown}"
            )


def _matches(name: str, patterns: list[str]) -> bool:
    """Whether a pattern matches the whole layer name (``head`` does not match ``head.1``)."""
    return any(re.fullmatch(p, name) for p in patterns)
