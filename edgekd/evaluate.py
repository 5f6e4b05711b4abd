"""Predictions and accuracy, the same way for PyTorch models and runtime sessions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .data import Split
from .data.inputs import as_example, call

RUNTIME_BATCH = 64  # verify feeds runtimes this many inputs per call; engines must accept it


def max_batch(bench_batches: list[int]) -> int:
    """The largest batch an artifact must accept: verify's and every bench batch."""
    return max(RUNTIME_BATCH, *bench_batches)


def predict(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [np.asarray(fn(x[i : i + batch]), dtype=np.float32) for i in range(0, len(x), batch)]
    )


def torch_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return call(model, as_example(x)).numpy()

    return run


def accuracy(logits: np.ndarray, split: Split, teacher_logits: np.ndarray) -> float:
    """Top-1 accuracy against labels; without labels, agreement with the teacher's top-1."""
    truth = split.y if split.y is not None else teacher_logits.argmax(1)
    return float((logits.argmax(1) == truth).mean())


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement and output errors; each disagreement with the reference's top-2 margin,
    which says whether it is a near-tie that rounding flipped or a real difference."""
    diff = np.abs(logits - reference)
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    flips = np.flatnonzero(logits.argmax(1) != reference.argmax(1))
    agree = float((logits.argmax(1) == reference.argmax(1)).mean())
    return {
        "top1_agreement": agree,
        "top1_agreement_beyond_ties": agree + near_ties(diff, reference, flips) / len(logits),
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "disagreements": [
            {"index": int(i), "reference_margin": float(top2[i, 1] - top2[i, 0]),
             "max_abs_error": float(diff[i].max())}
            for i in flips[:10]
        ] if top2 is not None else [],
    }  # fmt: skip


# An export whose logit error (99th percentile over examples) stays within this fraction of the
# logits' spread (max - min, median over examples) computes the student's function: about 13
# steps of an int8 grid spanning the logits. EfficientNet-Lite0's healthy int8 exports: 0.22-0.31
# against a spread of 7.5; a broken one (OpenVINO clamping outside ReLU6's range): 2.35.
FAITHFUL_ERROR = 0.05


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


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
