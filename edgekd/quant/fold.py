"""Fold BatchNorm into the conv or linear before it: the exported weight *is* the trained weight.

(The ONNX exporter folds eval-mode BatchNorm into Conv and Gemm itself, which would rescale quantized weights after
training and break their exactness; quantization-aware training on folded weights avoids that.)

A BatchNorm folds only along its layer's output axis: after a Linear on (batch, tokens, features),
BatchNorm1d normalizes the tokens, which no per-output-channel scale can express; it stays.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..data.inputs import Example
from ..plan import COMPRESSIBLE

PLAIN_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module, example: Example) -> nn.Module:
    ranks: dict[nn.Module, int] = {}  # each Linear's output rank: its features are axis 1 at 2
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: ranks.__setitem__(mod, out.dim()))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
    finally:
        for hook in hooks:
            hook.remove()
    names = {m: n for n, m in model.named_modules()}
    for bn, node in list(graph.module2node.items()):
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or len(node.inputs) != 1:
            continue
        source = node.inputs[0]
        if type(bn) not in PLAIN_BATCHNORM and "BatchNorm" in str(
            getattr(source.module, "_grad_fn", "")
        ):
            # a subclass calling BatchNorm in its forward: the graph has that op, then the module
            if len(source.inputs) != 1 or len(source.outputs) != 1:
                continue
            source = source.inputs[0]
        layer = source.module
        if not isinstance(layer, COMPRESSIBLE) or len(source.outputs) != 1:
            continue
        if isinstance(layer, nn.Linear) and ranks.get(layer) != 2:
            continue
        _fold_into(layer, bn)
        if type(bn) in PLAIN_BATCHNORM:
            _replace(model, names[bn], nn.Identity())
        else:  # a subclass (timm's BatchNormAct2d) keeps the rest of its forward, on identity
            _make_identity(bn)
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


@torch.no_grad()
def _make_identity(bn: nn.Module) -> None:
    """Statistics under which BatchNorm returns its input bit for bit, and no affine
    parameters, which distillation would otherwise train away from the identity."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.eps = 0.0
    bn.affine = False
    bn.register_parameter("weight", None)
    bn.register_parameter("bias", None)


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
