"""DANN: a domain classifier G_d behind gradient reversal makes the features domain-invariant.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (Sec. 3), and
Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (Sec. 4-5). The loss is
``CE(G_y(G_f(x_s)), y_s) + weight * (BCE(G_d(R(G_f(x_s))), 0) + BCE(G_d(R(G_f(x_t))), 1))``, each domain
term the mean over its batch (the paper's 1/n and 1/n' sums), R the gradient reversal whose coefficient
is ``lambda_`` or Ganin's schedule. G_d is an MLP on ``forward_features`` (DANN's 1024-1024 with
dropout), or, with a multi-layer head (AlexNet with ``model.head_layers=3``: G_f the conv part, G_y
fc6-fc8), a copy of that head with one output, initialised from its weights, as the PACS assignment asks.

``form=joint`` returns the summed loss for the loop's one backward pass; ``form=three_step`` is the
assignment's: source through G_y, source through G_d (domain 0), target through G_d (domain 1), one
forward and backward pass each, then one optimiser step. Both give the same gradients.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..losses import SOURCE, TARGET, domain_bce
from ..nn import DomainDiscriminator, GradientReversal, discriminator_from_head
from .base import Batch, Method, register_method


class AdversarialParams(BaseModel):
    """Keys every method of the adversarial family shares."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="weight of the domain (alignment) loss")
    lambda_: float | None = Field(
        None,
        ge=0,
        description="gradient-reversal coefficient, fixed; null = Ganin's "
        "schedule 2/(1+exp(-lambda_gamma*p))-1 rising from 0 to 1 over training",
    )
    lambda_gamma: float = Field(10.0, gt=0, description="gamma of Ganin's lambda schedule (ICML 2015: 10)")
    hidden: list[int] = Field(
        [1024, 1024],
        description="hidden widths of the MLP domain discriminator "
        "(DANN: [1024, 1024]; the DANN paper's digits domain classifier: [100])",
    )
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout after each hidden layer of the MLP discriminator")


@register_method
class DANN(Method):
    """Domain-adversarial training (Ganin & Lempitsky, ICML 2015), joint or three-step."""

    name = "dann"
    target_stream = "unlabelled"
    search_space = {"weight": [0.1, 0.3, 1.0]}  # the domain loss's weight

    class Params(AdversarialParams):
        form: Literal["joint", "three_step"] = Field(
            "joint",
            description="'joint': one summed loss, one backward pass; 'three_step': the PACS assignment's "
            "three backward passes (source G_y, source G_d, target G_d), then one step",
        )
        discriminator: Literal["auto", "mlp", "head_copy"] = Field(
            "auto",
            description="G_d: 'mlp' on the features; 'head_copy' a copy of the classifier head with one "
            "output, initialised from its weights (AlexNet, model.head_layers=3); 'auto' = "
            "head_copy when the head has several Linear layers, else mlp",
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        self.automatic_optimization = params.form == "joint"  # three_step does its own backward passes
        self.reversal = GradientReversal(params.lambda_, params.lambda_gamma)
        layered = sum(isinstance(m, nn.Linear) for m in backbone.head.modules()) > 1
        if params.discriminator == "head_copy" or (params.discriminator == "auto" and layered):
            self.discriminator = discriminator_from_head(backbone.head)
        else:
            self.discriminator = DomainDiscriminator(backbone.out_dim, params.hidden, params.dropout)

    def domain_loss(self, features, domain: float, progress: float):
        return domain_bce(self.discriminator(self.reversal(features, progress)), domain)

    def training_step(self, source: Batch, target: Batch, progress: float):
        if self.params.form == "three_step":
            return self.three_step(source, target, progress)
        features = self.backbone.forward_features(source.x)
        ce, acc = self.classification(self.backbone.head(features), source.y)
        d_source = self.domain_loss(features, SOURCE, progress)
        d_target = self.domain_loss(self.backbone.forward_features(target.x), TARGET, progress)
        return {
            "loss": ce + self.params.weight * (d_source + d_target),
            "ce": ce,
            "d_source": d_source,
            "d_target": d_target,
            "acc": acc,
            "lambda": features.new_tensor(self.reversal.coefficient(progress)),
        }

    def three_step(self, source: Batch, target: Batch, progress: float):
        """The assignment's form: three forward/backward passes, then one step of the loop's optimiser."""
        optimizer, w = self.optimizer(), self.params.weight
        optimizer.zero_grad()
        ce, acc = self.classification(self.backbone(source.x), source.y)
        self.manual_backward(ce)
        d_source = self.domain_loss(self.backbone.forward_features(source.x), SOURCE, progress)
        self.manual_backward(w * d_source)
        d_target = self.domain_loss(self.backbone.forward_features(target.x), TARGET, progress)
        self.manual_backward(w * d_target)
        optimizer.step()
        losses = {"loss": ce + w * (d_source + d_target), "ce": ce, "d_source": d_source, "d_target": d_target}
        return {
            **{k: v.detach() for k, v in losses.items()},
            "acc": acc,
            "lambda": ce.new_tensor(self.reversal.coefficient(progress)),
        }
