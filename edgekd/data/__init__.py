"""Data: every source becomes the same seeded train/val/test split of float32 arrays."""

from __future__ import annotations

from .sources import load_data
from .splits import DataSplits, Split, split_arrays

__all__ = ["DataSplits", "Split", "load_data", "split_arrays"]
