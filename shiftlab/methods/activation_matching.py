"""Deep activation matching: layer-wise adversarial matching with weight drift (Gaussian matching alone: its own file).

Huang, Huang, Krähenbühl, "Domain transfer through deep activation matching", ECCV 2018, pp. 590-605
(openaccess.thecvf.com/content_ECCV_2018/papers/Haoshuo_Huang_Domain_transfer_through_ECCV_2018_paper.pdf).
A source network F_s trained on source labels (``--model.weights``) is kept frozen; a target network F_t
starts as its copy and is adapted so that its activations at chosen layers on target images are distributed
like F_s's activations on source images. Equation and table numbers below are the paper's, read from images
of its equations and tables reproduced in a public summary of it (xiaosean.github.io, post of 2018-10-01,
"Domain transfer through deep activation matching 簡介"); the PDF itself was not readable here, so its
section numbers are not cited. What is taken from where:

* **The problem** (Eq. 1): keep F_t's weights as close as possible to F_s's, ``||theta_s - theta_t||^2``,
  subject to the activation distributions of the L chosen layers agreeing, ``P(A_i^s) ~ P(A_i^t)``.
* **Gaussian i.i.d. matching** (Eq. 2 and the affine map before it): under the model that each channel's
  activations are i.i.d. Gaussian, the constraint is met by the per-channel affine map
  ``alpha = sigma_s / sigma_t``, ``beta = mu_s - alpha * mu_t``
  (:class:`~shiftlab.nn.matching.GaussianMatcher`). ``--method.name=gaussian_matching`` is this alone,
  training-free (``--train.epochs=0``): :mod:`shiftlab.methods.gaussian_matching`.
* **General activation matching** (Eq. 3): the constraint relaxed into a penalty,
  ``||theta_s - theta_t||^2 + lambda * sum_i J(P(A_i^s), P(A_i^t))`` with J the Jensen-Shannon divergence,
  estimated by one discriminator per chosen layer that F_t is trained to fool, and ``lambda = 0.1``.
  Where the lambda sits: on the **matching** term, the drift having weight 1. That is the default here
  (``method.balance=document``: drift 1, sum-reduced, every layer's term 0.1;
  :func:`~shiftlab.losses.weight_drift`). ``method.balance=shiftlab`` keeps shiftlab's earlier balance (drift
  0.1 beside layer terms 0.1 / 1) and ``authors_code`` the released code's (below); an explicit
  ``method.drift``, ``drift_reduction`` or ``layer_weights`` overrides the preset. How the GAN loss's scale
  relates to J is not fixed by the equation (a standard GAN's generator loss is J up to constants).
  ``--method.gan=js`` is the standard GAN loss (J itself; the summary states the standard GAN for digits
  and LSGAN for segmentation), ``ls`` the least-squares one.
  The paper's Table 1 also reports the method without the drift ("GAM (no regularization)":
  ``--method.drift=0``), a fraction of a point below the full method on digits.
* **Layers**: for classification the summary states the last two layers (``method.layers=auto``), for
  segmentation four of ERFNet's 17 (the 4th, 8th, 12th and 17th).
* **Gaussian matching before the discriminators** (GAM, the default): the summary (``seeds/003``, note under
  "General matching") states that the activations must be Gaussian-matched before they enter the
  discriminators for training to work, and calls the whole GAM (``--method.gaussian=true``, default). The
  authors' released digits code (github.com/RsEnts/DAM_release, ``tools/train_adda.py``, built on ADDA's
  code) feeds them raw activations: ``--method.gaussian=false``, kept as an option.
* Details the equations leave open follow that released code, stated at each parameter: discriminators
  are MLPs 500-500 with ReLU and a 2-way output (here one logit: the same loss), Adam with learning rate
  2e-4 and beta1 0.5, L2 2.5e-5, one discriminator step per F_t step, the layers LeNet's fc3 (weight 0.1)
  and fc4 (weight 1), no source classification loss while adapting (F_t sees target images only; source
  images go through F_s), and the drift as each tensor's mean squared difference with weight 1
  (``--method.balance=authors_code``).
* Results: digits in the paper's Table 1 (MNIST -> USPS 95.7 +- 0.5, USPS -> MNIST 98.0 +- 0.5, SVHN -> MNIST
  74.6 +- 1.1; no adaptation 77.8, 70.7, 60.3), in ``docs/references/activation_matching.yaml``.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import ConfigError
from ..losses import discriminator_loss, generator_loss, weight_drift
from ..nn import DomainDiscriminator
from ..nn.batchnorm import eval_mode
from ..nn.matching import LAYERS_HELP, ActivationTaps, GaussianMatcher, layer_points, match_moments
from .base import Batch, Method, register_method

#: method.balance -> (drift weight, drift reduction, weight of the last layer's term; the others get 0.1)
BALANCES = {
    # Eq. 3 as the document shows it: ||theta_s - theta_t||^2 + lambda * sum_i J_i, lambda = 0.1
    "document": (1.0, "sum", 0.1),
    # shiftlab's earlier default: drift 0.1 (sum), layer terms 0.1 / 1
    "shiftlab": (0.1, "sum", 1.0),
    # the authors' released digits code: tf.reduce_mean per tensor with weight 1, fc3 0.1 and fc4 1
    "authors_code": (1.0, "mean", 1.0),
}


@register_method
class ActivationMatching(Method):
    """Layer-wise adversarial activation matching with weight drift (Huang et al., ECCV 2018, Eq. 3).

    F_s (``self.source``): a frozen copy of the loaded model, always in eval mode, in the checkpoint so a
    resume keeps it. F_t (``self.backbone``): trained on unlabelled target images only. Each step: F_s on the
    source batch and F_t on the target batch, read at the chosen points; ``d_steps`` updates of the
    discriminators (their own Adam) on detached activations; then one update of F_t (the loop's optimiser,
    ``optim.*``) on ``sum_l w_l * generator_loss(D_l(a_t,l)) + drift``. Evaluation predicts with F_t.
    """

    name = "activation_matching"
    target_stream = "unlabelled"
    requires_trained_model = True
    automatic_optimization = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: str | list[str] = Field("auto", description=LAYERS_HELP)
        balance: Literal["document", "shiftlab", "authors_code"] = Field(
            "document",
            description="preset of the weights of the terms, used for each of method.drift, "
            "method.drift_reduction and method.layer_weights left unset. 'document' (default): Eq. 3 as the "
            "document shows it (seeds/003_63417c418c7168ad.txt, 'General matching', lambda = 0.1): drift "
            "||theta_t - theta_s||^2 with weight 1 (sum), lambda 0.1 on every layer's matching term; 'shiftlab': "
            "shiftlab's earlier balance, drift 0.1 (sum) with layer weights 0.1 / 1 (last layer 1); "
            "'authors_code': the released digits code (github.com/RsEnts/DAM_release), drift 1 as each tensor's "
            "mean squared difference, layer weights 0.1 / 1",
        )
        layer_weights: list[float] | None = Field(
            None,
            description="weight of each layer's adversarial loss, in layers' order; null = method.balance's: "
            "'document' 0.1 for every layer, 'shiftlab' and 'authors_code' 0.1 for every layer "
            "but the last and 1 for the last (the authors' code: fc3 0.1, fc4 1)",
        )
        gan: Literal["js", "ls"] = Field(
            "js",
            description="'js': standard GAN loss (Jensen-Shannon; the paper's "
            "choice for digits); 'ls': least-squares GAN (Mao et al. 2017)",
        )
        drift: float | None = Field(
            None,
            ge=0,
            description="weight of the weight drift drift * ||theta_t - "
            "theta_s||^2; null = method.balance's ('document' 1, 'shiftlab' 0.1, "
            "'authors_code' 1); 0 = the document's 'GAM (no regularization)' ablation",
        )
        drift_reduction: Literal["sum", "mean"] | None = Field(
            None,
            description="'sum': the squared norm over all weights (the paper's Eq. 1 and 3); 'mean': each "
            "tensor's mean squared difference, summed over tensors (the authors' code); null = "
            "method.balance's ('document', 'shiftlab': sum; 'authors_code': mean)",
        )
        hidden: list[int] = Field(
            [500, 500], description="hidden widths of each discriminator MLP (the authors' code: 500-500, ReLU)"
        )
        d_lr: float = Field(2e-4, gt=0, description="discriminators' Adam learning rate (the authors' code: 2e-4)")
        d_betas: tuple[float, float] = Field(
            (0.5, 0.999), description="discriminators' Adam betas (the authors' code: beta1 0.5)"
        )
        d_weight_decay: float = Field(2.5e-5, ge=0, description="discriminators' L2 (the authors' code: 2.5e-5)")
        d_steps: int = Field(1, ge=1, description="discriminator updates per F_t update (the authors' code: 1)")
        gaussian: bool = Field(
            True,
            description="GAM (default): the discriminators see target activations "
            "Gaussian-matched to the source statistics (batch moments while training; the "
            "target's measured moments, kept at evaluation), as the document says training "
            "needs (seeds/003_63417c418c7168ad.txt, note under 'General matching': Gaussian "
            "i.i.d. matching then the discriminators, together called GAM); false = raw "
            "activations, as the authors' released digits code",
        )

        @model_validator(mode="after")
        def _fill_from_balance(self):
            drift, reduction, _ = BALANCES[self.balance]
            if self.drift is None:
                self.drift = drift
            if self.drift_reduction is None:
                self.drift_reduction = reduction
            return self

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        points = layer_points(backbone, params.layers)
        if params.layer_weights is None:
            last = BALANCES[params.balance][2]
            self.layer_weights = [0.1] * (len(points) - 1) + [last]
        elif len(params.layer_weights) != len(points):
            raise ConfigError(
                f"method.layer_weights has {len(params.layer_weights)} values but method.layers names "
                f"{len(points)} points ({', '.join(p.spec for p in points)}): give one weight each"
            )
        else:
            self.layer_weights = list(params.layer_weights)
        self.source = copy.deepcopy(backbone)  # F_s: the loaded model, frozen
        for p in self.source.parameters():
            p.requires_grad_(False)
        self.source.eval()
        self.points = points
        # the same names resolved in F_s, whose activations on source images are the "real" samples
        self._target_taps = ActivationTaps(backbone, points)
        self._source_taps = ActivationTaps(self.source, [p.spec for p in points])  # cloned: in-place ReLUs follow
        dims = self._channels(backbone)
        self.discriminators = nn.ModuleList(
            DomainDiscriminator(dims[p.spec], params.hidden, dropout=0.0) for p in points
        )
        self.matcher = GaussianMatcher(backbone, points) if params.gaussian else None
        # F_s's source statistics feed the matcher from training batches: same points, read on F_s
        self._gaussian_eval = False

    @torch.no_grad()
    def _channels(self, backbone) -> dict[str, int]:
        """Channels at each point, from one dry forward pass (eval mode, nothing kept)."""
        with eval_mode(backbone):
            for size in (64, 224):  # small digits networks take 64 px; a ViT wants its 224
                try:
                    with self._target_taps.reading():
                        backbone(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
                    break
                except RuntimeError:
                    continue
            values = self._target_taps.pop()
        return {k: v.shape[1] for k, v in values.items()}

    def train(self, mode: bool = True):
        super().train(mode)
        self.source.eval()  # F_s stays in eval mode: its BatchNorm statistics never move
        return self

    def configure_optimizers(self, base_lr: float):
        p = self.params
        return {
            "main": self.param_groups(base_lr, exclude=(self.discriminators,)),
            "discriminators": {
                "groups": [{"params": list(self.discriminators.parameters())}],
                "name": "adam",
                "lr": p.d_lr,
                "betas": tuple(p.d_betas),
                "weight_decay": p.d_weight_decay,
                "schedule": False,
            },
        }

    @staticmethod
    def _samples(a: torch.Tensor) -> torch.Tensor:
        """Discriminator samples: vectors as they are; feature maps one sample per position (channels last)."""
        return a if a.dim() == 2 else a.movedim(1, -1).reshape(-1, a.shape[1])

    def _discriminate(self, i: int, a: torch.Tensor) -> torch.Tensor:
        return self.discriminators[i](self._samples(a).float())

    def activations(self, source: Batch, target: Batch) -> tuple[dict, dict]:
        """F_s's activations on the source batch (no gradient) and F_t's on the target batch (with gradient),
        at the chosen points; with ``gaussian`` the target's are moment-matched to the source statistics."""
        with torch.no_grad(), self._source_taps.reading():
            self.source(source.x)
        a_s = self._source_taps.pop()
        with self._target_taps.reading():
            self.backbone(target.x)
        a_t = self._target_taps.pop()
        if self.matcher is not None:
            self.matcher.add_source(a_s)
            for i, p in enumerate(self.points):
                mean, std = (m.to(a_t[p.spec].dtype) for m in self.matcher.source_moments(i))
                a_t[p.spec] = match_moments(a_t[p.spec], mean, std)
        return a_s, a_t

    def discriminator_step(self, a_s: dict, a_t: dict) -> torch.Tensor:
        """One update of every discriminator (their optimiser only) on detached activations; F_t is untouched."""
        p, w = self.params, self.layer_weights
        opt = self.optimizer("discriminators")
        opt.zero_grad()
        loss = sum(
            w[i]
            * discriminator_loss(
                self._discriminate(i, a_s[pt.spec].detach()), self._discriminate(i, a_t[pt.spec].detach()), p.gan
            )
            for i, pt in enumerate(self.points)
        )
        self.manual_backward(loss)
        opt.step()
        return loss.detach()

    def generator_step(self, a_t: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of F_t (the loop's optimiser only): fool every discriminator, plus the weight drift."""
        p, w = self.params, self.layer_weights
        opt = self.optimizer("main")
        opt.zero_grad()
        adversarial = sum(
            w[i] * generator_loss(self._discriminate(i, a_t[pt.spec]), p.gan) for i, pt in enumerate(self.points)
        )
        drift = weight_drift(self.backbone, self.source, p.drift, p.drift_reduction)
        self.manual_backward(adversarial + drift)
        opt.step()
        # the discriminators' gradients from this backward are never stepped: free them now
        self.optimizer("discriminators").zero_grad()
        return adversarial.detach(), drift.detach()

    def training_step(self, source: Batch, target: Batch, progress: float):
        a_s, a_t = self.activations(source, target)
        # the discriminators first, then F_t against the updated discriminators (alternating updates; the
        # authors' code runs both updates from the same forward pass, which is what reusing a_s, a_t does)
        for _ in range(self.params.d_steps):
            d_loss = self.discriminator_step(a_s, a_t)
        adversarial, drift = self.generator_step(a_t)
        return {"loss": adversarial + drift, "d_loss": d_loss, "g_adv": adversarial, "drift": drift}

    # ---------------------------------------------------------------- evaluation

    def before_evaluation(self, domain: str, images) -> None:
        if self.matcher is None or domain != "target":
            return
        device = next(self.backbone.parameters()).device
        self.matcher.estimate_target(self.backbone, images, device)
        self.matcher.active = True

    def after_evaluation(self) -> None:
        if self.matcher is not None:
            self.matcher.active = False
