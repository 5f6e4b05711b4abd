"""Stage 1, prune: Torch-Pruning channel removal, then 2:4 masks on the layers the plan marks."""

from __future__ import annotations

from .. import models  # module import: models.student imports prune's primitives
from ..context import Context
from ..evaluate import count_params, predict, torch_fn
from ..models.clone import clone_model
from .sparsity import apply_2of4
from .structured import kept_channels, kept_heads, prune_channels


def run(ctx: Context) -> Context:
    student = clone_model(ctx.teacher).eval()
    decisions = prune_channels(student, ctx.plan, ctx.example)
    sparse = []
    for name, module in student.named_modules():
        lp = ctx.plan.layer(name)
        if lp and lp.sparsity == "2:4":
            apply_2of4(module)
            sparse.append(name)
    models.save_student(student, ctx.out("student.pt"), decisions, folded=False, quantized=False)
    test = ctx.data.test
    teacher_out = predict(torch_fn(ctx.teacher), test.x)
    ctx.metrics.update(
        teacher_params=count_params(ctx.teacher),
        student_params=count_params(student),
        student_nonzero_params=sum(int((p != 0).sum()) for p in student.parameters()),
        pruned_groups=len(decisions),
        channels=kept_channels(ctx.teacher, student),
        heads=kept_heads(ctx.teacher, student),
        sparse_2of4_layers=sparse,
        accuracy_before_distill=ctx.task.score(
            predict(torch_fn(student), test.x), test, teacher_out
        ),
    )
    ctx.log(
        f"  params {ctx.metrics['teacher_params']:,} -> {ctx.metrics['student_params']:,}, "
        f"2:4 on {len(sparse)} layers, accuracy before distillation "
        f"{ctx.metrics['accuracy_before_distill']:.1%}"
    )
    return ctx
