"""Tensor transforms of the data path: resize/augment, then PIL -> float tensor.

Normalisation is not done here: it lives in the model (``shiftlab.models.InputNormalization``), so
methods, adapters and simulated cameras all see images in [0, 1] and checkpoints carry the mean/std.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms as T

FAMILY_SIZES = {"photo": 224, "digits": 32}  # so any two domains of one family share one transform
# The photo training augmentation, shared by the file path below and the batched one of
# shiftlab.data.decoded (one definition, two implementations: tests check they agree in distribution).
CROP_SCALE = (0.7, 1.0)  # share of the image's area a random resized crop keeps
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect-ratio range (torchvision's default)
FLIP_P = 0.5  # probability of a horizontal flip


class ToUnitTensor:
    """PIL image -> float tensor (C, H, W) in [0, 1], computed in NumPy.

    Same result as ``ToTensor()``, but single-threaded: torch's intra-op threads on one small image
    cost more in synchronisation than they save (measured 35 ms against 0.6 ms per 112 px image on
    2 busy cores), and would compete with the model's threads.
    """

    def __call__(self, img) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1) * np.float32(1 / 255)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transforms(family: str, size: int | None, augment: bool) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms. Photos: random resized crop and flip when augmenting; digits: resize only."""
    size = size or FAMILY_SIZES[family]
    tail = [ToUnitTensor()]
    evaluation = T.Compose([T.Resize((size, size)), *tail])
    if augment and family == "photo":
        train = T.Compose(
            [T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO), T.RandomHorizontalFlip(FLIP_P), *tail]
        )
    else:
        train = evaluation
    return train, evaluation
