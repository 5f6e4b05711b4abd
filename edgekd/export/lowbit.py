"""Rewrite an exported float ONNX graph into a real low-bit QDQ graph.

Why this exists: torch's ONNX exporters cannot emit fake-quant ops below 8 bits, so the student is
exported as a float graph whose weights already equal the dequantized codes, and this module swaps
those weights for integer codes feeding ``DequantizeLinear`` and puts 8-bit ``QuantizeLinear ->
DequantizeLinear`` pairs on activations (uint8 codes, or int8 with zero point 0 where symmetric). Runtimes then see the same numbers training saw.

Storage (all DequantizeLinear opset 21, IR version 10): 8-bit codes use INT8/UINT8, and so do
7-bit codes (the reduced int8 range that keeps u8s8 kernels from saturating on CPUs without VNNI);
4-bit codes INT4/UINT4. ONNX has no 3-bit type, so 3-bit codes live in INT4/UINT4; their range is still
checked against 3 bits. 2-bit codes also live in INT4/UINT4 although ONNX has INT2/UINT2
(opset 25): OpenVINO 2026.4 refuses to load INT2 ("Unsupported type"), and onnxruntime 1.32
fuses DequantizeLinear(INT2) -> MatMul into a MatMulNBits that returns wrong numbers whenever the
output width is not a multiple of 4. The cost is 4 bits of storage per 2-bit weight.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import version_converter

from edgekd.errors import StageError

_CONTAINERS = {
    (8, True): ir.DataType.INT8,
    (8, False): ir.DataType.UINT8,
    (7, True): ir.DataType.INT8,
    (7, False): ir.DataType.UINT8,
    (4, True): ir.DataType.INT4,
    (4, False): ir.DataType.UINT4,
    (3, True): ir.DataType.INT4,
    (3, False): ir.DataType.UINT4,
    (2, True): ir.DataType.INT4,
    (2, False): ir.DataType.UINT4,
}
OPSET = 21  # first DequantizeLinear with INT4/UINT4 and block_size


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes and the parameters that dequantize them: w = (q - zero_point) * scale.

    ``q`` has the torch weight layout (Linear ``(out, in)``, Conv ``(out, in/groups, kh, kw)``).
    Per-channel (``block_size=None``): ``scale`` has shape ``(out,)``. Blocked along the input
    dim: ``scale`` is shaped like ``q`` with axis 1 replaced by ``ceil(in / block_size)``, as
    ONNX blocked ``DequantizeLinear`` expects. ``zero_point`` matches ``scale``; None means
    symmetric (zero point 0).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    signed: bool
    block_size: int | None = None


def dequantize(t: QuantizedTensor) -> np.ndarray:
    """float32 weights exactly as ONNX ``DequantizeLinear`` computes them from ``t``."""
    codes = t.q.astype(np.int32)
    if t.zero_point is not None:
        codes = codes - _broadcast(t, np.asarray(t.zero_point).astype(np.int32))
    return codes.astype(np.float32) * _broadcast(t, np.asarray(t.scale, dtype=np.float32))


def quantize_weights(
    model: onnx.ModelProto, weights: dict[str, QuantizedTensor]
) -> onnx.ModelProto:
    """Replace each named float initializer by low-bit codes + DequantizeLinear feeding every
    original consumer.

    Keys are torch parameter names. The exporter's optimizer folds the ``Transpose`` in front of
    a ``MatMul`` (``nn.Linear`` on a 3-D input) into a new initializer such as ``val_4`` holding
    ``weight.T``; a name missing from the graph is therefore looked up as the weight of the
    MatMul nodes its module became (``_find_transposed``) and stored transposed, ``(in, out)``
    with blocks along axis 0, which is the layout onnxruntime fuses into ``MatMulNBits``. The
    exporter's optimizer runs without merging equal initializers (``torch_onnx._optimize``), so
    each layer has its own. Every initializer must equal
    ``dequantize(t)`` bit for bit, so the low-bit graph computes what training computed.
    """
    irm = ir.from_proto(model)
    _raise_opset(irm, OPSET)
    graph = irm.graph
    new_nodes = []
    for name, t in weights.items():
        _check_codes(name, t)
        w = dequantize(t)
        init = graph.initializers.get(name)
        transposed = init is None
        if transposed:
            init = _find_transposed(graph, name, w)
        else:
            _check_matches(name, init, w)
        new_nodes.append(_dequantize_node(graph, name, init, t, transposed))
    graph.extend(new_nodes)
    graph.sort()
    return _to_proto(irm)


def quantize_tables(model: onnx.ModelProto, tables: dict[str, QuantizedTensor]) -> onnx.ModelProto:
    """Store each named embedding table (keys: torch parameter names) as integer codes with one
    scale per row, and make every Gather of it gather codes and scales, then multiply
    (Gather -> Cast -> Mul): only the rows read are dequantized.

    Why not DequantizeLinear -> Gather: ONNX Runtime 1.32 keeps the DequantizeLinear and
    dequantizes the whole table on every call (MiniLM's 30522 x 384 words: 6.9 ms at batch 1 on
    one core; gathering first: 0.01 ms). A table the exporter folded away (constant ids, such
    as Hugging Face's token type buffer), or one read by anything but a Gather, is left as it
    is: its float values are the dequantized ones."""
    irm = ir.from_proto(model)
    graph = irm.graph
    for name, t in tables.items():
        _check_codes(name, t)
        init = graph.initializers.get(name)
        if init is None:
            continue
        _check_matches(name, init, dequantize(t))
        gathers = [node for node, index in init.uses() if node.op_type == "Gather" and index == 0
                   and node.attributes.get_int("axis", 0) == 0]  # fmt: skip
        if not gathers or len(gathers) < len(init.uses()):  # read otherwise too: stays float
            continue
        codes = _initializer(
            graph, f"{name}_quantized", t.q.astype(_CONTAINERS[(t.bits, t.signed)].numpy())
        )
        scales = _initializer(graph, f"{name}_scale", np.asarray(t.scale).reshape(-1, 1))
        for node in gathers:
            graph.extend(_gather_rows(node, codes, scales))
            graph.remove(node, safe=True)
        graph.initializers.pop(init.name)
    graph.sort()
    return _to_proto(irm)


def _gather_rows(gather: ir.Node, codes: ir.Value, scales: ir.Value) -> list[ir.Node]:
    """Gather -> Cast -> Mul taking over ``gather``'s output (name and readers)."""
    ids, result = gather.inputs[1], gather.outputs[0]
    rows = ir.node("Gather", [codes, ids], {"axis": 0}, name=f"{gather.name}_codes")
    row_scales = ir.node("Gather", [scales, ids], {"axis": 0}, name=f"{gather.name}_scales")
    cast = ir.node("Cast", [rows.outputs[0]], {"to": int(ir.DataType.FLOAT)},
                   name=f"{gather.name}_cast")  # fmt: skip
    mul = ir.node("Mul", [cast.outputs[0], row_scales.outputs[0]], name=f"{gather.name}_rows")
    result.replace_all_uses_with(mul.outputs[0], replace_graph_outputs=True)
    mul.outputs[0].name, result.name = result.name, f"{result.name}_float"
    return [rows, row_scales, cast, mul]


def quantize_activations(
    model: onnx.ModelProto,
    inputs: dict[str, tuple[float, int, bool]],
    outputs: dict[str, tuple[float, int, bool]] | None = None,
    shared: set[str] = frozenset(),
) -> onnx.ModelProto:
    """Insert QuantizeLinear -> DequantizeLinear (per-tensor ``(scale, zero point, signed)``:
    int8 codes where signed, else uint8) in front of each named node's activation input (input
    0), for that node alone; and after each node named in ``outputs`` (after its bias Add, for a
    MatMul), for all its consumers.

    Inputs per consumer, as in training: layers sharing an input keep their own scales, and other
    consumers of the tensor (a residual add, a graph output) still see the float value; except
    for nodes in ``shared``, whose input is quantized for every consumer of the tensor, as the
    student quantizes it where the block producing it ends. A zero Pad the layer applies itself
    (static 'same' padding) comes after the Q -> DQ, as in the student: zero is a code, so the
    values are the same, and OpenVINO keeps the activation before it in integers.
    """
    irm = ir.from_proto(model)
    graph = irm.graph
    nodes = {node.name: node for node in graph}
    new_nodes = []
    for where, table in (("input", inputs), ("output", outputs or {})):
        for name, (scale, zero_point, signed) in table.items():
            node = nodes.get(name)
            if node is None:
                raise StageError(
                    f"activation of node {name!r}: no node has that name; check the name"
                )
            if not (math.isfinite(scale) and scale > 0):
                raise StageError(
                    f"activation of {name!r} has scale {scale}; calibrate a positive scale"
                )
            dtype = np.int8 if signed else np.uint8
            if not np.iinfo(dtype).min <= zero_point <= np.iinfo(dtype).max:
                raise StageError(
                    f"activation of {name!r} has zero point {zero_point} outside {dtype.__name__}"
                )
            qparams = [
                _initializer(graph, f"{name}_{where}_scale", np.array(scale, dtype=np.float32)),
                _initializer(
                    graph, f"{name}_{where}_zero_point", np.array(zero_point, dtype=dtype)
                ),
            ]
            prefix = f"{name}_{where}"
            if where == "output":
                new_nodes += _qdq(_result(node), list(_result(node).uses()), qparams, prefix)
                continue
            pad = _zero_pad(node.inputs[0])
            reader = pad or node  # the Q before a zero Pad: runtimes fuse the Pad into the conv
            value = reader.inputs[0]
            users = list(value.uses()) if name in shared else [(reader, 0)]
            new_nodes += _qdq(value, users, qparams, prefix)
    graph.extend(new_nodes)
    graph.sort()
    return _to_proto(irm)


def _qdq(value: ir.Value, users: list, qparams: list, prefix: str) -> list[ir.Node]:
    """Q -> DQ on ``value``, read by ``users`` ((node, input index) pairs) instead of it."""
    quantize = ir.node("QuantizeLinear", [value, *qparams], name=f"{prefix}_QuantizeLinear")
    quantize.outputs[0].name = f"{prefix}_quantized"
    dequantize = ir.node(
        "DequantizeLinear", [quantize.outputs[0], *qparams], name=f"{prefix}_DequantizeLinear"
    )
    dequantize.outputs[0].name = f"{prefix}_dequantized"
    for user, index in users:
        user.replace_input_with(index, dequantize.outputs[0])
    return [quantize, dequantize]


def _zero_pad(value: ir.Value) -> ir.Node | None:
    """The Pad producing ``value`` when it pads with zeros and only the layer reads it."""
    pad = value.producer()
    if pad is None or pad.op_type != "Pad" or len(value.uses()) != 1:
        return None
    mode = pad.attributes.get("mode")
    constant = pad.inputs[2] if len(pad.inputs) > 2 else None
    zero = constant is None or (
        constant.const_value is not None and not constant.const_value.numpy().any()
    )
    return pad if (mode is None or mode.as_string() == "constant") and zero else None


def _result(node: ir.Node) -> ir.Value:
    """A layer's output: its node's, or its bias Add's after a MatMul."""
    value = node.outputs[0]
    users = list(value.uses())
    if node.op_type == "MatMul" and len(users) == 1 and users[0][0].op_type == "Add":
        return users[0][0].outputs[0]
    return value


def _broadcast(t: QuantizedTensor, param: np.ndarray) -> np.ndarray:
    """Expand a per-channel or per-block parameter to the shape of ``t.q``."""
    if t.block_size is None:
        return param.reshape((-1,) + (1,) * (t.q.ndim - 1))
    return np.repeat(param, t.block_size, axis=1)[:, : t.q.shape[1]]


def _scale_shape(t: QuantizedTensor) -> tuple[int, ...]:
    if t.block_size is None:
        return (t.q.shape[0],)
    return (t.q.shape[0], -(-t.q.shape[1] // t.block_size), *t.q.shape[2:])


def _check_codes(name: str, t: QuantizedTensor) -> None:
    """Reject codes a runtime would read differently from training, naming the weight."""
    if (t.bits, t.signed) not in _CONTAINERS:
        raise StageError(
            f"weight {name!r}: {t.bits}-bit is not exportable; use 2, 3, 4, 7 or 8 bits"
        )
    if t.q.ndim == 0:
        raise StageError(f"weight {name!r}: codes are a scalar; per-channel needs an output axis")
    if t.block_size is not None and (t.block_size < 1 or t.q.ndim < 2):
        raise StageError(f"weight {name!r}: block size {t.block_size} needs a >= 2-D weight")
    lo, hi = (-(2 ** (t.bits - 1)), 2 ** (t.bits - 1) - 1) if t.signed else (0, 2**t.bits - 1)
    params = {"codes": t.q} if t.zero_point is None else {"codes": t.q, "zero point": t.zero_point}
    for what, arr in params.items():
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.integer):
            raise StageError(f"weight {name!r}: {what} must be integers, got {arr.dtype}")
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise StageError(
                f"weight {name!r}: {what} span [{arr.min()}, {arr.max()}], outside "
                f"{'signed' if t.signed else 'unsigned'} {t.bits}-bit [{lo}, {hi}]"
            )
    expected = _scale_shape(t)
    for what, arr in {"scale": t.scale, "zero point": t.zero_point}.items():
        if arr is not None and np.shape(arr) != expected:
            raise StageError(
                f"weight {name!r}: {what} shape {np.shape(arr)} != {expected} for codes {t.q.shape}"
            )
    if np.asarray(t.scale).dtype != np.float32 or not np.isfinite(t.scale).all():
        raise StageError(f"weight {name!r}: scale must be finite float32")


def _find_transposed(graph: ir.Graph, name: str, w: np.ndarray) -> ir.Value:
    """The initializer the exporter folded from ``weight.T``: the weight input of the MatMul
    nodes the layer's module became, by the module path in their name scope (the exporter's
    metadata), never by value: two layers with equal weights hold two initializers. Each must
    equal ``weight.T`` bit for bit; a module called twice has one per call, merged into one."""
    module = name.removesuffix(".weight")
    found = {
        node.inputs[1].name: node.inputs[1]
        for node in graph
        if node.op_type == "MatMul"
        and len(node.inputs) > 1
        and node.inputs[1] is not None
        and node.inputs[1].name in graph.initializers
        and _module_path(node) == module
    }
    if not found:
        raise StageError(
            f"weight {name!r}: no initializer in the ONNX graph by that name or as the weight of "
            f"a MatMul of module {module!r}; export the student with torch.onnx's dynamo "
            "exporter, which records each node's module"
        )
    init, *calls = found.values()
    for value in (init, *calls):
        _check_matches(name, value, np.ascontiguousarray(w.T))
    for value in calls:
        value.replace_all_uses_with(init)
        graph.initializers.pop(value.name)
    return init


def _module_path(node: ir.Node) -> str | None:
    """The module a node came from, by the name scopes torch.onnx records: ``['', 'blocks',
    'blocks.0', 'blocks.0.fc', 'linear_3']`` -> ``blocks.0.fc``."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    try:
        path = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        return None
    return path[-2] if len(path) >= 2 else None


def _check_matches(name: str, init: ir.Value, w: np.ndarray) -> None:
    tensor = init.const_value
    if tensor is None or tensor.dtype != ir.DataType.FLOAT:
        raise StageError(f"weight {name!r}: initializer {init.name!r} is not a float32 constant")
    if tuple(tensor.shape) != w.shape:
        raise StageError(
            f"weight {name!r}: codes shape {w.shape} != initializer shape {tuple(tensor.shape)}"
        )
    if not np.array_equal(tensor.numpy(), w):
        raise StageError(
            f"weight {name!r}: exported weights differ from the dequantized codes; "
            "load dequantize() values into the model before exporting"
        )


def _dequantize_node(
    graph: ir.Graph, name: str, init: ir.Value, t: QuantizedTensor, transposed: bool
) -> ir.Node:
    """Build the DequantizeLinear that takes over ``init``'s name and consumers."""
    container = _CONTAINERS[(t.bits, t.signed)].numpy()
    params = [t.q.astype(container), t.scale]
    if t.zero_point is not None:
        params.append(np.asarray(t.zero_point).astype(container))
    axis = 0 if t.block_size is None else 1
    if transposed:
        params = [p.T for p in params]
        axis = 1 - axis
    inputs = [
        _initializer(graph, f"{name}_{suffix}", np.ascontiguousarray(p))
        for suffix, p in zip(("quantized", "scale", "zero_point"), params, strict=False)
    ]
    attributes = (
        {"axis": axis} if t.block_size is None else {"axis": axis, "block_size": t.block_size}
    )
    node = ir.node("DequantizeLinear", inputs, attributes, name=f"{name}_DequantizeLinear")
    init.replace_all_uses_with(node.outputs[0], replace_graph_outputs=True)
    graph.initializers.pop(init.name)
    if init in graph.inputs:
        graph.inputs.remove(init)
    node.outputs[0].name = init.name
    return node


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _raise_opset(irm: ir.Model, opset: int) -> None:
    """Convert the default domain up to ``opset`` so every existing node keeps its meaning."""
    if irm.opset_imports.get("", 1) < opset:
        version_converter.convert_version(irm, opset)


def _to_proto(irm: ir.Model) -> onnx.ModelProto:
    """Serialize, raising ir_version to what the (possibly raised) opset requires."""
    model = ir.to_proto(irm)
    model.ir_version = max(
        model.ir_version, onnx.helper.find_min_ir_version_for(model.opset_import, True)
    )
    return model
