"""``edgekd inspect``: per layer parameters, MACs, sparsity pattern and weight bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .context import Context
from .data import load_data
from .data.inputs import Example, as_example, call
from .errors import ShapeError
from .models import load_student, load_teacher
from .pipeline import check_fit
from .plan import COMPRESSIBLE, Plan
from .prune.sparsity import is_2of4
from .quant import QuantLayer
from .recipe import load_recipe
from .rundir import RunDir


def inspect_target(spec: str, data: str | None = None, trust: bool = False) -> list[dict[str, Any]]:
    """A run directory (its newest student) or a teacher spec."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        run = RunDir.open(path)
        cfg = run.config
        teacher = load_teacher(
            cfg["teacher"], cfg["weights"], cfg["trust_checkpoint"], log=lambda _: None
        )
        recipe = load_recipe(cfg["recipe"], cfg["set"])
        x = load_data(cfg["data"], recipe.data.transform, teacher).train.x
        example = as_example(x[:2])
        plan = Plan.from_dict(Context.read_json_file(path / "plan" / "plan.json"))
        for stage in ("distill", "prune"):
            if run.stage(stage).get("status") == "done":
                model, _ = load_student(teacher, path / stage / "student.pt", plan, example)
                return layer_table(model, as_example(x[:1]))
        return layer_table(teacher, as_example(x[:1]))
    teacher = load_teacher(spec, None, trust, log=lambda _: None)
    splits = load_data(data, None, teacher)
    try:
        check_fit(teacher, splits, data or "digits")
    except ShapeError as exc:
        if data is not None:
            raise
        raise ShapeError(f"{exc.message}; pass --data with the teacher's inputs") from None
    return layer_table(teacher, as_example(splits.train.x[:1]))


def layer_table(model: nn.Module, example: Example) -> list[dict[str, Any]]:
    """Per layer, on one input (``example``, a batch of one)."""
    macs: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, _i, out, name=name: macs.__setitem__(name, _macs(mod, out))
        )
        for name, m in model.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, COMPRESSIBLE):
            continue
        w = m.weight.detach()
        zeros = float((w == 0).float().mean())
        rows.append(
            {
                "layer": name,
                "type": type(m).__name__,
                "weight_shape": list(w.shape),
                "params": sum(p.numel() for p in m.parameters(recurse=False)),
                "macs": macs.get(name, 0),
                "sparsity": "2:4"
                if zeros >= 0.5 and is_2of4(w)
                else ("dense" if zeros == 0 else f"{zeros:.0%} zeros"),
                "weight_bits": m.weight_format.bits if isinstance(m, QuantLayer) else 32,
            }
        )
    return rows


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates for one input: output elements x weights feeding each."""
    per_output = module.weight[0].numel()  # in/groups * kernel for convs, in_features for Linear
    return int(out[0].numel() * per_output)
