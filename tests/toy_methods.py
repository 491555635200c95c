"""Toy methods for the contract tests, loaded as a plugin (``--experiment.plugins=[toy_methods]``).

They are deliberately small versions of what the adversarial and activation-matching issues need:
a discriminator with its own optimiser updated in alternation (least-squares GAN losses), and the
three-step DANN of the PACS assignment written both as one summed loss and as three backward passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from shiftlab.methods import Method, register_method


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _discriminator(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, 1))


@register_method
class ToyTwoPlayer(Method):
    """Alternating updates: the discriminator (Adam) first, then features and classifier (the loop's SGD)."""

    name = "toy_two_player"
    target_stream = "unlabelled"
    automatic_optimization = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: str = Field("both", description="which optimisers step: both, disc or main")
        adversarial: float = Field(0.1, description="weight of the generator's least-squares loss")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        self.discriminator = _discriminator(backbone.out_dim)

    def configure_optimizers(self, base_lr):
        return {
            "main": self.param_groups(base_lr, exclude=(self.discriminator,)),
            "disc": {
                "groups": [{"params": list(self.discriminator.parameters())}],
                "name": "adam",
                "lr": 1e-3,
                "betas": (0.5, 0.999),
                "schedule": False,
            },
        }

    def training_step(self, source, target, progress):
        fs, ft = self.backbone.forward_features(source.x), self.backbone.forward_features(target.x)
        disc, main = self.optimizer("disc"), self.optimizer("main")
        d_loss = F.mse_loss(self.discriminator(fs.detach()), fs.new_ones(len(fs), 1)) + F.mse_loss(
            self.discriminator(ft.detach()), ft.new_zeros(len(ft), 1)
        )
        if self.params.steps in ("both", "disc"):
            disc.zero_grad()
            self.manual_backward(d_loss)
            disc.step()
        ce, acc = self.classification(self.backbone.head(fs), source.y)
        g_loss = F.mse_loss(self.discriminator(ft), ft.new_ones(len(ft), 1))
        if self.params.steps in ("both", "main"):
            main.zero_grad()
            self.manual_backward(ce + self.params.adversarial * g_loss)
            main.step()
        return {"ce": ce, "d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "acc": acc}


class _ToyDANN(Method):
    target_stream = "unlabelled"

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        self.domain_classifier = _discriminator(backbone.out_dim)

    def three_losses(self, source, target):
        """Source through G_y; source through G_d (domain 0); target through G_d (domain 1)."""
        ce, _ = self.classification(self.backbone(source.x), source.y)
        d_source = self.domain_classifier(_Reverse.apply(self.backbone.forward_features(source.x)))
        d_target = self.domain_classifier(_Reverse.apply(self.backbone.forward_features(target.x)))
        return (
            ce,
            F.binary_cross_entropy_with_logits(d_source, torch.zeros_like(d_source)),
            F.binary_cross_entropy_with_logits(d_target, torch.ones_like(d_target)),
        )


@register_method
class ToyDANNJoint(_ToyDANN):
    """The three DANN losses summed; the loop does one backward pass."""

    name = "toy_dann_joint"

    def training_step(self, source, target, progress):
        ce, ds, dt = self.three_losses(source, target)
        return {"loss": ce + ds + dt, "ce": ce.detach()}


@register_method
class ToyDANNThreeStep(_ToyDANN):
    """The assignment's form: three backward passes, then one optimiser step."""

    name = "toy_dann_three_step"
    automatic_optimization = False

    def training_step(self, source, target, progress):
        opt = self.optimizer()
        opt.zero_grad()
        ce, ds, dt = self.three_losses(source, target)
        for loss in (ce, ds, dt):
            self.manual_backward(loss)
        opt.step()
        return {"loss": (ce + ds + dt).detach(), "ce": ce.detach()}


@register_method
class ToyFailing(Method):
    """Source-only training that raises once training has gone ``fail_at`` of the way (a trial that breaks)."""

    name = "toy_failing"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fail_at: float = Field(0.3, description="training progress at which the step raises")

    def training_step(self, source, target, progress):
        if progress >= self.params.fail_at:
            raise RuntimeError(f"toy failure at progress {progress:.2f}")
        logits = self.backbone(source.x)
        return {"loss": F.cross_entropy(logits, source.y)}
