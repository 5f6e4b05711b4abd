"""A model's inputs, one numpy array per split: a plain array for a model of one input, a
structured array for several, one field per input named as ``forward`` names its argument
(``input_ids``, ``attention_mask``). Slicing, shuffling, tiling and hashing treat both alike;
only the model and runtime boundaries unpack them. Named inputs go by name everywhere (to
``forward`` as keywords, to the runtimes by the exported graph's input names, which are those
argument names), so a tokenizer's order (``token_type_ids`` before ``attention_mask``) cannot
bind an array to the wrong argument."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

# What the model is called with: a tensor, or {argument name: tensor}. A string: torch stays
# unimported here, since the runtimes read inputs on machines without it.
Example = "torch.Tensor | dict[str, torch.Tensor]"

SINGLE = "input"  # the name edgekd exports a model of one input with


def named(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Several equal-length input arrays as one structured array (one array stays plain)."""
    arrays = {name: typed(a) for name, a in arrays.items()}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"inputs differ in length: {sorted(lengths)}")
    dtype = [(name, a.dtype, a.shape[1:]) for name, a in arrays.items()]
    packed = np.empty(lengths.pop(), dtype=dtype)
    for name, a in arrays.items():
        packed[name] = a
    return packed


def feed(x: np.ndarray) -> dict[str, np.ndarray]:
    """Each input as its own contiguous array, by name (``SINGLE`` for a plain array)."""
    if x.dtype.names:
        return {name: typed(np.ascontiguousarray(x[name])) for name in x.dtype.names}
    return {SINGLE: typed(np.ascontiguousarray(x))}


def feed_as(x: np.ndarray, first: str | int) -> dict:
    """``feed(x)`` as a runtime takes it: named inputs by the exported graph's names (theirs),
    a plain array under ``first``, the graph's own name or index for its one input."""
    arrays = feed(x)
    return {first: arrays[SINGLE]} if list(arrays) == [SINGLE] else arrays


def as_example(x: np.ndarray, device: Any = None, float_dtype: Any = None) -> Example:
    """The tensor (one input) or the keyword tensors (several) to call the model with, on
    ``device`` (a ``torch.device``; None: the CPU), floating ones as ``float_dtype`` (None:
    float32)."""
    import torch

    tensors = {
        name: torch.from_numpy(a).to(device, float_dtype if a.dtype.kind == "f" else None)
        for name, a in feed(x).items()
    }
    return tensors if x.dtype.names else tensors[SINGLE]


def call(model: Any, example: Example) -> Any:
    return model(**example) if isinstance(example, dict) else model(example)


def batch_size(example: Example) -> int:
    return len(next(iter(example.values())) if isinstance(example, dict) else example)


def unknown_arguments(model: Any, x: np.ndarray) -> list[str]:
    """The named inputs ``model.forward`` has no argument for (none for a plain array, or a
    forward that takes ``**kwargs``)."""
    if not x.dtype.names:
        return []
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [name for name in x.dtype.names if name not in params]


def shapes(x: np.ndarray) -> str:
    """e.g. ``[3, 224, 224]`` or ``input_ids [128] int64, attention_mask [128] int64``."""
    if not x.dtype.names:
        return f"{list(x.shape[1:])} {x.dtype}"
    return ", ".join(
        f"{name} {list(x.dtype[name].shape)} {x.dtype[name].base}" for name in x.dtype.names
    )


def typed(a: np.ndarray) -> np.ndarray:
    """Floating arrays, and uint8/bool ones (images, masks of pixels), as float32, what the
    exported graph takes; other integers (token ids) as they are."""
    a = np.asarray(a)
    image_like = a.dtype.kind == "b" or a.dtype == np.uint8
    return (
        a.astype(np.float32) if (a.dtype.kind == "f" or image_like) and a.dtype != np.float32 else a
    )


def non_finite(x: np.ndarray) -> int:
    """How many examples hold a NaN or Inf in a floating input."""
    bad = np.zeros(len(x), bool)
    for a in feed(x).values():
        if a.dtype.kind == "f":
            bad |= ~np.isfinite(a.reshape(len(a), -1)).all(1)
    return int(bad.sum())
