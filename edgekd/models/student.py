"""Student checkpoints: a state dict plus the recipe to rebuild its architecture from the teacher.

Loading uses ``weights_only=True``: the checkpoint holds tensors, strings and integers only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path
from ..data.inputs import Example
from ..errors import InputError
from ..plan import Plan
from ..prune.sparsity import MASK
from ..prune.structured import Decision, replay_pruning
from ..quant import fold_batchnorm, prepare_qat
from .clone import clone_model

FORMAT = "edgekd-student/1"


def save_student(
    model: nn.Module, path: Path, pruning: list[Decision], *, folded: bool, quantized: bool
) -> Path:
    state = {
        "format": FORMAT,
        "pruning": pruning,
        "folded": folded,
        "quantized": quantized,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_student(
    teacher: nn.Module, path: Path, plan: Plan, example: Example
) -> tuple[nn.Module, dict]:
    """Rebuild (prune, mask, fold, quantize) a teacher copy, then load the saved weights."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["format"] == FORMAT
    except Exception:
        raise InputError(
            f"student checkpoint '{path}' is missing or corrupt; re-run the stage that wrote it"
        ) from None
    model = replay_pruning(clone_model(teacher).eval(), ckpt["pruning"], example)
    state = ckpt["state_dict"]
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        if leaf == MASK:
            model.get_submodule(owner).register_buffer(MASK, torch.zeros_like(tensor))
    if ckpt["folded"]:
        fold_batchnorm(model, example)
    if ckpt["quantized"]:
        prepare_qat(model, plan)
    model.load_state_dict(state, strict=True)
    return model.eval(), ckpt
