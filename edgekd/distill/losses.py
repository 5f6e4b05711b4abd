"""Distillation loss: Hinton KD (KL at temperature T, scaled by T²) plus cross-entropy on labels."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    t = temperature
    kd = F.kl_div(
        F.log_softmax(student / t, 1),
        F.log_softmax(teacher / t, 1),
        log_target=True,
        reduction="batchmean",
    )
    kd = kd * t * t  # keeps gradient size independent of T
    if labels is None:
        return kd
    return alpha * kd + (1 - alpha) * F.cross_entropy(student, labels)
