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
            f"{t['params'] / s['params']:.2f}x fewer",
        ),
        (
            "size on disk (ONNX)",
            _bytes(t["size_bytes"]),
            _bytes(s["size_bytes"]),
            f"{s['compression_ratio']:.2f}x smaller",
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
        rows.append((label, f"{tl:.3f} ms", f"{sl:.3f} ms", f"{tl / sl:.2f}x speedup"))
    return rows


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
