"""Stage 3, plan: one choice per layer, written to ``plan/plan.json``, which every later stage,
the report and ``inspect`` read.

A fixed preset's plan is the recipe resolved for the targets. A search (``plan.search``) turns
the sensitivity and latency tables into an option per candidate (predicted damage as KL,
cost in the objective's units) and picks one per layer with ``search.greedy``.

Damage is the candidate's KL divergence from the teacher, summed over its parts (channels, 2:4,
format) and over layers, and turned into points of top-1 agreement only for the whole plan, by
``damage.DamageModel`` (KL adds up across layers; points do not). Latency cost is each layer's
measured time as a fraction of the float layers' total, averaged over the runtimes and batch
sizes timed.

Layer times do not add up where precision switches: a runtime pays at every float/int8 boundary
(``whole.py``). So the search runs once per precision mode, and the plans that differ are timed
whole against the teacher; the fastest is the plan.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_json
from ..errors import BudgetMiss, StageError
from .damage import LOGITS, DamageModel, RelativeErrorDamage
from .resolve import (
    CHOICE_FIELDS,
    COMPRESSIBLE,
    LayerPlan,
    Plan,
    Traced,
    choice_label,
    choice_of,
    fit_blocks_to_pruning,
    format_label,
    kept_shape,
    part_labels,
    resolve_plan,
    sparsity_ineligible,
    trace_layers,
    with_choice,
)
from .search import Option, greedy

if TYPE_CHECKING:  # context.py imports the plan types from here
    from ..context import Context

__all__ = [
    "CHOICE_FIELDS", "COMPRESSIBLE", "MODES", "LayerPlan", "Plan", "Traced", "below", "candidates", "choice_label",
    "choice_of", "choices", "digest",
    "format_label", "kept_shape", "part_labels", "predicted_latency",
    "resolve_plan", "run", "search", "searched", "sparsity_ineligible", "trace_layers", "untimed_pick",
]  # fmt: skip


# "mixed": each layer's candidates as the tables rank them; "float": no int8 activations (channels
# and weight-only formats); "int8": one int8 region (``_relax_int8``), then channels.
MODES = ("mixed", "float", "int8")


def run(ctx: Context) -> Context:
    if ctx.recipe.plan.search:
        plans = search(ctx, ctx.budget_pts)
        if not plans:
            budget = ctx.budget_pts or _default_budget(ctx.recipe.plan, ctx.round)
            raise BudgetMiss(
                f"no plan compresses any layer within {budget:.2f} pts of predicted damage: every "
                "candidate of every layer costs more alone; loosen plan.max_accuracy_drop or "
                "plan.recovery"
            )
        plan = _pick(ctx, plans)
        for note in fit_blocks_to_pruning(plan, ctx.teacher, ctx.example):
            ctx.log(f"  {note}")
            plan.adjustments.append(note)
        found = plan.search
        ctx.log(
            f"  round {found['round'] + 1}: predicted drop {found['predicted_drop_pts']:.2f} of "
            f"{found['budget_pts']:.2f} pts (before training), {len(found['moves'])} moves, "
            f"{found['mode']} precision"
        )
        for key, p in predicted_latency(
            ctx.read_json("latency", "table.json")["layers"], plan
        ).items():
            ctx.log(f"  {key}: layers {p['float_ms']:.3f} ms float -> {p['planned_ms']:.3f} ms")
        ctx.metrics.update(round=found["round"], predicted_drop_pts=found["predicted_drop_pts"])
    else:
        plan = ctx.space
    write_json(ctx.out("plan.json"), plan.to_dict())
    ctx.metrics.update(choices=dict(Counter(choice_label(choice_of(lp)) for lp in plan.layers)))
    return ctx


def _default_budget(cfg: Any, round_: int) -> float:
    """Points of predicted damage a round searches within when the rounds set none."""
    return cfg.max_accuracy_drop * cfg.recovery / 2**round_


def search(ctx: Context, budget: float | None) -> dict[str, Plan]:
    """The plan per precision mode (``MODES``) this run's measured tables give within ``budget``
    points (None: the recipe's); modes that give the same plan appear once. After a round that
    lost more than the budget, only plans predicted to do less damage than it compete (the
    least damaging one if none is): the pick is by speed, and a narrower budget must not buy a
    plan as damaging as one that failed."""
    from .rounds import history  # rounds reads the search

    logits = ctx.path_of("sensitivity", LOGITS)
    if not logits.exists():  # a run made before the damage model
        raise StageError(f"{logits} is missing: re-run sensitivity (edgekd compress --resume)")
    tables = (
        ctx.space,
        ctx.read_json("sensitivity", "sensitivity.json"),
        ctx.task.damage_model(np.load(logits)),
        ctx.read_json("latency", "table.json"),
        ctx.recipe.plan,
        [(t, rt) for t in ctx.targets for rt in t.runtimes],
        ctx.round,
        budget,
    )
    modes = MODES if ctx.recipe.plan.objective == "latency" else ("mixed",)
    plans = candidates({mode: searched(*tables, mode=mode) for mode in modes})
    missed = [r["predicted_drop_pts"] for r in history(ctx)
              if r["measured_drop_pts"] > ctx.recipe.plan.max_accuracy_drop]  # fmt: skip
    return below(plans, min(missed)) if missed else plans


def candidates(found: dict[str, Plan | None]) -> dict[str, Plan]:
    """The modes' plans that change some layer, each plan once (under the first mode that found
    it). A plan that changes no layer is the teacher: timed whole it ties within noise. Its
    moves do not tell: the int8 mode starts from int8 and moves only the layers it relaxes."""
    plans: dict[str, Plan] = {}
    for mode, plan in found.items():
        if (
            plan
            and any(label != "float" for label in choices(plan).values())
            and all(choices(plan) != choices(p) for p in plans.values())
        ):
            plans[mode] = plan
    return plans


def below(plans: dict[str, Plan], failed_pts: float) -> dict[str, Plan]:
    """The plans predicted to lose fewer points than ``failed_pts``, else the least damaging."""
    drop = {mode: plan.search["predicted_drop_pts"] for mode, plan in plans.items()}
    under = {mode: plans[mode] for mode in plans if drop[mode] < failed_pts}
    return under or {mode: plans[mode] for mode in plans if drop[mode] == min(drop.values())}


def untimed_pick(plans: dict[str, Plan]) -> str:
    """The mode picked when nothing is timed whole: the tables' own ranking (``mixed``)."""
    return "mixed" if "mixed" in plans else next(iter(plans))


def _pick(ctx: Context, plans: dict[str, Plan]) -> Plan:
    """The candidate whose whole graph runs fastest (``whole.fastest``); the table's own
    (``untimed_pick``) when there is one candidate or no target runtime runs here."""
    from .whole import fastest, time_plans  # they build with prune and export, which import us

    speedups = time_plans(ctx, plans) if len(plans) > 1 else {}
    compared = {mode: digest(plan) for mode, plan in plans.items()}
    best = fastest(speedups, ctx.recipe.plan.latency_target) if speedups else untimed_pick(plans)
    for mode, got in speedups.items():
        ctx.log(
            f"  {mode} precision, timed whole: "
            + ", ".join(f"{key} {s:.2f}x" for key, s in got.items())
            + (" (picked)" if mode == best else "")
        )
    picked = plans[best]
    picked.search.update(whole=speedups, compared=compared)
    return picked


def searched(
    space: Plan,
    sensitivity: dict,
    damage: DamageModel | RelativeErrorDamage,
    table: dict,
    cfg: Any,
    runtimes: list,
    round_: int = 0,
    budget: float | None = None,
    mode: str = "mixed",
) -> Plan | None:
    """The plan the search picks from ``space`` under ``cfg`` (the recipe's ``plan`` section),
    within ``budget`` points of predicted damage (default: ``max_accuracy_drop × recovery``,
    halved per round; the rounds in ``rounds.py`` pass their own), in precision ``mode``
    (``MODES``); None when the int8 mode finds no int8 region within the budget."""
    kl = {(r["layer"], r["choice"]): r["kl"] for r in sensitivity["layers"]}
    costs = _latency_costs(table) if cfg.objective == "latency" else _size_costs(space)

    def options_of(lp: LayerPlan, mode: str) -> list[Option]:
        int8 = [c for c in lp.candidates if c["activation_bits"] is not None]
        allowed = {
            "mixed": lp.candidates,
            "float": [c for c in lp.candidates if c["activation_bits"] is None],
            "int8": int8 or lp.candidates,
        }[mode]
        return [
            Option(choice_label(c), summed, cost)
            for c in allowed
            if (summed := _damage(lp.name, c, kl)) is not None
            and (cost := costs(lp, c)) is not None
        ] or [Option(choice_label(lp.candidates[0]), 0.0, 0.0)]

    options = {lp.name: options_of(lp, mode) for lp in space.layers}
    if budget is None:
        budget = _default_budget(cfg, round_)
    moves: list[str] = []
    if mode == "int8":
        floats = {lp.name: options_of(lp, "float") for lp in space.layers}
        relaxed = _relax_int8(space, options, floats, damage.kl_for(budget))
        if relaxed is None:
            return None
        for name in relaxed:
            moves.append(f"{name}: {options[name][0].label} -> {floats[name][0].label} "
                         "(left out of the int8 region)")  # fmt: skip
            options[name] = floats[name]
    picked, searched_moves = greedy(options, damage.kl_for(budget))
    moves += searched_moves
    if mode == "mixed" and any(rt.name == "onnxruntime" for _, rt in runtimes):
        _fill_int8_gaps(space, options, picked, moves)
    layers = []
    for lp in space.layers:
        chosen = with_choice(lp, _candidate(lp, picked[lp.name].label), runtimes)
        alone = damage.points(picked[lp.name].damage)
        chosen.notes = [*lp.notes, f"predicted damage {alone:.2f} pts alone"]
        layers.append(chosen)
    plan = Plan(layers, space.targets, space.adjustments, space.target_facts,
                embeddings=space.embeddings)  # fmt: skip
    plan.search = {
        "objective": cfg.objective,
        "mode": mode,
        "round": round_,
        "budget_pts": budget,
        "predicted_kl": sum(o.damage for o in picked.values()),
        "predicted_drop_pts": damage.points(sum(o.damage for o in picked.values())),
        "moves": moves,  # timings stay in the latency table: re-timing alone changes no plan
    }
    return plan


def choices(plan: Plan) -> dict[str, str]:
    """Each layer's choice, by label: what makes two plans the same."""
    return {lp.name: choice_label(choice_of(lp)) for lp in plan.layers}


def digest(plan: Plan) -> str:
    """A short name for a plan's choices, to tell whether a search found the same plans."""
    return hashlib.sha256(json.dumps(choices(plan), sort_keys=True).encode()).hexdigest()[:12]


def _fill_int8_gaps(
    space: Plan, options: dict[str, list[Option]], picked: dict[str, Option], moves: list[str]
) -> None:
    """Give a float layer between an int8 writer and an int8 reader its int8 candidate (same
    channels and sparsity). Its input is the writer's DequantizeLinear and its output the
    reader's QuantizeLinear, and ONNX Runtime quantizes the float weights of a Conv/Gemm so
    placed itself (WeightBiasQuantization, per tensor): on Lite0 that cost its exports 10%
    agreement with the student. Per channel, trained, it is what ORT fuses anyway. Applied after
    the search, so its KL can take the plan past the budget (``predicted_drop_pts`` says so)."""

    def candidate(name: str) -> dict:
        return _candidate(space.layer(name), picked[name].label)

    def int8(name: str | None) -> bool:
        return name in picked and candidate(name)["activation_bits"] is not None

    readers = _readers(space)
    changed = True
    while changed:  # each pass only turns layers int8: at most one pass per layer
        changed = False
        for lp in space.layers:
            if lp.name not in picked or candidate(lp.name)["weight_bits"] is not None:
                continue
            if not int8(lp.input_from or lp.shares_quant_with):
                continue
            if not any(int8(r) for r in readers.get(lp.name, [])):
                continue
            now = candidate(lp.name)
            fill = next(
                (o for o in options[lp.name]
                 if (c := _candidate(lp, o.label))
                 and (c["keep_ratio"], c["sparsity"]) == (now["keep_ratio"], now["sparsity"])
                 and c["weight_bits"] is not None and c["activation_bits"] is not None),
                None,
            )  # fmt: skip
            if fill is not None:
                moves.append(f"{lp.name}: {picked[lp.name].label} -> {fill.label} (int8 around it)")
                picked[lp.name], changed = fill, True


def _relax_int8(
    space: Plan, int8: dict[str, list[Option]], floats: dict[str, list[Option]], limit: float
) -> list[str] | None:
    """The layers the int8 mode leaves float so that int8 on the rest fits ``limit`` (KL): most
    damage saved per time added first; None when no such set exists.

    Why a region and not the mixed search's layer-by-layer pick: runtimes pay at every switch
    between float and int8 (``whole.py``), and the damage sits in a few layers. On
    EfficientNet-Lite0, W8A8 on all 50 layers (calibrated, biases corrected) agreed with the
    teacher on 87.5% of photo crops; with its stem and first depthwise conv left float, 95.6%.
    A layer is left out only where it does not become a float gap between int8 layers, which
    ONNX Runtime would quantize itself per tensor (``_fill_int8_gaps``)."""
    readers = _readers(space)

    def is_int8(name: str) -> bool:
        return _candidate(space.layer(name), int8[name][0].label)["activation_bits"] is not None

    region = {lp.name for lp in space.layers if is_int8(lp.name)}
    spent = sum(options[0].damage for options in int8.values())

    def gap(lp: LayerPlan) -> bool:
        writer = lp.input_from or lp.shares_quant_with
        return writer in region and any(r in region for r in readers.get(lp.name, []))

    def saved_per_time(name: str) -> float:
        added = floats[name][0].cost - int8[name][0].cost
        return (int8[name][0].damage - floats[name][0].damage) / max(added, 1e-12)

    while spent > limit + 1e-12:
        free = [lp.name for lp in space.layers if lp.name in region and not gap(lp)]
        free = [n for n in free if int8[n][0].damage > floats[n][0].damage]
        if not free:
            return None
        name = max(free, key=saved_per_time)
        region.remove(name)
        spent -= int8[name][0].damage - floats[name][0].damage
    if not region:
        return None  # no int8 left: the float mode's plan
    return [lp.name for lp in space.layers if is_int8(lp.name) and lp.name not in region]


def _readers(space: Plan) -> dict[str, list[str]]:
    """Each layer's readers that take its output alone, through activations (``input_from``)."""
    readers: dict[str, list[str]] = {}
    for lp in space.layers:
        if lp.input_from:
            readers.setdefault(lp.input_from, []).append(lp.name)
    return readers


def _candidate(lp: LayerPlan, label: str) -> dict:
    return next(c for c in lp.candidates if choice_label(c) == label)


def _damage(layer: str, choice: dict, kl: dict) -> float | None:
    """Summed KL of the choice's parts, or None when a part was not measured."""
    values = [kl.get((layer, p)) for p in part_labels(choice)]
    return None if None in values else sum(values)


def _latency_costs(table: dict):
    """cost(layer, choice): the layer's time as a fraction of the float layers' total, averaged
    over every runtime and batch timed; None where a runtime did not time that choice."""
    times: dict[tuple[str, str], dict[str, float]] = {}
    totals: dict[str, float] = {}
    for r in table["layers"]:
        key = f"{r['target']}/{r['runtime']} b{r['batch']}"
        if r["ms"] is not None:
            times.setdefault((r["layer"], r["choice"]), {})[key] = r["ms"]
        if r["choice"] == "float" and r["ms"] is not None:
            totals[key] = totals.get(key, 0.0) + r["ms"]

    totals = {key: total for key, total in totals.items() if total > 0}  # not all below a call

    def cost(lp: LayerPlan, choice: dict) -> float | None:
        got = times.get((lp.name, choice_label(choice)), {})
        if not totals or not set(totals) <= set(got):
            return None
        return sum(got[key] / total for key, total in totals.items()) / len(totals)

    return cost


def _size_costs(space: Plan):
    """cost(layer, choice): the weight's bytes after pruning and quantization."""
    first = space.layers[0].name if space.layers else None

    def cost(lp: LayerPlan, choice: dict) -> float:
        shape = kept_shape(lp.weight_shape, choice["keep_ratio"], lp.name != first)
        return math.prod(shape) * (choice["weight_bits"] or 32) / 8

    return cost


def predicted_latency(rows: list[dict], plan: Plan) -> dict[str, dict[str, float]]:
    """``target/runtime b<batch>`` -> the layers' summed time, float and as planned, and the
    ratio: what the latency table predicts before anything is trained."""
    chosen = {lp.name: choice_label(choice_of(lp)) for lp in plan.layers}
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        key = f"{r['target']}/{r['runtime']} b{r['batch']}"
        if r["ms"] is None or r["layer"] not in chosen:
            continue
        t = totals.setdefault(key, {"float_ms": 0.0, "planned_ms": 0.0, "source": r["source"]})
        if r["choice"] == "float":
            t["float_ms"] += r["ms"]
        if r["choice"] == chosen[r["layer"]]:
            t["planned_ms"] += r["ms"]
    for t in totals.values():
        t["planned_over_float"] = t["planned_ms"] / t["float_ms"] if t["float_ms"] else None
    return totals
