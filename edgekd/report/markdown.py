"""``report.md``: the same facts as ``report.json``, for people."""

from __future__ import annotations

from typing import Any

from .summary import summary_rows


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# edgekd report",
        "",
        f"Teacher `{report['teacher']['spec']}`, data `{report['config']['data']}`, recipe "
        f"`{report['config']['recipe']}`, targets {', '.join(report['config']['targets'])}.",
        f"Accuracy is {report['accuracy_is']}. Measured on {env['cpu']['model']} "
        f"({env['cpu']['usable_cores']} usable cores), {env['os']}.",
        "",
        "## Summary",
        "",
        *_table(["", "teacher", "student", "student vs teacher"], summary_rows(report)),
        "",
        "## Latency per runtime",
        "",
        "Teacher and student were timed interleaved on the same inputs in one run.",
        "",
        *_table(
            [
                "target",
                "runtime",
                "model",
                "precision",
                "batch",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "img/s",
                "status",
            ],
            [_latency_row(r) for r in report["results"]],
        ),
        "",
        "## What each runtime really executed",
        "",
        "Read from each runtime's compiled graph (ONNX Runtime's optimized model, OpenVINO's runtime",
        "model, TensorRT's engine inspector) after the timing runs: the kernels that ran, not a claim.",
        "",
        *_table(
            ["target", "runtime", "model", "kernels (count)"],
            [
                (e["target"], e["runtime"], e["model"], _kernels(e["kernels"]))
                for e in report["executed"]
            ],
        ),
        "",
        "## Verification (exports vs PyTorch, test split)",
        "",
        *_table(
            [
                "model",
                "runtime",
                "top-1 agreement",
                "max abs error",
                "mean abs error",
                "accuracy",
                "status",
            ],
            [_verify_row(r) for r in report["verify"]],
        ),
        "",
        "## Plan: what each layer became, and how each runtime runs it (as its target file declares)",
        "",
        *_plan(report["plan"], report["student"]["channels"]),
        "",
        "## Environment",
        "",
        *[f"- {lib}: {ver or 'not installed'}" for lib, ver in env["libraries"].items()],
        "",
    ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[tuple | list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _kernels(kernels: dict[str, int]) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in sorted(kernels.items(), key=lambda kv: -kv[1]))


def _latency_row(r: dict) -> list:
    lat = r["latency_ms"] or {}
    fmt = lambda v: f"{v:.3f}" if v is not None else "–"  # noqa: E731
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
    ips = f"{r['throughput_ips']:.0f}" if r["throughput_ips"] else "–"
    return [
        r["target"],
        r["runtime"],
        r["model"],
        r["precision"],
        r["batch"],
        fmt(lat.get("p50")),
        fmt(lat.get("p90")),
        fmt(lat.get("p99")),
        ips,
        status,
    ]


def _verify_row(r: dict) -> list:
    if r["status"] == "skipped":
        return [r["model"], r["runtime"], "–", "–", "–", "–", f"skipped: {r['reason']}"]
    return [
        r["model"], r["runtime"], f"{r['top1_agreement']:.2%}", f"{r['max_abs_error']:.2e}",
        f"{r['mean_abs_error']:.2e}", f"{r['accuracy']:.2%}", r["status"],
    ]  # fmt: skip


def _plan(plan: dict, channels: dict[str, list[int]]) -> list[str]:
    """Per layer; "kept" is what pruning really did (Torch-Pruning rounds and may keep more)."""
    runtimes = sorted({k for lp in plan["layers"] for k in lp["runs_as"]})
    rows = []
    for lp in plan["layers"]:
        bits = f"W{lp['weight_bits']}" if lp["weight_bits"] else "float"
        acts = f"A{lp['activation_bits']}" if lp["activation_bits"] else "float"
        granularity = f"block {lp['block_size']}" if lp["block_size"] else "per-channel"
        rows.append(
            [
                f"`{lp['name']}`",
                lp["op"],
                f"{lp['keep_ratio']:g}",
                "{} of {}".format(*channels[lp["name"]][::-1]),
                lp["sparsity"] or "dense",
                f"{bits} {granularity}",
                acts,
            ]
            + [lp["runs_as"][k] for k in runtimes]
            + ["; ".join(lp["notes"])]
        )
    out = _table(
        [
            "layer",
            "op",
            "keep asked",
            "channels kept",
            "sparsity",
            "weights",
            "acts",
            *runtimes,
            "notes",
        ],
        rows,
    )
    if plan["adjustments"]:
        out += [
            "",
            "Requests changed to fit the targets:",
            *[f"- {a}" for a in plan["adjustments"]],
        ]
    return out
