"""``report.md``: the same facts as ``report.json``, for people."""

from __future__ import annotations

from typing import Any

from ..bench.timing import STEADY_SPREAD
from .summary import summary_rows


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# edgekd report",
        "",
        f"Teacher `{report['teacher']['spec']}`, data `{report['config']['data']}`, recipe "
        f"`{report['config']['recipe']}`, targets {', '.join(report['config']['targets'])}.",
        f"Accuracy is {report['accuracy_is']}. Measured on {env['cpu']['model']} "
        f"({env['cpu']['arch']}; ISA: {', '.join(env['cpu']['isa']) or 'none detected'}; "
        f"{env['cpu']['usable_cores']} usable cores), {env['os']}.",
        "",
        "## Summary",
        "",
        *_table(["", "teacher", "student", "student vs teacher"], summary_rows(report)),
        "",
        "## Budget",
        "",
        *_budget(report["budget"]),
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
        *_ratios(report["speedups"]),
        *_floors(report["speedups"]),
        "",
        "## Predicted vs measured latency",
        "",
        "Each compressible layer alone, float vs as the plan leaves it (channels kept, weight and",
        "activation format), timed on the runtime (or, for runtimes this machine cannot run, a",
        "cost model from the target file) and summed; the plan's whole graph, untrained, timed",
        "against the teacher's before training (switches between float and int8 layers cost time",
        "no layer sum sees); and the student/teacher ratio bench measured on the trained student.",
        "",
        *_prediction(report["latency_prediction"]),
        *_compared(report["plan"].get("search", {})),
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
        "## Plan vs reality",
        "",
        *_reality(report),
        "",
        "## Precision each runtime computes in",
        "",
        "Verify runs the CPU runtimes in full f32, so its agreement measures the export (TensorRT",
        "engines keep the precisions fixed when they were built). Bench runs",
        "each runtime as users deploy it, in its own default precision on this CPU; the agreement",
        "below is with the PyTorch model on the test split, at that precision.",
        "",
        *_precision(report),
        "",
        "## Verification (exports vs PyTorch, test split, f32 on CPU runtimes)",
        "",
        *_table(
            [
                "model",
                "runtime",
                report["task"]["measure"],
                "max abs error",
                "mean abs error",
                "accuracy",
                "status",
            ],
            [_verify_row(r) for r in report["verify"]],
        ),
        "",
        "## Sensitivity: each layer's planned compression alone, before training",
        "",
        f"Applied to the teacher one layer at a time, compared with the teacher on "
        f"{report['sensitivity']['examples']} {report['sensitivity']['split']} examples.",
        "",
        *_table(
            ["layer", "choice", report["task"]["measure"], report["task"]["divergence_is"]],
            [
                (f"`{r['layer']}`", r["choice"], f"{r['agreement']:.2%}", f"{r['kl']:.2e}")
                for r in report["sensitivity"]["layers"]
            ],
        ),
        "",
        "## Plan: what each layer became, and how each runtime should run it (its target file)",
        "",
        *_plan(report["plan"], report["student"]["channels"]),
        *_heads(report["student"]["heads"]),
        *_tables(report["plan"].get("embeddings", {}), report["student"]["int8_tables"]),
        "",
        "## Environment",
        "",
        f"- CPU: {env['cpu']['model']}, {env['cpu']['arch']}, "
        f"ISA {', '.join(env['cpu']['isa']) or 'none detected'}"
        f" (flags: {' '.join(env['cpu']['flags'])}), {env['cpu']['usable_cores']} usable of "
        f"{env['cpu']['logical_cores']} cores",
        *_load(env.get("load_average")),
        *[
            f"- target {name}: CPU facts for {facts['cpu']}"
            for name, facts in report["plan"]["target_facts"].items()
            if facts["cpu"]
        ],
        *[
            f"- {name} sees: {', '.join(rt['capabilities'])}"
            for name, rt in env["runtimes"].items()
            if rt.get("capabilities")
        ],
        *[f"- {lib}: {ver or 'not installed'}" for lib, ver in env["libraries"].items()],
        "",
    ]
    return "\n".join(lines)


def _ratios(speedups: list[dict[str, Any]]) -> list[str]:
    """Each ratio with its interval, and a warning where the interval is too wide to rank by."""
    timed = [s for s in speedups if s.get("speedup_interval")]
    if not timed:
        return []
    rows = [(s["target"], s["runtime"], s["batch"], f"{s['speedup_p50']:.2f}x",
             "{:.2f}-{:.2f}x".format(*s["speedup_interval"]), "" if s["steady"] else "**too noisy**")
            for s in timed]  # fmt: skip
    noisy = [f"{s['target']}/{s['runtime']} b{s['batch']}" for s in timed if not s["steady"]]
    warning = [
        "",
        f"**Too noisy to rank the models on {', '.join(noisy)}:** the interval holds 1 (either "
        f"could be faster) and is wider than {STEADY_SPREAD:.2f}x its low end. Re-run `edgekd bench` on an idle machine or with a "
        "larger `bench.min_seconds`; the load average is under Environment.",
    ]
    return [
        "",
        "Teacher / student: the median over rounds of the two models' paired ratio (both ran in "
        "each round, so load that comes and goes cancels), timed in trials with the models "
        "reopened for each, with its 95% bootstrap interval over trials and rounds.",
        "",
        *_table(["target", "runtime", "batch", "teacher / student", "95% interval", ""], rows),
        *(warning if noisy else []),
    ]


def _load(load: dict[str, float | None] | None) -> list[str]:
    if not load or load["before"] is None:
        return []
    return [
        f"- load average (1 min) before / after bench: {load['before']:.2f} / {load['after']:.2f}"
    ]


def _floors(speedups: list[dict[str, Any]]) -> list[str]:
    rows = [
        (s["target"], s["runtime"], s["batch"], f"{s['floor_ms']:.4f}",
         f"{s['floor_speedup']:.1f}x", f"{s['speedup_p50']:.2f}x")
        for s in speedups
        if s.get("floor_ms") is not None
    ]  # fmt: skip
    if not rows:
        return []
    header = ["target", "runtime", "batch", "floor p50 ms", "teacher / floor", "teacher / student"]
    return [
        "",
        "Call floor: a graph with the teacher's input and outputs that computes nothing "
        "(`runtimes/floor.py`), timed in the same run. No student runs faster than it, so teacher "
        "p50 / floor p50 is the most any plan can gain there.",
        "",
        *_table(header, rows),
    ]


def _prediction(rows: list[dict[str, Any]]) -> list[str]:
    header = ["target/runtime batch", "from", "layers float", "layers planned", "predicted ratio",
              "plan timed whole", "measured ratio"]  # fmt: skip
    table = []
    for p in rows:
        unit = " ms" if p["source"] == "measured" else ""  # a cost model has no unit
        ratios = [p["planned_over_float"], p.get("whole_student_over_teacher"),
                  p["measured_student_over_teacher"]]  # fmt: skip
        table.append(
            (p["where"], p["source"], f"{p['float_ms']:.3f}{unit}", f"{p['planned_ms']:.3f}{unit}",
             *(f"{r:.2f}x" if r else "–" for r in ratios))
        )  # fmt: skip
    return _table(header, table)


def _compared(search: dict[str, Any]) -> list[str]:
    """The plans the search timed whole, one per precision mode, and which it took."""
    if not search.get("whole"):
        return []
    lines = ["", "Plans compared whole before training (teacher p50 / plan p50):", ""]
    for mode, speedups in search["whole"].items():
        figures = ", ".join(f"{key} {s:.2f}x" for key, s in speedups.items())
        lines.append(f"- {mode}: {figures}" + (" (the plan)" if mode == search["mode"] else ""))
    return lines


def _reality(report: dict[str, Any]) -> list[str]:
    """The student's layers whose kernel, or whose runtime's precision, is not what the plan said."""
    rows = report["layers_executed"]
    checked = sorted({f"{r['target']}/{r['runtime']}" for r in rows if r["executed"]})
    unread = sorted(
        f"`{r['layer']}` ({r['target']}/{r['runtime']})" for r in rows if not r["executed"]
    )
    out = [
        "Each layer's planned kernel (from the target file) against the kernel the runtime's",
        f"compiled graph ran. Runtimes read: {', '.join(checked) or 'none (nothing ran here)'}."
        + (f" Layers their graphs no longer name: {', '.join(unread)}." if unread else ""),
        "",
    ]
    if not checked:
        return [*out, "Not checked."]
    if not report["mismatches"]:
        read = sum(bool(r["executed"]) for r in rows)
        return [*out, f"All {read} layer checks that could be read ran as planned."]
    return out + _table(
        ["target", "runtime", "layer", "what", "planned", "ran", "kernel"],
        [
            (m["target"], m["runtime"], f"`{m['layer']}`" if m["layer"] else "–", m["what"],
             m["planned"], m["executed"], m.get("kernel") or "–")
            for m in report["mismatches"]
        ],
    )  # fmt: skip


def _budget(budget: dict[str, Any]) -> list[str]:
    acc = budget["accuracy"]
    lo, hi = acc["student_interval"]
    lines = [
        f"**{'Met' if budget['passed'] else 'Missed'}.** Objective: {budget['objective']}; "
        f"accuracy may drop {budget['max_accuracy_drop']:g} pts"
        + (
            f"; student p50 at most {budget['latency_target']:g}x the teacher's on every runtime "
            "and batch measured here"
            if budget["latency_target"]
            else ""
        )
        + ".",
        "",
        f"- Accuracy: teacher {acc['teacher']:.2%}, student {acc['student']:.2%} (the worst of "
        f"PyTorch and its exports; 95% interval {lo:.1%}–{hi:.1%} on {acc['examples']} test "
        f"examples), a drop of {acc['drop_pts']:.2f} pts.",
    ]
    if not acc["enough_examples"]:
        lines.append(
            f"- The test split is too small to judge a {budget['max_accuracy_drop']:g}-pt budget: "
            f"about {acc['examples_needed']} examples would be needed."
        )
    lines += [
        f"- Latency on {r['target']}/{r['runtime']} at batch {r['batch']}: student p50 "
        f"{r['student_over_teacher']:.2f}x the teacher's ({'ok' if r['ok'] else 'misses'})."
        for r in budget["latency"]
    ]
    if not budget["latency_checked"]:
        lines.append("- Latency not checked: no target runtime ran on this machine.")
    if budget["latency_unchecked"]:
        lines.append(f"- Latency not checked on: {', '.join(budget['latency_unchecked'])}.")
    lines += [f"- **{f}**" for f in budget["failures"]]
    lines += [
        f"- Round {r['round'] + 1} of the search: budget {r['budget_pts']:.2f} pts of predicted "
        f"damage ({r['predicted_drop_pts']:.2f} spent), measured drop {r['measured_drop_pts']:.2f}"
        f" pts: {'met' if r['passed'] else 'missed'} the budget."
        for r in budget.get("earlier_rounds", [])
    ]
    return lines


def _precision(report: dict[str, Any]) -> list[str]:
    first = report["results"][0]["batch"] if report["results"] else None
    rows = [
        (r["target"], r["runtime"], r["model"], r["inference_precision"],
         f"{r['deployed_agreement']:.2%}")
        for r in report["results"]
        if r["deployed_agreement"] is not None and r["batch"] == first
    ]  # fmt: skip
    out = _table(["target", "runtime", "model", "computes in", report["task"]["measure"]], rows)
    for d in report["deployed_below_gate"]:
        out += [
            "",
            f"**{d['target']}/{d['runtime']} {d['model']}: {d['agreement']:.2%} "
            f"{report['task']['measure']} in {d['inference_precision']}, below the {d['gate']:.0%} gate.** The "
            "export passed verify in f32; this is what the runtime's default precision does here.",
        ]
    return out


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
        r["model"], r["runtime"], f"{r['agreement']:.2%}", f"{r['max_abs_error']:.2e}",
        f"{r['mean_abs_error']:.2e}", f"{r['accuracy']:.2%}", r["status"],
    ]  # fmt: skip


def _heads(heads: dict[str, list[int]]) -> list[str]:
    """Attention heads are pruned whole; the plan's q/k/v keep ratios set how many go."""
    kept = [f"`{name}` {after} of {before}" for name, (before, after) in heads.items()]
    return ["", f"Attention heads kept: {', '.join(kept)}."] if kept else []


def _tables(embeddings: dict[str, int], stored: list[str]) -> list[str]:
    """The planned tables as the export stored them: integer rows, or float where the exporter
    folded the lookup into a constant (fixed ids)."""
    tables = [f"`{name}` int{bits}" if name in stored else f"`{name}` float (folded into a constant)"
              for name, bits in embeddings.items()]  # fmt: skip
    return ["", f"Embedding tables, one scale per row: {', '.join(tables)}."] if tables else []


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
