"""MCC: minimum class confusion on the target predictions, alone or added to DANN / CDAN.

Jin, Wang, Long, Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020, Sec. 3
(Eqs. 1-6; :func:`~shiftlab.losses.minimum_class_confusion`): target logits rescaled by the temperature
T = 2.5, the class correlation of the batch weighted by each example's certainty ``1 + exp(-H)``,
category-normalised; the loss is its off-diagonal mass. Training minimises ``CE_source + mu * L_MCC``
(the paper's Eq. 7, mu = 1). MCC is also a regulariser for other methods (the paper's Table 6):
``method.base=dann`` adds DANN's domain loss (a discriminator on the features behind gradient reversal),
``method.base=cdan`` CDAN's (conditioned on the predictions, ``method.entropy=true`` for CDAN+E), each
``weight * (d_source + d_target) / 2`` with the keys of :class:`~shiftlab.methods.cdan.CDANParams`
(:class:`~shiftlab.nn.ConditionalAdversary`, the piece CDAN is built on); ``base=none`` (null) ignores those keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..losses import minimum_class_confusion
from .base import Batch, Method, register_method
from .cdan import CDANParams, cdan_adversary


@register_method
class MCC(Method):
    """Minimum Class Confusion (Jin et al., ECCV 2020), alone or with --method.base=dann|cdan."""

    name = "mcc"
    target_stream = "unlabelled"
    search_space = {"mu": [0.3, 1.0, 3.0]}

    class Params(CDANParams):
        mu: float = Field(1.0, ge=0, description="weight of the MCC loss (the paper's mu = 1)")
        temperature: float = Field(2.5, gt=0, description="temperature T rescaling the target logits (the paper's 2.5)")
        base: Literal["dann", "cdan"] | None = Field(
            None,
            description="domain loss MCC is added to: none (null: source CE + mu * MCC), dann (discriminator on "
            "the features) or cdan (on the multilinear map; method.entropy for CDAN+E), weighted "
            "by method.weight",
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        self.adversary = (
            None
            if params.base is None
            else cdan_adversary(backbone, params, "features" if params.base == "dann" else None)
        )

    def training_step(self, source: Batch, target: Batch, progress: float):
        f_source, f_target = self.backbone.forward_features(source.x), self.backbone.forward_features(target.x)
        logits_source, logits_target = self.backbone.head(f_source), self.backbone.head(f_target)
        ce, acc = self.classification(logits_source, source.y)
        mcc = minimum_class_confusion(logits_target, self.params.temperature)
        losses = {"loss": ce + self.params.mu * mcc, "ce": ce, "mcc": mcc, "acc": acc}
        if self.adversary is not None:
            d_source, d_target = self.adversary(f_source, logits_source, f_target, logits_target, progress)
            losses.update(
                loss=losses["loss"] + self.params.weight * (d_source + d_target) / 2,
                d_source=d_source,
                d_target=d_target,
            )
        return losses
