"""The Recipe: what the user asks for, as validated YAML (presets, files and ``--set`` overrides).

Each section is a pydantic model that forbids unknown keys and holds its own ranges; a
validation error becomes one line naming the dotted key (``schema_problem``), e.g.
``unknown recipe key 'plan.max_acuracy_drop' (did you mean 'max_accuracy_drop'?)``.
"""

from __future__ import annotations

import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from .errors import InputError, UsageError, suggest


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: such a string is the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"'{pattern}' is not a valid regex ({exc})") from None
    return pattern


Number = Annotated[float, BeforeValidator(_yaml_number)]
Positive = Annotated[Number, Field(gt=0)]
Ratio = Annotated[Number, Field(gt=0, le=1)]  # a fraction of channels kept
Fraction = Annotated[Number, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1)]
BlockSize = Annotated[int, Field(ge=2, multiple_of=2)]
Pattern = Annotated[str, AfterValidator(_regex)]  # a layer-name regex, matched in full


class Section(BaseModel):
    """A part of a recipe: unknown keys are errors, and YAML's types are taken as they are (no
    ``"4"`` for 4, no ``true`` for 1), except numbers YAML 1.1 reads as strings."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PruneRecipe(Section):
    keep_ratio: Ratio = 1.0  # uniform fraction of output channels kept (Torch-Pruning)
    sparsity: Literal["2:4", "none"] = "2:4"  # semi-structured pattern on eligible layers
    # layer-name regexes left unpruned, each matching whole names (``head\..*``, not ``head``)
    # and at least one Conv/Linear layer of the teacher
    skip: list[Pattern] = Field(default_factory=list)


class QuantOverride(Section):
    match: Pattern  # layer-name regex, matching whole names
    weight_bits: Literal[2, 3, 4, 8, "float"] | None = None  # None: keep the recipe's bits
    block_size: BlockSize | None = None  # None: keep the recipe's granularity


class QuantRecipe(Section):
    weight_bits: Literal[2, 3, 4, 8] = 4
    granularity: Literal["per_channel", "block"] = "per_channel"
    block_size: BlockSize = 32  # along the input dimension, when granularity is "block"
    symmetric: bool = False
    activation_bits: Literal[8, 32] = 8  # 32 = float activations
    # embedding tables (nn.Embedding): symmetric codes, one scale per row (token)
    embedding_bits: Literal[8, "float"] = 8
    overrides: list[QuantOverride] = Field(default_factory=list)


class DistillRecipe(Section):
    epochs: Count = 30
    batch_size: Count = 64
    # "auto": the rate among PROBE_LRS whose short trial leaves the student closest to the teacher
    # (2e-3 suits the demo's from-scratch student and collapses a pretrained EfficientNet)
    lr: Positive | Literal["auto"] = "auto"
    patience: Count = 5  # stop after this many epochs without a better validation score
    temperature: Positive = 4.0
    # weight of the KD term; 1 - alpha goes to cross-entropy where labels exist
    alpha: Fraction = 0.8
    seed: int = 0
    # CPU threads for training and its evaluations; None: torch's default (the physical cores).
    # Fewer when the machine is shared: oversubscribed threads slowed one job 15x
    threads: Count | None = None
    # mixed precision while training (autocast; fp16 with gradient scaling): bf16 on GPUs and
    # on CPUs with bf16 kernels. The teacher's outputs, validation and export stay float32
    amp: Literal["off", "bf16", "fp16"] = "off"


class VerifyRecipe(Section):
    min_agreement: Fraction = 0.99  # agreement each export needs with its PyTorch model (task.py)


class BenchRecipe(Section):
    batches: Annotated[list[Count], Field(min_length=1)] = Field(default_factory=lambda: [1, 32])
    warmup: Annotated[int, Field(ge=0)] = 10
    min_runs: Count = 50
    min_seconds: Annotated[Number, Field(ge=0)] = 1.0
    threads: Count | None = None  # None: the runtime's default


class PlanRecipe(Section):
    """The budget the student must meet, or the run fails (the gate stage)."""

    objective: Literal["size", "latency"] = "size"  # latency: slower than the teacher fails
    # points of top-1 accuracy (or agreement, or cosine similarity: task.py) below the teacher
    max_accuracy_drop: Annotated[Number, Field(gt=0, le=100)] = 1.0
    latency_target: Positive | None = None  # student p50 / teacher p50 to reach on every runtime
    # search: measure candidates per layer and pick them (the ``auto`` preset); else the
    # prune/quant sections are the plan
    search: bool = False
    keep_ratios: list[Ratio] = Field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    # the predicted accuracy drop (from sensitivity, before training) the first search may spend,
    # as a multiple of max_accuracy_drop: distillation wins most of it back; later rounds move
    # it by the drop they measure (plan/rounds.py)
    recovery: Positive = 10.0
    max_rounds: Count = 3  # searches, each followed by distillation and the gate


class TransformRecipe(Section):
    """How an image folder's files become the teacher's inputs. Unset keys take what the teacher
    declares (timm's ``pretrained_cfg``), else ImageNet's mean and std for 3-channel images, and
    a resize and center crop only where the images differ in size (ImageNet's 256 / 224)."""

    resize: Count | None = None  # the shorter side, in pixels, before the crop
    crop: Count | None = None  # a center square of this side
    mean: list[Number] | None = None  # per channel, on pixels scaled to [0, 1]
    std: list[Positive] | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic"] | None = None  # default bilinear

    @model_validator(mode="after")
    def _mean_with_std(self) -> TransformRecipe:
        if (self.mean is None) != (self.std is None):
            raise ValueError("set data.transform.mean and data.transform.std together")
        return self


class DataRecipe(Section):
    transform: TransformRecipe = Field(default_factory=TransformRecipe)


class Recipe(Section):
    name: str = "custom"
    description: str = ""
    # what the teacher's outputs are (``task.py``): auto takes one (batch, classes) output as
    # classification logits and anything else as outputs to match; an embedding needs "outputs"
    task: Literal["auto", "classification", "outputs"] = "auto"
    prune: PruneRecipe = Field(default_factory=PruneRecipe)
    quant: QuantRecipe = Field(default_factory=QuantRecipe)
    distill: DistillRecipe = Field(default_factory=DistillRecipe)
    verify: VerifyRecipe = Field(default_factory=VerifyRecipe)
    bench: BenchRecipe = Field(default_factory=BenchRecipe)
    plan: PlanRecipe = Field(default_factory=PlanRecipe)
    data: DataRecipe = Field(default_factory=DataRecipe)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

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
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problem = schema_problem(exc, Recipe)
        if problem.unknown:
            raise UsageError(f"unknown recipe key '{problem.key}'{problem.detail}") from None
        where = f"recipe key '{problem.key}'" if problem.key else "recipe"
        raise UsageError(where + problem.detail) from None


def _set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise UsageError(f"override '{dotted}': '{part}' is not a section")
    data[last] = value


class Problem(NamedTuple):
    """The first thing wrong in a document, for a one-line error."""

    key: str  # dotted, e.g. quant.overrides[0].match; "" for the document itself
    unknown: bool  # an unknown key; ``detail`` then names the nearest valid one, if any
    detail: str  # " must be in (0, 1], got 0", ": why", or " (did you mean 'x'?)"


_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "none_required": "null",
}
_RANGES = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}


def schema_problem(exc: ValidationError, root: type[BaseModel]) -> Problem:
    """``exc`` (from validating a document against ``root``) as one :class:`Problem`.

    A value that fails every form a key may take (``distill.lr``: a number or ``auto``) is one
    problem listing the forms; ranges are written whole, as the schema declares them."""
    errors = exc.errors()
    first = errors[0]
    key, annotation, meta, fields = _locate(first["loc"], root)
    value = first.get("input")
    kind = first["type"]
    if kind == "extra_forbidden":
        return Problem(key, True, suggest(str(first["loc"][-1]), fields))
    if kind == "missing":
        return Problem(key, False, " is required")
    if kind in ("value_error", "assertion_error"):
        why = str(first["ctx"]["error"])
        return Problem(
            key, False, f" {why}, got {value!r}" if why.startswith("must") else f": {why}"
        )
    forms: list[str] = []  # what each form the key may take asks for
    for error in errors:
        if _locate(error["loc"], root)[0] == key:
            forms += _forms(error, annotation, meta)
    if _nullable(annotation):
        forms.append("null")
    forms = list(dict.fromkeys(forms))
    if all(form.startswith("'") or form[0].isdigit() or form == "null" for form in forms):
        rule = f"one of {_join(forms)}" if len(forms) > 1 else forms[0]  # literals
    else:
        rule = " or ".join(forms)
    hint = ""
    if kind == "list_type" and isinstance(value, str):
        hint = f" (write [{value}])"
    elif kind == "literal_error" and isinstance(value, str):
        hint = suggest(value, re.findall(r"'([^']*)'", first["ctx"]["expected"]))
    return Problem(key, False, f" must be {rule}, got {value!r}{hint}")


def _forms(error: dict[str, Any], annotation: Any, meta: list[Any]) -> list[str]:
    """What one failed form of a key asks for: ``["in (0, 1]"]``, or each value of a
    ``Literal`` (``["2", "3", "4", "8"]``)."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "literal_error":
        return re.split(r", | or ", ctx["expected"])
    if kind in _RANGES:
        return [_range(annotation, meta) or error["msg"].removeprefix("Input should be ")]
    if kind == "too_short":
        n = ctx["min_length"]
        return ["a non-empty list" if n == 1 else f"a list of at least {n} items"]
    return [_KINDS.get(kind, error["msg"].removeprefix("Input should be "))]


def _join(items: list[str]) -> str:
    return f"{', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else items[0]


def _locate(loc: tuple, root: type[BaseModel]) -> tuple[str, Any, list[Any], list[str]]:
    """The dotted key an error location names, with the annotation and field metadata of what
    it names and, for the innermost model passed, its field names. Stops at a union's tag."""
    key, annotation, meta, fields = "", root, [], []
    for item in loc:
        inner = _strip(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            fields = list(inner.model_fields)
            key += f".{item}" if key else str(item)
            if item not in inner.model_fields:  # an unknown key: the location ends here
                break
            info: FieldInfo = inner.model_fields[item]
            annotation, meta = info.annotation, list(info.metadata)
        elif typing.get_origin(inner) is list and isinstance(item, int):
            key += f"[{item}]"
            annotation, meta = typing.get_args(inner)[0], []
        elif typing.get_origin(inner) is dict and isinstance(item, str) and item != "[key]":
            key += f".{item}"
            annotation, meta = typing.get_args(inner)[1], []
        else:
            break
    return key, annotation, meta, fields


def _strip(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` and without ``| None``."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) == 1:
                annotation = options[0]
                continue
        return annotation


def _nullable(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def _range(annotation: Any, meta: list[Any]) -> str:
    """e.g. ``in (0, 1]``, ``>= 1`` or ``an even number >= 2``: the bounds a number takes,
    from the schema's constraints (those of a union's members included)."""
    found: dict[str, Any] = {}

    def collect(items: list[Any]) -> None:
        for item in items:
            if isinstance(item, FieldInfo):
                collect(list(item.metadata))
            for name in ("gt", "ge", "lt", "le", "multiple_of"):  # annotated_types' Gt, Le, ...
                if getattr(item, name, None) is not None:
                    found.setdefault(name, getattr(item, name))

    def walk(ann: Any) -> None:
        if typing.get_origin(ann) is Annotated:
            ann, *extra = typing.get_args(ann)
            collect(extra)
            walk(ann)
        elif typing.get_origin(ann) in (typing.Union, types.UnionType):
            for option in typing.get_args(ann):
                walk(option)

    collect(meta)
    walk(annotation)
    low = ("(", found["gt"]) if "gt" in found else ("[", found["ge"]) if "ge" in found else None
    high = (")", found["lt"]) if "lt" in found else ("]", found["le"]) if "le" in found else None
    if low and high:
        bounds = f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    elif low:
        bounds = f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    elif high:
        bounds = f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
    else:
        bounds = ""
    step = found.get("multiple_of")
    if step is None:
        return bounds
    number = "an even number" if step == 2 else f"a multiple of {step:g}"
    return f"{number} {bounds}".strip()
