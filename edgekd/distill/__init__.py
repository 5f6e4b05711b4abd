"""Stage 2, distill: quantization-aware distillation of the pruned student against the teacher."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch import nn

from ..context import Context
from ..data.inputs import Example
from ..evaluate import predict, torch_fn
from ..models import load_student, model_fingerprint, save_student
from ..plan import Plan
from ..quant import fold_batchnorm, prepare_qat
from ..ranks import Job
from .checkpoint import NAME as CHECKPOINT
from .checkpoint import EpochCheckpoint
from .train import distill, torch_threads


def prepared_student(
    teacher: nn.Module, path: Path, plan: Plan, example: Example
) -> tuple[nn.Module, dict]:
    """The pruned student at ``path``, its BatchNorms folded and its layers quantized as
    ``plan`` says, ready to train; and its checkpoint."""
    student, ckpt = load_student(teacher, path, plan, example)
    fold_batchnorm(student, example)
    prepare_qat(student, plan)
    return student, ckpt


def run(ctx: Context) -> Context:
    prune_path = ctx.path_of("prune", "student.pt")
    student, ckpt = prepared_student(ctx.teacher, prune_path, ctx.plan, ctx.example)
    checkpoint = EpochCheckpoint(  # a killed run resumes after its last finished epoch
        ctx.run.path / ctx.stage / CHECKPOINT,
        json.dumps(ctx.run.stage(ctx.stage)["inputs"], sort_keys=True),
    )
    stage_dir = ctx.run.path / ctx.stage
    stage_dir.mkdir(parents=True, exist_ok=True)

    def job() -> Job:  # what the other ranks of a torchrun need to train it too
        keys = ("teacher", "weights", "trust_checkpoint", "data")
        return Job(
            {k: ctx.run.config[k] for k in keys}, ctx.recipe.data.transform,
            model_fingerprint(ctx.teacher), ctx.data.fingerprint(), prune_path, ctx.plan,
            ctx.task, ctx.recipe.distill,
        )  # fmt: skip

    with (
        ctx.ranks.job(job),
        torch_threads(ctx.recipe.distill.threads),
        tempfile.TemporaryDirectory(prefix=".teacher-outputs-", dir=stage_dir) as scratch,
    ):  # the teacher's training outputs, memory-mapped: not all held in memory
        result = distill(
            student, ctx.teacher, ctx.data, ctx.task, ctx.recipe.distill, ctx.log, ctx.progress,
            checkpoint, Path(scratch), ctx.ranks,
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
