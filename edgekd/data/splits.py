"""Seeded splits, so every stage and every resumed run sees the same examples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .inputs import non_finite, shapes, typed


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, ...): float32, or a structured array of named inputs (``inputs``)
    y: np.ndarray | None  # int64 labels, or None: the teacher's outputs are the targets

    def __post_init__(self) -> None:  # stacked HWC images are strided: keep one memory layout
        object.__setattr__(self, "x", np.ascontiguousarray(self.x))

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    notes: tuple[str, ...] = ()  # what loading assumed (an image folder's transform, ...)

    @property
    def labelled(self) -> bool:
        return self.train.y is not None

    @property
    def input_shapes(self) -> str:
        """Each input's shape past the batch, for messages (``inputs.shapes``)."""
        return shapes(self.train.x)

    def fingerprint(self) -> str:
        """A hash of every input and label, read in chunks: an image cache on disk is hashed
        without being held in memory."""
        digest = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for start in range(0, len(split.x), HASH_CHUNK):
                digest.update(np.ascontiguousarray(split.x[start : start + HASH_CHUNK]).data)
            if split.y is not None:
                digest.update(np.ascontiguousarray(split.y).tobytes())
        return digest.hexdigest()


HASH_CHUNK = 256  # examples per read when hashing


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray | None,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
) -> DataSplits:
    """Shuffle once with a fixed seed, then cut train/val/test (stratified when labelled)."""
    x = np.ascontiguousarray(x if x.dtype.names else typed(x))
    if bad := non_finite(x):
        raise InputError(
            f"data '{name}' has NaN/Inf values in {bad} of {len(x)} inputs; clean or drop them"
        )
    y = None if y is None else np.asarray(y, dtype=np.int64)
    parts = split_order(name, len(x), y, seed, val, test)
    return DataSplits(name, *(Split(x[p], None if y is None else y[p]) for p in parts))


def split_order(
    name: str, n: int, y: np.ndarray | None, seed: int = 0, val: float = 0.15, test: float = 0.15
) -> list[np.ndarray]:
    """The train, val and test indices of ``n`` examples, known before any input is read (an
    image folder is decoded straight into split order)."""
    rng = np.random.default_rng(seed)
    if y is None:
        order = rng.permutation(n)
        n_test, n_val = round(n * test), round(n * val)
        parts = [order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]]
    else:
        parts = [[], [], []]
        for cls in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == cls))
            n_test, n_val = round(len(idx) * test), round(len(idx) * val)
            for part, chosen in zip(
                parts,
                (idx[n_test + n_val :], idx[n_test : n_test + n_val], idx[:n_test]),
                strict=True,
            ):
                part.extend(chosen)
        parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    if min(len(p) for p in parts) == 0:
        raise InputError(
            f"data '{name}' has too few examples ({n}) for a train/val/test split; give it at least 20"
        )
    return parts
