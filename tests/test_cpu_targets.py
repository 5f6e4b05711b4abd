"""CPU detection and CPU-dependent targets: facts follow the ISA, not one development box."""

from __future__ import annotations

import platform

import pytest

from edgekd.cpu import CpuInfo, detect_cpu, features_from_flags, parse_cpuinfo
from edgekd.errors import InputError
from edgekd.plan import resolve_plan
from edgekd.recipe import load_recipe
from edgekd.targets import load_target

# Flag lines as /proc/cpuinfo prints them (abridged) on the CPUs edgekd has met.
AVX2_EPYC = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
ZEN4_EPYC = (
    "model name\t: AMD EPYC 9B14\nflags\t\t: avx fma avx2 avx512f avx512bw avx512vl "
    "avx512_vnni avx512_bf16 avx_vnni\n"
)
SAPPHIRE_RAPIDS = (
    "model name\t: Intel Xeon Platinum 8480+\nflags\t\t: avx fma avx2 avx512f avx512bw avx512vl "
    "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
)
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm bf16 sve\n"


def cpu(text: str, arch: str = "x86_64") -> CpuInfo:
    model, flags = parse_cpuinfo(text, arch)
    return CpuInfo(model or arch, arch, features_from_flags(flags, arch), flags, 2, 2)


@pytest.mark.parametrize(
    ("text", "arch", "features"),
    [
        (AVX2_EPYC, "x86_64", {"avx2"}),
        (ZEN4_EPYC, "x86_64", {"avx2", "avx512", "vnni", "bf16"}),
        (SAPPHIRE_RAPIDS, "x86_64", {"avx2", "avx512", "vnni", "bf16", "amx"}),
        (GRAVITON3, "aarch64", {"neon", "dotprod", "i8mm", "bf16", "sve"}),
    ],
)
def test_cpuinfo_flags_become_isa_features(text, arch, features):
    assert cpu(text, arch).features == features


def test_this_machine_is_probed_with_model_cores_and_isa():
    info = detect_cpu().to_dict()
    assert info["arch"] == platform.machine() and info["usable_cores"] >= 1
    assert set(info["isa"]) <= {
        "avx2",
        "avx512",
        "vnni",
        "bf16",
        "amx",
        "neon",
        "dotprod",
        "i8mm",
        "sve",
    }


def test_x86_cpu_takes_its_facts_from_the_cpu_it_is_given():
    avx2 = load_target("x86-cpu", cpu=cpu(AVX2_EPYC))
    zen4 = load_target("x86-cpu", cpu=cpu(ZEN4_EPYC))
    (ort_avx2, ov_avx2), (ort_zen4, ov_zen4) = avx2.runtimes, zen4.runtimes
    assert (ort_avx2.int8_weight_bits, ort_zen4.int8_weight_bits) == (7, 8)
    assert (ort_avx2.faster_than_float["Conv"], ort_zen4.faster_than_float["Conv"]) == ((), (8,))
    assert (ov_avx2.inference_precision, ov_zen4.inference_precision) == ("f32", "bf16")
    assert avx2.describe_cpu() == "avx2 (detected)"


def test_named_cpu_variants_share_the_x86_facts_for_their_own_features():
    avx2, vnni, amx = (load_target(f"x86-cpu-{v}") for v in ("avx2", "vnni", "amx"))
    assert avx2.cpu == ("avx2",) and not avx2.cpu_detected
    assert avx2.runtimes[0].int8_weight_bits == 7 and vnni.runtimes[0].int8_weight_bits == 8
    assert amx.runtimes[1].inference_precision == "bf16"
    assert vnni.runtimes[1].inference_precision == "f32"


def test_plan_narrows_int8_weights_to_7_bits_only_without_vnni(tiny, example):
    recipe = load_recipe("w8a8")
    avx2 = resolve_plan(recipe, [load_target("x86-cpu", cpu=cpu(AVX2_EPYC))], tiny, example)
    zen4 = resolve_plan(recipe, [load_target("x86-cpu", cpu=cpu(ZEN4_EPYC))], tiny, example)
    assert {lp.weight_bits for lp in avx2.layers} == {7}
    assert "without VNNI" in avx2.adjustments[0]
    assert {lp.weight_bits for lp in zen4.layers} == {8} and not zen4.adjustments
    conv = "x86-cpu/onnxruntime"
    assert (
        avx2.layer("features.3").runs_as[conv] == "int8 (7-bit range) kernel, no faster than float"
    )
    assert zen4.layer("features.3").runs_as[conv] == "int8 kernel"
    assert avx2.target_facts["x86-cpu"]["cpu"] == "avx2 (detected)"
    assert zen4.target_facts["x86-cpu"]["inference_precision"]["openvino"] == "bf16"


def test_a_cpu_stands_in_for_a_named_variant_only_if_the_facts_match():
    avx2 = load_target("x86-cpu-avx2")
    assert avx2.unavailable_reason(host=cpu(AVX2_EPYC)) is None
    reason = avx2.unavailable_reason(host=cpu(ZEN4_EPYC))
    assert "is not a x86-cpu-avx2 CPU" in reason and "int8_weight_bits" in reason
    assert "lacks amx" in load_target("x86-cpu-amx").unavailable_reason(host=cpu(ZEN4_EPYC))
    assert load_target("x86-cpu").unavailable_reason(host=cpu(AVX2_EPYC)) is None
    arm = load_target("x86-cpu-avx2").unavailable_reason(host=cpu(GRAVITON3, "aarch64"))
    assert "this machine is aarch64" in arm


def test_unknown_cpu_feature_in_a_target_file_names_the_nearest(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: x86-cpu\nname: mine\ncpu: [avx2, vnnni]\n")
    with pytest.raises(InputError, match="unknown CPU feature 'vnnni'.*did you mean 'vnni'"):
        load_target(str(path))


def test_unknown_runtime_key_in_a_target_file_is_an_error(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\narch: [x86_64]\nruntimes:\n  onnxruntime:\n    weight_bits: [8]\n"
        "    fast_weight_bits: {Conv: [8]}\n"
    )
    with pytest.raises(InputError, match="unknown key 'runtimes.onnxruntime.fast_weight_bits'"):
        load_target(str(path))


def test_agreement_lost_to_a_runtimes_default_precision_is_reported_with_its_figure():
    from edgekd.report.assemble import deployed_below_gate
    from edgekd.report.markdown import _precision
    from edgekd.task import Classification

    row = {"target": "x86-cpu", "runtime": "openvino", "model": "student", "batch": 1,
           "inference_precision": "bf16", "deployed_agreement": 0.9851}  # fmt: skip
    rows = [row, {**row, "batch": 32}, {**row, "model": "teacher", "deployed_agreement": 1.0}]
    below = deployed_below_gate(rows, 0.99)
    assert below == [
        {"target": "x86-cpu", "runtime": "openvino", "model": "student",
         "inference_precision": "bf16", "agreement": 0.9851, "gate": 0.99}
    ]  # fmt: skip
    task = Classification(("logits",), 10).to_dict()
    text = "\n".join(_precision({"results": rows, "deployed_below_gate": below, "task": task}))
    assert "98.51% top-1 agreement in bf16, below the 99% gate" in text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("cpu: avx2\n", "cpu must be 'detect' or a list"),
        ("runtimes:\n  onnxruntime:\n    weight_bits: [8]\n    int8_weight_bits: {vnni: 8}\n",
         "needs a 'default'"),
    ],
)  # fmt: skip
def test_malformed_cpu_facts_in_a_target_file_are_errors(tmp_path, text, error):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: x86-cpu\nname: mine\n" + text)
    with pytest.raises(InputError, match=error):
        load_target(str(path))


def test_int8_conv_weights_with_float_activations_are_planned_as_float(tiny, example):
    recipe = load_recipe("w8a8", ["quant.activation_bits=32"])
    plan = resolve_plan(recipe, [load_target("x86-cpu-vnni")], tiny, example)
    conv, fc = plan.layer("features.3"), plan.layer("head.1")
    assert conv.kernels["x86-cpu-vnni/openvino"] == "float"
    assert conv.runs_as["x86-cpu-vnni/onnxruntime"] == "int8 weights dequantized to float"
    assert fc.kernels["x86-cpu-vnni/openvino"] == "int8"  # weight-only FullyConnected


def test_onnxruntime_matmul_kernels_are_planned_only_behind_float_inputs():
    import torch
    from torch import nn

    tokens = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    example = torch.rand(2, 5, 32)
    target = [load_target("x86-cpu-vnni")]
    a8 = resolve_plan(load_recipe("default", ["prune.sparsity=none"]), target, tokens, example)
    a32 = resolve_plan(
        load_recipe("default", ["prune.sparsity=none", "quant.activation_bits=32"]),
        target, tokens, example,
    )  # fmt: skip
    ort, ov = "x86-cpu-vnni/onnxruntime", "x86-cpu-vnni/openvino"
    assert a8.layer("0").op == "MatMul"
    assert (a8.layer("0").kernels[ort], a32.layer("0").kernels[ort]) == ("float", "int4")
    assert a8.layer("0").kernels[ov] == a32.layer("0").kernels[ov] == "int4"
