"""AdaBN: source-only training, then every BatchNorm's statistics re-estimated on the target.

Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation" (arXiv:1603.04779), Alg. 1.
Before each target evaluation the BN means and variances are recomputed on the target images; the
source statistics come back afterwards, so source validation, training and checkpoints use the
source's. To adapt an already trained model without training: ``--model.weights=... --train.epochs=0``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nn import batchnorm_state, load_batchnorm_state, reestimate_batchnorm
from .base import register_method
from .source_only import SourceOnly


@register_method
class AdaBN(SourceOnly):
    """Source-only training; BatchNorm statistics re-estimated on the target at evaluation (Li et al., Alg. 1)."""

    name = "adabn"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_batches: int | None = Field(None, ge=1, description="target batches used for the statistics (all if unset)")

    def before_evaluation(self, domain: str, images) -> None:
        self._source_stats = None
        if domain == "target":
            self._source_stats = batchnorm_state(self.backbone)
            device = next(self.backbone.parameters()).device
            reestimate_batchnorm(self.backbone, images, device, self.params.max_batches)

    def after_evaluation(self) -> None:
        if getattr(self, "_source_stats", None) is not None:
            load_batchnorm_state(self.backbone, self._source_stats)
            self._source_stats = None
