"""The embedded demo benchmark: needs no download, because its data ships inside dependencies.

* ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 8x8, from the UCI
  "Optical Recognition of Handwritten Digits" set), upscaled to 32x32.
* ``digits_photo``: the same digits blended onto random patches of scikit-image's bundled colour
  photographs, the way MNIST-M was made from MNIST (Ganin & Lempitsky, ICML 2015, Sec. 5:
  ``|patch - digit|`` per channel).

Splits are fixed by a hash of the image index: ``test`` is about 30% of the images, ``val`` about 10%
of the rest, ``train`` the remainder, so source training never sees the target's test digits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import ArrayDataset, held_out
from .spec import DatasetSpec, DomainReport

DOMAINS = ("digits", "digits_photo")
CLASSES = tuple("0123456789")
SIZE = 32
# Colour photographs that ship inside scikit-image's wheel (no pooch download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images / 16.0 * 255).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR)) for im in small])
    return big, bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _blended() -> np.ndarray:
    """MNIST-M-style target: each digit XOR-like blended (absolute difference) onto a photo patch."""
    import skimage.data

    digits, _ = _digits()
    photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
    rng = np.random.default_rng(2015)  # fixed: the demo's target domain is the same everywhere
    out = np.empty(digits.shape + (3,), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - SIZE)
        x = rng.integers(photo.shape[1] - SIZE)
        patch = photo[y : y + SIZE, x : x + SIZE].astype(np.int16)
        out[i] = np.abs(patch - digit[..., None].astype(np.int16)).astype(np.uint8)
    return out


def split_indices(n: int, split: str) -> np.ndarray:
    keys = [f"demo/{i}" for i in range(n)]
    test = np.array([held_out(k, 0.3) for k in keys])
    if split == "test":
        return np.flatnonzero(test)
    val = np.array([held_out(k + "/val", 0.1) for k in keys]) & ~test
    return np.flatnonzero(val if split == "val" else ~test & ~val)


def load(root: Path, domain: str, split: str) -> ArrayDataset:
    images, labels = _digits()
    if domain == "digits_photo":
        images = _blended()
    idx = split_indices(len(labels), split)
    # Both domains key image i as demo/i: digits_photo image i is digits image i on a photo.
    return ArrayDataset(images[idx], labels[idx], CLASSES, keys=[f"demo/{i}" for i in idx])


def check(root: Path, domain: str) -> DomainReport:
    images, labels = _digits()
    return DomainReport(domain, present=True, images=len(images), classes=list(CLASSES))


# The target's ``test`` split (30%, disjoint from train/val) is adapted on and evaluated on, as in the
# releases before target protocols existed, so that the demo's figures stay comparable.
SPEC = DatasetSpec(
    name="demo",
    domains=DOMAINS,
    classes=CLASSES,
    load=load,
    check=check,
    family="digits",
    embedded=True,
    description="embedded demo: scikit-learn digits -> the same digits on scikit-image photo patches",
    citation="Alpaydin & Kaynak, UCI Optical Recognition of Handwritten Digits, 1998",
    target_adapt_split="test",
    target_eval_split="test",
)
