"""Targets: what a device runs, read from YAML (the top-level ``targets/`` folder, or a user's file).

Facts that depend on the CPU are written as a choice keyed by ISA feature (``{vnni: 8,
default: 7}``: the first feature the CPU has wins). ``cpu: detect`` resolves them from the CPU
edgekd runs on (``x86-cpu``); ``cpu: [avx2]`` from a named CPU class (``x86-cpu-avx2``), for
planning for another machine. ``extends: NAME`` takes another target's facts, so the CPU
variants share one file of facts.

Each file is checked against a schema (``TargetFile``, ``RuntimeSchema``): an unknown key, a bare
string where a list of ops belongs, or a width no runtime has is an error naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from .cpu import FEATURES, CpuInfo, detect_cpu
from .errors import InputError, UsageError, suggest
from .recipe import schema_problem


@dataclass(frozen=True)
class RuntimeSupport:
    """One runtime on one target: what it can load, what it runs as low-bit kernels, and which of
    those are measured faster than float."""

    name: str
    device: str
    weight_bits: tuple[int, ...]
    lowbit_kernels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # else dequantized
    faster_than_float: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sparse_2of4: tuple[str, ...] = ()
    int8_weight_bits: int = 8  # 7 where signed int8 weights can saturate the runtime's kernels
    weight_bits_by_op: dict[str, tuple[int, ...]] = field(default_factory=dict)  # narrower per op
    symmetric_only: bool = False  # zero points must be 0 (weights and activations)
    inference_precision: str = "f32"  # what the runtime computes float layers in by default
    # ops whose low-bit kernel the runtime forms only with int8 inputs / only with float inputs
    needs_int8_activations: tuple[str, ...] = ("Conv",)
    needs_float_activations: tuple[str, ...] = ()

    def loads(self, op: str) -> tuple[int, ...]:
        """Weight bits this runtime loads for an op type."""
        return self.weight_bits_by_op.get(op, self.weight_bits)

    def kernel(self, op: str, bits: int | None, activation_bits: int | None = 8) -> str:
        """``int8``, ``int4`` or ``float``: the kind of kernel a layer runs as, comparable with
        what a runtime reports it executed (``Session.layer_kernels``).

        Some kernels exist only for one activation precision (measured by
        benchmarks/cpu_kernels.py): integer convolutions need int8 inputs everywhere, and ONNX
        Runtime fuses low-bit MatMul weights into MatMulNBits only behind float inputs."""
        if bits is None:
            return "float"
        if op in self.needs_int8_activations and activation_bits is None:
            return "float"
        if op in self.needs_float_activations and activation_bits is not None:
            return "float"
        storage = _storage(bits)
        return f"int{storage}" if storage in self.lowbit_kernels.get(op, ()) else "float"

    def runs_as(
        self, op: str, bits: int | None, sparse: bool, activation_bits: int | None = 8
    ) -> str:
        """How this runtime executes a layer: the honest line the report prints per layer."""
        if bits is None:
            how = "float"
        else:
            storage = _storage(bits)
            name = f"int{storage}" + (f" ({bits}-bit range)" if storage != bits else "")
            if self.kernel(op, bits, activation_bits) == "float":
                how = f"{name} weights dequantized to float"
            elif storage in self.faster_than_float.get(op, ()):
                how = f"{name} kernel"
            else:
                how = f"{name} kernel, no faster than float"
        if sparse:
            how += ", 2:4 sparse kernel" if op in self.sparse_2of4 else ", 2:4 zeros run dense"
        return how


def _storage(bits: int) -> int:
    """7-bit codes live in int8, 2- and 3-bit codes in int4."""
    return 8 if bits > 4 else 4


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: tuple[str, ...]
    runtimes: tuple[RuntimeSupport, ...]
    cpu: tuple[str, ...] | None = None  # ISA features the facts were resolved for
    cpu_detected: bool = False  # True: this machine's CPU ("x86-cpu"); False: a named CPU class
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def unavailable_reason(
        self, runtime: str | None = None, host: CpuInfo | None = None
    ) -> str | None:
        """Why this machine cannot stand in for the target device (and, given a runtime name,
        run that runtime), or None if it can. ``host``: the CPU to judge (default: this one).

        A named CPU class is stood in for only by a CPU whose features give the same facts: an
        AVX-512 VNNI box times int8 convs twice as fast as the AVX2 CPU ``x86-cpu-avx2`` means.
        """
        host = host or detect_cpu()
        machine = host.arch
        if machine not in self.arch:
            return f"this machine is {machine}; target {self.name} runs on {'/'.join(self.arch)}"
        if self.cpu is not None and not self.cpu_detected:
            missing = [f for f in self.cpu if f not in host.features]
            here = _runtimes(_parse(self.raw, self.name, host.features))
            differ = _differences(self.runtimes, here)
            if missing or differ:
                isa = ", ".join(sorted(host.features, key=FEATURES.index)) or "no features"
                why = f"lacks {', '.join(missing)}" if missing else f"differs in {differ}"
                return f"this CPU ({isa}) is not a {self.name} CPU: it {why}"
        if runtime is not None:
            from .runtimes import get_runtime

            return get_runtime(runtime).unavailable_reason()
        return None

    def describe_cpu(self) -> str | None:
        """e.g. ``avx2, avx512, vnni, bf16 (detected)`` for the report; None when CPU-independent."""
        if self.cpu is None:
            return None
        return f"{', '.join(self.cpu) or 'no features'} ({'detected' if self.cpu_detected else 'declared'})"


def _choose(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """A fact written as a choice, ``{vnni: 8, default: 7}``: every branch is checked, and the
    first feature the CPU has (``context["features"]``) wins, else ``default``."""
    if isinstance(value, dict) and "default" in value:
        for key in value:
            if key != "default" and key not in FEATURES:
                raise ValueError(
                    f"unknown CPU feature '{key}'{suggest(str(key), FEATURES)}; "
                    f"known: {', '.join(FEATURES)}"
                )
        branches = {key: _choose(v, handler, info) for key, v in value.items()}
        features = (info.context or {}).get("features", frozenset())
        return next((v for k, v in branches.items() if k in features), branches["default"])
    if isinstance(value, dict) and value and all(k in FEATURES for k in value):
        raise ValueError(f"the choice {value} needs a 'default' value")
    return handler(value)


T = TypeVar("T")
Choice = Annotated[T, WrapValidator(_choose)]  # a value, or a choice of values keyed by feature
Op = Literal["Conv", "Gemm", "MatMul", "Gather"]  # the ONNX ops compressible layers export to
# (Gather: an embedding table, its rows gathered by token id)
Bits = Literal[2, 3, 4, 8]  # code widths
Storage = Literal[4, 8]  # the widths codes are stored in (2- and 3-bit codes in INT4)
PerOp = Choice[dict[Op, Choice[list[T]]]]


class RuntimeSchema(BaseModel):
    """One entry of a target file's ``runtimes``; becomes a :class:`RuntimeSupport`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    device: Choice[str] = "CPU"
    weight_bits: Choice[list[Bits]]
    lowbit_kernels: PerOp[Storage] = {}
    faster_than_float: PerOp[Storage] = {}
    sparse_2of4: Choice[list[Op]] = []
    int8_weight_bits: Choice[Literal[7, 8]] = 8
    weight_bits_by_op: PerOp[Bits] = {}
    symmetric_only: Choice[bool] = False
    inference_precision: Choice[str] = "f32"
    needs_int8_activations: Choice[list[Op]] = ["Conv"]
    needs_float_activations: Choice[list[Op]] = []


class TargetFile(BaseModel):
    """A target file. One that ``extends`` another may leave out what that one gives."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    description: str = ""
    extends: str | None = None  # a target whose keys this one takes, its own winning
    arch: list[str] | None = None  # machine names (platform.machine()) the device reports
    cpu: Literal["detect"] | list[str] | None = None  # None: facts independent of the CPU
    runtimes: dict[str, RuntimeSchema] | None = None

    @field_validator("cpu", mode="before")
    @classmethod
    def _features(cls, value: Any) -> Any:
        if value is None or value == "detect":
            return value
        if not isinstance(value, list):
            raise ValueError("must be 'detect' or a list of features")
        for name in value:
            if name not in FEATURES:
                raise ValueError(
                    f"unknown CPU feature '{name}'{suggest(str(name), FEATURES)}; "
                    f"known: {', '.join(FEATURES)}"
                )
        return value


def _builtin_dir():
    return resources.files("edgekd").joinpath("_targets")


def target_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_target(spec: str, cpu: CpuInfo | None = None) -> Target:
    """A built-in target by name, or a target YAML file by path.

    ``cpu``: the CPU that ``cpu: detect`` resolves against (default: this machine's).
    """
    return _build(_read(spec), spec, cpu or detect_cpu())


def _read(spec: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The target's YAML as a dict, each file checked against the schema, with ``extends``
    merged in (its own keys win)."""
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
    except yaml.YAMLError as exc:
        raise InputError(f"target '{spec}' is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"target '{spec}' must be a YAML mapping")
    _parse(raw, spec, frozenset())
    base = raw.get("extends")
    if base is None:
        return raw
    if base in seen:
        raise InputError(f"target '{spec}' extends itself through '{base}'")
    return {**_read(base, (*seen, spec)), **{k: v for k, v in raw.items() if k != "extends"}}


def _parse(raw: dict[str, Any], spec: str, features: frozenset[str]) -> TargetFile:
    """``raw`` checked against the schema, its choices resolved for ``features``."""
    try:
        return TargetFile.model_validate(raw, context={"features": features})
    except ValidationError as exc:
        problem = schema_problem(exc, TargetFile)
        if problem.unknown:
            raise InputError(
                f"target '{spec}': unknown key '{problem.key}'{problem.detail}"
            ) from None
        raise InputError(f"target '{spec}': {problem.key or 'the file'}{problem.detail}") from None


def _build(raw: dict[str, Any], spec: str, host: CpuInfo) -> Target:
    cpu_spec = raw.get("cpu")
    if cpu_spec == "detect":
        features: frozenset[str] = host.features
    else:
        features = frozenset(cpu_spec or ())
    doc = _parse(raw, spec, features)
    for key in ("arch", "runtimes"):
        if getattr(doc, key) is None:
            raise InputError(f"target '{spec}': {key} is required")
    return Target(
        name=doc.name,
        description=doc.description,
        arch=tuple(doc.arch),
        runtimes=_runtimes(doc),
        cpu=None if cpu_spec is None else tuple(sorted(features, key=FEATURES.index)),
        cpu_detected=cpu_spec == "detect",
        raw=raw,
    )


def _runtimes(doc: TargetFile) -> tuple[RuntimeSupport, ...]:
    return tuple(
        RuntimeSupport(name=name, **{key: _frozen(value) for key, value in rt})
        for name, rt in (doc.runtimes or {}).items()
    )


def _frozen(value: Any) -> Any:
    """Lists as tuples, as :class:`RuntimeSupport` holds them."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _differences(planned: tuple[RuntimeSupport, ...], here: tuple[RuntimeSupport, ...]) -> str:
    """e.g. ``openvino inference_precision, faster_than_float``: the facts that differ."""
    return "; ".join(
        f"{a.name} {', '.join(names)}"
        for a, b in zip(planned, here, strict=True)
        if (
            names := [
                f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)
            ]
        )
    )
