"""The per-layer latency table: single layers built as edgekd exports them, run by real runtimes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekd.latency import LayerShape, WeightChoice, layer_onnx, layer_shapes
from edgekd.plan import choice_label
from edgekd.runtimes import get_runtime


def test_layer_shapes_record_each_layers_input_and_attributes(tiny, example):
    shapes = layer_shapes(tiny, example)
    assert shapes["features.0"] == LayerShape(
        "Conv", (2, 1, 8, 8), (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 1
    )
    assert shapes["head.1"] == LayerShape("Gemm", (2, 64), (32, 64))
    tokens = nn.Sequential(nn.Linear(16, 8))
    assert layer_shapes(tokens, torch.rand(2, 5, 16))["0"].op == "MatMul"


CASES = [
    ("conv int8", LayerShape("Conv", (1, 16, 8, 8), (32, 16, 3, 3), (2, 2), (1, 1), (1, 1), 1),
     WeightChoice(8, None, True, 8), "int8"),
    ("depthwise float", LayerShape("Conv", (1, 16, 8, 8), (16, 1, 3, 3), (1, 1), (1, 1), (1, 1), 16),
     WeightChoice(None), None),  # ORT repacks float conv weights (NCHWc) under new names
    ("matmul int4 blocked", LayerShape("MatMul", (1, 5, 64), (32, 64)),
     WeightChoice(4, 32, True, None), "int4"),
    ("gemm uint4", LayerShape("Gemm", (4, 64), (10, 64)), WeightChoice(4, None, False, 8), None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "shape", "choice", "kind"), CASES, ids=[c[0] for c in CASES])
def test_a_layer_graph_runs_with_the_right_output_shape_and_kernel(
    name, shape, choice, kind, tmp_path
):
    model = layer_onnx(shape, choice)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "layer.onnx"
    onnx.save(model, path)
    runtime = get_runtime("onnxruntime")
    session = runtime.open(runtime.build(path, tmp_path / "built.onnx"), precision="exact")
    out = session.run(np.zeros(shape.input_shape, np.float32))
    if shape.op == "Conv":
        conv = nn.Conv2d(shape.weight_shape[1] * shape.groups, shape.weight_shape[0], 3,
                         shape.stride, shape.padding, groups=shape.groups)  # fmt: skip
        assert out.shape == conv(torch.zeros(shape.input_shape)).shape
    else:
        assert out.shape == (*shape.input_shape[:-1], shape.weight_shape[0])
    if kind:
        assert session.layer_kernels(["layer"])["layer"]["kind"] == kind


def test_the_run_predicts_latency_per_layer_and_sets_it_beside_the_measurement(demo_run):
    report = json.loads((demo_run[0] / "report.json").read_text())
    rows = report["layer_latency"]["layers"]
    layers = {lp["name"] for lp in report["plan"]["layers"]}
    for runtime in ("onnxruntime", "openvino"):
        for batch in (1, 32):
            got = {r["layer"] for r in rows if r["runtime"] == runtime and r["batch"] == batch}
            assert got == layers
    assert all(r["ms"] >= 0 and r["call_ms"] > 0 and r["source"] == "measured" for r in rows)
    assert sum(r["ms"] for r in rows if r["choice"] == "float") > 0  # net of the call overhead
    candidates = {
        (lp["name"], choice_label(c)) for lp in report["plan"]["layers"] for c in lp["candidates"]
    }
    assert {(r["layer"], r["choice"]) for r in rows} == candidates  # every candidate timed
    prediction = report["latency_prediction"]
    assert len(prediction) == 4 and all(p["measured_student_over_teacher"] for p in prediction)
    assert "Predicted vs measured latency" in (demo_run[0] / "report.md").read_text()
