"""TensorRT on an NVIDIA GPU: a serialized engine built for this GPU and TensorRT version.

Device memory comes from torch CUDA tensors (torch is a hard dependency), so pycuda is not needed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.atomic import atomic_path
from edgekd.data.inputs import feed
from edgekd.data.outputs import pack
from edgekd.errors import StageError
from edgekd.runtimes import LayerKernel, Precision


class TensorRTRuntime:
    name = "tensorrt"
    artifact_suffix = ".engine"

    def __init__(self, opt_batch: int = 1) -> None:
        self.opt_batch = opt_batch

    def unavailable_reason(self) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install 'edgekd[tensorrt]' on an NVIDIA machine)"
        import torch

        if not torch.cuda.is_available():
            return "tensorrt needs a CUDA GPU and torch sees none (run on an NVIDIA machine)"
        return None

    def _require(self):
        reason = self.unavailable_reason()
        if reason:
            raise StageError(reason)
        import tensorrt

        return tensorrt

    def build(self, onnx_path: Path, dest: Path, max_batch: int = 64) -> Path:
        """Build with FP16, INT8 (enables the Q/DQ layers) and 2:4 sparse-weight kernels allowed.

        TensorRT 11 drops the FP16/INT8 flags (every network is strongly typed), so flags the
        installed version lacks are skipped.
        """
        trt = self._require()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise StageError(f"TensorRT cannot parse {onnx_path}: {errors} (re-export or simplify)")
        config = builder.create_builder_config()
        config.profiling_verbosity = (
            trt.ProfilingVerbosity.DETAILED
        )  # per-layer info for executed()
        for flag in ("FP16", "INT8", "SPARSE_WEIGHTS"):
            if hasattr(trt.BuilderFlag, flag):
                config.set_flag(getattr(trt.BuilderFlag, flag))
        # Input name -> dims, -1 where dynamic; lists because trt.Dims may not slice.
        shapes = {t.name: list(t.shape) for t in map(network.get_input, range(network.num_inputs))}
        for name, shape in shapes.items():
            if any(dim < 0 for dim in shape[1:]):
                raise StageError(
                    f"TensorRT input {name!r} of {onnx_path} has shape {shape}; only the batch "
                    "dimension may be dynamic (export with a fixed input size)"
                )
        dynamic = {name: shape for name, shape in shapes.items() if shape[0] < 0}
        if dynamic:
            profile = builder.create_optimization_profile()
            batches = (1, min(self.opt_batch, max_batch), max_batch)
            for name, shape in dynamic.items():
                profile.set_shape(name, *([batch, *shape[1:]] for batch in batches))
            config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise StageError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
        with atomic_path(dest) as tmp:
            tmp.write_bytes(engine)
        return Path(dest)

    def open(
        self, artifact: Path, threads: int | None = None, precision: Precision = "deploy"
    ) -> _EngineSession:
        """``threads`` is ignored (the work runs on the GPU), and so is ``precision``: an engine's
        precisions are fixed when it is built (Q/DQ layers, FP16 tactics)."""
        return _EngineSession(self._require(), Path(artifact))

    def describe(self) -> dict:
        reason = self.unavailable_reason()
        if reason:
            return {"runtime": self.name, "version": None, "device": None, "unavailable": reason}
        import tensorrt as trt
        import torch

        return {
            "runtime": self.name,
            "version": trt.__version__,
            "device": torch.cuda.get_device_name(),
        }


class _EngineSession:
    """Copies the input to the GPU, runs on the current torch stream, copies the outputs back."""

    def __init__(self, trt, artifact: Path) -> None:
        import torch

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(artifact.read_bytes())
        if self._engine is None:
            raise StageError(
                f"TensorRT cannot load engine {artifact} (rebuild it on this GPU and TensorRT)"
            )
        self._trt = trt
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise StageError(f"TensorRT engine {artifact} has inputs {inputs}; edgekd needs one")
        self._input = inputs[0]
        self._outputs = [n for n in names if n != self._input]
        self._dtypes = {
            n: torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(n)))).dtype
            for n in names
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        outputs = self._bind(x)
        self._execute()
        return pack(self._outputs, [o.float().cpu().numpy() for o in outputs])

    def bound(self, x: np.ndarray):
        self._bind(x)
        return self._execute

    def _bind(self, x: np.ndarray) -> list:
        """Copy ``x`` to the GPU and allocate the outputs there; returns them (kept alive)."""
        import torch

        (host,) = (torch.from_numpy(a) for a in feed(x).values())  # one input (checked at open)
        self._device_x = host.to("cuda", self._dtypes[self._input])
        self._context.set_input_shape(self._input, tuple(self._device_x.shape))
        self._context.set_tensor_address(self._input, self._device_x.data_ptr())
        self._device_outputs = []
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            self._device_outputs.append(torch.empty(shape, dtype=self._dtypes[name], device="cuda"))
            self._context.set_tensor_address(name, self._device_outputs[-1].data_ptr())
        return self._device_outputs

    def _execute(self) -> None:
        import torch

        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise StageError("TensorRT failed to execute the engine (see its log)")
        stream.synchronize()

    def inference_precision(self) -> str:
        return "fp16/fp32 per layer; fixed at engine build (Q/DQ layers int8/int4)"

    def layer_kernels(self, layers: list[str]) -> dict[str, LayerKernel]:
        """Not read yet: the inspector names fused layers after ONNX nodes, and mapping them to
        torch layers needs a GPU to test against. The report says the check was not made."""
        return {}

    def executed(self) -> dict[str, int]:
        """``layer type:output type`` from the engine inspector, ``+sparse`` for 2:4 tactics."""
        inspector = self._engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON))
        counts: Counter[str] = Counter()
        for layer in info.get("Layers", []):
            if not isinstance(layer, dict):  # engine built without detailed profiling
                counts["layer"] += 1
                continue
            outputs = layer.get("Outputs") or [{}]
            dtype = str(outputs[0].get("Format/Datatype", "?")).split()[0]
            sparse = "+sparse" if "sparse" in str(layer.get("TacticName", "")).lower() else ""
            counts[f"{layer.get('LayerType', '?')}:{dtype}{sparse}"] += 1
        return dict(counts)
