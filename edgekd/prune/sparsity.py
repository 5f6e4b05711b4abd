"""2:4 semi-structured sparsity: in every group of 4 weights along the input dimension, keep 2.

The mask lives on the layer as the ``weight_mask`` buffer (model state, saved with the weights),
grouped the way NVIDIA sparse tensor cores read it: 4 consecutive input channels per output
channel and kernel position.
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "weight_mask"


def mask_2of4(weight: torch.Tensor) -> torch.Tensor:
    moved = weight.detach().movedim(1, -1)  # (O, *k, I): groups run along the input dim
    groups = moved.reshape(-1, 4).abs()
    keep = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0)
    return mask.reshape(moved.shape).movedim(-1, 1).contiguous()


def apply_2of4(module: nn.Module) -> None:
    mask = mask_2of4(module.weight)
    module.register_buffer(MASK, mask)
    with torch.no_grad():
        module.weight.mul_(mask)


def reapply_masks(model: nn.Module) -> None:
    """Zero the pruned weights again (after an optimizer step moved them)."""
    with torch.no_grad():
        for m in model.modules():
            mask = getattr(m, MASK, None)
            if mask is not None:
                m.weight.mul_(mask)


def is_2of4(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 along the input dimension."""
    if weight.shape[1] % 4:
        return False
    groups = weight.detach().movedim(1, -1).reshape(-1, 4)
    return bool(((groups != 0).sum(1) <= 2).all())
