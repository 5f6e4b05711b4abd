"""Presets and the measured plan beside NNCF INT8 post-training quantization, per teacher.

For each teacher, every recipe runs ``edgekd compress`` on the same data; NNCF quantizes the same
teacher's ONNX on the same training split (what a user would otherwise do in seconds). Then every
model (teacher, each student, NNCF's) is opened in each runtime as deployed, scored against the
PyTorch teacher on the test split, and timed interleaved with the teacher in one measurement per
runtime and batch, so the ratios in a row share their conditions.

Run from the repository root::

    python benchmarks/plan_search.py                       # demo teacher, digits
    python benchmarks/plan_search.py --teachers lite0      # EfficientNet-Lite0 (see real_teachers)
    python benchmarks/plan_search.py --teachers lite0-imagenet  # on ImageNet's own images
    python benchmarks/plan_search.py --teachers minilm     # MiniLM-L6 on token ids
    python benchmarks/plan_search.py --teachers minilm-embedding  # its sentence embedding
    python benchmarks/plan_search.py --recipes auto --set distill.epochs=3 --teachers lite0
    python benchmarks/plan_search.py --teachers minilm --recipes w8a8 \
        benchmarks/recipes/w8a8-heads.yaml benchmarks/recipes/w8a8-heads-ffn.yaml  # heads pruned

NNCF is not a dependency of edgekd: ``pip install nncf`` for its rows (skipped with a note if absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.real_teachers

import edgekd
from edgekd.bench.timing import batch_of, measure_interleaved, paired_ratio
from edgekd.budget import wilson
from edgekd.data import load_data
from edgekd.data.inputs import feed_as
from edgekd.errors import EdgeKDError
from edgekd.evaluate import predict, torch_fn
from edgekd.models import load_teacher
from edgekd.pipeline import check_fit
from edgekd.recipe import load_recipe
from edgekd.runtimes import get_runtime

SENTENCES = "benchmarks.real_teachers:minilm_sentences"
TEACHERS = {  # name -> (teacher spec, data spec, recipe overrides)
    "demo": ("demo", "digits", []),
    "lite0": ("benchmarks.real_teachers:lite0", "benchmarks.real_teachers:photo_crops", []),
    "lite0-imagenet": (
        "benchmarks.real_teachers:lite0", "benchmarks.real_teachers:imagenet_crops", []
    ),
    "minilm": ("benchmarks.real_teachers:minilm", SENTENCES, []),
    "minilm-embedding": ("benchmarks.real_teachers:minilm_embedding", SENTENCES, ["task=outputs"]),
}  # fmt: skip
RUNTIMES = ("onnxruntime", "openvino")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["demo"], choices=list(TEACHERS))
    parser.add_argument("--recipes", nargs="+", default=["auto", "default", "w8a8", "small"])
    parser.add_argument("--set", action="append", default=[], help="recipe override, all runs")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per runtime and batch")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the runs here (and resume those found)"
    )
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="edgekd-plan-search-"))
    console = Console(width=None if sys.stdout.isatty() else 200)
    for name in args.teachers:
        try:
            console.print(_teacher_table(name, args, root / name))
        except EdgeKDError as exc:  # e.g. Lite0's packages not installed: say so in one line
            raise SystemExit(f"{name}: {exc.message} (see benchmarks/real_teachers.py)") from None
    console.print(f"{_machine()}; runs in {root}")


def _teacher_table(name: str, args: argparse.Namespace, root: Path) -> Table:
    teacher_spec, data_spec, overrides = TEACHERS[name]
    overrides = [*overrides, *args.set]
    data = load_data(data_spec)
    teacher = load_teacher(teacher_spec, None, False, lambda _m: None)
    task = check_fit(teacher, data, data_spec, load_recipe("auto", overrides).task)
    reference = predict(torch_fn(teacher), data.test.x)
    models, rows = {}, {}
    for recipe in args.recipes:
        began = time.perf_counter()
        label = Path(recipe).stem  # a preset, or a recipe file
        out = root / label
        try:
            edgekd.compress(out=out, teacher=teacher_spec, data=data_spec, recipe=recipe,
                            set=overrides, resume=(out / "manifest.json").is_file(),
                            log=lambda _m: None)  # fmt: skip
            status = "✓"
        except EdgeKDError as exc:  # a missed budget is a result too: its report is written
            status = f"✗ exit {exc.exit_code}"
        rows[label] = _run_facts(out, status, time.perf_counter() - began)
        if (out / "export" / "student.onnx").is_file():
            models[label] = out / "export" / "student.onnx"
    teacher_onnx = next(
        (root / Path(r).stem / "export" / "teacher.onnx" for r in args.recipes), None
    )
    if teacher_onnx is None or not teacher_onnx.is_file():
        raise SystemExit(f"{name}: no run exported its teacher; see the runs in {root}")
    nncf_onnx, nncf_note = _nncf_int8(teacher_onnx, data.train.x, root / "nncf")
    if nncf_onnx:
        models["NNCF INT8 PTQ"] = nncf_onnx
        rows["NNCF INT8 PTQ"] = {"status": nncf_note, "seconds": ""}
    measured = _measure(
        teacher_onnx, models, data.test.x, reference, task, args, root / "artifacts"
    )
    table = Table(
        "model", "status", "agreement (95% CI)", "size T/S", "runtime", "batch", "T/S (95% CI)",
        "predicted T/S", "stage seconds",
        title=f"{name}: {len(data.test.x)} test examples, agreement is {task.measure}",
    )  # fmt: skip
    for model, facts in rows.items():
        for runtime in RUNTIMES:
            for batch in args.batches:
                m = measured.get((model, runtime, batch))
                table.add_row(
                    model, facts["status"],
                    m["agreement"] if m else "-",
                    facts.get("size", measured.get((model, "size"), "-")),
                    runtime, str(batch),
                    m["ratio"] if m and "ratio" in m else "-",
                    facts.get("predicted", {}).get(f"{runtime} b{batch}", "-"),
                    facts["seconds"] if (runtime, batch) == (RUNTIMES[0], args.batches[0]) else "",
                )  # fmt: skip
    if nncf_onnx is None:
        table.caption = nncf_note
    return table


def _run_facts(run: Path, status: str, seconds: float) -> dict:
    """Size ratio, predicted layer speedups and stage times from a run's report and manifest."""
    facts: dict = {"status": status, "seconds": f"{seconds:.0f} s"}
    report_path = run / "report.json"
    if not report_path.is_file():
        return facts
    report = json.loads(report_path.read_text())
    facts["size"] = f"{report['student']['compression_ratio']:.2f}x"
    facts["predicted"] = {  # the plan's graph timed whole before training, else the layer sum
        p["where"].split("/")[-1]: f"{1 / whole:.2f}x"
        if (whole := p.get("whole_student_over_teacher"))
        else f"{1 / p['planned_over_float']:.2f}x (layer sum)"
        for p in report.get("latency_prediction", [])
        if p.get("whole_student_over_teacher") or p.get("planned_over_float")
    }
    manifest = json.loads((run / "manifest.json").read_text())
    slow = {
        k: v.get("seconds", 0) for k, v in manifest["stages"].items() if v.get("seconds", 0) >= 1
    }
    rounds = len(manifest.get("plan_rounds", [])) or 1
    facts["seconds"] = (
        f"{seconds:.0f} s ({rounds} round{'s' * (rounds > 1)}; "
        + ", ".join(f"{k} {v:.0f}" for k, v in slow.items())
        + ")"
    )
    return facts


def _nncf_int8(teacher_onnx: Path, train: np.ndarray, out: Path) -> tuple[Path | None, str]:
    """NNCF's default INT8 post-training quantization of the teacher, calibrated on the
    training split; (None, why) when NNCF is not installed."""
    try:
        import nncf
    except ImportError:
        return None, "NNCF INT8 PTQ: not run (pip install nncf)"
    model = onnx.load(teacher_onnx)
    first = model.graph.input[0].name
    dataset = nncf.Dataset(
        [train[i : i + 1] for i in range(len(train))], lambda x: feed_as(x, first)
    )
    began = time.perf_counter()
    quantized = nncf.quantize(model, dataset, subset_size=min(300, len(train)))
    seconds = time.perf_counter() - began
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, out / "student.onnx")
    return out / "student.onnx", f"✓ {seconds:.0f} s (nncf {nncf.__version__})"


def _measure(teacher_onnx, models, x, reference, task, args, tmp: Path) -> dict:
    """Per runtime: every model's agreement with the PyTorch teacher on ``x`` (``task``'s) and
    its latency over the teacher's at each batch (paired by round, with its 95% interval), all
    interleaved in one measurement."""
    results: dict = {}
    for name in RUNTIMES:
        runtime = get_runtime(name)
        if runtime.unavailable_reason():
            continue
        sessions = {}
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for i, (model, path) in enumerate({"teacher": teacher_onnx, **models}.items()):
            try:
                artifact = runtime.build(path, tmp / name / f"{i}{runtime.artifact_suffix}")
                sessions[model] = runtime.open(artifact, None, "deploy")
            except EdgeKDError as exc:  # e.g. a quantizer's graph this runtime rejects
                if model == "teacher":
                    raise
                for batch in args.batches:
                    results[(model, name, batch)] = {"agreement": f"cannot load: {exc.message}"}
        for model, session in sessions.items():
            same = task.agrees(predict(session.run, x, 32), reference)
            lo, hi = wilson(max(same, 0.0), len(x))
            agreement = f"{same:.1%} ({lo:.0%}-{hi:.0%})"
            for batch in args.batches:
                results[(model, name, batch)] = {"agreement": agreement}
        for batch in args.batches:
            inputs = batch_of(x, batch)
            stats = measure_interleaved(
                {model: s.bound(inputs) for model, s in sessions.items()},
                warmup=5, min_runs=30, min_seconds=args.seconds,
            )  # fmt: skip
            for model in sessions.keys() - {"teacher"}:
                r = paired_ratio(stats["teacher"], stats[model])
                results[(model, name, batch)]["ratio"] = (
                    f"{r.value:.2f}x ({r.low:.2f}-{r.high:.2f})"
                )
    for model, path in models.items():
        results[(model, "size")] = f"{teacher_onnx.stat().st_size / path.stat().st_size:.2f}x"
    return results


def _machine() -> str:
    from edgekd.cpu import detect_cpu

    cpu = detect_cpu()
    return f"{cpu.model}, {cpu.usable_cores} cores, {' '.join(sorted(cpu.features))}"


if __name__ == "__main__":
    main()
