"""The call floor: a graph with the teacher's signature that computes nothing, and the verdict
that names it when no plan can meet a latency budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.budget import judge
from edgekd.export.torch_onnx import export_float
from edgekd.models.demo import DigitsCNN
from edgekd.recipe import PlanRecipe
from edgekd.runtimes import get_runtime
from edgekd.runtimes.floor import null_graph


@pytest.mark.parametrize("runtime_name", ["onnxruntime", "openvino"])
def test_the_floor_graph_has_the_teachers_signature_and_runs_in_each_runtime(
    runtime_name, tmp_path
):
    teacher = export_float(DigitsCNN().eval(), torch.rand(2, 1, 8, 8))
    null = null_graph(teacher)
    onnx.checker.check_model(null, full_check=True)
    assert {n.op_type for n in null.graph.node} <= {"Flatten", "Slice", "Reshape"}
    assert [i.name for i in null.graph.input] == [teacher.graph.input[0].name]
    assert [o.name for o in null.graph.output] == [o.name for o in teacher.graph.output]
    onnx.save(null, tmp_path / "floor.onnx")
    runtime = get_runtime(runtime_name)
    built = runtime.build(tmp_path / "floor.onnx", tmp_path / f"floor{runtime.artifact_suffix}")
    session = runtime.open(built, None, "deploy")
    for batch in (1, 5):
        x = np.random.default_rng(0).random((batch, 1, 8, 8), np.float32)
        out = session.run(x)
        assert out.shape == (batch, 10) and out.dtype == np.float32
        # read, not computed (within bf16 rounding, where a runtime's default precision is bf16)
        np.testing.assert_allclose(out, x.reshape(batch, -1)[:, :10], rtol=1e-2)
        session.bound(x)()


def _model(inputs: list[int | str], outputs: list[list[int | str]], out_type=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, inputs)
    ys = [helper.make_tensor_value_info(f"y{i}", out_type, o) for i, o in enumerate(outputs)]
    nodes = [helper.make_node("Identity", ["x"], ["y0"])]  # the body is never read
    graph = helper.make_graph(nodes, "m", [x], ys)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_outputs_larger_than_the_input_are_padded_and_other_types_cast():
    import onnxruntime as ort

    null = null_graph(_model(["b", 3], [["b", 2, 4], ["b", 2]], TensorProto.INT64))
    onnx.checker.check_model(null, full_check=True)
    session = ort.InferenceSession(null.SerializeToString(), providers=["CPUExecutionProvider"])
    big, small = session.run(None, {"x": np.ones((2, 3), np.float32)})
    assert big.shape == (2, 2, 4) and big.dtype == np.int64 and small.shape == (2, 2)
    assert big.reshape(2, -1).tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]] * 2


def test_no_floor_graph_for_outputs_without_a_static_shape_or_a_batch_axis():
    assert null_graph(_model(["b", 3], [["b", "classes"]])) is None
    assert null_graph(_model(["b", "tokens"], [["b", 2]])) is None
    assert null_graph(_model(["b", 3], [[]])) is None  # a scalar output
    assert null_graph(_model(["b", 3], [["b", 0]])) is None  # no elements


def test_the_floor_graph_keeps_the_models_ir_version_and_its_own_names_apart():
    model = _model(["b", 3], [["b", 2]])
    model.graph.output[0].name = "floor/flat"  # what its own Flatten would be named
    null = null_graph(model)
    onnx.checker.check_model(null, full_check=True)
    assert null.ir_version == model.ir_version == 8


def _report(speedup: float, floor_speedup: float | None) -> dict:
    row = {"target": "x86-cpu", "runtime": "openvino", "batch": 1, "speedup_p50": speedup,
           "floor_ms": 0.015 if floor_speedup else None, "floor_speedup": floor_speedup}  # fmt: skip
    return {
        "teacher": {"accuracy": 1.0},
        "student": {"accuracy": 1.0},
        "verify": [],
        "test_examples": 1000,
        "results": [],
        "speedups": [row],
    }


def test_a_latency_budget_past_the_call_floor_is_named_as_unreachable():
    plan = PlanRecipe(latency_target=0.5)
    verdict = judge(_report(1.2, floor_speedup=1.6), plan)  # 2x asked, at most 1.6x possible
    assert not verdict["passed"] and not verdict["latency"][0]["reachable"]
    assert "no plan can meet it on 1 of them" in verdict["failures"][0]
    assert "0.62x the teacher's p50" in verdict["failures"][0]
    reachable = judge(_report(1.2, floor_speedup=5.0), plan)
    assert not reachable["passed"] and reachable["latency"][0]["reachable"]
    assert "no plan can" not in reachable["failures"][0]
    assert judge(_report(1.2, floor_speedup=None), plan)["latency"][0]["reachable"]


def test_bench_times_the_call_floor_beside_every_pair_it_times(demo_run):
    import json

    run = demo_run[0]
    bench = json.loads((run / "bench" / "bench.json").read_text())
    timed = {
        (r["target"], r["runtime"], r["batch"]) for r in bench["results"] if r["status"] == "ok"
    }
    assert {(f["target"], f["runtime"], f["batch"]) for f in bench["floors"]} == timed
    assert all(f["p50_ms"] > 0 for f in bench["floors"])
    report = json.loads((run / "report.json").read_text())
    assert all(s["floor_speedup"] > 0 and s["floor_ms"] > 0 for s in report["speedups"])
    assert "Call floor" in (run / "report.md").read_text()
