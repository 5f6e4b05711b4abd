"""Memory of a run over an image folder as the folder grows: peak resident memory of ``edgekd
compress`` over generated JPEGs of mixed sizes (label-free), split into anonymous memory (the
process's own) and file-backed pages (the memory-mapped image cache, which the kernel reclaims
under pressure), with distillation's throughput. Flat anonymous memory is the goal: the images
are decoded once into an on-disk cache and read from it batch by batch. Below about 2,000
images a split is smaller than one prediction batch (256 examples), so its forward passes, and
the memory they take while they run, are smaller: compare sizes above that.

Run from the repository root::

    python benchmarks/streaming.py                   # 500, 5000 and 20000 images
    python benchmarks/streaming.py --counts 5000 50000

Each run is a fresh process, one at a time; its memory is sampled every 50 ms from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

CROP = 64  # what the images are resized and cropped to


def teacher() -> nn.Module:
    """A small CNN at ``CROP`` pixels (random weights: memory, not accuracy, is measured)."""
    torch.manual_seed(0)
    layers, width = [], 3
    for out in (16, 32, 64):
        layers += [nn.Conv2d(width, out, 3, 2, 1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def make_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of 48-160 pixels a side, smooth noise, so each compresses like a photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = rng.integers(48, 161, 2)
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((int(w), int(h)), Image.Resampling.BILINEAR)
        img.save(folder / f"{i:06d}.jpg", quality=85)


def measure(folder: Path, out: Path, cache: Path) -> dict:
    """Run ``edgekd compress`` in a child process and sample its memory until it exits."""
    command = [
        sys.executable, "-m", "edgekd", "compress", "--teacher", "benchmarks.streaming:teacher",
        "--data", str(folder), "--recipe", "w8a8", "--out", str(out),
        "--set", f"data.transform.resize={CROP}", "--set", f"data.transform.crop={CROP}",
        "--set", "distill.epochs=1", "--set", "plan.max_accuracy_drop=100",
        "--set", "bench.batches=[1]", "--set", "bench.min_seconds=0.1",
    ]  # fmt: skip
    env = {**os.environ, "EDGEKD_CACHE": str(cache)}
    began = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except FileNotFoundError:
            break
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in peak:
                peak[key] = max(peak[key], int(value.split()[0]) * 1024)
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    if child.wait() != 0:
        raise SystemExit(f"compress failed on {folder}: {child.stderr.read().decode()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    distill = manifest["stages"]["distill"]["seconds"]
    train = round(len(list(folder.iterdir())) * 0.7)
    return {"seconds": seconds, "distill_ips": train / distill, **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", nargs="+", type=int, default=[500, 5000, 20000])
    args = parser.parse_args()
    table = Table(
        "images", "cache (MB)", "peak RSS (MB)", "anonymous (MB)", "file-backed (MB)",
        "distill images/s", "run s",
        title=f"edgekd compress over JPEG folders ({CROP}-px crops, w8a8, 1 epoch)",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgekd-streaming-") as tmp:
        for count in args.counts:
            folder = Path(tmp, f"jpegs-{count}")
            make_jpegs(folder, count)
            cache = Path(tmp, f"cache-{count}")
            m = measure(folder, Path(tmp, f"run-{count}"), cache)
            cached = sum(f.stat().st_size for f in cache.rglob("*.npy"))
            mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
            table.add_row(
                str(count), mb(cached), mb(m["VmRSS"]), mb(m["RssAnon"]), mb(m["RssFile"]),
                f"{m['distill_ips']:.0f}", f"{m['seconds']:.0f}",
            )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
