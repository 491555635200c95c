"""Fine-tuning baseline: train only the last ``k`` layers of a given model on target labels.

The model comes from ``--model.weights`` (for example a source-only run's ``checkpoints/last.pt``) or
``--model.pretrained``. "Layers" are, by default (``method.count=layer``), the **parametrised layers**
counted from the output backwards (:meth:`shiftlab.models.Backbone.param_layers`: every module with
weights of its own, BatchNorm included, as Keras counts trainable layers): the reading of AdapterNet
(Hazan et al. 2018, section 5.1, "fine-tuning ... the last trainable layer / two / three", on VGG16: fc8,
fc7, fc6). ``method.count=unit`` is shiftlab's earlier count of whole units
(:meth:`shiftlab.models.Backbone.units`: ResNet-18 ``conv1, bn1, layer1..layer4, head``, so ``layers=2``
also trains the whole ``layer4`` stage). Frozen layers keep their BatchNorm statistics (they stay in eval
mode). The trained modules are logged and listed in ``self.trained_units``.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .base import Batch, Method, register_method

log = logging.getLogger(__name__)

LAYERS_HELP = (
    "how many of the model's last layers are trained (the rest frozen). method.count=layer (default): "
    "parametrised layers (modules with weights of their own: Conv, Linear, BatchNorm ...) counted from the "
    "output backwards, whatever model.head_layers is. resnet18: 1 = fc, 2 = + layer4.1.bn2, 3 = + layer4.1.conv2; "
    "vgg16: 1 = fc8, 2 = fc7-fc8, 3 = fc6-fc8 (AdapterNet's 'last 1/2/3 trainable layers'); dann_digits: 1 = fc3, "
    "2 = fc2-fc3, 3 = fc1-fc3, 4 = + conv2; small_cnn: 1 = head (its Linear), 2 = + bn3, 3 = + fc; lenet: 1 = fc4, "
    "2 = fc3-fc4, 3 = + conv2. method.count=unit: whole units instead (resnet18: head, layer4, layer3 ... stages)"
)


@register_method
class FineTune(Method):
    name = "finetune"
    uses_source = False
    target_stream = "labelled"
    requires_trained_model = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: int = Field(1, ge=1, description=LAYERS_HELP)
        count: Literal["layer", "unit"] = Field(
            "layer",
            description="what method.layers counts: 'layer' = parametrised layers (AdapterNet's reading, "
            "the default); 'unit' = whole backbone units such as ResNet stages (shiftlab's "
            "earlier count)",
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        units = backbone.param_layers() if params.count == "layer" else backbone.units()
        if params.layers > len(units):
            raise ConfigError(
                f"method.layers={params.layers} but the backbone has {len(units)} "
                f"{'parametrised layers' if params.count == 'layer' else 'units'}: "
                f"{', '.join(n for n, _ in units)}"
            )
        self.frozen = [m for _, m in units[: len(units) - params.layers]]
        self.trained_units = [n for n, _ in units[len(units) - params.layers :]]
        for module in self.frozen:
            for p in module.parameters(recurse=params.count == "unit"):
                p.requires_grad_(False)
        # a layer that holds other layers (a ViT's encoder with its position embedding) keeps its children's mode
        self._eval_modules = [m for m in self.frozen if params.count == "unit" or not any(True for _ in m.children())]
        log.info(
            "finetune: training %s (the last %d %s)",
            ", ".join(self.trained_units),
            params.layers,
            "parametrised layers" if params.count == "layer" else "units",
        )

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._eval_modules:
            module.eval()
        return self

    def training_step(self, source: Batch | None, target: Batch, progress: float):
        return self.classification_step(target)
