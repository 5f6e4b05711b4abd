"""Stage 4, verify: every export must agree with the PyTorch model it came from, on held-out data.

A disagreement counts as agreement only where it is a near-tie the export's own small error
explains (``evaluate.near_ties``); an export with large errors gets no such allowance. An export
fails when even the top of its agreement's 95% Wilson interval is below ``min_agreement``: on 30
test examples one flip (integer kernels round differently from PyTorch's float simulation) is
3.3 points, and cannot tell a 99%-faithful export from a broken one; two can.
CPU runtimes run in full f32 here (``precision="exact"``), so agreement measures the export and
not a runtime's reduced-precision default (TensorRT engines keep the precisions fixed at build); bench measures those defaults against the same references,
which verify saves (``reference.npz``).

An export below ``min_agreement`` is still faithful when the PyTorch model itself is no closer to
exact arithmetic: its float64 run is the reference both approximate, and an export whose
disagreement with it is at most twice PyTorch float32's own differs from PyTorch only as one
float32 order of sums differs from another. A trained W8A8 MiniLM is such a model: a change in
the last bit of a sum flips an int8 activation code, and the flips cascade through 6 layers, so
PyTorch in float32 and in float64 agree at cosine 0.995 and ONNX Runtime's export with both at
0.995 (0.998 with float32 PyTorch). The run says so: a student that sensitive is a deployment
risk the user must see.
"""

from __future__ import annotations

import numpy as np
import torch

from ..atomic import atomic_path, write_json
from ..budget import wilson
from ..context import Context
from ..errors import StageError
from ..evaluate import RUNTIME_BATCH, predict, torch_fn
from ..models import load_student
from ..models.clone import clone_model
from ..runtimes import get_runtime


def run(ctx: Context) -> Context:
    student, _ = load_student(
        ctx.teacher, ctx.path_of("distill", "student.pt"), ctx.plan, ctx.example
    )
    test = ctx.data.test
    reference = {
        "teacher": predict(torch_fn(ctx.teacher), test.x),
        "student": predict(torch_fn(student), test.x),
    }
    with atomic_path(ctx.out("reference.npz")) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **reference)
    threshold = ctx.recipe.verify.min_agreement
    models, exact = {"teacher": ctx.teacher, "student": student}, {}

    def against_float64(name: str, pred: np.ndarray) -> dict[str, float]:
        """The export's and PyTorch float32's agreement with the model run in float64."""
        if name not in exact:
            double = clone_model(models[name]).double()
            exact[name] = predict(torch_fn(double, float_dtype=torch.float64), test.x)
        return {
            "export": ctx.task.agreement(pred, exact[name])["agreement"],
            "pytorch": ctx.task.agreement(reference[name], exact[name])["agreement"],
        }

    results = []
    for art in ctx.read_json("export", "artifacts.json"):
        row = {
            "model": art["model"],
            "runtime": art["runtime"],
            "status": art["status"],
            "reason": art["reason"],
            "inference_precision": None,
        }
        if art["status"] == "ok":
            session = get_runtime(art["runtime"]).open(
                ctx.run.path / art["path"], precision="exact"
            )
            pred = predict(session.run, test.x, batch=RUNTIME_BATCH)
            row["inference_precision"] = session.inference_precision()
            row.update(ctx.task.agreement(pred, reference[art["model"]]))
            row["accuracy"] = ctx.task.score(pred, test, reference["teacher"])
            lo, hi = row["agreement_interval"] = agreement_interval(row, len(test))
            if hi < threshold:
                row["float64"] = against_float64(art["model"], pred)
            if hi < threshold and rounding_explains(row["float64"]):
                row["reason"] = (
                    f"{ctx.task.measure} {row['agreement']:.2%} with PyTorch, below "
                    f"{threshold:.0%}, but the model amplifies float rounding: PyTorch float32 "
                    f"agrees with its own float64 run at {row['float64']['pytorch']:.2%}, the "
                    f"export at {row['float64']['export']:.2%}"
                )
                ctx.log(f"  {art['model']} on {art['runtime']}: {row['reason']}")
            elif hi < threshold:
                row.update(
                    status="failed",
                    reason=f"{ctx.task.shortfall(row)}: 95% interval {lo:.1%}-{hi:.1%} on "
                    f"{len(test)} examples, below {threshold:.0%}",
                )
            ctx.log(
                f"  {art['model']:<8}{art['runtime']:<12} agreement {row['agreement']:.2%}  "
                f"max |err| {row['max_abs_error']:.2e}"
            )
        results.append(row)
    summary = {
        "split": "test",
        "examples": len(test),
        "pytorch": {
            m: {"accuracy": ctx.task.score(pred, test, reference["teacher"])}
            for m, pred in reference.items()
        },
        "results": results,
    }
    write_json(ctx.out("verify.json"), summary)
    ctx.metrics.update(results=results)
    failed = [
        f"{r['model']}/{r['runtime']} ({r['reason']})" for r in results if r["status"] == "failed"
    ]
    if failed:
        raise StageError(
            f"exports disagree with PyTorch: {'; '.join(failed)}; see {ctx.out('verify.json')}"
        )
    return ctx


def rounding_explains(float64: dict[str, float]) -> bool:
    """Whether an export is as close to the model run in float64 as PyTorch float32 is: its
    disagreement with it at most twice PyTorch's (one order of float sums against another)."""
    return 1 - float64["export"] <= 2 * (1 - float64["pytorch"])


def agreement_interval(row: dict, examples: int) -> list[float]:
    """95% Wilson interval of an export's agreement (near-ties counted as agreeing): the export
    fails only when its top is below ``min_agreement``. For a mean cosine similarity (within
    [0, 1] here) it is conservative: no variable in [0, 1] of mean p varies more than p(1 - p)."""
    return list(wilson(max(row["agreement_beyond_ties"], 0.0), examples))
