"""Fine-tuning baseline: train only the last ``k`` layers of a given model on target labels.

The model comes from ``--model.weights`` (for example a source-only run's ``checkpoints/last.pt``) or
``--model.pretrained``. "Layers" are the backbone's units with parameters, input to output
(:meth:`shiftlab.models.Backbone.units`): for ResNet-18 ``conv1, bn1, layer1..layer4, head``,
so ``layers=1`` trains the head alone and ``layers=2`` also ``layer4``. Frozen layers keep their
BatchNorm statistics (they stay in eval mode).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .base import Batch, Method, register_method


@register_method
class FineTune(Method):
    name = "finetune"
    uses_source = False
    target_stream = "labelled"
    requires_trained_model = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: int = Field(1, ge=1, description="number of last backbone units to train (1 = the head only)")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        units = backbone.units()
        if params.layers > len(units):
            raise ConfigError(f"method.layers={params.layers} but the backbone has {len(units)} units: "
                             f"{', '.join(n for n, _ in units)}")
        self.frozen = [m for _, m in units[:len(units) - params.layers]]
        self.trained_units = [n for n, _ in units[len(units) - params.layers:]]
        for module in self.frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def training_step(self, source: Batch | None, target: Batch, progress: float):
        return self.classification_step(target)
