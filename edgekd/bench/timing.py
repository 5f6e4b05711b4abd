"""Latency measured round-robin, so models compared as ratios share the same conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    runs: int

    def throughput(self, batch: int) -> float:
        """Images per second; from the mean, since throughput is total work over total time."""
        return batch / (self.mean / 1000)

    @classmethod
    def from_ns(cls, samples: list[int]) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), len(ms))


def measure_interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    warmup: int = 10,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    max_runs: int = 2000,
) -> dict[str, LatencyStats]:
    """Time every call in rounds, forward then backward (a, b, c, c, b, a, ...), after
    ``warmup`` rounds.

    Round-robin lets CPU frequency drift and background load hit every model alike; alternating
    the order gives each call both neighbours, since a call runs slower after one that evicted
    its caches. Rounds go on until each call has ``min_runs`` samples and ``min_seconds`` have
    passed, or ``max_runs``.
    """
    if not calls:
        raise ValueError("measure_interleaved needs at least one call")
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[int]] = {key: [] for key in calls}
    deadline = time.perf_counter_ns() + int(min_seconds * 1e9)
    rounds, order = 0, list(calls.items())
    while rounds < max_runs and (rounds < min_runs or time.perf_counter_ns() < deadline):
        for key, call in order if rounds % 2 == 0 else order[::-1]:
            start = time.perf_counter_ns()
            call()
            samples[key].append(time.perf_counter_ns() - start)
        rounds += 1
    return {key: LatencyStats.from_ns(ns) for key, ns in samples.items()}


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` real test inputs, repeated if the test split is smaller (only those copied: the
    split may be a memory map of a large image folder)."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x[:batch]] * reps)[:batch])
