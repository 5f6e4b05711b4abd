"""Latency measured in alternating blocks, so models compared as ratios share the same
conditions, and each ratio with the interval it can be trusted within."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# A model's calls run back to back for about this long per turn (at most MAX_BLOCK calls):
# alternating call by call let each model evict the other's caches, which slowed small models
# by 16-20% against running alone; a block keeps them warm and the rounds still pair them.
BLOCK_MS = 2.0
MAX_BLOCK = 16
MIN_ROUNDS = 20  # paired rounds, so the ratio's interval rests on more than a handful
P99_MIN_RUNS = 200  # a 99th percentile of fewer calls is one of their slowest two
STEADY_SPREAD = 1.10  # an interval holding 1 and wider than high / low = 1.10 cannot rank them


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    p50: float
    p90: float
    p99: float | None  # None with fewer than P99_MIN_RUNS calls
    mean: float
    runs: int
    # per trial (one per measurement; ``merge`` joins trials), per round: the median of this
    # model's block of calls
    rounds: tuple[tuple[float, ...], ...] = ()
    samples: tuple[float, ...] = field(default=(), repr=False)  # every call

    def throughput(self, batch: int) -> float:
        """Images per second; from the mean, since throughput is total work over total time."""
        return batch / (self.mean / 1000)

    @classmethod
    def from_ms(cls, ms: list[float], rounds: tuple[tuple[float, ...], ...] = ()) -> LatencyStats:
        ms = np.asarray(ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        tail = float(p99) if len(ms) >= P99_MIN_RUNS else None
        return cls(float(p50), float(p90), tail, float(ms.mean()), len(ms), rounds, tuple(ms))

    @classmethod
    def merge(cls, trials: list[LatencyStats]) -> LatencyStats:
        """One model's trials (each with its own sessions) as one measurement."""
        return cls.from_ms([s for t in trials for s in t.samples],
                           tuple(r for t in trials for r in t.rounds))  # fmt: skip


@dataclass(frozen=True)
class Ratio:
    """``a / b``: the median of their per-round ratios, and its 95% bootstrap interval."""

    value: float
    low: float
    high: float
    rounds: int
    trials: int = 1

    @property
    def steady(self) -> bool:
        """Enough to rank the models: the interval is on one side of 1 (one is faster), or
        narrow around it (``STEADY_SPREAD``: they are as fast)."""
        return not self.low < 1.0 < self.high or self.high <= self.low * STEADY_SPREAD

    def to_dict(self) -> dict:
        return {"ratio": self.value, "interval": [self.low, self.high], "rounds": self.rounds,
                "trials": self.trials, "steady": self.steady}  # fmt: skip


def _round_ratios(a: LatencyStats, b: LatencyStats) -> list[np.ndarray]:
    """Per trial, ``a``'s block medians over ``b``'s, round by round."""
    return [np.asarray(ta) / np.asarray(tb) for ta, tb in zip(a.rounds, b.rounds, strict=True)]


def median_ratio(a: LatencyStats, b: LatencyStats) -> float:
    """``paired_ratio``'s value alone, without its interval (no resampling)."""
    return float(np.median(np.concatenate(_round_ratios(a, b))))


def paired_ratio(a: LatencyStats, b: LatencyStats, resamples: int = 2000, seed: int = 0) -> Ratio:
    """How many times ``a``'s latency ``b``'s is, round by round: both ran in the same round,
    so load that comes and goes hits both and cancels in their ratio. The interval resamples
    trials, then rounds within each (percentile bootstrap, seeded: the same samples give the
    same interval): reopened sessions of the same two models moved ONNX Runtime's b32 ratio
    from 2.85x to 2.97x here, each within +-0.05, so rounds alone understate the spread."""
    trials = _round_ratios(a, b)
    rng = np.random.default_rng(seed)
    medians = []
    for _ in range(resamples):
        picked = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
        medians.append(
            np.median(np.concatenate([t[rng.integers(0, len(t), len(t))] for t in picked]))
        )
    low, high = np.percentile(medians, [2.5, 97.5])
    rounds = sum(map(len, trials))
    return Ratio(median_ratio(a, b), float(low), float(high), rounds, len(trials))


def measure_interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    warmup: int = 10,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    max_rounds: int = 2000,
    min_rounds: int = MIN_ROUNDS,
    block_ms: float = BLOCK_MS,
) -> dict[str, LatencyStats]:
    """Time every call in rounds after ``warmup`` calls each: in a round each model runs a
    block of calls (``BLOCK_MS``, sized by its last warm-up call; one call for a model slower
    than that, or with no warm-up), in order forward
    then backward (a b c, c b a, ...), and each call is timed alone.

    Rounds let CPU frequency drift and background load hit every model alike; alternating the
    order gives each block both neighbours. Garbage collection is off while timing (a
    collection inside a call is not the model's time). Rounds go on until there are
    ``min_rounds``, each call has ``min_runs`` samples and ``min_seconds`` have passed, or
    ``max_rounds``.
    """
    if not calls:
        raise ValueError("measure_interleaved needs at least one call")
    block = {key: 1 for key in calls}
    for key, call in calls.items():
        for i in range(warmup):
            start = time.perf_counter_ns()
            call()
            if i == warmup - 1:  # the warmest call sizes the block
                took_ms = (time.perf_counter_ns() - start) / 1e6
                block[key] = int(min(MAX_BLOCK, max(1, block_ms // max(took_ms, 1e-6))))
    samples: dict[str, list[int]] = {key: [] for key in calls}
    rounds: dict[str, list[float]] = {key: [] for key in calls}
    collecting = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter_ns() + int(min_seconds * 1e9)
        done, order = 0, list(calls.items())
        while done < max_rounds and (
            done < min_rounds
            or min(map(len, samples.values())) < min_runs
            or time.perf_counter_ns() < deadline
        ):
            for key, call in order if done % 2 == 0 else order[::-1]:
                taken = []
                for _ in range(block[key]):
                    start = time.perf_counter_ns()
                    call()
                    taken.append(time.perf_counter_ns() - start)
                samples[key] += taken
                rounds[key].append(float(np.median(taken)) / 1e6)
            done += 1
    finally:
        if collecting:
            gc.enable()
    return {key: LatencyStats.from_ms([n / 1e6 for n in ns], (tuple(rounds[key]),))
            for key, ns in samples.items()}  # fmt: skip


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` real test inputs, repeated if the test split is smaller (only those copied: the
    split may be a memory map of a large image folder)."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x[:batch]] * reps)[:batch])
