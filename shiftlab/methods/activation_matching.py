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
  Note where the paper's lambda sits: on the **matching** term, the drift having weight 1. This class
  keeps the common summary's form (the default), ``drift * ||theta_t - theta_s||^2`` with ``drift`` 0.1 (default) beside
  adversarial losses of weight 0.1 / 1 (:func:`~shiftlab.losses.weight_drift`); the paper's balance of the
  two terms (drift ten times the matching term) would be ``--method.drift=10 --method.layer_weights=[1,1]``,
  up to how the GAN loss's scale relates to J. ``--method.gan=js`` is the standard GAN loss (J itself;
  the summary states the standard GAN for digits and LSGAN for segmentation), ``ls`` the least-squares one.
  The paper's Table 1 also reports the method without the drift ("GAM (no regularization)":
  ``--method.drift=0``), a fraction of a point below the full method on digits.
* **Layers**: for classification the summary states the last two layers (``method.layers=auto``), for
  segmentation four of ERFNet's 17 (the 4th, 8th, 12th and 17th).
* **Gaussian matching before the discriminators**: the summary states that the discriminators are given
  Gaussian-matched activations (``--method.gaussian=true``); the authors' released digits code
  (github.com/RsEnts/DAM_release, ``tools/train_adda.py``, built on ADDA's code) feeds them raw
  activations, which stays the default here.
* Details the equations leave open follow that released code, stated at each parameter: discriminators
  are MLPs 500-500 with ReLU and a 2-way output (here one logit: the same loss), Adam with learning rate
  2e-4 and beta1 0.5, L2 2.5e-5, one discriminator step per F_t step, the layers LeNet's fc3 (weight 0.1)
  and fc4 (weight 1), no source classification loss while adapting (F_t sees target images only; source
  images go through F_s), and the drift as each tensor's mean squared difference with weight 1
  (``--method.drift_reduction=mean --method.drift=1``).
* Results: digits in the paper's Table 1 (MNIST -> USPS 95.7 +- 0.5, USPS -> MNIST 98.0 +- 0.5, SVHN -> MNIST
  74.6 +- 1.1; no adaptation 77.8, 70.7, 60.3), in ``docs/references/activation_matching.yaml``.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ConfigError
from ..losses import discriminator_loss, generator_loss, weight_drift
from ..nn import DomainDiscriminator
from ..nn.batchnorm import eval_mode
from ..nn.matching import LAYERS_HELP, ActivationTaps, GaussianMatcher, layer_points, match_moments
from .base import Batch, Method, register_method


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
        layer_weights: list[float] | None = Field(
            None, description="weight of each layer's adversarial loss, in layers' order; null = the authors' "
                              "code: 0.1 for every layer but the last, 1 for the last (fc3 0.1, fc4 1)")
        gan: Literal["js", "ls"] = Field("js", description="'js': standard GAN loss (Jensen-Shannon; the paper's "
                                         "choice for digits); 'ls': least-squares GAN (Mao et al. 2017)")
        drift: float = Field(0.1, ge=0, description="lambda of the weight drift lambda * ||theta_t - theta_s||^2 "
                             "(default 0.1; the paper's Eq. 3 gives the drift weight 1 and the matching "
                             "term 0.1: drift 10 with layer_weights [1, 1] is its balance)")
        drift_reduction: Literal["sum", "mean"] = Field(
            "sum", description="'sum': the squared norm over all weights (the paper); 'mean': each tensor's mean "
                               "squared difference, summed over tensors (the authors' code, there with lambda 1)")
        hidden: list[int] = Field([500, 500], description="hidden widths of each discriminator MLP (the authors' "
                                  "code: 500-500, ReLU)")
        d_lr: float = Field(2e-4, gt=0, description="discriminators' Adam learning rate (the authors' code: 2e-4)")
        d_betas: tuple[float, float] = Field((0.5, 0.999), description="discriminators' Adam betas (the authors' "
                                             "code: beta1 0.5)")
        d_weight_decay: float = Field(2.5e-5, ge=0, description="discriminators' L2 (the authors' code: 2.5e-5)")
        d_steps: int = Field(1, ge=1, description="discriminator updates per F_t update (the authors' code: 1)")
        gaussian: bool = Field(False, description="discriminators see target activations Gaussian-matched to the "
                               "source statistics (batch moments while training; the target's measured moments, "
                               "kept at evaluation); false = raw activations, as the authors' digits code")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        points = layer_points(backbone, params.layers)
        if params.layer_weights is None:
            self.layer_weights = [0.1] * (len(points) - 1) + [1.0]
        elif len(params.layer_weights) != len(points):
            raise ConfigError(f"method.layer_weights has {len(params.layer_weights)} values but method.layers names "
                              f"{len(points)} points ({', '.join(p.spec for p in points)}): give one weight each")
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
        self.discriminators = nn.ModuleList(DomainDiscriminator(dims[p.spec], params.hidden, dropout=0.0)
                                            for p in points)
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
        return {"main": self.param_groups(base_lr, exclude=(self.discriminators,)),
                "discriminators": {"groups": [{"params": list(self.discriminators.parameters())}], "name": "adam",
                                   "lr": p.d_lr, "betas": tuple(p.d_betas), "weight_decay": p.d_weight_decay,
                                   "schedule": False}}

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
        loss = sum(w[i] * discriminator_loss(self._discriminate(i, a_s[pt.spec].detach()),
                                             self._discriminate(i, a_t[pt.spec].detach()), p.gan)
                   for i, pt in enumerate(self.points))
        self.manual_backward(loss)
        opt.step()
        return loss.detach()

    def generator_step(self, a_t: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of F_t (the loop's optimiser only): fool every discriminator, plus the weight drift."""
        p, w = self.params, self.layer_weights
        opt = self.optimizer("main")
        opt.zero_grad()
        adversarial = sum(w[i] * generator_loss(self._discriminate(i, a_t[pt.spec]), p.gan)
                          for i, pt in enumerate(self.points))
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
