"""`edgekd compress` on the demo through the real CLI: every promise of the run, checked on disk."""

from __future__ import annotations

import json

from edgekd.cpu import detect_cpu
from edgekd.plan import part_labels

STAGES = [
    "sensitivity",
    "latency",
    "prune",
    "distill",
    "export",
    "verify",
    "bench",
    "report",
    "gate",
]
RESULT_KEYS = {
    "model", "runtime", "target", "precision", "batch", "latency_ms", "throughput_ips",
    "size_bytes", "accuracy", "agreement", "status", "reason",
}  # fmt: skip


def _report(run):
    return json.loads((run / "report.json").read_text())


def test_every_stage_is_done_in_the_manifest(demo_run):
    run, _ = demo_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s for s in STAGES if manifest["stages"][s]["status"] == "done"] == STAGES
    for stage in STAGES:
        rec = manifest["stages"][stage]
        assert rec["outputs"] and rec["inputs"]["config"] == manifest["fingerprints"][stage]
        assert rec["versions"]["torch"] and rec["seconds"] >= 0
    assert not (run / "distill" / "checkpoint.pt").exists()  # the epoch checkpoint goes when done


def test_student_is_within_two_points_of_teacher(demo_run):
    report = _report(demo_run[0])
    assert report["teacher"]["accuracy"] >= 0.97
    assert report["student"]["accuracy"] >= report["teacher"]["accuracy"] - 0.02


def test_onnxruntime_and_openvino_agree_with_pytorch_student(demo_run):
    rows = {(r["model"], r["runtime"]): r for r in _report(demo_run[0])["verify"]}
    for runtime in ("onnxruntime", "openvino"):
        assert rows[("student", runtime)]["top1_agreement"] >= 0.99
        assert rows[("teacher", runtime)]["max_abs_error"] < 1e-3


def test_report_files_exist_with_required_fields(demo_run):
    run, _ = demo_run
    assert (run / "report.md").read_text().startswith("# edgekd report")
    report = _report(run)
    for who in ("teacher", "student"):
        assert {"params", "accuracy", "size_bytes"} <= report[who].keys()
    assert report["student"]["size_bytes"] * 4 < report["teacher"]["size_bytes"]
    assert {"cpu", "cores", "os", "libraries"} <= report["environment"].keys()
    assert report["environment"]["cpu"]["logical_cores"] >= 1
    results = report["results"]
    assert all(r.keys() >= RESULT_KEYS for r in results)
    ok = [r for r in results if r["status"] == "ok"]
    assert {(r["runtime"], r["batch"], r["model"]) for r in ok} == {
        (rt, b, m)
        for rt in ("onnxruntime", "openvino")
        for b in (1, 32)
        for m in ("teacher", "student")
    }
    # the search may keep a student that is only pruned: then it is fp32 too
    quantized = any(lp["weight_bits"] for lp in report["plan"]["layers"])
    for r in ok:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] and r["throughput_ips"] > 0
        assert lat["p99"] is None if r["runs"] < 200 else lat["p90"] <= lat["p99"]
        float_model = r["model"] == "teacher" or not quantized
        assert r["agreement"] >= 0.99 and (r["precision"] == "fp32") == float_model


def test_each_speedup_has_a_95_percent_interval_from_paired_rounds(demo_run):
    report = _report(demo_run[0])
    students = [r for r in report["results"] if r["model"] == "student" and r["status"] == "ok"]
    for r in students:
        speedup = r["speedup"]
        low, high = speedup["interval"]
        assert low <= speedup["ratio"] <= high and speedup["rounds"] >= 20
        assert speedup["steady"] == (not low < 1 < high or high <= low * 1.10)
    for s in report["speedups"]:
        assert s["speedup_interval"] is not None
    assert set(report["environment"]["load_average"]) == {"before", "after"}
    assert "95% bootstrap interval" in (demo_run[0] / "report.md").read_text()


def test_cli_prints_summary_table_and_report_path(demo_run):
    run, result = demo_run
    assert "teacher vs student" in result.stdout
    assert "latency p50 onnxruntime b1" in result.stdout and "x smaller" in result.stdout
    assert f"report: {run / 'report.md'}" in result.stdout


def test_report_shows_what_each_runtime_really_executed(demo_run):
    report = _report(demo_run[0])
    ran = {(e["runtime"], e["model"]): e["kernels"] for e in report["executed"]}
    # the plan's int8 convs ran as integer kernels: ORT's QLinearConv, OpenVINO's u8 Convolution
    int8 = {(lp["op"], k.split("/")[1]) for lp in report["plan"]["layers"]
            for k, kind in lp["kernels"].items() if kind == "int8"}  # fmt: skip
    # (on a CPU whose target facts make no int8 conv faster, the plan has none, and neither ran)
    ort_conv = any(k.endswith("QLinearConv") for k in ran[("onnxruntime", "student")])
    assert ort_conv == (("Conv", "onnxruntime") in int8)
    ov_conv = any(k.startswith("Convolution:u8") for k in ran[("openvino", "student")])
    assert ov_conv == (("Conv", "openvino") in int8)
    assert not any(":u8" in k or ":i8" in k for k in ran[("openvino", "teacher")])
    assert not any(k.endswith("QLinearConv") for k in ran[("onnxruntime", "teacher")])
    assert "What each runtime really executed" in (demo_run[0] / "report.md").read_text()


def test_report_names_the_cpu_isa_and_the_precision_each_runtime_computes_in(demo_run):
    run, result = demo_run
    report = _report(run)
    assert report["environment"]["cpu"]["isa"] == detect_cpu().to_dict()["isa"]
    precision = report["inference_precision"]
    assert precision["x86-cpu/onnxruntime"]["teacher"] == "f32"
    # what OpenVINO chose on this CPU, read back from it: f32, or bf16/f16 where the CPU has them
    assert precision["x86-cpu/openvino"]["teacher"] in ("f32", "bf16", "f16")
    for r in report["results"]:
        assert r["inference_precision"] and 0.9 <= r["deployed_agreement"] <= 1.0
    assert all(v["inference_precision"] == "f32" for v in report["verify"] if v["status"] == "ok")
    md = (run / "report.md").read_text()
    assert "ISA: " in md and "Precision each runtime computes in" in md
    assert "computes in openvino" in result.stdout


def test_every_student_layer_ran_as_the_plan_said_on_this_cpu(demo_run):
    run, result = demo_run
    report = _report(run)
    checked = [r for r in report["layers_executed"] if r["executed"]]
    assert {r["runtime"] for r in checked} == {"onnxruntime", "openvino"}
    assert {r["layer"] for r in checked if r["runtime"] == "openvino"} == {
        lp["name"] for lp in report["plan"]["layers"]
    }
    assert [m for m in report["mismatches"] if m["what"] == "layer kernel"] == []
    # a runtime precision the target file did not foresee on some CPU is reported, not hidden
    assert ("as planned" in result.stdout) == (report["mismatches"] == [])


def test_each_planned_compression_is_measured_alone_before_training(demo_run):
    report = _report(demo_run[0])
    rows = report["sensitivity"]["layers"]
    measured = {(r["layer"], r["choice"]) for r in rows}
    measured |= {(r["layer"], r["choice"]) for r in report["sensitivity"]["unmeasured"]}
    wanted = {
        (lp["name"], part) for lp in report["plan"]["layers"]
        for c in lp["candidates"] for part in part_labels(c)
    }  # fmt: skip
    assert wanted == measured and len(wanted) > 10  # every part of every candidate
    assert all(r["kl"] >= 0 and 0 <= r["agreement"] <= 1 for r in rows)
    assert 16 <= report["sensitivity"]["examples"] <= 256  # fewer on slow machines


def test_the_demo_meets_the_auto_budget_no_slower_than_the_teacher_anywhere(demo_run):
    run, result = demo_run
    budget = _report(run)["budget"]
    assert budget["passed"] and budget["objective"] == "latency" and len(budget["latency"]) == 4
    assert budget["accuracy"]["drop_pts"] <= 1.0
    assert "budget" in result.stdout and "met" in result.stdout


def test_the_calibrated_student_before_training_is_a_candidate_distillation_must_beat(demo_run):
    distill = _report(demo_run[0])["student"]["distill"]
    before = distill["history"][0]
    assert before["epoch"] == 0 and before["loss"] is None and before["val_kl"] >= 0
    assert before["val_accuracy"] == distill["val_accuracy_before_training"]
    assert distill["best_val_accuracy"] >= distill["val_accuracy_before_training"]
    assert 0 <= distill["best_epoch"] <= distill["epochs_run"] <= distill["epochs"]
