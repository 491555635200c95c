"""Losses of deep activation matching: the weight drift and the two GAN forms of the layer discriminators.

Huang, Huang, Krähenbühl, "Domain transfer through deep activation matching", ECCV 2018, Eq. 3:
``min_theta_t ||theta_s - theta_t||^2 + lambda * sum_i J(P(A_i^s), P(A_i^t))``, lambda = 0.1, J the
Jensen-Shannon divergence between the source and target activation distributions of layer i (equation
numbers read from images of the paper's equations in a public summary, xiaosean.github.io, 2018-10-01):

* the **weight drift** ``||theta_t - theta_s||^2`` keeps the target network F_t near the frozen source
  network F_s it starts from (Eq. 1's objective, Eq. 3's first term), :func:`weight_drift`. The paper gives
  it weight 1 and the matching term lambda = 0.1; the weight here is the caller's (the method's default,
  puts 0.1 on the drift instead);
* each chosen layer has a discriminator told to separate F_s's activations on source images from F_t's on
  target images; F_t is trained to fool it (Eq. 3's J, estimated adversarially). The Jensen-Shannon form is
  the standard GAN loss (Goodfellow et al., NeurIPS 2014), with the generator's non-saturating "inverted
  labels" (as ADDA's and the authors' digits code write it); the least-squares form is LSGAN's (Mao et al.,
  ICCV 2017), which the paper uses for segmentation: :func:`discriminator_loss`, :func:`generator_loss`.

Domain labels follow :mod:`shiftlab.losses.adversarial`: source 0, target 1 (the losses are symmetric in them).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..utils import unknown_choice_error
from .adversarial import SOURCE, TARGET

GAN_FORMS = ("js", "ls")
DRIFT_REDUCTIONS = ("sum", "mean")


def weight_drift(
    target: nn.Module, source: nn.Module, weight: float = 0.1, reduction: Literal["sum", "mean"] = "sum"
) -> torch.Tensor:
    """``weight * sum_k ||theta_t,k - theta_s,k||^2`` over the parameters of ``target`` and ``source``, matched by name.

    ``reduction="sum"`` is the paper's squared norm over all weights (ECCV 2018, Eqs. 1 and 3): zero at
    initialisation (F_t starts as a copy of F_s) and of gradient ``2 * weight * (theta_t - theta_s)``.
    ``reduction="mean"`` averages each tensor's squared differences before summing over tensors, as the
    authors' released digits code does (there with weight 1). Only ``target`` receives gradients: the
    source parameters are read detached, so a frozen F_s never moves.
    """
    if reduction not in DRIFT_REDUCTIONS:
        raise ConfigError(unknown_choice_error("drift reduction", reduction, DRIFT_REDUCTIONS))
    reference = dict(source.named_parameters())
    terms = []
    for name, p in target.named_parameters():
        if name not in reference:
            raise ValueError(
                f"weight drift: the source network has no parameter '{name}' (the two networks "
                f"must share an architecture)"
            )
        diff = (p - reference[name].detach()).pow(2)
        terms.append(diff.sum() if reduction == "sum" else diff.mean())
    if not terms:
        return torch.zeros(())
    return weight * torch.stack([t.float() for t in terms]).sum()


def _check(form: str) -> None:
    if form not in GAN_FORMS:
        raise ConfigError(unknown_choice_error("method.gan", form, GAN_FORMS))


def _against(logits: torch.Tensor, label: float, form: str) -> torch.Tensor:
    logits = logits.reshape(-1).float()
    if form == "js":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))
    return (logits - label).pow(2).mean()  # LSGAN: the discriminator regresses the domain label


def discriminator_loss(source_logits: torch.Tensor, target_logits: torch.Tensor, form: str = "js") -> torch.Tensor:
    """The discriminator's loss: source activations labelled source, target ones labelled target, the mean
    of the two domains' losses (the authors' code averages over the concatenated batch)."""
    _check(form)
    return (_against(source_logits, SOURCE, form) + _against(target_logits, TARGET, form)) / 2


def generator_loss(target_logits: torch.Tensor, form: str = "js") -> torch.Tensor:
    """F_t's loss: its target activations should be taken for source ones (non-saturating inverted labels for
    the JS form; LSGAN's generator term for the least-squares form)."""
    _check(form)
    return _against(target_logits, SOURCE, form)
