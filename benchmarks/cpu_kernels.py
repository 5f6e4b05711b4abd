"""Which weight formats each CPU runtime really runs faster than float, measured on this CPU.

Run: ``python benchmarks/cpu_kernels.py [--threads N] [--seconds S]``.

For a few realistic layer shapes (ResNet/EfficientNet-style convolutions, BERT/MiniLM-style
matrix multiplies at 1 and 128 tokens) it writes one small ONNX graph per weight format, the way
edgekd exports them (``edgekd/latency/layer_onnx.py``, which the latency stage uses too) (DequantizeLinear on the weights, QuantizeLinear/DequantizeLinear on int8
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
from rich.console import Console
from rich.table import Table

from edgekd.bench.timing import measure_interleaved
from edgekd.cpu import detect_cpu
from edgekd.latency import LayerShape, WeightChoice, layer_onnx
from edgekd.runtimes import get_runtime

FASTER = 1.10  # a format counts as faster than float from 10% up: less is within run-to-run noise

_CONV = {"stride": (1, 1), "dilation": (1, 1)}
SHAPES = [
    ("3x3 64->64 @56x56", LayerShape("Conv", (1, 64, 56, 56), (64, 64, 3, 3), padding=(1, 1), **_CONV)),
    ("1x1 256->256 @14x14", LayerShape("Conv", (1, 256, 14, 14), (256, 256, 1, 1), padding=(0, 0), **_CONV)),
    ("3x3 512->512 @7x7", LayerShape("Conv", (1, 512, 7, 7), (512, 512, 3, 3), padding=(1, 1), **_CONV)),
    ("1 token 768->3072", LayerShape("MatMul", (1, 768), (3072, 768))),
    ("128 tokens 768->768", LayerShape("MatMul", (128, 768), (768, 768))),
    ("1 token 4096->4096", LayerShape("MatMul", (1, 4096), (4096, 4096))),
    ("1 row 1280->1000", LayerShape("Gemm", (1, 1280), (1000, 1280))),
    ("32 rows 1280->1000", LayerShape("Gemm", (32, 1280), (1000, 1280))),
]  # fmt: skip
FORMATS = {
    "fp32": WeightChoice(None),
    "w8a8": WeightChoice(8, None, True, 8),
    "w8 weight-only": WeightChoice(8, None, True, None),
    "w4 weight-only": WeightChoice(4, 32, True, None),  # blocks of 32, as MatMulNBits runs them
}


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
            for label, shape in SHAPES:
                op = shape.op
                sessions = {}
                for fmt, choice in FORMATS.items():
                    path = Path(tmp) / f"{op}-{choice.label}.onnx".replace(" ", "-")
                    onnx.save(layer_onnx(shape, choice), path)
                    artifact = runtime.build(path, path.with_suffix(runtime.artifact_suffix))
                    sessions[fmt] = runtime.open(artifact, args.threads)
                x = np.random.default_rng(1).standard_normal(shape.input_shape).astype(np.float32)
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
