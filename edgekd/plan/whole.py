"""Candidate plans timed whole, as the runtime runs them: what a sum of layers cannot see.

A runtime pays at every switch between float and int8 layers: ONNX Runtime transposes to NHWC
and back around its QLinearConv chain, reorders its blocked float layouts and runs the Q/DQ;
OpenVINO requantizes. EfficientNet-Lite0's plan with 16 int8 layers among float ones summed to
1.30x the teacher at ONNX Runtime batch 32 and ran 0.83x; all 49 layers int8 ran 1.9x. So the
plan stage times each candidate plan's graph against the teacher's: built from the teacher as the
later stages would (channels pruned, BatchNorm folded, fake-quantized, activation ranges
calibrated on the example), untrained, since time does not depend on the values, and exported
as the export stage exports. Each runtime and batch is one interleaved measurement.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnx
from torch import nn

from ..bench.timing import batch_of, measure_interleaved, median_ratio
from ..budget import LATENCY_NOISE
from ..data.inputs import as_example
from ..distill.train import calibrate
from ..evaluate import max_batch
from ..export.torch_onnx import export_float, student_onnx
from ..models.clone import clone_model
from ..prune.sparsity import apply_2of4
from ..prune.structured import prune_channels
from ..quant import fold_batchnorm, prepare_qat
from ..runtimes import get_runtime
from .resolve import Plan

if TYPE_CHECKING:
    from ..context import Context

# At most the bench's settings: enough to rank graphs whose times differ by tens of percent.
WARMUP, MIN_RUNS, MIN_SECONDS = 3, 10, 1.0
T = TypeVar("T")


def time_plans(ctx: Context, plans: dict[str, Plan]) -> dict[str, dict[str, float]]:
    """``{mode: {"target/runtime b<batch>": teacher p50 / plan p50}}`` on every target runtime
    this machine runs; empty when it runs none. A plan that cannot be exported, built or loaded
    is left out with a logged reason (the later stages judge the plan picked), and so is a
    runtime that cannot load the teacher: only plans timed on every runtime and batch compete."""
    cfg = ctx.recipe.bench
    runtimes: dict[str, list[str]] = {}  # one timing per runtime, filed under each target
    for target in ctx.targets:
        for rt in target.runtimes:
            if why := target.unavailable_reason(rt.name):
                ctx.log(f"  {target.name}/{rt.name}: plans not timed whole here ({why})")
            else:
                runtimes.setdefault(rt.name, []).append(f"{target.name}/{rt.name}")
    if not runtimes:
        return {}
    ratios: dict[str, dict[str, float]] = {mode: {} for mode in plans}
    with tempfile.TemporaryDirectory(prefix="edgekd-plans-") as tmp:
        graphs = {"teacher": Path(tmp, "teacher.onnx")}
        onnx.save(export_float(ctx.teacher, ctx.example, ctx.task.outputs), graphs["teacher"])
        for mode, plan in plans.items():
            graph = _attempt(ctx, f"the {mode} plan, not timed whole: its export failed",
                             partial(plan_graph, ctx.teacher, plan, ctx.data.train.x[:2], ctx.task.outputs))  # fmt: skip
            if graph is not None:
                graphs[mode] = Path(tmp, f"{mode}.onnx")
                onnx.save(graph, graphs[mode])
        for name, labels in runtimes.items():
            runtime = get_runtime(name)
            sessions = {}
            for model, path in graphs.items():
                dest = Path(tmp, name, model + runtime.artifact_suffix)
                opened = _attempt(ctx, f"{', '.join(labels)}: the {model} model, not timed whole",
                                  partial(_session, runtime, path, dest, cfg))  # fmt: skip
                if opened is not None:
                    sessions[model] = opened
            if "teacher" not in sessions:
                continue
            for batch in cfg.batches:
                x = batch_of(ctx.data.test.x, batch)
                stats = measure_interleaved(
                    {model: s.bound(x) for model, s in sessions.items()},
                    warmup=min(cfg.warmup, WARMUP), min_runs=min(cfg.min_runs, MIN_RUNS),
                    min_seconds=min(cfg.min_seconds, MIN_SECONDS),
                )  # fmt: skip
                for mode in plans.keys() & sessions.keys():
                    speedup = median_ratio(stats["teacher"], stats[mode])  # as bench measures it
                    for label in labels:
                        ratios[mode][f"{label} b{batch}"] = speedup
    everywhere = max((len(got) for got in ratios.values()), default=0)
    return {mode: got for mode, got in ratios.items() if got and len(got) == everywhere}


def _session(runtime, onnx_path: Path, dest: Path, cfg):
    """A deployed session on ``onnx_path``, built as the export stage builds artifacts."""
    return runtime.open(
        runtime.build(onnx_path, dest, max_batch(cfg.batches)), cfg.threads, "deploy"
    )


def _attempt(ctx: Context, what: str, make: Callable[[], T]) -> T | None:
    """``make()``, or None with ``what`` and the error's first line logged."""
    try:
        return make()
    except Exception as exc:  # any runtime's or exporter's error: that plan is not compared
        ctx.log(f"  {what}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
        return None


def fastest(speedups: dict[str, dict[str, float]], latency_target: float | None) -> str:
    """The mode whose plan reaches the latency target (student p50 / teacher p50, within the
    gate's noise allowance) on every runtime and batch, else any, with the highest geometric
    mean speedup."""
    least = 1 / ((latency_target or 1.0) * (1 + LATENCY_NOISE))  # the gate's tolerance

    def rank(mode: str) -> tuple[bool, float]:
        got = list(speedups[mode].values())
        return all(s >= least for s in got), float(np.exp(np.mean(np.log(got))))

    return max(speedups, key=rank)


def plan_graph(
    teacher: nn.Module, plan: Plan, x: np.ndarray, outputs: tuple[str, ...] = ("logits",)
) -> onnx.ModelProto:
    """The ONNX graph the export stage would write for ``plan``, with untrained weights
    calibrated on the inputs ``x``."""
    example = as_example(x)
    student = clone_model(teacher).eval()
    prune_channels(student, plan, example)
    for name, module in student.named_modules():  # TensorRT picks sparse tactics by the values
        if (lp := plan.layer(name)) and lp.sparsity == "2:4":
            apply_2of4(module)
    fold_batchnorm(student, example)
    prepare_qat(student, plan)
    calibrate(student, x, len(x))
    return student_onnx(student, example, outputs)
