"""The QAT + KD loop: the student trains against cached teacher logits, masks re-applied per step."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..context import Progress, no_progress
from ..data import DataSplits
from ..errors import StageError
from ..evaluate import accuracy, predict, torch_fn
from ..prune.sparsity import reapply_masks
from ..quant import ActQuant
from ..recipe import DistillRecipe
from .losses import kd_loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    cfg: DistillRecipe,
    log: Callable[[str], None],
    progress: Progress = no_progress,
) -> dict:
    """Train in place; keep the weights of the epoch with the best validation accuracy.

    Epoch 0 is the quantized student before any training, its activation ranges calibrated on
    the training data (post-training quantization): a candidate like every epoch, so
    distillation can only keep or improve on it."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(data.train.x)
    y = None if data.train.y is None else torch.from_numpy(data.train.y)
    teacher_train = torch.from_numpy(predict(torch_fn(teacher), data.train.x))  # teacher is frozen
    teacher_val = predict(torch_fn(teacher), data.val.x)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    calibrate(student, data.train.x, cfg.batch_size)
    val_acc = accuracy(predict(torch_fn(student), data.val.x), data.val, teacher_val)
    best: tuple[float, dict | None] = (val_acc, copy.deepcopy(student.state_dict()))
    history = [{"epoch": 0, "loss": None, "val_accuracy": val_acc}]
    log(f"  epoch   0/{cfg.epochs}  calibrated, before training  val {val_acc:.1%}")
    with progress("distill", cfg.epochs * steps_per_epoch) as advance:
        for epoch in range(1, cfg.epochs + 1):
            student.train()
            losses = []
            for step, idx in enumerate(torch.randperm(len(x), generator=gen).split(cfg.batch_size)):
                target = None if y is None else y[idx]
                loss = kd_loss(
                    student(x[idx]), teacher_train[idx], target, cfg.temperature, cfg.alpha
                )
                if not torch.isfinite(loss):
                    raise StageError(
                        f"distillation loss is {loss.item()} at epoch {epoch} step {step}; "
                        f"lower distill.lr (now {cfg.lr}) or check the data for NaN/Inf"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                reapply_masks(student)
                losses.append(loss.item())
                advance()
            val_acc = accuracy(predict(torch_fn(student), data.val.x), data.val, teacher_val)
            history.append(
                {"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": val_acc}
            )
            if val_acc >= best[0]:
                best = (val_acc, copy.deepcopy(student.state_dict()))
            if epoch == 1 or epoch % 5 == 0 or epoch == cfg.epochs:
                log(
                    f"  epoch {epoch:>3}/{cfg.epochs}  loss {np.mean(losses):.4f}  val {val_acc:.1%}"
                )
    student.load_state_dict(best[1])
    student.eval()
    best_epoch = max(h["epoch"] for h in history if h["val_accuracy"] == best[0])
    return {
        "epochs": cfg.epochs,
        "best_val_accuracy": best[0],
        "best_epoch": best_epoch,
        "val_accuracy_before_training": history[0]["val_accuracy"],
        "history": history,
    }


@torch.no_grad()
def calibrate(student: nn.Module, x: np.ndarray, batch_size: int) -> None:
    """One pass over ``x`` with only the activation observers in training mode."""
    for module in student.modules():
        module.train(isinstance(module, ActQuant))
    for start in range(0, len(x), batch_size):
        student(torch.from_numpy(x[start : start + batch_size]))
    student.eval()
