"""The measured plan: candidates from the target files, the greedy search, and the plan stage."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from conftest import edgekd

from edgekd.models.demo import demo_teacher
from edgekd.plan import (
    Plan,
    below,
    candidates,
    choice_label,
    choice_of,
    digest,
    predicted_latency,
    resolve_plan,
    rounds,
    searched,
    whole,
)
from edgekd.plan.damage import DamageModel
from edgekd.plan.rounds import next_budget
from edgekd.plan.search import Option, greedy
from edgekd.plan.whole import fastest, plan_graph
from edgekd.recipe import load_recipe
from edgekd.targets import load_target
from edgekd.task import Classification


def test_greedy_takes_free_savings_then_the_best_saving_per_point_within_the_budget():
    layers = {
        "a": [Option("float", 0, 10), Option("int8", 0, 6)],  # free: always taken
        "b": [Option("float", 0, 10), Option("keep 0.5", 3, 4), Option("keep 0.25", 9, 2)],
        "c": [Option("float", 0, 10), Option("keep 0.5", 1, 7)],
    }
    picked, moves = greedy(layers, budget=4)
    assert moves[0] == "a: float -> int8"
    assert {k: o.label for k, o in picked.items()} == {
        "a": "int8",
        "b": "keep 0.5",
        "c": "keep 0.5",
    }
    assert sum(o.damage for o in picked.values()) <= 4
    tight, _ = greedy(layers, budget=1.5)  # b's 2 per point loses to c's 3 per point
    assert {k: o.label for k, o in tight.items()} == {"a": "int8", "b": "float", "c": "keep 0.5"}


def test_greedy_never_takes_a_slower_choice_even_when_free():
    picked, moves = greedy({"a": [Option("float", 0, 5), Option("w4 conv", 0, 9)]}, budget=10)
    assert picked["a"].label == "float" and moves == []


def test_cpu_candidates_are_the_formats_the_target_runs_faster_with_the_inputs_they_need(
    tiny, example
):
    space = resolve_plan(load_recipe("auto"), [load_target("x86-cpu-vnni")], tiny, example)
    conv = space.layer("features.3")
    labels = {choice_label(c) for c in conv.candidates}
    w8a8 = "W8 per-channel sym, A8"  # QLinearConv and OpenVINO's int8 conv both need int8 inputs
    keeps = ["keep 0.75", "keep 0.5", "keep 0.25"]
    assert labels == {"float", w8a8, *keeps, *(f"{k}, {w8a8}" for k in keeps)}
    assert all(not c["sparsity"] for lp in space.layers for c in lp.candidates)  # no CPU 2:4
    out = space.layer("head.3")  # the logits' layer keeps its channels
    assert {c["keep_ratio"] for c in out.candidates} == {1.0}
    assert choice_of(conv)["weight_bits"] is None  # before the search: the teacher's own layer


def test_gpu_candidates_offer_2of4_only_on_layers_that_meet_the_sparse_shape_rule(tiny, example):
    space = resolve_plan(load_recipe("auto"), [load_target("nvidia-gpu")], tiny, example)
    sparse = {lp.name for lp in space.layers if any(c["sparsity"] for c in lp.candidates)}
    assert sparse == {"head.1"}  # out % 8 and in % 16: 32x64 only, not 8x1, 16x8 or 10x32


def _tables(space):
    """A toy sensitivity and latency table: halving channels costs 0.1 nat and halves the time,
    int8 is free and 2x faster; 'features.0' is very sensitive to pruning."""
    kl, rows = [], []
    for lp in space.layers:
        for c in lp.candidates:
            label = choice_label(c)
            ms = 1.0 * c["keep_ratio"] * (0.5 if c["weight_bits"] else 1.0)
            rows.append({"target": "x86-cpu", "runtime": "onnxruntime", "batch": 1,
                         "layer": lp.name, "choice": label, "ms": ms, "source": "measured"})  # fmt: skip
        for k in {c["keep_ratio"] for c in lp.candidates} - {1.0}:
            damage = 5.0 if lp.name == "features.0" else 0.1 * (1 - k) * 2
            kl.append({"layer": lp.name, "choice": f"keep {k:g}", "kl": damage, "agreement": 0.9})
        kl.append(
            {"layer": lp.name, "choice": "W8 per-channel sym, A8", "kl": 0.0, "agreement": 1.0}
        )
    return {"examples": 100, "layers": kl}, {"layers": rows}


TOY_LOGITS = np.random.default_rng(0).standard_normal((100, 10)) * 6  # 100 inputs, 10 classes


def test_search_spends_the_budget_on_the_cheapest_damage_and_protects_the_sensitive_layer(
    tiny, example
):
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    damage = DamageModel(TOY_LOGITS)
    runtimes = [(target, rt) for rt in target.runtimes]
    plan = searched(space, sensitivity, damage, table, recipe.plan, runtimes)
    chosen = {lp.name: choice_label(choice_of(lp)) for lp in plan.layers}
    assert chosen["features.0"].startswith("W8") or chosen["features.0"] == "float"
    assert chosen["features.3"].startswith("keep")
    assert plan.search["predicted_drop_pts"] <= plan.search["budget_pts"]
    assert plan.search["budget_pts"] == pytest.approx(1 * recipe.plan.recovery)
    assert (
        predicted_latency(table["layers"], plan)["x86-cpu/onnxruntime b1"]["planned_over_float"]
        < 0.5
    )
    assert plan.search["predicted_drop_pts"] == damage.points(plan.search["predicted_kl"])
    # a back-off round halves the budget: never more damage than the round before
    again = searched(space, sensitivity, damage, table, recipe.plan, runtimes, 1)
    assert again.search["budget_pts"] == plan.search["budget_pts"] / 2
    assert again.search["predicted_drop_pts"] <= plan.search["predicted_drop_pts"]


def test_predicted_points_grow_with_kl_and_with_how_unsure_the_teacher_is():
    """Many small errors add up in KL; the points they cost depend on the teacher's margins."""
    unsure, sure = DamageModel(TOY_LOGITS / 6), DamageModel(TOY_LOGITS * 4)
    kls = [0.0, 1e-4, 0.01, 0.1, 1.0, 10.0]
    points = [unsure.points(k) for k in kls]
    assert points[0] == 0 and points == sorted(points) and points[-1] > 50
    assert sure.points(0.01) < unsure.points(0.01) / 5
    for budget in (1.0, 5.0, 20.0):  # a points budget inverts to the largest KL within it
        kl = unsure.kl_for(budget)
        assert unsure.points(kl) <= budget < unsure.points(kl * 1.01)
    assert unsure.kl_for(100) == float("inf")


def test_the_plan_stage_writes_the_plan_every_later_stage_reads(demo_run):
    run = demo_run[0]
    plan = json.loads((run / "plan" / "plan.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert report["plan"] == plan
    assert plan["search"]["objective"] == "latency" and plan["search"]["moves"]
    assert plan["search"]["predicted_drop_pts"] <= plan["search"]["budget_pts"]
    student = report["student"]["channels"]
    for lp in plan["layers"]:  # what prune did is what the plan says
        if lp["keep_ratio"] < 1.0:
            assert student[lp["name"]][1] < student[lp["name"]][0]


def test_a_student_that_misses_the_budget_is_searched_again_within_a_measured_budget(tmp_path):
    out = tmp_path / "run"
    result = edgekd(
        "compress", "--out", str(out),
        "--set", "plan.recovery=1000", "--set", "plan.max_accuracy_drop=0.1",
        "--set", "plan.max_rounds=2", "--set", "distill.epochs=1",
        "--set", "bench.min_runs=5", "--set", "bench.min_seconds=0.05", "--set", "bench.batches=[1]",
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert "narrowing the search" in result.stdout + result.stderr
    assert manifest["plan_round"] == 1 and plan["search"]["round"] == 1
    # at most half the first budget, and less where training lost more than predicted
    assert plan["search"]["budget_pts"] == manifest["plan_budget_pts"] <= 1000 * 0.1 / 2
    assert plan["search"]["predicted_drop_pts"] <= plan["search"]["budget_pts"]
    if result.returncode:  # still missing after the last round: one line, exit 5
        assert result.returncode == 5 and "misses its budget" in result.stderr


def _round(budget, predicted, measured, passed):
    return {"budget_pts": budget, "predicted_drop_pts": predicted, "measured_drop_pts": measured,
            "passed": passed}  # fmt: skip


def test_the_next_round_budget_follows_the_measured_drop():
    # missed: at most half, and scaled by how optimistic the prediction was
    assert next_budget([_round(10, 1.2, 13.0, False)], 1.0) == pytest.approx(1.2 / 13)
    assert next_budget([_round(10, 8.0, 1.5, False)], 1.0) == 5
    # met with room to spare: wider by budget/measured, at most 4x
    assert next_budget([_round(10, 7.7, 0.4, True)], 1.0) == pytest.approx(25)
    assert next_budget([_round(10, 7.7, 0.0, True)], 1.0) == 40
    # met and most of the budget spent: keep it
    assert next_budget([_round(10, 7.7, 0.8, True)], 1.0) is None
    # accurate but too slow: wider even with little room
    assert next_budget([_round(10, 7.7, 0.8, False)], 1.0) == pytest.approx(12.5)
    # between a budget that met and one that missed: the middle, either way
    history = [_round(10, 7.7, 0.4, True), _round(25, 20, 1.5, False)]
    assert next_budget(history, 1.0) == 17.5
    history.append(_round(17.5, 12, 0.3, True))
    assert next_budget(history, 1.0) == pytest.approx(21.25)


def _int8_halves_time(space, target) -> dict:
    """A toy latency table on ONNX Runtime: every low-bit candidate takes half the float time."""
    return {
        "layers": [
            {"target": target.name, "runtime": "onnxruntime", "batch": 1, "layer": lp.name,
             "choice": choice_label(c), "ms": 0.5 if c["weight_bits"] else 1.0}
            for lp in space.layers for c in lp.candidates
        ]
    }  # fmt: skip


class Chain(torch.nn.Module):
    """a -> ReLU -> b -> ReLU -> c: b reads a's output alone and c reads b's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b, self.c = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    "target_names",
    [["x86-cpu-vnni"], ["x86-cpu-vnni", "x86-cpu-avx2"]],  # W8A8; W7A8
)
def test_a_float_layer_between_int8_layers_gets_int8_weights_where_onnxruntime_runs_it(
    target_names,
):
    """ONNX Runtime quantizes a float conv between a DequantizeLinear and a QuantizeLinear itself
    (per tensor); the plan gives it its int8 candidate instead, and leaves OpenVINO's plan as
    searched."""
    targets = [load_target(name) for name in target_names]
    target = targets[0]
    recipe = load_recipe("auto")
    space = resolve_plan(recipe, targets, Chain().eval(), torch.rand(2, 1, 8, 8))
    assert space.layer("b").input_from == "a" and space.layer("c").input_from == "b"
    w8a8 = next(
        choice_label(c)
        for c in space.layer("b").candidates
        if c["activation_bits"] and c["keep_ratio"] == 1
    )
    sensitivity = {
        "examples": 100,
        "layers": [{"layer": lp.name, "choice": w8a8, "kl": 5.0 if lp.name == "b" else 0.0,
                    "agreement": 1.0} for lp in space.layers],
    }  # fmt: skip
    table = _int8_halves_time(space, target)

    def chosen(runtimes):
        plan = searched(space, sensitivity, DamageModel(TOY_LOGITS), table, recipe.plan, runtimes)
        return {lp.name: choice_label(choice_of(lp)) for lp in plan.layers}, plan.search["moves"]

    with_ort, moves = chosen([(target, rt) for rt in target.runtimes])
    assert with_ort["a"] == with_ort["b"] == with_ort["c"] == w8a8
    assert any(m.startswith("b: float") and "int8 around it" in m for m in moves)
    only_ov, _ = chosen([(target, rt) for rt in target.runtimes if rt.name == "openvino"])
    assert only_ov["a"] == only_ov["c"] == w8a8 and only_ov["b"] == "float"


def test_each_precision_mode_searches_its_own_plan(tiny, example):
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    runtimes = [(target, rt) for rt in target.runtimes]

    def plan(sensitivity, mode):
        return searched(space, sensitivity, DamageModel(TOY_LOGITS), table, recipe.plan, runtimes,
                        mode=mode)  # fmt: skip

    def int8(plan):
        return {lp.name for lp in plan.layers if lp.activation_bits}

    can = {lp.name for lp in space.layers if any(c["activation_bits"] for c in lp.candidates)}
    assert can and int8(plan(sensitivity, "int8")) == can
    assert (
        not int8(plan(sensitivity, "float"))
        and plan(sensitivity, "float").search["mode"] == "float"
    )
    # int8 on every layer alone costs more than the budget: no int8 plan, and none mixed in
    costly = [{**r, "kl": 50.0} if r["choice"].endswith("A8") else r for r in sensitivity["layers"]]
    costly = {**sensitivity, "layers": costly}
    assert plan(costly, "int8") is None and not int8(plan(costly, "mixed"))


def test_an_int8_plan_with_nothing_to_relax_competes_and_the_teacher_never_does(tiny, example):
    """The int8 mode starts from int8 everywhere, so a plan that fits its budget whole has no
    moves; it still changes every layer (Lite0 on ImageNet crops lost it to a no-op filter)."""
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    rows = [{**r, "kl": 50.0} if "keep" in r["choice"] else r for r in sensitivity["layers"]]
    sensitivity = {**sensitivity, "layers": rows}  # no channels fit: int8 is the whole plan
    runtimes = [(target, rt) for rt in target.runtimes]
    found = {mode: searched(space, sensitivity, DamageModel(TOY_LOGITS), table, recipe.plan,
                            runtimes, mode=mode) for mode in ("mixed", "float", "int8")}  # fmt: skip
    assert found["int8"].search["moves"] == [] and found["float"].search["moves"] == []
    # the float mode's plan is the teacher itself; the int8 one changes every layer
    assert list(candidates({"float": found["float"], "int8": found["int8"]})) == ["int8"]


def test_the_int8_modes_own_starting_damage_counts_against_the_budget(tiny, example):
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    damage = DamageModel(TOY_LOGITS)
    a8 = damage.kl_for(10) / 2 / len(space.layers)  # int8 everywhere: half the 10-pt budget
    rows = [{**r, "kl": a8} if r["choice"].endswith("A8") else r for r in sensitivity["layers"]]
    runtimes = [(target, rt) for rt in target.runtimes]
    for mode in ("mixed", "float", "int8"):
        plan = searched(space, {**sensitivity, "layers": rows}, damage, table, recipe.plan,
                        runtimes, mode=mode)  # fmt: skip
        assert plan.search["predicted_drop_pts"] <= plan.search["budget_pts"] == 10


def test_the_plan_picked_reaches_the_latency_target_everywhere_then_runs_fastest_overall():
    speedups = {
        "mixed": {"onnxruntime b1": 3.0, "openvino b1": 0.9},  # fastest on average, slower on one
        "int8": {"onnxruntime b1": 1.5, "openvino b1": 1.2},
        "float": {"onnxruntime b1": 1.1, "openvino b1": 1.1},
    }
    assert fastest(speedups, None) == "int8"  # the default target: never slower than the teacher
    assert fastest(speedups, 2.0) == "mixed"  # at most 2x the teacher's time: all reach it
    # within the gate's noise allowance (budget.LATENCY_NOISE) a plan reaches the target
    near = {"mixed": {"ort": 3.0, "ov": 0.97}, "float": {"ort": 1.01, "ov": 1.1}}
    assert fastest(near, None) == "mixed"


def test_a_plan_that_cannot_be_built_is_left_out_of_the_timing_with_its_reason(
    tiny, example, monkeypatch
):
    target = load_target("x86-cpu")
    recipe = load_recipe("auto", ["bench.batches=[1]", "bench.min_runs=3", "bench.min_seconds=0"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    runtimes = [(target, rt) for rt in target.runtimes]
    plans = {mode: searched(space, sensitivity, DamageModel(TOY_LOGITS), table, recipe.plan,
                            runtimes, mode=mode) for mode in ("mixed", "int8")}  # fmt: skip
    real = whole.plan_graph

    def broken_int8(teacher, plan, x, outputs):
        if plan is plans["int8"]:
            raise RuntimeError("unsupported op Foo")
        return real(teacher, plan, x, outputs)

    monkeypatch.setattr(whole, "plan_graph", broken_int8)
    logged: list[str] = []
    ctx = SimpleNamespace(recipe=recipe, targets=[target], teacher=tiny, example=example,
                          task=Classification(("logits",), 10),
                          data=SimpleNamespace(test=SimpleNamespace(x=example.numpy()), train=SimpleNamespace(x=example.numpy())),
                          log=logged.append)  # fmt: skip
    got = whole.time_plans(ctx, plans)
    assert set(got) == {"mixed"}
    assert set(got["mixed"]) == {"x86-cpu/onnxruntime b1", "x86-cpu/openvino b1"}
    assert logged == ["  the int8 plan, not timed whole: its export failed: unsupported op Foo"]


def test_a_search_that_finds_nothing_to_compress_fails_in_one_line_and_starts_no_round(
    monkeypatch,
):
    import edgekd.plan as plan_stage
    from edgekd.errors import BudgetMiss

    monkeypatch.setattr(plan_stage, "search", lambda ctx, budget: {})  # every plan a no-op
    ctx = SimpleNamespace(recipe=load_recipe("auto"), budget_pts=None, round=0)
    with pytest.raises(BudgetMiss, match=r"no plan compresses any layer within 10\.00 pts"):
        plan_stage.run(ctx)
    monkeypatch.setattr(rounds, "search", lambda ctx, budget: {})
    assert not rounds._changes_plan(SimpleNamespace(plan=None), 5.0)


def test_after_a_round_that_lost_too_much_only_plans_predicted_to_lose_less_compete():
    def plan(pts):
        return SimpleNamespace(search={"predicted_drop_pts": pts})

    plans = {"mixed": plan(2.0), "int8": plan(4.9), "float": plan(1.0)}
    assert set(below(plans, 3.0)) == {"mixed", "float"}  # the fast int8 plan is out
    assert set(below(plans, 0.5)) == {"float"}  # none under: the least damaging


def test_a_round_whose_search_finds_only_plans_already_compared_is_not_trained(
    tiny, example, monkeypatch
):
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], tiny, example)
    sensitivity, table = _tables(space)
    runtimes = [(target, rt) for rt in target.runtimes]
    mixed, int8 = (searched(space, sensitivity, DamageModel(TOY_LOGITS), table, recipe.plan,
                            runtimes, mode=mode) for mode in ("float", "int8"))  # fmt: skip
    int8.search.update(whole={"int8": {"ort b1": 2.0}, "mixed": {"ort b1": 1.5}},
                       compared={"mixed": digest(mixed), "int8": digest(int8)})  # fmt: skip
    ctx = SimpleNamespace(plan=int8)
    # a wider budget: the mixed search now finds the int8 plan already picked
    monkeypatch.setattr(rounds, "search", lambda ctx, budget: {"mixed": int8})
    assert not rounds._changes_plan(ctx, 20.0)
    monkeypatch.setattr(rounds, "search", lambda ctx, budget: {"mixed": mixed})
    assert rounds._changes_plan(ctx, 20.0)  # the pick is gone: its replacement is trained
    int8.search["whole"] = {}  # nothing timed whole: the mixed plan is the pick
    monkeypatch.setattr(rounds, "search", lambda ctx, budget: {"mixed": int8, "float": mixed})
    assert not rounds._changes_plan(ctx, 20.0)


def test_the_plan_timed_whole_is_the_graph_export_writes_and_the_fastest_measured(demo_run):
    run = demo_run[0]
    plan = json.loads((run / "plan" / "plan.json").read_text())
    search = plan["search"]
    assert len(search["compared"]) >= 2 and set(search["whole"]) == set(search["compared"])
    bench = json.loads((run / "bench" / "bench.json").read_text())["results"]
    timed = {f"{r['target']}/{r['runtime']} b{r['batch']}" for r in bench if r["status"] == "ok"}
    assert timed and all(set(got) == timed for got in search["whole"].values())
    assert search["mode"] == fastest(search["whole"], None)
    report = (run / "report.md").read_text()
    assert "Plans compared whole before training" in report and f"- {search['mode']}: " in report
    graph = plan_graph(demo_teacher(), Plan.from_dict(plan), torch.rand(2, 1, 8, 8).numpy())
    exported = onnx.load(run / "export" / "student.onnx")
    assert [n.op_type for n in graph.graph.node] == [n.op_type for n in exported.graph.node]
    assert {i.name: (tuple(i.dims), i.data_type) for i in graph.graph.initializer} == {
        i.name: (tuple(i.dims), i.data_type) for i in exported.graph.initializer
    }


def test_the_int8_mode_leaves_the_most_damaging_layers_float_but_never_a_gap_between_int8():
    """int8 everywhere costs too much: the int8 region shrinks from its most damaging end;
    a damaging layer between two int8 layers cannot leave it alone (ONNX Runtime would quantize
    it per tensor), so then there is no int8 plan."""
    target = load_target("x86-cpu-vnni")
    recipe = load_recipe("auto", ["plan.max_accuracy_drop=1"])
    space = resolve_plan(recipe, [target], Chain().eval(), torch.rand(2, 1, 8, 8))
    runtimes = [(target, rt) for rt in target.runtimes]
    table = _int8_halves_time(space, target)

    def int8_plan(damaging: str):
        rows = [{"layer": lp.name, "choice": choice_label(c), "agreement": 1.0,
                 "kl": 5.0 if lp.name == damaging else 0.0}
                for lp in space.layers for c in lp.candidates if c["activation_bits"]]  # fmt: skip
        return searched(space, {"examples": 100, "layers": rows}, DamageModel(TOY_LOGITS),
                        table, recipe.plan, runtimes, mode="int8")  # fmt: skip

    plan = int8_plan("a")
    assert {lp.name for lp in plan.layers if lp.activation_bits} == {"b", "c", "head"}
    assert plan.search["moves"][0].endswith("-> float (left out of the int8 region)")
    assert plan.search["predicted_drop_pts"] <= plan.search["budget_pts"]
    assert int8_plan("b") is None
