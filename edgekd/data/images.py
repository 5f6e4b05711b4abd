"""Image folders: labelled (one subfolder per class) or not (images at the top, or a single
subfolder), any sizes and formats, turned into the teacher's inputs by a transform: resize of
the shorter side, center crop, scaling to [0, 1], mean and std. The transform is the recipe's
(``data.transform``), else what the teacher declares (timm's ``pretrained_cfg``), else
ImageNet's for 3-channel images: a pretrained teacher must see inputs like its training's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 256, "crop": 224}


@dataclass(frozen=True)
class Transform:
    resize: int | None
    crop: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str

    def describe(self) -> str:
        size = f"resize {self.resize}, " if self.resize else ""
        size += f"center crop {self.crop}, " if self.crop else ""
        norm = f"mean {list(self.mean)} std {list(self.std)}" if self.mean else "no mean/std"
        return f"{size}[0, 1], {norm} ({self.interpolation})"


def declared(teacher: Any) -> dict[str, Any]:
    """The preprocessing a teacher states (timm's ``pretrained_cfg`` / ``default_cfg``)."""
    cfg = getattr(teacher, "pretrained_cfg", None) or getattr(teacher, "default_cfg", None)
    if not isinstance(cfg, dict):
        return {}
    found: dict[str, Any] = {k: list(cfg[k]) for k in ("mean", "std") if cfg.get(k)}
    if size := cfg.get("input_size"):
        found["crop"] = int(size[-1])
        found["resize"] = round(size[-1] / cfg.get("crop_pct", 0.875))
    if cfg.get("interpolation") in ("nearest", "bilinear", "bicubic"):
        found["interpolation"] = cfg["interpolation"]
    return found


def load_image_folder(root: Path, recipe: Any = None, teacher_cfg: dict | None = None):
    """(x, y or None, notes): the folder's images as inputs, with what was assumed."""
    from PIL import Image

    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    loose = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    notes = []
    if len(dirs) >= 2 and loose:
        raise InputError(
            f"image folder '{root}' holds images beside class subfolders; move them into one"
        )
    if len(dirs) >= 2:
        files = [(f, label) for label, d in enumerate(dirs) for f in _images(d)]
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
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as img:
                images.append(img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy())
        except OSError as exc:
            raise InputError(f"image '{f}' is unreadable ({exc})") from None
    if len({img.mode for img in images}) > 1:
        images = [img.convert("RGB") for img in images]
    transform, why = _resolve(recipe, teacher_cfg or {}, images)
    notes.append(f"images: {transform.describe()} ({why})")
    x = np.stack([_apply(img, transform) for img in images])
    labels = [label for _, label in files]
    y = None if labels[0] is None else np.asarray(labels, np.int64)
    return x, y, notes


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _resolve(recipe: Any, teacher_cfg: dict, images: list) -> tuple[Transform, str]:
    """Each setting from the recipe, else the teacher, else the defaults; and whence."""
    given = {k: v for k, v in (recipe.model_dump() if recipe else {}).items() if v is not None}
    sizes = {img.size for img in images}
    defaults: dict[str, Any] = {"interpolation": "bilinear"}
    if images[0].mode == "RGB":
        defaults.update(mean=IMAGENET["mean"], std=IMAGENET["std"])
    if len(sizes) > 1:  # one size is needed to stack them
        defaults.update(resize=IMAGENET["resize"], crop=IMAGENET["crop"])
    settings = {**defaults, **teacher_cfg, **given}
    source = {k: "recipe" if k in given else "teacher" if k in teacher_cfg else "default"
              for k in settings if k != "interpolation"}  # fmt: skip
    names = {"recipe": "the recipe", "teacher": "the teacher's pretrained_cfg",
             "default": "ImageNet's defaults"}  # fmt: skip
    whence = "; ".join(
        f"{', '.join(k for k in source if source[k] == who)} from {name}"
        for who, name in names.items()
        if who in source.values()
    )
    if len(sizes) > 1 and not settings.get("crop"):
        raise InputError(
            f"images differ in size ({len(sizes)} sizes) and data.transform.resize is set "
            "without data.transform.crop; set crop so they come out one size"
        )
    channels = 1 if images[0].mode == "L" else 3
    for key in ("mean", "std"):
        if settings.get(key) is not None and len(settings[key]) != channels:
            raise InputError(
                f"data.transform.{key} has {len(settings[key])} values for {channels}-channel images"
            )
    transform = Transform(
        settings.get("resize"), settings.get("crop"),
        tuple(settings["mean"]) if settings.get("mean") else None,
        tuple(settings["std"]) if settings.get("std") else None,
        settings["interpolation"],
    )  # fmt: skip
    return transform, whence or "pixels as stored"


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
                f"an image of {w}x{h} is smaller than the {t.crop}-pixel crop; set data.transform.resize"
            )
        left, top = (w - t.crop) // 2, (h - t.crop) // 2
        img = img.crop((left, top, left + t.crop, top + t.crop))
    x = np.asarray(img, np.float32) / 255.0
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if t.mean:
        x = (x - np.asarray(t.mean, np.float32)[:, None, None]) / np.asarray(t.std, np.float32)[
            :, None, None
        ]
    return np.ascontiguousarray(x, dtype=np.float32)
