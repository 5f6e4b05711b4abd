"""OpenVINO on CPU: the ONNX model converted to an IR pair (.xml graph, .bin weights)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.runtimes import runtime_failure


class OpenVinoRuntime:
    name = "openvino"
    artifact_suffix = ".xml"

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install openvino)"
        return None

    def build(self, onnx_path: Path, dest: Path, max_batch: int = 64) -> Path:
        """Convert to IR at ``dest`` with its .bin beside it; fp32 weights, as exported.

        The .xml is what the runtime opens, so it is removed before the new .bin lands and
        renamed into place last: an interrupted build never leaves an .xml with the wrong .bin.
        """
        import openvino as ov

        dest = Path(dest)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise runtime_failure(
                "openvino cannot convert", onnx_path, exc, "re-export it"
            ) from exc
        with atomic_path(dest) as tmp:
            ov.save_model(model, str(tmp), compress_to_fp16=False)
            dest.unlink(missing_ok=True)
            os.replace(tmp.with_suffix(".bin"), dest.with_suffix(".bin"))
        return dest

    def open(self, artifact: Path, threads: int | None = None) -> _OvSession:
        """Compile for latency in fp32, so CPUs with bf16/AMX do not silently lower precision."""
        import openvino as ov

        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = ov.Core().compile_model(str(artifact), "CPU", config)
        except Exception as exc:
            raise runtime_failure("openvino cannot load", artifact, exc, "rebuild it") from exc
        return _OvSession(compiled)

    def describe(self) -> dict:
        import openvino as ov

        device = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
        return {"runtime": self.name, "version": ov.get_version(), "device": device}


class _OvSession:
    """Reuses one InferRequest: creating one per call would be timed as inference."""

    def __init__(self, compiled) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        result = self._request.infer({0: x}, share_inputs=True)
        return np.asarray(result[0], dtype=np.float32)

    def executed(self) -> dict[str, int]:
        """``layer type:runtime precision`` of the CPU plugin's compiled graph (e.g. FullyConnected:u4)."""
        counts: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str)
            if layer not in ("Input", "Output", "Const"):
                counts[f"{layer}:{info['runtimePrecision'].astype(str)}"] += 1
        return dict(counts)
