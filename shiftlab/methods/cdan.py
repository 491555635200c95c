"""CDAN and CDAN+E: a domain discriminator conditioned on the classifier's predictions.

Long, Cao, Wang, Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018, Sec. 3. The
discriminator D sees the multilinear map ``T(h) = f ⊗ g`` of the features f and the class probabilities
g (Eq. 6's conditional adversarial loss, D on ``T(h)`` behind gradient reversal, the minimax of Eq. 7),
or, when ``d_f * d_g`` exceeds 4096, the randomized multilinear map ``(R_f f) ⊙ (R_g g) / sqrt(d)`` of
output ``d = randomized_dim`` (Sec. 3.1; ``method.randomized=null`` applies that rule, true / false force
one map). CDAN+E (``method.entropy=true``, Eq. 9) weights each example's domain loss by
``1 + exp(-H(g))``, so confident, easy-to-transfer examples count more. Following the authors' code
(thuml/CDAN): g is detached inside the map, the entropy weights are normalised within each domain and
their gradient is reversed, and the domain loss is the mean over the concatenated source + target batch,
``(d_source + d_target) / 2``. The pieces: :class:`~shiftlab.nn.ConditionalAdversary` (shared with MCC's
``base=cdan``), :func:`~shiftlab.nn.multilinear_map`, :class:`~shiftlab.nn.RandomizedMultilinearMap`,
:func:`~shiftlab.losses.entropy_weights`. DANNP's ``condition=multilinear|randomized`` is the same loss
inside ToAlign's baseline.
"""

from __future__ import annotations

from pydantic import Field

from ..nn import ConditionalAdversary, cdan_condition
from .base import Batch, Method, register_method
from .dann import AdversarialParams


class CDANParams(AdversarialParams):
    """CDAN's keys (also MCC's, for its ``base=cdan``). The defaults are the paper's / code's: trade-off 1,
    Ganin's lambda schedule, a 1024-1024 discriminator with dropout 0.5, randomized output 1024."""

    entropy: bool = Field(
        False,
        description="CDAN+E: weight each example's domain loss by 1 + exp(-H(p)) (Eq. 9), normalised within its domain",
    )
    randomized: bool | None = Field(
        None,
        description="use the randomized multilinear map; null = CDAN's rule: "
        "randomized when feature dim x classes > 4096, else the full map f ⊗ g",
    )
    randomized_dim: int = Field(
        1024, ge=1, description="output size d of the randomized multilinear map (the paper's 1024)"
    )


def cdan_adversary(backbone, params: CDANParams, condition: str | None = None) -> ConditionalAdversary:
    """The CDAN discriminator for ``backbone`` (``condition`` overrides the map, e.g. ``"features"`` for DANN)."""
    dim, classes = backbone.out_dim, backbone.classifier.out_features
    return ConditionalAdversary(
        dim,
        classes,
        condition or cdan_condition(dim, classes, params.randomized),
        randomized_dim=params.randomized_dim,
        hidden=params.hidden,
        dropout=params.dropout,
        lambda_=params.lambda_,
        lambda_gamma=params.lambda_gamma,
        entropy=params.entropy and condition is None,
    )


@register_method
class CDAN(Method):
    """Conditional adversarial domain adaptation (Long et al., NeurIPS 2018); --method.entropy=true is CDAN+E."""

    name = "cdan"
    target_stream = "unlabelled"
    search_space = {"weight": [0.1, 0.3, 1.0]}

    Params = CDANParams

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        self.adversary = cdan_adversary(backbone, params)

    def training_step(self, source: Batch, target: Batch, progress: float):
        f_source, f_target = self.backbone.forward_features(source.x), self.backbone.forward_features(target.x)
        logits_source, logits_target = self.backbone.head(f_source), self.backbone.head(f_target)
        ce, acc = self.classification(logits_source, source.y)
        d_source, d_target = self.adversary(f_source, logits_source, f_target, logits_target, progress)
        return {
            "loss": ce + self.params.weight * (d_source + d_target) / 2,
            "ce": ce,
            "d_source": d_source,
            "d_target": d_target,
            "acc": acc,
            "lambda": ce.new_tensor(self.adversary.reversal.coefficient(progress)).detach(),
        }
