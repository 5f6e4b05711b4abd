"""The pipeline: stages in order, each ``run(ctx) -> ctx``, resumable through the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from . import bench, distill, export, gate, latency, plan, prune, report, sensitivity, verify
from .atomic import write_text
from .context import Context, Progress, no_progress
from .cpu import detect_cpu
from .data import load_data
from .data.inputs import as_example, batch_size, call, unknown_arguments
from .environment import library_versions
from .errors import BudgetMiss, EdgeKDError, ShapeError, StageError
from .evaluate import max_batch
from .models import load_teacher, model_fingerprint
from .plan import rounds
from .ranks import Ranks, joined, serve
from .recipe import load_recipe
from .rundir import RunDir
from .targets import load_target
from .task import Classification, Task, TaskSetting, infer_task

STAGES: dict[str, Callable[[Context], Context]] = {
    "sensitivity": sensitivity.run,
    "latency": latency.run,
    "plan": plan.run,
    "prune": prune.run,
    "distill": distill.run,
    "export": export.run,
    "verify": verify.run,
    "bench": bench.run,
    "report": report.run,
    "gate": gate.run,
}
# The earlier stages whose outputs each stage reads: a stage re-runs when its own settings or
# one of these changed, and only then, so re-timing never re-trains.
# The plan is read through plan.json, so a stage re-runs when any choice it trains or exports
# changes (activation symmetry included), without a hand-kept list of the fields it uses.
READS: dict[str, tuple[str, ...]] = {
    "sensitivity": (),
    "latency": (),
    "plan": ("sensitivity", "latency"),
    "prune": ("plan",),
    "distill": ("plan", "prune"),
    "export": ("plan", "distill"),
    "verify": ("distill", "export"),
    "bench": ("plan", "export", "verify"),
    "report": ("sensitivity", "latency", "plan", "prune", "distill", "export", "verify", "bench"),
    "gate": ("plan", "sensitivity", "report"),
}

DEFAULTS: dict[str, Any] = {
    "teacher": "demo",
    "weights": None,
    "data": "digits",
    "recipe": "auto",
    "set": [],
    "targets": ["x86-cpu"],
    "trust_checkpoint": False,
}


def compress(
    *,
    out: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Progress = no_progress,
    device: str = "auto",
    **options: Any,
) -> Path | None:
    """Run every stage; with ``resume``, skip stages that are done and whose inputs are unchanged.

    ``options`` are the keys of ``DEFAULTS``; on resume, the ones not given come from the manifest.
    ``device``: where distillation trains (``ranks.pick_device``), not kept with the run. Under
    torchrun, rank 0 runs them and returns the run's path; the other ranks train with it
    in the distill stage (``ranks.py``) and return None.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    with joined(device) as ranks:
        if ranks.rank:
            serve(ranks)
            return None
        return _compress(out, resume, log, progress, ranks, options)


def _compress(
    out: str | Path | None,
    resume: bool,
    log: Callable[[str], None],
    progress: Progress,
    ranks: Ranks,
    options: dict[str, Any],
) -> Path:
    given = {k: v for k, v in options.items() if v not in (None, (), [])}
    out_dir = Path(out) if out else _default_out(given.get("teacher", DEFAULTS["teacher"]))
    previous = (
        RunDir.open(out_dir).config if resume and (out_dir / "manifest.json").is_file() else {}
    )
    config = {**DEFAULTS, **previous, **given}
    # --set on resume adds to the saved overrides; a key given again takes the new value
    merged = [*previous.get("set", []), *given.get("set", [])]
    config["set"] = list({item.partition("=")[0].strip(): item for item in merged}.values())
    config["targets"] = list(config["targets"])
    RunDir.check_usable(out_dir, resume)
    parts = _load(config, log)  # every input is checked before the run directory is touched
    run = RunDir.create(out_dir, config, resume)
    ctx = _context(run, parts, log, progress)
    ctx.ranks = ranks
    run.save()
    todo, trained = list(STAGES), False
    while todo:
        name = todo.pop(0)
        inputs = _inputs(ctx, name)
        if run.is_current(name, inputs):  # outputs are content hashes: same inputs, same work
            log(f"- {name}: up to date, skipped")
            continue
        trained |= name == "distill"  # a round is judged once, after the student it trained
        try:
            _run_stage(ctx, name, STAGES[name], inputs)
        except BudgetMiss as miss:
            if not (trained and rounds.next_round(ctx, _plan_fingerprint)):
                if rounds.restore_best(ctx, miss.message):
                    return run.path
                raise
            todo, trained = list(STAGES)[list(STAGES).index("plan") :], False
            continue
        except StageError as exc:  # a bolder round that cannot train or export faithfully
            if name in rounds.ROUND_STAGES and rounds.restore_best(ctx, exc.message):
                return run.path
            raise
        if name == "gate" and trained and rounds.next_round(ctx, _plan_fingerprint):
            todo, trained = list(STAGES)[list(STAGES).index("plan") :], False
    return run.path


def run_one(
    run_dir: str | Path,
    name: str,
    log: Callable[[str], None] = print,
    progress: Progress = no_progress,
) -> Path:
    """Re-run one stage of an existing run; the stages that read it, directly or through
    others, are marked stale in the manifest."""
    run = RunDir.open(Path(run_dir))
    ctx = _context(run, _load(run.config, log), log, progress)
    for before in READS[name]:
        if run.stage(before).get("status") != "done":
            raise StageError(
                f"stage '{name}' needs '{before}' done first; run 'edgekd {before} {run.path}'"
            )
    _run_stage(ctx, name, STAGES[name], _inputs(ctx, name))
    stale = {name}
    for later in STAGES:  # in order, so readers of readers are found too
        if stale & set(READS[later]):
            stale.add(later)
    run.mark_stale([s for s in STAGES if s in stale and s != name], name)
    return run.path


def _load(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Recipe, targets, teacher, data and the plan's candidates, each validated with a one-line
    error."""
    recipe = load_recipe(cfg["recipe"], cfg["set"])
    targets = [load_target(t) for t in cfg["targets"]]
    teacher = load_teacher(cfg["teacher"], cfg["weights"], cfg["trust_checkpoint"], log)
    data = load_data(cfg["data"], recipe.data.transform, teacher)  # its declared preprocessing
    task = check_fit(teacher, data, cfg["data"], recipe.task)
    data = dataclasses.replace(data, notes=(*data.notes, *_label_notes(task, data)))
    space = plan.resolve_plan(recipe, targets, teacher, as_example(data.train.x[:2]))
    return {
        "recipe": recipe, "targets": targets, "teacher": teacher, "data": data, "space": space,
        "task": task,
    }  # fmt: skip


def _label_notes(task: Task, data) -> list[str]:
    """What the labels will be taken for, where that is not the obvious."""
    if not data.labelled:
        return []
    if not isinstance(task, Classification):
        return ["the labels are not read: the outputs task matches the teacher's outputs"]
    classes, outputs = len(np.unique(data.train.y)), task.classes
    if classes < outputs:  # cats/dogs against ImageNet's 1000: labels 0 and 1 are its classes
        return [
            f"{classes} label values for a teacher of {outputs} outputs: label k is read as "
            "the teacher's class k (accuracy counts it so); relabel to the teacher's classes, "
            "or drop the labels to judge agreement with the teacher"
        ]
    return []


def _context(
    run: RunDir, parts: dict[str, Any], log: Callable[[str], None], progress: Progress
) -> Context:
    recipe, teacher, data, space = parts["recipe"], parts["teacher"], parts["data"], parts["space"]
    task = parts["task"]
    write_text(run.path / "recipe.yaml", recipe.to_yaml())
    for note in data.notes:
        log(f"data: {note}")
    for note in space.adjustments:
        log(f"plan: {note}")
    ctx = Context(
        run=run,
        log=log,
        progress=progress,
        round=run.manifest.get("plan_round", 0),
        budget_pts=run.manifest.get("plan_budget_pts"),
        **parts,
    )
    run.manifest["fingerprints"] = _fingerprints(
        recipe, parts["targets"], space, teacher, data, task
    )
    run.manifest["fingerprints"]["plan"] = _plan_fingerprint(ctx)
    return ctx


def check_fit(teacher: torch.nn.Module, data, spec: str, setting: TaskSetting = "auto") -> Task:
    """Fail early, by name, when the data cannot feed the teacher or its outputs cannot serve
    the task (``task.py``); the task."""
    if unknown := unknown_arguments(teacher, data.train.x):
        raise ShapeError(
            f"data '{spec}' names inputs the teacher's forward has no argument for: "
            f"{', '.join(unknown)}; name each array after the argument it feeds"
        )
    example = as_example(data.train.x[:2])
    try:
        with torch.no_grad():
            out = call(teacher.eval(), example)
    except Exception as exc:
        raise ShapeError(
            f"data '{spec}' (inputs of shape {data.input_shapes}) does not fit the teacher: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    task = infer_task(out, setting, batch_size(example))
    if isinstance(task, Classification) and data.labelled:
        low, high, classes = int(data.train.y.min()), int(data.train.y.max()), task.classes
        if low < 0:
            raise ShapeError(f"data '{spec}' has label {low}; labels must be 0 .. classes-1")
        if high >= classes:
            raise ShapeError(
                f"data '{spec}' has label {high} but the teacher has {classes} outputs"
            )
    return task


def _fingerprints(recipe, targets, space, teacher, data, task) -> dict[str, str]:
    """What each stage reads besides earlier stages' outputs (``READS``): changing bench
    settings re-runs bench and report, not distillation."""
    candidates = [{"name": lp.name, "candidates": lp.candidates} for lp in space.layers]
    models = {
        "teacher": model_fingerprint(teacher), "data": data.fingerprint(), "task": task.to_dict()
    }  # fmt: skip
    cpu = sorted(detect_cpu().features)  # it decides facts ("cpu: detect") and what runs here
    return {
        "sensitivity": _fingerprint(SENSITIVITY_FORMAT, models, candidates),
        # the layers are timed alone: not the bench's timing settings
        "latency": _fingerprint(
            latency.FORMAT,
            models,
            candidates,
            recipe.bench.batches,
            recipe.bench.threads,
            targets,
            cpu,
        ),
        "prune": _fingerprint(models),
        "distill": _fingerprint(QUANT_FORMAT, models, recipe.distill),
        "export": _fingerprint(
            EXPORT_FORMAT,
            sorted({rt.name for t in targets for rt in t.runtimes}),
            max_batch(recipe.bench.batches),
        ),
        "verify": _fingerprint(models, recipe.verify),
        "bench": _fingerprint(models, recipe.bench, targets, cpu),
        "report": _fingerprint(recipe.plan),
        "gate": _fingerprint(recipe.plan),
    }


def _plan_fingerprint(ctx: Context) -> str:
    """The candidates and runtimes the plan is resolved from, the budget, the round, and the
    quantization the candidate plans are built with to be timed whole."""
    return _fingerprint(
        ctx.space.to_dict(), ctx.recipe.plan, ctx.round, ctx.budget_pts, QUANT_FORMAT
    )


def _inputs(ctx: Context, name: str) -> dict[str, str]:
    """A stage depends on its own settings and on the outputs of the stages it reads."""
    inputs = {"config": ctx.run.manifest["fingerprints"][name]}
    for before in READS[name]:
        inputs[before] = hashlib.sha256(ctx.run.outputs_digest(before).encode()).hexdigest()
    return inputs


def _run_stage(
    ctx: Context, name: str, stage: Callable[[Context], Context], inputs: dict[str, str]
) -> None:
    ctx.stage, ctx.outputs, ctx.metrics = name, [], {}
    ctx.run.start(name, inputs)
    ctx.log(f"▶ {name}")
    began = time.perf_counter()
    try:
        stage(ctx)
    except EdgeKDError as exc:
        ctx.run.fail(name, exc.message)
        raise
    except Exception as exc:
        ctx.run.fail(name, f"{type(exc).__name__}: {exc}")
        raise StageError(
            f"stage '{name}' failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    seconds = time.perf_counter() - began
    ctx.run.finish(name, ctx.outputs, ctx.metrics, seconds, library_versions())
    ctx.log(f"✓ {name} ({seconds:.1f} s)")


# 2: weight clipping; 3: int8 outputs; 4: outputs within the activation; 5: uint8, chained;
# 6: shared quantizers calibrated; 7: weight scales floored; 8: biases corrected; 9: BatchNorm
# subclasses folded, BatchNorm over another axis left
QUANT_FORMAT = 9
# 2: the teacher's calibration logits saved beside the rows; 3: quantized weights bias corrected;
# 4: folding as QUANT_FORMAT 9, pruning that breaks the forward unmeasured
SENSITIVITY_FORMAT = 4
# 2: no merged initializers or subexpressions, Q/DQ at every call of a module, named inputs
EXPORT_FORMAT = 2


def _fingerprint(*parts: Any) -> str:
    """Stable hash of settings; recipe sections (pydantic models) and dataclasses (targets) hash
    by their fields, so a section hashes as it did when it was a dataclass."""
    plain = [_fields(p) for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def _fields(part: Any) -> Any:
    if isinstance(part, BaseModel):
        return part.model_dump(mode="json")
    return dataclasses.asdict(part) if dataclasses.is_dataclass(part) else part


def _default_out(teacher: str) -> Path:
    """edgekd-runs/<teacher>-<time>, e.g. ``mypkg.models:net`` -> ``mypkg.models-net-20260101-120000``."""
    name = (
        re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(teacher).name.removesuffix(".pt2")).strip("-.")
        or "run"
    )
    return Path("edgekd-runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
