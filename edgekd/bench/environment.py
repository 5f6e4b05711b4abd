"""The machine a benchmark ran on: latency numbers mean little without it."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# Report name -> /proc/cpuinfo flags that imply it; these decide which int8/bf16 kernels run.
_X86_FLAGS = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}
_ARM_FLAGS = {"neon": ("asimd", "neon"), "dotprod": ("asimddp",), "i8mm": ("i8mm",)}

# Library -> distribution names it may be installed under (first found wins).
_LIBRARIES = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "torch_pruning": ("torch-pruning",),
    "numpy": ("numpy",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
}


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a stage's results depend on (recorded per stage)."""
    return {lib: _version(dists) for lib, dists in _LIBRARIES.items()}


def describe_environment() -> dict:
    """CPU, cores, OS, library versions and GPU; library versions come from package metadata,
    so nothing heavy is imported."""
    model, flags = _cpuinfo()
    machine = platform.machine()
    wanted = _ARM_FLAGS if machine.lower() in ("aarch64", "arm64") else _X86_FLAGS
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": {
            "model": model or platform.processor() or machine,
            "arch": machine,
            "flags": {name: bool(flags & set(names)) for name, names in wanted.items()},
            "logical_cores": os.cpu_count(),
            "usable_cores": usable,
        },
        "cores": usable,  # what the runtimes could use: the number latency figures depend on
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
