from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.errors import StageError, UsageError
from edgekd.runtimes import RUNTIMES, get_runtime

# FP16 kernels are allowed in TensorRT engines; the CPU runtimes stay in fp32.
TOLERANCE = {"onnxruntime": 1e-4, "openvino": 1e-4, "tensorrt": 2e-2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A tiny CNN exported the way edgekd exports: dynamo, opset 21, symbolic batch.

    The example batch is 2 because the dynamo exporter fixes a batch of 1 as a constant.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    ).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 1, 8, 8),),
        str(path),
        dynamo=True,
        opset_version=21,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["x"],
    )
    return model, path


def _usable(name: str):
    runtime = get_runtime(name)
    reason = runtime.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return runtime


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_built_artifact_matches_torch_at_batch_1_and_32(name, exported, tmp_path):
    runtime = _usable(name)
    model, onnx_path = exported
    # A separate directory proves the artifact does not lean on the export's external data.
    artifact = runtime.build(onnx_path, tmp_path / "out" / f"model{runtime.artifact_suffix}")
    session = runtime.open(artifact, threads=1, precision="exact")
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8), dtype=np.float32)
        expected = model(torch.from_numpy(x)).detach().numpy()
        got = session.run(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=TOLERANCE[name], rtol=TOLERANCE[name])


@pytest.mark.parametrize(
    ("name", "read"),
    [("onnxruntime", lambda out: out[0].numpy()), ("openvino", lambda out: np.asarray(out[0]))],
)
def test_a_bound_call_computes_what_run_computes_each_time(name, read, exported, tmp_path):
    """What bench times: the input bound once, the outputs left in the runtime's own types."""
    runtime = _usable(name)
    _, onnx_path = exported
    session = runtime.open(runtime.build(onnx_path, tmp_path / f"m{runtime.artifact_suffix}"))
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8), dtype=np.float32)
    call = session.bound(x)
    for _ in range(2):
        np.testing.assert_array_equal(read(call()), session.run(x))


@pytest.mark.parametrize(
    ("name", "conv"), [("onnxruntime", "Conv"), ("openvino", "Convolution:f32")]
)
def test_session_reports_the_kernels_it_really_runs(name, conv, exported, tmp_path):
    runtime = _usable(name)
    artifact = runtime.build(exported[1], tmp_path / f"m{runtime.artifact_suffix}")
    kernels = runtime.open(artifact, precision="exact").executed()
    assert any(conv in kernel for kernel in kernels), kernels
    assert all(isinstance(n, int) and n > 0 for n in kernels.values())


def test_openvino_build_leaves_only_the_xml_bin_pair(exported, tmp_path):
    runtime = _usable("openvino")
    dest = tmp_path / "student.xml"
    runtime.build(exported[1], dest)
    runtime.build(exported[1], dest)  # rebuilding over an existing pair leaves no debris either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.bin", "student.xml"]


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_corrupt_onnx_gives_one_line_stage_error_naming_the_file(name, tmp_path):
    runtime = _usable(name)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(StageError, match=r"broken\.onnx") as build_error:
        runtime.build(bad, tmp_path / f"out{runtime.artifact_suffix}")
    with pytest.raises(StageError, match=r"broken\.onnx") as open_error:
        runtime.open(bad)
    for error in (build_error.value, open_error.value):
        assert "\n" not in error.message
    assert not (tmp_path / f"out{runtime.artifact_suffix}").exists()


def test_unavailable_tensorrt_refuses_with_its_reason(exported, tmp_path):
    runtime = get_runtime("tensorrt")
    reason = runtime.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is usable on this machine")
    assert "\n" not in reason
    with pytest.raises(StageError, match="tensorrt"):
        runtime.build(exported[1], tmp_path / "model.engine")
    assert runtime.describe()["unavailable"] == reason


def test_every_runtime_describes_itself():
    for name, runtime in RUNTIMES.items():
        assert runtime.describe()["runtime"] == name


def test_unknown_runtime_suggests_the_nearest_name():
    with pytest.raises(UsageError, match="did you mean 'onnxruntime'"):
        get_runtime("onnxrt")


def test_importing_runtimes_loads_no_runtime_library():
    code = (
        "import sys, edgekd.runtimes; "
        "print([m for m in ('onnxruntime', 'openvino', 'tensorrt') if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_exact_precision_sets_openvino_to_f32_without_dynamic_quantization(exported, tmp_path):
    """Verify opens sessions ``exact``: what it measures is the export, not bf16 rounding."""
    runtime = _usable("openvino")
    artifact = runtime.build(exported[1], tmp_path / "m.xml")
    exact = runtime.open(artifact, precision="exact")
    assert exact._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert int(exact._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
    assert exact.inference_precision() == "f32"


def test_deploy_precision_is_what_openvino_chooses_on_this_cpu(exported, tmp_path):
    """Bench opens sessions ``deploy`` and reports the precision the runtime really chose:
    reduced where the CPU plugin lists BF16/FP16 among this CPU's capabilities, else f32."""
    import openvino as ov

    runtime = _usable("openvino")
    deploy = runtime.open(runtime.build(exported[1], tmp_path / "m.xml"), precision="deploy")
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    reduced = {"BF16", "FP16"} & set(capabilities)
    assert deploy.inference_precision() in (("bf16", "f16") if reduced else ("f32",))
    assert runtime.describe()["capabilities"] == list(capabilities)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_float_layers_are_reported_as_float_kernels(name, exported, tmp_path):
    runtime = _usable(name)
    session = runtime.open(runtime.build(exported[1], tmp_path / f"m{runtime.artifact_suffix}"))
    kernels = session.layer_kernels(["0", "3"])  # Sequential's conv and linear
    # ORT repacks float conv weights for its NCHWc kernels under new names: that layer is unread
    assert kernels["3"]["kind"] == "float" and {k["kind"] for k in kernels.values()} == {"float"}
