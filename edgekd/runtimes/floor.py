"""A runtime's call floor: what a graph that computes nothing costs with the model's input and
outputs.

No student runs faster than its runtime's cost per call (binding, scheduling, copying the
outputs). On a small model at batch 1 that cost can be most of the teacher's own time, and then
no plan reaches a latency goal past teacher / floor. Bench times this graph beside the teacher
and student, so the report and the gate can say so instead of leaving the user to guess; the
latency stage times it beside each layer's forms and takes it off them.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper


def null_graph(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model``'s first input and its outputs (same names, types, shapes) joined by Flatten,
    Slice or Pad, and Reshape (and Cast to another type): the outputs read the input and
    compute nothing. None (then no floor is timed) when the input or an output has no batch
    axis, is not static past it, holds no elements, or an output is the input itself; or when
    the model takes several inputs (the floor graph would have to read them all)."""
    graph = model.graph
    if len(graph.input) != 1:
        return None
    source = graph.input[0]
    features = _static_size(source)
    if features is None:
        return None
    names = {v.name for v in (*graph.input, *graph.output)}
    prefix = "floor/"
    while any(n.startswith(prefix) for n in names):  # inner names apart from the model's
        prefix = "_" + prefix
    flat = prefix + "flat"
    nodes = [helper.make_node("Flatten", [source.name], [flat], axis=1)]
    inits = []
    for i, out in enumerate(graph.output):
        size = _static_size(out)
        if size is None or out.name == source.name:
            return None
        dims = [d.dim_value for d in out.type.tensor_type.shape.dim[1:]]
        name = f"{prefix}{i}/"
        if size <= features:
            inits += (
                _ints(name + "start", [0]),
                _ints(name + "end", [size]),
                _ints(name + "axis", [1]),
            )
            slice_in = [flat, name + "start", name + "end", name + "axis"]
            nodes.append(helper.make_node("Slice", slice_in, [name + "sized"]))
        else:
            inits.append(_ints(name + "pads", [0, 0, 0, size - features]))
            nodes.append(helper.make_node("Pad", [flat, name + "pads"], [name + "sized"]))
        inits.append(_ints(name + "shape", [-1, *dims]))
        out_type = out.type.tensor_type.elem_type
        shaped = out.name if out_type == source.type.tensor_type.elem_type else name + "shaped"
        nodes.append(helper.make_node("Reshape", [name + "sized", name + "shape"], [shaped]))
        if shaped != out.name:
            nodes.append(helper.make_node("Cast", [shaped], [out.name], to=out_type))
    null = helper.make_graph(nodes, "call_floor", [source], list(graph.output), inits)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    # the model's own IR version: the runtime that loads the model loads this graph
    return helper.make_model(
        null, opset_imports=[helper.make_opsetid("", max(opset, 13))],
        ir_version=max(model.ir_version, 7),  # IR 7 is opset 13's
    )  # fmt: skip


def _static_size(value: onnx.ValueInfoProto) -> int | None:
    """Elements per example (all axes past the batch); None if any of them is symbolic, there
    is no batch axis, or there are no elements."""
    dims = value.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
        return None
    return math.prod(d.dim_value for d in dims[1:]) or None


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)
