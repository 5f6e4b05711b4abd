"""Distillation across processes (torchrun, Gloo on the CPU), the training device, and AMP."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import edgekd

from edgekd.data import load_data
from edgekd.distill.train import distill
from edgekd.plan import resolve_plan
from edgekd.quant import fold_batchnorm, prepare_qat
from edgekd.ranks import Ranks, pick_device
from edgekd.recipe import load_recipe
from edgekd.targets import load_target
from edgekd.task import Classification

# The demo teacher, 2:4 + W4A8, trained 2 epochs at a fixed rate: the student moves every epoch.
RUN = [
    "compress", "--recipe", "default", "--set", "distill.epochs=2", "--set", "distill.lr=0.001",
    "--set", "plan.max_accuracy_drop=100", "--set", "bench.batches=[1]", "--set",
    "bench.min_runs=5", "--set", "bench.min_seconds=0.05", "--set", "bench.warmup=1",
]  # fmt: skip


def _distilled(run: Path) -> tuple[dict, dict]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    state = torch.load(run / "distill" / "student.pt", weights_only=True)["state_dict"]
    return stages["distill"]["metrics"], state


def test_two_gloo_processes_under_torchrun_train_the_student_one_process_trains(tmp_path):
    one = edgekd(*RUN, "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "edgekd", *RUN, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("▶ distill") == 1 and two.stdout.count("report: ") == 1  # rank 0's
    metrics_one, state_one = _distilled(tmp_path / "one")
    metrics_two, state_two = _distilled(tmp_path / "two")
    history_one, history_two = metrics_one["history"], metrics_two["history"]
    assert len(history_one) == len(history_two) == 3 and metrics_one["best_epoch"] > 0
    for a, b in zip(history_one[1:], history_two[1:], strict=True):
        # the same batches, in parts: only the order of float sums differs
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["val_kl"] == pytest.approx(a["val_kl"], rel=2e-2)
    assert metrics_two["best_epoch"] == metrics_one["best_epoch"]
    for name, tensor in state_one.items():
        torch.testing.assert_close(state_two[name], tensor, atol=2e-3, rtol=1e-2, msg=name)
    assert not list((tmp_path / "two").rglob("checkpoint.pt"))


def test_rank_parts_cover_a_batch_and_their_weighted_means_make_its_mean():
    batch = torch.arange(7)
    for world in (1, 2, 3):
        parts = [Ranks(rank, world).part(batch) for rank in range(world)]
        assert torch.equal(torch.cat(parts), batch)
        losses = [torch.rand(len(p)) for p in parts]  # per-example losses of each part
        weighted = [
            Ranks(rank, world).weight(len(part), len(batch)) * loss.mean()
            for rank, (part, loss) in enumerate(zip(parts, losses, strict=True))
        ]
        assert sum(weighted) / world == pytest.approx(torch.cat(losses).mean().item())


@pytest.mark.parametrize(
    ("setting", "message"),
    [("gpu", "use auto, cpu, cuda or cuda:N"), ("cuda:x", "use auto, cpu, cuda or cuda:N")],
)
def test_a_device_that_is_not_one_is_a_usage_error(setting, message):
    result = edgekd("compress", "--device", setting)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_it_is_a_one_line_error():
    result = edgekd("compress", "--device", "cuda")
    assert result.returncode == 2 and "torch sees no CUDA device" in result.stderr
    assert pick_device("auto", 0, 1) == torch.device("cpu")


def test_bf16_autocast_trains_the_student_in_bf16(tiny, example):
    """On the CPU as on a GPU: the losses are bf16's, not float32's, and stay finite."""
    plan = resolve_plan(load_recipe("default"), [load_target("x86-cpu")], tiny, example)
    data, task = load_data("digits"), Classification(("logits",), 10)
    histories = {}
    for amp in ("off", "bf16"):
        student = copy.deepcopy(tiny)
        fold_batchnorm(student, example)
        prepare_qat(student, plan)
        cfg = load_recipe("default").distill.model_copy(
            update={"epochs": 1, "lr": 1e-3, "amp": amp}
        )
        histories[amp] = distill(student, tiny, data, task, cfg, log=lambda _: None)["history"]
        assert next(student.parameters()).dtype == torch.float32  # the weights stay float32
    off, bf16 = histories["off"][1]["loss"], histories["bf16"][1]["loss"]
    assert torch.isfinite(torch.tensor(bf16)) and bf16 != off
    assert bf16 == pytest.approx(off, rel=0.05)
