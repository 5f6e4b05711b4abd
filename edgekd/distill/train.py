"""The QAT + KD loop: the student trains against cached teacher logits, masks re-applied per step."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..context import Progress, no_progress
from ..data import DataSplits
from ..data.inputs import as_example, call
from ..data.outputs import fields, flatten
from ..errors import StageError
from ..evaluate import predict, torch_fn
from ..prune.sparsity import reapply_masks
from ..quant import ActQuant
from ..quant.bias import correct_student
from ..ranks import Ranks
from ..recipe import DistillRecipe
from ..task import Classification, Task
from .checkpoint import EpochCheckpoint

# Learning rates ``distill.lr: auto`` tries: from a from-scratch student's to a pretrained one's.
PROBE_LRS = (1e-3, 1e-4, 1e-5)
PROBE_STEPS = 20  # at most, per rate: one epoch on small data
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # distill.amp


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    task: Task,
    cfg: DistillRecipe,
    log: Callable[[str], None],
    progress: Progress = no_progress,
    checkpoint: EpochCheckpoint | None = None,
    scratch: Path | None = None,
    ranks: Ranks | None = None,
) -> dict:
    """Train in place; keep the weights of the epoch with the best validation score: accuracy
    (ties go to the lower KL to the teacher) on labelled data, the KL to the teacher on
    unlabelled data (the ``outputs`` task: its relative error, ``task.py``). Agreement is what the gate judges there, but on a small validation split
    it moves in steps of one example, and KL is its smooth estimate: EfficientNet-Lite0's W8A8
    student went from val KL 0.0081 to 0.0052 in 3 epochs while one of 40 val crops flipped,
    and ranked by agreement it was kept untrained.

    Epoch 0 is the quantized student before any training, its activation ranges calibrated and
    its biases corrected on the training data (post-training quantization): a candidate like
    every epoch, so distillation can only keep or improve on it. Training stops after ``cfg.patience`` epochs
    without a better score, and does not start when every probed rate (``lr: auto``) left the
    student further from the teacher than it began.

    The student trains in eval mode (gradients flow all the same; its BatchNorms are folded, or
    frozen at their running statistics where folding cannot reach them), so its activation
    ranges stay as calibrated and the weights and biases learn to live with them. What
    training mode adds is noise that matching a teacher does not want: dropout,
    stochastic depth and observers that follow each batch. On EfficientNet-Lite0 (W8A8 on 49
    layers, 200 ImageNet crops) every probed rate moved the student away from the teacher in
    training mode (val KL 0.0036 before, 0.024 after 4 steps at 1e-5; 0.0040 with only the
    observers in training mode) and toward it in eval mode (0.0028). Trained 3 epochs so, it
    agreed with the teacher on 98.8% of the test crops (97.5% untrained); with the ranges
    observed afresh after each epoch, no epoch beat the untrained student.

    ``checkpoint``: saved after every epoch (weights, optimizer, schedule, the shuffling
    generator, the best epoch so far), and resumed from when it holds this training's state, so
    the resumed run ends with the weights the uninterrupted one would have.

    ``scratch``: a folder where the teacher's outputs on the training split are written and
    read back memory-mapped, batch by batch (None: held in memory).

    ``ranks``: this process's part in a torchrun (``ranks.py``) and the device it trains on;
    None: one process, on the CPU. The student and the teacher are moved there and back.
    Calibration runs on rank 0, on the CPU, before."""
    ranks = ranks or Ranks()
    device = ranks.device
    torch.manual_seed(cfg.seed)
    if ranks.rank == 0:
        calibrate(student, data.train.x, cfg.batch_size)
    try:
        return _train(student.to(device), teacher.to(device), data, task, cfg, log, progress,
                      checkpoint, scratch, ranks)  # fmt: skip
    finally:
        student.cpu()
        teacher.cpu()


def _train(student, teacher, data, task, cfg, log, progress, checkpoint, scratch, ranks) -> dict:
    """``distill`` once the student is calibrated, on the device."""
    device, main = ranks.device, ranks.rank == 0
    student.eval()  # as calibrated (rank 0); the others' observers stay off until DDP syncs them
    x = data.train.x
    y = None if data.train.y is None else torch.from_numpy(data.train.y).to(device)
    labelled = y is not None and isinstance(task, Classification)
    # the teacher is frozen: its outputs once
    into = scratch / "teacher_outputs.npy" if scratch else None
    teacher_train = predict(torch_fn(teacher, device), x, into=into)
    teacher_val = predict(torch_fn(teacher, device), data.val.x) if main else None
    model = ranks.wrap(student, as_example(x[:2], device))  # all hold rank 0's student
    amp = torch.autocast(device.type, dtype=AMP[cfg.amp], enabled=cfg.amp != "off")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    def score() -> tuple[float, float]:
        """Rank 0's: what every rank decides by."""
        if main:
            pred = predict(torch_fn(student, device), data.val.x)
            found = task.score(pred, data.val, teacher_val), -task.divergence(pred, teacher_val)
        return ranks.share(found if main else None)

    def train_steps(opt, batches, where: str, sched=None, advance=lambda _n: None) -> list[float]:
        losses = []
        for step, idx in enumerate(batches):
            if len(idx) < ranks.world:  # a last batch too small to share is left out
                continue
            part = ranks.part(idx).numpy()
            with amp:
                out = flatten(call(model, as_example(x[part], device)))
                target = y[part] if labelled else None
                targets = [torch.from_numpy(a).to(device) for a in fields(teacher_train[part])]
                loss = task.loss(out, targets, target, cfg.temperature, cfg.alpha)
            loss = loss.float() * ranks.weight(len(part), len(idx))
            whole = ranks.mean(loss)
            if not torch.isfinite(whole):
                raise StageError(
                    f"distillation loss is {whole.item()} {where} step {step}; "
                    f"lower distill.lr (now {cfg.lr}) or check the data for NaN/Inf"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if sched and scaler.get_scale() >= scale:  # fp16: a step of inf gradients is skipped
                sched.step()
            advance(len(idx))
            reapply_masks(student)
            losses.append(whole.item())
        return losses

    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    lr, probed = cfg.lr, {}
    resumed = ranks.share(checkpoint.load() if checkpoint else None)
    if resumed:
        lr, probed = resumed["lr"], resumed["probed"]
    elif lr == "auto":
        start = copy.deepcopy(student.state_dict())
        batches = torch.randperm(len(x), generator=gen).split(cfg.batch_size)[:PROBE_STEPS]
        for rate in PROBE_LRS:
            opt = torch.optim.AdamW(params, lr=rate, weight_decay=1e-4)
            train_steps(opt, batches, f"in the learning-rate probe (lr {rate:g})")
            probed[rate] = -score()[1]
            student.load_state_dict(start)
        lr = min(probed, key=probed.get)
        log(
            "  learning rate: "
            + ", ".join(f"{r:g} -> {task.divergence_is} {kl:.4f}" for r, kl in probed.items())
            + f" after {len(batches)} steps; {lr:g}"
        )
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    if resumed:
        student.load_state_dict(resumed["student"])
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["schedule"])
        gen.set_state(resumed["generator"])
        scaler.load_state_dict(resumed["scaler"])
        best = (tuple(resumed["best_score"]), resumed["best_state"])
        best_epoch, history, epochs = resumed["best_epoch"], resumed["history"], resumed["epochs"]
        log(f"  resumed after epoch {history[-1]['epoch']} ({checkpoint and checkpoint.path})")
    else:
        val = score()
        best = (val, copy.deepcopy(student.state_dict()))
        best_epoch = 0
        history = [{"epoch": 0, "loss": None, "val_accuracy": val[0], "val_kl": -val[1]}]
        log(f"  epoch   0/{cfg.epochs}  calibrated, before training  val {val[0]:.1%}")
        epochs = cfg.epochs
        if probed and min(probed.values()) >= -val[1]:  # EfficientNet-Lite0 on 140 photos: 10x
            epochs = 0
            log(
                f"  every rate moved the student away from the teacher ({task.divergence_is} "
                f"{-val[1]:.4f} before training): the calibrated student is kept untrained; "
                "set distill.lr to train anyway"
            )
    done = history[-1]["epoch"]
    with progress("distill", (epochs - done) * len(x)) as advance:
        for epoch in range(done + 1, epochs + 1):
            batches = torch.randperm(len(x), generator=gen).split(cfg.batch_size)
            losses = train_steps(opt, batches, f"at epoch {epoch}", sched, advance)
            val = score()
            history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                            "val_accuracy": val[0], "val_kl": -val[1]})  # fmt: skip
            if epoch_rank(val, labelled) >= epoch_rank(best[0], labelled):
                best, best_epoch = (val, copy.deepcopy(student.state_dict())), epoch
            stopped = epoch < epochs and epoch - best_epoch >= cfg.patience
            if checkpoint and not stopped and epoch < epochs:
                checkpoint.save(
                    student=student.state_dict(), optimizer=opt.state_dict(),
                    schedule=sched.state_dict(), generator=gen.get_state(),
                    scaler=scaler.state_dict(),
                    best_score=list(best[0]), best_state=best[1], best_epoch=best_epoch,
                    history=history, epochs=epochs, lr=lr, probed=probed,
                )  # fmt: skip
            if epoch == 1 or epoch % 5 == 0 or epoch == cfg.epochs or stopped:
                log(
                    f"  epoch {epoch:>3}/{cfg.epochs}  loss {np.mean(losses):.4f}  val {val[0]:.1%}"
                    + (f"  (no better score for {cfg.patience} epochs: stopped)" if stopped else "")
                )
            if stopped:
                break
    student.load_state_dict(best[1])
    student.eval()
    return {
        "epochs": cfg.epochs,
        "epochs_run": history[-1]["epoch"],
        "lr": lr,
        "lr_probe": {f"{r:g}": kl for r, kl in probed.items()},
        "best_val_accuracy": best[0][0],
        "best_epoch": best_epoch,
        "val_accuracy_before_training": history[0]["val_accuracy"],
        "history": history,
    }


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: left as they are), then restored."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def epoch_rank(score: tuple[float, float], labelled: bool) -> tuple[float, ...]:
    """What orders epochs, from their validation (accuracy or agreement, -KL): see ``distill``."""
    return score if labelled else score[1:]


@torch.no_grad()
def calibrate(student: nn.Module, x: np.ndarray, batch_size: int) -> None:
    """One pass over ``x`` with only the activation observers in training mode, then one that
    takes each quantized layer's mean output error off its bias (``quant.bias``)."""
    student.eval()
    for module in student.modules():  # after eval(): a quantizer two layers share stays on
        if isinstance(module, ActQuant):
            module.train()
    for start in range(0, len(x), batch_size):
        call(student, as_example(x[start : start + batch_size]))
    student.eval()
    correct_student(student, x, batch_size)
