"""PyTorch -> ONNX: the float graph from the exporter, then the student's real low-bit tensors."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import torch
from onnxscript import optimizer, rewriter
from torch import nn

from ..data.inputs import SINGLE, Example
from ..errors import StageError
from ..models.clone import clone_model
from ..quant import QuantizeOutput, QuantLayer
from .lowbit import OPSET, QuantizedTensor, quantize_activations, quantize_tables, quantize_weights


def export_float(
    model: nn.Module, example: Example, outputs: tuple[str, ...] = ("logits",)
) -> onnx.ModelProto:
    """Dynamo export with a symbolic batch (the example must have batch >= 2 to keep it symbolic).

    The example is made contiguous: the exporter keeps its strides, and a channels-last example
    (what stacking HWC images and transposing gives) turns ``x.view(batch, -1)`` into an
    ``as_strided`` Gather that OpenVINO's int8 transformations get wrong (EfficientNet-Lite0:
    its W8A8 student agreed with its PyTorch self on 30% of images in OpenVINO, 80% in ORT).
    A model of several inputs takes them as keywords; the graph names its inputs after them,
    each with a symbolic batch. ``outputs`` names the outputs (``task.Task.outputs``)."""
    named = isinstance(example, dict)
    kwargs = {k: t.contiguous() for k, t in example.items()} if named else {}
    args = () if named else (example.contiguous(),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates every step and warns about optional torchvision ops; keep the CLI quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # folding it tries and leaves
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model.eval(),
                args,
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes={k: {0: batch} for k in kwargs} if named else ({0: batch},),
                input_names=None if named else [SINGLE],
                output_names=list(outputs),
                verbose=False,
                optimize=False,  # _optimize below: the optimizer less its merging passes
            )
            _optimize(program.model)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StageError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    proto = program.model_proto
    if fixed := [i.name for i in proto.graph.input if _static_batch(i)]:
        raise StageError(
            f"ONNX export of {type(model).__name__} fixed the batch size of {', '.join(fixed)}: "
            "its forward reads the batch as a Python number (len(x), int(x.size(0)), .tolist()); "
            "use x.shape[0] or -1 in reshapes so the batch stays symbolic"
        )
    return proto


def _static_batch(value: onnx.ValueInfoProto) -> bool:
    dims = value.type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value")


def _optimize(model: ir.Model) -> None:
    """What torch.onnx's optimizer does (onnxscript: constant folding, which turns a Linear's
    ``weight.T`` into an initializer, its rewrite rules, unused nodes removed) except merging
    equal initializers and equal subexpressions: two layers with equal weights (untrained
    copies, tied heads) must stay two nodes, each to take its own low-bit codes."""
    common_passes.InlinePass()(model)
    for _ in range(2):
        optimizer.fold_constants(model, onnx_shape_inference=True)
        rewriter.rewrite(model)
    for step in (
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.OutputFixPass(),  # an output that is an input, or one twice
        common_passes.NameFixPass(),
    ):
        step(model)


def student_onnx(
    student: nn.Module, example: Example, outputs: tuple[str, ...] = ("logits",)
) -> onnx.ModelProto:
    """Export the student as a float graph, then write its low-bit weights and activation QDQ."""
    plain = clone_model(student).eval()
    weights: dict[str, QuantizedTensor] = {}
    tables: dict[str, QuantizedTensor] = {}  # embedding tables: their rows are gathered
    activations: dict[str, tuple[float, int, bool]] = {}
    results: dict[str, tuple[float, int, bool]] = {}  # layers whose output is quantized
    for module in plain.modules():  # block output hooks leave the graph: their Q -> DQ is below
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, QuantizeOutput):
                del module._forward_hooks[key]
    # an input quantizer that is another layer's output one: that layer's Q -> DQ serves both
    out_quants = {id(m.out_quant) for m in plain.modules() if getattr(m, "out_quant", None)}
    shared: list[str] = []  # layers whose input was quantized where a block ends, for all readers
    for name, module in plain.named_modules():
        if not isinstance(module, QuantLayer):
            continue
        qw = module.export_weight()
        kind = tables if isinstance(module, nn.Embedding) else weights
        kind[f"{name}.weight"] = _to_tensor(qw, module.weight_format)
        if module.act_quant is not None and id(module.act_quant) not in out_quants:
            activations[name] = (*module.act_quant.qparams(), module.act_quant.symmetric)
            if module.input_quantized:
                shared.append(name)
        if module.out_quant is not None:
            results[name] = (*module.out_quant.qparams(), module.out_quant.symmetric)
        with torch.no_grad():
            module.weight.copy_(qw.dequantize())
        module.__class__ = module.plain_class  # the float twin: same weights, no fake quant
        del module.act_quant
        del module.out_quant
        del module.weight_clip
    model = quantize_weights(
        quantize_tables(export_float(plain, example, outputs), tables), weights
    )
    return quantize_activations(
        model,
        {node: qp for name, qp in activations.items() for node in _consumers_of(model, name)},
        {node: qp for name, qp in results.items() for node in _consumers_of(model, name)},
        {node for name in shared for node in _consumers_of(model, name)},
    )


def _to_tensor(qw, fmt) -> QuantizedTensor:
    """Broadcast torch tensors -> the compact per-channel / per-block arrays ONNX stores."""
    if fmt.block_size is None:
        index = (slice(None),) + (0,) * (qw.q.dim() - 1)
    else:
        index = (slice(None), slice(None, None, fmt.block_size))
    dtype = np.int32
    return QuantizedTensor(
        q=qw.q.numpy().astype(dtype),
        scale=np.ascontiguousarray(qw.scale[index].numpy(), dtype=np.float32),
        zero_point=None if fmt.symmetric else qw.zero_point[index].numpy().astype(dtype),
        bits=fmt.bits,
        signed=fmt.symmetric,
        block_size=fmt.block_size,
    )


def _consumers_of(model: onnx.ModelProto, layer: str) -> list[str]:
    """The nodes ``layer``'s weight feeds (its Conv/Gemm/MatMul, one per call of the module),
    whose input 0 is the activation: each call site gets its input Q -> DQ, as in training."""
    dq = next((n for n in model.graph.node if n.name == f"{layer}.weight_DequantizeLinear"), None)
    consumers = [n for n in model.graph.node if dq and dq.output[0] in n.input[1:]]
    if not consumers:
        raise StageError(
            f"layer '{layer}': its weight feeds no Conv/Gemm/MatMul in the exported ONNX graph"
        )
    return [n.name for n in consumers]
