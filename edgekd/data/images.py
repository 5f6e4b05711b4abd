"""Image folders: labelled (one subfolder per class, images at any depth below it) or not
(images at the top, or a single subfolder), any sizes and formats, turned into the teacher's
inputs by a transform: resize of the shorter side, center crop, scaling to [0, 1], mean and
std. The transform is the recipe's (``data.transform``), else what the teacher declares (timm's
``pretrained_cfg``), else ImageNet's for 3-channel images: a pretrained teacher must see inputs
like its training's.

A folder is decoded once, by worker processes, in split order into an ``.npy`` in edgekd's cache
(keyed by the files' paths, sizes and times and the transform), and the splits are views of it
memory-mapped: a run reads the images it needs batch by batch, and its own memory does not grow
with the folder (``benchmarks/streaming.py``). A later run over the same folder skips decoding."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .splits import DataSplits, Split, split_order

CACHE_FORMAT = 1  # what a cached array holds: raise it when decoding or the transform changes
PARALLEL = 64  # images at least, for decoding in worker processes
WORKERS = 4  # at most
CHUNK = 16  # images per task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 256, "crop": 224}
PAIRS = (("mean", "std"), ("resize", "crop"))  # each pair comes from one source


@dataclass(frozen=True)
class Transform:
    resize: int | None
    crop: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str
    channels: int  # 1 (grayscale) or 3 (RGB): what every image is converted to

    def describe(self) -> str:
        size = f"resize {self.resize}, " if self.resize else ""
        size += f"center crop {self.crop}, " if self.crop else ""
        norm = f"mean {list(self.mean)} std {list(self.std)}" if self.mean else "no mean/std"
        return f"{self.channels}-channel, {size}[0, 1], {norm}, {self.interpolation}"


def declared(teacher: Any) -> dict[str, Any]:
    """The preprocessing a teacher states (timm's ``pretrained_cfg`` / ``default_cfg``), and
    the channels its first convolution takes."""
    from torch import nn

    found: dict[str, Any] = {}
    first = next((m for m in teacher.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels in (1, 3):
        found["channels"] = first.in_channels
    cfg = getattr(teacher, "pretrained_cfg", None) or getattr(teacher, "default_cfg", None)
    if not isinstance(cfg, dict):
        return found
    found.update({k: list(cfg[k]) for k in ("mean", "std") if cfg.get(k)})
    if size := cfg.get("input_size"):
        found["channels"] = int(size[0])
        found["crop"] = int(min(size[-2:]))
        found["resize"] = round(found["crop"] / cfg.get("crop_pct", 0.875))
    if cfg.get("interpolation") in ("nearest", "bilinear", "bicubic"):
        found["interpolation"] = cfg["interpolation"]
    return found


def load_image_folder(
    root: Path, recipe: Any = None, teacher_cfg: dict | None = None
) -> DataSplits:
    """The folder's images as seeded train/val/test splits, with notes of what was assumed."""
    dirs = [d for d in _visible(root) if d.is_dir()]
    loose = [f for f in _visible(root) if _is_image(f)]
    notes = []
    if len(dirs) >= 2 and loose:
        raise InputError(
            f"image folder '{root}' holds images beside class subfolders; move them into one"
        )
    if len(dirs) >= 2:
        files = []
        for label, d in enumerate(dirs):
            found = _images(d)
            if not found:
                raise InputError(f"class folder '{d}' holds no images; remove it or fill it")
            files += [(f, label) for f in found]
    else:
        files = [(f, None) for f in loose + (_images(dirs[0]) if dirs else [])]
        if dirs:
            notes.append(
                f"'{root}' has one subfolder ('{dirs[0].name}'): its images are taken as "
                "unlabelled (a labelled folder has one subfolder per class)"
            )
    if not files:
        raise InputError(
            f"image folder '{root}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    headers = [_header(f) for f, _ in files]  # sizes and modes, without decoding
    transform, whence = _resolve(recipe, teacher_cfg or {}, headers)
    notes.append(f"images: {transform.describe()} ({whence})")
    labels = [label for _, label in files]
    y = None if labels[0] is None else np.asarray(labels, np.int64)
    parts = split_order(root.name, len(files), y)
    x = decoded([files[i][0] for part in parts for i in part], transform)
    ends = np.cumsum([len(p) for p in parts])
    splits = [
        Split(x[end - len(p) : end], None if y is None else y[p])
        for p, end in zip(parts, ends, strict=True)
    ]
    return DataSplits(root.name, *splits, notes=tuple(notes))


def decoded(files: list[Path], transform: Transform) -> np.ndarray:
    """The images, transformed, in this order: a copy-on-write memory map of the cached
    array, decoded first if no earlier run left it."""
    from ..models.demo import cache_dir

    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = json.dumps([CACHE_FORMAT, dataclasses.asdict(transform), stats])
    path = cache_dir() / "images" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
    if not path.is_file():
        images = _decode_all(files, transform)
        first = next(images)
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(files), *first.shape))
            out[0] = first
            for i, image in enumerate(images, 1):
                out[i] = image
            out.flush()
            del out
    return np.load(path, mmap_mode="c")


def _decode_all(files: list[Path], transform: Transform) -> Iterator[np.ndarray]:
    """Each image transformed, in order; by worker processes for a large folder, a few chunks
    ahead of the reader at most, so decoded images never pile up in memory."""
    workers = min(WORKERS, os.cpu_count() or 1)
    if len(files) < PARALLEL or workers < 2:
        yield from _load(files, transform)
        return
    # fork: the workers only decode, and a spawned one would re-run the command line
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: collections.deque = collections.deque()
        for start in range(0, len(files), CHUNK):
            pending.append(pool.submit(_load, files[start : start + CHUNK], transform))
            if len(pending) > 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _load(files: list[Path], transform: Transform) -> list[np.ndarray]:
    return [_apply(_decode(f, transform.channels), transform) for f in files]


def _visible(folder: Path) -> list[Path]:
    """A folder's entries less hidden ones and archivers' leftovers (.DS_Store, ._x.jpg,
    .ipynb_checkpoints, __MACOSX), which would become classes or unreadable images."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX")))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _images(folder: Path) -> list[Path]:
    """The images at any depth below ``folder``, hidden entries left out."""
    found = []
    for entry in _visible(folder):
        found += _images(entry) if entry.is_dir() else [entry] if _is_image(entry) else []
    return found


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) as displayed (EXIF orientation applied) and the mode, read lazily."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn
                size = size[::-1]
            return size, img.mode
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"image '{path}' is unreadable ({exc})") from None


def _decode(path: Path, channels: int):
    """The image upright, in 8 bits, as grayscale or RGB (16-bit ones scaled, not clipped)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16- or 32-bit integers: scale to 8 bits
                wide = np.asarray(img, np.float64)
                top = 65535 if wide.max() > 255 else 255
                img = Image.fromarray(np.uint8(np.clip(wide / top * 255, 0, 255)))
            return img.convert("L" if channels == 1 else "RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"image '{path}' is unreadable ({exc})") from None


def _resolve(recipe: Any, teacher_cfg: dict, headers: list) -> tuple[Transform, str]:
    """Each setting from the recipe, else the teacher, else the defaults; pairs (mean and
    std; resize and crop) from one source; and whence each came."""
    given = {k: v for k, v in (recipe.model_dump() if recipe else {}).items() if v is not None}
    sizes = {size for size, _ in headers}
    gray = all(mode in ("L", "1") or mode.startswith("I") for _, mode in headers)
    channels = given.get("channels") or teacher_cfg.get("channels") or (1 if gray else 3)
    defaults: dict[str, Any] = {"interpolation": "bilinear"}
    if channels == 3:
        defaults.update(mean=IMAGENET["mean"], std=IMAGENET["std"])
    if len(sizes) > 1:  # one size is needed to stack them
        defaults.update(resize=IMAGENET["resize"], crop=IMAGENET["crop"])
    settings, source = {}, {}
    for keys in (*PAIRS, ("interpolation",)):
        for who, values in (("recipe", given), ("teacher", teacher_cfg), ("default", defaults)):
            if any(values.get(k) is not None for k in keys):
                settings.update({k: values.get(k) for k in keys})
                source.update(dict.fromkeys(keys, who))
                break
    if settings.get("resize") and not settings.get("crop"):
        settings["crop"] = settings["resize"] if len(sizes) > 1 else None  # square, to stack
    for key in ("mean", "std"):
        if settings.get(key) is not None and len(settings[key]) != channels:
            raise InputError(
                f"data.transform.{key} ({source[key]}'s) has {len(settings[key])} values for "
                f"the {channels}-channel inputs the teacher takes"
            )
    names = {"recipe": "the recipe", "teacher": "the teacher", "default": "ImageNet's defaults"}
    whence = "; ".join(
        f"{', '.join(k for k in source if source[k] == who)} from {name}"
        for who, name in names.items()
        if who in source.values()
    )
    transform = Transform(
        settings.get("resize"), settings.get("crop"),
        tuple(settings["mean"]) if settings.get("mean") else None,
        tuple(settings["std"]) if settings.get("std") else None,
        settings["interpolation"], channels,
    )  # fmt: skip
    return transform, whence


def _apply(img, t: Transform) -> np.ndarray:
    from PIL import Image

    method = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC}[t.interpolation]  # fmt: skip
    if t.resize:
        w, h = img.size
        scale = t.resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), method)
    if t.crop:
        w, h = img.size
        if min(w, h) < t.crop:
            raise InputError(
                f"an image of {w}x{h} is smaller than the {t.crop}-pixel crop; set "
                "data.transform.resize to at least the crop"
            )
        left, top = (w - t.crop) // 2, (h - t.crop) // 2
        img = img.crop((left, top, left + t.crop, top + t.crop))
    x = np.asarray(img, np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if t.mean:
        mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (t.mean, t.std))
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)
