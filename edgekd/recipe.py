"""The Recipe: what the user asks for, as validated YAML (presets, files and ``--set`` overrides)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import InputError, UsageError, suggest


@dataclass
class PruneRecipe:
    keep_ratio: float = 1.0  # uniform fraction of output channels kept (Torch-Pruning)
    sparsity: Literal["2:4", "none"] = "2:4"  # semi-structured pattern on eligible layers
    skip: list[str] = field(default_factory=list)  # layer-name regexes left unpruned


@dataclass
class QuantOverride:
    match: str  # layer-name regex
    weight_bits: Literal[2, 3, 4, 8, "float"] | None = None  # None: keep the recipe's bits
    block_size: int | None = None  # None: keep the recipe's granularity


@dataclass
class QuantRecipe:
    weight_bits: Literal[2, 3, 4, 8] = 4
    granularity: Literal["per_channel", "block"] = "per_channel"
    block_size: int = 32  # along the input dimension, when granularity is "block"
    symmetric: bool = False
    activation_bits: Literal[8, 32] = 8  # 32 = float activations
    overrides: list[QuantOverride] = field(default_factory=list)


@dataclass
class DistillRecipe:
    epochs: int = 30
    batch_size: int = 64
    # "auto": the rate among PROBE_LRS whose short trial leaves the student closest to the teacher
    # (2e-3 suits the demo's from-scratch student and collapses a pretrained EfficientNet)
    lr: float | Literal["auto"] = "auto"
    patience: int = 5  # stop after this many epochs without a better validation score
    temperature: float = 4.0
    alpha: float = 0.8  # weight of the KD term; 1 - alpha goes to cross-entropy where labels exist
    seed: int = 0


@dataclass
class VerifyRecipe:
    min_agreement: float = 0.99  # top-1 agreement each export needs with its PyTorch model


@dataclass
class BenchRecipe:
    batches: list[int] = field(default_factory=lambda: [1, 32])
    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    threads: int | None = None  # None: the runtime's default


@dataclass
class PlanRecipe:
    """The budget the student must meet, or the run fails (the gate stage)."""

    objective: Literal["size", "latency"] = "size"  # latency: slower than the teacher fails
    max_accuracy_drop: float = 1.0  # points of top-1 accuracy (or agreement) below the teacher
    latency_target: float | None = None  # student p50 / teacher p50 to reach on every runtime
    # search: measure candidates per layer and pick them (the ``auto`` preset); else the
    # prune/quant sections are the plan
    search: bool = False
    keep_ratios: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    # the predicted accuracy drop (from sensitivity, before training) the search may spend, as a
    # multiple of max_accuracy_drop: distillation wins most of it back; halved at each back-off
    recovery: float = 10.0
    max_rounds: int = 3  # searches, each followed by distillation, before the gate gives up


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    prune: PruneRecipe = field(default_factory=PruneRecipe)
    quant: QuantRecipe = field(default_factory=QuantRecipe)
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    verify: VerifyRecipe = field(default_factory=VerifyRecipe)
    bench: BenchRecipe = field(default_factory=BenchRecipe)
    plan: PlanRecipe = field(default_factory=PlanRecipe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def presets() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("edgekd.recipes").iterdir() if p.name.endswith(".yaml")
    )


def load_recipe(spec: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Resolve a preset name or a YAML file, then apply ``KEY=VALUE`` overrides."""
    spec = spec or "auto"
    if spec.endswith((".yaml", ".yml")) or Path(spec).exists():
        path = Path(spec)
        if not path.is_file():
            raise InputError(
                f"recipe file '{spec}' not found; pass a YAML file or one of: {', '.join(presets())}"
            )
        text = path.read_text(encoding="utf-8")
    elif spec in presets():
        text = (
            resources.files("edgekd.recipes").joinpath(f"{spec}.yaml").read_text(encoding="utf-8")
        )
    else:
        raise UsageError(
            f"unknown recipe preset '{spec}'{suggest(spec, presets())}; presets: {', '.join(presets())}"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(
            f"recipe '{spec}' is not valid YAML ({str(exc).splitlines()[0]})"
        ) from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(
                f"override '{item}' must look like KEY=VALUE, e.g. quant.weight_bits=3"
            )
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UsageError(f"override '{item}': the value is not valid YAML") from None
        _set_path(data, key.strip(), parsed)
    return _build(Recipe, data, "")


def _set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise UsageError(f"override '{dotted}': '{part}' is not a section")
    data[last] = value


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise UsageError(f"recipe section '{where or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UsageError(f"unknown recipe key '{path}'{suggest(str(key), names)}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field (e.g. an override's 'match') is missing
        raise UsageError(f"recipe section '{where}': {exc}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, path)
        for option in options:  # the first form the value takes, e.g. a float or "auto"
            try:
                return _coerce(option, value, path)
            except UsageError:
                pass
        forms = [
            " or ".join(map(repr, typing.get_args(o))) if typing.get_origin(o) is Literal
            else o.__name__ for o in options
        ]  # fmt: skip
        raise UsageError(f"recipe key '{path}' must be {' or '.join(forms)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UsageError(f"recipe key '{path}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"recipe key '{path}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UsageError(f"recipe key '{path}' must be {hint.__name__}, got {value!r}")
    return value
