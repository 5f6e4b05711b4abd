"""Predicted damage: how many points of top-1 agreement a summed KL divergence costs.

KL adds up across layers (small perturbations of the logits add in variance); points do not. A
plan's damage is therefore its candidates' KL summed, and turned into points once, by the
teacher's own logits on the calibration inputs: a perturbation of KL ``k`` is taken as logit
noise of variance ``2k``, and an input flips when the noise overturns its top-1. So the points a
KL costs are the flips that noise makes on the teacher's logits, counted over fixed draws: what
a low-margin input set loses to many small errors at once (EfficientNet-Lite0 on photo crops:
all-layer INT8, summed KL 0.046, lost 18-20 points; a linear points-per-KL rate fitted on
pruning rows predicted 2). The second-order expansion says ``2k / (1 - sum p^2)`` per input; on
a sure input that is noise far past its margins, where the expansion no longer holds (a teacher
with logits of spread 24 would lose 46 points to KL 0.01); the plain form errs low on sure
inputs instead, which the measured rounds correct.

The draws are fixed (common random numbers), so each input's flip is monotone in the noise
scale and ``points`` is monotone in KL: a points budget inverts to a KL budget by bisection,
which the greedy search spends additively.
"""

from __future__ import annotations

import math

import numpy as np

DRAWS = 16  # noise draws per calibration input
MAX_CLASSES = 64  # rivals kept per input, the top ones: lower ones rarely overtake
LOGITS = "teacher_logits.npy"  # written by the sensitivity stage: every calibration input


class DamageModel:
    def __init__(self, logits: np.ndarray, seed: int = 0) -> None:
        top = -np.sort(-np.asarray(logits, np.float64), axis=1)[:, :MAX_CLASSES]
        self._gaps = top[:, 1:] - top[:, :1]  # (inputs, classes-1), <= 0: each rival's deficit
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((DRAWS, *top.shape))
        self._rise = noise[..., 1:] - noise[..., :1]  # each rival's noise minus the top-1's

    def points(self, kl: float) -> float:
        """Points of agreement lost to logit noise of variance 2 * ``kl``."""
        if kl <= 0 or not len(self._gaps):
            return 0.0
        sigma = math.sqrt(2.0 * kl)
        flipped = (self._gaps + sigma * self._rise > 0).any(-1)
        return 100.0 * float(flipped.mean())

    def kl_for(self, points: float) -> float:
        """The largest summed KL whose predicted loss stays within ``points`` (inf when even
        unbounded noise would not lose that many)."""
        if self.points(1e6) <= points:
            return math.inf
        lo, hi = 0.0, 1.0
        while self.points(hi) <= points:
            lo, hi = hi, hi * 4
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.points(mid) <= points else (lo, mid)
        return lo


class RelativeErrorDamage:
    """The ``outputs`` task's damage (``task.Outputs``): the summed relative squared error ``e``
    costs ``1 - cos ≈ e / 2`` of cosine similarity, 50 points per unit of ``e``."""

    POINTS_PER_ERROR = 50.0

    def points(self, error: float) -> float:
        return self.POINTS_PER_ERROR * max(error, 0.0)

    def kl_for(self, points: float) -> float:
        return points / self.POINTS_PER_ERROR
