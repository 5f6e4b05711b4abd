"""Quantization: fake-quant training modules and the exact integer codes export writes."""

from __future__ import annotations

from torch import nn

from ..plan import Plan
from .fake import QuantizedWeight, WeightFormat, fake_quantize_weight, quantize_weight
from .fold import fold_batchnorm
from .modules import ActQuant, QuantizeOutput, QuantLayer, make_quant

__all__ = [
    "ActQuant",
    "QuantLayer",
    "QuantizeOutput",
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
    first). Embedding tables the plan quantizes train with fake-quant rows.

    A layer whose output only an int8 layer reads, through activations (ReLU6), gets no output
    quantizer of its own: the reader's input Q, after the activation, is the one Q a runtime
    needs to fuse conv + activation + requantize into one integer kernel (OpenVINO's u8 conv
    chain; ONNX Runtime drops a Relu/Clip that the Q's range makes redundant). Two Q -> DQ pairs
    there would leave OpenVINO a float FakeQuantize between the convs.

    A layer that reads another's int8 output beside other readers (a residual add) shares that
    output's quantizer: the tensor is quantized once, not requantized at another scale.
    A layer that shares its input with a residual add only has that input quantized where the
    block producing it ends (``QuantizeOutput``), so the add reads int8 codes too and runtimes
    fuse it (QLinearAdd; OpenVINO's convolution with a sum) instead of adding in float."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        lp = plan.layer(name)
        if lp is None or lp.weight_bits is None or isinstance(module, QuantLayer):
            continue
        fmt = WeightFormat(lp.weight_bits, lp.symmetric, lp.block_size)
        make_quant(module, fmt, lp.activation_bits is not None, lp.activation_symmetric,
                   output=lp.activation_bits is not None and not lp.feeds_output,
                   output_clamp=lp.output_clamp)  # fmt: skip
    for name, bits in plan.embeddings.items():  # per row: a token's vector has its own scale
        if name in modules and not isinstance(modules[name], QuantLayer):
            make_quant(modules[name], WeightFormat(bits, True, None), activations=False)
    for lp in plan.layers:
        reader, writer = modules.get(lp.name), lp.input_from and modules.get(lp.input_from)
        if _int8_pair(reader, writer):
            writer.out_quant = None
        source = lp.shares_quant_with and modules.get(lp.shares_quant_with)
        if _int8_pair(reader, source):
            reader.act_quant, reader.input_quantized = source.out_quant, True
        if lp.skip_from and isinstance(reader, QuantLayer) and reader.act_quant is not None:
            modules[lp.skip_from].register_forward_hook(QuantizeOutput(reader.act_quant))
            reader.input_quantized = True
    return model


def _int8_pair(reader: nn.Module | None, writer: nn.Module | None) -> bool:
    """Both quantized, the writer with an int8 output and the reader with the same kind of
    int8 input."""
    return (
        isinstance(reader, QuantLayer)
        and isinstance(writer, QuantLayer)
        and reader.act_quant is not None
        and writer.out_quant is not None
        and reader.act_quant.symmetric == writer.out_quant.symmetric
    )
