"""Data: every source becomes the same seeded train/val/test split of input arrays (float32,
or named inputs keeping their dtypes: ``inputs``)."""

from __future__ import annotations

from .sources import load_data
from .splits import DataSplits, Split, split_arrays

__all__ = ["DataSplits", "Split", "load_data", "split_arrays"]
