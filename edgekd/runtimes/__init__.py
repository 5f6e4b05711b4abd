"""Inference runtimes as interchangeable siblings behind one small protocol.

The rest of edgekd never imports onnxruntime, openvino or tensorrt itself: each runtime module
imports its library inside its functions, so importing this package is cheap and works on
machines that lack some of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from edgekd.errors import StageError, UsageError, suggest

# "exact": full f32 with no reduced-precision rewrite, so verify measures the export itself.
# "deploy": the runtime's own defaults on this machine (bf16, dynamic int8 activations, ...), which
# is what users ship and what bench times.
Precision = Literal["exact", "deploy"]

# What a layer's weights run as, comparable across runtimes and with the plan: "int8" (integer
# kernel, or int8 weights inside the kernel), "int4" (int4 weights inside the kernel) or "float"
# (weights turned into float first: at load time or by a DequantizeLinear on every call).
LayerKernel = dict[str, str]  # {"kernel": what the runtime named it, "kind": "int8"|"int4"|"float"}


class Session(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the inputs ``x`` (one array, or a structured array of named inputs:
        ``data.inputs``); return the outputs as float32, packed as ``data.outputs`` packs them."""
        ...

    def bound(self, x: np.ndarray) -> Callable[[], object]:
        """One inference on ``x``, bound once: the input already in the runtime's buffer, the
        outputs left in its own and returned in its types. What bench and the latency table
        time: a deployed loop's cost per call, without this process's copies and conversions."""
        ...

    def inference_precision(self) -> str:
        """The precision the runtime really computes in, read back from it (e.g. ``bf16``)."""
        ...

    def layer_kernels(self, layers: list[str]) -> dict[str, LayerKernel]:
        """Per layer (torch module name), the kernel that runs its weights after the runtime's
        own rewrites; layers the runtime's graph no longer names are left out."""
        ...

    def executed(self) -> dict[str, int]:
        """What the runtime really executes after its own rewrites, as ``kernel: count``.

        Read from the runtime's compiled graph, not from what the target file declares, so the
        report can show e.g. that int4 convs ran as float convolutions.
        """
        ...


class Runtime(Protocol):
    name: str
    artifact_suffix: str

    def unavailable_reason(self) -> str | None:
        """None when usable on this machine, else one line saying why not."""
        ...

    def build(self, onnx_path: Path, dest: Path, max_batch: int = 64) -> Path:
        """Write this runtime's artifact for ``onnx_path`` atomically at ``dest``; return it.

        ``max_batch``: the largest batch it must accept (engines with fixed ranges need it).
        """
        ...

    def open(
        self, artifact: Path, threads: int | None = None, precision: Precision = "deploy"
    ) -> Session: ...

    def describe(self) -> dict:
        """{"runtime", "version", "device"} for the report's environment section."""
        ...


def weight_names(layer: str) -> tuple[str, ...]:
    """Names a layer's weight may carry in an exported graph: the low-bit codes and their
    DequantizeLinear (``export/lowbit.py``), or the float initializer (the exporter keeps
    parameter names)."""
    return (f"{layer}.weight_quantized", f"{layer}.weight_DequantizeLinear", f"{layer}.weight")


def runtime_failure(action: str, path: Path, exc: BaseException, fix: str) -> StageError:
    """A one-line StageError from a library exception.

    OpenVINO stacks "Exception from src/...:" lines above the real cause, so keep the last line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return StageError(f"{action} {path}: {lines[-1] if lines else type(exc).__name__} ({fix})")


# The runtime modules use runtime_failure, so they are imported after it is defined.
from edgekd.runtimes.onnxruntime import OnnxRuntime  # noqa: E402
from edgekd.runtimes.openvino import OpenVinoRuntime  # noqa: E402
from edgekd.runtimes.tensorrt import TensorRTRuntime  # noqa: E402

RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime for runtime in (OnnxRuntime(), OpenVinoRuntime(), TensorRTRuntime())
}


def get_runtime(name: str) -> Runtime:
    if name in RUNTIMES:
        return RUNTIMES[name]
    raise UsageError(
        f"unknown runtime '{name}'{suggest(name, RUNTIMES)}; choose one of: {', '.join(RUNTIMES)}"
    )
