"""Deep CORAL: align the second-order statistics (covariances) of source and target activations.

Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops (TASK-CV) 2016.
The loss is ``CE(source) + weight * l_CORAL`` (Sec. 3.2, Eq. 4 with one CORAL layer), where
``l_CORAL = ||C_S - C_T||_F^2 / (4 d^2)`` (Eq. 1) between the covariances (Eqs. 2-3) of the chosen layer's
d-dimensional activations on a source and a target batch (:func:`shiftlab.losses.coral_loss`). The paper
applies it to the last classification layer (fc8, ``layers=[logits]``, the default) and picks lambda "such
that at the end of training the classification loss and the CORAL loss are roughly the same"; it names no
single value, so the default here, 1, is the tried setting on USPS -> MNIST (see tests/test_baselines_alignment.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..losses import coral_loss
from ..nn import check_stages, stage_outputs
from .base import Batch, Method, register_method


@register_method
class DeepCORAL(Method):
    """Source cross-entropy plus the CORAL loss between source and target activations of the chosen layers."""

    name = "coral"
    target_stream = "unlabelled"
    search_space = {"weight": [0.1, 1.0, 10.0]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(
            1.0,
            ge=0,
            description="lambda, the weight of the CORAL loss (the paper sets it so "
            "that CE and CORAL are about equal at the end; 1 tried on digits)",
        )
        layers: list[str] = Field(
            ["logits"],
            description="layers whose covariances are aligned, summed: "
            "features, bottleneck, logits (the paper: fc8, the logits)",
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        check_stages(backbone, params.layers, "method.layers")

    def training_step(self, source: Batch, target: Batch, progress: float):
        s, t = stage_outputs(self.backbone, source.x), stage_outputs(self.backbone, target.x)
        ce, acc = self.classification(s["logits"], source.y)
        coral = sum(coral_loss(s[layer], t[layer]) for layer in self.params.layers)
        return {"loss": ce + self.params.weight * coral, "ce": ce, "coral": coral, "acc": acc}
