from __future__ import annotations

import pytest

from edgekd.errors import UsageError
from edgekd.plan import Plan, resolve_plan, trace_layers
from edgekd.recipe import load_recipe
from edgekd.targets import load_target


def test_plan_marks_2of4_only_where_input_dim_is_multiple_of_4(tiny, example):
    plan = resolve_plan(load_recipe("default"), [load_target("x86-cpu")], tiny, example)
    assert plan.layer("features.0").sparsity is None  # 1 input channel
    assert "not a multiple of 4" in plan.layer("features.0").notes[0]
    assert plan.layer("features.3").sparsity == "2:4"
    assert plan.layer("head.1").sparsity == "2:4"


def test_output_layer_keeps_its_channels(tiny, example):
    assert trace_layers(tiny, example).outputs == {"head.3"}
    plan = resolve_plan(load_recipe("small"), [load_target("x86-cpu")], tiny, example)
    assert plan.layer("head.3").keep_ratio == 1.0
    assert plan.layer("head.1").keep_ratio == 0.5


def test_bits_a_target_cannot_load_become_nearest_legal_and_are_reported(tiny, example):
    recipe = load_recipe("default", ["quant.weight_bits=3"])
    targets = [load_target("x86-cpu-avx2"), load_target("jetson-orin")]
    plan = resolve_plan(recipe, targets, tiny, example)
    assert {lp.weight_bits for lp in plan.layers if lp.op == "Gemm"} == {4}
    # convs must be INT8 for TensorRT, then a 7-bit range for ONNX Runtime on an AVX2 CPU
    assert {lp.weight_bits for lp in plan.layers if lp.op == "Conv"} == {7}
    assert any("W3 -> W4" in a and "tensorrt (jetson-orin)" in a for a in plan.adjustments)


def test_two_bit_codes_run_from_int4_storage_on_x86(tiny, example):
    recipe = load_recipe("default", ["quant.weight_bits=2"])
    plan = resolve_plan(recipe, [load_target("x86-cpu-vnni")], tiny, example)
    assert {lp.weight_bits for lp in plan.layers} == {2} and not plan.adjustments
    fc = plan.layer("head.1")
    assert fc.runs_as["x86-cpu-vnni/openvino"].startswith("int4 (2-bit range) kernel")
    assert fc.kernels["x86-cpu-vnni/openvino"] == "int4"


def test_runs_as_tells_how_each_runtime_executes_a_layer(tiny, example):
    plan = resolve_plan(load_recipe("default"), [load_target("x86-cpu-vnni")], tiny, example)
    conv, fc = plan.layer("features.3"), plan.layer("head.1")
    ort, ov = "x86-cpu-vnni/onnxruntime", "x86-cpu-vnni/openvino"
    assert conv.runs_as[ort] == "int4 weights dequantized to float, 2:4 zeros run dense"
    assert conv.kernels[ort] == "float"
    # measured: OpenVINO runs int4 FullyConnected kernels, but small ones no faster than bf16/f32
    assert fc.runs_as[ov] == "int4 kernel, no faster than float, 2:4 zeros run dense"


def test_overrides_and_skip_apply_by_regex(tiny, example):
    recipe = load_recipe(
        "default",
        ["quant.overrides=[{match: 'head\\.3', weight_bits: 8}]", "prune.skip=['head.*']"],
    )
    plan = resolve_plan(recipe, [load_target("x86-cpu")], tiny, example)
    assert plan.layer("head.3").weight_bits == 8
    assert plan.layer("head.1").sparsity is None


def test_plan_round_trips_through_dict(tiny, example):
    plan = resolve_plan(load_recipe("default"), [load_target("x86-cpu")], tiny, example)
    assert Plan.from_dict(plan.to_dict()) == plan


def test_out_of_range_keep_ratio_is_an_error(tiny, example):
    with pytest.raises(UsageError, match="keep_ratio"):
        resolve_plan(
            load_recipe("default", ["prune.keep_ratio=0"]), [load_target("x86-cpu")], tiny, example
        )


def test_unknown_target_suggests_nearest():
    with pytest.raises(UsageError, match="did you mean 'x86-cpu'"):
        load_target("x86_cpu")


def test_symmetric_int8_weights_get_7bit_range_on_avx2_cpus_and_say_why(tiny, example):
    plan = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu-avx2")], tiny, example)
    assert {lp.weight_bits for lp in plan.layers} == {7}
    assert "VNNI" in plan.adjustments[0]
    conv = plan.layer("features.3").runs_as["x86-cpu-avx2/onnxruntime"]
    assert conv == "int8 (7-bit range) kernel, no faster than float"
    vnni = resolve_plan(load_recipe("w8a8"), [load_target("x86-cpu-vnni")], tiny, example)
    assert {lp.weight_bits for lp in vnni.layers} == {8} and not vnni.adjustments
    arm = resolve_plan(load_recipe("w8a8"), [load_target("arm-cpu")], tiny, example)
    assert {lp.weight_bits for lp in arm.layers} == {8} and not arm.adjustments


def test_tensorrt_targets_get_symmetric_int8_convs_and_int4_matmuls(tiny, example):
    plan = resolve_plan(load_recipe("default"), [load_target("jetson-orin")], tiny, example)
    conv, fc = plan.layer("features.3"), plan.layer("head.1")
    assert (conv.weight_bits, fc.weight_bits) == (8, 4)  # INT4 weight-only is for matrix multiplies
    assert all(lp.symmetric and lp.activation_symmetric for lp in plan.layers)
    assert any("W4 -> W8" in a and "Conv" in a for a in plan.adjustments)
    assert any("symmetric" in a and "zero points of 0" in a for a in plan.adjustments)
    assert conv.runs_as["jetson-orin/tensorrt"] == "int8 kernel, 2:4 sparse kernel"


def test_trace_finds_the_clamping_activation_and_the_sole_reader_after_each_layer():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = nn.functional.relu6(self.bn(self.a(x)))  # BatchNorm folds away: a is clamped
            y = self.b(x)
            x = torch.relu(y) + y  # b's output has a second, unclamped consumer
            x = self.c(x).clamp(-1.0, 1.0)
            return self.fc(x.mean((2, 3)))

    traced = trace_layers(Net().eval(), torch.randn(2, 3, 8, 8))
    assert traced.clamps == {"a": [0.0, 6.0], "c": [-1.0, 1.0]}
    assert traced.fed_by == {"b": "a"}  # c's input is an add; fc's is a mean
    assert traced.outputs == {"fc"}


def test_a_block_input_shared_with_a_residual_add_is_hooked_where_a_module_returns_it_once():
    import torch
    from torch import nn

    class Basic(nn.Module):  # torchvision's BasicBlock: one ReLU module, called twice
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.bn, self.relu = nn.BatchNorm2d(8), nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv2(self.relu(self.conv1(x)))) + x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.l1, self.l2 = nn.Conv2d(1, 8, 3, padding=1), Basic(), Basic()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.l2(self.l1(torch.relu(self.stem(x)))).mean((2, 3)))

    traced = trace_layers(Net().eval(), torch.randn(2, 1, 8, 8))
    assert traced.skip_from == {"l2.conv1": "l1"}  # not l1.relu, which also runs mid-block
