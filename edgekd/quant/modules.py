"""Quantized layers: Conv/Linear that train with fake-quant weights and INT8 activations, and
embedding tables with fake-quant rows."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from .fake import WeightFormat, fake_quantize_weight, quantize_weight, search_clip


class ActQuant(nn.Module):
    """Per-tensor 8-bit fake-quant with an EMA min/max observer (ONNX QDQ semantics).

    Asymmetric codes are uint8 (zero point 0..255), the activation type every CPU runtime fuses
    into integer kernels (ONNX Runtime's u8s8 path on any x86; OpenVINO's u8 convolutions);
    symmetric ones are int8 with zero point 0, as TensorRT requires."""

    def __init__(
        self,
        symmetric: bool = False,
        momentum: float = 0.9,
        clamp: list[float | None] | None = None,
    ) -> None:
        super().__init__()
        self.symmetric = symmetric  # zero point 0, as TensorRT requires
        self.momentum = momentum
        # the activation that follows cuts values outside [low, high] (ReLU6: [0, 6]); observing
        # within it spends all 256 codes on values that survive (and keeps it a no-op on them)
        self.clamp = clamp or [None, None]
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = self.clamp
                lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
                lo = lo if low is None else lo.clamp(min=min(low, 0.0))
                hi = hi if high is None else hi.clamp(max=max(high, 0.0))
                if bool(self.initialized):
                    lo = self.momentum * self.lo + (1 - self.momentum) * lo
                    hi = self.momentum * self.hi + (1 - self.momentum) * hi
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.initialized.fill_(True)
        scale, zero_point = self.qparams()
        qmin, qmax = self.code_range
        # ONNX QuantizeLinear divides by the scale and rounds half to even; so does this, so the
        # exported QDQ graph sees the same codes (torch's fake_quantize multiplies by 1/scale).
        lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        clipped = x.clamp(lo, hi)  # no gradient outside the range, as in real saturation
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        return clipped + ((q - zero_point) * scale - clipped).detach()

    @property
    def code_range(self) -> tuple[int, int]:
        return (-128, 127) if self.symmetric else (0, 255)

    def qparams(self) -> tuple[float, int]:
        span = float(self.hi - self.lo)
        if not math.isfinite(span):  # non-finite activations: let the loss guard name the problem
            return 1.0, 0
        if self.symmetric:
            bound = max(-float(self.lo), float(self.hi))
            return (bound / 127 if bound > 0 else 1.0), 0
        scale = span / 255 if span > 0 else 1.0
        return scale, int(min(255, max(0, round(-float(self.lo) / scale))))


class QuantizeOutput:
    """Forward hook: a module's output through a layer's input quantizer, so every reader of it
    (that layer and a residual add) sees the same 8-bit codes; the layer then skips its own
    (``input_quantized``)."""

    def __init__(self, quant: ActQuant) -> None:
        self.quant = quant

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.quant(output)


class QuantLayer:
    """Mixin: the layer's weight is fake-quantized on every forward; activations pass ActQuant."""

    weight: nn.Parameter
    weight_format: WeightFormat
    weight_clip: torch.Tensor  # per group: fraction of the min/max range kept (a buffer)
    act_quant: ActQuant | None
    out_quant: ActQuant | None  # int8 output: integer kernels (QLinearConv) need a Q after them
    # act_quant already ran where the input was made (a shared writer's output, a block's hook):
    # running it again would change no value but step its range observer a second time
    input_quantized: bool
    plain_class: type  # the float layer class this twin was made from

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize_weight(self.weight, self.weight_format, self.weight_clip)

    def export_weight(self):
        return quantize_weight(self.weight, self.weight_format, self.weight_clip)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is None or self.input_quantized:
            return x
        return self.act_quant(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        with _reparametrize_module(self, {"weight": weight}):
            y = self.plain_class.forward(self, self.quant_input(x))
        return y if self.out_quant is None else self.out_quant(y)


@functools.cache
def quant_class(plain: type) -> type:
    """The fake-quant twin of a Conv/Linear class, subclasses included (e.g. a conv with its own
    padding in ``forward``): the plain class's own forward runs, seeing the quantized weight."""
    if issubclass(plain, QuantLayer):  # already a twin: quantizing twice is quantizing once
        return plain
    return type(f"Quant{plain.__name__}", (QuantLayer, plain), {"plain_class": plain})


def make_quant(
    module: nn.Module,
    fmt: WeightFormat,
    activations: bool,
    symmetric_activations: bool = False,
    output: bool = False,
    output_clamp: list[float | None] | None = None,
) -> None:
    """Turn a plain layer into its quantized twin in place (same parameters; the state dict
    gains ``weight_clip``, the clipping searched on the weights it starts from).

    ``output``: int8 on the layer's output too. Runtimes form an integer kernel (QLinearConv)
    only from DQ -> op -> Q; without a Q after it, a layer whose consumers are float (a residual
    add, a float layer) runs as a float op behind dequantized weights. ``output_clamp``: the
    range of the activation after the layer, which bounds that output's calibration."""
    module.__class__ = quant_class(type(module))
    module.weight_format = fmt
    module.register_buffer("weight_clip", search_clip(module.weight.detach(), fmt))
    module.act_quant = ActQuant(symmetric_activations) if activations else None
    module.input_quantized = False
    module.out_quant = ActQuant(symmetric_activations, clamp=output_clamp) if output else None
