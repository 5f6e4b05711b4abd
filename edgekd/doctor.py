"""``edgekd doctor``: what this machine has, and which targets it can stand in for.

Why: a user on a Jetson or a fresh x86 box needs to know, before compressing or benchmarking,
which runtimes edgekd will use there and why a target would be skipped; every fact here is read
from the machine (packages, devices, files), none assumed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from .environment import describe_environment
from .runtimes import RUNTIMES
from .targets import load_target, target_names

L4T_RELEASE = Path("/etc/nv_tegra_release")  # Jetson's Linux for Tegra version


def diagnose() -> dict[str, Any]:
    """The machine (CPU, OS, libraries, GPU, Jetson release), each runtime's devices or why it
    cannot run, and each built-in target with why this machine cannot stand in for it."""
    return {
        **describe_environment(),
        "gpu": _nvidia_smi(),
        "jetson": _jetson(),
        "runtimes": {name: _runtime(rt) for name, rt in RUNTIMES.items()},
        "targets": {name: _target(name) for name in target_names()},
    }


def _runtime(runtime) -> dict[str, Any]:
    reason = runtime.unavailable_reason()
    if reason:
        return {"available": False, "reason": reason}
    return {"available": True, **runtime.describe()}


def _target(name: str) -> dict[str, Any]:
    """Whether this machine stands in for the target: its device (architecture, CPU class),
    then each of its runtimes installed and usable."""
    target = load_target(name)
    reason = target.unavailable_reason() or "; ".join(
        f"{rt.name}: {why}" for rt in target.runtimes if (why := target.unavailable_reason(rt.name))
    )
    return {"here": not reason, "reason": reason or None}


def _nvidia_smi() -> list[dict[str, str]] | None:
    """Each NVIDIA GPU's name, driver and memory, or None where nvidia-smi is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = ("name", "driver_version", "memory.total")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]  # fmt: skip


def _jetson() -> dict[str, str | None] | None:
    """L4T release and power mode on a Jetson (None elsewhere): TensorRT and latency depend on
    both, and a board left in a low-power mode benchmarks slow."""
    if not L4T_RELEASE.is_file():
        return None
    release = L4T_RELEASE.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    mode = None
    if shutil.which("nvpmodel"):
        try:
            mode = subprocess.run(
                ["nvpmodel", "-q"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            mode = None
    return {"l4t": release.lstrip("# ").strip(), "power_mode": mode}
