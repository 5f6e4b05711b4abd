from __future__ import annotations

import time

import numpy as np

from edgekd.bench.timing import MAX_BLOCK, LatencyStats, measure_interleaved, paired_ratio


def test_interleaved_measurement_ranks_slow_above_fast():
    data = np.random.default_rng(0).random(200_000)
    calls = {"slow": lambda: np.sort(data), "fast": lambda: data[:100].sum()}
    stats = measure_interleaved(calls, warmup=3, min_runs=200, min_seconds=0.2)
    for s in stats.values():
        assert s.runs >= 200
        assert 0 < s.p50 <= s.p90 <= s.p99
    assert stats["slow"].p50 > 5 * stats["fast"].p50


def test_calls_slower_than_a_block_run_round_robin_each_round_reversing_the_order():
    order: list[str] = []
    calls = {key: (lambda key=key: order.append(key)) for key in "abc"}
    stats = measure_interleaved(
        calls, warmup=2, min_runs=3, min_seconds=0, min_rounds=3, block_ms=0
    )
    assert order == list("aabbcc") + list("abccbaabc")  # each call after both neighbours
    assert all(s.runs == 3 and [len(t) for t in s.rounds] == [3] for s in stats.values())


def test_fast_calls_run_in_blocks_that_alternate_a_b_b_a():
    order: list[str] = []
    calls = {key: (lambda key=key: order.append(key)) for key in "ab"}
    measure_interleaved(calls, warmup=1, min_runs=1, min_seconds=0, min_rounds=2, block_ms=1e3)
    assert order[2:] == list("a" * MAX_BLOCK + "b" * MAX_BLOCK * 2 + "a" * MAX_BLOCK)


def test_max_rounds_caps_a_long_min_seconds():
    stats = measure_interleaved(
        {"noop": lambda: None}, warmup=0, min_runs=5, min_seconds=60, max_rounds=20
    )
    assert stats["noop"].runs == 20


def test_a_p99_of_fewer_than_200_calls_is_not_reported():
    stats = measure_interleaved({"noop": lambda: None}, warmup=0, min_runs=50, min_seconds=0)
    assert stats["noop"].runs == 50 and stats["noop"].p99 is None


def test_a_model_twice_as_slow_is_measured_twice_as_slow_within_a_narrow_interval():
    calls = {"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.002)}
    stats = measure_interleaved(calls, warmup=2, min_runs=30, min_seconds=0)
    ratio = paired_ratio(stats["slow"], stats["fast"])
    assert ratio.rounds == 30 and ratio.low <= ratio.value <= ratio.high
    assert ratio.low > 1.3 and ratio.high < 2.3  # sleep overshoots by a fixed amount


def test_the_interval_holds_the_rounds_spread_and_is_the_same_for_the_same_samples():
    rounds = np.random.default_rng(0).lognormal(0.0, 0.3, 100)
    a = LatencyStats(1.0, 1.0, None, 1.0, 100, (tuple(rounds),))
    b = LatencyStats(1.0, 1.0, None, 1.0, 100, ((1.0,) * 100,))
    ratio = paired_ratio(a, b)
    assert ratio.low < np.median(rounds) < ratio.high and not ratio.steady  # 30% noise
    assert paired_ratio(a, b) == ratio
    assert paired_ratio(b, b).steady and paired_ratio(b, b).value == 1.0


def test_trials_whose_ratios_differ_widen_the_interval_to_hold_each_of_them():
    def trial(ratio: float) -> tuple[LatencyStats, LatencyStats]:
        noise = np.random.default_rng(int(ratio * 100)).normal(1.0, 0.005, 50)
        a = LatencyStats.from_ms(list(ratio * noise), (tuple(ratio * noise),))
        b = LatencyStats.from_ms([1.0] * 50, ((1.0,) * 50,))
        return a, b

    trials = [trial(r) for r in (2.85, 2.93, 2.97)]
    alone = [paired_ratio(a, b) for a, b in trials]
    assert alone[0].high < alone[1].low  # one opening's interval misses the next one's ratio
    merged = paired_ratio(*(LatencyStats.merge(list(side)) for side in zip(*trials, strict=True)))
    assert merged.trials == 3 and merged.rounds == 150
    assert merged.low <= 2.86 and merged.high >= 2.96
    assert LatencyStats.merge([trials[0][0]]).p50 == trials[0][0].p50


def test_throughput_is_batch_over_mean_latency():
    stats = LatencyStats(p50=1.0, p90=3.0, p99=4.0, mean=2.0, runs=10)
    assert stats.throughput(8) == 4000.0
