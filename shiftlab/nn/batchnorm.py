"""Re-estimating BatchNorm statistics on other data (the core of AdaBN).

Li, Wang, Shi, Liu, Hou, "Revisiting Batch Normalization For Practical Domain Adaptation",
ICLR workshop 2017 (arXiv:1603.04779), Alg. 1: for every BN neuron, replace the mean and variance
collected on the source by those of the target domain; weights, biases and affine parameters stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BN statistic, to restore with :func:`load_batchnorm_state`."""
    return {f"{n}.{b}": getattr(m, b).detach().clone() for n, m in batchnorm_modules(model) for b in BN_BUFFERS}


def load_batchnorm_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for n, m in batchnorm_modules(model):
        for b in BN_BUFFERS:
            getattr(m, b).copy_(state[f"{n}.{b}"])


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, images: Iterable, device: torch.device | str = "cpu", max_batches: int | None = None
) -> int:
    """Replace every BN layer's running statistics by those of ``images`` (batches of image tensors).

    Statistics are exact averages over all batches (``momentum=None``), not a moving average, as
    Alg. 1 of AdaBN computes them over the whole target domain. Only BN layers run in training mode,
    so dropout does not perturb the inputs they see; nothing but BN buffers changes. Returns the number
    of images seen.
    """
    layers = batchnorm_modules(model)
    if not layers:
        return 0
    was_training = model.training
    saved = [(m, m.momentum, m.training) for _, m in layers]
    model.eval()
    seen = 0
    try:
        for _, m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        seen = forward_images(model, images, device, max_batches)
    finally:
        model.train(was_training)
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
    if seen == 0:
        raise ValueError("reestimate_batchnorm got no images")
    return seen


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, back in the mode it had after it (whatever happens)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forward_images(model: nn.Module, images: Iterable, device, max_batches: int | None = None) -> int:
    """Forward ``images`` (tensors, or ``(x, y)`` batches whose labels are ignored) through ``model`` as it
    is (its hooks and BatchNorm modes decide what is recorded); returns how many images went through."""
    seen = 0
    for k, batch in enumerate(images):
        if max_batches is not None and k >= max_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x.to(device))
        seen += len(x)
    return seen
