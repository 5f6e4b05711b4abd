"""Rounds of the plan search: its damage budget, searched by measuring trained students.

The search predicts each choice's damage before training, and that prediction is a poor guide
to what distillation leaves: the demo CNN's plan was predicted to cost 7.7 points and cost 0.4;
EfficientNet-Lite0's was predicted 1.3 and cost 10-20. So after each round the gate's measured
drop sets the next round's budget: a student that misses the accuracy budget narrows it (to at
most half, less where the prediction was optimistic), one with room to spare (or one that is
accurate but too slow) widens it (by budget/measured, at most 4x), and once a budget has met and
another missed, the next round takes the middle (bisection). Every round that meets the whole
budget is kept in ``rounds/<n>-<settings>/``; when rounds run out on a miss, the run ends on the
widest round that met it, so a bolder round never costs the user a student that was good enough.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from . import digest, search, untimed_pick

if TYPE_CHECKING:
    from ..context import Context

# The stages a round re-runs, whose outputs a kept round holds.
ROUND_STAGES = ["plan", "prune", "distill", "export", "verify", "bench", "report", "gate"]
MAX_WIDEN = 4.0  # a round's budget grows at most this much over the last one


def next_round(ctx: Context, fingerprint) -> bool:
    """After the gate ran: record the round, keep it if it met the budget, and set up the next
    one; False when none follows (no search, rounds used up, or the plan would not change).

    ``fingerprint(ctx)``: the plan stage's fingerprint for the new round and budget."""
    cfg = ctx.recipe.plan
    if not cfg.search:
        return False
    verdict = ctx.read_json("gate", "verdict.json")
    found = ctx.plan.search
    ctx.run.manifest.setdefault("plan_rounds", []).append(
        {
            "round": ctx.round,
            "budget_pts": found["budget_pts"],
            "predicted_drop_pts": found["predicted_drop_pts"],
            "measured_drop_pts": verdict["accuracy"]["drop_pts"],
            "passed": verdict["passed"],
            "settings": _settings(ctx),
        }
    )
    if verdict["passed"]:
        ctx.run.keep_round(_kept_name(ctx.round, ctx), ROUND_STAGES, _state(ctx))
    budget = next_budget(history(ctx), cfg.max_accuracy_drop)
    if budget is None or ctx.round + 1 >= cfg.max_rounds or not _changes_plan(ctx, budget):
        ctx.run.save()
        return False
    last = history(ctx)[-1]
    direction = "narrowing" if budget < last["budget_pts"] else "widening"
    if verdict["failures"]:
        ctx.log(f"  round {ctx.round + 1} misses its budget: {'; '.join(verdict['failures'])}")
    ctx.log(
        f"round {ctx.round + 1}: measured drop {last['measured_drop_pts']:.2f} pts (predicted "
        f"{last['predicted_drop_pts']:.2f} before training, budget {cfg.max_accuracy_drop:g}); "
        f"{direction} the search to {budget:.2f} pts for round {ctx.round + 2}"
    )
    ctx.round += 1
    ctx.budget_pts = budget
    ctx.run.manifest.update(_state(ctx))  # a resumed run goes on from this round
    ctx.run.manifest["fingerprints"]["plan"] = fingerprint(ctx)
    ctx.run.save()
    return True


def next_budget(measured: list[dict[str, Any]], max_drop: float) -> float | None:
    """The next round's damage budget from the rounds measured so far; None to stop here."""
    last = measured[-1]
    budget, drop = last["budget_pts"], last["measured_drop_pts"]
    met = [r["budget_pts"] for r in measured if r["measured_drop_pts"] <= max_drop]
    missed = [r["budget_pts"] for r in measured if r["measured_drop_pts"] > max_drop]
    if drop > max_drop:  # narrow: bisect toward the widest budget that met, if one did
        if met:
            return (max(met) + budget) / 2
        return min(budget / 2, last["predicted_drop_pts"] * max_drop / drop)
    if last["passed"] and drop > max_drop / 2:
        return None  # most of the budget spent: keep this student
    if missed:  # widen: bisect toward the narrowest budget that missed
        return (budget + min(missed)) / 2
    return budget * min(MAX_WIDEN, max_drop / max(drop, max_drop / MAX_WIDEN))


def restore_best(ctx: Context, why: str) -> bool:
    """After a last round that missed the budget or failed (``why``): put back the widest kept
    round that met it."""
    kept = [r for r in history(ctx) if r["passed"]]
    if not kept:
        return False
    best = max(kept, key=lambda r: r["budget_pts"])
    ctx.log(
        f"kept round {best['round'] + 1}'s student, which met the budget (measured drop "
        f"{best['measured_drop_pts']:.2f} pts); round {ctx.round + 1}: {why}"
    )
    state = ctx.run.restore_round(_kept_name(best["round"], ctx))
    ctx.round, ctx.budget_pts = state["plan_round"], state["plan_budget_pts"]
    return True


def _settings(ctx: Context) -> str:
    """Everything a round's verdict depends on but its plan: rounds run under other settings
    (another budget, teacher, data) are not compared with this one."""
    settings = {k: v for k, v in ctx.run.manifest["fingerprints"].items() if k != "plan"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def history(ctx: Context) -> list[dict[str, Any]]:
    """The rounds measured so far under this run's settings."""
    return [r for r in ctx.run.manifest.get("plan_rounds", []) if r["settings"] == _settings(ctx)]


def _kept_name(round_: int, ctx: Context) -> str:
    """Kept rounds are named by settings too: a round run under others never stands in."""
    return f"{round_}-{_settings(ctx)}"


def _state(ctx: Context) -> dict[str, Any]:
    return {"plan_round": ctx.round, "plan_budget_pts": ctx.budget_pts}


def _changes_plan(ctx: Context, budget: float) -> bool:
    """Whether the search within ``budget`` could pick another plan: a round that re-trains the
    same plan measures nothing new. Plans already compared, one of them the current pick, give
    the same pick; with nothing timed whole, the table's own (``mixed``) plan is the pick."""
    found = search(ctx, budget)
    if not found:  # nothing to compress within it
        return False
    if not ctx.plan.search.get("whole"):
        return digest(found[untimed_pick(found)]) != digest(ctx.plan)
    new = {digest(plan) for plan in found.values()}
    return not (
        new <= set(ctx.plan.search.get("compared", {}).values()) and digest(ctx.plan) in new
    )
