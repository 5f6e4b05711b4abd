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
    Slice or Pad, and Reshape: the outputs read the input and compute nothing. None when an
    output's shape is not static past the batch axis (then no floor is timed)."""
    graph = model.graph
    source = graph.input[0]
    features = _static_size(source)
    if features is None:
        return None
    nodes = [helper.make_node("Flatten", [source.name], ["flat"], axis=1)]
    inits = []
    for i, out in enumerate(graph.output):
        size = _static_size(out)
        if size is None or size == 0:
            return None
        dims = [d.dim_value for d in out.type.tensor_type.shape.dim[1:]]
        sized = f"sized{i}"
        if size <= features:
            inits += _ints(f"start{i}", [0]), _ints(f"end{i}", [size]), _ints(f"axis{i}", [1])
            slice_in = ["flat", f"start{i}", f"end{i}", f"axis{i}"]
            nodes.append(helper.make_node("Slice", slice_in, [sized]))
        else:
            inits.append(_ints(f"pads{i}", [0, 0, 0, size - features]))
            nodes.append(helper.make_node("Pad", ["flat", f"pads{i}"], [sized]))
        inits.append(_ints(f"shape{i}", [-1, *dims]))
        same_type = out.type.tensor_type.elem_type == source.type.tensor_type.elem_type
        shaped = out.name if same_type else f"shaped{i}"
        nodes.append(helper.make_node("Reshape", [sized, f"shape{i}"], [shaped]))
        if shaped != out.name:
            nodes.append(
                helper.make_node("Cast", [shaped], [out.name], to=out.type.tensor_type.elem_type)
            )
    null = helper.make_graph(nodes, "call_floor", [source], list(graph.output), inits)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    return helper.make_model(null, opset_imports=[helper.make_opsetid("", max(opset, 13))])


def _static_size(value: onnx.ValueInfoProto) -> int | None:
    """Elements per example (all axes past the batch), None if any of them is symbolic."""
    dims = value.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        return None
    return math.prod(d.dim_value for d in dims)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)
