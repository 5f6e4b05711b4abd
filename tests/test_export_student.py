"""The student's ONNX: real low-bit weights that reproduce the trained fake-quant model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import decode_weight

from edgekd.export.torch_onnx import student_onnx
from edgekd.plan import resolve_plan
from edgekd.quant import QuantLayer, fold_batchnorm, prepare_qat
from edgekd.recipe import load_recipe
from edgekd.targets import load_target


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # W4 per-channel asymmetric, INT8 activations
        [
            "quant.weight_bits=3",
            "quant.granularity=block",
            "quant.block_size=4",
            "quant.symmetric=true",
        ],
        ["quant.activation_bits=32"],  # weight-only
    ],
)
def test_student_onnx_matches_fake_quant_student(tiny, example, tmp_path, overrides):
    plan = resolve_plan(load_recipe("default", overrides), [load_target("x86-cpu")], tiny, example)
    student = prepare_qat(fold_batchnorm(tiny, example), plan)
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    student.train()(x)  # activation observers see data
    student.eval()
    model = student_onnx(student, example)
    onnx.checker.check_model(model, full_check=True)
    low_bit = {i.data_type for i in model.graph.initializer} & {
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    }
    assert low_bit
    n_qdq = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    inputs = [lp for lp in plan.layers if lp.activation_bits]  # and an int8 output unless logits
    assert n_qdq == len(inputs) + sum(not lp.feeds_output for lp in inputs)
    assert len(inputs) == (0 if "quant.activation_bits=32" in overrides else len(plan.layers))
    for name, module in student.named_modules():
        if isinstance(module, QuantLayer):  # the stored low-bit codes decode to the trained weights
            trained = module.quantized_weight().detach().numpy()
            np.testing.assert_array_equal(decode_weight(model, f"{name}.weight"), trained)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = student(x).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
