"""The training state after every epoch, so a run killed mid-distillation resumes from the last
epoch it finished (``edgekd compress --resume``) instead of from the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path

NAME = "checkpoint.pt"  # in the distill stage's folder; not an output: removed once it is done


class EpochCheckpoint:
    """``key``: what the state depends on (the stage's inputs); a checkpoint of other inputs is
    not resumed from."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint cut short is no checkpoint
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, **state: Any) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, **state}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
