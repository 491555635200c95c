"""Batch nuclear-norm maximisation (BNM): discriminable and diverse predictions on a target batch.

Cui, Wang, Zhuo, Li, Huang, Tian, "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization
under Label Insufficient Situations", CVPR 2020, Eq. 8: ``L_bnm = -||A||_* / B``, ``A`` the (B, C) softmax
predictions of a target batch, ``||A||_*`` the sum of its singular values. The Frobenius norm of ``A``
measures how confident (discriminable) the predictions are and its rank how many classes they cover
(diversity); the nuclear norm bounds the one and relaxes the other. The authors' code divides by the
number of singular values, ``min(B, C)``, instead of ``B``: the same loss up to a constant factor.
"""

from __future__ import annotations

import torch


def batch_nuclear_norm(logits: torch.Tensor) -> torch.Tensor:
    """BNM's loss ``-||softmax(logits)||_* / B`` (CVPR 2020, Eq. 8); computed in float32 (SVD has no fp16)."""
    probs = logits.float().softmax(1)
    return -torch.linalg.svdvals(probs).sum() / len(probs)
