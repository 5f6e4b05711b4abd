from __future__ import annotations

import numpy as np

from edgekd.bench.timing import LatencyStats, measure_interleaved


def test_interleaved_measurement_ranks_slow_above_fast():
    data = np.random.default_rng(0).random(200_000)
    calls = {"slow": lambda: np.sort(data), "fast": lambda: data[:100].sum()}
    stats = measure_interleaved(calls, warmup=3, min_runs=30, min_seconds=0.2)
    for s in stats.values():
        assert s.runs >= 30
        assert 0 < s.p50 <= s.p90 <= s.p99
    assert stats["slow"].p50 > 5 * stats["fast"].p50


def test_calls_run_round_robin_after_warmup_each_round_reversing_the_order():
    order: list[str] = []
    calls = {key: (lambda key=key: order.append(key)) for key in "abc"}
    stats = measure_interleaved(calls, warmup=2, min_runs=3, min_seconds=0)
    assert order == list("abc") * 2 + list("abccbaabc")  # each call after both neighbours
    assert all(s.runs == 3 for s in stats.values())


def test_max_runs_caps_a_long_min_seconds():
    stats = measure_interleaved(
        {"noop": lambda: None}, warmup=0, min_runs=5, min_seconds=60, max_runs=20
    )
    assert stats["noop"].runs == 20


def test_throughput_is_batch_over_mean_latency():
    stats = LatencyStats(p50=1.0, p90=3.0, p99=4.0, mean=2.0, runs=10)
    assert stats.throughput(8) == 4000.0
