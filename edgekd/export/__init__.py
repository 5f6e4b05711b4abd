"""Stage 3, export: ONNX for teacher and student, then each target runtime's artifact from it."""

from __future__ import annotations

import onnx

from ..atomic import atomic_path, write_json
from ..context import Context
from ..evaluate import max_batch
from ..models import load_student
from ..runtimes import get_runtime
from .torch_onnx import export_float, student_onnx

MODELS = ("teacher", "student")


def run(ctx: Context) -> Context:
    student, _ = load_student(
        ctx.teacher, ctx.path_of("distill", "student.pt"), ctx.plan, ctx.example
    )
    protos = {
        "teacher": export_float(ctx.teacher, ctx.example, ctx.task.outputs),
        "student": student_onnx(student, ctx.example, ctx.task.outputs),
    }
    onnx_paths = {}
    for model, proto in protos.items():
        onnx_paths[model] = ctx.out(f"{model}.onnx")
        with atomic_path(onnx_paths[model]) as tmp:
            onnx.save(proto, tmp)
    artifacts = []
    largest = max_batch(ctx.recipe.bench.batches)
    for name in dict.fromkeys(rt.name for t in ctx.targets for rt in t.runtimes):
        runtime = get_runtime(name)
        reason = runtime.unavailable_reason()
        for model in MODELS:
            entry = {
                "model": model,
                "runtime": name,
                "path": None,
                "size_bytes": None,
                "status": "ok",
                "reason": None,
            }
            if reason:
                entry.update(status="skipped", reason=reason)
            else:
                dest = ctx.out(f"{name}/{model}{runtime.artifact_suffix}")
                path = runtime.build(onnx_paths[model], dest, largest)
                files = sorted(dest.parent.glob(f"{dest.stem}.*"))  # e.g. OpenVINO's .xml + .bin
                ctx.outputs.extend(f for f in files if f not in ctx.outputs)
                entry.update(
                    path=str(path.relative_to(ctx.run.path)),
                    size_bytes=sum(f.stat().st_size for f in files),
                )
            artifacts.append(entry)
        if reason:
            ctx.log(f"  {name}: skipped ({reason})")
    write_json(ctx.out("artifacts.json"), artifacts)
    stored = {i.name for i in protos["student"].graph.initializer}
    ctx.metrics.update(
        onnx_size_bytes={m: p.stat().st_size for m, p in onnx_paths.items()},
        artifacts=artifacts,
        # the planned tables the export stores as integer rows; the exporter may have folded
        # others into constants (fixed position ids), which stay float
        int8_tables=[t for t in ctx.plan.embeddings if f"{t}.weight_quantized" in stored],
    )
    ctx.log(
        "  ONNX size: teacher {teacher:,} B, student {student:,} B".format(
            **ctx.metrics["onnx_size_bytes"]
        )
    )
    return ctx
