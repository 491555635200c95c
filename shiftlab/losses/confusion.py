"""Minimum class confusion (MCC) of a target batch's predictions: a loss any method can add.

Jin, Wang, Long, Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020, Sec. 3
(Eqs. 1-6): temperature rescaling ``Y = softmax(Z / T)``; the uncertainty of each example, the entropy
``H(y_i)``, turned into weights ``W_ii = B (1 + exp(-H(y_i))) / sum_i' (1 + exp(-H(y_i')))``; the weighted class
correlation ``C = Y^T W Y`` (C x C); category normalisation, each entry divided by its column's sum
``C~_jj' = C_jj' / sum_j'' C_j''j'``; the loss, the off-diagonal mass ``sum_{j != j'} |C~_jj'| / C``. As in the
authors' code (thuml/Versatile-Domain-Adaptation), the weights are detached: they rank examples, they are
not trained.
"""

from __future__ import annotations

import torch

from .adversarial import prediction_entropy


def class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """The category-normalised, uncertainty-weighted class correlation ``C~`` (C, C) of a batch of logits (B, C)."""
    probs = (logits.float() / temperature).softmax(1)
    weights = 1 + torch.exp(-prediction_entropy(probs).detach())
    weights = len(probs) * weights / weights.sum()
    confusion = probs.t() @ (weights.unsqueeze(1) * probs)
    return confusion / confusion.sum(0, keepdim=True)


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """MCC's loss: the between-class confusion ``(sum C~ - trace C~) / C`` of the batch's predictions."""
    confusion = class_confusion(logits, temperature)
    return (confusion.sum() - confusion.trace()) / confusion.shape[0]
