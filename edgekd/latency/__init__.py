"""Stage 2, latency: each layer's time on each target runtime, float against the plan's choice.

MACs are not latency: an int4 conv is slower than a float one on every CPU runtime, while an
int8 one is 2-3x faster with VNNI. So each compressible layer is built alone at its real shape
(``layer_onnx.py``), opened in the runtime as users deploy it, and timed float vs planned,
interleaved, at every bench batch size, on the runtimes this machine can stand in for. Results
are cached on disk by runtime version, CPU features, threads, shape and choice. The report sets
the prediction (the sum over layers) beside the whole-model latency bench measures.
"""

from __future__ import annotations

import hashlib
import json
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
from ..models.demo import cache_dir
from ..plan import COMPRESSIBLE, LayerPlan
from ..runtimes import get_runtime
from .layer_onnx import LayerShape, WeightChoice, layer_onnx

__all__ = ["LayerShape", "WeightChoice", "layer_onnx", "layer_shapes", "run"]


FORMAT = 1  # bump when layer_onnx or the timing changes, so cached timings are not reused


def run(ctx: Context) -> Context:
    shapes = layer_shapes(ctx.teacher, ctx.example)
    per_example = len(ctx.example)
    cfg = ctx.recipe.bench
    rows, skipped = [], []
    for target in ctx.targets:
        for rt in target.runtimes:
            reason = target.unavailable_reason(rt.name)
            if reason:
                skipped.append({"target": target.name, "runtime": rt.name, "reason": reason})
                continue
            runtime = get_runtime(rt.name)
            described = runtime.describe()
            for batch in cfg.batches:
                for lp in (lp for lp in ctx.plan.layers if lp.name in shapes):  # called layers
                    first, *rest = shapes[lp.name].input_shape  # batch, or batch x tokens
                    shape = replace(
                        shapes[lp.name], input_shape=(first * batch // per_example, *rest)
                    )
                    try:
                        times = _timed(runtime, described, shape, _choice(lp), cfg.threads)
                    except Exception as exc:  # the runtime rejects or fails this layer's form
                        error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                        times = {"choice": _choice(lp).label, "float_ms": None,
                                 "planned_ms": None, "kernel": None, "error": error}  # fmt: skip
                        ctx.log(f"  {target.name}/{rt.name} {lp.name}: not timed ({error})")
                    rows.append(
                        {"target": target.name, "runtime": rt.name, "batch": batch,
                         "layer": lp.name, **times}
                    )  # fmt: skip
    write_json(ctx.out("table.json"), {"layers": rows, "skipped": skipped})
    for key, total in predicted(rows).items():
        ctx.log(
            f"  {key}: compressible layers {total['float_ms']:.3f} ms float -> "
            f"{total['planned_ms']:.3f} ms planned ({total['planned_over_float']:.2f}x)"
        )
    ctx.metrics.update(measured=len(rows), skipped=len(skipped))
    return ctx


def predicted(rows: list[dict]) -> dict[str, dict[str, float]]:
    """``target/runtime b<batch>`` -> summed layer times, float and planned, and their ratio."""
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["planned_ms"] is None:
            continue
        t = totals.setdefault(
            f"{r['target']}/{r['runtime']} b{r['batch']}", {"float_ms": 0.0, "planned_ms": 0.0}
        )
        t["float_ms"] += r["float_ms"]
        t["planned_ms"] += r["planned_ms"]
    for t in totals.values():
        t["planned_over_float"] = t["planned_ms"] / t["float_ms"]
    return totals


def layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
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
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _choice(lp: LayerPlan) -> WeightChoice:
    return WeightChoice(
        lp.weight_bits, lp.block_size, lp.symmetric, lp.activation_bits, lp.activation_symmetric
    )


def _timed(runtime, described: dict, shape: LayerShape, planned: WeightChoice, threads) -> dict:
    """p50 of the float and the planned layer, interleaved; from the cache when measured before."""
    cpu = detect_cpu()
    key = {
        "format": FORMAT,
        "runtime": runtime.name,
        "version": described.get("version"),
        "device": described.get("device"),
        "cpu": sorted(cpu.features),
        "cores": cpu.usable_cores,
        "threads": threads,
        "shape": asdict(shape),
        "choice": asdict(planned),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "latency" / f"{digest}.json"
    try:
        cached = json.loads(path.read_text())
        if {"choice", "float_ms", "planned_ms", "kernel"} <= cached.keys():
            return cached
    except (OSError, ValueError):
        pass  # not measured yet, or a damaged entry: measure again
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, choice in (("float", WeightChoice(None)), ("planned", planned)):
            source = Path(tmp) / f"{label}.onnx"
            onnx.save(layer_onnx(shape, choice), source)
            artifact = runtime.build(source, source.with_suffix(runtime.artifact_suffix))
            sessions[label] = runtime.open(artifact, threads, "deploy")
        x = np.random.default_rng(0).standard_normal(shape.input_shape).astype(np.float32)
        stats = measure_interleaved(
            {label: (lambda s=s, x=x: s.run(x)) for label, s in sessions.items()},
            warmup=3,
            min_runs=10,
            min_seconds=0.05,
        )
        kernel = sessions["planned"].layer_kernels(["layer"]).get("layer", {})
    times = {
        "choice": planned.label,
        "float_ms": stats["float"].p50,
        "planned_ms": stats["planned"].p50,
        "kernel": kernel.get("kernel"),
    }
    write_json(path, times)
    return times
