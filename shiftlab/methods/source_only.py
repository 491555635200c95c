"""Source-only baseline: cross-entropy on labelled source images; the target is only evaluated."""

from __future__ import annotations

from .base import Batch, Method, register_method


@register_method
class SourceOnly(Method):
    """Empirical risk minimisation on the source domain (the lower bound every method must beat)."""

    name = "source_only"

    def training_step(self, source: Batch, target: Batch | None, progress: float):
        return self.classification_step(source)
