"""One layer as a small ONNX graph, in the form edgekd exports it, to time on a runtime.

Weights: float, or integer codes behind ``DequantizeLinear`` (per output channel, or blocks along
the input dimension; signed when symmetric, else unsigned with zero points). Activations: 8-bit
``QuantizeLinear -> DequantizeLinear`` (uint8, or int8 with zero point 0 where symmetric) on the input and on the output when the layer's inputs
are quantized, since the next quantized layer's input Q follows it in the real graph and lets
runtimes form whole integer kernels. Values are random: latency does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21


@dataclass(frozen=True)
class LayerShape:
    """What a layer computes, independent of its values."""

    op: str  # Conv, Gemm or MatMul
    input_shape: tuple[int, ...]  # batch first
    weight_shape: tuple[int, ...]  # torch layout: (out, in/groups, *k) or (out, in)
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1


@dataclass(frozen=True)
class WeightChoice:
    bits: int | None  # None: float weights
    block_size: int | None = None
    symmetric: bool = True
    activation_bits: int | None = None  # 8: int8 input (and output) activations
    activation_symmetric: bool = False  # zero point 0 (TensorRT)

    @property
    def label(self) -> str:
        if self.bits is None:
            return "float"
        acts = f"a{self.activation_bits}" if self.activation_bits else ""
        return f"w{self.bits}{acts}" + (f" block {self.block_size}" if self.block_size else "")


def layer_onnx(shape: LayerShape, choice: WeightChoice) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    w = rng.standard_normal(shape.weight_shape).astype(np.float32) * 0.05
    if shape.op == "MatMul":
        w = np.ascontiguousarray(w.T)  # ONNX MatMul takes (in, out), as the exporter writes it
    weight = "layer.weight"  # edgekd's export names, so Session.layer_kernels finds the layer
    if choice.bits is None:
        inits.append(numpy_helper.from_array(w, weight))
    else:
        inits += _quantized(w, shape.op, choice)
        inputs = ["layer.weight_quantized", "layer.weight_scale"]
        inputs += [] if choice.symmetric else ["layer.weight_zero_point"]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                inputs,
                [weight],
                "layer.weight_DequantizeLinear",
                **_dq_axis(shape.op, choice),
            )
        )
    x = "input"
    if choice.activation_bits:
        signed = choice.activation_symmetric  # as ActQuant: int8 with zero point 0, else uint8
        zero = 0 if signed else 118
        x = _qdq(
            nodes, inits, "input", "input_q", 0.05, np.array(zero, np.int8 if signed else np.uint8)
        )
    y = "layer_out" if choice.activation_bits else "output"
    nodes += _compute(shape, x, weight, y, inits)
    if choice.activation_bits:
        zero = np.array(0, np.int8) if signed else np.array(128, np.uint8)
        _qdq(nodes, inits, y, "output_q", scale=0.1, zero_point=zero, out="output")
    graph = helper.make_graph(
        nodes,
        shape.op,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape.input_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape(shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def output_shape(shape: LayerShape) -> tuple[int, ...]:
    if shape.op != "Conv":
        return (*shape.input_shape[:-1], shape.weight_shape[0])
    spatial = tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, k, stride, pad, dil in zip(
            shape.input_shape[2:], shape.weight_shape[2:], shape.stride, shape.padding,
            shape.dilation, strict=True,
        )
    )  # fmt: skip
    return (shape.input_shape[0], shape.weight_shape[0], *spatial)


def _quantized(w: np.ndarray, op: str, choice: WeightChoice) -> list:
    storage = 8 if choice.bits > 4 else 4
    lo, hi = (
        (-(2 ** (storage - 1)), 2 ** (storage - 1) - 1) if choice.symmetric else (0, 2**storage - 1)
    )
    q = np.random.default_rng(1).integers(lo, hi + 1, size=w.shape)
    axis, block = _dq_axis(op, choice)["axis"], choice.block_size
    scale_shape = list(w.shape)
    if block:
        scale_shape[axis] = -(-w.shape[axis] // block)
    else:
        scale_shape = [w.shape[axis]]
    dtype = {
        (8, True): TensorProto.INT8,
        (8, False): TensorProto.UINT8,
        (4, True): TensorProto.INT4,
        (4, False): TensorProto.UINT4,
    }[(storage, choice.symmetric)]
    out = [
        helper.make_tensor("layer.weight_quantized", dtype, q.shape, q.flatten().tolist()),
        numpy_helper.from_array(np.full(scale_shape, 0.01, np.float32), "layer.weight_scale"),
    ]
    if not choice.symmetric:
        zero = np.full(scale_shape, (lo + hi + 1) // 2, np.int64)
        out.append(
            helper.make_tensor(
                "layer.weight_zero_point", dtype, zero.shape, zero.flatten().tolist()
            )
        )
    return out


def _dq_axis(op: str, choice: WeightChoice) -> dict:
    """Per output channel, or blocks along the input: MatMul weights are (in, out)."""
    if choice.block_size:
        return {"axis": 0 if op == "MatMul" else 1, "block_size": choice.block_size}
    return {"axis": 1 if op == "MatMul" else 0}


def _qdq(nodes, inits, x: str, name: str, scale: float, zero_point: np.ndarray, out=None):
    inits += [
        numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
        numpy_helper.from_array(zero_point, f"{name}_zero_point"),
    ]
    qparams = [f"{name}_scale", f"{name}_zero_point"]
    nodes.append(helper.make_node("QuantizeLinear", [x, *qparams], [f"{name}_quantized"]))
    result = out or f"{name}_dequantized"
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", *qparams], [result]))
    return result


def _compute(shape: LayerShape, x: str, weight: str, y: str, inits: list) -> list:
    out_channels = shape.weight_shape[0]
    inits.append(numpy_helper.from_array(np.zeros(out_channels, np.float32), "layer.bias"))
    if shape.op == "Conv":
        return [
            helper.make_node(
                "Conv",
                [x, weight, "layer.bias"],
                [y],
                strides=list(shape.stride),
                pads=list(shape.padding) * 2,
                dilations=list(shape.dilation),
                group=shape.groups,
            )
        ]
    if shape.op == "Gemm":
        return [helper.make_node("Gemm", [x, weight, "layer.bias"], [y], transB=1)]
    # the exporter writes a Linear on 3-D input as MatMul + Add
    return [
        helper.make_node("MatMul", [x, weight], [f"{y}_nobias"]),
        helper.make_node("Add", [f"{y}_nobias", "layer.bias"], [y]),
    ]
