"""The context every stage receives: run directory, recipe, plan, teacher, data and a logger."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .data import DataSplits
from .data.inputs import Example, as_example
from .plan import Plan
from .ranks import Ranks
from .recipe import Recipe
from .rundir import RunDir
from .targets import Target
from .task import Task

# progress(description, total) -> a context whose value is advance(n=1); the CLI draws it with
# rich, with the ETA and the rate (distillation counts examples).
Progress = Callable[[str, int], AbstractContextManager[Callable[..., None]]]


def no_progress(_description: str, _total: int) -> AbstractContextManager[Callable[..., None]]:
    return nullcontext(lambda _n=1: None)


@dataclass
class Context:
    run: RunDir
    recipe: Recipe
    targets: list[Target]
    teacher: nn.Module
    data: DataSplits
    space: Plan  # the recipe resolved for the targets: each layer's candidates
    task: Task  # what the teacher's outputs are, and so how students are trained and judged
    log: Callable[[str], None] = print
    progress: Progress = no_progress
    stage: str = ""
    outputs: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    round: int = 0  # the plan search's round (plan/rounds.py)
    budget_pts: float | None = None  # its damage budget after round 1; None: the recipe's
    ranks: Ranks = field(default_factory=Ranks)  # under torchrun, this rank (0) and the others
    _plan: tuple[int, Plan] | None = field(default=None, repr=False)

    @property
    def plan(self) -> Plan:
        """The plan stage's ``plan.json``: one choice per layer, read by every later stage."""
        path = self.path_of("plan", "plan.json")
        stamp = path.stat().st_mtime_ns
        if self._plan is None or self._plan[0] != stamp:
            self._plan = (stamp, Plan.from_dict(self.read_json_file(path)))
        return self._plan[1]

    @property
    def example(self) -> Example:
        """A batch of two real inputs: tracing needs one, and batch 2 keeps exported batch dims dynamic."""
        return as_example(self.data.train.x[:2])

    def out(self, name: str, stage_dir: bool = True) -> Path:
        """A path this stage writes (registered for the manifest); under its own folder by default."""
        path = (self.run.path / self.stage / name) if stage_dir else (self.run.path / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.outputs.append(path)
        return path

    def path_of(self, stage: str, name: str) -> Path:
        """A file an earlier stage wrote."""
        return self.run.path / stage / name

    def read_json(self, stage: str, name: str) -> Any:
        return self.read_json_file(self.path_of(stage, name))

    @staticmethod
    def read_json_file(path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))
