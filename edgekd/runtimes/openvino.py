"""OpenVINO on CPU: the ONNX model converted to an IR pair (.xml graph, .bin weights)."""

from __future__ import annotations

import functools
import os
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.data.inputs import feed_as
from edgekd.data.outputs import pack
from edgekd.runtimes import LayerKernel, Precision, runtime_failure, weight_names

# Compiled-graph nodes that only move or re-type a weight on its way to the kernel.
_PASS_THROUGH = {"Reshape", "Reorder", "Convert", "Transpose"}
_COMPUTE = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
_NOT_KERNELS = {*_PASS_THROUGH, "Const", "Input", "Output"}
_TYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


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

    def open(
        self, artifact: Path, threads: int | None = None, precision: Precision = "deploy"
    ) -> _OvSession:
        """Compile for latency. ``exact``: f32 and no dynamic int8 activation quantization, which
        the CPU plugin turns on by default for compressed-weight FullyConnected layers; without
        it, CPUs with bf16/AMX compute in bf16."""
        import openvino as ov

        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "exact":
            config.update(INFERENCE_PRECISION_HINT="f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=0)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = ov.Core().compile_model(str(artifact), "CPU", config)
        except Exception as exc:
            raise runtime_failure("openvino cannot load", artifact, exc, "rebuild it") from exc
        return _OvSession(compiled, Path(artifact))

    def describe(self) -> dict:
        import openvino as ov

        core = ov.Core()
        return {
            "runtime": self.name,
            "version": ov.get_version(),
            "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        }


class _OvSession:
    """Reuses one InferRequest: creating one per call would be timed as inference."""

    def __init__(self, compiled, artifact: Path) -> None:
        self._compiled, self._artifact = compiled, artifact
        self._request = compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        result = self._request.infer(feed_as(x, 0), share_inputs=True)
        outputs = self._compiled.outputs
        return pack([o.get_any_name() for o in outputs], [result[o] for o in outputs])

    def bound(self, x: np.ndarray):
        import openvino as ov

        request = self._compiled.create_infer_request()
        for key, array in feed_as(x, 0).items():
            if isinstance(key, int):
                request.set_input_tensor(key, ov.Tensor(array))
            else:
                request.set_tensor(key, ov.Tensor(array))
        # the outputs stay in the request's tensors: a copy per call cost 0.04 ms for a
        # 32x112x112 output here, which weighs on small layers in the latency table
        return functools.partial(request.infer, share_outputs=True)

    @functools.cached_property
    def _runtime_model(self):
        """Kept alive: its nodes lose their edges once the model is freed."""
        return self._compiled.get_runtime_model()

    def _ops(self):
        return self._runtime_model.get_ordered_ops()

    def executed(self) -> dict[str, int]:
        """``layer type:runtime precision`` of the CPU plugin's compiled graph (e.g. FullyConnected:u4)."""
        counts: Counter[str] = Counter()
        for op in self._ops():
            layer, precision = _info(op)
            if layer not in ("Input", "Output", "Const"):
                counts[f"{layer}:{precision}"] += 1
        return dict(counts)

    def inference_precision(self) -> str:
        """The compiled model's float precision, plus dynamic int8 activations where it
        quantizes them for compressed-weight FullyConnected layers."""
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        precision = _TYPES.get(hint, hint)
        group = int(self._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
        compressed = any(
            _info(op)[0] == "FullyConnected" and _weight_type(op)[:1] in ("i", "u")
            for op in self._ops()
        )
        if group and compressed:
            return f"{precision}; dynamic int8 activations in FullyConnected (group {group})"
        return precision

    def layer_kernels(self, layers: list[str]) -> dict[str, LayerKernel]:
        """Finds each layer's compute node in the IR (from its weight, whose DequantizeLinear
        name the IR keeps), then the compiled kernel that fused it; the element type of the
        weights that kernel receives tells whether they stayed i8/u8/i4/u4 or became float."""
        import openvino as ov

        sources = _layer_nodes(ov.Core().read_model(str(self._artifact)), layers)
        owner = {}  # IR node name -> the first compiled kernel that fused it
        for op in self._ops():
            if _info(op)[0] not in _NOT_KERNELS:
                for name in op.get_rt_info()["originalLayersNames"].astype(str).split(","):
                    owner.setdefault(name.split("/")[0], op)
        kernels = {}
        for layer, names in sources.items():
            # the node's own name first; the bias Add it may be known by second
            match = next((owner[n] for n in names if n in owner), None)
            if match is not None:
                kernel, precision = _info(match)
                weight = _weight_type(match)
                kind = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}.get(weight)
                kind = kind or ("int8" if precision in ("i8", "u8") else "float")
                kernels[layer] = {
                    "kernel": f"{kernel}:{precision} ({weight} weights)",
                    "kind": kind,
                }
        return kernels


def _layer_nodes(model, layers: list[str]) -> dict[str, list[str]]:
    """Layer -> names the compiled kernel may know it by: the IR node that computes with its
    weights, then the bias Add the converter split off a Gemm (without the ``/WithoutBiases``
    suffixes the converter adds)."""
    named = {op.get_friendly_name(): op for op in model.get_ops()}
    nodes = {}
    for layer in layers:
        op = next((named[n] for n in weight_names(layer) if n in named), None)
        while op is not None and op.get_type_name() not in _COMPUTE:
            targets = list(op.output(0).get_target_inputs())
            op = targets[0].get_node() if targets else None
        if op is None:
            continue
        after = [t.get_node() for t in op.output(0).get_target_inputs()]
        bias = [n.get_friendly_name() for n in after if n.get_type_name() == "Add"]
        nodes[layer] = [name.split("/")[0] for name in (op.get_friendly_name(), *bias[:1])]
    return nodes


def _info(op) -> tuple[str, str]:
    info = op.get_rt_info()
    return info["layerType"].astype(str), info["runtimePrecision"].astype(str)


def _weight_type(op) -> str:
    """Element type of input 1 (the weights) as the kernel receives it: i8, u4, f32, bf16, ..."""
    if op.get_input_size() < 2:
        return ""
    return op.input(1).get_source_output().get_element_type().get_type_name()
