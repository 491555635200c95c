"""Target-only oracle: trained on the labelled target domain, the upper bound of adaptation.

It reads target labels by design, so its runs are labelled as oracle runs; the loop evaluates it on
the target's held-out ``val`` split, never on the images it trained on.
"""

from __future__ import annotations

from .base import Batch, Method, register_method


@register_method
class TargetOracle(Method):
    name = "target_oracle"
    uses_source = False
    target_stream = "labelled"

    def training_step(self, source: Batch | None, target: Batch, progress: float):
        return self.classification_step(target)
