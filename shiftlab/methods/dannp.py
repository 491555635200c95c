"""DANNP: DANN whose discriminator sees the predicted class probabilities, with entropy weighting; optionally ToAlign.

The baseline of Wei et al., "ToAlign: Task-oriented Alignment for Unsupervised Domain Adaptation",
NeurIPS 2021 (Sec. 4), as the authors' code (microsoft/UDA, trainer/da/toalign.py, utils/loss.py) builds
it: the discriminator's input is the softmax prediction p (``condition=prediction``; CDAN's multilinear
``f ⊗ p`` and its randomized form, Long et al. NeurIPS 2018, are the alternatives), behind gradient
reversal; each sample's domain loss is weighted by ``entropy_offset + exp(-H(p))`` (CDAN+E's
"entropy conditioning": offset 1; the ToAlign code: 0), normalised within each domain, and the
alignment loss is the mean of the two domains' weighted losses.

``toalign=true`` (Wei et al. 2021, Sec. 3): the discriminator sees, for each source sample, the positive
feature ``f_p = s * (w_y ⊙ f)`` (:func:`~shiftlab.nn.positive_features`, ``w_y`` the classifier's
detached weight row of its label) and the prediction made from it, so target features are aligned with
the task-discriminative part of the source features only. It needs a one-Linear head on the features.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..losses import SOURCE, TARGET, domain_bce, entropy_weights
from ..nn import DomainDiscriminator, GradientReversal, RandomizedMultilinearMap, multilinear_map, positive_features
from .base import Batch, Method, register_method
from .dann import AdversarialParams


@register_method
class DANNP(Method):
    """DANN conditioned on predictions with entropy weighting (ToAlign's baseline); --method.toalign=true adds ToAlign."""

    name = "dannp"
    target_stream = "unlabelled"
    search_space = {"weight": [0.1, 0.3, 1.0]}  # the domain loss's weight

    class Params(AdversarialParams):
        condition: Literal["prediction", "multilinear", "randomized", "features"] = Field(
            "prediction",
            description="discriminator input: the softmax prediction (ToAlign's code), CDAN's "
            "multilinear map of features and prediction, its randomized form, or the "
            "features alone (DANN)",
        )
        randomized_dim: int = Field(1024, ge=1, description="output size of the randomized multilinear map")
        entropy_weighting: bool = Field(
            True,
            description="weight each sample's domain loss by "
            "entropy_offset + exp(-H(p)) (CDAN+E), normalised within its domain",
        )
        entropy_offset: float = Field(
            1.0, ge=0, description="offset of the entropy weight: 1 in CDAN+E, 0 in the GVB/HDA/ToAlign codes"
        )
        toalign: bool = Field(
            False,
            description="ToAlign: align target features with the source's task-oriented "
            "positive features f_p = s * (w_y ⊙ f) only",
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        classes, dim = backbone.classifier.out_features, backbone.out_dim
        if params.toalign and backbone.classifier.in_features != dim:
            raise ConfigError(
                f"method.toalign needs a head that is one Linear on the features; this backbone's "
                f"classifier reads {backbone.classifier.in_features} inputs, not the {dim} features "
                f"(use model.head_layers=1)"
            )
        self.reversal = GradientReversal(params.lambda_, params.lambda_gamma)
        self.randomized = (
            RandomizedMultilinearMap(dim, classes, params.randomized_dim) if params.condition == "randomized" else None
        )
        inputs = {
            "prediction": classes,
            "multilinear": dim * classes,
            "randomized": params.randomized_dim,
            "features": dim,
        }[params.condition]
        self.discriminator = DomainDiscriminator(inputs, params.hidden, params.dropout)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(features)

    def class_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """The weight rows ToAlign's positive features are made with (HDA subtracts its heuristic heads')."""
        return self.backbone.classifier.weight[labels]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.backbone.forward_features(x))

    def domain_loss(self, features: torch.Tensor, logits: torch.Tensor, domain: float, progress: float):
        probs = logits.softmax(1)
        condition = self.params.condition
        if condition == "prediction":
            inputs = probs
        elif condition == "features":
            inputs = features
        elif condition == "multilinear":  # CDAN conditions on detached predictions
            inputs = multilinear_map(features, probs.detach())
        else:
            inputs = self.randomized(features, probs.detach())
        weights = None
        if self.params.entropy_weighting:  # the weights' gradient is reversed too, as in the CDAN and ToAlign codes
            weights = entropy_weights(self.reversal(probs, progress), self.params.entropy_offset)
        return domain_bce(self.discriminator(self.reversal(inputs, progress)), domain, weights)

    def alignment(self, source: Batch, target: Batch, progress: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Classification and domain losses, and the source and target features (HDA's heuristic reads them)."""
        f_source, f_target = self.backbone.forward_features(source.x), self.backbone.forward_features(target.x)
        logits_source, logits_target = self.classify(f_source), self.classify(f_target)
        ce, acc = self.classification(logits_source, source.y)
        f_align, logits_align = f_source, logits_source
        if self.params.toalign:
            f_align = positive_features(f_source, self.class_weights(source.y))
            logits_align = self.classify(f_align)
        d_source = self.domain_loss(f_align, logits_align, SOURCE, progress)
        d_target = self.domain_loss(f_target, logits_target, TARGET, progress)
        losses = {
            "loss": ce + self.params.weight * (d_source + d_target) / 2,
            "ce": ce,
            "d_source": d_source,
            "d_target": d_target,
            "acc": acc,
        }
        return losses, torch.cat([f_source, f_target])

    def training_step(self, source: Batch, target: Batch, progress: float):
        return self.alignment(source, target, progress)[0]
