"""Stage 6, report: ``report.json`` and ``report.md`` in the run directory."""

from __future__ import annotations

from ..atomic import write_json, write_text
from ..context import Context
from .assemble import assemble
from .markdown import render_markdown
from .summary import summary_rows

__all__ = ["run", "summary_rows"]


def run(ctx: Context) -> Context:
    report = assemble(ctx)
    write_json(ctx.out("report.json", stage_dir=False), report)
    write_text(ctx.out("report.md", stage_dir=False), render_markdown(report))
    ctx.metrics.update(report=str(ctx.run.path / "report.md"))
    return ctx
