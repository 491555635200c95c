"""Margin disparity discrepancy (MDD): the auxiliary head's loss.

Zhang, Liu, Long, Jordan, "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019, Sec. 5
(Eq. 29 and the losses below it): an auxiliary head f' is trained to agree with the main classifier f on
the source and to disagree with it on the target; the features are trained, through gradient reversal,
to do the opposite. With ``h_f`` the labels f predicts (detached) and ``gamma`` the margin factor::

    D_gamma = gamma * E_s[log softmax(f'(x))_{h_f(x)}] + E_t[log(1 - softmax(f'(x))_{h_f(x)})]

f' maximises ``D_gamma``, the features minimise it. :func:`margin_disparity_loss` returns ``-D_gamma``,
the source cross-entropy ``gamma * L(f', f)`` plus the target term ``-log(1 - softmax)``, which f'
minimises, as the authors' code (thuml/MDD) writes it. The target term is computed in log space,
``log(1 - p_y) = logsumexp_{j != y} z_j - logsumexp_j z_j``: exact, and its gradient stays bounded where the
code's ``log(clamp(1 - softmax, 1e-15))`` explodes as f' agrees with f.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_disparity_loss(
    source_logits: torch.Tensor,
    target_logits: torch.Tensor,
    source_adversary: torch.Tensor,
    target_adversary: torch.Tensor,
    margin: float = 4.0,
) -> torch.Tensor:
    """``-D_gamma``: ``margin * CE(f'(x_s), h_f(x_s)) + mean(-log(1 - softmax(f'(x_t))_{h_f(x_t)}))``.

    ``*_logits`` are f's outputs (only their argmax is read), ``*_adversary`` f''s on the same images.
    """
    source_labels, target_labels = source_logits.detach().argmax(1), target_logits.detach().argmax(1)
    source = F.cross_entropy(source_adversary.float(), source_labels)
    z = target_adversary.float()
    others = z.scatter(1, target_labels.unsqueeze(1), float("-inf"))  # every class but f's label
    target = -(others.logsumexp(1) - z.logsumexp(1)).mean()
    return margin * source + target
