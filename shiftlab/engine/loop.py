"""The one training loop every method shares: setup, ``fit``, the epoch and the step.

What it holds beside it: :class:`~shiftlab.engine.loaders.RunLoaders` (the data, files or decoded cache,
sharding), :class:`~shiftlab.engine.evaluation.Evaluator` (accuracies, validators) and
:class:`~shiftlab.engine.run_folder.RunFolder` (lock, atomic checkpoints, metrics, summary). A method
only says what a step costs (or, under manual optimisation, does its own backward passes and steps
through the loop's helpers).

A trainer leaves no process-global state behind: seeds, random-number streams and determinism flags
are set on entry to :meth:`Trainer.fit` and restored on exit, so many trainers can run one after the
other in one process (a sweep) without one changing the next.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import Config, import_plugins, run_dir
from ..data.transforms import FAMILY_SIZES
from ..errors import ConfigError, TrainingDivergedError
from ..methods import Batch, Method, build_method, get_method
from ..models import build_backbone, normalization_for
from ..selection.epochs import EPOCH_RULES, improves
from ..selection.validators import VALIDATORS
from .callbacks import Callback, EarlyStopping, as_callback
from .distributed import DistEnv, TrainingStep
from .evaluation import Evaluator
from .loaders import RunLoaders, build_pair
from .optim import ManagedOptimizer, build_optimizers
from .randomness import isolated_process_state, rng_state, seed_everything, set_rng_state
from .run_folder import (
    RunFolder,
    best_state,
    changed_on_resume,
    restore_training_state,
    summarize,
    training_state,
)

log = logging.getLogger(__name__)

# Steps between two reads of the running losses on an accelerator (progress bar, non-finite check): each
# read waits for the device, so reading every step would stall the queue of kernels. On the CPU there is
# nothing to stall and every step is checked.
DEVICE_LOG_EVERY = 50
CPU_LOG_EVERY = 10


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve_selection(cfg: Config, method_cls, reads_target_labels: bool) -> str:
    """``train.selection`` for this method (``auto``: target_val for methods trained on target labels), checked."""
    t = cfg.train
    if method_cls.requires_trained_model and not cfg.model.weights and cfg.model.pretrained == "none":
        raise ConfigError(
            f"method '{cfg.method.name}' starts from a trained model: set --model.weights=PATH "
            f"(e.g. runs/<source-only run>/checkpoints/best.pt) or --model.pretrained=imagenet"
        )
    selection = t.selection if t.selection != "auto" else ("target_val" if reads_target_labels else "source_val")
    if selection == "target_val" and not reads_target_labels:
        raise ConfigError(
            f"train.selection=target_val reads target labels, which method '{cfg.method.name}' "
            f"does not train on; use source_val (or target_oracle, labelled as an oracle)"
        )
    if selection in VALIDATORS and selection not in t.validators:
        raise ConfigError(
            f"train.selection={selection} needs the validator: add it to train.validators (now {t.validators})"
        )
    if t.early_stopping_patience is not None and EPOCH_RULES[selection].metric is None:
        raise ConfigError(
            "train.early_stopping_patience needs a metric to watch, and train.selection=last "
            "has none; choose another train.selection or unset the patience"
        )
    return selection


def build_model(cfg: Config, pair, dist: DistEnv) -> Method:
    """The backbone for the pair's classes, with the normalisation its data needs, inside the method."""
    m = cfg.model
    mean, std = normalization_for(pair.spec.family, m.name)
    backbone = build_backbone(
        m.name,
        pair.num_classes,
        pretrained=m.pretrained,
        weights=m.weights,
        bottleneck_dim=m.bottleneck_dim,
        head_layers=m.head_layers,
        mean=m.mean or mean,
        std=m.std or std,
        progress=cfg.train.progress,
    )
    method = build_method(cfg.method.name, backbone, cfg.method.params(), feature_lr_mult=cfg.optim.feature_lr_mult)
    if dist.enabled and not method.automatic_optimization:
        raise ConfigError(
            f"method '{cfg.method.name}' steps its own optimisers (manual optimisation), "
            f"which data-parallel training (torchrun) does not support; run it in one process"
        )
    return method


def wrap_for_training(method: Method, cfg: Config, dist: DistEnv, device: torch.device):
    """What a training step calls: the method's ``training_step`` (compiled backbone with ``train.compile``),
    inside DistributedDataParallel under torchrun (``None``: call the method itself)."""
    if cfg.train.compile:
        method.backbone.compile()  # in place: state-dict keys, and so checkpoints, stay the same
    if not dist.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: a method may leave parts idle in a step (a discriminator warming up)
    return DistributedDataParallel(TrainingStep(method), device_ids=ids, find_unused_parameters=True)


def check_finite(values: dict[str, Any], epoch: int, step: int) -> None:
    """Stop on a non-finite loss (on accelerators read once per logging interval: a non-finite loss makes its
    running sum non-finite for good, so no sync per step is needed)."""
    for name, value in values.items():
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(
                f"{name} is {value.tolist()} at epoch {epoch + 1}, step {step}; the last "
                f"finite checkpoint is kept: lower optim.lr or check the data"
            )


def lr_columns(optimizers: dict) -> dict[str, float]:
    """``lr`` (or ``lr_<optimizer>`` for several optimisers): the rate of each optimiser's last group."""
    return {f"lr_{k}" if len(optimizers) > 1 else "lr": o.param_groups[-1]["lr"] for k, o in optimizers.items()}


def model_inputs(cfg: Config, pair) -> dict[str, Any]:
    """What using the model needs beside its weights (``shiftlab.inference.load_run`` reads it from a checkpoint):
    the class names in output order and the square input size, which data on disk would otherwise have to tell."""
    size = cfg.data.image_size or FAMILY_SIZES[pair.spec.family]
    return {"classes": list(pair.classes), "image_size": size, "family": pair.spec.family}


class Trainer:
    """Runs one experiment into ``<experiment.output_dir>/<experiment.name>/`` (see :mod:`.run_folder`).

    ``resume=True`` continues from ``checkpoints/last.pt`` (keys that would change the run are refused).
    Otherwise an existing run folder is an error unless ``overwrite=True``, or unless it holds no checkpoint
    (a run killed before its first epoch ended), in which case it is started again; a folder shiftlab did not
    create is never emptied. ``callbacks`` see the metrics after every evaluation
    (:class:`~shiftlab.engine.callbacks.Callback`, or a function ``fn(trainer, metrics)``); setting
    ``trainer.should_stop = True`` ends the run after that epoch.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        resume: bool = False,
        overwrite: bool = False,
        callbacks: Iterable[Callback | Callable] = (),
    ):
        self.cfg, self.resume, self.should_stop = cfg, resume, False
        self.callbacks = [as_callback(c) for c in callbacks]
        self.run_dir = run_dir(cfg)
        import_plugins(cfg.experiment.plugins)
        t = cfg.train
        self.dist = DistEnv.from_environment()  # torchrun's ranks; rank 0 of 1 otherwise
        self.folder = RunFolder(self.run_dir, cfg.experiment.output_dir, main=self.dist.is_main)
        saved = self.folder.load_for_resume() if resume else None  # refused keys fail before data is read
        if not resume and self.dist.is_main:
            self.folder.check(overwrite=overwrite)  # a folder that cannot be used fails before data is read too
        if saved is not None:
            changed_on_resume(saved.get("config", {}), cfg.to_dict(), self.folder.last)
        self.device = resolve_device(t.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dist.init(self.device)
        self.precision = resolve_precision(t.precision, self.device)
        self.channels_last = t.channels_last if t.channels_last is not None else self.device.type == "cuda"
        method_cls = get_method(cfg.method.name)
        self.reads_target_labels = method_cls.target_stream == "labelled"
        self.selection = resolve_selection(cfg, method_cls, self.reads_target_labels)
        if t.early_stopping_patience is not None:  # monitors the selection rule's own metric
            self.callbacks.append(EarlyStopping(EPOCH_RULES[self.selection].metric, t.early_stopping_patience))

        with isolated_process_state(t.deterministic):
            seed_everything(cfg.experiment.seed)
            self.pair = build_pair(cfg, method_cls)
            self.method: Method = build_model(cfg, self.pair, self.dist).to(self.device)
            if self.channels_last:
                self.method.to(memory_format=torch.channels_last)
            self.loaders = RunLoaders(cfg, self.pair, self.method, self.device, self.dist)
            self.steps_per_epoch, self.total_steps = self.loaders.steps_per_epoch, self.loaders.total_steps
            self.evaluator = Evaluator(self.method, self.loaders, self.pair.classes, self._autocast, self.channels_last)
            self.optimizers, self.schedulers = build_optimizers(
                self.method.configure_optimizers(cfg.optim.lr), cfg.optim, self.total_steps
            )
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
            self.epoch, self.step, self.history, self.per_class = 0, 0, [], {}
            self.resumed_at: list[int] = []  # epochs at which this run was resumed (provenance)
            self.train_time, self.train_images = 0.0, 0
            # Only once config, data and model are known to be good is the run folder touched.
            try:
                self.folder.prepare(resume=resume, overwrite=overwrite, before_changes=self.dist.barrier)
            finally:
                self.dist.barrier()  # every rank waits until rank 0 has prepared the folder
            try:
                if saved is not None:
                    self._restore(saved)
                self._step_module = wrap_for_training(self.method, cfg, self.dist, self.device)
            except BaseException:
                self.folder.release()
                raise
            self._rng = rng_state()  # this run's own random streams, carried from here into fit()

    def _state(self) -> dict[str, Any]:
        return training_state(self, model_inputs(self.cfg, self.pair))

    def _restore(self, state: dict[str, Any]) -> None:
        restore_training_state(self, state)
        log.info("resumed %s at epoch %d", self.run_dir, self.epoch)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------ running

    def fit(self) -> dict[str, Any]:
        with isolated_process_state(self.cfg.train.deterministic):
            set_rng_state(self._rng)
            try:
                return self._fit()
            finally:
                self._rng = rng_state()
                self.folder.release()

    def _fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main  # under torchrun only rank 0 writes the run folder and calls back
        if main:
            self.folder.start(cfg.to_yaml(), self.pair.skipped_files, self.history, self.step if self.resume else None)
            for cb in self.callbacks:
                cb.on_fit_start(self)
        self.method._scaler = self.scaler
        self.method._optimizers = {k: ManagedOptimizer(k, o, self.scaler) for k, o in self.optimizers.items()}
        start = time.time()
        try:
            if cfg.train.epochs == 0 and not self.history:
                self._record(*self.evaluator.evaluate(), {}, 0.0)
            while self.epoch < cfg.train.epochs and not self.should_stop:
                epoch_start = time.time()
                train_stats = self.train_epoch()
                seconds = time.time() - epoch_start
                self.epoch += 1
                evaluate = self.epoch == cfg.train.epochs or self.epoch % cfg.train.eval_every == 0
                self._record(*(self.evaluator.evaluate() if evaluate else ({}, None)), train_stats, seconds)
                if self.should_stop and main:  # a callback stopped the run: a resume must not train it further
                    self.folder.save_state(self._state(), epoch=self.epoch, step=self.step)
        finally:
            self.folder.close_log()
            del self.method._scaler, self.method._optimizers
        if not any("target_acc" in r for r in self.history):  # stopped before any evaluation
            self._record(*self.evaluator.evaluate(), {}, 0.0)
        summary = summarize(self, time.time() - start)
        if main:
            self.folder.write_json("summary.json", summary)
            self.method.on_fit_end(self.run_dir)
            for cb in self.callbacks:
                cb.on_fit_end(self, summary)
        self.dist.barrier()  # no rank leaves (and tears the process group down) before the summary is written
        return summary

    def train_epoch(self) -> dict[str, float]:
        """One epoch of ``steps_per_epoch`` steps; returns the mean losses (``train_<name>``) and images/s."""
        self.method.train()
        # contract hook: per-epoch work on the target's images (SHOT's pseudo-label centroids)
        self.method.on_train_epoch_start(self.epoch, self.loaders.target_images)
        streams = [self.loaders.batches(i, self.epoch) for i in (0, 1)]
        # running sums stay on the device (float64: on the CPU the same additions as Python floats) and are
        # read once per logging interval, so the host never waits for the device inside a step
        sums: dict[str, torch.Tensor] = {}
        per_step_check = self.device.type == "cpu"
        log_every = CPU_LOG_EVERY if per_step_check else DEVICE_LOG_EVERY
        seen = 0
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
            disable=not self.cfg.train.progress,
            leave=False,
            dynamic_ncols=True,
        )
        t0 = time.time()
        for i in bar:
            source, target = (self.to_batch(next(s)) if s is not None else None for s in streams)
            losses = self.train_step(source, target, check_values=per_step_check)
            seen += sum(len(b.x) for b in (source, target) if b is not None)
            for k, v in losses.items():
                v = v.detach().double()
                sums[k] = sums[k] + v if k in sums else v
            if self.step % log_every == 0 or i == self.steps_per_epoch - 1:
                read = {k: float(v) for k, v in sums.items()}  # the one wait for the device per interval
                if not per_step_check:
                    check_finite(read, self.epoch, self.step)
                bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in read.items()})
        if self.dist.enabled:  # the mean over ranks of each rank's mean: the global batches' mean loss
            names = sorted(sums)
            total = self.dist.all_reduce_sum(torch.stack([sums[k] for k in names]))
            sums = {k: total[j] / self.dist.world for j, k in enumerate(names)}
            seen *= self.dist.world
        seconds = time.time() - t0
        self.train_time += seconds
        self.train_images += seen
        stats = {f"train_{k}": float(v) / self.steps_per_epoch for k, v in sums.items()}
        stats["images_per_s"] = seen / max(seconds, 1e-9)
        return stats

    def train_step(
        self, source: Batch | None, target: Batch | None, *, check_values: bool = True
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on batches already on the device (what benchmarks/throughput.py times as the
        model's limit); advances the schedules and ``self.step``. ``check_values`` syncs to check every loss."""
        step_fn = self._step_module if self._step_module is not None else self.method.training_step
        automatic = self.method.automatic_optimization  # the instance's: its params may choose
        with self._autocast():
            losses = step_fn(source, target, self.step / self.total_steps)
        if automatic and "loss" not in losses:
            raise KeyError(
                f"method '{self.cfg.method.name}' returned {sorted(losses)} but no 'loss' to "
                f"backpropagate (or set automatic_optimization = False and step yourself)"
            )
        if check_values:
            check_finite(losses, self.epoch, self.step)
        if automatic:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            for opt in self.optimizers.values():
                self.scaler.step(opt)
            self.scaler.update()
        with warnings.catch_warnings():
            # schedules follow the global step: an optimiser a manual method skipped this step
            # (e.g. a discriminator updated every k steps) still moves along its schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for scheduler in self.schedulers.values():
                scheduler.step()
        self.step += 1
        return losses

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def to_batch(self, item) -> Batch:
        """A loader's item (``(x, y)`` or ``x``) as a :class:`Batch` on the device."""
        if isinstance(item, (list, tuple)):
            x, y = item
            return Batch(self.to_device(x), y.to(self.device, non_blocking=True))
        return Batch(self.to_device(item), None)

    def _record(self, evals: dict, per_class: dict | None, train_stats: dict, seconds: float) -> None:
        """The epoch's row into the history and (rank 0) the run folder; callbacks see evaluated rows."""
        row = {
            "epoch": self.epoch,
            "step": self.step,
            **train_stats,
            **evals,
            **lr_columns(self.optimizers),
            "epoch_time_s": round(seconds, 3),
        }
        if per_class is not None and evals:
            self.per_class[self.epoch] = per_class
        improved = bool(evals) and improves(self.history, row, self.selection)
        self.history.append(row)
        if self.dist.is_main:
            best = best_state(self, row, model_inputs(self.cfg, self.pair)) if improved else None
            self.folder.record(row, self.history, self._state(), best)
        if not evals:
            return
        if self.dist.is_main:
            tqdm.write(
                f"[{self.cfg.experiment.name}] epoch {self.epoch}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.endswith(("acc", "loss")))
            )
            for cb in self.callbacks:
                cb.on_evaluation(self, row)
        self.should_stop = self.dist.broadcast_object(self.should_stop)  # rank 0's callbacks decide for all
