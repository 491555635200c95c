"""Entropy minimisation: source cross-entropy plus the mean entropy of the target predictions.

Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004 (Eq. 9: the
likelihood of the labelled data minus lambda times the empirical conditional entropy of the unlabelled
data), with the labelled source and the unlabelled target as the two parts: ``CE(source) + weight *
mean_t H(p(y | x_t))`` (:func:`shiftlab.losses.mean_entropy`). The paper tunes lambda by cross-validation;
0.1 is the README example's value (and the one measured on digits, tests/test_baselines_alignment.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..losses import mean_entropy
from .base import Batch, Method, register_method


@register_method
class EntropyMin(Method):
    """Source cross-entropy plus the weighted mean entropy of the target predictions."""

    name = "entropy_min"
    target_stream = "unlabelled"  # the loop pairs each source batch with target images (no labels)
    search_space = {"weight": [0.03, 0.1, 0.3, 1.0]}

    class Params(BaseModel):  # becomes --method.weight, validated, listed by --help
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(
            0.1,
            ge=0,
            description="lambda, the weight of the target entropy term (the paper cross-validates it; 0.1 on digits)",
        )

    def training_step(self, source: Batch, target: Batch, progress: float):
        ce, acc = self.classification(self.backbone(source.x), source.y)
        entropy = mean_entropy(self.backbone(target.x))
        return {"loss": ce + self.params.weight * entropy, "ce": ce, "entropy": entropy, "acc": acc}
