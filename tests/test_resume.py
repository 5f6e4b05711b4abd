from __future__ import annotations

import copy
import json
import shutil

from conftest import edgekd


def _stages(run):
    return json.loads((run / "manifest.json").read_text())["stages"]


def test_resume_after_completed_run_reruns_nothing(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before = _stages(run)
    result = edgekd("compress", "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr
    assert _stages(run) == before
    assert result.stdout.count("up to date, skipped") == 10


def test_resume_after_deleting_export_reruns_export_and_later_only(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before = _stages(run)
    (run / "export" / "student.onnx").unlink()
    result = edgekd("compress", "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr
    after = _stages(run)
    for stage in ("prune", "distill"):
        assert after[stage] == before[stage]
    for stage in ("export", "verify", "bench", "report"):
        assert (
            after[stage]["status"] == "done"
            and after[stage]["started"] >= before[stage]["finished"]
        )
        assert after[stage] != before[stage]
    assert (run / "export" / "student.onnx").is_file()


def test_running_one_stage_marks_later_stages_stale(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    result = edgekd("verify", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    stages = _stages(run)
    assert stages["verify"]["status"] == "done"
    assert stages["bench"]["status"] == stages["report"]["status"] == "stale"


def test_existing_run_without_resume_is_refused(demo_run):
    result = edgekd("compress", "--out", str(demo_run[0]))
    assert result.returncode == 2 and "--resume" in result.stderr


def test_resume_with_a_bench_setting_reruns_only_bench_and_report_and_keeps_other_sets(
    demo_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before = _stages(run)
    result = edgekd(
        "compress", "--out", str(run), "--resume", "--set", "bench.min_runs=21", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    after = _stages(run)
    for stage in ("prune", "distill", "export", "verify"):
        assert after[stage] == before[stage]
    for stage in ("bench", "report"):
        assert after[stage]["started"] >= before["report"]["finished"]
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert "bench.min_runs=21" in config["set"] and "bench.min_seconds=0.2" in config["set"]
    assert "bench.min_runs=20" not in config["set"]


def test_resume_with_other_bench_batches_retimes_and_retrains_only_if_the_plan_changed(
    demo_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before, plan = _stages(run), (run / "plan" / "plan.json").read_bytes()
    result = edgekd("compress", "--out", str(run), "--resume", "--set", "bench.batches=[4]")
    assert result.returncode in (0, 5), result.stderr  # 5: the plan for batch 4 missed its budget
    after = _stages(run)
    assert after["sensitivity"] == before["sensitivity"]
    for stage in ("latency", "plan", "bench"):
        assert after[stage]["started"] >= before["gate"]["finished"], stage
    same_plan = (run / "plan" / "plan.json").read_bytes() == plan
    for stage in ("prune", "distill"):
        assert (after[stage] == before[stage]) == same_plan, stage


def test_cli_stage_commands_are_the_pipeline_stages():
    from edgekd.cli import STAGE_NAMES
    from edgekd.pipeline import READS, STAGES

    assert tuple(STAGES) == STAGE_NAMES == tuple(READS)


def test_a_teacher_with_the_same_weights_but_another_architecture_is_another_teacher():
    from torch import nn

    from edgekd.models import model_fingerprint

    a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    b = copy.deepcopy(a)
    b[0].padding = (0, 0)
    assert model_fingerprint(a) != model_fingerprint(b)


def test_adding_a_target_that_needs_symmetric_activations_changes_what_distill_reads(tiny, example):
    from edgekd.pipeline import READS
    from edgekd.plan import resolve_plan
    from edgekd.recipe import load_recipe
    from edgekd.targets import load_target

    recipe = load_recipe("w8a8")
    cpu = resolve_plan(recipe, [load_target("x86-cpu")], tiny, example)
    both = resolve_plan(recipe, [load_target("x86-cpu"), load_target("nvidia-gpu")], tiny, example)
    assert [lp.activation_symmetric for lp in cpu.layers] != [
        lp.activation_symmetric for lp in both.layers
    ]
    assert "plan" in READS["distill"]  # distill re-runs when plan.json's content changes


def test_a_kept_round_comes_back_whole_after_a_later_round_overwrote_it(tmp_path):
    from edgekd.rundir import RunDir

    run = RunDir.create(tmp_path / "run", {"teacher": "demo"}, resume=False)
    student = run.path / "distill" / "student.pt"
    student.parent.mkdir()
    student.write_bytes(b"round 1")
    run.start("distill", {"config": "a"})
    run.finish("distill", [student], {"round": 1}, 1.0, {})
    run.keep_round("0", ["plan", "distill"], {"plan_round": 0, "plan_budget_pts": None})
    first = copy.deepcopy(run.manifest["stages"])

    student.write_bytes(b"round 2, worse")
    run.start("distill", {"config": "b"})
    run.finish("distill", [student], {"round": 2}, 1.0, {})
    run.manifest.update(plan_round=1, plan_budget_pts=5.0)

    assert run.restore_round("0") == {"plan_round": 0, "plan_budget_pts": None}
    assert student.read_bytes() == b"round 1"
    reopened = RunDir.open(run.path).manifest
    assert reopened["stages"] == first and reopened["plan_round"] == 0
    assert run.is_current("distill", {"config": "a"})
