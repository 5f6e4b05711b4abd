"""Stage 2, latency: each layer's time on each target runtime, for every candidate choice.

MACs are not latency: an int4 conv is slower than a float one on every CPU runtime, while an
int8 one is 2-3x faster with VNNI. So each compressible layer is built alone (``layer_onnx.py``)
as each candidate leaves it (fewer channels, a weight format), opened in the runtime as users
deploy it, and all its forms timed interleaved, at every bench batch size, on the runtimes this
machine can stand in for. Beside them runs a graph that computes nothing with the same input
and output (``runtimes/floor.py``): the cost of one call, which a whole model pays once, not
once per layer, is taken off each form (on small layers it is most of their time: ~35 us per
call in OpenVINO). Results are cached on disk by runtime version, CPU features, threads,
shapes and forms. Runtimes that cannot run here get a cost model from the target file (MACs times
a factor per kernel kind), labelled as such. The plan stage searches this table; the report sets
the prediction (the sum over layers) beside the whole-model latency bench measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..atomic import write_json
from ..bench.timing import measure_interleaved
from ..context import Context
from ..cpu import detect_cpu
from ..data.inputs import Example, batch_size, call
from ..models.demo import cache_dir
from ..plan import COMPRESSIBLE, LayerPlan, choice_label, kept_shape
from ..runtimes import get_runtime
from ..runtimes.floor import null_graph
from .layer_onnx import LayerShape, WeightChoice, layer_onnx, output_shape

__all__ = ["LayerShape", "WeightChoice", "fastest", "kept", "layer_onnx", "layer_shapes", "run"]


# bump when layer_onnx or the timing changes (5: calls with the input bound once; 6: ONNX Runtime
# sessions that do not spin; 7: rounds alternate their order; 8: OpenVINO's outputs not copied;
# 9: the call graph writes the layer's output shape, as ``runtimes.floor`` does for a model)
FORMAT = 10


def run(ctx: Context) -> Context:
    shapes = layer_shapes(ctx.teacher, ctx.example)
    first = next(iter(shapes), None)  # its input is the model's: never pruned
    per_example = batch_size(ctx.example)
    cfg = ctx.recipe.bench
    rows, skipped = [], []
    for target in ctx.targets:
        for rt in target.runtimes:
            reason = target.unavailable_reason(rt.name)
            runtime = None if reason else get_runtime(rt.name)
            if reason:
                skipped.append({"target": target.name, "runtime": rt.name, "reason": reason})
            for batch in cfg.batches:
                for lp in (lp for lp in ctx.space.layers if lp.name in shapes):  # called layers
                    first_dim, *rest = shapes[lp.name].input_shape  # batch, or batch x tokens
                    at_batch = replace(
                        shapes[lp.name], input_shape=(first_dim * batch // per_example, *rest)
                    )
                    where = {"target": target.name, "runtime": rt.name, "batch": batch,
                             "layer": lp.name}  # fmt: skip
                    if runtime is None:
                        rows += _cost_model(rt, lp, at_batch, lp.name != first, where)
                        continue
                    forms = {_form(c): kept(at_batch, c, lp.name != first) for c in lp.candidates}
                    try:
                        times = _timed(runtime, forms, cfg.threads)
                    except Exception as exc:  # the runtime rejects or fails this layer's form
                        error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                        ctx.log(f"  {target.name}/{rt.name} {lp.name}: not timed ({error})")
                        times = {
                            form: {"ms": None, "kernel": None, "error": error} for form in forms
                        }
                    rows += [
                        {**where, "choice": choice_label(c), "source": "measured", **times[_form(c)]}
                        for c in lp.candidates
                    ]  # fmt: skip
    write_json(ctx.out("table.json"), {"layers": rows, "skipped": skipped})
    for key, total in fastest(rows).items():
        ctx.log(
            f"  {key}: compressible layers {total['float_ms']:.3f} ms float, "
            f"{total['fastest_ms']:.3f} ms with each layer's fastest candidate"
        )
    ctx.metrics.update(measured=sum(r["source"] == "measured" for r in rows), skipped=len(skipped))
    return ctx


def fastest(rows: list[dict]) -> dict[str, dict[str, float]]:
    """``target/runtime b<batch>`` -> the float layers' summed time and the least it can be."""
    float_ms: dict[str, float] = {}
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["ms"] is None:
            continue
        key = f"{r['target']}/{r['runtime']} b{r['batch']}"
        if r["choice"] == "float":
            float_ms[key] = float_ms.get(key, 0.0) + r["ms"]
        best[key, r["layer"]] = min(best.get((key, r["layer"]), r["ms"]), r["ms"])
    return {
        key: {"float_ms": total, "fastest_ms": sum(ms for (k, _), ms in best.items() if k == key)}
        for key, total in float_ms.items()
    }


def kept(shape: LayerShape, choice: dict, inputs_pruned: bool) -> tuple[LayerShape, WeightChoice]:
    """The layer as a candidate leaves it: fewer channels, and its weight format."""
    keep = choice["keep_ratio"]
    depthwise = shape.groups > 1 and shape.weight_shape[1] == 1
    if shape.groups > 1 and not depthwise:
        keep = 1.0  # grouped convs are timed unpruned: their channel counts move by whole groups
    weight = tuple(kept_shape(list(shape.weight_shape), keep, inputs_pruned))
    groups = weight[0] if depthwise else shape.groups  # depthwise stays depthwise
    x = list(shape.input_shape)
    if shape.op == "Conv":
        x[1] = weight[1] * groups
    else:
        x[-1] = weight[1]
    return replace(shape, input_shape=tuple(x), weight_shape=weight, groups=groups), WeightChoice(
        choice["weight_bits"], choice["block_size"], choice["symmetric"],
        choice["activation_bits"], choice["activation_symmetric"],
    )  # fmt: skip


def _form(choice: dict) -> str:
    """What a CPU runtime times: the candidate without 2:4, which no CPU kernel exploits."""
    return choice_label({**choice, "sparsity": None})


# Relative cost of a layer per kernel kind, for runtimes this machine cannot run (Jetson, GPUs)
# and no measured table: a cost model from the target file's facts, labelled as such.
COST_FACTORS = {"faster": 0.5, "lowbit": 1.0, "float": 1.0, "dequantized": 1.2, "2:4": 0.6}


def _cost_model(rt, lp: LayerPlan, shape: LayerShape, inputs_pruned: bool, where: dict) -> list:
    rows = []
    for c in lp.candidates:
        layer, _ = kept(shape, c, inputs_pruned)
        macs = math.prod(output_shape(layer)) * math.prod(layer.weight_shape[1:])
        kernel = rt.kernel(lp.op, c["weight_bits"], c["activation_bits"])
        storage = None if kernel == "float" else int(kernel[3:])
        kind = (
            "float" if c["weight_bits"] is None
            else "dequantized" if storage is None
            else "faster" if storage in rt.faster_than_float.get(lp.op, ()) else "lowbit"
        )  # fmt: skip
        factor = COST_FACTORS[kind] * (
            COST_FACTORS["2:4"] if c["sparsity"] and lp.op in rt.sparse_2of4 else 1.0
        )
        rows.append({**where, "choice": choice_label(c), "source": "cost model",
                     "ms": macs * factor / 1e9, "kernel": kernel})  # fmt: skip
    return rows


def layer_shapes(model: nn.Module, example: Example) -> dict[str, LayerShape]:
    """Each Conv/Linear layer's op, input shape and attributes, from one forward pass (the
    first call of a layer used twice; layers never called are absent)."""
    shapes: dict[str, LayerShape] = {}

    def record(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if name in shapes:
            return
        w = tuple(module.weight.shape)
        if isinstance(module, nn.Linear):
            op = "Gemm" if x.dim() == 2 else "MatMul"
            shapes[name] = LayerShape(op, tuple(x.shape), w)
            return
        kernel = w[2:]
        padding = module.padding
        if isinstance(padding, str):  # "same" / "valid"
            padding = tuple(
                (k - 1) * d // 2 if padding == "same" else 0
                for k, d in zip(kernel, module.dilation, strict=True)
            )
        shapes[name] = LayerShape(
            "Conv", tuple(x.shape), w, tuple(module.stride), tuple(padding),
            tuple(module.dilation), module.groups,
        )  # fmt: skip

    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: record(name, mod, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


CALL = "call overhead"  # the label of the graph that computes nothing


def _timed(runtime, forms: dict[str, tuple[LayerShape, WeightChoice]], threads) -> dict:
    """p50 of every form of one layer, less the runtime's cost of one call on its input,
    interleaved; from the cache when measured before."""
    cpu = detect_cpu()
    described = runtime.describe()
    key = {
        "format": FORMAT,
        "runtime": runtime.name,
        "version": described.get("version"),
        "device": described.get("device"),
        "cpu": sorted(cpu.features),
        "cores": cpu.usable_cores,
        "threads": threads,
        "forms": {label: [asdict(s), asdict(c)] for label, (s, c) in sorted(forms.items())},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "latency" / f"{digest}.json"
    try:
        cached = json.loads(path.read_text())
        if set(cached) == set(forms):
            return cached
    except (OSError, ValueError):
        pass  # not measured yet, or a damaged entry: measure again
    sessions, inputs = {}, {}
    graphs = {label: (layer_onnx(shape, choice), shape) for label, (shape, choice) in forms.items()}
    widest = max(graphs.values(), key=lambda g: (g[1].input_shape, output_shape(g[1])))
    graphs[CALL] = (null_graph(widest[0]), widest[1])
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (graph, shape)) in enumerate(graphs.items()):
            source = Path(tmp) / f"{i}.onnx"
            onnx.save(graph, source)
            artifact = runtime.build(source, source.with_suffix(runtime.artifact_suffix))
            sessions[label] = runtime.open(artifact, threads, "deploy")
            inputs[label] = (
                np.random.default_rng(0).standard_normal(shape.input_shape).astype(np.float32)
            )
        stats = measure_interleaved(
            {label: s.bound(inputs[label]) for label, s in sessions.items()},
            warmup=3,
            min_runs=10,
            min_seconds=0.05,
            min_rounds=10,  # as many as the call-by-call rounds this table was first timed with
        )
        call = stats.pop(CALL).p50
        times = {
            label: {"ms": max(stats[label].p50 - call, 0.0), "call_ms": call,
                    "kernel": sessions[label].layer_kernels(["layer"]).get("layer", {}).get("kernel")}
            for label in forms
        }  # fmt: skip
    write_json(path, times)
    return times
