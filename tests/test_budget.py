"""The budget and its gate: a student that misses it fails the run, with the figure and the why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import edgekd

from edgekd.budget import examples_needed, judge, wilson
from edgekd.recipe import PlanRecipe
from edgekd.sensitivity import damage
from edgekd.task import Classification

TASK = Classification(("logits",), 10)

TESTS = Path(__file__).parent


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = wilson(0.9, 100)  # Wilson (1927); e.g. Newcombe 1998, table I
    assert (round(lo, 4), round(hi, 4)) == (0.8256, 0.9448)
    assert wilson(1.0, 24)[0] == pytest.approx(24 / (24 + 1.96**2))  # 24 of 24 still allows 86%


def test_examples_needed_grow_as_the_budget_shrinks():
    assert examples_needed(0.95, 1.0) == 1825
    assert examples_needed(0.95, 2.0) == 457
    assert examples_needed(1.0, 1.0) == examples_needed(0.99, 1.0)  # floor on p(1-p)


def _report(teacher=0.98, student=0.97, speedups=(2.0, 0.5), examples=1000):
    return {
        "teacher": {"accuracy": teacher},
        "student": {"accuracy": student},
        "verify": [{"model": "student", "status": "ok", "accuracy": student - 0.01}],
        "test_examples": examples,
        "results": [{"target": "jetson-orin", "runtime": "tensorrt", "status": "skipped"}],
        "speedups": [
            {"target": "x86-cpu", "runtime": "openvino", "batch": b, "speedup_p50": s}
            for b, s in zip((1, 32), speedups, strict=True)
        ],
    }


def test_accuracy_budget_counts_the_worst_of_pytorch_and_the_exports():
    verdict = judge(_report(), PlanRecipe(max_accuracy_drop=1.5))
    assert verdict["accuracy"]["drop_pts"] == pytest.approx(2.0)  # export 96% vs teacher 98%
    assert not verdict["passed"] and "2.00 pts below" in verdict["failures"][0]
    assert judge(_report(), PlanRecipe(max_accuracy_drop=2.5))["passed"]


def test_a_drop_exactly_at_the_budget_meets_it():
    """8 flips in 160 are 5 points, though 1.0 - 152/160 is 0.05000000000000004 in floats."""
    report = _report(teacher=1.0, student=152 / 160, examples=160)
    report["verify"] = []
    assert judge(report, PlanRecipe(max_accuracy_drop=5))["passed"]


def test_latency_is_judged_only_when_speed_was_asked_for():
    assert judge(_report(), PlanRecipe(max_accuracy_drop=5))["latency"] == []
    verdict = judge(_report(), PlanRecipe(max_accuracy_drop=5, objective="latency"))
    assert [r["ok"] for r in verdict["latency"]] == [True, False]
    assert "2.00x the teacher's on x86-cpu/openvino at batch 32" in verdict["failures"][0]
    assert judge(_report(), PlanRecipe(max_accuracy_drop=5, latency_target=2.5))["passed"]
    assert verdict["latency_unchecked"] == ["jetson-orin/tensorrt"]  # said, not silently passed


def test_a_small_test_split_is_said_to_be_too_small():
    verdict = judge(_report(examples=24), PlanRecipe(max_accuracy_drop=5))
    assert verdict["passed"] and not verdict["accuracy"]["enough_examples"]
    assert judge(_report(examples=5000), PlanRecipe(max_accuracy_drop=5))["accuracy"][
        "enough_examples"
    ]


def test_damage_of_identical_outputs_is_none():
    logits = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    assert damage(TASK, logits, logits) == {"agreement": 1.0, "kl": 0.0}
    assert damage(TASK, -logits, logits)["agreement"] < 0.5


def test_a_budget_that_cannot_be_met_fails_with_one_line_and_keeps_the_report(tmp_path):
    out = tmp_path / "run"
    result = edgekd(
        "compress", "--teacher", "conftest:tiny_net", "--out", str(out),
        "--set", "distill.epochs=1", "--set", "plan.max_accuracy_drop=100",
        "--set", "plan.latency_target=0.01", "--set", "bench.batches=[1]",
        "--set", "bench.min_runs=5", "--set", "bench.min_seconds=0.05",
        cwd=TESTS,
    )  # fmt: skip
    assert result.returncode == 5
    error = result.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "misses its budget" in error and "(budget 0.01x;" in error
    report = json.loads((out / "report.json").read_text())
    assert not report["budget"]["passed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["gate"]["status"] == "failed"
    assert manifest["stages"]["report"]["status"] == "done"
    assert "**Missed.**" in (out / "report.md").read_text()


def test_each_disagreement_reports_the_references_top2_margin():
    reference = np.array([[2.0, 1.99, 0.0], [3.0, 0.0, 0.0]], np.float32)
    export = np.array([[1.98, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)  # a near-tie flipped
    result = TASK.agreement(export, reference)
    assert result["top1_agreement"] == 0.5
    assert result["disagreements"] == [
        {"index": 0, "reference_margin": pytest.approx(0.01), "max_abs_error": pytest.approx(0.02)}
    ]


def test_verify_fails_an_export_only_when_its_agreement_interval_is_below_the_threshold():
    from edgekd.verify import agreement_interval

    def top(agreeing: int, n: int) -> float:
        return agreement_interval({"agreement_beyond_ties": agreeing / n}, n)[1]

    assert top(29, 30) >= 0.99  # one integer-rounding flip in 30 cannot judge a 99% export
    assert top(28, 30) < 0.99  # two can
    assert top(995, 1000) >= 0.99 and top(980, 1000) < 0.99


def test_a_flip_within_the_exports_error_is_a_tie_unless_the_error_is_large_for_the_logits():
    from edgekd.task import near_ties

    reference = np.zeros((5, 5), np.float32)
    reference[:, 0] = 8.0  # logits spread over 8: errors up to 0.4 are small
    reference[:, 1] = [7.9, 7.95, 7.7, 6.0, 2.0]  # top-2 margins 0.1, 0.05, 0.3, 2 and 6
    flips = np.array([0, 1, 2])
    small = np.full((5, 5), 0.1, np.float32)
    small[2] = 0.35  # the error on example 2 alone would excuse its flip; the typical one not
    assert near_ties(small, reference, flips) == 2  # margins 0.1 and 0.05 <= 2 x 0.1
    broken = np.full((5, 5), 1.0, np.float32)  # 1/8 of the spread: not rounding
    assert near_ties(broken, reference, flips) == 0
