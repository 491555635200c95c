"""Unsupervised validators: scores of a model on unlabelled target images, computed from its class
probabilities alone.

Each validator takes ``probs``, an ``(N, C)`` tensor of softmax outputs on the target's adaptation images,
and returns one number where **higher is better**. The signature is the guarantee: a validator is never
handed a label, so a rule built on one cannot read target labels (the trainer feeds it from a loader
that yields images only).

* ``entropy``: minus the mean prediction entropy, ``-1/N sum_i H(p_i)``. Confident target predictions as
  a validation signal: Morerio, Cavazza & Murino, "Minimal-Entropy Correlation Alignment for Unsupervised
  Deep Domain Adaptation", ICLR 2018 (target entropy proposed there as
  the criterion to validate hyperparameters without target labels).
* ``im``: information maximisation, ``H(mean_i p_i) - 1/N sum_i H(p_i)``: the mutual information between
  inputs and predicted labels, high when predictions are confident *and* spread over the classes.
  Gomes, Krause & Perona, "Discriminative Clustering by Regularized Information Maximization",
  NeurIPS 2010; evaluated as a validator by Musgrave, Belongie & Lim, "Benchmarking Validation
  Methods for Unsupervised Domain Adaptation", ECCV 2022.
* ``snd``: soft neighborhood density. Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune it the
  Right Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density", ICCV 2021:
  the L2-normalised probability vectors give cosine similarities ``S_ij``
  (``j != i``); each row becomes a distribution ``P_ij = softmax_j(S_ij / tau)`` with ``tau = 0.05``, and
  SND is the mean row entropy ``1/N sum_i H(P_i)``: high when every sample has many close neighbours.
  The paper computes it over the whole target set; above ``max_samples`` images an evenly spaced
  subset keeps the ``N x N`` matrix in memory (a fixed choice, so the score stays deterministic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Validator = Callable[[torch.Tensor], float]

SND_TEMPERATURE = 0.05
SND_MAX_SAMPLES = 8192
SND_CHUNK_ROWS = 1024


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Row-wise Shannon entropy in nats; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def entropy_score(probs: torch.Tensor) -> float:
    """``-mean_i H(p_i)`` (Morerio et al., ICLR 2018): 0 for one-hot predictions, ``-log C`` for uniform ones."""
    return -_entropy(probs.double()).mean().item()


def information_maximization(probs: torch.Tensor) -> float:
    """``H(mean_i p_i) - mean_i H(p_i)`` (Gomes et al., NeurIPS 2010): ``log C`` for confident,
    class-balanced predictions; 0 when every sample gets the same distribution."""
    p = probs.double()
    return (_entropy(p.mean(0)) - _entropy(p).mean()).item()


def soft_neighborhood_density(
    probs: torch.Tensor, temperature: float = SND_TEMPERATURE, max_samples: int = SND_MAX_SAMPLES
) -> float:
    """Mean entropy of each sample's soft neighbourhood (Saito et al., ICCV 2021).

    ``N`` identical predictions give ``log(N - 1)`` (every neighbour equally close)."""
    p = probs.double()
    if len(p) < 2:
        raise ValueError("soft neighborhood density needs at least two target samples")
    if len(p) > max_samples:
        p = p[torch.linspace(0, len(p) - 1, max_samples).round().long()]
    f = torch.nn.functional.normalize(p, dim=1)
    n = len(f)
    total = f.new_zeros(())
    # row blocks keep memory at chunk x N instead of materialising (and copying) the N x N matrix
    for start in range(0, n, SND_CHUNK_ROWS):
        rows = torch.arange(start, min(start + SND_CHUNK_ROWS, n))
        logits = (f[rows] @ f.T) / temperature
        logits[torch.arange(len(rows)), rows] = float("-inf")  # a sample is not its own neighbour
        total += _entropy(torch.softmax(logits, dim=1)).sum()
    return (total / n).item()


VALIDATORS: dict[str, Validator] = {
    "entropy": entropy_score,
    "im": information_maximization,
    "snd": soft_neighborhood_density,
}


def metric_name(validator: str) -> str:
    """The metrics.csv / summary column of a validator's score."""
    return f"unsup_{validator}"


def score_all(probs: torch.Tensor, names) -> dict[str, float]:
    """``{unsup_<name>: score}`` for each validator in ``names``."""
    return {metric_name(n): VALIDATORS[n](probs) for n in names}
