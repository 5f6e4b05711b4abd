"""Which weight formats each CPU runtime really runs faster than float, measured on this CPU.

Run: ``python benchmarks/cpu_kernels.py [--threads N] [--seconds S]``.

For a few realistic layer shapes (ResNet/EfficientNet-style convolutions, BERT/MiniLM-style
matrix multiplies at 1 and 128 tokens) it writes one small ONNX graph per weight format, the way
edgekd exports them (DequantizeLinear on the weights, QuantizeLinear/DequantizeLinear on int8
activations), opens each in ONNX Runtime and OpenVINO with their default settings (what users
deploy; OpenVINO computes float layers in bf16 on CPUs that have it), and times the formats of a
shape interleaved, call by call. It prints each format's speed against float and the kernel the
runtime really ran (from its compiled graph), then which formats are faster per runtime and op:
the facts ``targets/x86-cpu.yaml`` records per CPU feature.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from edgekd.bench.timing import measure_interleaved
from edgekd.cpu import detect_cpu
from edgekd.runtimes import get_runtime

FASTER = 1.10  # a format counts as faster than float from 10% up: less is within run-to-run noise

# (op, label, input shape, weight shape); MatMul weights are (in, out) as ONNX MatMul takes them.
SHAPES = [
    ("Conv", "3x3 64->64 @56x56", (1, 64, 56, 56), (64, 64, 3, 3)),
    ("Conv", "1x1 256->256 @14x14", (1, 256, 14, 14), (256, 256, 1, 1)),
    ("Conv", "3x3 512->512 @7x7", (1, 512, 7, 7), (512, 512, 3, 3)),
    ("MatMul", "1 token 768->3072", (1, 768), (768, 3072)),
    ("MatMul", "128 tokens 768->768", (128, 768), (768, 768)),
    ("MatMul", "1 token 4096->4096", (1, 4096), (4096, 4096)),
    ("Gemm", "1 row 1280->1000", (1, 1280), (1000, 1280)),
    ("Gemm", "32 rows 1280->1000", (32, 1280), (1000, 1280)),
]
# format -> (weight bits or None, int8 activations?)
FORMATS = {
    "fp32": (None, False),
    "w8a8": (8, True),
    "w8 weight-only": (8, False),
    "w4 weight-only": (4, False),
}


def build(op: str, x_shape: tuple, w_shape: tuple, bits: int | None, int8_acts: bool):
    """One layer as ONNX: float, or low-bit weights behind DequantizeLinear (per output channel
    for 8 bits, blocks of 32 along the input for 4 bits, as edgekd exports them)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    out_axis = 1 if op == "MatMul" else 0
    w = rng.standard_normal(w_shape).astype(np.float32) * 0.05
    weight = "layer.weight"  # the names edgekd's export gives, so layer_kernels finds them
    if bits is None:
        inits.append(numpy_helper.from_array(w, weight))
    else:
        in_axis = 0 if op == "MatMul" else 1
        block = 32 if bits == 4 else None
        levels = 2 ** (bits - 1) - 1
        if block:
            groups = np.abs(w).reshape(*w.shape[:in_axis], -1, block, *w.shape[in_axis + 1 :])
            scale = groups.max(axis=in_axis + 1) / levels
            expanded = np.repeat(scale, block, axis=in_axis)
        else:
            axes = tuple(i for i in range(w.ndim) if i != out_axis)
            scale = np.abs(w).max(axis=axes) / levels
            expanded = scale.reshape([-1 if i == out_axis else 1 for i in range(w.ndim)])
        q = np.clip(np.round(w / expanded), -levels - 1, levels).astype(np.int8)
        dtype = TensorProto.INT4 if bits == 4 else TensorProto.INT8
        inits += [
            helper.make_tensor("layer.weight_quantized", dtype, q.shape, q.flatten().tolist()),
            numpy_helper.from_array(scale.astype(np.float32), "layer.weight_scale"),
        ]
        attrs = {"axis": in_axis, "block_size": block} if block else {"axis": out_axis}
        inputs = ["layer.weight_quantized", "layer.weight_scale"]
        name = "layer.weight_DequantizeLinear"
        nodes.append(helper.make_node("DequantizeLinear", inputs, [weight], name, **attrs))
    x = "x"
    if int8_acts:
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
            numpy_helper.from_array(np.array(0.1, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        ]
        x = "x_dq"
    y = "y_f" if int8_acts else "y"
    if op == "Conv":
        pad = w_shape[2] // 2
        nodes.append(helper.make_node("Conv", [x, weight], [y], pads=[pad] * 4))
    elif op == "Gemm":
        inits.append(numpy_helper.from_array(np.zeros(w_shape[0], np.float32), "bias"))
        nodes.append(helper.make_node("Gemm", [x, weight, "bias"], [y], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", [x, weight], [y]))
    if int8_acts:  # an int8 output too, so runtimes can form whole integer kernels
        nodes += [
            helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zero"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, _out_shape(op, x_shape, w_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def _out_shape(op: str, x_shape: tuple, w_shape: tuple) -> tuple:
    if op == "Conv":
        return (x_shape[0], w_shape[0], *x_shape[2:])
    return (x_shape[0], w_shape[1] if op == "MatMul" else w_shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: the runtime's own")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per shape and runtime")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 200)
    cpu = detect_cpu()
    console.print(
        f"CPU: {cpu.model} ({cpu.arch}), ISA: {', '.join(cpu.to_dict()['isa'])}, "
        f"{cpu.usable_cores} usable cores"
    )
    table = Table(
        "runtime",
        "op",
        "shape",
        "float in",
        "float ms",
        *(f"{f}: speedup, kernel" for f in list(FORMATS)[1:]),
    )
    verdict: dict[tuple[str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime_name in ("onnxruntime", "openvino"):
            runtime = get_runtime(runtime_name)
            for op, label, x_shape, w_shape in SHAPES:
                sessions = {}
                for fmt, (bits, acts) in FORMATS.items():
                    path = Path(tmp) / f"{op}-{bits}-{acts}.onnx"
                    onnx.save(build(op, x_shape, w_shape, bits, acts), path)
                    artifact = runtime.build(path, path.with_suffix(runtime.artifact_suffix))
                    sessions[fmt] = runtime.open(artifact, args.threads)
                x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
                stats = measure_interleaved(
                    {fmt: (lambda s=s, x=x: s.run(x)) for fmt, s in sessions.items()},
                    warmup=5,
                    min_runs=20,
                    min_seconds=args.seconds,
                )
                base = stats["fp32"].p50
                cells = []
                for fmt in list(FORMATS)[1:]:
                    speedup = base / stats[fmt].p50
                    kernel = next(iter(sessions[fmt].layer_kernels(["layer"]).values()), {})
                    verdict.setdefault((runtime_name, op), {}).setdefault(fmt, []).append(speedup)
                    cells.append(f"{speedup:.2f}x {kernel.get('kernel', '?')}")
                precision = sessions["fp32"].inference_precision()
                table.add_row(runtime_name, op, label, precision, f"{base:.3f}", *cells)
    console.print(table)
    console.print(
        f"Faster than float (median speedup over the shapes >= {FASTER}x), per runtime and op:"
    )
    for (runtime_name, op), by_format in verdict.items():
        fast = [
            f"{fmt} {np.median(s):.2f}x" for fmt, s in by_format.items() if np.median(s) >= FASTER
        ]
        console.print(f"  {runtime_name:<12} {op:<7} {', '.join(fast) or 'none'}")


if __name__ == "__main__":
    main()
