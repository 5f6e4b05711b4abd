"""A model's outputs as numpy, the way its inputs are (``data.inputs``): a plain float32 array
for a model of one output, a structured array for several, one field per output named as the
exported graph names it (a dict's keys, ``output_0``, ``output_1``... for a tuple). PyTorch's
outputs and each runtime's are packed alike, so they compare field by field. Torch-free: the
runtimes pack theirs on machines without it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import StageError


def output_names(out: Any) -> tuple[str, ...] | None:
    """The outputs' names from what ``forward`` returned (one tensor: ``("output",)``), or None
    when it is not a tensor, a tuple/list of tensors or a dict of them."""
    if _is_tensor(out):
        return ("output",)
    if isinstance(out, Mapping) and out and all(_is_tensor(v) for v in out.values()):
        return tuple(str(k) for k in out)
    if isinstance(out, (tuple, list)) and out and all(_is_tensor(v) for v in out):
        return tuple(f"output_{i}" for i in range(len(out)))
    return None


def flatten(out: Any) -> list:
    """The output tensors in ``output_names`` order."""
    if isinstance(out, Mapping):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def pack(names: list[str] | tuple[str, ...], arrays: list[np.ndarray]) -> np.ndarray:
    """Outputs as one array: plain for one, structured (a field per name) for several."""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    packed = np.empty(
        len(arrays[0]),
        dtype=[(n, a.dtype, a.shape[1:]) for n, a in zip(names, arrays, strict=True)],
    )
    for name, a in zip(names, arrays, strict=True):
        packed[name] = a
    return packed


def fields(a: np.ndarray) -> list[np.ndarray]:
    """Each output's array (``pack`` undone)."""
    return [np.ascontiguousarray(a[n]) for n in a.dtype.names] if a.dtype.names else [a]


def paired(pred: np.ndarray, reference: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, pred's array, reference's array) per output, matched by name: a graph whose outputs
    were renamed or reordered must not be compared output against another output."""
    if pred.dtype.names != reference.dtype.names:
        raise StageError(
            f"outputs {pred.dtype.names or 'one'} are compared with outputs "
            f"{reference.dtype.names or 'one'}: re-export so both name them alike"
        )
    return list(
        zip(reference.dtype.names or ("output",), fields(pred), fields(reference), strict=True)
    )


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numpy")
