"""A backbone's activations at its named stages, for methods that align several layers (CORAL, DAN, JAN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

#: ``features``: the feature extractor's output; ``bottleneck``: the bottleneck's (backbones with one);
#: ``logits``: the head's output (DAN's fc8, CORAL's fc8); ``probs``: its softmax (JAN's last layer)
STAGES = ("features", "bottleneck", "logits", "probs")


def check_stages(backbone: nn.Module, stages: Sequence[str], key: str) -> None:
    """A one-line ConfigError for an unknown stage, or ``bottleneck`` on a backbone without one."""
    for stage in stages:
        if stage not in STAGES:
            raise ConfigError(f"{key}: unknown layer '{stage}'; valid: {', '.join(STAGES)}")
        if stage == "bottleneck" and isinstance(backbone.bottleneck, nn.Identity):
            raise ConfigError(f"{key}: this backbone has no bottleneck (set model.bottleneck_dim, or use features)")
    if not stages:
        raise ConfigError(f"{key}: name at least one layer ({', '.join(STAGES)})")


def stage_outputs(backbone: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every stage's output for images ``x`` in one forward pass."""
    features = backbone.features(backbone.normalize(x))
    bottleneck = backbone.bottleneck(features)
    logits = backbone.head(bottleneck)
    return {"features": features, "bottleneck": bottleneck, "logits": logits, "probs": logits.softmax(1)}
