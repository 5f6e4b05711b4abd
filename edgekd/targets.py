"""Targets: what a device runs, read from YAML (the top-level ``targets/`` folder, or a user's file)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import InputError, UsageError, suggest


@dataclass(frozen=True)
class RuntimeSupport:
    """One runtime on one target: what it can load, and what it really runs faster."""

    name: str
    device: str
    weight_bits: tuple[int, ...]
    fast_weight_bits: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sparse_2of4: tuple[str, ...] = ()
    int8_weight_bits: int = 8  # 7 where signed int8 weights can saturate the runtime's kernels
    weight_bits_by_op: dict[str, tuple[int, ...]] = field(default_factory=dict)  # narrower per op
    symmetric_only: bool = False  # zero points must be 0 (weights and activations)

    def loads(self, op: str) -> tuple[int, ...]:
        """Weight bits this runtime loads for an op type."""
        return self.weight_bits_by_op.get(op, self.weight_bits)

    def runs_as(self, op: str, bits: int | None, sparse: bool) -> str:
        """How this runtime executes a layer: the honest line the report prints per layer."""
        if bits is None:
            how = "float"
        else:
            storage = 8 if bits > 4 else 4  # 7-bit codes live in int8, 2- and 3-bit codes in int4
            name = f"int{storage}" + (f" ({bits}-bit range)" if storage != bits else "")
            fast = storage in self.fast_weight_bits.get(op, ())
            how = f"{name} kernel" if fast else f"{name} weights dequantized to float"
        if sparse:
            how += ", 2:4 sparse kernel" if op in self.sparse_2of4 else ", 2:4 zeros run dense"
        return how


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: tuple[str, ...]
    runtimes: tuple[RuntimeSupport, ...]

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot stand in for the target device, or None if it can."""
        machine = platform.machine()
        if machine not in self.arch:
            return f"this machine is {machine}; target {self.name} runs on {'/'.join(self.arch)}"
        return None


def _builtin_dir():
    return resources.files("edgekd").joinpath("_targets")


def target_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_target(spec: str) -> Target:
    """A built-in target by name, or a target YAML file by path."""
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"target file '{spec}' not found")
        text = path.read_text(encoding="utf-8")
    elif spec in target_names():
        text = _builtin_dir().joinpath(f"{spec}.yaml").read_text(encoding="utf-8")
    else:
        raise UsageError(
            f"unknown target '{spec}'{suggest(spec, target_names())}; "
            f"see 'edgekd targets' for: {', '.join(target_names())}"
        )
    try:
        raw = yaml.safe_load(text)
        runtimes = tuple(
            RuntimeSupport(
                name=name,
                device=str(rt.get("device", "CPU")),
                weight_bits=tuple(rt["weight_bits"]),
                fast_weight_bits={
                    k: tuple(v) for k, v in (rt.get("fast_weight_bits") or {}).items()
                },
                sparse_2of4=tuple(rt.get("sparse_2of4") or ()),
                int8_weight_bits=int(rt.get("int8_weight_bits", 8)),
                weight_bits_by_op={
                    k: tuple(v) for k, v in (rt.get("weight_bits_by_op") or {}).items()
                },
                symmetric_only=bool(rt.get("symmetric_only", False)),
            )
            for name, rt in raw["runtimes"].items()
        )
        return Target(
            name=raw["name"],
            description=raw.get("description", ""),
            arch=tuple(raw["arch"]),
            runtimes=runtimes,
        )
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"target '{spec}' is malformed ({type(exc).__name__}: {exc})") from None
