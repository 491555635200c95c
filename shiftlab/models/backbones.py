"""Backbones split into input normalisation, feature extractor, optional bottleneck and classifier head.

Adversarial and alignment methods need the features, and fine-tuning needs the layers in order, so
every backbone is ``normalize -> features -> bottleneck -> head`` whatever torchvision model it comes
from. The split is generic: the model's final classifier (its last ``nn.Linear``) is taken out and
the rest of the torchvision model, unchanged, is the feature extractor, so layer names inside
``features`` are torchvision's own (``conv1``, ``layer2.0.conv2``, ``features.3``, ``classifier.4``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import ModelError, WeightsError
from ..utils import did_you_mean
from .normalization import IMAGENET_MEAN, IMAGENET_STD, InputNormalization
from .timm_models import build_timm_features, check_timm_name, is_timm, refuse_hub_weights
from .weights import load_imagenet, load_local

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("normalize.", "features.", "bottleneck.", "head.")


class Backbone(nn.Module):
    """``normalize`` ([0, 1] image -> normalised image), ``features`` (-> vector of ``feature_dim``),
    ``bottleneck`` (optional Linear-BN-ReLU), ``head`` (to classes: one Linear, or the model's last
    fully-connected layers). ``forward`` returns logits; ``forward_features`` the head's input.

    ``normalize`` is kept out of ``features`` so layer names inside ``features`` stay torchvision's.
    """

    def __init__(
        self,
        features: nn.Module,
        feature_dim: int,
        num_classes: int,
        bottleneck_dim: int = 0,
        *,
        head: nn.Module | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.normalize = InputNormalization(mean, std)
        self.features = features
        self.feature_dim = feature_dim
        if bottleneck_dim:
            self.bottleneck = nn.Sequential(
                nn.Linear(feature_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(inplace=True)
            )
        else:
            self.bottleneck = nn.Identity()
        self.out_dim = bottleneck_dim or feature_dim
        self.head = head if head is not None else nn.Linear(self.out_dim, num_classes)
        if self.classifier.out_features != num_classes:
            raise ModelError(f"the head gives {self.classifier.out_features} outputs, not {num_classes} classes")

    @property
    def classifier(self) -> nn.Linear:
        """The head's last Linear: one weight row per class."""
        return [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.features(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def units(self) -> list[tuple[str, nn.Module]]:
        """Layers with parameters, input to output; fine-tuning "the last k layers" counts these.

        The children of ``features`` (ResNet: ``conv1, bn1, layer1 .. layer4``), where a plain
        ``nn.Sequential`` of single layers (AlexNet/VGG ``features`` and ``classifier``) or of blocks of
        several kinds (EfficientNet's stem, stages and last conv) is opened into its children; a
        Sequential of blocks of one kind (a ResNet stage) stays one unit. Then the bottleneck and the
        head (opened the same way when it holds several layers).
        """
        units = _layers(self.features, "features.")
        if _has_params(self.bottleneck):
            units.append(("bottleneck", self.bottleneck))
        return units + (_layers(self.head, "head.") if isinstance(self.head, nn.Sequential) else [("head", self.head)])

    def param_layers(self) -> list[tuple[str, nn.Module]]:
        """Parametrised layers, input to output: every module with weights of its own (``Conv2d``, ``Linear``,
        ``BatchNorm``, ``LayerNorm`` ...; a module holding a bare parameter, such as a ViT's class token, too),
        in module order, which is the order of the forward pass for torchvision's models (a residual block's
        downsampling branch comes after its main branch). What Keras calls the trainable layers, and what
        fine-tuning "the last k layers" counts (AdapterNet, Hazan et al. 2018: VGG16's fc8, fc7, fc6):
        ResNet-18's last three are ``head`` (fc), ``features.layer4.1.bn2``, ``features.layer4.1.conv2``."""
        return [
            (name, m)
            for name, m in self.named_modules()
            if not name.startswith("normalize") and any(True for _ in m.parameters(recurse=False))
        ]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _layers(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if not _has_params(child):
            continue
        kids = [c for c in child.children() if _has_params(c)]
        opened = type(child) in (nn.Sequential, nn.ModuleList) and (
            all(not any(True for _ in c.children()) for c in kids) or len({type(c) for c in kids}) > 1
        )
        out += _layers(child, f"{prefix}{name}.") if opened else [(prefix + name, child)]
    return out


class SmallCNN(nn.Module):
    """A LeNet-style digits network (two conv blocks, one dense layer), with BatchNorm so AdaBN applies.
    Close to the digits architecture of Ganin & Lempitsky (ICML 2015); works for inputs of 28 px and up."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 32, 5)),
                    ("bn1", nn.BatchNorm2d(32)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(32, 64, 5)),
                    ("bn2", nn.BatchNorm2d(64)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.AdaptiveMaxPool2d(4)),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(64 * 16, 128)),
                    ("bn3", nn.BatchNorm1d(128)),
                    ("relu3", nn.ReLU(inplace=True)),
                ]
            )
        )


class DANNDigits(nn.Module):
    """The MNIST network of Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016,
    Sec. 5.2.2 / Fig. 4: conv 5x5x32 - ReLU - max-pool 2 - conv 5x5x48 - ReLU - max-pool 2 (the feature
    extractor), then the label predictor FC 100 - ReLU - FC 100 - ReLU - FC 10; no BatchNorm.

    Laid out like torchvision's AlexNet (``features`` then ``classifier``), so the generic split applies:
    ``model.head_layers=3`` makes the convolutional part G_f and the three FC layers G_y, as in the paper.
    The second pooling is adaptive to 4x4: exactly the paper's 2x2 pooling at its 28 px, and a near one
    at the digits pipeline's default 32 px, so the features are 48 * 4 * 4 = 768 at either size.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 32, 5)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(32, 48, 5)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.AdaptiveMaxPool2d(4)),
                    ("flatten", nn.Flatten()),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(48 * 4 * 4, 100)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("fc2", nn.Linear(100, 100)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("fc3", nn.Linear(100, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """ADDA's LeNet (Tzeng et al., CVPR 2017; its code, adda/models/lenet.py, is the digits network of the deep
    activation matching authors' release, github.com/RsEnts/DAM_release): conv 5x5x20 (valid) - ReLU - max-pool
    2 - conv 5x5x50 (valid) - ReLU - max-pool 2 - fc3 500 - ReLU - fc4 10; no BatchNorm, no dropout.

    At ADDA's 28 px the shapes are 20x24x24 -> 20x12x12 -> 50x8x8 -> 50x4x4 = 800 -> 500 -> 10. shiftlab's
    digits are RGB (grey digits repeated in 3 channels), so conv1 reads 3 channels: on a grey image that is a
    1-channel conv whose weights are the sum of the three (shiftlab's choice). The second pooling is adaptive
    to 4x4, exact at 28 px. Laid out like AlexNet (``features``, ``classifier``): with ``model.head_layers=1``
    the head is fc4 and ``features`` ends with fc3 and its ReLU, so activation matching's ``layers=auto``
    reads fc3 (after its ReLU) and fc4, as the authors' code does.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 20, 5)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(20, 50, 5)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("pool2", nn.AdaptiveMaxPool2d(4)),
                    ("flatten", nn.Flatten()),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc3", nn.Linear(50 * 4 * 4, 500)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("fc4", nn.Linear(500, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


#: Digits networks defined here rather than in torchvision; they have no ImageNet weights.
OWN_MODELS = {"small_cnn": SmallCNN, "dann_digits": DANNDigits, "lenet": LeNet}


@cache
def available_models() -> tuple[str, ...]:
    """Every valid ``model.name``: torchvision's classification models, ``small_cnn``, ``dann_digits`` and ``lenet``."""
    return tuple(sorted([*torchvision.models.list_models(module=torchvision.models), *OWN_MODELS]))


def check_model_name(name: str) -> str:
    """``name`` if it is a valid ``model.name``, else a :class:`ModelError` with a did-you-mean and the list."""
    if is_timm(name):
        return check_timm_name(name)
    if name in available_models():
        return name
    extra = did_you_mean(name, available_models())
    raise ModelError(f"unknown model.name '{name}'.{extra} Valid: {', '.join(available_models())}")


# torchvision's default init of these two warns unless asked for explicitly; their auxiliary
# classifiers are built so torchvision-format weights load strictly, then removed (see _drop_aux).
_CONSTRUCTOR_KWARGS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}


def build_backbone(
    name: str,
    num_classes: int,
    *,
    pretrained: str = "none",
    weights: str | Path | None = None,
    bottleneck_dim: int = 0,
    head_layers: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: bool = True,
) -> Backbone:
    """A :class:`Backbone` of any torchvision classification model (or ``small_cnn``, ``dann_digits``).

    ``pretrained`` ("none", "imagenet" or a torchvision weights name) and a torchvision-format
    ``weights`` file load into the torchvision model before it is split, strictly except the final
    classifier, which is kept only when it has ``num_classes`` outputs (1000 for ImageNet). A shiftlab
    checkpoint or Backbone state dict as ``weights`` loads into the split backbone, head included.
    ``head_layers`` is how many of the model's final Linear layers form the head (AlexNet/VGG: 3 puts
    fc6, fc7 and fc8 in the head; 1 leaves fc6/fc7 in the features). ``mean``/``std`` (default
    ImageNet's) are the normalisation of [0, 1] images the backbone applies first; a shiftlab
    checkpoint brings its own.
    """
    check_model_name(name)
    if head_layers < 1:
        raise ModelError(f"model.head_layers must be at least 1, got {head_layers}")
    if head_layers > 1 and name == "small_cnn":
        raise ModelError("small_cnn's head is one Linear layer; use model.head_layers=1")
    if head_layers > 1 and bottleneck_dim:
        raise ModelError(
            "model.bottleneck_dim and model.head_layers > 1 both set the layers before the classes; use one of them"
        )
    if pretrained != "none" and weights:
        raise WeightsError("give either model.pretrained or model.weights, not both")
    state = None
    if pretrained != "none":
        if is_timm(name):
            refuse_hub_weights(name)
        if name in OWN_MODELS:
            raise WeightsError(f"{name} has no ImageNet weights; use model.pretrained=none or model.weights")
        state = load_imagenet(name, pretrained, progress=progress)
    elif weights:
        state = load_local(weights)
    own = state is not None and is_backbone_state(state)
    what = f"{name} ({weights or pretrained})"

    if is_timm(name):
        features, feature_dim = build_timm_features(name, None if own else state, what)
        backbone = Backbone(
            features,
            feature_dim,
            num_classes,
            bottleneck_dim,
            mean=IMAGENET_MEAN if mean is None else mean,
            std=IMAGENET_STD if std is None else std,
        )
        if own:
            _load(backbone, _backbone_keys(state), what)
        return backbone
    if name in OWN_MODELS:
        model = OWN_MODELS[name]()
    else:
        model = torchvision.models.get_model(name, **_CONSTRUCTOR_KWARGS.get(name, {}))
    if state is not None and not own:
        _load(model, state, what, optional=_classifier_keys(model, name))
    if isinstance(model, SmallCNN):
        features, head, feature_dim = model.body, None, model.feature_dim
    else:
        _drop_aux(model)
        features, head, feature_dim = _split(model, name, head_layers)
        head = _fit_classifier(head, bottleneck_dim or None, num_classes)
    backbone = Backbone(
        features,
        feature_dim,
        num_classes,
        bottleneck_dim,
        head=head,
        mean=IMAGENET_MEAN if mean is None else mean,
        std=IMAGENET_STD if std is None else std,
    )
    if own:
        path = next(n for n, m in backbone.named_modules() if m is backbone.classifier)
        _load(backbone, _backbone_keys(state), what, optional=[f"{path}.weight", f"{path}.bias"])
    return backbone


def is_backbone_state(state: dict) -> bool:
    """A shiftlab checkpoint's model (``backbone.*`` keys) or a :class:`Backbone` state dict, rather than
    a torchvision model's. A Backbone's keys all sit under its four parts, with a ``head.``; no
    torchvision model's do (they also have ``classifier.``, ``fc.``, ``norm.``, ``heads.`` ...)."""
    keys = list(state)
    return any(k.startswith("backbone.") for k in keys) or (
        any(k.startswith("head.") for k in keys) and all(k.startswith(BACKBONE_PREFIXES) for k in keys)
    )


def _backbone_keys(state: dict) -> dict:
    """A Backbone state dict from a checkpoint's: only the backbone's entries."""
    if any(k.startswith("backbone.") for k in state):
        state = _renamed(state, lambda k: k.removeprefix("backbone.") if k.startswith("backbone.") else None)
    return state


def _renamed(state: dict, rename) -> OrderedDict:
    """``state`` with its keys renamed (``rename`` returns None to drop one), and its ``_metadata``
    (the module versions that some torchvision models, e.g. MNASNet, check when loading) renamed alike."""
    out = OrderedDict((rename(k), v) for k, v in state.items() if rename(k) is not None)
    meta = getattr(state, "_metadata", None)
    if meta is not None:  # keyed by module prefix without the trailing dot ("" is the root)
        out._metadata = OrderedDict(
            (new[:-1], v) for k, v in meta.items() if (new := rename(f"{k}." if k else "")) is not None
        )
    return out


def _final_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The model's classifier: its last ``nn.Linear`` in module order (``fc``, ``classifier.6``, ``heads.head``)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(
            f"model '{name}' has no Linear classifier (e.g. squeezenet classifies with a "
            f"convolution), so it cannot be split into features and head; choose another model"
        )
    path, linear = linears[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if isinstance(parent, nn.Sequential) and list(parent.children())[-1] is not linear:
        raise ModelError(
            f"model '{name}': its last Linear ({path}) is not the last layer of its classifier, "
            f"so it cannot be split into features and head"
        )
    return path, linear


def _classifier_keys(model: nn.Module, name: str) -> list[str]:
    if isinstance(model, SmallCNN):
        return []
    path, _ = _final_linear(model, name)
    return [f"{path}.weight", f"{path}.bias"]


def _drop_aux(model: nn.Module) -> None:
    """GoogLeNet and Inception v3 add auxiliary classifiers in training mode; they are not part of the
    features / head split, so they go (as torchvision does after loading its weights)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def _split(model: nn.Module, name: str, head_layers: int) -> tuple[nn.Module, nn.Module, int]:
    """(features, head, feature_dim): the head's layers are taken out of ``model``, which becomes the features.

    ``head_layers=1``: the final Linear is replaced by Identity. More: the classifier must be an
    ``nn.Sequential`` with that many Linears; the head starts at the first of them (with any Dropout just
    before it) and the model keeps the part of the Sequential before that.
    """
    path, linear = _final_linear(model, name)
    if head_layers == 1:
        model.set_submodule(path, nn.Identity())
        return model, linear, linear.in_features
    parent_path = path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    children = list(parent.named_children()) if isinstance(parent, nn.Sequential) else []
    at = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
    if len(at) < head_layers:
        found = f"a Sequential with {len(at)} Linear layer(s)" if children else f"a single Linear ({path})"
        raise ModelError(
            f"model.head_layers={head_layers} but the classifier of '{name}' is {found}; "
            f"use model.head_layers={max(len(at), 1)}"
        )
    start = at[-head_layers]
    first = children[start][1]
    while start > 0 and isinstance(children[start - 1][1], nn.Dropout):
        start -= 1
    model.set_submodule(parent_path, nn.Sequential(OrderedDict(children[:start])))
    return model, nn.Sequential(OrderedDict(children[start:])), first.in_features


def _fit_classifier(head: nn.Module, in_features: int | None, num_classes: int) -> nn.Module:
    """The head with its last Linear re-made when its shape does not fit (``num_classes`` outputs, and
    the bottleneck's size as input when there is one); a fitting one keeps its (ImageNet) weights."""
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes and in_features in (None, head.in_features):
            return head
        return nn.Linear(in_features or head.in_features, num_classes)
    last_name, last = list(head.named_children())[-1]
    if last.out_features != num_classes:
        head.add_module(last_name, nn.Linear(last.in_features, num_classes))  # same name: replaces it in place
    return head


def _load(module: nn.Module, state: dict, what: str, optional: Sequence[str] = ()) -> None:
    """Strict load, except the ``optional`` keys (a classifier) when their shape differs: those keep the
    module's own values and are logged."""
    own = module.state_dict()
    skipped = [k for k in optional if k in state and k in own and own[k].shape != state[k].shape]
    wrong = [k for k, v in state.items() if k in own and k not in skipped and own[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"weights for {what} do not fit the model: shapes differ for {wrong[:5]}")
    try:
        result = module.load_state_dict(_renamed(state, lambda k: None if k in skipped else k), strict=False)
    except (RuntimeError, ValueError) as err:
        raise WeightsError(f"weights for {what} cannot be loaded: {err}") from err
    missing = [k for k in result.missing_keys if k not in skipped]
    if result.unexpected_keys or missing:
        raise WeightsError(
            f"weights for {what} do not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if skipped:
        log.info("weights for %s: classifier %s not loaded (class count differs)", what, skipped)
