"""ONNX Runtime on CPU: runs the exported ONNX model as it is."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.runtimes import runtime_failure


class OnnxRuntime:
    name = "onnxruntime"
    artifact_suffix = ".onnx"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def build(self, onnx_path: Path, dest: Path, max_batch: int = 64) -> Path:
        """Re-save the model as one self-contained file.

        Not ORT's offline optimisation: on INT4/UINT4 DequantizeLinear models it reloads fine but
        runs no faster, since ORT applies the same rewrites when it opens the plain model. A plain
        copy would miss the exporter's external-data file, so the model is loaded and re-saved.
        """
        import onnx

        try:
            model = onnx.load(str(onnx_path))
        except Exception as exc:
            raise runtime_failure(
                "onnxruntime cannot read", onnx_path, exc, "re-export it"
            ) from exc
        with atomic_path(dest) as tmp:
            onnx.save_model(model, str(tmp))
        return Path(dest)

    def open(self, artifact: Path, threads: int | None = None) -> _OrtSession:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                str(artifact), _options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise runtime_failure("onnxruntime cannot load", artifact, exc, "rebuild it") from exc
        return _OrtSession(session, Path(artifact), threads)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"runtime": self.name, "version": ort.__version__, "device": "CPU"}


def _options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class _OrtSession:
    def __init__(self, session, artifact: Path, threads: int | None) -> None:
        self._session = session
        self._artifact, self._threads = artifact, threads
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        feed = {self._input: np.ascontiguousarray(x, dtype=np.float32)}
        return np.asarray(self._session.run([self._output], feed)[0], dtype=np.float32)

    def executed(self) -> dict[str, int]:
        """Op types of the graph ORT runs, saved by a twin session with the same options."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = _options(self._threads)
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3  # its "hardware specific graph" warning is expected
            ort.InferenceSession(str(self._artifact), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return dict(
            Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node)
        )
