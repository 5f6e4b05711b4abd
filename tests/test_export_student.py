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
from edgekd.quant import ActQuant, QuantLayer, fold_batchnorm, prepare_qat
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
    inputs = [lp for lp in plan.layers if lp.activation_bits]
    read_by_int8 = {lp.input_from for lp in inputs}  # their reader's input Q follows them
    outputs = [lp for lp in inputs if not lp.feeds_output and lp.name not in read_by_int8]
    assert n_qdq == len(inputs) + len(outputs)
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


def test_int8_layers_chained_through_an_activation_run_as_one_integer_chain(
    tiny, example, tmp_path
):
    """features.0 -> ReLU -> features.3: one Q between them (the reader's), so ONNX Runtime feeds
    one QLinearConv into the next and OpenVINO runs both as u8 convolutions with no float
    FakeQuantize between them (the two before features.0 and head.1 stay)."""
    from edgekd.runtimes import get_runtime

    plan = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu")], tiny, example)
    assert plan.layer("features.3").input_from == "features.0"
    student = prepare_qat(fold_batchnorm(tiny, example), plan)
    torch.manual_seed(0)
    student.train()(torch.rand(64, 1, 8, 8))
    assert student.features[0].out_quant is None and student.features[3].act_quant is not None
    path = tmp_path / "student.onnx"
    onnx.save(student_onnx(student.eval(), example), path)

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    convs = [n for n in nodes if n.op_type == "QLinearConv"]
    assert len(convs) == 2 and convs[0].output[0] == convs[1].input[0]

    ov = get_runtime("openvino").open(path)
    executed = ov.executed()
    # counted whatever precision this CPU names them in (u8/i8 convs; FakeQuantize in f32 or bf16)
    int8_convs = sum(n for k, n in executed.items() if k in ("Convolution:u8", "Convolution:i8"))
    assert int8_convs == 2
    assert sum(n for k, n in executed.items() if k.startswith("FakeQuantize:")) == 2


class ResidualNet(torch.nn.Module):
    """stem -> two residual blocks -> head: each block's input feeds its first conv and its add."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(8, 16, 1)
            self.c2 = torch.nn.Conv2d(16, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.bn(self.c2(torch.relu(self.c1(x))))

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.block1, self.block2 = self.Block(), self.Block()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_a_residual_add_reads_the_same_int8_codes_as_the_layer_beside_it(tmp_path):
    """block1's output feeds block2.c1 and block2's add: quantized once where block1 ends, so
    ONNX Runtime runs block1's add as QLinearAdd (block2's stays float: a float mean reads it)
    and the export still matches the student."""
    torch.manual_seed(0)
    net, example = ResidualNet().eval(), torch.rand(2, 1, 8, 8)
    plan = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu")], net, example)
    assert plan.layer("block2.c1").skip_from == "block1"
    assert plan.layer("block1.c1").skip_from == "relu"
    student = prepare_qat(fold_batchnorm(net, example), plan)
    x = torch.rand(64, 1, 8, 8)
    student.train()(x)
    student.eval()
    path = tmp_path / "student.onnx"
    onnx.save(student_onnx(student, example), path)

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearAdd") == 1 and ops.count("Add") == 1
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = student(x).numpy()
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


class SharedOutput(torch.nn.Module):
    """a's output feeds b and an add: b reads it as a wrote it, beside another reader."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.head((y + self.b(y)).mean((2, 3)))


def test_a_layer_reading_an_int8_output_beside_an_add_shares_its_quantizer_calibrated_once():
    from edgekd.distill.train import calibrate

    torch.manual_seed(0)
    net, example = SharedOutput().eval(), torch.rand(2, 1, 8, 8)
    plan = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu")], net, example)
    assert plan.layer("b").shares_quant_with == "a"
    student = prepare_qat(fold_batchnorm(net, example), plan)
    assert student.b.act_quant is student.a.out_quant
    calibrate(student, torch.rand(64, 1, 8, 8).numpy(), 16)
    quantizers = [m for m in student.modules() if isinstance(m, ActQuant)]
    assert quantizers and all(bool(q.initialized) and q.hi > q.lo for q in quantizers)
    model = student_onnx(student, example)  # one Q -> DQ on a's output serves b and the add
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 4  # a's input and output, b's output, head's input: none for b's input


def test_a_dead_channel_keeps_the_int32_bias_runtimes_fuse_in_range(tiny, example):
    """BatchNorm folding leaves channels whose weights are ~1e-9 of their layer's (EfficientNet-
    Lite0 has dozens). A fused integer conv adds bias / (input scale x weight scale) as int32;
    with a weight scale that small it overflows (ONNX Runtime's QLinearConv gave Lite0's stem
    1.2 where the student has 0). The weight scale is floored, so it fits."""
    with torch.no_grad():
        tiny.features[1].weight[0] = 1e-12  # BatchNorm gamma: channel 0 is dead, its bias not
        tiny.features[1].bias[0] = -2.0
    plan = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu")], tiny, example)
    student = prepare_qat(fold_batchnorm(tiny, example), plan)
    torch.manual_seed(0)
    student.train()(torch.rand(64, 1, 8, 8))
    model = student_onnx(student.eval(), example)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = {n.output[0]: n for n in model.graph.node}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        x_scale = inits[made_by[conv.input[0]].input[1]]
        w_scale = inits[made_by[conv.input[1]].input[1]]
        int32_bias = np.abs(inits[conv.input[2]]) / (x_scale * w_scale)
        assert int32_bias.max() < 2**31 - 1


def test_a_channels_last_example_exports_the_same_graph_as_a_contiguous_one():
    """Stacked HWC images transposed to NCHW are channels-last in memory; the exporter must not
    turn ``x.view(batch, -1)`` into a strided Gather (which OpenVINO's int8 passes get wrong)."""
    from edgekd.export.torch_onnx import export_float

    class Pooled(torch.nn.Module):  # EfficientNet-Lite's head
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.pool = torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1)
            self.drop, self.fc = torch.nn.Dropout(0.2), torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.drop(self.pool(self.conv(x)).view(x.size(0), -1)))

    model = Pooled().eval()
    example = torch.rand(2, 3, 16, 16)
    strided = torch.from_numpy(
        np.stack([a.transpose(2, 0, 1) for a in np.random.rand(2, 16, 16, 3)])
    )
    assert not strided.is_contiguous()
    ops = [
        [n.op_type for n in export_float(model, x.float()).graph.node] for x in (example, strided)
    ]
    assert ops[0] == ops[1]
