"""Self-training, FixMatch-style: confident predictions on a weak view are the labels of a strong view.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020,
used for UDA with the labelled source as the labelled set: ``CE(source) + weight * l_u`` (Eq. 5, lambda_u),
``l_u = 1/B sum_b 1(max q_b >= tau) H(argmax q_b, p(y | A(x_b)))`` (Eq. 4), ``q_b`` the detached prediction
on the weak view (here the target batch as the loader gives it: ``data.augment``'s crop and flip, or none on
digits) and ``A`` the strong augmentation (:class:`shiftlab.nn.StrongAugment`: random affine, brightness and
contrast jitter, Cutout, on the device, from a generator seeded by the experiment seed and checkpointed).
Paper defaults: tau = 0.95, lambda_u = 1 (Sec. 4); the ratio of unlabelled to labelled batch size, 7 in the
paper, is 1 here (the loop's equal source and target batches).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..losses import thresholded_pseudo_label_loss
from ..nn import StrongAugment
from .base import Batch, Method, register_method


@register_method
class SelfTraining(Method):
    """Source cross-entropy plus FixMatch's confidence-thresholded pseudo-label loss on the target."""

    name = "self_training"
    target_stream = "unlabelled"
    search_space = {"weight": [0.3, 1.0, 3.0]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(
            1.0, ge=0, description="lambda_u, the weight of the target pseudo-label loss (FixMatch: 1)"
        )
        threshold: float = Field(
            0.95,
            ge=0,
            le=1,
            description="tau: only target predictions at least this "
            "confident (weak view) become labels (FixMatch: 0.95)",
        )
        cutout: float = Field(
            0.5,
            ge=0,
            le=1,
            description="side of the strong view's Cutout square, a fraction "
            "of the image (FixMatch's Cutout: up to 0.5)",
        )
        rotation: float = Field(
            30.0, ge=0, description="largest rotation of the strong view, degrees (RandAugment's range: 30)"
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        # the loop seeds the global stream with experiment.seed before building the model: derive from it
        self.strong = StrongAugment(seed=torch.initial_seed(), rotation=params.rotation, cutout=params.cutout)

    def training_step(self, source: Batch, target: Batch, progress: float):
        ce, acc = self.classification(self.backbone(source.x), source.y)
        with torch.no_grad():
            weak = self.backbone(target.x)
        strong = self.backbone(self.strong(target.x))
        pseudo, mask = thresholded_pseudo_label_loss(weak, strong, self.params.threshold)
        return {"loss": ce + self.params.weight * pseudo, "ce": ce, "pseudo": pseudo, "mask": mask, "acc": acc}
