"""A run for two targets: what runs here is measured, what cannot is skipped with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from conftest import decode_weight, edgekd, tiny_net

TESTS = Path(__file__).parent


def test_jetson_target_is_skipped_with_reason_while_x86_runs(tmp_path):
    out = tmp_path / "run"
    result = edgekd(
        "compress", "--teacher", "conftest:tiny_net", "--recipe", "default", "--out", str(out),
        "--target", "x86-cpu", "--target", "jetson-orin",
        "--set", "distill.epochs=2", "--set", "bench.min_runs=5", "--set", "bench.min_seconds=0.05",
        cwd=TESTS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    trt = [r for r in report["results"] if r["runtime"] == "tensorrt"]
    assert trt and all(
        r["status"] == "skipped" and "jetson-orin runs on aarch64" in r["reason"] for r in trt
    )
    assert all(r["status"] == "ok" for r in report["results"] if r["target"] == "x86-cpu")
    exports = {
        (a["runtime"], a["status"])
        for a in json.loads((out / "export" / "artifacts.json").read_text())
    }
    assert ("tensorrt", "skipped") in exports and ("openvino", "ok") in exports
    assert "[jetson-orin]" in result.stdout  # brackets in labels are not eaten as rich markup
    assert "skipped" in (out / "report.md").read_text()
    # verify compared in f32 on every CPU; bench ran each runtime in its own default precision
    cpu = [v for v in report["verify"] if v["status"] == "ok" and v["runtime"] != "tensorrt"]
    assert cpu and all(v["inference_precision"] == "f32" for v in cpu)
    assert report["inference_precision"]["x86-cpu/openvino"]["student"]
    # the fixed 'default' preset: layers reported 2:4 are 2:4 in the exported low-bit weights
    model = onnx.load(out / "export" / "student.onnx")
    assert report["student"]["sparse_2of4_layers"]
    for layer in report["student"]["sparse_2of4_layers"]:
        w = decode_weight(model, f"{layer}.weight")
        assert ((np.moveaxis(w, 1, -1).reshape(-1, 4) != 0).sum(axis=1) <= 2).all(), layer
        assert (w != 0).mean() > 0.4  # the other half is really there


def test_a_target_claiming_kernels_the_runtime_does_not_run_is_flagged(tmp_path):
    """The target file says ORT runs int4 Gemm kernels; ORT really runs DequantizeLinear + Gemm."""
    target = tmp_path / "claims.yaml"
    target.write_text(
        "name: claims\narch: [x86_64, AMD64]\nruntimes:\n  onnxruntime:\n"
        "    weight_bits: [4, 8]\n    lowbit_kernels: {Gemm: [4]}\n"
    )
    out = tmp_path / "run"
    result = edgekd(
        "compress", "--teacher", "conftest:tiny_net", "--recipe", "default", "--out", str(out),
        "--target", str(target),
        "--set", "distill.epochs=1", "--set", "bench.batches=[1]", "--set", "bench.min_runs=5",
        "--set", "bench.min_seconds=0.05",
        cwd=TESTS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    mismatches = json.loads((out / "report.json").read_text())["mismatches"]
    assert {m["layer"] for m in mismatches} == {"head.1", "head.3"}
    assert all(m["planned"] == "int4" and m["executed"] == "float" for m in mismatches)
    assert all(m["kernel"] == "DequantizeLinear + Gemm" for m in mismatches)
    assert "2 mismatches" in result.stdout
    assert "plan vs reality: head.1 planned int4, ran float" in result.stdout
    assert "| `head.1` | layer kernel | int4 | float |" in (out / "report.md").read_text()


def test_torch_export_archive_teacher_is_pruned_and_quantized(tmp_path):
    archive = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(
        torch.export.export(tiny_net(), (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)),
        archive,
    )
    out = tmp_path / "run"
    result = edgekd(
        "compress", "--teacher", str(archive), "--recipe", "small", "--out", str(out), "--quiet",
        "--set", "distill.epochs=2", "--set", "bench.batches=[1]", "--set", "bench.min_runs=5",
        "--set", "bench.min_seconds=0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["params"] < report["teacher"]["params"] / 2  # channels really pruned
    assert all(r["top1_agreement"] >= 0.99 for r in report["verify"] if r["status"] == "ok")
