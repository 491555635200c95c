"""Activation taps and Gaussian i.i.d. matching: reading and re-mapping a network's activations at chosen layers.

Huang, Huang, Krähenbühl, "Domain transfer through deep activation matching", ECCV 2018: the target
network's activations at chosen layers should be distributed like the source network's on source images
(the constraint of the paper's Eq. 1). Under the paper's Gaussian i.i.d. model (each channel's activations
independent Gaussians) this is an affine map per channel, Eq. 2: ``a' = (a - mu_t) * sigma_s / sigma_t + mu_s``
(scale ``sigma_s / sigma_t``, shift ``mu_s - scale * mu_t``), with ``mu, sigma`` the channel's mean and standard
deviation over images (and positions, for feature maps): :class:`GaussianMatcher`. (Equation numbers read
from images of the paper's equations in a public summary, xiaosean.github.io, 2018-10-01; the paper's
section numbers were not available, nor what its text says about how the statistics are measured: the
estimation below, layer by layer over the adaptation images, is our choice.)

A *point* is where an activation is read, by module name relative to the hooked root (the names of
``root.named_modules()``, e.g. ``head``, ``features.classifier.fc2``, ``features.layer4.1.conv2``):
``NAME`` or ``NAME:out`` is the module's output, ``NAME:in`` its (first) input. Channels are dimension 1
(``(N, C)`` vectors, ``(N, C, H, W)`` maps). Unknown names are a :class:`~shiftlab.errors.ConfigError` that
lists the valid ones (:func:`~shiftlab.nn.hooks.named_module` resolves them).

How Gaussian matching differs from AdaBN (Li et al. 2016, :mod:`shiftlab.nn.batchnorm`): AdaBN
re-estimates the statistics of BatchNorm layers only, so target activations are normalised and then given
the BN's *learned* affine (gamma, beta), whatever the source activations' statistics were after it; it
does nothing to a network without BN (the DANN digits network). Gaussian matching works at any layer,
BN or not, and gives the target activation the *source activation's measured* mean and standard
deviation there. On a BN layer's output the two coincide only when the source's batch statistics equal
the BN's running ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .batchnorm import eval_mode, forward_images
from .hooks import WHERE, ForwardHooks, named_module
from .shaping import as_names


@dataclass(frozen=True)
class Point:
    """An activation read at ``module``'s output (``where="out"``) or first input (``"in"``)."""

    spec: str  # as written: "head:in"
    name: str  # the module's name in the root
    where: str
    module: nn.Module


def resolve_points(root: nn.Module, specs: str | Iterable[str]) -> list[Point]:
    """Points of ``root`` from ``"a, b:in"`` or ``["a", "b:in"]``; unknown names and suffixes are errors listing
    the valid ones; a point named twice is an error too."""
    points, seen = [], set()
    for spec in as_names(specs):
        name, _, where = spec.partition(":")
        where = where or "out"
        if where not in WHERE:
            raise ConfigError(
                f"layer '{spec}': unknown suffix ':{where}'; valid: ':out' (the module's output, "
                f"the default) or ':in' (its input)"
            )
        try:
            module = named_module(root, name)  # an unknown name lists the valid ones
        except ConfigError as err:
            raise ConfigError(f"method.layers: {err}") from None
        key = f"{name}:{where}"
        if key in seen:
            raise ConfigError(f"layer '{spec}' is named twice")
        seen.add(key)
        points.append(Point(key, name, where, module))
    if not points:
        raise ConfigError(
            "no layer chosen: name at least one module (valid names: those of the backbone's "
            "named_modules(), e.g. 'head', 'head:in')"
        )
    return points


LAYERS_HELP = (
    "points whose activations are matched, by module name inside the backbone (its named_modules(): "
    "'head', 'features.classifier.fc2', 'features.layer4'), ':in' for the module's input, ':out' (default) "
    "for its output; 'auto' = the paper's classification choice, the last two layers: the input and the "
    "output of the backbone's last Linear (LeNet's fc3 and fc4 in the authors' code)"
)


def layer_points(root: nn.Module, layers: str | Iterable[str]) -> list[Point]:
    """The points of a ``method.layers`` value (:data:`LAYERS_HELP`): ``"auto"`` is :func:`last_linear_points`."""
    return resolve_points(root, last_linear_points(root) if layers == "auto" else layers)


def last_linear_points(root: nn.Module) -> list[str]:
    """The paper's classification choice, "the last two layers" (ECCV 2018, digits experiments of its Table 1, as
    a public summary of the paper states it; the authors' digits code: LeNet's fc3 and fc4), for any backbone: the input of its last ``nn.Linear`` (the penultimate activation,
    LeNet's fc3 after its ReLU) and that layer's output (the logits)."""
    linears = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("method.layers=auto needs a Linear layer in the backbone; name the layers instead")
    return [f"{linears[-1]}:in", f"{linears[-1]}:out"]


def channel_moments(a: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation of ``a`` over every dimension but 1, in ``a``'s
    dtype and differentiable (used on a batch while training). A channel constant over the batch (a dead
    ReLU unit) has variance 0, where sqrt's gradient is infinite and 0 x inf makes every gradient NaN; the
    variance is floored at 1e-12 (std 1e-6, under :func:`match_moments`' eps): its own gradient is then 0, and a
    variance above the floor is unchanged."""
    dims = [0] + list(range(2, a.dim()))
    return a.mean(dims), a.var(dims, unbiased=False).clamp_min(1e-12).sqrt()


def _per_channel(v: Tensor, a: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (a.dim() - 2))).to(a.dtype)


def match_moments(
    a: Tensor,
    mean: Tensor,
    std: Tensor,
    own_mean: Tensor | None = None,
    own_std: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``(a - own_mean) * std / (own_std + eps) + mean`` per channel: ``a`` given the moments ``(mean, std)``.
    Without ``own_*`` the batch's own moments are used (differentiable)."""
    if own_mean is None or own_std is None:
        own_mean, own_std = channel_moments(a)
    scale = std / (own_std + eps)
    return (a - _per_channel(own_mean, a)) * _per_channel(scale, a) + _per_channel(mean, a)


class ActivationTaps:
    """Forward hooks that keep the latest activation at each point of ``root`` (``taps.values[spec]``).

    ``clone=True`` stores a copy that stays part of the autograd graph, so a later in-place operation of the
    model (an ``inplace`` ReLU after a Linear) does not change what was read. A module called several times
    in one forward keeps its last call. The hooks read only inside ``with taps.reading():`` (evaluation
    passes keep nothing). ``remove()`` takes the hooks off.
    """

    def __init__(self, root: nn.Module, points: list[Point] | str | Iterable[str], clone: bool = True):
        self.points = (
            points
            if points and isinstance(points, list) and isinstance(points[0], Point)
            else resolve_points(root, points)
        )
        self.clone, self.enabled = clone, False
        self.values: dict[str, Tensor] = {}
        self._hooks = ForwardHooks()
        for p in self.points:
            self._hooks.activation(p.module, partial(self._keep, p.spec), p.where)

    @property
    def specs(self) -> list[str]:
        return [p.spec for p in self.points]

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Forward passes inside store the activations (replacing those of an earlier read)."""
        self.values, self.enabled = {}, True
        try:
            yield
        finally:
            self.enabled = False

    def _keep(self, spec: str, module: nn.Module, a) -> None:
        if self.enabled and isinstance(a, Tensor):
            self.values[spec] = a.clone() if self.clone else a

    def pop(self) -> dict[str, Tensor]:
        """The activations of the last forward, in point order; forgets them."""
        out = {s: self.values[s] for s in self.specs if s in self.values}
        missing = [s for s in self.specs if s not in out]
        if missing:
            raise RuntimeError(f"no activation was read at {missing}: the forward pass did not reach these modules")
        self.values = {}
        return out

    def remove(self) -> None:
        self._hooks.remove()


class GaussianMatcher(nn.Module):
    """Gaussian i.i.d. matching (ECCV 2018, Eq. 2) at chosen points of ``root``, by forward hooks.

    Statistics: :meth:`add_source` accumulates exact per-channel sums of the (unmatched) activations of
    source images (so batches of a training run can feed it, and a checkpoint resumes it exactly; the sums
    are buffers of this module); :meth:`estimate_source` does it over a loader. :meth:`estimate_target`
    measures the target's statistics **layer by layer in forward order**, each layer with the earlier ones
    already matched, since a matched layer changes what the next one sees (the paper's point: matched
    activations give the next layer source-like inputs). While :attr:`active`, every hooked activation
    ``a`` becomes ``(a - mu_t) * sigma_s / sigma_t + mu_s``; with :attr:`active` False (the default) the
    hooks leave the model alone. The matcher is not a child of ``root``: hooking does not change
    ``root.state_dict()``.
    """

    def __init__(self, root: nn.Module, layers: str | Iterable[str] | list[Point], eps: float = 1e-5):
        super().__init__()
        self.points = (
            layers
            if layers and isinstance(layers, list) and isinstance(layers[0], Point)
            else resolve_points(root, layers)
        )
        self.eps = eps
        self.active = False
        self._recording: str | None = None  # "source" / "target" while estimating
        self._record_only: set[int] | None = None
        self._matching: set[int] = set()  # points matched while estimating the target layer by layer
        self._order: list[int] = []  # point indices in the order a forward reaches them
        for i in range(len(self.points)):
            for b in ("source_sum", "source_sq", "source_count", "target_mean", "target_std"):
                self.register_buffer(f"{b}_{i}", torch.zeros(0, dtype=torch.float64))
        self._hooks = ForwardHooks()
        for i, p in enumerate(self.points):
            self._hooks.activation(p.module, partial(self._transform, i), p.where)

    # ------------------------------------------------------------ statistics

    def _buf(self, kind: str, i: int) -> Tensor:
        return getattr(self, f"{kind}_{i}")

    def _accumulate(self, prefix: str, i: int, a: Tensor) -> None:
        a = a.detach().double()
        dims = [0] + list(range(2, a.dim()))
        s, sq = a.sum(dims), (a * a).sum(dims)
        n = torch.tensor([a.numel() / a.shape[1]], dtype=torch.float64, device=a.device)
        if self._buf(f"{prefix}_sum", i).numel() == 0:
            setattr(self, f"{prefix}_sum_{i}", s)
            setattr(self, f"{prefix}_sq_{i}", sq)
            setattr(self, f"{prefix}_count_{i}", n)
        else:
            self._buf(f"{prefix}_sum", i).add_(s)
            self._buf(f"{prefix}_sq", i).add_(sq)
            self._buf(f"{prefix}_count", i).add_(n)

    def _moments(self, prefix: str, i: int) -> tuple[Tensor, Tensor]:
        n = self._buf(f"{prefix}_count", i)
        if n.numel() == 0 or n.item() == 0:
            raise RuntimeError(f"no {prefix} statistics at {self.points[i].spec}: estimate them first")
        mean = self._buf(f"{prefix}_sum", i) / n
        var = (self._buf(f"{prefix}_sq", i) / n - mean * mean).clamp_min(0)
        return mean, var.sqrt()

    def source_moments(self, i: int) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation per channel of the source activations seen so far at point ``i``."""
        return self._moments("source", i)

    def target_moments(self, i: int) -> tuple[Tensor, Tensor]:
        if self._buf("target_mean", i).numel() == 0:
            raise RuntimeError(f"no target statistics at {self.points[i].spec}: call estimate_target first")
        return self._buf("target_mean", i), self._buf("target_std", i)

    def reset_source(self) -> None:
        for i in range(len(self.points)):
            for b in ("source_sum", "source_sq", "source_count"):
                setattr(self, f"{b}_{i}", torch.zeros(0, dtype=torch.float64, device=self._buf(b, i).device))

    def add_source(self, activations: dict[str, Tensor]) -> None:
        """Accumulate source statistics from activations read elsewhere (e.g. by :class:`ActivationTaps` on
        the frozen source network), keyed by point spec."""
        for i, p in enumerate(self.points):
            self._accumulate("source", i, activations[p.spec])

    @contextmanager
    def _mode(
        self,
        recording: str,
        only: set[int] | None = None,
        matching: set[int] | None = None,
    ) -> Iterator[None]:
        saved = self.active, self._recording, self._record_only, self._matching
        self.active, self._recording, self._record_only, self._matching = False, recording, only, matching or set()
        try:
            yield
        finally:
            self.active, self._recording, self._record_only, self._matching = saved

    def record_source(self) -> None:
        """From now until :meth:`stop_recording`, forward passes of the model add to fresh source statistics (unmatched):
        e.g. the training loop's own evaluation pass over source images."""
        self.reset_source()
        self._order = []
        self.active, self._recording, self._record_only, self._matching = False, "source", None, set()

    def stop_recording(self) -> None:
        self._recording = None

    @torch.no_grad()
    def estimate_source(self, model: nn.Module, images: Iterable, device="cpu", max_batches: int | None = None) -> int:
        """Replace the source statistics by those of ``images`` through ``model`` (unmatched); returns the count."""
        self.reset_source()
        self._order = []
        with self._mode("source"):
            return _run(model, images, device, max_batches)

    @torch.no_grad()
    def estimate_target(self, model: nn.Module, images: Iterable, device="cpu", max_batches: int | None = None) -> int:
        """Target statistics of ``images`` through ``model``, one pass per point in forward order, each pass with the
        points before it matched. Needs the source statistics."""
        for i in range(len(self.points)):
            self.source_moments(i)  # fail before any pass if a source statistic is missing
        if len(self._order) != len(self.points):  # the forward order: one short pass to see it
            self._order = []
            with self._mode("order"):
                _run(model, images, device, 1)
        seen, done = 0, set()
        for i in self._order:
            for b in ("target_sum", "target_sq", "target_count"):
                self.register_buffer(f"{b}_{i}", torch.zeros(0, dtype=torch.float64), persistent=False)
            with self._mode("target", only={i}, matching=set(done)):
                seen = _run(model, images, device, max_batches)
            mean, std = self._moments("target", i)
            setattr(self, f"target_mean_{i}", mean)
            setattr(self, f"target_std_{i}", std)
            done.add(i)
        return seen

    # ------------------------------------------------------------ hooks

    def _transform(self, i: int, module: nn.Module, a):
        if not isinstance(a, Tensor):
            return None
        if self._recording == "order":
            if i not in self._order:
                self._order.append(i)
            return None
        if self._recording is not None:
            if self._recording == "source" and i not in self._order:
                self._order.append(i)
            if self._record_only is None or i in self._record_only:
                self._accumulate(self._recording, i, a)
            return self._match(i, a) if i in self._matching else None
        return self._match(i, a) if self.active else None

    def _match(self, i: int, a: Tensor) -> Tensor:
        return match_moments(a, *self.source_moments(i), *self.target_moments(i), eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # lazily sized buffers: take the saved shapes before the copy
        for name in list(self._buffers):
            key = prefix + name
            if key in state_dict and self._buffers[name] is not None:
                self._buffers[name] = torch.zeros_like(state_dict[key], dtype=torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def remove(self) -> None:
        self._hooks.remove()


def _run(model: nn.Module, images: Iterable, device, max_batches: int | None) -> int:
    """Forward ``images`` (tensors, or ``(x, y)`` batches whose labels are ignored) in eval mode."""
    with eval_mode(model):
        seen = forward_images(model, images, device, max_batches)
    if seen == 0:
        raise ValueError("Gaussian matching got no images to estimate statistics from")
    return seen
