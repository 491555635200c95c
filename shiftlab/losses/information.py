"""Losses on the predictions of unlabelled target images: entropy, information maximisation, pseudo-labels.

* :func:`mean_entropy`: entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by Entropy
  Minimization", NeurIPS 2004, Eq. 9's entropy term ``-1/n sum_i sum_k p_ik log p_ik``).
* :func:`diversity`: SHOT's diversity term (Liang et al., ICML 2020, Eq. 3): ``sum_k p̂_k log p̂_k``, p̂ the mean
  prediction of the batch (minus the entropy of the mean prediction), which keeps entropy minimisation from
  putting every image into one class. ``mean_entropy + diversity`` is SHOT's information maximisation loss
  (Eqs. 2-3; Gomes et al., NeurIPS 2010).
* :func:`thresholded_pseudo_label_loss`: FixMatch's unlabelled loss (Sohn et al., NeurIPS 2020, Eq. 4).
* :func:`centroid_pseudo_labels`: SHOT's self-supervised pseudo-labels (Eqs. 4-6): prediction-weighted class
  centroids of the features, nearest-centroid labels by cosine distance, centroids of those labels, again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adversarial import prediction_entropy


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions of a batch of logits (B, C)."""
    return prediction_entropy(logits.float().softmax(1)).mean()


def diversity(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``sum_k p̂_k log p̂_k`` with ``p̂`` the batch's mean softmax prediction: ``-H(p̂)``, minimal (``-log C``)
    when the batch's predictions are spread evenly over the classes."""
    mean = logits.float().softmax(1).mean(0)
    return (mean * mean.clamp_min(eps).log()).sum()


def thresholded_pseudo_label_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's ``1/B sum_b 1(max q_b >= tau) H(argmax q_b, p(strong_b))``, ``q`` the detached softmax of the weak
    view; returns the loss and the fraction of the batch above the threshold (the mask's mean)."""
    probs = weak_logits.detach().float().softmax(1)
    confidence, labels = probs.max(1)
    mask = (confidence >= threshold).float()
    loss = (F.cross_entropy(strong_logits.float(), labels, reduction="none") * mask).mean()
    return loss, mask.mean()


def _directions(features: torch.Tensor) -> torch.Tensor:
    """Features extended by a constant 1 and L2-normalised, as the authors' code compares them (cosine distance)."""
    g = torch.cat([features.flatten(1).float(), features.new_ones(len(features), 1).float()], 1)
    return F.normalize(g, dim=1)


@torch.no_grad()
def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """SHOT's Eq. 5 / 6 labelling: the class of the centroid nearest (cosine distance) to each feature row."""
    return classes[(_directions(features) @ F.normalize(centroids, dim=1).T).argmax(1)]


@torch.no_grad()
def centroid_pseudo_labels(
    features: torch.Tensor, probs: torch.Tensor, rounds: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SHOT's pseudo-labels of N images from their features (N, d) and predictions (N, C): (labels, centroids,
    classes), ``centroids[i]`` the centroid of class ``classes[i]`` (d + 1 wide: see below).

    Eq. 4: ``c_k = sum_x p_k(x) g(x) / sum_x p_k(x)``; Eq. 5: ``ŷ(x) = argmin_k D_cos(g(x), c_k)``; Eq. 6: the
    centroids of the labels ŷ and the nearest-centroid labels again, ``rounds`` times (the paper: once). As in
    the authors' code the features are first extended by a constant 1 and L2-normalised; a class that no image
    is assigned to gets no centroid in Eq. 6.
    """
    g = _directions(features)
    weights = probs.float()
    centroids = weights.T @ g / weights.sum(0).clamp_min(1e-8)[:, None]
    classes = torch.arange(probs.shape[1], device=g.device)
    labels = nearest_centroid(features, centroids, classes)
    for _ in range(rounds):
        onehot = F.one_hot(labels, probs.shape[1]).float()
        counts = onehot.sum(0)
        present = counts > 0
        centroids, classes = onehot.T[present] @ g / counts[present][:, None], classes[present]
        labels = nearest_centroid(features, centroids, classes)
    return labels, centroids, classes
