"""Domain-classification losses of adversarial alignment, and CDAN's entropy weighting.

Domain labels: source 0, target 1 (the PACS DANN assignment's convention; the loss is symmetric in them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOURCE, TARGET = 0.0, 1.0


def domain_bce(logits: torch.Tensor, domain: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of domain logits (B,) or (B, 1) against one domain label.

    Unweighted: the batch mean. With per-sample ``weights``: ``sum(w * bce) / sum(w)``, the sum
    detached as in CDAN's and ToAlign's codes, so the weights act through their relative sizes only.
    """
    logits = logits.reshape(-1)
    bce = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, domain), reduction="none")
    if weights is None:
        return bce.mean()
    weights = weights.reshape(-1)
    return (weights * bce).sum() / weights.sum().detach()


def prediction_entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy ``H(p) = -sum_c p_c log p_c`` of each row of class probabilities (B,)."""
    return -(probs * probs.clamp_min(eps).log()).sum(1)


def entropy_weights(probs: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """CDAN+E's sample weights ``w = offset + exp(-H(p))`` (Long et al., NeurIPS 2018, "entropy
    conditioning": offset 1): confident, easy-to-transfer samples count more in the domain loss.
    The GVB/HDA/ToAlign codes use offset 0."""
    return offset + torch.exp(-prediction_entropy(probs))
