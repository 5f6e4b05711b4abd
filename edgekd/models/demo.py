"""The demo teacher: a small CNN that edgekd trains itself on scikit-learn's bundled digits."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path
from ..data import DataSplits, load_data

DEMO_MIN_ACCURACY = 0.97


class DigitsCNN(nn.Module):
    """~0.16M parameters on 1x8x8 inputs: three conv blocks, then a two-layer classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cache_dir() -> Path:
    root = os.environ.get("EDGEKD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgekd"
    )
    return Path(root)


def demo_teacher(log=print) -> nn.Module:
    """The trained demo CNN, from the cache if an earlier run trained it."""
    path = cache_dir() / "demo-digits-cnn.pt"
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception:  # a stale or damaged cache is rebuilt, never trusted
            log(f"demo teacher cache {path} is unreadable; retraining")
    log("training the demo teacher on scikit-learn digits (once; cached afterwards)")
    torch.manual_seed(0)
    model = DigitsCNN()  # seeded init: every machine trains the same teacher
    accuracy = train_demo(model, load_data("digits"))
    if accuracy < DEMO_MIN_ACCURACY:
        raise RuntimeError(f"demo teacher reached only {accuracy:.3f} test accuracy")
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


def train_demo(model: nn.Module, data: DataSplits, epochs: int = 40, seed: int = 0) -> float:
    """Plain supervised training (Adam + cosine schedule); returns test accuracy."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.test.x)).argmax(1).numpy()
    return float((pred == data.test.y).mean())
