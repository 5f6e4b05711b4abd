"""Copies of models that hold tensors made in ``forward`` (caches), which ``copy.deepcopy`` refuses."""

from __future__ import annotations

import copy

import torch
from torch import nn


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` of ``model``, with every tensor attribute that autograd made (a
    module's cache filled by a forward pass with gradients on, e.g. a gathered attention bias)
    copied detached: deepcopy only copies graph leaves, and a cache still tied to the original's
    parameters would send a copy's gradients into them."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)
