"""Integer quantization of weights, shared by training (fake-quant) and export (real codes).

One function computes codes and scales for both, so the exported low-bit weights dequantize to
exactly the values the student trained with: w = (q - zero_point) * scale, in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Smallest scale, as a fraction of the weight's largest: BatchNorm folding leaves dead channels
# (EfficientNet-Lite0 has dozens) with weights near 1e-9 of their layer's, and their bias over
# input scale x such a weight scale overflows the int32 bias runtimes fuse (ONNX Runtime's
# QLinearConv then outputs garbage there). Live channels here sit above 1e-3 of the largest.
MIN_SCALE_RATIO = 2.0**-12


@dataclass(frozen=True)
class WeightFormat:
    bits: int
    symmetric: bool
    block_size: int | None  # None: one scale per output channel; else blocks along the input dim

    @property
    def qrange(self) -> tuple[int, int]:
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # integer-valued float tensor, weight shape
    scale: torch.Tensor  # float32, broadcast to weight shape
    zero_point: torch.Tensor  # integer-valued float tensor, broadcast to weight shape

    def dequantize(self) -> torch.Tensor:
        return (self.q - self.zero_point) * self.scale


def _grouped(w: torch.Tensor, fmt: WeightFormat):
    """``w`` as (*groups, group size): one group per output channel, or per block along the
    input dim (zero-padded: zeros are inside every range); and the function that broadcasts a
    per-group tensor back to ``w``'s shape."""
    if fmt.block_size is None:
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        return w.reshape(w.shape[0], -1), lambda t: t.reshape(shape).expand_as(w)
    b, fan_in = fmt.block_size, w.shape[1]
    blocks = -(-fan_in // b)
    moved = w.movedim(1, -1)  # (O, *k, I)
    padded = torch.nn.functional.pad(moved, (0, blocks * b - fan_in))
    grouped = padded.reshape(*moved.shape[:-1], blocks, b)
    return grouped, lambda t: t.repeat_interleave(b, dim=-1)[..., :fan_in].movedim(-1, 1)


def quantize_weight(
    w: torch.Tensor, fmt: WeightFormat, clip: torch.Tensor | None = None
) -> QuantizedWeight:
    """Min/max quantization whose range always holds zero, so pruned zeros stay exactly zero.

    ``clip``: per group, the fraction of the min/max range kept (``search_clip``)."""
    grouped, back = _grouped(w.detach(), fmt)
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    if clip is not None:
        lo, hi = lo * clip, hi * clip
    lo, hi = back(lo).clamp(max=0.0), back(hi).clamp(min=0.0)
    qmin, qmax = fmt.qrange
    if fmt.symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero_point = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
    floor = scale.max() * MIN_SCALE_RATIO
    scale = torch.where(floor > 0, scale.clamp(min=floor), torch.ones_like(scale)).float()
    if not fmt.symmetric:
        zero_point = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    q = torch.clamp(torch.round(w.detach() / scale) + zero_point, qmin, qmax)
    return QuantizedWeight(q, scale, zero_point)


def fake_quantize_weight(
    w: torch.Tensor, fmt: WeightFormat, clip: torch.Tensor | None = None
) -> torch.Tensor:
    """Quantized values forward, straight-through gradient backward."""
    return w + (quantize_weight(w, fmt, clip).dequantize() - w).detach()


@torch.no_grad()
def search_clip(w: torch.Tensor, fmt: WeightFormat, steps: int = 11) -> torch.Tensor:
    """Per group, the clipping ratio in [0.5, 1] with the least squared quantization error.

    Why: min/max ranges spend the few levels of 4-bit and lower on outliers; clipping them
    (as BitDistiller's asymmetric clipping does) starts quantization-aware training closer to
    the float weights. Ratio 1 is a candidate, so the error never grows."""
    grouped, _ = _grouped(w, fmt)
    best = torch.ones(grouped.shape[:-1])
    best_error = torch.full(grouped.shape[:-1], float("inf"))
    for ratio in torch.linspace(1.0, 0.5, steps):
        clip = torch.full_like(best, float(ratio))
        error = _grouped((quantize_weight(w, fmt, clip).dequantize() - w) ** 2, fmt)[0].sum(-1)
        better = error < best_error
        best, best_error = torch.where(better, clip, best), torch.minimum(error, best_error)
    return best
