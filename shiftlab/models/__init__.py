"""torchvision backbones split into features / bottleneck / head, and weights loading."""
from .backbones import ARCHITECTURES, Backbone, SmallCNN, build_backbone
from .weights import WeightsError, load_imagenet, load_local

__all__ = ["ARCHITECTURES", "Backbone", "SmallCNN", "build_backbone", "WeightsError", "load_imagenet", "load_local"]
