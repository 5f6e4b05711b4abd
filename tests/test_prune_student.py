from __future__ import annotations

import copy

import pytest
import torch

from edgekd.errors import InputError
from edgekd.models import load_student, save_student
from edgekd.plan import resolve_plan
from edgekd.prune.sparsity import apply_2of4, is_2of4, reapply_masks
from edgekd.prune.structured import prune_channels
from edgekd.quant import QuantLayer, fold_batchnorm, prepare_qat
from edgekd.recipe import load_recipe
from edgekd.targets import load_target
from edgekd.task import Classification

DIGITS = Classification(("logits",), 10)


def _plan(model, example, preset="small"):
    return resolve_plan(load_recipe(preset), [load_target("x86-cpu")], model, example)


def test_channel_pruning_halves_hidden_channels_and_keeps_outputs(tiny, example):
    plan = _plan(tiny, example)
    student = copy.deepcopy(tiny)
    decisions = prune_channels(student, plan, example)
    assert student.features[0].out_channels == 4 and student.features[3].out_channels == 8
    assert student.head[3].out_features == 10
    assert decisions and all(d["idxs"] for d in decisions)
    assert student(example).shape == (2, 10)


def test_student_checkpoint_rebuilds_pruned_folded_quantized_model(tiny, example, tmp_path):
    plan = _plan(tiny, example)
    student = copy.deepcopy(tiny)
    decisions = prune_channels(student, plan, example)
    for name, m in student.named_modules():
        if (lp := plan.layer(name)) and lp.sparsity:
            apply_2of4(m)
    fold_batchnorm(student, example)
    prepare_qat(student, plan)
    student.train()(torch.rand(8, 1, 8, 8))  # activation observers see data
    student.eval()
    path = save_student(student, tmp_path / "s.pt", decisions, folded=True, quantized=True)
    rebuilt, ckpt = load_student(tiny, path, plan, example)  # weights_only=True inside
    assert ckpt["pruning"] == decisions
    assert isinstance(rebuilt.head[1], QuantLayer) and is_2of4(rebuilt.head[1].weight)
    torch.testing.assert_close(rebuilt(example), student(example))


def test_masks_are_reapplied_after_weights_move(tiny):
    layer = tiny.head[1]
    apply_2of4(layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert not is_2of4(layer.weight)
    reapply_masks(tiny)
    assert is_2of4(layer.weight)


def test_corrupt_student_checkpoint_is_a_clear_error(tiny, example, tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="student checkpoint .* corrupt"):
        load_student(tiny, bad, _plan(tiny, example), example)


def test_nan_loss_stops_distillation_with_a_named_error(tiny, example):
    from edgekd.data import load_data
    from edgekd.distill.train import distill
    from edgekd.errors import StageError

    student = copy.deepcopy(tiny)
    fold_batchnorm(student, example)
    prepare_qat(student, _plan(tiny, example, "default"))
    with torch.no_grad():
        student.head[1].weight[0, 0] = float("nan")  # e.g. a diverged or corrupted weight
    with pytest.raises(StageError, match=r"distillation loss is nan .*step 0; lower distill.lr"):
        distill(
            student,
            tiny,
            load_data("digits"),
            DIGITS,
            load_recipe("default").distill,
            log=lambda _: None,
        )


def test_an_auto_learning_rate_is_the_probed_rate_that_stays_closest_to_the_teacher(tiny, example):
    from edgekd.data import load_data
    from edgekd.distill.train import PROBE_LRS, distill

    student = copy.deepcopy(tiny)
    fold_batchnorm(student, example)
    torch.manual_seed(0)
    with torch.no_grad():  # far from its teacher, so that some rate brings it closer
        for weight in student.parameters():
            weight.add_(0.5 * weight.std() * torch.randn_like(weight))
    prepare_qat(student, _plan(tiny, example, "default"))
    lines: list[str] = []
    cfg = load_recipe("default", ["distill.epochs=2", "distill.lr=auto"]).distill
    result = distill(student, tiny, load_data("digits"), DIGITS, cfg, log=lines.append)
    probe = {float(rate): kl for rate, kl in result["lr_probe"].items()}
    assert set(probe) == set(PROBE_LRS)
    assert result["lr"] == min(probe, key=probe.get)
    assert any(line.startswith("  learning rate:") for line in lines)
    assert 1 <= result["epochs_run"] <= 2 and result["history"][0]["epoch"] == 0


def test_a_student_no_rate_brings_closer_to_the_teacher_is_kept_untrained(tiny, example):
    from edgekd.data import load_data
    from edgekd.distill.train import distill

    student = copy.deepcopy(tiny)  # the teacher itself: KL 0, every step can only move away
    lines: list[str] = []
    cfg = load_recipe("default", ["distill.epochs=3", "distill.lr=auto"]).distill
    result = distill(student, tiny, load_data("digits"), DIGITS, cfg, log=lines.append)
    assert result["epochs_run"] == 0 and result["best_epoch"] == 0
    assert all(kl >= result["history"][0]["val_kl"] for kl in result["lr_probe"].values())
    assert any("kept untrained" in line for line in lines)
    for got, want in zip(student.parameters(), tiny.parameters(), strict=True):
        assert torch.equal(got, want)


def test_the_student_trains_deterministically_with_its_ranges_as_calibrated(
    tiny, example, monkeypatch
):
    """Training mode would add dropout, stochastic depth and observers that follow each batch:
    noise that moved EfficientNet-Lite0 away from its teacher at every probed rate."""
    from edgekd.data import load_data
    from edgekd.distill import train
    from edgekd.quant import ActQuant

    student = copy.deepcopy(tiny)
    fold_batchnorm(student, example)
    torch.manual_seed(0)
    with torch.no_grad():  # far from its teacher, so that it trains
        for weight in student.parameters():
            weight.add_(0.5 * weight.std() * torch.randn_like(weight))
    prepare_qat(student, _plan(tiny, example, "default"))
    modes: set[tuple[str, bool]] = set()
    for module in student.modules():
        module.register_forward_pre_hook(lambda m, _: modes.add((type(m).__name__, m.training)))
    calibrated: dict[str, tuple[float, float]] = {}
    calibrate = train.calibrate

    def calibrate_and_keep(model, x, batch_size):
        calibrate(model, x, batch_size)
        for name, m in model.named_modules():
            if isinstance(m, ActQuant):
                calibrated[name] = (float(m.lo), float(m.hi))

    monkeypatch.setattr(train, "calibrate", calibrate_and_keep)
    cfg = load_recipe("default", ["distill.epochs=2", "distill.lr=1e-3"]).distill
    result = train.distill(student, tiny, load_data("digits"), DIGITS, cfg, log=lambda _: None)
    assert result["best_epoch"] >= 1  # the kept weights were trained
    assert {name for name, training in modes if training} <= {"ActQuant"}  # calibration only
    ranges = {n: (float(m.lo), float(m.hi)) for n, m in student.named_modules()
              if isinstance(m, ActQuant)}  # fmt: skip
    assert calibrated and ranges == calibrated


def test_epochs_rank_by_accuracy_on_labelled_data_and_by_kl_to_the_teacher_without_labels():
    """On 40 unlabelled val crops one flip is 2.5 points; the KL fell by a third (Lite0)."""
    from edgekd.distill.train import epoch_rank

    untrained, trained = (1.0, -0.0081), (0.975, -0.0052)
    assert epoch_rank(trained, labelled=False) > epoch_rank(untrained, labelled=False)
    assert epoch_rank(trained, labelled=True) < epoch_rank(untrained, labelled=True)
    assert epoch_rank((0.9, -0.1), labelled=True) < epoch_rank((0.9, -0.01), labelled=True)


def test_distillation_runs_on_the_threads_the_recipe_sets_and_restores_them(tiny, example):
    from edgekd.data import load_data
    from edgekd.distill.train import distill, torch_threads

    seen: set[int] = set()
    student = copy.deepcopy(tiny)
    student.register_forward_hook(lambda *_: seen.add(torch.get_num_threads()))
    cfg = load_recipe(
        "default", ["distill.epochs=1", "distill.lr=0.001", "distill.threads=1"]
    ).distill
    before = torch.get_num_threads()
    with torch_threads(cfg.threads):
        distill(student, tiny, load_data("digits"), DIGITS, cfg, log=lambda _: None)
    assert seen == {1} and torch.get_num_threads() == before


def test_distillation_killed_after_an_epoch_resumes_there_and_ends_as_if_never_stopped(
    tiny, example, tmp_path, monkeypatch
):
    from edgekd.data import load_data
    from edgekd.distill import train
    from edgekd.distill.checkpoint import EpochCheckpoint

    data = load_data("digits")
    cfg = load_recipe(
        "default", ["distill.epochs=4", "distill.lr=auto", "distill.patience=4"]
    ).distill

    def student():
        s = prepare_qat(
            fold_batchnorm(copy.deepcopy(tiny), example), _plan(tiny, example, "default")
        )
        with torch.no_grad():  # far from the teacher, so every epoch moves it
            torch.manual_seed(1)
            for w in s.parameters():
                w.add_(0.3 * w.std() * torch.randn_like(w))
        return s

    whole = student()
    train.distill(whole, tiny, data, DIGITS, cfg, log=lambda _: None)

    checkpoint = EpochCheckpoint(tmp_path / "checkpoint.pt", key="inputs")
    killed, real_rank, calls = student(), train.epoch_rank, []

    def rank_then_die(score, labelled):
        calls.append(1)
        if len(calls) == 5:  # twice per epoch: epoch 3 is being ranked, not yet saved
            raise KeyboardInterrupt
        return real_rank(score, labelled)

    monkeypatch.setattr(train, "epoch_rank", rank_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.distill(killed, tiny, data, DIGITS, cfg, log=lambda _: None, checkpoint=checkpoint)
    monkeypatch.setattr(train, "epoch_rank", real_rank)
    saved = checkpoint.load()
    assert saved is not None and saved["history"][-1]["epoch"] == 2
    lines: list[str] = []
    resumed = student()
    result = train.distill(
        resumed, tiny, data, DIGITS, cfg, log=lines.append, checkpoint=checkpoint
    )
    assert any(line.startswith("  resumed after epoch") for line in lines)
    assert result["epochs_run"] == 4
    for got, want in zip(resumed.state_dict().values(), whole.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert EpochCheckpoint(tmp_path / "checkpoint.pt", key="other").load() is None
