"""Stage 2, distill: quantization-aware distillation of the pruned student against the teacher."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..context import Context
from ..evaluate import predict, torch_fn
from ..models import load_student, save_student
from ..quant import fold_batchnorm, prepare_qat
from .checkpoint import NAME as CHECKPOINT
from .checkpoint import EpochCheckpoint
from .train import distill, torch_threads


def run(ctx: Context) -> Context:
    student, ckpt = load_student(
        ctx.teacher, ctx.path_of("prune", "student.pt"), ctx.plan, ctx.example
    )
    fold_batchnorm(student, ctx.example)
    prepare_qat(student, ctx.plan)
    checkpoint = EpochCheckpoint(  # a killed run resumes after its last finished epoch
        ctx.run.path / ctx.stage / CHECKPOINT,
        json.dumps(ctx.run.stage(ctx.stage)["inputs"], sort_keys=True),
    )
    stage_dir = ctx.run.path / ctx.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    with (
        torch_threads(ctx.recipe.distill.threads),
        tempfile.TemporaryDirectory(prefix=".teacher-outputs-", dir=stage_dir) as scratch,
    ):  # the teacher's training outputs, memory-mapped: not all held in memory
        result = distill(
            student, ctx.teacher, ctx.data, ctx.task, ctx.recipe.distill, ctx.log, ctx.progress,
            checkpoint, Path(scratch),
        )  # fmt: skip
    checkpoint.clear()
    save_student(student, ctx.out("student.pt"), ckpt["pruning"], folded=True, quantized=True)
    test = ctx.data.test
    teacher_out = predict(torch_fn(ctx.teacher), test.x)
    ctx.metrics.update(
        result,
        teacher_accuracy=ctx.task.score(teacher_out, test, teacher_out),
        student_accuracy=ctx.task.score(predict(torch_fn(student), test.x), test, teacher_out),
        labelled=ctx.data.labelled,
    )
    ctx.log(
        f"  test accuracy: teacher {ctx.metrics['teacher_accuracy']:.1%}, "
        f"student {ctx.metrics['student_accuracy']:.1%}"
    )
    return ctx
