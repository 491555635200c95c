"""Input normalisation as the model's first module.

The data path yields images in [0, 1]; the model subtracts its own mean and divides by its own std.
Keeping the statistics in the model (as buffers, so they are saved in checkpoints) lets methods put
modules in front of the normalisation (AdapterNet's adapter works on [0, 1] images), lets image
shifts act on plain images, and makes a checkpoint carry the preprocessing it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

FAMILY_NORMALIZATION = {"photo": (IMAGENET_MEAN, IMAGENET_STD), "digits": (HALF, HALF)}
# torchvision's weights of these two were ported from TensorFlow and expect inputs in [-1, 1];
# torchvision converts ImageNet-normalised inputs back with `transform_input`, here the model's own
# normalisation does it directly (the two are the same function of the [0, 1] image).
MODEL_NORMALIZATION = {"googlenet": (HALF, HALF), "inception_v3": (HALF, HALF)}


def normalization_for(family: str, model: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default ``(mean, std)`` for a dataset family ("photo", "digits"), per RGB channel.

    Photos use ImageNet's statistics (those of torchvision's weights), digits 0.5 / 0.5. Give
    ``model`` to get the statistics a torchvision model's weights expect where they differ
    (googlenet, inception_v3 on photos).
    """
    if family not in FAMILY_NORMALIZATION:
        raise ValueError(f"unknown dataset family '{family}'; valid: {', '.join(FAMILY_NORMALIZATION)}")
    if family == "photo" and model in MODEL_NORMALIZATION:
        return MODEL_NORMALIZATION[model]
    return FAMILY_NORMALIZATION[family]


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, on images in [0, 1].

    ``mean`` and ``std`` are persistent buffers shaped (1, C, 1, 1): they move with the model to its
    device and are saved in its state dict.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(
                f"mean and std must be two lists of one value per channel, got {mean.tolist()} and {std.tolist()}"
            )
        if not bool((std > 0).all()):
            raise ValueError(f"std must be positive, got {std.tolist()}")
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        fmt = lambda t: "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"  # noqa: E731
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"
