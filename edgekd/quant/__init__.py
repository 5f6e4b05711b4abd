"""Quantization: fake-quant training modules and the exact integer codes export writes."""

from __future__ import annotations

from torch import nn

from ..plan import Plan
from .fake import QuantizedWeight, WeightFormat, fake_quantize_weight, quantize_weight
from .fold import fold_batchnorm
from .modules import ActQuant, QuantLayer, make_quant

__all__ = [
    "ActQuant",
    "QuantLayer",
    "QuantizedWeight",
    "WeightFormat",
    "fake_quantize_weight",
    "fold_batchnorm",
    "make_quant",
    "prepare_qat",
    "quantize_weight",
]


def prepare_qat(model: nn.Module, plan: Plan) -> nn.Module:
    """Swap every layer the plan quantizes for its fake-quant twin (BatchNorm must be folded
    first).

    A layer whose output only an int8 layer reads, through activations (ReLU6), gets no output
    quantizer of its own: the reader's input Q, after the activation, is the one Q a runtime
    needs to fuse conv + activation + requantize into one integer kernel (OpenVINO's u8 conv
    chain; ONNX Runtime drops a Relu/Clip that the Q's range makes redundant). Two Q -> DQ pairs
    there would leave OpenVINO a float FakeQuantize between the convs."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        lp = plan.layer(name)
        if lp is None or lp.weight_bits is None or isinstance(module, QuantLayer):
            continue
        fmt = WeightFormat(lp.weight_bits, lp.symmetric, lp.block_size)
        make_quant(module, fmt, lp.activation_bits is not None, lp.activation_symmetric,
                   output=lp.activation_bits is not None and not lp.feeds_output,
                   output_clamp=lp.output_clamp)  # fmt: skip
    for lp in plan.layers:
        reader, writer = modules.get(lp.name), modules.get(lp.input_from or "")
        if (
            isinstance(reader, QuantLayer)
            and isinstance(writer, QuantLayer)
            and reader.act_quant is not None
            and writer.out_quant is not None
        ):
            writer.out_quant = None
    return model
