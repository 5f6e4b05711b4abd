"""Stage 5, bench: teacher and student latency per target runtime, interleaved on the same inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from ..atomic import atomic_path, write_json
from ..context import Context
from ..environment import describe_environment
from ..errors import EdgeKDError, StageError
from ..evaluate import max_batch
from ..runtimes import get_runtime
from ..runtimes.floor import null_graph
from .reality import compare_with_plan, deployed_check
from .timing import LatencyStats, batch_of, measure_interleaved, paired_ratio


def run(ctx: Context) -> Context:
    cfg = ctx.recipe.bench
    load_before = _load_average()
    artifacts = {(a["model"], a["runtime"]): a for a in ctx.read_json("export", "artifacts.json")}
    checks = {
        (r["model"], r["runtime"]): r for r in ctx.read_json("verify", "verify.json")["results"]
    }
    precision = {"teacher": "fp32", "student": student_precision(ctx)}
    reference_file = ctx.path_of("verify", "reference.npz")
    if not reference_file.is_file():
        raise StageError(f"{reference_file} is missing; run 'edgekd verify {ctx.run.path}' first")
    with np.load(reference_file) as saved:
        reference = dict(saved)
    gate = ctx.recipe.verify.min_agreement
    floor_onnx = _floor_graph(ctx)
    results, runtimes, executed, layers, mismatches, floors = [], {}, [], [], [], []
    for target in ctx.targets:
        for rt in target.runtimes:
            pair = {m: artifacts.get((m, rt.name)) for m in precision}
            reason = target.unavailable_reason() or next(
                (a["reason"] for a in pair.values() if a is None or a["status"] != "ok"), None
            )
            sessions, deployed, floor = {}, {}, None
            if reason is None:
                runtime = get_runtime(rt.name)
                runtimes[rt.name] = runtime.describe()
                sessions = {
                    m: runtime.open(ctx.run.path / a["path"], cfg.threads, "deploy")
                    for m, a in pair.items()
                }
            if sessions:
                executed += [
                    {"target": target.name, "runtime": rt.name, "model": m, "kernels": s.executed()}
                    for m, s in sessions.items()
                ]
                rows, found = compare_with_plan(ctx.plan, target.name, rt, sessions["student"])
                layers += rows
                mismatches += found
                deployed = {
                    m: deployed_check(s, ctx.data.test.x, reference[m], ctx.task)
                    for m, s in sessions.items()
                }
                _log_reality(ctx, f"{target.name}/{rt.name}", deployed, found, gate)
                floor = _floor_session(ctx, f"{target.name}/{rt.name}", runtime, floor_onnx)
            timed = _trials(ctx, runtime, pair, sessions, floor) if sessions else {}
            for batch in cfg.batches:
                stats = timed.get(batch, {})
                # teacher / student, paired by round
                speedup = (
                    paired_ratio(stats["teacher"], stats["student"]).to_dict() if stats else None
                )
                if "floor" in stats:
                    floors.append(
                        {"target": target.name, "runtime": rt.name, "batch": batch,
                         "p50_ms": stats["floor"].p50}
                    )  # fmt: skip
                for model in precision:
                    check = checks.get((model, rt.name), {})
                    row = {
                        "model": model,
                        "runtime": rt.name,
                        "target": target.name,
                        "precision": precision[model],
                        "batch": batch,
                        "latency_ms": None,
                        "throughput_ips": None,
                        "size_bytes": (pair[model] or {}).get("size_bytes"),
                        "accuracy": check.get("accuracy"),
                        "agreement": check.get("agreement"),
                        "status": "skipped" if reason else "ok",
                        "reason": reason,
                        "inference_precision": deployed.get(model, {}).get("inference_precision"),
                        "deployed_agreement": deployed.get(model, {}).get("agreement"),
                    }
                    if model in stats:
                        s = stats[model]
                        row.update(
                            latency_ms={"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean},
                            throughput_ips=s.throughput(batch),
                            runs=s.runs,
                        )
                    if model == "student" and speedup:
                        row["speedup"] = speedup
                    results.append(row)
                if speedup:
                    ctx.log(
                        f"  {target.name}/{rt.name} batch {batch}: teacher {stats['teacher'].p50:.3f} ms, "
                        f"student {stats['student'].p50:.3f} ms (teacher/student "
                        f"{speedup['ratio']:.2f}, 95% interval {_interval(speedup)})"
                        + ("" if speedup["steady"] else f"; {UNSTEADY}")
                    )
            if reason:
                ctx.log(f"  {target.name}/{rt.name}: skipped ({reason})")
    write_json(
        ctx.out("bench.json"),
        {
            "results": results,
            "executed": executed,
            "layers": layers,
            "mismatches": mismatches,
            "floors": floors,
            "runtimes": runtimes,
            "environment": describe_environment(),
            # 1-minute load average before and after timing: a busy machine explains a wide interval
            "load_average": {"before": load_before, "after": _load_average()},
        },
    )
    ctx.metrics.update(
        rows=len(results),
        skipped=sum(r["status"] == "skipped" for r in results),
        mismatches=len(mismatches),
    )
    return ctx


UNSTEADY = (
    "too noisy to rank the models: re-run on an idle machine or with a larger bench.min_seconds"
)


TRIALS = 3  # measurements per runtime, each with freshly opened sessions


def _trials(ctx: Context, runtime, pair: dict, first: dict, floor) -> dict[int, dict]:
    """Per batch, each model's latency over ``TRIALS`` measurements, the first with the
    sessions already open and each other with the models opened anew (the time budget split
    among them): the same two models reopened moved ONNX Runtime's b32 ratio by 4% here, more
    than one measurement's own spread, so the interval must see more than one opening."""
    cfg = ctx.recipe.bench
    trials: dict[int, list[dict]] = {batch: [] for batch in cfg.batches}
    for trial in range(TRIALS):
        sessions = first if trial == 0 else {
            m: runtime.open(ctx.run.path / a["path"], cfg.threads, "deploy") for m, a in pair.items()
        }  # fmt: skip
        for batch in cfg.batches:
            x = batch_of(ctx.data.test.x, batch)
            calls = {m: s.bound(x) for m, s in sessions.items()}
            if floor is not None:
                calls["floor"] = floor.bound(x)
            trials[batch].append(measure_interleaved(
                calls, warmup=cfg.warmup, min_runs=-(-cfg.min_runs // TRIALS),
                min_seconds=cfg.min_seconds / TRIALS,
            ))  # fmt: skip
    return {batch: {m: LatencyStats.merge([t[m] for t in got]) for m in got[0]}
            for batch, got in trials.items()}  # fmt: skip


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none: Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _interval(speedup: dict) -> str:
    low, high = speedup["interval"]
    return f"{low:.2f}-{high:.2f}"


def _floor_graph(ctx: Context) -> Path | None:
    """The teacher's call floor graph (``runtimes/floor.py``), or None (logged) when it has none."""
    null = null_graph(onnx.load(ctx.path_of("export", "teacher.onnx"), load_external_data=False))
    if null is None:
        ctx.log(
            "  no call floor timed: the teacher needs one input, and its input and outputs a "
            "batch axis and a static, non-empty shape past it"
        )
        return None
    path = ctx.out("floor.onnx")
    with atomic_path(path) as tmp:
        onnx.save(null, tmp)
    return path


def _floor_session(ctx: Context, where: str, runtime, floor_onnx: Path | None):
    """The floor graph opened as deployed, or None (logged) when this runtime cannot build it."""
    if floor_onnx is None:
        return None
    dest = ctx.out(f"floor-{where.replace('/', '-')}{runtime.artifact_suffix}")
    try:
        built = runtime.build(floor_onnx, dest, max_batch(ctx.recipe.bench.batches))
        session = runtime.open(built, ctx.recipe.bench.threads, "deploy")
        session.run(ctx.data.test.x[:1])  # one that fails here must not stop the timing
        return session
    except EdgeKDError as exc:
        ctx.log(f"  {where}: no call floor timed ({exc.message})")
        return None


def _log_reality(ctx: Context, where: str, deployed: dict, mismatches: list, gate: float) -> None:
    for model, check in deployed.items():
        note = ""
        if check["agreement"] < gate:
            note = f" (below the {gate:.0%} gate: this runtime's default precision, not the export)"
        ctx.log(
            f"  {where} {model}: runs in {check['inference_precision']}; {ctx.task.measure} "
            f"with PyTorch {check['agreement']:.2%}{note}"
        )
    for m in mismatches:
        ctx.log(
            f"  {where} plan vs reality: {m['layer'] or m['what']} planned {m['planned']}, "
            f"ran {m['executed']}" + (f" ({m['kernel']})" if m.get("kernel") else "")
        )


def student_precision(ctx: Context) -> str:
    """e.g. ``w4a8+2:4``; ``mixed`` when layers differ, so a row never claims more than it runs."""
    bits = {lp.weight_bits for lp in ctx.plan.layers}
    acts = {lp.activation_bits for lp in ctx.plan.layers}
    w = "mixed" if len(bits) > 1 else ("fp32" if None in bits else f"w{bits.pop()}")
    a = "" if None in acts or len(acts) != 1 or w == "fp32" else f"a{acts.pop()}"
    sparse = "+2:4" if any(lp.sparsity == "2:4" for lp in ctx.plan.layers) else ""
    return f"{w}{a}{sparse}"
