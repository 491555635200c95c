"""HDA: heuristic heads estimate the domain-specific part of the prediction, which is subtracted.

Cui et al., "Heuristic Domain Adaptation", NeurIPS 2020 (HDAN). The prediction is ``G(f) = F(f) - H(f)``:
F the classifier (the "fundament" network's head), H the heuristic network, a sum of ``heads`` linear
sub-networks on the same features, which models the domain-specific characteristics; what remains,
F - H, is meant to be domain-invariant and is what is classified and aligned. The paper's constraints:

* initial state (F and H dissimilar at the start): each heuristic head is initialised with a different
  Kaiming gain (``a = 0, 1, 2, ...``) and F with a very small one (``a = 100``), as both authors' codes do
  (cuishuhao/HDA network.py ``heuristic_initial``; microsoft/UDA base_model.py);
* final state (the heuristic vanishes, like a search reaching its goal): the loss ``heuristic_weight * mean |H(f)|``
  over source and target;
* alignment: DANNP's (discriminator on softmax(G(f)), entropy-weighted, offset 0 as in the HDA code).

Both codes apply H at the classifier's output (logits), so the subtraction is there, not on the
features. With ``toalign=true`` ToAlign's class weights are ``w_F,y - sum_i w_Hi,y`` (Wei et al. 2021;
microsoft/UDA base_model.py), and the positive source prediction is ``G(f_p)``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from .base import Batch, register_method
from .dannp import DANNP


@register_method
class HDA(DANNP):
    """Heuristic Domain Adaptation (Cui et al., NeurIPS 2020); --method.toalign=true adds ToAlign."""

    name = "hda"

    class Params(DANNP.Params):
        entropy_offset: float = Field(
            0.0, ge=0, description="offset of the entropy weight: 0 in the HDA code (exp(-H)), 1 in CDAN+E"
        )
        heads: int = Field(3, ge=1, description="heuristic sub-networks summed into H (the HDA code's default: 3)")
        heuristic_weight: float = Field(1.0, ge=0, description="weight of the final-state constraint mean |H(f)|")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        dim, classes = backbone.out_dim, backbone.classifier.out_features
        self.heuristics = nn.ModuleList(nn.Linear(dim, classes) for _ in range(params.heads))
        for gain, layer in enumerate([*self.heuristics, backbone.classifier]):
            nn.init.kaiming_normal_(layer.weight, a=100 if layer is backbone.classifier else gain)
            nn.init.zeros_(layer.bias)

    def heuristic(self, features: torch.Tensor) -> torch.Tensor:
        return sum(head(features) for head in self.heuristics)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(features) - self.heuristic(features)

    def class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return self.backbone.classifier.weight[labels] - sum(head.weight[labels] for head in self.heuristics)

    def training_step(self, source: Batch, target: Batch, progress: float):
        losses, features = self.alignment(source, target, progress)
        heuristic = self.heuristic(features).abs().mean()
        losses["loss"] = losses["loss"] + self.params.heuristic_weight * heuristic
        return {**losses, "heuristic": heuristic}
