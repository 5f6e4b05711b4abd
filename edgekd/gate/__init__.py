"""Stage 7, gate: the run fails (exit code 5) when the student misses the user's budget.

The verdict is the report's ``budget`` section (``edgekd/budget.py``), so the report that
explains a failure is already written when the gate refuses the student.
"""

from __future__ import annotations

from ..atomic import write_json
from ..context import Context
from ..errors import BudgetMiss
from ..plan import choice_of, part_labels


def run(ctx: Context) -> Context:
    budget = ctx.read_json_file(ctx.run.path / "report.json")["budget"]
    accuracy = budget["accuracy"]
    lo, hi = accuracy["student_interval"]
    what = "accuracy" if ctx.task.kind == "classification" else ctx.task.measure
    ctx.log(
        f"  {what}: teacher {accuracy['teacher']:.2%}, student {accuracy['student']:.2%} "
        f"(95% interval {lo:.1%}-{hi:.1%} on {accuracy['examples']} test examples), drop "
        f"{accuracy['drop_pts']:.2f} pts, budget {budget['max_accuracy_drop']:g} pts"
    )
    if not accuracy["enough_examples"]:
        ctx.log(
            f"  the test split is too small to judge a {budget['max_accuracy_drop']:g}-pt budget: "
            f"about {accuracy['examples_needed']} examples would be needed"
        )
    if not budget["latency_checked"]:
        ctx.log("  latency budget not checked: no target runtime ran on this machine")
    write_json(ctx.out("verdict.json"), budget)  # written pass or fail, for scripts and CI
    ctx.metrics.update(passed=budget["passed"], failures=budget["failures"])
    if budget["failures"]:
        advice = []
        missed_accuracy = accuracy["drop_pts"] > budget["max_accuracy_drop"]
        if missed_accuracy:
            advice.append(f"relax the layers that hurt most alone: {_most_sensitive(ctx)}")
        slow = {f"{r['target']}/{r['runtime']}" for r in budget["latency"] if not r["ok"]}
        if slow:
            advice.append(f"layers that run as float anyway: {_dequantized(ctx, slow)}")
        raise BudgetMiss(
            f"the student misses its budget: {'; '.join(budget['failures'])}; "
            f"{'; '.join(advice)}; or loosen plan.max_accuracy_drop / plan.latency_target "
            f"(see {ctx.run.path / 'report.md'})"
        )
    return ctx


def _most_sensitive(ctx: Context) -> str:
    """The parts of the student's choices that cost most alone, measured before training."""
    chosen = {(lp.name, part) for lp in ctx.plan.layers for part in part_labels(choice_of(lp))}
    rows = ctx.read_json("sensitivity", "sensitivity.json")["layers"]
    parts = sorted(
        (r for r in rows if (r["layer"], r["choice"]) in chosen), key=lambda r: -r["kl"]
    )[:3]
    return (
        ", ".join(f"{r['layer']} {r['choice']} (agreement {r['agreement']:.1%})" for r in parts)
        or "none measured (distill longer, or check the data)"
    )


def _dequantized(ctx: Context, runtimes: set[str]) -> str:
    """Layers whose low-bit weights a slow runtime dequantizes: they cost time, not save it."""
    names = [
        lp.name
        for lp in ctx.plan.layers
        if lp.weight_bits is not None and any(lp.kernels.get(k) == "float" for k in runtimes)
    ]
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "") or (
        "none (the formats run as planned; prune channels or choose int8 where it is faster)"
    )
