from __future__ import annotations

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
    assert result.stdout.count("up to date, skipped") == 9


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


def test_resume_with_other_bench_batches_retimes_without_retraining(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before = _stages(run)
    result = edgekd("compress", "--out", str(run), "--resume", "--set", "bench.batches=[4]")
    assert result.returncode == 0, result.stderr
    after = _stages(run)
    for stage in ("sensitivity", "prune", "distill", "export", "verify"):
        assert after[stage] == before[stage], stage
    for stage in ("latency", "bench", "report", "gate"):
        assert after[stage]["started"] >= before["gate"]["finished"], stage


def test_cli_stage_commands_are_the_pipeline_stages():
    from edgekd.cli import STAGE_NAMES
    from edgekd.pipeline import READS, STAGES

    assert tuple(STAGES) == STAGE_NAMES == tuple(READS)
