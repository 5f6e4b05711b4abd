"""The teacher-vs-student summary, shared by the terminal table and ``report.md``."""

from __future__ import annotations

from typing import Any


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, teacher, student, student vs teacher) rows."""
    t, s = report["teacher"], report["student"]
    rows = [
        (
            "accuracy",
            f"{t['accuracy']:.2%}",
            f"{s['accuracy']:.2%}",
            f"{(s['accuracy'] - t['accuracy']) * 100:+.2f} pts",
        ),
        ("precision", t["precision"], s["precision"], ""),
        (
            "parameters",
            f"{t['params']:,}",
            f"{s['params']:,} ({s['nonzero_params']:,} ≠ 0)",
            _ratio(t["params"] / s["params"], "fewer", "more"),
        ),
        (
            "size on disk (ONNX)",
            _bytes(t["size_bytes"]),
            _bytes(s["size_bytes"]),
            _ratio(s["compression_ratio"], "smaller", "larger"),
        ),
    ]
    by_key = {(r["target"], r["runtime"], r["batch"], r["model"]): r for r in report["results"]}
    for (target, runtime, batch, model), row in by_key.items():
        if model != "teacher":
            continue
        student = by_key[(target, runtime, batch, "student")]
        label = f"latency p50 {runtime} b{batch}" + (
            f" [{target}]" if len(report["config"]["targets"]) > 1 else ""
        )
        if row["status"] != "ok" or student["status"] != "ok":
            rows.append((label, "skipped", "skipped", row["reason"] or student["reason"] or ""))
            continue
        tl, sl = row["latency_ms"]["p50"], student["latency_ms"]["p50"]
        rows.append((label, f"{tl:.3f} ms", f"{sl:.3f} ms", _speedup(student, tl / sl)))
    budget = report["budget"]
    rows.append(
        (
            "budget",
            "",
            "met" if budget["passed"] else "MISSED",
            "; ".join(budget["failures"]) or _budget_met(budget),
        )
    )
    many = len(report["config"]["targets"]) > 1
    for where, by_model in report["inference_precision"].items():
        target, runtime = where.split("/")
        label = f"computes in {runtime}" + (f" [{target}]" if many else "")
        rows.append((label, by_model.get("teacher", ""), by_model.get("student", ""), ""))
    for d in report["deployed_below_gate"]:
        rows.append(
            (
                f"agreement in {d['runtime']} default precision"
                + (f" [{d['target']}]" if many else ""),
                "" if d["model"] == "student" else f"{d['agreement']:.2%}",
                f"{d['agreement']:.2%}" if d["model"] == "student" else "",
                f"below the {d['gate']:.0%} gate: the device's precision, not the export",
            )
        )
    checked = {(r["target"], r["runtime"]) for r in report["layers_executed"] if r["executed"]}
    if checked:
        n = len(report["mismatches"])
        rows.append(
            (
                "plan vs reality",
                "",
                f"{n} mismatch{'es' if n != 1 else ''}" if n else "as planned",
                "see report.md"
                if n
                else f"{sum(bool(r['executed']) for r in report['layers_executed'])} of "
                f"{len(report['layers_executed'])} layer checks read, {len(checked)} runtime(s)",
            )
        )
    return rows


def _budget_met(budget: dict[str, Any]) -> str:
    text = (
        f"accuracy drop {budget['accuracy']['drop_pts']:.2f} <= {budget['max_accuracy_drop']:g} pts"
    )
    if budget["latency"]:
        text += f", p50 <= {budget['latency_target']:g}x teacher"
    elif budget["latency_target"]:
        text += "; latency not measured here"
    else:
        text += "; speed not asked for"
    if budget["latency_unchecked"]:
        text += f" (not checked: {', '.join(budget['latency_unchecked'])})"
    return text


def _speedup(student: dict, p50_ratio: float) -> str:
    """The paired ratio with its interval (``bench.timing``), flagged where too noisy to rank."""
    speedup = student.get("speedup")
    if speedup is None:  # a bench from before rounds were paired
        return _ratio(p50_ratio, "faster", "slower")
    low, high = speedup["interval"]
    noisy = "" if speedup["steady"] else ", too noisy to rank"
    return f"{_ratio(speedup['ratio'], 'faster', 'slower')} (95% {low:.2f}-{high:.2f}x{noisy})"


def _ratio(r: float, better: str, worse: str) -> str:
    """Ratios read as words: "3.70x slower" is clearer than "0.27x speedup"."""
    if abs(r - 1) < 0.005:
        return "same"
    return f"{r:.2f}x {better}" if r > 1 else f"{1 / r:.2f}x {worse}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
