"""Activation shaping: forward hooks that replace a module's output by a binarized, masked or pruned one.

Two sources, and which operation comes from which:

* The study "Activation Shaping for Domain Adaptation" (AML 2023/24 project, ResNet-18 on PACS): a hook
  replaces the output A of a module by ``A_bin * M_bin`` with ``A_bin = 1[A > 0]`` and ``M_bin = 1[M > 0]``
  (:func:`binarize_and_mask`), M a tensor of A's shape: random with a fraction r of zeros
  (:func:`random_mask`), or the binarized activation of the same module on a target batch. Its stated next
  step keeps A's values: ``A * M_bin`` (:func:`mask_only`).
* Djurisic, Bozanic, Ashok, Liu, "Extremely Simple Activation Shaping for Out-of-Distribution Detection",
  ICLR 2023 (ASH), Sec. 2: per sample, the values below the p-th percentile of that sample's activation are
  set to 0, then the K values kept are left as they are (ASH-P, :func:`ash_p`), all set to ``s1 / K``
  (ASH-B, :func:`ash_b`) or multiplied by ``exp(s1 / s2)`` (ASH-S, :func:`ash_s`); s1 and s2 are the sums of
  the sample's activation before and after pruning.

:func:`select_modules` picks modules by name, type or frequency without touching the model's code, and
:class:`ActivationShaper` hooks them (and unhooks them: ``remove()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..utils import unknown_choice_error
from .hooks import ForwardHooks, named_module

MAP_MODES = ("binarize_mask", "mask")  # modes that read a map M
ASH_MODES = ("ash_p", "ash_b", "ash_s")  # modes that prune by percentile and read no map
MODES = MAP_MODES + ASH_MODES
MAPS = ("random", "target")
EVAL_MAPS = ("own_batch", "fixed_target")  # what target maps become at evaluation (see ActivationShaper)


# --------------------------------------------------------------------------------------------------
# The operations


def _binary(m: Tensor) -> Tensor:
    return m if m.dtype == torch.bool else m > 0


def binarize_and_mask(a: Tensor, m: Tensor) -> Tensor:
    """The study's shaping, ``A_bin * M_bin`` with ``A_bin = 1[A > 0]``, ``M_bin = 1[M > 0]``: 0/1 in ``a``'s dtype.

    A step function has no gradient: the loss trains no module before a binarizing hook.
    """
    return ((a > 0) & _binary(m)).to(a.dtype)


def mask_only(a: Tensor, m: Tensor) -> Tensor:
    """The study's non-binarized next step, ``A * M_bin``: A's values where ``M > 0``, 0 elsewhere."""
    return a * _binary(m).to(a.dtype)


def _kept(a: Tensor, percentile: float) -> tuple[Tensor, Tensor, int]:
    """(``a`` flattened per sample, the mask of the K largest values of each sample, K).

    ASH prunes the values below the p-th percentile of each sample, over all its non-batch dimensions;
    ``K = n - round(n * p / 100)`` values are kept (ties at the threshold are broken by ``topk``).
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    flat = a.flatten(1)
    n = int(flat.shape[1])  # a Python int under ONNX tracing too (shiftlab export): each sample's size is fixed
    k = n - round(n * percentile / 100)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        # out of place, with a tensor source: the form the ONNX exporter maps to ScatterElements (shiftlab export)
        index = flat.topk(k, dim=1).indices
        keep = keep.scatter(1, index, torch.ones_like(index, dtype=torch.bool))
    return flat, keep, k


def ash_p(a: Tensor, percentile: float = 65.0) -> Tensor:
    """ASH-P (Djurisic et al., ICLR 2023): values below the sample's p-th percentile set to 0, the rest kept."""
    flat, keep, _ = _kept(a, percentile)
    return (flat * keep.to(a.dtype)).view_as(a)


def ash_b(a: Tensor, percentile: float = 65.0) -> Tensor:
    """ASH-B (Djurisic et al., ICLR 2023): prune as ASH-P, then every kept value becomes ``s1 / K``, s1 the sum of
    the sample's activation before pruning and K the number kept (the sample's total is preserved)."""
    flat, keep, k = _kept(a, percentile)
    if k == 0:
        return torch.zeros_like(a)
    fill = flat.float().sum(1, keepdim=True) / k
    return (keep * fill).to(a.dtype).view_as(a)


def ash_s(a: Tensor, percentile: float = 65.0) -> Tensor:
    """ASH-S (Djurisic et al., ICLR 2023): prune as ASH-P, then multiply the kept values by ``exp(s1 / s2)``, s1 and
    s2 the sample's sums before and after pruning. Meant for non-negative activations (after a ReLU), as in the
    paper; a sample whose pruned sum is 0 is left pruned and unscaled."""
    flat, keep, _ = _kept(a, percentile)
    pruned = flat * keep.to(a.dtype)
    s1, s2 = flat.float().sum(1, keepdim=True), pruned.float().sum(1, keepdim=True)
    nonzero = s2 != 0
    scale = torch.exp(torch.where(nonzero, s1 / torch.where(nonzero, s2, 1.0), 0.0))
    return (pruned * scale).to(a.dtype).view_as(a)


ASH = {"ash_p": ash_p, "ash_b": ash_b, "ash_s": ash_s}


def random_mask(like: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """A 0/1 tensor of ``like``'s shape, dtype and device in which each entry is 0 with probability ``ratio``
    (Bernoulli(1 - ratio) ones): the study's random map M with mask ratio r. Drawn from torch's global RNG
    unless ``generator`` is given, so a checkpoint of that RNG resumes the draws exactly; ratio 0 gives all
    ones, 1 all zeros."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    return (torch.rand(like.shape, generator=generator, device=like.device) >= ratio).to(like.dtype)


def pair_maps(maps: Tensor, batch_size: int) -> Tensor:
    """Target maps for a source batch of ``batch_size``: source sample i takes target sample ``i % len(maps)``
    (the target batch is cycled when smaller and its tail unused when larger)."""
    index = torch.arange(batch_size, device=maps.device) % len(maps)
    return maps[index]


# --------------------------------------------------------------------------------------------------
# Choosing modules


def as_names(value: str | Iterable[str] | None) -> list[str]:
    """``"conv1, layer2.0.conv2"`` or ``["conv1", "layer2.0.conv2"]`` -> ``["conv1", "layer2.0.conv2"]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [s.strip() for s in items if str(s).strip()]


def select_modules(
    root: nn.Module, names: str | Iterable[str] | None = None, types: str | Iterable[str] | None = None, every: int = 1
) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of ``root`` in registration order (torchvision's: the forward order, except a module
    called more than once), chosen without touching the model's code:

    * ``names``: these modules (names relative to ``root``: ``conv1``, ``layer3.0.downsample.0``);
    * ``types``: modules of these classes, by class name (``Conv2d``, ``BatchNorm2d``, ``ReLU``, any ``torch.nn``
      or model class: ``BasicBlock``); a module matches a parent class's name too;
    * ``every``: every X-th of those matching, starting from the first.

    ``names`` and ``types`` together keep the named modules of those types. An unknown name or type is a
    :class:`ConfigError` that lists the valid ones; so is a selection that matches nothing.
    """
    if every < 1:
        raise ConfigError(f"every must be at least 1, got {every}")
    names, types = as_names(names), as_names(types)
    chosen = [(n, m) for n, m in root.named_modules() if n]  # the root itself has no name to choose it by
    if names:
        for name in names:
            named_module(root, name)  # an unknown name lists the valid ones
        chosen = [(n, m) for n, m in chosen if n in set(names)]
    if types:
        present = sorted({type(m).__name__ for _, m in root.named_modules()})
        classes = {n: {c.__name__ for c in type(m).__mro__} for n, m in root.named_modules()}
        for t in types:
            if not any(t in c for c in classes.values()):
                raise ConfigError(unknown_choice_error("module type", t, present))
        chosen = [(n, m) for n, m in chosen if classes[n] & set(types)]
    chosen = chosen[::every]
    if not chosen:
        raise ConfigError(f"no module matches names {names or '(any)'} and types {types}: nothing to shape")
    return chosen


# --------------------------------------------------------------------------------------------------
# Hooks


class ActivationShaper:
    """Forward hooks that shape the outputs of the modules :func:`select_modules` picks in ``root``.

    ``mode``: ``binarize_mask`` (``A_bin * M_bin``), ``mask`` (``A * M_bin``) or ``ash_p`` / ``ash_b`` / ``ash_s``
    (which read no map). ``maps``: where M comes from in training:

    * ``random``: drawn afresh at every call, a fraction ``mask_ratio`` of zeros (:func:`random_mask`);
    * ``target``: recorded: inside ``with shaper.recording(): model(target_x)`` the hooks store ``1[A > 0]``
      of each hooked module (detached, as bool) and leave the output alone; the next passes use them as M,
      source sample i taking target sample ``i % n_target`` (:func:`pair_maps`).

    A module called several times per forward (torchvision's BasicBlock calls its ``relu`` after ``bn1`` and
    again after the residual sum) is shaped at every call, and call k of a pass uses the map recorded at call
    k: a hook on ``layer1.1.relu`` shapes both activations of that block. Calls are counted from each forward
    of ``root``.

    In eval mode (of the hooked module) outputs pass unchanged unless ``at_eval``; then random maps are drawn
    as in training, and target maps come from ``eval_maps`` (the study does not say which):

    * ``own_batch`` (default): each evaluated batch is its own map (the evaluated images are the target, and
      nothing of the training batches is kept for them): ``A_bin * A_bin = A_bin``;
    * ``fixed_target``: maps recorded before evaluation on a fixed set of target images, inside
      ``with shaper.recording(for_eval=True): model(target_x)`` (in eval mode), used as in training:
      evaluated sample i of a batch takes recorded map ``i % n`` (:func:`pair_maps`). Evaluating before any
      such recording is an error.
    ``enabled = False`` turns every hook into the identity. The hooks live outside any ``state_dict``;
    ``remove()`` (or leaving a ``with`` block) takes them off and the model computes what it did before.
    """

    def __init__(
        self,
        root: nn.Module,
        names=None,
        types=None,
        every: int = 1,
        *,
        mode: str = "binarize_mask",
        maps: str = "random",
        mask_ratio: float = 0.5,
        percentile: float = 65.0,
        at_eval: bool = False,
        eval_maps: str = "own_batch",
        generator: torch.Generator | None = None,
    ):
        if mode not in MODES:
            raise ConfigError(unknown_choice_error("shaping mode", mode, MODES))
        if maps not in MAPS:
            raise ConfigError(unknown_choice_error("map source", maps, MAPS))
        if eval_maps not in EVAL_MAPS:
            raise ConfigError(unknown_choice_error("evaluation map source", eval_maps, EVAL_MAPS))
        if not 0 <= mask_ratio <= 1:
            raise ConfigError(f"mask ratio must lie in [0, 1], got {mask_ratio}")
        self.mode, self.maps, self.mask_ratio, self.percentile = mode, maps, mask_ratio, percentile
        self.at_eval, self.eval_maps, self.generator, self.enabled = at_eval, eval_maps, generator, True
        self.modules = select_modules(root, names, types, every)
        self._recording = False
        self._stored: dict[tuple[str, int], Tensor] = {}  # (module name, call index) -> recorded 1[A > 0]
        self._eval_stored: dict[tuple[str, int], Tensor] = {}  # the same, recorded for evaluation (fixed_target)
        self._into = self._stored
        self._calls: dict[str, int] = {}
        self._hooks = ForwardHooks()
        self._hooks.before(root, self._calls.clear)  # calls are counted from each forward of root
        for n, m in self.modules:
            self._hooks.activation(m, partial(self._hook, n))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.modules]

    @contextmanager
    def recording(self, for_eval: bool = False) -> Iterator[None]:
        """Forward passes inside record the target maps (replacing those of the last recording): those of
        training, or with ``for_eval`` those that ``eval_maps="fixed_target"`` evaluates with."""
        self._into = self._eval_stored if for_eval else self._stored
        self._into.clear()
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def remove(self) -> None:
        self._hooks.remove()
        self._stored, self._eval_stored = {}, {}
        self._into = self._stored

    def __enter__(self) -> ActivationShaper:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _hook(self, name: str, module: nn.Module, output):
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        if not self.enabled or not isinstance(output, Tensor):
            return None
        if self._recording:
            self._into[(name, call)] = (output > 0).detach()
            return None
        if not module.training and not self.at_eval:
            return None
        if self.mode in ASH:
            return ASH[self.mode](output, self.percentile)
        shape = binarize_and_mask if self.mode == "binarize_mask" else mask_only
        return shape(output, self._map(name, call, output, module.training))

    def _map(self, name: str, call: int, a: Tensor, training: bool) -> Tensor:
        if self.maps == "random":
            return random_mask(a, self.mask_ratio, self.generator)
        if not training and self.eval_maps == "own_batch":
            return a  # the evaluated batch is its own target
        stored = (self._stored if training else self._eval_stored).get((name, call))
        if stored is None:
            where = "" if training else "for_eval=True"
            raise RuntimeError(
                f"no target map for {name} (call {call + 1} of the pass): run a forward pass of "
                f"a target batch inside `with shaper.recording({where}):` first"
            )
        if stored.shape[1:] != a.shape[1:]:
            raise RuntimeError(
                f"the target map of {name} has shape {tuple(stored.shape[1:])} per image but the "
                f"source activation {tuple(a.shape[1:])}: source and target images must share a size"
            )
        return pair_maps(stored, len(a))
