"""Data sources: ``digits``, an image folder, an ``.npz`` file, or ``package.module:factory``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..specs import import_factory
from .images import declared, load_image_folder
from .inputs import named
from .splits import DataSplits, Split, split_arrays


def load_data(spec: str | None, transform: Any = None, teacher: Any = None) -> DataSplits:
    """``transform``: the recipe's ``data.transform``, and ``teacher`` the model whose declared
    preprocessing fills what it leaves unset; both for image folders only."""
    spec = spec or "digits"
    if spec == "digits":
        return _digits()
    path = Path(spec)
    if path.is_dir():
        return _image_folder(path, transform, teacher)
    if spec.endswith(".npz"):
        return _npz(path)
    if ":" in spec and not path.exists():
        return _factory(spec)
    raise InputError(
        f"data '{spec}' not found; pass 'digits', an image folder (one subfolder per class, or unlabelled images), "
        "an .npz with 'x' (and optional 'y'), or package.module:factory"
    )


def _digits() -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return split_arrays("digits", x, bunch.target)


def _npz(path: Path) -> DataSplits:
    if not path.is_file():
        raise InputError(f"data file '{path}' not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = [n for n in npz.files if n != "y"]
            if "x" in names and len(names) > 1:
                raise InputError(
                    f"data file '{path}' holds 'x' and {', '.join(n for n in names if n != 'x')}: "
                    "one input is 'x'; several are each named after the forward argument it feeds"
                )
            if not names:
                raise InputError(f"data file '{path}' holds no input arrays besides 'y'")
            arrays, y = {n: npz[n] for n in names}, npz.get("y")
    except (OSError, ValueError) as exc:
        raise InputError(f"data file '{path}' is not a readable .npz ({exc})") from None
    try:
        x = named(arrays)  # several arrays: the model's inputs, by name
    except ValueError as exc:
        raise InputError(f"data file '{path}': {exc}") from None
    if y is not None and len(y) != len(x):
        raise InputError(f"data file '{path}': 'y' has {len(y)} labels for {len(x)} inputs")
    return split_arrays(path.stem, x, y)


def _image_folder(root: Path, transform: Any, teacher: Any) -> DataSplits:
    return load_image_folder(root, transform, declared(teacher) if teacher else {})


def _factory(spec: str) -> DataSplits:
    """``factory()`` returns (train, val, test) datasets, or a dict with those keys."""
    result = import_factory(spec, "data")()
    if isinstance(result, dict):
        result = tuple(result.get(k) for k in ("train", "val", "test"))
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise UsageError(f"data factory '{spec}' must return (train, val, test) datasets")
    return DataSplits(spec, *(_materialize(ds, spec) for ds in result))


def _materialize(dataset, spec: str) -> Split:
    """Datasets yielding ``x`` or ``(x, y)`` become arrays (edge calibration sets fit in memory);
    ``x`` may be a dict of named inputs (``input_ids``, ``attention_mask``), each keeping its
    dtype."""
    xs, ys = [], []
    for item in dataset:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        xs.append({k: np.asarray(v) for k, v in x.items()} if isinstance(x, Mapping) else {"x": x})
        ys.append(y)
    if not xs:
        raise InputError(f"data factory '{spec}' returned an empty dataset")
    if len({frozenset(x) for x in xs}) != 1:
        raise InputError(f"data factory '{spec}': examples name different inputs")
    try:
        x = named({name: np.stack([np.asarray(x[name]) for x in xs]) for name in xs[0]})
    except ValueError as exc:
        raise InputError(f"data factory '{spec}': {exc}") from None
    labelled = all(y is not None for y in ys)
    return Split(x, np.asarray([int(y) for y in ys], dtype=np.int64) if labelled else None)
