"""Predictions, the same way for PyTorch models and runtime sessions (judged by ``task``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.inputs import as_example, call
from .data.outputs import flatten, output_names, pack

RUNTIME_BATCH = 64  # verify feeds runtimes this many inputs per call; engines must accept it


def max_batch(bench_batches: list[int]) -> int:
    """The largest batch an artifact must accept: verify's and every bench batch."""
    return max(RUNTIME_BATCH, *bench_batches)


def predict(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    batch: int = 256,
    into: Path | None = None,
) -> np.ndarray:
    """``fn`` over ``x`` in batches; ``into``: written to that ``.npy`` and memory-mapped from it,
    so the outputs of a large split (a teacher's, cached for training) are not held in memory."""
    if into is None:
        return np.concatenate([_float32(fn(x[i : i + batch])) for i in range(0, len(x), batch)])
    first = _float32(fn(x[:batch]))
    out = np.lib.format.open_memmap(into, "w+", first.dtype, (len(x), *first.shape[1:]))
    out[: len(first)] = first
    for i in range(batch, len(x), batch):
        out[i : i + batch] = _float32(fn(x[i : i + batch]))
    out.flush()
    return out


def torch_fn(
    model: nn.Module, device: torch.device | None = None, float_dtype: torch.dtype | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The model as runtimes' sessions run: numpy inputs in, packed outputs out (``data.outputs``);
    ``device``: where the model is, and the inputs go; ``float_dtype``: the model's, which
    floating inputs are cast to (a model in float64)."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = call(model, as_example(x, device, float_dtype))
            return pack(output_names(out), [t.float().cpu().numpy() for t in flatten(out)])

    return run


def _float32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.names else np.asarray(a, dtype=np.float32)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
