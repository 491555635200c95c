"""Building blocks of adversarial domain alignment: gradient reversal, domain discriminators, conditioning.

* Gradient reversal and its schedule: Ganin & Lempitsky, "Unsupervised Domain Adaptation by
  Backpropagation", ICML 2015, Sec. 3 (the layer) and Sec. 5 (``lambda_p = 2 / (1 + exp(-gamma p)) - 1``,
  gamma = 10); Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016, Sec. 5.2.2.
* Conditioning the discriminator on the classifier's predictions: Long et al., "Conditional Adversarial
  Domain Adaptation" (CDAN), NeurIPS 2018, "multilinear conditioning" (the outer product f ⊗ g) and its
  randomized form ``(R_f f) ⊙ (R_g g) / sqrt(d)``, used above ``d_f * d_g = 4096`` (:func:`cdan_condition`);
  :class:`ConditionalAdversary` puts reversal, conditioning, discriminator and CDAN+E's entropy weights
  together (CDAN, and MCC's ``base=dann|cdan``).
* ToAlign's task-oriented positive features: Wei et al., "ToAlign: Task-oriented Alignment for
  Unsupervised Domain Adaptation", NeurIPS 2021, Sec. 3 (task-oriented feature decomposition).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..losses import SOURCE, TARGET, domain_bce, entropy_weights


class ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-coeff`` (Ganin & Lempitsky 2015, Sec. 3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)  # a view, so the reversal has its own node in the graph

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return ReverseGradient.apply(x, coeff)


def ganin_lambda(progress: float, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma p)) - 1``: 0 at the start, towards 1 at the end, so early noisy domain
    gradients do not swamp the classifier (Ganin & Lempitsky 2015, Sec. 5; JMLR 2016, Sec. 5.2.2)."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class GradientReversal(nn.Module):
    """Gradient reversal with a fixed coefficient (``coeff``) or, when ``coeff`` is None, Ganin's
    schedule over training progress: ``forward(x, progress)``."""

    def __init__(self, coeff: float | None = None, gamma: float = 10.0):
        super().__init__()
        self.coeff, self.gamma = coeff, gamma

    def coefficient(self, progress: float) -> float:
        return self.coeff if self.coeff is not None else ganin_lambda(progress, self.gamma)

    def forward(self, x: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        return reverse_gradient(x, self.coefficient(progress))

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}" if self.coeff is not None else f"schedule=ganin, gamma={self.gamma}"


class DomainDiscriminator(nn.Sequential):
    """``in -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear -> 1`` domain logit.

    DANN's (Ganin et al. JMLR 2016, Sec. 5.2.2, and the CDAN/HDA/ToAlign codes): ``hidden=(1024, 1024)``,
    dropout 0.5. The paper's digits domain classifier is ``hidden=(100,)`` without dropout.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (1024, 1024), dropout: float = 0.5):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, 1))


def discriminator_from_head(head: nn.Module) -> nn.Module:
    """A domain branch with the architecture and weights of a classifier head (the PACS assignment's
    G_d, a copy of AlexNet's fc6-fc8): a deep copy whose last Linear is replaced by one with 1 output."""
    branch = copy.deepcopy(head)
    if isinstance(branch, nn.Linear):
        return nn.Linear(branch.in_features, 1)
    path = [n for n, m in branch.named_modules() if isinstance(m, nn.Linear)][-1]
    branch.set_submodule(path, nn.Linear(branch.get_submodule(path).in_features, 1))
    return branch


def multilinear_map(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """CDAN's multilinear conditioning: the flattened outer product ``g ⊗ f`` (B, C * d)."""
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """CDAN's randomized multilinear map ``(R_f f) ⊙ (R_g g) / sqrt(d)``, for when ``C * d`` is too wide.
    ``R_f``, ``R_g`` are fixed Gaussian matrices (buffers: saved in checkpoints, never trained)."""

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = 1024):
        super().__init__()
        self.output_dim = output_dim
        self.register_buffer("r_features", torch.randn(feature_dim, output_dim))
        self.register_buffer("r_probs", torch.randn(num_classes, output_dim))

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return (features @ self.r_features) * (probs @ self.r_probs) / math.sqrt(self.output_dim)


def positive_features(features: torch.Tensor, class_weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """ToAlign's task-discriminative "positive" source features (Wei et al. 2021, Sec. 3):
    ``f_p = s * (w_k ⊙ f)`` with ``w_k`` the classifier weight row of each sample's label and
    ``s = sqrt(||f||^2 / ||w_k ⊙ f||^2)``, so ``||f_p|| = ||f||``.

    ``class_weights`` (B, d) are detached here: the alignment must not move the classifier through
    ``w_k``. The scale stays a function of ``f``, as in the authors' code (microsoft/UDA, base_model.py).
    """
    w = class_weights.detach()
    scale = (features.pow(2).sum(1, keepdim=True) / (w * features).pow(2).sum(1, keepdim=True).clamp_min(eps)).sqrt()
    return features * (w * scale)


#: CDAN's rule (Long et al., NeurIPS 2018, Sec. 3.1): the full multilinear map while ``d_f * d_g <= 4096``,
#: the randomized one above it.
MULTILINEAR_LIMIT = 4096
CONDITIONS = ("features", "multilinear", "randomized")


def cdan_condition(feature_dim: int, num_classes: int, randomized: bool | None = None) -> str:
    """``"randomized"`` or ``"multilinear"``: as asked, or, when ``randomized`` is None, by CDAN's rule
    (randomized when ``feature_dim * num_classes`` exceeds :data:`MULTILINEAR_LIMIT`)."""
    if randomized is None:
        randomized = feature_dim * num_classes > MULTILINEAR_LIMIT
    return "randomized" if randomized else "multilinear"


class ConditionalAdversary(nn.Module):
    """The domain term of DANN and CDAN as one module: a :class:`DomainDiscriminator` behind
    :class:`GradientReversal` that sees the features (``condition="features"``: DANN), their multilinear
    map with the class probabilities (``"multilinear"``: CDAN's ``f ⊗ g``) or its randomized form
    (``"randomized"``), the probabilities detached as in the CDAN code. With ``entropy=True`` each sample's
    BCE is weighted by ``1 + exp(-H(g))`` (CDAN+E), normalised within its domain, the weights' gradient
    reversed too (CDAN code). ``forward`` returns the source and the target domain losses; a method adds
    ``weight * (d_source + d_target) / 2``, the mean over the concatenated batch of the CDAN code.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        condition: str = "features",
        *,
        randomized_dim: int = 1024,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        lambda_: float | None = None,
        lambda_gamma: float = 10.0,
        entropy: bool = False,
    ):
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, not {condition!r}")
        self.condition, self.entropy = condition, entropy
        self.reversal = GradientReversal(lambda_, lambda_gamma)
        self.randomized = (
            RandomizedMultilinearMap(feature_dim, num_classes, randomized_dim) if condition == "randomized" else None
        )
        inputs = {"features": feature_dim, "multilinear": feature_dim * num_classes, "randomized": randomized_dim}[
            condition
        ]
        self.discriminator = DomainDiscriminator(inputs, hidden, dropout)

    def domain_loss(self, features: torch.Tensor, logits: torch.Tensor, domain: float, progress: float) -> torch.Tensor:
        probs = logits.softmax(1)
        if self.condition == "features":
            inputs = features
        elif self.condition == "multilinear":
            inputs = multilinear_map(features, probs.detach())
        else:
            inputs = self.randomized(features, probs.detach())
        weights = entropy_weights(self.reversal(probs, progress)) if self.entropy else None
        return domain_bce(self.discriminator(self.reversal(inputs, progress)), domain, weights)

    def forward(
        self,
        source_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_features: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.domain_loss(source_features, source_logits, SOURCE, progress),
            self.domain_loss(target_features, target_logits, TARGET, progress),
        )
