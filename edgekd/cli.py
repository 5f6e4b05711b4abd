"""The command line: parse, call, print. No logic lives here."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import EdgeKDError

# Pipes and CI logs get a fixed width, so the summary table is not folded at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
err = Console(stderr=True, highlight=False)

STAGE_NAMES = (
    "sensitivity", "latency", "plan", "prune", "distill", "export", "verify", "bench", "report",
    "gate",
)  # fmt: skip


def friendly_errors(fn: Callable) -> Callable:
    """One line and an exit code instead of a traceback, unless --debug."""

    @click.option("--debug", is_flag=True, help="Show full tracebacks.")
    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeKDError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]; finished stages are kept, resume with --resume")
            sys.exit(130)
        except Exception as exc:
            if debug:
                raise
            err.print(
                f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))} (re-run with --debug for details)",
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper


def _progress(quiet: bool) -> Callable:
    """A rich progress bar on a terminal; nothing in pipes, logs or --quiet."""
    from .context import no_progress  # the stages' context imports torch; doctor needs none

    if quiet or not out.is_terminal:
        return no_progress

    @contextmanager
    def bar(description: str, total: int):
        columns = (*Progress.get_default_columns(), _Rate())  # ..., the ETA, then examples/s
        with Progress(*columns, console=out, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task, n)

    return bar


class _Rate(ProgressColumn):
    """Examples per second, once rich has measured it."""

    def render(self, task: Task) -> Text:
        return Text(
            f"{task.speed:,.0f} examples/s" if task.speed else "", style="progress.data.speed"
        )


def _logger(quiet: bool) -> Callable[[str], None]:
    """Stage messages are plain text: they carry user paths and reasons that must print verbatim."""
    return (
        (lambda _msg: None) if quiet else (lambda msg: out.print(msg, soft_wrap=True, markup=False))
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
def main() -> None:
    """edgekd: prune, distill (QAT + KD), export, verify, benchmark and report, in one command."""


@main.command()
@click.option(
    "--teacher", help="demo (default), package.module:factory, or a torch.export .pt2 file."
)
@click.option(
    "--weights", type=click.Path(), help="State dict for a factory teacher (loaded weights_only)."
)
@click.option(
    "--data",
    help="digits (default), an image folder, an .npz with x (and y), or package.module:factory.",
)
@click.option(
    "--recipe",
    help="Preset name (auto: the measured plan, the default; default, w8a8, small: fixed plans) or a recipe YAML file.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. quant.weight_bits=3.",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Target device (repeatable); default x86-cpu. See 'edgekd targets'.",
)
@click.option(
    "--out", type=click.Path(), help="Run directory (default: edgekd-runs/<teacher>-<time>)."
)
@click.option("--resume", is_flag=True, help="Skip finished stages whose inputs are unchanged.")
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    default=None,
    help="Allow checkpoints that unpickle Python objects.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where distillation trains: auto (CUDA if torch sees it), cpu, cuda or cuda:N.",
)
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@friendly_errors
def compress(
    teacher,
    weights,
    data,
    recipe,
    overrides,
    targets,
    out: str | None,
    resume,
    trust_checkpoint,
    device,
    quiet,
) -> None:
    """Run every stage: measure, plan, prune, distill, export, verify, bench, report, gate."""
    from .pipeline import compress as run_pipeline

    run_dir = run_pipeline(
        out=out,
        resume=resume,
        log=_logger(quiet),
        progress=_progress(quiet),
        teacher=teacher,
        weights=weights,
        data=data,
        recipe=recipe,
        set=list(overrides),
        targets=list(targets),
        trust_checkpoint=trust_checkpoint,
        device=device,
    )
    if run_dir:  # None on torchrun's other ranks: rank 0 prints it
        print_summary(run_dir)


def _stage_command(name: str) -> None:
    @main.command(
        name=name, help=f"Re-run the {name} stage of RUN_DIR (later stages become stale)."
    )
    @click.argument("run_dir", type=click.Path())
    @click.option("--quiet", is_flag=True, help="Print nothing but errors.")
    @friendly_errors
    def command(run_dir: str, quiet: bool) -> None:
        from .pipeline import run_one

        run_one(run_dir, name, _logger(quiet), _progress(quiet))
        if name == "report":
            print_summary(Path(run_dir))


for _name in STAGE_NAMES:
    _stage_command(_name)


@main.command()
@friendly_errors
def targets() -> None:
    """List the built-in targets: what each runtime loads, runs as low-bit kernels, runs faster
    than float, and whether this machine can run it ("here?")."""
    from .targets import load_target, target_names

    rows, reasons = [], []
    for name in target_names():
        t = load_target(name)
        for rt in t.runtimes:
            reason = t.unavailable_reason(rt.name)
            if reason:
                reasons.append(f"{name}/{rt.name}: {reason}")
            rows.append(
                (
                    name,
                    t.describe_cpu() or "–",
                    rt.name,
                    "/".join(map(str, rt.weight_bits)),
                    _per_op(rt.lowbit_kernels),
                    _per_op(rt.faster_than_float),
                    rt.inference_precision,
                    "no" if reason else "yes",
                )
            )
    print_table(
        ["target", "CPU", "runtime", "loads bits", "low-bit kernels", "faster than float",
         "float in", "here?"],
        rows,
    )  # fmt: skip
    for line in ["Why not here:", *reasons] if reasons else []:
        out.print(line, markup=False, soft_wrap=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@friendly_errors
def doctor(as_json: bool) -> None:
    """What this machine has (CPU features, runtimes, GPU, Jetson release and power mode) and
    which targets it can stand in for."""
    from .doctor import diagnose

    facts = diagnose()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    cpu = facts["cpu"]
    for line in (
        f"CPU: {cpu['model']}, {cpu['arch']}, ISA {', '.join(cpu['isa']) or 'none detected'}, "
        f"{cpu['usable_cores']} usable of {cpu['logical_cores']} cores",
        f"OS: {facts['os']}; Python {facts['python']}",
        "libraries: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in facts["libraries"].items()),
        "GPU: " + (", ".join(f"{g['name']} (driver {g.get('driver_version')})" for g in facts["gpu"])
                   if facts["gpu"] else "none found (no nvidia-smi, or it failed)"),
        "Jetson: " + (f"{facts['jetson']['l4t']}; power mode: {facts['jetson']['power_mode']}"
                      if facts["jetson"] else "not a Jetson (no /etc/nv_tegra_release)"),
    ):  # fmt: skip
        out.print(line, markup=False, soft_wrap=True)
    print_table(
        ["runtime", "here?", "version", "device", "why not"],
        [(name, "yes" if r["available"] else "no", r.get("version", ""), r.get("device", ""),
          r.get("reason") or "") for name, r in facts["runtimes"].items()],
    )  # fmt: skip
    print_table(
        ["target", "here?", "why not"],
        [(name, "yes" if t["here"] else "no", t["reason"] or "")
         for name, t in facts["targets"].items()],
    )  # fmt: skip


def _per_op(bits: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{op}: {'/'.join(map(str, b))}" for op, b in bits.items() if b) or "none"


@main.group()
def recipe() -> None:
    """Recipes: presets and YAML files."""


@recipe.command("show")
@click.argument("preset", default="auto")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@friendly_errors
def recipe_show(preset: str, overrides) -> None:
    """Print the resolved YAML of a preset or recipe file."""
    from .recipe import load_recipe

    click.echo(load_recipe(preset, list(overrides)).to_yaml(), nl=False)


@main.command()
@click.argument("model_or_run")
@click.option("--data", help="Data giving the input shape, for a teacher spec (default digits).")
@click.option("--trust-checkpoint", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def inspect(model_or_run: str, data: str | None, trust_checkpoint: bool, as_json: bool) -> None:
    """Per layer: parameters, MACs, sparsity pattern, weight bits (a run's student, or a teacher)."""
    from .inspect import inspect_target

    rows = inspect_target(model_or_run, data, trust_checkpoint)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["layer", "type", "weight shape", "params", "MACs", "sparsity", "weight bits"]
    print_table(
        headers,
        [
            (r["layer"], r["type"], "x".join(map(str, r["weight_shape"])), f"{r['params']:,}",
             f"{r['macs']:,}", r["sparsity"], r["weight_bits"])
            for r in rows
        ],
    )  # fmt: skip


def print_summary(run_dir: Path) -> None:
    from .report import summary_rows

    report = json.loads((Path(run_dir) / "report.json").read_text(encoding="utf-8"))
    headers = ["", "teacher", "student", "student vs teacher"]
    print_table(headers, summary_rows(report), title="edgekd: teacher vs student")
    out.print(
        f"report: {run_dir / 'report.md'}  (JSON: {run_dir / 'report.json'})",
        markup=False,
        soft_wrap=True,
    )


def print_table(headers: list[str], rows, title: str | None = None) -> None:
    """Cells are data (layer names, reasons, target names): escaped, never read as rich markup."""
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out.print(table)
