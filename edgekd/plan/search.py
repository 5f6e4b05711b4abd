"""The search: one candidate per layer, minimising the objective within an accuracy budget.

Greedy on the exchange rate, not a knapsack solver: every layer starts as the teacher's own
(dense float, no damage); each step takes the switch of one layer to another of its candidates
that saves the most cost per unit of predicted damage (KL), free savings first, while the summed
damage stays within the budget. This is the classic greedy for the multiple-choice knapsack
(it walks each layer's cost/damage hull). An exact solver would buy nothing: the damages are
measured one layer at a time and only approximately additive, which the measured rounds correct,
and the greedy order is what the report can explain ("this layer first: most time per damage").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One candidate of one layer: its predicted damage (KL) and cost (objective units)."""

    label: str
    damage: float
    cost: float


def greedy(layers: dict[str, list[Option]], budget: float) -> tuple[dict[str, Option], list[str]]:
    """The option picked per layer (each layer's first option is its start) and the moves made;
    the starts' own damage counts against the budget (the int8 mode starts damaged)."""
    picked = {name: options[0] for name, options in layers.items()}
    spent, moves = sum(option.damage for option in picked.values()), []
    while True:
        best, best_rate = None, -1.0
        for name, options in layers.items():
            now = picked[name]
            for option in options:
                saving, extra = now.cost - option.cost, option.damage - now.damage
                if saving <= 0 or spent + extra > budget + 1e-12:
                    continue
                rate = float("inf") if extra <= 0 else saving / extra
                if rate > best_rate or (best and rate == best_rate and saving > best[2]):
                    best, best_rate = (name, option, saving), rate
        if best is None:
            return picked, moves
        name, option, _ = best
        spent += option.damage - picked[name].damage
        moves.append(f"{name}: {picked[name].label} -> {option.label}")
        picked[name] = option
