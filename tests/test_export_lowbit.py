"""The low-bit ONNX rewrite keeps the trained numbers: real onnxruntime and OpenVINO, no mocks."""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from edgekd.errors import StageError
from edgekd.export.lowbit import (
    QuantizedTensor,
    dequantize,
    quantize_activations,
    quantize_weights,
)
from edgekd.runtimes import get_runtime

LAYERS = ("features.0.weight", "features.2.weight", "fc.weight")
# case -> (bits, symmetric, block_size) for each of LAYERS. The 8-bit convs are unsigned: with
# int8 activations onnxruntime fuses them into QLinearConv, whose u8s8 kernel saturates on x86
# without VNNI, so full-range signed int8 conv weights would test this CPU, not the rewrite.
CASES = {
    "w4": [(4, False, None), (4, True, 4), (4, True, 16)],
    "w3": [(3, True, None), (3, False, None), (3, False, 16)],
    "w2": [(2, False, None), (2, True, None), (2, False, None)],
    "w8": [(8, False, None), (8, False, None), (8, True, None)],
}
CONTAINER = {
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (3, True): TensorProto.INT4,
    (3, False): TensorProto.UINT4,
    (2, True): TensorProto.INT4,
    (2, False): TensorProto.UINT4,
}
X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
CALIBRATION = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten()
        )
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(x)))


def _expand(param: np.ndarray, shape: tuple[int, ...], axis: int, block: int | None) -> np.ndarray:
    if block is None:
        return param.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    return np.repeat(param, block, axis=axis)[tuple(slice(0, n) for n in shape)]


def _quantize(w: np.ndarray, bits: int, symmetric: bool, block: int | None) -> QuantizedTensor:
    """Min/max quantizer per output channel or per block of input channels; keeps 0 exact."""
    if block is None:
        groups, axis = w.reshape(w.shape[0], -1), 1
    else:
        groups, axis = w.reshape(w.shape[0], w.shape[1] // block, block, *w.shape[2:]), 2
    lo = np.minimum(groups.min(axis=axis), 0)
    hi = np.maximum(groups.max(axis=axis), 0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = np.maximum(-lo, hi) / qmax
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1).astype(np.float32)
    zero_point = None if symmetric else np.clip(np.round(-lo / scale), qmin, qmax).astype(np.int32)
    param_axis = 0 if block is None else 1
    q = np.round(w / _expand(scale, w.shape, param_axis, block))
    if zero_point is not None:
        q += _expand(zero_point, w.shape, param_axis, block)
    q = np.clip(q, qmin, qmax).astype(np.int32)
    return QuantizedTensor(q, scale, zero_point, bits, symmetric, block)


def _export(net: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=21,
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        input_names=["x"],
        output_names=["logits"],
        verbose=False,
    )
    return program.model_proto


def _load_dequantized(net: nn.Module, name: str, t: QuantizedTensor) -> None:
    with torch.no_grad():
        net.get_parameter(name).copy_(torch.from_numpy(dequantize(t)))


@functools.cache
def _build(case: str) -> SimpleNamespace:
    """A net with a 2:4-sparse fc and quantized weights loaded, its float export, its rewrite."""
    torch.manual_seed(0)
    net = Net().eval()
    fc = net.fc.weight.detach().numpy()
    smallest = np.argsort(np.abs(fc.reshape(-1, 4)), axis=1)[:, :2]
    sparse = np.zeros((fc.size // 4, 4), dtype=bool)
    np.put_along_axis(sparse, smallest, True, axis=1)
    sparse = sparse.reshape(fc.shape)
    with torch.no_grad():
        net.fc.weight[torch.from_numpy(sparse)] = 0.0
    weights = {}
    for name, spec in zip(LAYERS, CASES[case], strict=True):
        weights[name] = _quantize(net.get_parameter(name).detach().numpy(), *spec)
        _load_dequantized(net, name, weights[name])
    float_model = _export(net, X[:2])
    return SimpleNamespace(
        name=case,
        net=net,
        weights=weights,
        sparse=sparse,
        float_model=float_model,
        model=quantize_weights(float_model, weights),
    )


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> SimpleNamespace:
    return _build(request.param)


def _ort(
    model: onnx.ModelProto,
    x: torch.Tensor,
    optimize: bool = True,
    config: dict[str, str] | None = None,
) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x.numpy()})[0]


def _runtime(name: str, model: onnx.ModelProto, tmp_path, precision: str = "exact"):
    """A session of edgekd's runtime ``name`` on ``model``: ``exact`` is full f32 (OpenVINO
    would compute in bf16 on CPUs that have it, and quantize FullyConnected inputs to int8)."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    runtime = get_runtime(name)
    artifact = runtime.build(path, tmp_path / f"built{runtime.artifact_suffix}")
    return runtime.open(artifact, precision=precision)


def _decode(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each DequantizeLinear output recomputed in numpy from the stored initializers."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    decoded = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis, block = attrs["axis"], attrs.get("block_size")
        q = inits[node.input[0]].astype(np.int32)
        if len(node.input) > 2:
            q = q - _expand(inits[node.input[2]].astype(np.int32), q.shape, axis, block)
        scale = _expand(inits[node.input[1]], q.shape, axis, block)
        decoded[node.output[0]] = q.astype(np.float32) * scale
    return decoded


def test_weights_are_stored_as_low_bit_integers_behind_dequantize_linear(case):
    onnx.checker.check_model(case.model, full_check=True)
    assert case.model.opset_import[0].version == 21
    inits = {i.name: i for i in case.model.graph.initializer}
    dequantized = {n.output[0] for n in case.model.graph.node if n.op_type == "DequantizeLinear"}
    for name, (bits, symmetric, _) in zip(LAYERS, CASES[case.name], strict=True):
        assert name not in inits
        assert name in dequantized
        assert inits[f"{name}_quantized"].data_type == CONTAINER[(bits, symmetric)]


def test_stored_codes_decode_exactly_to_the_trained_weights(case):
    decoded = _decode(case.model)
    assert set(decoded) == set(LAYERS)
    for name, w in decoded.items():
        np.testing.assert_array_equal(w, dequantize(case.weights[name]))
        np.testing.assert_array_equal(w, case.net.get_parameter(name).detach().numpy())
    assert (decoded["fc.weight"][case.sparse] == 0).all()


def test_onnxruntime_matches_torch_with_the_dequantized_weights(case):
    expected = case.net(X).detach().numpy()
    np.testing.assert_allclose(_ort(case.model, X), expected, rtol=0, atol=1e-5)


def test_openvino_in_f32_matches_torch_with_the_dequantized_weights(case, tmp_path):
    session = _runtime("openvino", case.model, tmp_path)
    assert session.inference_precision() == "f32"
    expected = case.net(X).detach().numpy()
    np.testing.assert_allclose(session.run(X.numpy()), expected, rtol=0, atol=1e-4)


def test_activation_qdq_matches_torch_fake_quant(case):
    layers = [case.net.features[0], case.net.features[2], case.net.fc]
    ranges = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: ranges.append(args[0])) for layer in layers
    ]
    case.net(CALIBRATION)
    for hook in hooks:
        hook.remove()
    qparams = []
    for x in ranges:
        lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        scale = float(np.float32((hi - lo) / 255))
        qparams.append((scale, int(np.clip(round(-lo / scale), 0, 255)), False))

    def fake_quant(params):
        scale, zero_point, _ = params
        return lambda _, args: torch.fake_quantize_per_tensor_affine(
            args[0], scale, zero_point, 0, 255
        )

    hooks = [
        layer.register_forward_pre_hook(fake_quant(p))
        for layer, p in zip(layers, qparams, strict=True)
    ]
    expected = case.net(X).detach().numpy()
    for hook in hooks:
        hook.remove()
    inputs = [n.name for n in case.model.graph.node if n.op_type in ("Conv", "Gemm")]
    model = quantize_activations(case.model, dict(zip(inputs, qparams, strict=True)))

    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 3
    # The graph itself computes the fake quant; ORT's optimizer then rounds biases to int32
    # (x_scale * w_scale steps), which moves logits by ~1e-3 but must not change a prediction.
    exact = _ort(model, X, optimize=False)
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_ort(model, X).argmax(1), expected.argmax(1))


def test_linear_on_3d_input_quantizes_the_transposed_weight_the_exporter_folded(tmp_path):
    torch.manual_seed(0)
    net = Tokens().eval()
    weights = {}
    for name in ("proj.weight", "head.weight"):
        weights[name] = _quantize(net.get_parameter(name).detach().numpy(), 4, True, 16)
        _load_dequantized(net, name, weights[name])
    x = torch.randn(3, 5, 32)
    float_model = _export(net, x)
    assert not set(weights) & {i.name for i in float_model.graph.initializer}

    model = quantize_weights(float_model, weights)

    onnx.checker.check_model(model, full_check=True)
    decoded = _decode(model)
    for name, t in weights.items():
        node = next(n for n in model.graph.node if n.name == f"{name}_DequantizeLinear")
        np.testing.assert_array_equal(decoded[node.output[0]], dequantize(t).T)
    expected = net(x).detach().numpy()
    # onnxruntime fuses these into MatMulNBits, which by default rounds activations to int8.
    exact = _ort(model, x, config={"session.qdq_matmulnbits_accuracy_level": "0"})
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-5)
    openvino = _runtime("openvino", model, tmp_path)
    np.testing.assert_allclose(openvino.run(x.numpy()), expected, rtol=0, atol=1e-4)
    # both runtimes keep these int4 weights inside their matrix kernels
    kernels = {
        name: _runtime(name, model, tmp_path).layer_kernels(["proj", "head"])
        for name in ("onnxruntime", "openvino")
    }
    assert kernels["onnxruntime"]["proj"] == {"kernel": "MatMulNBits (bits=4)", "kind": "int4"}
    assert kernels["openvino"]["head"]["kind"] == "int4"
    assert kernels["openvino"]["head"]["kernel"].startswith("FullyConnected")


def test_unknown_weight_name_raises_stage_error():
    built = _build("w4")
    with pytest.raises(StageError, match=r"features\.9\.weight"):
        quantize_weights(built.float_model, {"features.9.weight": built.weights["fc.weight"]})


def test_out_of_range_code_raises_stage_error():
    built = _build("w4")
    t = built.weights["fc.weight"]
    q = t.q.copy()
    q[0, 0] = 8
    with pytest.raises(StageError, match=r"fc\.weight.*outside signed 4-bit"):
        quantize_weights(built.float_model, {"fc.weight": dataclasses.replace(t, q=q)})


def test_scale_of_the_wrong_shape_raises_stage_error():
    built = _build("w4")
    t = built.weights["fc.weight"]
    wrong = dataclasses.replace(t, scale=t.scale[:, :-1])
    with pytest.raises(StageError, match=r"fc\.weight.*scale shape"):
        quantize_weights(built.float_model, {"fc.weight": wrong})


def test_exported_weights_that_differ_from_the_codes_raise_stage_error():
    built = _build("w4")
    t = built.weights["fc.weight"]
    with pytest.raises(StageError, match=r"fc\.weight.*differ"):
        quantize_weights(
            built.float_model, {"fc.weight": dataclasses.replace(t, scale=t.scale * 2)}
        )


def test_unknown_activation_node_raises_stage_error():
    built = _build("w4")
    with pytest.raises(StageError, match="no_such_node"):
        quantize_activations(built.model, {"no_such_node": (0.1, 0, False)})
