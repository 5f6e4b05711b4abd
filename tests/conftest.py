"""Shared fixtures: a private model cache, a tiny CNN, and one real demo run reused by many tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

FAST_BENCH = [
    "--set",
    "bench.min_runs=20",
    "--set",
    "bench.min_seconds=0.2",
    "--set",
    "bench.warmup=3",
]


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Keep the demo teacher out of ~/.cache; it is trained once per test session (or reused)."""
    path = Path(os.environ.get("EDGEKD_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["EDGEKD_CACHE"] = str(path)
    return path


def edgekd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command line, in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "edgekd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny_net() -> nn.Module:
    """Factory spec target: ``conftest:tiny_net`` (tests dir is on sys.path under pytest)."""
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is really tested
        model(torch.rand(64, 1, 8, 8) * 3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def tiny() -> nn.Module:
    return tiny_net()


@pytest.fixture
def example() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 1, 8, 8)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`edgekd compress` on the embedded demo, through the CLI, once for the whole session."""
    out = tmp_path_factory.mktemp("runs") / "demo"
    result = edgekd("compress", "--out", str(out), *FAST_BENCH)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def decode_weight(model: onnx.ModelProto, tensor: str) -> np.ndarray:
    """Decode a DequantizeLinear's stored low-bit initializers with numpy, as a runtime would."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == tensor
    )
    attrs = {a.name: a.i for a in node.attribute}
    q = inits[node.input[0]].astype(np.int32)
    scale = inits[node.input[1]].astype(np.float32)
    zp = (
        inits[node.input[2]].astype(np.int32)
        if len(node.input) > 2
        else np.zeros_like(scale, np.int32)
    )
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if block:
        scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        zp = np.repeat(zp, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    else:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp).astype(np.float32) * scale
