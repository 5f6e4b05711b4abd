"""A zoo of the constructs real architectures are built from, each written compactly as a small
classifier on (3, 16, 16) inputs: the families of timm and torchvision without installing them
(their wheels pull a multi-GB CUDA build of torch). Random init; ``ZOO`` maps a name to its
factory, ``package.module:factory`` style (``zoo:mobilenet_v3``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 10


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project, skip."""

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(
            nn.Conv2d(channels, expanded, 1, bias=False), nn.BatchNorm2d(expanded), nn.Hardswish()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded),
            nn.Hardswish(),
        )
        self.se = SqueezeExcite(expanded, 8)
        self.project = nn.Sequential(
            nn.Conv2d(expanded, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.blocks = nn.Sequential(InvertedResidual(16, 48), InvertedResidual(16, 64))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Conv2dSame(nn.Conv2d):
    """TensorFlow's 'SAME' padding, computed in ``forward`` (EfficientNet ports, timm)."""

    def forward(self, x):
        pad = [max((-(-s // st) - 1) * st + (k - 1) * d + 1 - s, 0) for s, st, k, d in zip(
            x.shape[-2:], self.stride, self.kernel_size, self.dilation, strict=True
        )]  # fmt: skip
        x = F.pad(x, [pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SamePadding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2dSame(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU6(),
            Conv2dSame(16, 32, 3, stride=2), nn.BatchNorm2d(32), nn.ReLU6(),
        )  # fmt: skip
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm and its activation in one module, as timm's ``BatchNormAct2d`` is."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class ResNeXt(nn.Module):
    """Grouped 3x3 convs behind fused BatchNorm+activation modules, with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.stem_bn = BatchNormAct2d(32)
        self.conv1 = nn.Conv2d(32, 64, 1, bias=False)
        self.bn1 = BatchNormAct2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, groups=8, bias=False)
        self.bn2 = BatchNormAct2d(64)
        self.conv3 = nn.Conv2d(64, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.stem_bn(self.stem(x))
        y = self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))
        return self.fc(F.relu(x + y).mean((2, 3)))


class ResNet(nn.Module):
    """Two basic blocks, the second with a strided 1x1 downsample on its skip."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a1, self.a2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.b1 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 1, stride=2)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(F.relu(self.a1(x))))
        x = F.relu(self.down(x) + self.b2(F.relu(self.b1(x))))
        return self.fc(x.mean((2, 3)))


class ConvNeXt(nn.Module):
    """Channel-last MLP blocks: depthwise conv, permute to NHWC, LayerNorm, Linear-GELU-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, stride=4)
        self.dw = nn.Conv2d(32, 32, 7, padding=3, groups=32)
        self.norm = nn.LayerNorm(32)
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(128, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.patch(x)
        y = self.fc2(F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return self.head((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


class RelPosAttention(nn.Module):
    """Windowed self-attention with a relative position bias table, its gathered bias cached on
    first use (Swin, BEiT): the cache is a tensor made in ``forward``, not a parameter."""

    def __init__(self, dim: int = 32, heads: int = 4, side: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * side - 1) ** 2, heads) * 0.02)
        coords = torch.stack(
            torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        ).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + side - 1
        self.register_buffer("index", rel[..., 0] * (2 * side - 1) + rel[..., 1], persistent=False)
        self._bias: torch.Tensor | None = None

    def bias(self) -> torch.Tensor:
        if self._bias is None:
            self._bias = self.table[self.index].permute(2, 0, 1)
        return self._bias

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + self.bias()
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class SwinLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.attn = RelPosAttention()
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class Linear(nn.Linear):
    """timm's ``Linear``: a subclass with its own ``forward``."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SharedLayers(nn.Module):
    """A module called twice, two layers with equal weights, a subclassed Linear, and a layer
    (a pooler) the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.shared = nn.Linear(16, 16)
        self.left, self.right = nn.Linear(16, 32), nn.Linear(16, 32)
        self.right.load_state_dict(self.left.state_dict())
        self.head = Linear(32, CLASSES)
        self.pooler = nn.Linear(32, 32)  # loaded with the weights, never called

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = self.shared(F.relu(self.shared(x)))
        return self.head((F.relu(self.left(x)) + torch.tanh(self.right(x))).mean(1))


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the tokens of a (batch, tokens, features) Linear output: its axis is not
    the Linear's output axis, so it cannot fold into the Linear's weights."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.fc = nn.Linear(16, 24)
        self.bn = nn.BatchNorm1d(16)  # over the 16 tokens
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(F.relu(self.bn(self.fc(x))).mean(1))


class SelfAttention(nn.Module):
    """Hugging Face's BERT self-attention: separate query/key/value, reshaped by its declared
    ``num_attention_heads`` and ``attention_head_size`` (heads are pruned whole)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = dim
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x, keep):
        b, n, _ = x.shape
        shape = (b, n, self.num_attention_heads, self.attention_head_size)
        q, k, v = (
            layer(x).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value)
        )
        scores = (q @ k.transpose(-2, -1)) / self.attention_head_size**0.5
        context = scores.masked_fill(~keep, -1e4).softmax(-1) @ v
        return context.transpose(1, 2).reshape(b, n, self.all_head_size)


class TinyBert(nn.Module):
    """A BERT classifier on token ids and an attention mask (int64 inputs): embeddings, two
    encoder layers with masked attention, masked mean pooling; and a pooler whose output the
    classifier never reads, as Hugging Face's BertModel computes one under a mean-pooling head."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, tokens: int = 12) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(tokens, dim)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attention": SelfAttention(dim, heads),
                    "out": nn.Linear(dim, dim),
                    "norm1": nn.LayerNorm(dim),
                    "ffn1": nn.Linear(dim, 2 * dim),
                    "ffn2": nn.Linear(2 * dim, dim),
                    "norm2": nn.LayerNorm(dim),
                }
            )
            for _ in range(2)
        )
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, CLASSES)

    def forward(self, input_ids, attention_mask):
        n = input_ids.shape[1]
        x = self.tokens(input_ids) + self.positions(torch.arange(n, device=input_ids.device))
        keep = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer["norm1"](x + layer["out"](layer["attention"](x, keep)))
            x = layer["norm2"](x + layer["ffn2"](F.gelu(layer["ffn1"](x))))
        self.pooled = torch.tanh(self.pooler(x[:, 0]))  # computed, never read by the head
        mask = attention_mask[..., None].to(x.dtype)
        return self.classifier((x * mask).sum(1) / mask.sum(1))


class Detector(nn.Module):
    """A detection-style head: a strided conv backbone, then per anchor and cell the class
    scores and box offsets of two 1x1 convs, returned as a dict of two (batch, anchors, ...)
    tensors (the ``outputs`` task)."""

    def __init__(self, anchors: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.scores = nn.Conv2d(32, anchors * CLASSES, 1)
        self.boxes = nn.Conv2d(32, anchors * 4, 1)

    def forward(self, x):
        f = self.backbone(x)
        per_anchor = lambda t, n: t.permute(0, 2, 3, 1).reshape(x.shape[0], -1, n)  # noqa: E731
        return {
            "scores": per_anchor(self.scores(f), CLASSES),
            "boxes": per_anchor(self.boxes(f), 4),
        }


def _factory(cls: type[nn.Module]):
    def make() -> nn.Module:
        torch.manual_seed(0)
        model = cls()
        with torch.no_grad():  # BatchNorm statistics unlike the identity, so folding shows
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        return model.eval()

    make.__name__ = cls.__name__
    return make


ZOO = {
    "mobilenet_v3": MobileNetV3,
    "same_padding": SamePadding,
    "resnext": ResNeXt,
    "resnet": ResNet,
    "convnext": ConvNeXt,
    "swin": SwinLike,
    "shared_layers": SharedLayers,
    "token_batchnorm": TokenBatchNorm,
    "tiny_bert": TinyBert,
    "detector": Detector,
}
TOKEN_INPUTS = {"tiny_bert"}  # take token_data(), not data()
globals().update({name: _factory(cls) for name, cls in ZOO.items()})


def data(count: int = 256, seed: int = 0):
    """Unlabelled (3, 16, 16) inputs: smooth random images, so convolutions see structure."""
    gen = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(count, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    x = (x + 0.3 * torch.randn(count, 3, 16, 16, generator=gen)).numpy()
    return {"x": x}


def token_data(count: int = 256, tokens: int = 12, vocab: int = 100, seed: int = 0):
    """Token ids and attention masks: sentences of 4-12 tokens, padded with id 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, tokens + 1, count)
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, (count, tokens)) * mask
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}
