"""Attention heads removed whole, with Torch-Pruning following their q/k/v and output layers.

Why whole heads: an attention layer reshapes its query, key and value projections into heads of
a fixed width and scales their scores by it. Channels chosen one by one ignore that split, so a
head left narrower breaks the reshape, or silently changes what the layer computes. Removing
head ``h`` removes the same width-wide slice of every projection; Torch-Pruning couples them
(through the score and context matmuls) with the output projection's input channels.

An attention layer is found by what it declares: a head count (``num_attention_heads`` in
Hugging Face models, ``num_heads`` in timm's, ...) beside q/k/v ``Linear`` children of equal
width, or one fused ``qkv``. Its head count is updated after pruning, so a forward that
reshapes by it still runs; one that computes its head width some other way fails the pruning
check (``structured``) and keeps its channels.
"""

from __future__ import annotations

import dataclasses

import torch
import torch_pruning as tp
from torch import nn

HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads", "heads")
PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"), ("qkv",))


@dataclasses.dataclass(eq=False)
class Attention:
    module: nn.Module
    count: str  # the attribute holding its head count
    projections: list[nn.Linear]
    width: int  # of one head, in output channels of each projection

    @property
    def parts(self) -> int:
        """Projections stacked in the first one's outputs: 3 for a fused qkv."""
        return 3 if len(self.projections) == 1 else 1

    @property
    def heads(self) -> int:
        return self.projections[0].out_features // (self.width * self.parts)

    def channels(self, heads: list[int]) -> list[int]:
        """The first projection's output channels of ``heads``."""
        per_part = self.heads * self.width
        return [part * per_part + h * self.width + i
                for part in range(self.parts) for h in heads for i in range(self.width)]  # fmt: skip

    def weakest(self, graph: tp.DependencyGraph, count: int) -> list[int]:
        """The ``count`` heads of least weight magnitude over every layer they touch."""
        first = self.projections[0]
        everything = list(range(first.out_features))
        group = graph.get_pruning_group(first, tp.prune_linear_out_channels, idxs=everything)
        scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
        per_head = scores.view(self.parts, self.heads, self.width).sum((0, 2))
        return sorted(int(h) for h in torch.argsort(per_head)[:count])

    def sync(self) -> None:
        """The module's head count (and Hugging Face's ``all_head_size``) as its weights now are."""
        setattr(self.module, self.count, self.heads)
        if isinstance(getattr(self.module, "all_head_size", None), int):
            self.module.all_head_size = self.heads * self.width


def find_attention(model: nn.Module) -> list[Attention]:
    """The attention layers of ``model`` whose heads can be removed whole (module docstring)."""
    found = []
    for module in model.modules():
        count = next((a for a in HEAD_COUNTS if _positive_int(getattr(module, a, None))), None)
        for names in PROJECTIONS if count else ():
            layers = [getattr(module, n, None) for n in names]
            if not all(isinstance(m, nn.Linear) for m in layers):
                continue
            out = layers[0].out_features
            stacked = getattr(module, count) * (3 if len(layers) == 1 else 1)
            if all(m.out_features == out for m in layers) and out % stacked == 0:
                found.append(Attention(module, count, layers, out // stacked))
            break
    return found


def prune_heads(
    graph: tp.DependencyGraph, attention: Attention, keep_ratio: float
) -> list[int] | None:
    """Remove the weakest heads of ``attention`` down to ``keep_ratio`` of them (one at least);
    the first projection's removed output channels, or None where none go."""
    removed = attention.heads - max(1, round(attention.heads * keep_ratio))
    if removed <= 0:
        return None
    idxs = attention.channels(attention.weakest(graph, removed))
    graph.get_pruning_group(attention.projections[0], tp.prune_linear_out_channels, idxs).prune()
    attention.sync()
    return idxs


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
