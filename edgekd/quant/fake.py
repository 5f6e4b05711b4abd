"""Integer quantization of weights, shared by training (fake-quant) and export (real codes).

One function computes codes and scales for both, so the exported low-bit weights dequantize to
exactly the values the student trained with: w = (q - zero_point) * scale, in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def _group_extrema(w: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel or per-block min/max, already broadcast back to ``w``'s shape."""
    if fmt.block_size is None:
        flat = w.reshape(w.shape[0], -1)
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        return flat.amin(1).reshape(shape).expand_as(w), flat.amax(1).reshape(shape).expand_as(w)
    b, fan_in = fmt.block_size, w.shape[1]
    blocks = -(-fan_in // b)
    moved = w.movedim(1, -1)  # (O, *k, I)
    padded = torch.nn.functional.pad(moved, (0, blocks * b - fan_in))  # zeros: inside the range
    grouped = padded.reshape(*moved.shape[:-1], blocks, b)

    def back(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(b, dim=-1)[..., :fan_in].movedim(-1, 1)

    return back(grouped.amin(-1)), back(grouped.amax(-1))


def quantize_weight(w: torch.Tensor, fmt: WeightFormat) -> QuantizedWeight:
    """Min/max quantization whose range always holds zero, so pruned zeros stay exactly zero."""
    lo, hi = _group_extrema(w.detach(), fmt)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    qmin, qmax = fmt.qrange
    if fmt.symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero_point = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    if not fmt.symmetric:
        zero_point = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    q = torch.clamp(torch.round(w.detach() / scale) + zero_point, qmin, qmax)
    return QuantizedWeight(q, scale, zero_point)


def fake_quantize_weight(w: torch.Tensor, fmt: WeightFormat) -> torch.Tensor:
    """Quantized values forward, straight-through gradient backward."""
    return w + (quantize_weight(w, fmt).dequantize() - w).detach()
