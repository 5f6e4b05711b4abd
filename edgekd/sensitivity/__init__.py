"""Stage 1, sensitivity: what each candidate compression of each layer costs alone, before training.

For every layer, each part of its candidate choices (channels removed at each keep ratio, the 2:4
mask, each low-bit weight format with its input precision) is applied to the teacher, that layer
only, and the result is compared with the teacher on calibration inputs (the validation split):
top-1 agreement and KL divergence. The plan stage adds the parts' KL up to predict each
candidate's damage, and turns it into points with the teacher's logits saved here; the report
shows them and the gate names the layers that hurt most when a student misses its budget.

Channels are removed by the same Torch-Pruning call the prune stage makes; weights are quantized
after BatchNorm folding, as distillation trains them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_json
from ..context import Context
from ..evaluate import predict, torch_fn
from ..models.clone import clone_model
from ..plan import CHOICE_FIELDS, LayerPlan, Plan, format_label
from ..plan.damage import LOGITS
from ..prune.sparsity import apply_2of4
from ..prune.structured import keeping, prune_channels, why_broke
from ..quant import ActQuant, WeightFormat, fold_batchnorm, quantize_weight
from ..quant.bias import correct_bias, mean_inputs
from ..quant.fake import search_clip
from ..task import Task

CALIBRATION = 256  # inputs at most: enough to rank layers
MIN_CALIBRATION = 16  # inputs at least, whatever the time
SECONDS = 120.0  # the time the measurements should take; fewer inputs for large models


def run(ctx: Context) -> Context:
    x = (ctx.data.val.x if len(ctx.data.val) else ctx.data.train.x)[:CALIBRATION]
    began = time.perf_counter()
    reference = calibration_logits = predict(torch_fn(ctx.teacher), x)
    per_input = (time.perf_counter() - began) / len(x)
    choices = [(lp, label, part) for lp in ctx.space.layers for label, part in _choices(lp)]
    n = int(min(len(x), max(MIN_CALIBRATION, SECONDS / (per_input * max(len(choices), 1)))))
    x, reference = x[:n], reference[:n]
    folded = fold_batchnorm(clone_model(ctx.teacher).eval(), ctx.example)  # once: slow on CNNs
    names = [lp.name for lp in ctx.space.layers]
    ranges = _input_ranges(folded, names, x)
    means = mean_inputs(folded, names, x, len(x))  # for bias correction, as calibration does
    rows, unmeasured = [], []
    for lp, choice, part in choices:
        if lp.name not in ranges:  # e.g. attention's out_proj, used without calling the module
            unmeasured.append({"layer": lp.name, "choice": choice, "reason": "not called"})
            continue
        model, coupled = _apply(
            ctx.teacher, folded, ctx.space, lp, part, ctx.example, ranges, means
        )
        if model is None or (coupled and set(part) == {"keep_ratio"}):
            unmeasured.append({"layer": lp.name, "choice": choice, "reason": coupled})
            continue
        pred = predict(torch_fn(model), x)
        row = {"layer": lp.name, "choice": choice, **damage(ctx.task, pred, reference)}
        rows.append({**row, "note": coupled} if coupled else row)
    with atomic_path(ctx.out(LOGITS)) as tmp, open(tmp, "wb") as f:
        np.save(f, calibration_logits)  # the plan turns summed KL into points (plan/damage.py)
    write_json(
        ctx.out("sensitivity.json"),
        {
            "examples": len(x),
            "split": "val" if len(ctx.data.val) else "train",
            "layers": rows,
            "unmeasured": unmeasured,
        },
    )
    ctx.metrics.update(seconds_per_input=per_input)
    worst = sorted((r for r in rows if r["choice"] != "planned"), key=lambda r: -r["kl"])[:3]
    ctx.metrics.update(
        examples=len(x), most_sensitive=[f"{r['layer']} {r['choice']}" for r in worst]
    )
    if worst:
        ctx.log(
            "  most damaging alone: "
            + ", ".join(
                f"{r['layer']} {r['choice']} (agreement {r['agreement']:.1%})" for r in worst
            )
        )
    return ctx


def damage(task: Task, pred: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement with the reference (top-1, or cosine similarity) and the task's divergence from
    it, recorded as ``kl``: the KL at temperature 1, or the relative error (``task.py``)."""
    return {"agreement": task.agrees(pred, reference), "kl": task.divergence(pred, reference)}


def _choices(lp: LayerPlan) -> Iterator[tuple[str, dict]]:
    """Each part of the layer's candidates alone (channels at each keep ratio, 2:4, each weight
    format with its input precision), then, for a single planned choice of several parts, the
    whole of it. The plan stage adds parts up to judge a candidate."""
    parts: dict[str, dict] = {}
    for c in lp.candidates:
        if c["keep_ratio"] < 1.0:
            parts[f"keep {c['keep_ratio']:g}"] = {"keep_ratio": c["keep_ratio"]}
        if c["sparsity"]:
            parts["2:4"] = {"sparsity": c["sparsity"]}
        if c["weight_bits"] is not None:
            parts[format_label(c)] = {
                f: c[f] for f in CHOICE_FIELDS if f not in ("keep_ratio", "sparsity")
            }
    yield from parts.items()
    if len(lp.candidates) == 1 and len(parts) > 1:
        yield "planned", lp.candidates[0]


def _apply(
    teacher: nn.Module,
    folded: nn.Module,
    plan: Plan,
    lp: LayerPlan,
    part: dict,
    example,
    ranges: dict[str, tuple[float, float]],
    means: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[nn.Module | None, str | None]:
    """A copy of the teacher with ``part`` of a choice (any of CHOICE_FIELDS) applied to
    ``lp``'s layer alone (no ``torch.no_grad`` here: Torch-Pruning traces its dependency graph
    through autograd), and why its channels could not be removed alone, if they were asked for
    and were not (no model where removing them breaks the forward pass).

    ``folded``: the teacher with BatchNorm folded, which computes the same function. A 2:4 mask
    is the same on folded weights: folding scales whole output channels, and each group of 4
    lies within one. Quantized weights get the bias correction calibration gives the student
    (``quant.bias``), from the layer's mean input on the calibration inputs."""
    coupled = None
    keep = part.get("keep_ratio", 1.0)
    if keep >= 1.0:
        model = clone_model(folded)
    else:
        model = clone_model(teacher).eval()
        try:
            prune_channels(model, keeping(plan, {lp.name: keep}), example)
        except Exception as exc:  # a reshape Torch-Pruning cannot follow, or its own failure
            return None, f"removing its channels breaks the forward pass ({why_broke(exc)})"
        if model.get_submodule(lp.name).weight.shape[0] == lp.weight_shape[0]:
            coupled = "coupled with other layers' channels: not removable alone"
        model = fold_batchnorm(model, example)
    layer = model.get_submodule(lp.name)
    if part.get("sparsity") == "2:4":
        apply_2of4(layer)
    if part.get("weight_bits") is not None:
        fmt = WeightFormat(part["weight_bits"], part["symmetric"], part["block_size"])
        clip = search_clip(layer.weight, fmt)  # the clipping distillation starts from
        weight = layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight.copy_(quantize_weight(layer.weight, fmt, clip).dequantize())
        if lp.name in means:
            mean = means[lp.name][0]
            correct_bias(layer, weight, layer.weight, (mean, mean))
    if part.get("activation_bits") is not None:
        _quantize_input(layer, *ranges[lp.name], bool(part.get("activation_symmetric")))
    return model, coupled


def _input_ranges(model: nn.Module, layers: list[str], x: np.ndarray) -> dict[str, tuple]:
    """Each layer's input min/max over the calibration data (0 included), in one forward pass."""
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str, t: torch.Tensor) -> None:
        lo, hi = ranges.get(name, (0.0, 0.0))
        ranges[name] = (min(lo, float(t.min())), max(hi, float(t.max())))

    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: record(name, args[0])
        )
        for name in layers
    ]
    try:
        predict(torch_fn(model), x)
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def _quantize_input(layer: nn.Module, lo: float, hi: float, symmetric: bool) -> None:
    """The student's 8-bit input quantizer on the layer, over the calibrated range."""
    act = ActQuant(symmetric).eval()
    act.lo.fill_(lo)
    act.hi.fill_(hi)
    act.initialized.fill_(True)
    layer.register_forward_pre_hook(lambda _m, args: (act(args[0]), *args[1:]))
