"""Architectures beyond a plain CNN: conv heads, Linear on 3-D inputs, BatchNorm after Linear,
shared inputs. Each was a way to get a wrong or crashing student."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import decode_weight
from torch import nn

from edgekd.errors import StageError
from edgekd.export.torch_onnx import student_onnx
from edgekd.plan import resolve_plan, trace_layers
from edgekd.prune.structured import kept_channels, prune_channels
from edgekd.quant import QuantLayer, fold_batchnorm, prepare_qat
from edgekd.recipe import load_recipe
from edgekd.targets import load_target


class ConvHead(nn.Module):
    """Classifier is a 1x1 conv followed by a global mean: the output layer is not a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.cls = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return self.cls(self.body(x)).mean((2, 3))


class Tokens(nn.Module):
    """Linear on (batch, tokens, features), then a flatten Torch-Pruning cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x.flatten(1, 2))).flatten(1))


class LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.bn = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x.flatten(1)))))


class SharedInput(nn.Module):
    """Two layers read one tensor, and a residual add reads it too."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        return self.out(self.a(h) + self.b(h) + h)


def _plan(model, example, preset="default", overrides=()):
    return resolve_plan(
        load_recipe(preset, list(overrides)), [load_target("x86-cpu")], model, example
    )


def _example():
    torch.manual_seed(0)
    return torch.rand(2, 1, 8, 8)


def test_conv_output_layer_is_found_and_keeps_its_channels():
    model, x = ConvHead().eval(), _example()
    assert trace_layers(model, x).outputs == {"cls"}
    student = copy.deepcopy(model)
    prune_channels(student, _plan(model, x, "small"), x)
    assert student(x).shape == (2, 10)
    channels = kept_channels(model, student)
    assert channels["cls"] == [10, 10] and channels["body.2"] == [32, 16]


def test_linear_on_3d_input_is_planned_as_matmul():
    model, x = Tokens().eval(), _example()
    plan = _plan(model, x)
    assert plan.layer("proj").op == "MatMul" and plan.layer("head").op == "Gemm"


def test_the_plan_keeps_channels_whose_pruning_breaks_a_reshape_and_says_why():
    model, x = Tokens().eval(), _example()
    plan = _plan(model, x, "small")
    proj = plan.layer("proj")
    assert proj.keep_ratio == 1.0 and "breaks the forward pass" in " ".join(proj.notes)
    assert any("proj" in note and "breaks" in note for note in plan.adjustments)
    forced = dataclasses.replace(
        plan,
        layers=[
            dataclasses.replace(lp, keep_ratio=0.5) if lp is proj else lp for lp in plan.layers
        ],
    )
    with pytest.raises(StageError, match=r"prune\.skip"):  # pruned anyway: a named error
        prune_channels(copy.deepcopy(model), forced, x)


def test_batchnorm_after_linear_is_folded_and_exports_exactly():
    torch.manual_seed(0)
    model, x = LinearBN(), _example()
    model.train()(torch.rand(32, 1, 8, 8))  # real running statistics
    model.eval()
    reference = model(x)
    folded = fold_batchnorm(copy.deepcopy(model), x)
    assert isinstance(folded.bn, nn.Identity)
    torch.testing.assert_close(folded(x), reference, rtol=1e-5, atol=1e-5)
    student = prepare_qat(folded, _plan(model, x))
    student.train()(torch.rand(16, 1, 8, 8))
    onnx_model = student_onnx(student.eval(), x)  # raises if any exported weight is not exact
    np.testing.assert_array_equal(
        decode_weight(onnx_model, "fc.weight"), student.fc.quantized_weight().detach().numpy()
    )


def test_each_layer_gets_its_own_input_qdq_an_int8_output_and_residuals_read_no_input_qdq():
    model, x = SharedInput().eval(), _example()
    student = prepare_qat(model, _plan(model, x))
    student.train()(torch.rand(16, 1, 8, 8) * 2)
    student.eval()
    onnx_model = student_onnx(student, x)
    quantized = [n.name for n in onnx_model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == 5  # an input Q per layer, an output Q on a and b (not on the logits)
    add_inputs = {i for n in onnx_model.graph.node if n.op_type == "Add" for i in n.input}
    assert not any("input_dequantized" in i for i in add_inputs)  # the residual reads h itself
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = torch.rand(32, 1, 8, 8)
    got = sess.run(None, {"input": batch.numpy()})[0]
    want = student(batch).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())


def test_override_with_only_a_block_size_keeps_the_layer_quantized():
    model, x = SharedInput().eval(), _example()
    plan = _plan(model, x, overrides=["quant.overrides=[{match: 'a', block_size: 16}]"])
    assert plan.layer("a").weight_bits == 4 and plan.layer("a").block_size == 16
    floated = _plan(model, x, overrides=["quant.overrides=[{match: 'out', weight_bits: float}]"])
    assert floated.layer("out").weight_bits is None and floated.layer("a").weight_bits == 4
    student = prepare_qat(copy.deepcopy(model), floated)
    assert not isinstance(student.out, QuantLayer) and isinstance(student.a, QuantLayer)
