"""Fold BatchNorm into the conv or linear before it: the exported weight *is* the trained weight.

(The ONNX exporter folds eval-mode BatchNorm into Conv and Gemm itself, which would rescale quantized weights after
training and break their exactness; quantization-aware training on folded weights avoids that.)
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..plan import COMPRESSIBLE


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
    names = {m: n for n, m in model.named_modules()}
    for bn, node in list(graph.module2node.items()):
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or len(node.inputs) != 1:
            continue
        layer = node.inputs[0].module
        if not isinstance(layer, COMPRESSIBLE) or len(node.inputs[0].outputs) != 1:
            continue
        _fold_into(layer, bn)
        _replace(model, names[bn], nn.Identity())
    return model


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Scale each output channel's weights and shift its bias (Conv and Linear alike: axis 0)."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    layer.bias = nn.Parameter(new_bias)


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
