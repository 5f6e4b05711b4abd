"""edgekd: one command from a trained PyTorch teacher to small, fast, low-bit students for edge devices."""

from __future__ import annotations

__version__ = "0.1.0"


def compress(**kwargs):
    """Run the whole pipeline; the same as ``edgekd compress`` (see :func:`edgekd.pipeline.compress`)."""
    from .pipeline import compress as _compress

    return _compress(**kwargs)


__all__ = ["__version__", "compress"]
