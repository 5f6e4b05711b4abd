"""What the CPU edgekd runs on can do: the ISA features that decide which kernels a runtime uses.

Why a probe: the same wheel of ONNX Runtime or OpenVINO runs int8 convolutions at float speed on
an AVX2-only CPU and twice as fast with VNNI, and OpenVINO computes in bf16 by default where the
CPU has it. Targets resolve their CPU-dependent facts from these features (``targets.py``).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# Feature -> /proc/cpuinfo flags, and whether it needs all of them or any one.
X86_FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "avx2": ("all", ("avx2", "fma")),
    "avx512": ("all", ("avx512f", "avx512bw", "avx512vl")),
    "vnni": ("any", ("avx512_vnni", "avx_vnni")),  # int8 dot products: no u8s8 saturation
    "bf16": ("any", ("avx512_bf16", "amx_bf16")),  # OpenVINO then defaults to bf16
    "amx": ("all", ("amx_tile", "amx_int8", "amx_bf16")),
}
ARM_FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "neon": ("any", ("asimd", "neon")),
    "dotprod": ("any", ("asimddp",)),
    "i8mm": ("any", ("i8mm",)),
    "bf16": ("any", ("bf16",)),
    "sve": ("any", ("sve",)),
}
FEATURES = [*X86_FEATURES, *(f for f in ARM_FEATURES if f not in X86_FEATURES)]  # all names


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    features: frozenset[str]  # names from X86_FEATURES / ARM_FEATURES
    flags: frozenset[str]  # the raw flags those features were read from
    logical_cores: int
    usable_cores: int  # what this process may run on (affinity, cgroups' cpusets)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "arch": self.arch,
            "isa": sorted(self.features, key=FEATURES.index),
            "flags": sorted(self.flags),
            "logical_cores": self.logical_cores,
            "usable_cores": self.usable_cores,
        }


def features_from_flags(flags: set[str] | frozenset[str], arch: str) -> frozenset[str]:
    """The feature names a set of /proc/cpuinfo flags implies on ``arch``."""
    table = ARM_FEATURES if arch.lower() in ("aarch64", "arm64") else X86_FEATURES
    found = set()
    for name, (rule, needed) in table.items():
        have = [flag in flags for flag in needed]
        if all(have) if rule == "all" else any(have):
            found.add(name)
    return frozenset(found)


def parse_cpuinfo(text: str, arch: str) -> tuple[str | None, frozenset[str]]:
    """CPU model name and the relevant flags from the text of /proc/cpuinfo."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model") and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    table = ARM_FEATURES if arch.lower() in ("aarch64", "arm64") else X86_FEATURES
    known = {flag for _, needed in table.values() for flag in needed}
    return model, frozenset(flags & known)


@functools.cache
def detect_cpu() -> CpuInfo:
    """This machine's CPU (Linux reads /proc/cpuinfo; elsewhere the features are unknown)."""
    arch = platform.machine()
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(), arch)
    except OSError:
        model, flags = None, frozenset()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(
        model=model or platform.processor() or arch,
        arch=arch,
        features=features_from_flags(flags, arch),
        flags=flags,
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable or 1,
    )
