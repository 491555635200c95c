"""The method contract: a method says what one training step costs; the loop does everything else.

A method is a small ``nn.Module`` around the backbone (and whatever heads or discriminators it adds).
It declares which streams it reads, validates its own hyperparameters (``Params``, set from the
``method.*`` config keys), and returns named losses from :meth:`Method.training_step`; ``"loss"`` is
what the loop backpropagates, every other entry is logged. Register it with :func:`register_method`
and it becomes ``--method.name=<name>``.

Methods that need alternating updates (GAN-style discriminators) opt into manual optimisation, as
PyTorch Lightning's ``automatic_optimization = False`` does: they declare named optimisers in
:meth:`Method.configure_optimizers` and, inside ``training_step``, call :meth:`Method.manual_backward`
and ``self.optimizer(name).step()``. The loop still owns devices, autocast and loss scaling, one
learning-rate schedule per optimiser, checkpoints (every optimiser and schedule resumes exactly),
logging and the progress bar.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..errors import ConfigError
from ..models import Backbone
from ..utils import unknown_choice_error


class Batch(NamedTuple):
    """Images and, for labelled streams only, their labels (``y`` is None for unlabelled target data)."""

    x: torch.Tensor
    y: torch.Tensor | None = None


class Method(nn.Module):
    """Base class; subclasses override :meth:`training_step` and, where needed, the other hooks."""

    name: ClassVar[str] = ""
    uses_source: ClassVar[bool] = True
    # "none": no target data in training; "unlabelled": target images only; "labelled": target images and labels.
    # An instance may narrow "unlabelled" to "none" from its params (the loop reads the instance's streams).
    target_stream: ClassVar[Literal["none", "unlabelled", "labelled"]] = "none"
    requires_trained_model: ClassVar[bool] = False  # e.g. fine-tuning starts from model.weights
    # False: the method does its own backward passes and optimiser steps (see manual_backward / optimizer);
    # an instance may set it from its params (the loop reads the instance's)
    automatic_optimization: bool = True
    # The method's main weight(s) and the values a benchmark tries, declared beside Params (as DomainBed
    # declares each algorithm's hyperparameter ranges), so sweep files need not repeat them: {key: [values]}
    search_space: ClassVar[dict[str, list[Any]]] = {}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, backbone: Backbone, params: BaseModel, *, feature_lr_mult: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.feature_lr_mult = feature_lr_mult

    def training_step(self, source: Batch | None, target: Batch | None, progress: float) -> dict[str, torch.Tensor]:
        """Named losses of one step; ``progress`` runs from 0 to 1 over the whole training."""
        raise NotImplementedError

    def param_groups(self, base_lr: float, exclude: tuple[nn.Module, ...] = ()) -> list[dict[str, Any]]:
        """Optimiser groups: the feature extractor at ``base_lr * feature_lr_mult``, everything else at ``base_lr``.
        Frozen parameters and those of ``exclude`` (e.g. a discriminator with its own optimiser) are left out."""
        skip = {id(p) for m in exclude for p in m.parameters()}
        feature_ids = {id(p) for p in self.backbone.features.parameters()}
        features = [p for p in self.backbone.features.parameters() if p.requires_grad and id(p) not in skip]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in feature_ids | skip]
        groups = [
            {"params": features, "lr": base_lr * self.feature_lr_mult, "name": "features"},
            {"params": rest, "lr": base_lr, "name": "heads"},
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, base_lr: float) -> dict[str, Any]:
        """Named optimisers: ``{name: [param groups]}``, or ``{name: {"groups": [...], **settings}}`` where
        settings override ``optim.*`` for that optimiser (``name``: sgd/adam/adamw, ``lr``, ``momentum``,
        ``weight_decay``, ``betas``; ``schedule: False`` keeps its learning rate constant).

        Every optimiser gets its own schedule and is checkpointed. The default is one optimiser, "main",
        over :meth:`param_groups`; a parameter must belong to one optimiser only.
        """
        return {"main": self.param_groups(base_lr)}

    # -- manual optimisation: the loop attaches its optimisers and loss scaler before training

    def optimizer(self, name: str = "main"):
        """The loop's optimiser ``name`` (a :class:`~shiftlab.engine.optim.ManagedOptimizer`): its ``step()``
        goes through the loop's loss scaler, ``zero_grad()`` frees the gradients."""
        managed = getattr(self, "_optimizers", None)
        if managed is None:
            raise RuntimeError("optimizers are attached by the training loop; call this from training_step")
        if name not in managed:
            raise KeyError(f"no optimizer '{name}'; this method declares: {', '.join(managed)}")
        return managed[name]

    def manual_backward(self, loss: torch.Tensor, **kwargs) -> None:
        """``loss.backward()`` through the loop's loss scaler (fp16); use instead of ``loss.backward()``."""
        scaler = getattr(self, "_scaler", None)
        (scaler.scale(loss) if scaler is not None else loss).backward(**kwargs)

    def on_train_epoch_start(self, epoch: int, images) -> None:
        """Before each training epoch (also the first after a resume): ``images`` yields the target's unlabelled
        adaptation images (CPU batches, as :meth:`before_evaluation`'s). SHOT recomputes its pseudo-labels here."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation."""
        return self.backbone(x)

    def before_evaluation(self, domain: str, images) -> None:
        """Called before evaluating on ``domain`` ("source" or "target"); ``images`` yields the target's
        unlabelled adaptation batches (before either domain's evaluation; a method may ignore them)."""

    def after_evaluation(self) -> None:
        """Undo whatever :meth:`before_evaluation` changed, so training and checkpoints are unaffected."""

    def on_fit_end(self, run_dir) -> None:
        """After ``summary.json`` is written: files of the method's own in the run folder (AdapterNet writes
        its adapter alone, ``adapter.pt``, from ``checkpoints/best.pt``)."""

    @staticmethod
    def classification(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy (detached) of a labelled batch."""
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean().detach()

    def classification_step(self, batch: Batch, forward=None) -> dict[str, torch.Tensor]:
        """The plain supervised step, ``{"loss": cross-entropy, "acc": accuracy}`` of ``forward(batch.x)``
        (the backbone unless given) on the batch's labels: source-only's, the oracle's, fine-tuning's."""
        loss, acc = self.classification((forward or self.backbone)(batch.x), batch.y)
        return {"loss": loss, "acc": acc}


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` available as ``--method.name=<cls.name>``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute 'name'")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The registered method ``name``: the built-in ones (imported by ``shiftlab.methods``) and any that a
    module named in ``experiment.plugins`` registered."""
    if name not in METHODS:
        raise ConfigError(unknown_choice_error("method.name", name, sorted(METHODS)))
    return METHODS[name]


def method_params(name: str, values: dict[str, Any]) -> BaseModel:
    """Validate ``method.*`` keys against the method's ``Params``; errors name the key and list valid ones.
    :func:`shiftlab.config.build_config` calls it, so a config's method keys are checked before any data."""
    cls = get_method(name)
    try:
        return cls.Params(**values)
    except ValidationError as err:
        valid = ", ".join(f"method.{k}" for k in cls.Params.model_fields) or "(none: it takes no keys)"
        problems = "; ".join(_param_problem(e, cls.Params.model_fields) for e in err.errors())
        raise ConfigError(f"bad parameters for method '{name}': {problems}. Valid keys: {valid}") from None


def _param_problem(error: dict[str, Any], fields: dict[str, Any]) -> str:
    """One pydantic error as ``unknown key method.x. Did you mean ...`` or ``method.x: <why> (got v)``."""
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(key, list(fields), n=1)
        return f"unknown key method.{key}" + (f" (did you mean method.{hint[0]}?)" if hint else "")
    return f"method.{key}: {error['msg']} (got {error.get('input')!r})"


def build_method(name: str, backbone: Backbone, values: dict[str, Any], *, feature_lr_mult: float = 1.0) -> Method:
    return get_method(name)(backbone, method_params(name, values), feature_lr_mult=feature_lr_mult)
