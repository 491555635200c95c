"""BNM: batch nuclear-norm maximisation of the target predictions.

Cui, Wang, Zhuo, Li, Huang, Tian, "Towards Discriminability and Diversity: Batch Nuclear-norm
Maximization under Label Insufficient Situations", CVPR 2020, Eq. 8 (with the source cross-entropy,
Sec. 3.4): ``CE_source + lambda * L_bnm``, ``L_bnm = -||A||_* / B`` on the (B, C) softmax predictions A of a
target batch (:func:`~shiftlab.losses.batch_nuclear_norm`). Maximising the nuclear norm makes the target
predictions confident (discriminability) without collapsing onto a few classes (diversity), where entropy
minimisation does the first only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..losses import batch_nuclear_norm
from .base import Batch, Method, register_method


@register_method
class BNM(Method):
    """Batch Nuclear-norm Maximization (Cui et al., CVPR 2020)."""

    name = "bnm"
    target_stream = "unlabelled"
    search_space = {"weight": [0.3, 1.0, 3.0]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(
            1.0,
            ge=0,
            description="lambda, the weight of the BNM loss -||A||_* / B (the paper's 1 for domain adaptation)",
        )

    def training_step(self, source: Batch, target: Batch, progress: float):
        ce, acc = self.classification(self.backbone(source.x), source.y)
        bnm = batch_nuclear_norm(self.backbone(target.x))
        return {"loss": ce + self.params.weight * bnm, "ce": ce, "bnm": bnm, "acc": acc}
