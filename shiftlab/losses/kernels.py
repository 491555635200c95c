"""Moment and kernel discrepancies between a source and a target batch of activations.

* :func:`coral_loss`: Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
  Adaptation", ECCV Workshops 2016, Eq. 1): ``||C_S - C_T||_F^2 / (4 d^2)``, with the covariances of Eqs. 2-3.
* :func:`gaussian_kernel`, :func:`mmd`, :func:`mk_mmd`, :func:`joint_mmd`: the multi-kernel maximum mean
  discrepancy of DAN (Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015,
  Eqs. 1-2, the unbiased quadratic estimate of Eq. 3 and the linear-time estimate of Eq. 6, quad-tuples
  ``(x_s, x_s', x_t, x_t')``) and the joint MMD of JAN (Long et al., "Deep Transfer Learning with Joint
  Adaptation Networks", ICML 2017, Eqs. 8-10: the kernel of the joint activations of several layers is the
  product of the layers' kernels).

Bandwidths: a Gaussian kernel ``exp(-||a - b||^2 / (m * s))`` for each multiplier ``m`` of a base ``s``, the
mean (JAN's code) or median (DAN's paper: "the median pairwise distance") squared distance between the
joint batch's distinct pairs, detached; the multi-kernel is the uniform mean of those kernels (DAN's
``beta_u`` all equal rather than the paper's quadratic program of Eq. 5, as JAN's and most re-implementations do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Estimator = Literal["quadratic", "linear"]
BandwidthBase = Literal["mean", "median"]

#: DAN's digits-sized family in JAN's code: 2^-3 .. 2^1 times the base squared distance
DAN_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` flattened, in at least float32 (autocast's half precision is too coarse for these sums)."""
    x = x.flatten(1)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance of the rows of ``x`` (n, d): ``(X^T X - (1^T X)^T (1^T X) / n) / (n - 1)`` (CORAL Eq. 2-3)."""
    n = x.shape[0]
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(n - 1, 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL's loss (Eq. 1): ``||C_S - C_T||_F^2 / (4 d^2)`` between two batches of d-dim activations."""
    source, target = _wide(source), _wide(target)
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


def gaussian_kernel(
    z: torch.Tensor,
    multipliers: Sequence[float] = DAN_MULTIPLIERS,
    sigma: float | None = None,
    base: BandwidthBase = "mean",
) -> torch.Tensor:
    """Kernel matrix (N, N) of the rows of ``z``: the mean over ``multipliers`` of ``exp(-||a - b||^2 / (m s))``,
    ``s`` the detached mean or median squared distance between distinct rows, or, with ``sigma``, the one
    fixed-bandwidth kernel ``exp(-||a - b||^2 / (2 sigma^2))`` (JAN's softmax layer: sigma 0.92)."""
    z = _wide(z)
    d2 = torch.cdist(z, z).pow(2)
    if sigma is not None:
        return torch.exp(-d2 / (2 * sigma**2))
    off = d2.detach()[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    s = (off.mean() if base == "mean" else off.median()).clamp_min(1e-12)
    return torch.stack([torch.exp(-d2 / (m * s)) for m in multipliers]).mean(0)


def mmd(kernel: torch.Tensor, n_source: int, estimator: Estimator = "quadratic") -> torch.Tensor:
    """Squared MMD from the kernel matrix of ``[source; target]`` (the first ``n_source`` rows are the source).

    ``quadratic``: the unbiased U-statistic (DAN Eq. 3 estimated without the i = j terms),
    ``mean_{i!=j} k(s_i, s_j) + mean_{i!=j} k(t_i, t_j) - 2 mean_{i,j} k(s_i, t_j)``.
    ``linear``: DAN's linear-time unbiased estimate (Eq. 6), ``2/n sum_i g(z_i)`` over the quad-tuples
    ``z_i = (s_{2i-1}, s_{2i}, t_{2i-1}, t_{2i})``, ``g = k(s, s') + k(t, t') - k(s, t') - k(s', t)``;
    needs equal, even batch sizes (an odd last sample is dropped)."""
    k_ss, k_tt = kernel[:n_source, :n_source], kernel[n_source:, n_source:]
    k_st = kernel[:n_source, n_source:]
    if estimator == "linear":
        n = min(n_source, len(kernel) - n_source) // 2 * 2
        a, b = torch.arange(0, n, 2, device=kernel.device), torch.arange(1, n, 2, device=kernel.device)
        g = k_ss[a, b] + k_tt[a, b] - k_st[a, b] - k_st[b, a]
        return g.mean()
    n_t = len(kernel) - n_source

    def within(k: torch.Tensor, n: int) -> torch.Tensor:
        return (k.sum() - k.diagonal().sum()) / max(n * (n - 1), 1)

    return within(k_ss, n_source) + within(k_tt, n_t) - 2 * k_st.mean()


def mk_mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    multipliers: Sequence[float] = DAN_MULTIPLIERS,
    estimator: Estimator = "quadratic",
    base: BandwidthBase = "mean",
) -> torch.Tensor:
    """DAN's multi-kernel MMD (Eqs. 1-2) between two batches of activations of one layer."""
    return mmd(
        gaussian_kernel(torch.cat([source.flatten(1), target.flatten(1)]), multipliers, base=base),
        len(source),
        estimator,
    )


def joint_mmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    kernels: Sequence[dict],
    estimator: Estimator = "quadratic",
) -> torch.Tensor:
    """JAN's joint MMD (Eqs. 8-10): the MMD of the product over layers of each layer's kernel matrix;
    ``kernels[l]`` are :func:`gaussian_kernel`'s keyword arguments for layer ``l``."""
    product = None
    for s, t, kw in zip(sources, targets, kernels, strict=True):
        k = gaussian_kernel(torch.cat([s.flatten(1), t.flatten(1)]), **kw)
        product = k if product is None else product * k
    return mmd(product, len(sources[0]), estimator)
