"""``report.json``: one document gathering what every stage measured (fields are only ever added)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..budget import judge
from ..context import Context
from ..plan import Plan, predicted_latency, rounds


def assemble(ctx: Context) -> dict[str, Any]:
    stages = ctx.run.manifest["stages"]
    prune, distill = stages["prune"]["metrics"], stages["distill"]["metrics"]
    verify = ctx.read_json("verify", "verify.json")
    bench = ctx.read_json("bench", "bench.json")
    sizes = stages["export"]["metrics"]["onnx_size_bytes"]
    cfg = ctx.run.config
    report = {
        "edgekd": __version__,
        "run_dir": str(ctx.run.path),
        "config": cfg,
        "task": ctx.task.to_dict(),
        "accuracy_is": _accuracy_is(ctx),
        "teacher": {
            "spec": cfg["teacher"],
            "params": prune["teacher_params"],
            "accuracy": verify["pytorch"]["teacher"]["accuracy"],
            "size_bytes": sizes["teacher"],
            "precision": "fp32",
        },
        "student": {
            "params": prune["student_params"],
            "nonzero_params": prune["student_nonzero_params"],
            "accuracy": verify["pytorch"]["student"]["accuracy"],
            "accuracy_before_distill": prune["accuracy_before_distill"],
            "size_bytes": sizes["student"],
            "compression_ratio": sizes["teacher"] / sizes["student"],
            "precision": _precision(bench),
            "sparse_2of4_layers": prune["sparse_2of4_layers"],
            "channels": prune["channels"],  # layer -> [teacher, student] output channels
            "heads": prune.get("heads", {}),  # attention layer -> [teacher, student] heads
            "int8_tables": stages["export"]["metrics"].get("int8_tables", []),
            "distill": {
                k: distill[k]
                for k in (
                    "epochs",
                    "epochs_run",
                    "lr",
                    "lr_probe",
                    "best_val_accuracy",
                    "best_epoch",
                    "val_accuracy_before_training",
                    "history",
                )
            },
        },
        "plan": ctx.plan.to_dict(),
        "verify": verify["results"],
        "results": bench["results"],
        "executed": bench["executed"],
        "layers_executed": bench["layers"],
        "mismatches": bench["mismatches"],
        "inference_precision": inference_precision(bench["results"]),
        "deployed_below_gate": deployed_below_gate(
            bench["results"], ctx.recipe.verify.min_agreement
        ),
        "speedups": speedups(bench["results"], bench.get("floors", [])),
        "environment": {
            **bench["environment"],
            "runtimes": bench["runtimes"],
            "load_average": bench.get("load_average"),
        },
        "stage_seconds": {name: rec.get("seconds") for name, rec in stages.items()},
        "test_examples": verify["examples"],
        "sensitivity": ctx.read_json("sensitivity", "sensitivity.json"),
        "layer_latency": ctx.read_json("latency", "table.json"),
    }
    report["latency_prediction"] = prediction_vs_measurement(
        report["layer_latency"]["layers"], ctx.plan, report["speedups"]
    )
    report["budget"] = judge(report, ctx.recipe.plan)
    report["budget"]["earlier_rounds"] = rounds.history(ctx)  # this one's verdict is above
    return report


def prediction_vs_measurement(layers: list[dict], plan: Plan, measured: list[dict]) -> list[dict]:
    """Per target runtime and batch: the student/teacher ratio the per-layer table predicts for
    the compressible layers, the plan's whole graph timed before training, and the ratio bench
    measured on the trained student."""
    ratios = {f"{s['target']}/{s['runtime']} b{s['batch']}": 1 / s["speedup_p50"] for s in measured}
    whole = plan.search.get("whole", {}).get(plan.search.get("mode"), {})
    return [
        {
            "where": key,
            **totals,
            "whole_student_over_teacher": 1 / whole[key] if key in whole else None,
            "measured_student_over_teacher": ratios.get(key),
        }
        for key, totals in predicted_latency(layers, plan).items()
    ]


def speedups(results: list[dict], floors: list[dict]) -> list[dict]:
    """Teacher / student latency per target, runtime and batch (measured in the same interleaved
    run: the median of the per-round ratios, with its 95% interval; a bench from before rounds
    were paired gives teacher p50 / student p50 and no interval), and teacher p50 / the
    runtime's call floor (``runtimes/floor.py``): the most any student
    could gain there (None where no floor was timed)."""
    floor = {(f["target"], f["runtime"], f["batch"]): f["p50_ms"] for f in floors}
    rows = {
        (r["target"], r["runtime"], r["batch"], r["model"]): r
        for r in results
        if r["status"] == "ok"
    }
    out = []
    for (target, runtime, batch, model), row in rows.items():
        student = rows.get((target, runtime, batch, "student"))
        if model == "teacher" and student:
            out.append(
                {
                    "target": target,
                    "runtime": runtime,
                    "batch": batch,
                    "speedup_p50": student.get("speedup", {}).get(
                        "ratio", row["latency_ms"]["p50"] / student["latency_ms"]["p50"]
                    ),
                    "speedup_interval": student.get("speedup", {}).get("interval"),
                    "steady": student.get("speedup", {}).get("steady", True),
                    "floor_ms": floor.get((target, runtime, batch)),
                    "floor_speedup": row["latency_ms"]["p50"] / floor[(target, runtime, batch)]
                    if (target, runtime, batch) in floor
                    else None,
                }
            )
    return out


def inference_precision(results: list[dict]) -> dict[str, dict[str, str]]:
    """``target/runtime`` -> model -> the precision the runtime computed in when benchmarked."""
    out: dict[str, dict[str, str]] = {}
    for r in results:
        if r["inference_precision"]:
            out.setdefault(f"{r['target']}/{r['runtime']}", {})[r["model"]] = r[
                "inference_precision"
            ]
    return out


def deployed_below_gate(results: list[dict], gate: float) -> list[dict]:
    """Runtimes whose default precision moves top-1 agreement with PyTorch below the verify gate:
    a fact about the device (verify already passed in f32), which the report must show."""
    seen, out = set(), []
    for r in results:
        key = (r["target"], r["runtime"], r["model"])
        if (
            r["deployed_agreement"] is not None
            and r["deployed_agreement"] < gate
            and key not in seen
        ):
            seen.add(key)
            out.append(
                {
                    "target": r["target"],
                    "runtime": r["runtime"],
                    "model": r["model"],
                    "inference_precision": r["inference_precision"],
                    "agreement": r["deployed_agreement"],
                    "gate": gate,
                }
            )
    return out


def _accuracy_is(ctx: Context) -> str:
    if ctx.task.kind == "outputs":
        return "cosine similarity to the teacher's outputs (the worst output's mean)"
    if ctx.data.labelled:
        return "top-1 accuracy on the test split"
    return "top-1 agreement with the teacher (the data has no labels)"


def _precision(bench: dict) -> str:
    return next((r["precision"] for r in bench["results"] if r["model"] == "student"), "unknown")
