"""What the teacher computes, and so how a student learns from it and is judged against it.

``classification``: one ``(batch, classes)`` output of logits. The student learns by Hinton's
KD (KL at temperature T, scaled by T², plus cross-entropy where there are labels); it is judged
by top-1 accuracy on the labels, or by top-1 agreement with the teacher; a layer's damage alone
is the KL to the teacher's logits, which the plan turns into points (``plan.damage``).

``outputs``: any tensors: several (a detection head's scores and boxes), a dict (a Hugging Face
model's), or one that is not logits (a sentence embedding; set ``task: outputs``). Every output
counts. The student learns to match each of the teacher's by the relative squared error
``e = |s - t|² / |t|²`` per example, summed over outputs; it is judged by cosine similarity per
example, averaged, of its worst output. A layer's damage is that summed error: for a small one,
``1 - cos ≈ e / 2`` (exactly for an error orthogonal to ``t``, less otherwise), and such errors
add across layers as KL does.

Arrays are packed as ``data.outputs`` packs them: plain for one output, structured for several.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.nn import functional as F

from .data.outputs import flatten, output_names, paired
from .data.splits import Split
from .errors import ShapeError
from .plan.damage import DamageModel, RelativeErrorDamage

TaskSetting = Literal["auto", "classification", "outputs"]


@dataclass(frozen=True)
class Task(ABC):
    outputs: tuple[str, ...]  # the exported graph's output names
    kind: ClassVar[str]
    measure: ClassVar[str]  # what ``agrees`` measures, for tables and messages
    divergence_is: ClassVar[str]  # and ``divergence``

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "measure": self.measure, "divergence_is": self.divergence_is,
            **dataclasses.asdict(self),
        }  # fmt: skip

    @abstractmethod
    def loss(self, student: list, teacher: list, labels, temperature: float, alpha: float):
        """A batch's training loss from the student's and the teacher's output tensors
        (``data.outputs.flatten`` order)."""

    @abstractmethod
    def divergence(self, pred: np.ndarray, reference: np.ndarray) -> float:
        """How far ``pred`` is from ``reference``, in a measure that adds up across layers:
        what sensitivity records per layer and the plan sums."""

    @abstractmethod
    def agrees(self, pred: np.ndarray, reference: np.ndarray) -> float:
        """Agreement with the reference, from 0 to 1 (``measure``)."""

    def score(self, pred: np.ndarray, split: Split, teacher: np.ndarray) -> float:
        """What the budget judges: agreement with the teacher (accuracy where labels count)."""
        return self.agrees(pred, teacher)

    def agreement(self, pred: np.ndarray, reference: np.ndarray) -> dict:
        """An export (or a runtime's precision) against the PyTorch model it came from."""
        diff = [np.abs(p - r) for _, p, r in paired(pred, reference)]
        agree = self.agrees(pred, reference)
        return {
            "agreement": agree,
            "agreement_beyond_ties": agree,
            "max_abs_error": float(max(d.max() for d in diff)),
            "mean_abs_error": float(np.mean([d.mean() for d in diff])),
        }

    @abstractmethod
    def shortfall(self, row: dict) -> str:
        """Why an export's ``agreement`` row is not faithful, in one clause."""

    @abstractmethod
    def damage_model(self, reference: np.ndarray) -> DamageModel | RelativeErrorDamage:
        """What turns the plan's summed ``divergence`` into points of ``measure``."""


@dataclass(frozen=True)
class Classification(Task):
    classes: int = 0
    kind: ClassVar[str] = "classification"
    measure: ClassVar[str] = "top-1 agreement"
    divergence_is: ClassVar[str] = "KL to teacher"

    def loss(self, student: list, teacher: list, labels, temperature: float, alpha: float):
        (s,), (t,) = student, teacher
        kd = F.kl_div(
            F.log_softmax(s / temperature, 1),
            F.log_softmax(t / temperature, 1),
            log_target=True,
            reduction="batchmean",
        )
        kd = kd * temperature * temperature  # keeps gradient size independent of T
        return kd if labels is None else alpha * kd + (1 - alpha) * F.cross_entropy(s, labels)

    def divergence(self, pred: np.ndarray, reference: np.ndarray) -> float:
        """Mean KL(reference || pred) at temperature 1."""
        ref = torch.log_softmax(torch.from_numpy(reference), 1)
        got = torch.log_softmax(torch.from_numpy(pred), 1)
        return max(float((ref.exp() * (ref - got)).sum(1).mean()), 0.0)

    def agrees(self, pred: np.ndarray, reference: np.ndarray) -> float:
        return float((pred.argmax(1) == reference.argmax(1)).mean())

    def score(self, pred: np.ndarray, split: Split, teacher: np.ndarray) -> float:
        """Top-1 accuracy against labels; without labels, agreement with the teacher's top-1."""
        truth = split.y if split.y is not None else teacher.argmax(1)
        return float((pred.argmax(1) == truth).mean())

    def agreement(self, pred: np.ndarray, reference: np.ndarray) -> dict:
        """Also each disagreement with the reference's top-2 margin, which says whether it is a
        near-tie that rounding flipped or a real difference."""
        diff = np.abs(pred - reference)
        top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
        flips = np.flatnonzero(pred.argmax(1) != reference.argmax(1))
        row = super().agreement(pred, reference)
        beyond = row["agreement"] + near_ties(diff, reference, flips) / len(pred)
        return {
            **row,
            "top1_agreement": row["agreement"],
            "agreement_beyond_ties": beyond,
            "disagreements": [
                {"index": int(i), "reference_margin": float(top2[i, 1] - top2[i, 0]),
                 "max_abs_error": float(diff[i].max())}
                for i in flips[:10]
            ] if top2 is not None else [],
        }  # fmt: skip

    def shortfall(self, row: dict) -> str:
        margins = ", ".join(f"{d['reference_margin']:.3g}" for d in row["disagreements"][:3])
        return (
            f"top-1 agreement {row['agreement']:.2%} ({row['agreement_beyond_ties']:.2%} counting "
            f"near-ties as agreeing); PyTorch's top-2 margin where they differ: {margins}"
        )

    def damage_model(self, reference: np.ndarray) -> DamageModel:
        return DamageModel(reference)


@dataclass(frozen=True)
class Outputs(Task):
    kind: ClassVar[str] = "outputs"
    measure: ClassVar[str] = "cosine similarity"
    divergence_is: ClassVar[str] = "relative squared error"

    def loss(self, student: list, teacher: list, labels, temperature: float, alpha: float):
        """Relative squared error per example, summed over outputs (labels are not read)."""
        total = 0.0
        for s, t in zip(student, teacher, strict=True):
            s, t = s.reshape(len(s), -1).float(), t.reshape(len(t), -1).float()
            total = total + ((s - t).square().sum(1) / _norm2(t)).mean()
        return total

    def divergence(self, pred: np.ndarray, reference: np.ndarray) -> float:
        pairs = paired(pred, reference)
        with torch.no_grad():
            student = [torch.from_numpy(p) for _, p, _ in pairs]
            teacher = [torch.from_numpy(r) for _, _, r in pairs]
            return float(self.loss(student, teacher, None, 1.0, 1.0))

    def agrees(self, pred: np.ndarray, reference: np.ndarray) -> float:
        return min(self.cosines(pred, reference).values())

    def cosines(self, pred: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        """Per output, the mean over examples of the cosine similarity of its flattened values
        (two all-zero outputs agree)."""
        out = {}
        for name, p, r in paired(pred, reference):
            p, r = (
                p.reshape(len(p), -1).astype(np.float64),
                r.reshape(len(r), -1).astype(np.float64),
            )
            norms = np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1)
            both_zero = (np.abs(p).max(1) == 0) & (np.abs(r).max(1) == 0)
            cos = np.where(both_zero, 1.0, (p * r).sum(1) / np.maximum(norms, 1e-30))
            out[name] = float(cos.mean())
        return out

    def agreement(self, pred: np.ndarray, reference: np.ndarray) -> dict:
        """Also each output's cosine similarity and largest error."""
        cosines = self.cosines(pred, reference)
        per_output = {
            name: {"cosine": cosines[name], "max_abs_error": float(np.abs(p - r).max())}
            for name, p, r in paired(pred, reference)
        }
        return {**super().agreement(pred, reference), "outputs": per_output}

    def shortfall(self, row: dict) -> str:
        worst = sorted(row["outputs"].items(), key=lambda kv: kv[1]["cosine"])[:3]
        return "cosine similarity " + ", ".join(
            f"{name} {o['cosine']:.4f} (max |err| {o['max_abs_error']:.3g})" for name, o in worst
        )

    def damage_model(self, reference: np.ndarray) -> RelativeErrorDamage:
        return RelativeErrorDamage()


def _norm2(t: torch.Tensor) -> torch.Tensor:
    """Each example's squared norm, floored so an all-zero output does not divide by zero."""
    n2 = t.square().sum(1)
    return n2.clamp_min(1e-6 * float(n2.mean()) + 1e-12)


def infer_task(out: Any, setting: TaskSetting, batch: int) -> Task:
    """The task from what the teacher returned for a batch of ``batch`` examples, or the one the
    recipe's ``task`` names: a one-line error when its outputs cannot serve it."""
    names = output_names(out)
    if names is None:
        raise ShapeError(
            "the teacher must return a tensor, a tuple of tensors or a dict of them; "
            f"it returned {type(out).__name__}"
        )
    tensors = flatten(out)
    if bad := [n for n, t in zip(names, tensors, strict=True) if t.dim() == 0 or len(t) != batch]:
        raise ShapeError(
            f"teacher output(s) {', '.join(bad)} have no batch axis (a batch of {batch} "
            "gave another first dimension); return one row per example"
        )
    logits = len(tensors) == 1 and tensors[0].dim() == 2
    if setting == "classification" and not logits:
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, tensors, strict=True))
        raise ShapeError(
            f"task 'classification' needs one output of logits (batch, classes); the teacher "
            f"returns {shapes}: set task: outputs"
        )
    if setting == "classification" or (setting == "auto" and logits):
        return Classification(("logits",), int(tensors[0].shape[1]))
    return Outputs(names)


def near_ties(diff: np.ndarray, reference: np.ndarray, flips: np.ndarray) -> int:
    """Disagreements the export's typical error explains: the reference's top-2 margin is within
    twice the median, over examples, of the largest logit error. (Any flip's margin is within
    twice its own example's error, so that would excuse every flip.) None when the export's
    errors are not small against the logits (``FAITHFUL_ERROR``): a broken export cannot call
    its flips ties. Judged against the spread, not the margins: a student unsure of a 1000-class
    photo has margins as small as its healthy export's errors."""
    if reference.shape[1] < 2 or not len(flips):
        return 0
    spread = float(np.median(reference.max(1) - reference.min(1)))
    if np.percentile(diff.max(1), 99) > FAITHFUL_ERROR * spread:
        return 0
    tolerance = 2 * float(np.median(diff.max(1)))
    top2 = np.sort(reference[flips], axis=1)[:, -2:]
    return int((top2[:, 1] - top2[:, 0] <= tolerance).sum())


# An export whose logit error (99th percentile over examples) stays within this fraction of the
# logits' spread (max - min, median over examples) computes the student's function: about 13
# steps of an int8 grid spanning the logits. EfficientNet-Lite0's healthy int8 exports: 0.22-0.31
# against a spread of 7.5; a broken one (OpenVINO clamping outside ReLU6's range): 2.35.
FAITHFUL_ERROR = 0.05
