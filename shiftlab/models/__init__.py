"""torchvision backbones split into normalisation / features / bottleneck / head, and weights loading."""

from .backbones import (
    Backbone,
    DANNDigits,
    SmallCNN,
    available_models,
    build_backbone,
    check_model_name,
    is_backbone_state,
)
from .normalization import IMAGENET_MEAN, IMAGENET_STD, InputNormalization, normalization_for
from .weights import load_imagenet, load_local

__all__ = [
    "Backbone",
    "DANNDigits",
    "SmallCNN",
    "available_models",
    "build_backbone",
    "check_model_name",
    "is_backbone_state",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputNormalization",
    "normalization_for",
    "load_imagenet",
    "load_local",
]
