"""Backbones split into feature extractor, optional bottleneck and classifier head.

Adversarial and alignment methods need the features, and fine-tuning needs the layers in order, so
every backbone is ``features -> bottleneck -> head`` whatever torchvision model it comes from.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

import torch
import torchvision
from torch import nn

from .weights import WeightsError, load_imagenet, load_local

log = logging.getLogger(__name__)


class Backbone(nn.Module):
    """``features`` (image -> vector of ``feature_dim``), ``bottleneck`` (optional Linear-BN-ReLU),
    ``head`` (Linear to classes). ``forward`` returns logits; ``forward_features`` the head's input."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, bottleneck_dim: int = 0):
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        if bottleneck_dim:
            self.bottleneck = nn.Sequential(nn.Linear(feature_dim, bottleneck_dim),
                                            nn.BatchNorm1d(bottleneck_dim), nn.ReLU(inplace=True))
        else:
            self.bottleneck = nn.Identity()
        self.out_dim = bottleneck_dim or feature_dim
        self.head = nn.Linear(self.out_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def units(self) -> list[tuple[str, nn.Module]]:
        """Layers with parameters, input to output; fine-tuning "the last k layers" counts these."""
        units = [(f"features.{n}", m) for n, m in self.features.named_children()
                 if any(True for _ in m.parameters())]
        if any(True for _ in self.bottleneck.parameters()):
            units.append(("bottleneck", self.bottleneck))
        return units + [("head", self.head)]


def _resnet_features(model: torchvision.models.ResNet) -> nn.Sequential:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    return nn.Sequential(OrderedDict([*((n, getattr(model, n)) for n in names), ("flatten", nn.Flatten())]))


def _alexnet_features(model: torchvision.models.AlexNet) -> nn.Sequential:
    fc = model.classifier  # Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8: fc8 becomes the head
    return nn.Sequential(OrderedDict([
        ("conv", model.features), ("avgpool", model.avgpool), ("flatten", nn.Flatten()),
        ("drop6", fc[0]), ("fc6", fc[1]), ("relu6", fc[2]), ("drop7", fc[3]), ("fc7", fc[4]), ("relu7", fc[5]),
    ]))


class SmallCNN(nn.Module):
    """A LeNet-style digits network (two conv blocks, one dense layer), with BatchNorm so AdaBN applies.
    Close to the digits architecture of Ganin & Lempitsky (ICML 2015); works for inputs of 28 px and up."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 32, 5)), ("bn1", nn.BatchNorm2d(32)), ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 5)), ("bn2", nn.BatchNorm2d(64)), ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.AdaptiveMaxPool2d(4)), ("flatten", nn.Flatten()),
            ("fc", nn.Linear(64 * 16, 128)), ("bn3", nn.BatchNorm1d(128)), ("relu3", nn.ReLU(inplace=True)),
        ]))


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module], int]] = {
    # name: (torchvision constructor, feature extractor from the model, feature dimension)
    "resnet18": (torchvision.models.resnet18, _resnet_features, 512),
    "resnet50": (torchvision.models.resnet50, _resnet_features, 2048),
    "alexnet": (torchvision.models.alexnet, _alexnet_features, 4096),
    "small_cnn": (SmallCNN, lambda m: m.body, 128),
}


def build_backbone(name: str, num_classes: int, *, pretrained: str = "none", weights: str | None = None,
                   bottleneck_dim: int = 0, progress: bool = True) -> Backbone:
    """A :class:`Backbone`, optionally starting from ImageNet weights or a local file.

    ``pretrained`` ("none", "imagenet" or a torchvision weights name) loads into the torchvision model
    before it is split; the head keeps ImageNet's classifier only when ``num_classes`` is 1000.
    ``weights`` is either a torchvision state dict (loaded the same way) or a shiftlab checkpoint /
    backbone state dict (loaded into the split backbone, head included).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model.name '{name}'; valid: {', '.join(ARCHITECTURES)}")
    if pretrained != "none" and weights:
        raise WeightsError("give either model.pretrained or model.weights, not both")
    make, split, dim = ARCHITECTURES[name]
    model = make()
    state = None
    if pretrained != "none":
        if name == "small_cnn":
            raise WeightsError("small_cnn has no ImageNet weights; use model.pretrained=none or model.weights")
        state = load_imagenet(name, pretrained, progress=progress)
    elif weights:
        state = load_local(weights)
    own = state is not None and any(k.startswith(("features.", "backbone.")) for k in state)
    if state is not None and not own:
        _load(model, state, f"{name} ({weights or pretrained})")
    backbone = Backbone(split(model), dim, num_classes, bottleneck_dim)
    if state is not None and not own and num_classes == 1000 and hasattr(model, "fc"):
        backbone.head = model.fc
    elif state is not None and not own and num_classes == 1000 and name == "alexnet":
        backbone.head = model.classifier[6]
    if own:
        state = {k.removeprefix("backbone."): v for k, v in state.items()
                 if k.startswith(("backbone.", "features.", "bottleneck.", "head."))}
        _load(backbone, state, str(weights))
    return backbone


def _load(module: nn.Module, state: dict, what: str) -> None:
    """Strict load, except a classifier whose class count differs (it is replaced by a new head)."""
    own = module.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(("fc.", "classifier.6.", "head.")) for k in skipped):
        raise WeightsError(f"weights for {what} do not fit the model: shapes differ for {skipped}")
    result = module.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if result.unexpected_keys or missing:
        raise WeightsError(f"weights for {what} do not fit the model: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    if skipped:
        log.info("weights for %s: classifier %s not loaded (class count differs)", what, skipped)
