"""Optimisers and learning-rate schedules: built from ``optim.*`` and what a method declares.

A method declares named optimisers (:meth:`shiftlab.methods.Method.configure_optimizers`); the loop
builds each here, gives each its own schedule, and, under manual optimisation, hands the method a
:class:`ManagedOptimizer` per name so that its steps still go through the loop's loss scaler.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import torch

from ..config import OptimConfig
from ..errors import ConfigError

OPTIMIZERS = get_args(OptimConfig.model_fields["name"].annotation)  # the names optim.name accepts, defined once
SETTINGS = ("name", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "schedule")


def lr_factor(
    schedule: str,
    progress: float,
    step_at: float = 0.8,
    gamma: float = 0.1,
    *,
    alpha: float = 10.0,
    beta: float = 0.75,
    step: int | None = None,
) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1].

    'inverse' is ``(1 + alpha * p)^-beta`` with ``p = progress``, or ``p = step`` when ``step`` is given
    (the per-iteration form of the CDAN/HDA/ToAlign codes, ``inverse_per=step``).
    """
    if schedule == "step":
        return gamma if progress >= step_at - 1e-9 else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "inverse":  # Ganin & Lempitsky, ICML 2015, Sec. 5: mu_p = mu_0 / (1 + 10 p)^0.75 by default
        return (1 + alpha * (progress if step is None else step)) ** -beta
    return 1.0


def schedule_factor(schedule: str, step: int, total_steps: int, cfg: OptimConfig) -> float:
    """:func:`lr_factor` at optimiser step ``step`` of ``total_steps``, with the ``optim.*`` settings."""
    per_step = step if schedule == "inverse" and cfg.inverse_per == "step" else None
    return lr_factor(
        schedule, step / total_steps, cfg.step_at, cfg.gamma, alpha=cfg.alpha, beta=cfg.beta, step=per_step
    )


def build_optimizer(name: str, spec: list[dict] | dict[str, Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """One optimiser from a method's declaration: a list of param groups, or ``{"groups": [...], **settings}``."""
    settings: dict[str, Any] = {}
    groups = spec
    if isinstance(spec, dict):
        unknown = set(spec) - set(SETTINGS) - {"groups"}
        if unknown or "groups" not in spec:
            raise ValueError(
                f"optimizer '{name}': a dict declaration needs 'groups' and may set "
                f"{', '.join(SETTINGS)}; got {', '.join(sorted(spec))}"
            )
        groups, settings = spec["groups"], {k: v for k, v in spec.items() if k not in ("groups", "schedule")}
    kind = settings.pop("name", cfg.name)
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer '{name}': unknown optimiser '{kind}'; valid: {', '.join(OPTIMIZERS)}")
    lr = settings.pop("lr", cfg.lr)
    weight_decay = settings.pop("weight_decay", cfg.weight_decay)
    if kind == "sgd":
        momentum = settings.pop("momentum", cfg.momentum)
        nesterov = settings.pop("nesterov", cfg.nesterov) and momentum > 0
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **settings
        )
    settings.pop("momentum", None), settings.pop("nesterov", None)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, weight_decay=weight_decay, **settings)


def build_optimizers(declared: dict[str, Any], cfg: OptimConfig, total_steps: int):
    """``(optimizers, schedulers)`` by name; a parameter declared in two optimisers is an error (a step of
    one would move the other's parameters)."""
    if not declared:
        raise ValueError("the method declares no optimizer (configure_optimizers returned nothing)")
    owner: dict[int, str] = {}
    optimizers, schedulers = {}, {}
    for name, spec in declared.items():
        opt = build_optimizer(name, spec, cfg)
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in owner:
                    raise ValueError(f"a parameter is in both optimizer '{owner[id(p)]}' and '{name}'")
                owner[id(p)] = name
        scheduled = not (isinstance(spec, dict) and spec.get("schedule") is False)
        schedule = cfg.schedule if scheduled else "constant"
        optimizers[name] = opt
        schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step, s=schedule: schedule_factor(s, step, total_steps, cfg)
        )
    return optimizers, schedulers


class ManagedOptimizer:
    """One optimiser as a method sees it under manual optimisation.

    ``step()`` goes through the loop's gradient scaler (fp16 loss scaling) and, like PyTorch Lightning,
    updates the scale right after, so a method may step its optimisers in any order and any number
    of times per training step.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.name, self.optimizer, self.scaler = name, optimizer, scaler
        self.steps = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.steps += 1

    def __repr__(self) -> str:
        return f"ManagedOptimizer({self.name!r}, {type(self.optimizer).__name__})"
