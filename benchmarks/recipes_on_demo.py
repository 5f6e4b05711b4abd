"""Every preset on the demo teacher: accuracy, size and teacher/student latency ratios per runtime.

Run: ``python benchmarks/recipes_on_demo.py [--recipes default w8a8 small] [--out DIR]``.
Latency ratios come from one interleaved measurement per runtime (teacher and student alternate
call by call on the same inputs), so they are comparable within a row, not across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import edgekd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["default", "w8a8", "small"])
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="edgekd-bench-"))
    console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in pipes and logs
    table = Table(
        "recipe",
        "precision",
        "accuracy (T/S)",
        "params (S)",
        "ONNX size ratio",
        "runtime",
        "batch",
        "p50 T ms",
        "p50 S ms",
        "T/S",
    )
    for recipe in args.recipes:
        run = edgekd.compress(out=root / recipe, recipe=recipe, log=lambda _msg: None)
        report = json.loads((run / "report.json").read_text())
        t, s = report["teacher"], report["student"]
        rows = {
            (r["runtime"], r["batch"], r["model"]): r
            for r in report["results"]
            if r["status"] == "ok"
        }
        for (runtime, batch, model), row in rows.items():
            if model != "teacher":
                continue
            tl, sl = (
                row["latency_ms"]["p50"],
                rows[(runtime, batch, "student")]["latency_ms"]["p50"],
            )
            table.add_row(
                recipe, s["precision"], f"{t['accuracy']:.1%} / {s['accuracy']:.1%}", f"{s['params']:,}",
                f"{s['compression_ratio']:.2f}x", runtime, str(batch), f"{tl:.3f}", f"{sl:.3f}", f"{tl / sl:.2f}",
            )  # fmt: skip
    console.print(table)
    env = report["environment"]
    console.print(f"{env['cpu']['model']}, {env['cpu']['usable_cores']} cores; runs in {root}")


if __name__ == "__main__":
    main()
