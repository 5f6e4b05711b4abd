"""The machine a benchmark ran on: latency numbers mean little without it."""

from __future__ import annotations

import platform
from importlib import metadata

from .cpu import detect_cpu

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
    """CPU (model, ISA features, cores), OS, library versions and GPU; library versions come
    from package metadata, so nothing heavy is imported. Torch may be absent (a device that only
    runs the exports)."""
    try:
        import torch
    except ImportError:
        torch = None

    cpu = detect_cpu()
    return {
        "cpu": cpu.to_dict(),
        "cores": cpu.usable_cores,  # what the runtimes could use: the number latency depends on
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "cuda_device": torch.cuda.get_device_name()
        if torch and torch.cuda.is_available()
        else None,
    }
