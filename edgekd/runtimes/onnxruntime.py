"""ONNX Runtime on CPU: runs the exported ONNX model as it is."""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.data.inputs import feed_as
from edgekd.data.outputs import pack
from edgekd.runtimes import LayerKernel, Precision, runtime_failure, weight_names

# Ops ORT's QDQ fusions produce that compute on int8 activations and int8 weights.
_INT8_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
}
# MatMulNBits' accuracy_level 4 rounds activations to int8 inside the kernel; 0 keeps them float.
_MATMULNBITS_LEVEL = "session.qdq_matmulnbits_accuracy_level"
# A session's thread pool spins after each run, waiting for the next: with the sessions edgekd
# times side by side, the pool of the one that just ran takes the cores from the one that runs
# next. EfficientNet-Lite0's teacher timed 14.5 ms at batch 1 beside two students and 6.1 ms
# alone, and its speedup over a student read 0.72x to 1.75x by call order; without spinning,
# 6.8 ms and 1.07x to 1.21x. Alone, spinning ran these models 12-29% faster: the ratios bench reports
# hold, its milliseconds are those of a session that does not spin.
_NO_SPINNING = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


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

    def open(
        self, artifact: Path, threads: int | None = None, precision: Precision = "deploy"
    ) -> _OrtSession:
        """``exact`` turns off the one reduced-precision default ORT has on CPU: int8
        activations inside the MatMulNBits it fuses from DequantizeLinear(int4) -> MatMul."""
        import onnxruntime as ort

        options = _options(threads, precision)
        try:
            session = ort.InferenceSession(
                str(artifact), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise runtime_failure("onnxruntime cannot load", artifact, exc, "rebuild it") from exc
        return _OrtSession(session, Path(artifact), threads, precision)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"runtime": self.name, "version": ort.__version__, "device": "CPU",
                "session_options": {key: "0" for key in _NO_SPINNING}}  # fmt: skip


def _options(threads: int | None, precision: Precision):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    if precision == "exact":
        options.add_session_config_entry(_MATMULNBITS_LEVEL, "0")
    for key in _NO_SPINNING:
        options.add_session_config_entry(key, "0")
    return options


class _OrtSession:
    def __init__(self, session, artifact: Path, threads: int | None, precision: Precision) -> None:
        self._session = session
        self._artifact, self._threads, self._precision = artifact, threads, precision
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]

    def _feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return feed_as(x, self._inputs[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        return pack(self._outputs, self._session.run(self._outputs, self._feed(x)))

    def bound(self, x: np.ndarray):
        binding = self._session.io_binding()
        for name, array in self._feed(x).items():
            binding.bind_cpu_input(name, array)
        for name in self._outputs:
            binding.bind_output(name)

        def call():
            self._session.run_with_iobinding(binding)
            return binding.get_outputs()

        return call

    @functools.cached_property
    def _graph(self):
        """The graph ORT runs, saved by a twin session with the same options."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = _options(self._threads, self._precision)
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3  # its "hardware specific graph" warning is expected
            ort.InferenceSession(str(self._artifact), options, providers=["CPUExecutionProvider"])
            return onnx.load(options.optimized_model_filepath, load_external_data=False).graph

    def executed(self) -> dict[str, int]:
        return dict(
            Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in self._graph.node)
        )

    def inference_precision(self) -> str:
        """f32, plus the int8 activations of any MatMulNBits with accuracy_level 4."""
        import onnx

        levels = {
            onnx.helper.get_attribute_value(a)
            for n in self._graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "accuracy_level"
        }
        if 4 in levels:
            return "f32; int8 activations in MatMulNBits (accuracy_level 4)"
        return "f32"

    def layer_kernels(self, layers: list[str]) -> dict[str, LayerKernel]:
        import onnx

        consumers: dict[str, list] = {}
        for node in self._graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        found = {}
        for layer in layers:
            # ORT renames weights it repacks (MatMulNBits: <codes>_T; NCHWc convs: <weight>_nchwc)
            names = weight_names(layer)
            node = next((consumers[n][0] for n in names if n in consumers), None) or next(
                (nodes[0] for n, nodes in consumers.items() if n.startswith(names[-1])), None
            )
            if node is None:
                continue
            if node.op_type == "DequantizeLinear":  # dequantized on every call
                compute = next(iter(consumers.get(node.output[0], [])), None)
                kernel = f"DequantizeLinear + {compute.op_type if compute else '?'}"
                found[layer] = {"kernel": kernel, "kind": "float"}
            elif node.op_type in _INT8_OPS:
                found[layer] = {"kernel": node.op_type, "kind": "int8"}
            elif node.op_type == "MatMulNBits":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                bits = int(attrs.get("bits", 4))
                kind = "int8" if bits > 4 else "int4"
                found[layer] = {"kernel": f"MatMulNBits (bits={bits})", "kind": kind}
            else:
                found[layer] = {"kernel": node.op_type, "kind": "float"}
        return found
