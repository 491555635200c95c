"""The one training loop every method shares.

It owns what methods should not repeat: devices, mixed precision, the pairing of a labelled source
stream with a target stream, optimisers and their learning-rate schedules, evaluation, model
selection, logging (progress bar, CSV, TensorBoard), atomic checkpoints and exact resumption. A method
only says what a step costs (or, under manual optimisation, does its own backward passes and steps
through the loop's helpers).

A trainer leaves no process-global state behind: seeds, random-number streams and determinism flags
are set on entry to :meth:`Trainer.fit` and restored on exit, so many trainers can run one after the
other in one process (a sweep) without one changing the next.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config, ConfigError, run_dir
from ..data.decoded import (BatchAugment, DecodedSplit, TensorBatchLoader, Uncacheable, decode_split, decoded_bytes,
                            resolve_loader, stored_size)
from ..data.pair import DomainPair, Transformed, build_domain_pair, make_loader
from ..data.splits import keys_of
from ..errors import NothingToResumeError, RunExistsError, RunFolderError
from ..methods import Batch, Method, build_method, get_method
from ..models import build_backbone, normalization_for
from ..selection.validators import VALIDATORS, metric_name, score_all
from .callbacks import Callback, EarlyStopping, as_callback
from .distributed import DistEnv, ShardedBatchSampler, TrainingStep, shard_bounds
from .checkpoint import (atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json,
                         write_metrics_csv)
from .optim import ManagedOptimizer, build_optimizers, lr_factor  # noqa: F401  (lr_factor: public here too)

log = logging.getLogger(__name__)

# Steps between two reads of the running losses on an accelerator (progress bar, non-finite check): each
# read waits for the device, so reading every step would stall the queue of kernels. On the CPU there is
# nothing to stall and every step is checked, as before.
DEVICE_LOG_EVERY = 50
CPU_LOG_EVERY = 10
AUGMENT_STREAM = 16  # offset of the augmentation's seeds from the shuffling streams (0 source, 1 target)

SELECTIONS = {
    "source_val": ("source_val_acc", "epoch of best source-validation accuracy (reads no target label)"),
    "target_val": ("target_val_acc", "epoch of best accuracy on the labelled target validation part "
                                     "(the method trains on target labels; its test part is never read)"),
    "last": (None, "last epoch"),
    "target_oracle": ("target_acc", "epoch of best target accuracy (ORACLE: reads target test labels)"),
    **{name: (metric_name(name), f"epoch of best unsupervised validator '{name}' on the unlabelled target "
                                 f"adaptation images (reads no target label)") for name in VALIDATORS},
}

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Each epoch's shuffling and worker seeds depend only on (seed, epoch, stream), so resume is exact."""
    return (seed * 1_000_003 + epoch * 7_919 + stream) % 2**63


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def isolated_process_state(deterministic: bool):
    """Set the determinism flags for this run; on exit restore them and every global RNG as they were."""
    saved_rng = {**rng_state(), "numpy": np.random.get_state()}
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2], flags[3]
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        set_rng_state(saved_rng)
        np.random.set_state(saved_rng["numpy"])


def import_plugins(modules: Iterable[str]) -> None:
    """Import the modules of ``experiment.plugins`` (they register methods or datasets of their own)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"experiment.plugins: cannot import '{name}': {err}") from err


class Trainer:
    """Runs one experiment into ``<experiment.output_dir>/<experiment.name>/``.

    ``resume=True`` continues from ``checkpoints/last.pt``. Otherwise an existing run folder is an error
    unless ``overwrite=True``, or unless it holds no checkpoint (a run killed before its first epoch
    ended), in which case it is started again. ``callbacks`` see the metrics after every evaluation
    (:class:`~shiftlab.engine.callbacks.Callback`, or a function ``fn(trainer, metrics)``); setting
    ``trainer.should_stop = True`` ends the run after that epoch.
    """

    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False,
                 callbacks: Iterable[Callback | Callable] = ()):
        self.cfg = cfg
        self.resume = resume
        self.callbacks = [as_callback(c) for c in callbacks]
        self.should_stop = False
        self.run_dir = run_dir(cfg)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        import_plugins(cfg.experiment.plugins)

        t = cfg.train
        self.dist = DistEnv.from_environment()  # torchrun's ranks; rank 0 of 1 otherwise
        self.device = resolve_device(t.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dist.init(self.device)
        self.precision = resolve_precision(t.precision, self.device)
        self.channels_last = t.channels_last if t.channels_last is not None else self.device.type == "cuda"
        method_cls = get_method(cfg.method.name)
        self.reads_target_labels = method_cls.target_stream == "labelled"
        if method_cls.requires_trained_model and not cfg.model.weights and cfg.model.pretrained == "none":
            raise ConfigError(f"method '{cfg.method.name}' starts from a trained model: set --model.weights=PATH "
                              f"(e.g. runs/<source-only run>/checkpoints/best.pt) or --model.pretrained=imagenet")
        self.selection = t.selection if t.selection != "auto" else (
            "target_val" if self.reads_target_labels else "source_val")
        if self.selection == "target_val" and not self.reads_target_labels:
            raise ConfigError(f"train.selection=target_val reads target labels, which method "
                              f"'{cfg.method.name}' does not train on; use source_val (or target_oracle, "
                              f"labelled as an oracle)")
        if self.selection in VALIDATORS and self.selection not in t.validators:
            raise ConfigError(f"train.selection={self.selection} needs the validator: add it to train.validators "
                              f"(now {t.validators})")
        if t.early_stopping_patience is not None:  # monitors the selection rule's own metric
            monitor = SELECTIONS[self.selection][0]
            if monitor is None:
                raise ConfigError("train.early_stopping_patience needs a metric to watch, and train.selection=last "
                                  "has none; choose another train.selection or unset the patience")
            self.callbacks.append(EarlyStopping(monitor=monitor, patience=t.early_stopping_patience))

        with isolated_process_state(t.deterministic):
            seed_everything(cfg.experiment.seed)
            self.pair = self._build_pair(method_cls)
            mean, std = normalization_for(self.pair.spec.family, cfg.model.name)
            m = cfg.model
            backbone = build_backbone(m.name, self.pair.num_classes, pretrained=m.pretrained, weights=m.weights,
                                      bottleneck_dim=m.bottleneck_dim, head_layers=m.head_layers,
                                      mean=m.mean or mean, std=m.std or std, progress=t.progress)
            self.method: Method = build_method(cfg.method.name, backbone, cfg.method.model_extra or {},
                                               feature_lr_mult=cfg.optim.feature_lr_mult).to(self.device)
            if self.channels_last:
                self.method.to(memory_format=torch.channels_last)
            if self.dist.enabled and not self.method.automatic_optimization:
                raise ConfigError(f"method '{cfg.method.name}' steps its own optimisers (manual optimisation), "
                                  f"which data-parallel training (torchrun) does not support; run it in one process")
            self._build_loaders(self.method)  # the instance: its params may change what it reads
            self.optimizers, self.schedulers = build_optimizers(self.method.configure_optimizers(cfg.optim.lr),
                                                                cfg.optim, self.total_steps)
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
            self.epoch, self.step, self.history, self.per_class = 0, 0, [], {}
            self.resumed_at: list[int] = []  # epochs at which this run was resumed (provenance)
            self.train_time, self.train_images = 0.0, 0
            # Only once config, data and model are known to be good is the run folder touched.
            self._prepare_run_dir(overwrite)
            if resume:
                self._load()
            self._step_module = self._wrap_for_training()
            self._rng = rng_state()  # this run's own random streams, carried from here into fit()

    # ------------------------------------------------------------ setup

    def _build_pair(self, method_cls) -> DomainPair:
        d = self.cfg.data
        return build_domain_pair(
            d.dataset, d.root, d.source, d.target, image_size=d.image_size, augment=d.augment, limit=d.limit,
            target_labels=method_cls.target_stream == "labelled", target_adapt_split=d.target_adapt_split,
            target_eval_split=d.target_eval_split, holdout_fraction=d.target_holdout_fraction,
            strict_classes=d.strict_classes, skip_unreadable=d.skip_unreadable,
            target_train_limit=d.target_train_limit)

    def _build_loaders(self, method: Method) -> None:
        d, t = self.cfg.data, self.cfg.train
        eval_bs = d.eval_batch_size or 2 * d.batch_size
        self.generators = [torch.Generator(), torch.Generator()]  # re-seeded every epoch (see _batches)
        p = self.pair
        if self.dist.enabled and d.batch_size % self.dist.world:
            raise ConfigError(f"data.batch_size={d.batch_size} is the global batch of {self.dist.world} processes "
                              f"and must be divisible by {self.dist.world}")
        train = {"source_train": p.source_train if method.uses_source else None,
                 "target_train": p.target_train if method.target_stream != "none" else None}
        evals = {"source_val": p.source_val, "target": p.target_eval, "target_val": p.target_val,
                 "target_holdout": p.target_holdout, "target_images": p.target_adapt_images}
        self.loader_kind = self._choose_loader({k: v for k, v in train.items() if v is not None},
                                               {k: v for k, v in evals.items() if v is not None})
        loader = self._cached_loader if self.loader_kind == "cached" else self._file_loader
        self.source_loader = loader(train["source_train"], d.batch_size, train=True,
                                    generator=self.generators[0]) if train["source_train"] is not None else None
        self.target_loader = loader(train["target_train"], d.batch_size, train=True,
                                    generator=self.generators[1]) if train["target_train"] is not None else None
        # name -> (domain, labelled loader); every name becomes <name>_acc and <name>_loss in metrics.csv.
        # Under torchrun each rank evaluates its contiguous part of every set (sums and outputs are gathered).
        self.eval_sets = {"source_val": ("source", loader(p.source_val, eval_bs, train=False, shard=True)),
                          "target": ("target", loader(p.target_eval, eval_bs, train=False, shard=True))}
        if p.target_val is not None:
            self.eval_sets["target_val"] = ("target", loader(p.target_val, eval_bs, train=False, shard=True))
        if p.target_holdout is not None:
            self.eval_sets["target_holdout"] = ("target", loader(p.target_holdout, eval_bs, train=False, shard=True))
        # what methods read before evaluation (AdaBN's statistics): the whole set on every rank, so that every
        # rank's model stays the same; the validators' own pass reads the rank's part
        self.target_images = loader(p.target_adapt_images, eval_bs, train=False)
        self._target_images_part = (loader(p.target_adapt_images, eval_bs, train=False, shard=True)
                                    if self.dist.enabled else self.target_images)
        # transductive protocols (PACS, Office-Home) adapt on the images they evaluate on: the validators then
        # reuse the evaluation pass's probabilities (images only) instead of a second pass over the same images
        self.validators_reuse_target_pass = keys_of(p.target_eval.base) == keys_of(p.target_adapt_images.base)
        main = self.source_loader if self.source_loader is not None else self.target_loader
        self.steps_per_epoch = min(len(main), t.steps_per_epoch or len(main))
        self.total_steps = max(1, self.steps_per_epoch * t.epochs)

    def _choose_loader(self, train: dict[str, Transformed], evals: dict[str, Transformed]) -> str:
        """``cached`` or ``files`` (``data.loader``; ``auto`` caches when the decoded splits fit the budget)."""
        d = self.cfg.data
        family = self.pair.spec.family
        needed: dict[tuple[int, int], int] = {}  # (split object, stored size) -> bytes; shared splits count once
        for is_train, parts in ((True, train), (False, evals)):
            for ds in parts.values():
                size = stored_size(family, d.image_size, d.augment, is_train)
                needed[id(ds.base), size] = decoded_bytes(len(ds), size)
        kind = resolve_loader(d.loader, sum(needed.values()), self.device, d.cache_budget_gb)
        if kind == "cached":
            try:  # the identity walk names any dataset the cache cannot key, before anything is decoded
                from ..data.decoded import split_identity
                for ds in {id(v.base): v for v in (*train.values(), *evals.values())}.values():
                    split_identity(ds.base, 0)
            except Uncacheable as err:
                if d.loader == "cached":
                    raise ConfigError(f"data.loader=cached: {err}") from err
                kind = "files"
        log.info("data path: %s (data.loader=%s)", kind, d.loader)
        return kind

    def _file_loader(self, ds: Transformed, batch_size: int, *, train: bool, generator=None, shard: bool = False):
        """The DataLoader path: decodes files every epoch (in ``data.num_workers`` processes)."""
        d, world = self.cfg.data, self.dist.world
        pin = self.device.type == "cuda"
        if not train:
            if shard and world > 1:
                ds = torch.utils.data.Subset(ds, range(*shard_bounds(len(ds), self.dist.rank, world)))
            return make_loader(ds, batch_size, shuffle=False, num_workers=d.num_workers, pin_memory=pin)
        if world == 1:
            return make_loader(ds, batch_size, shuffle=True, num_workers=d.num_workers, generator=generator,
                               pin_memory=pin)
        # the sampler and batching make_loader would use, each rank keeping its part of every global batch
        batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds, generator=generator), batch_size,
                                                drop_last=len(ds) > batch_size)
        return torch.utils.data.DataLoader(ds, batch_sampler=ShardedBatchSampler(batches, self.dist.rank, world),
                                           num_workers=d.num_workers, generator=generator, pin_memory=pin)

    def _cached_loader(self, ds: Transformed, batch_size: int, *, train: bool, generator=None, shard: bool = False):
        """The decoded path: batches cut from the split's uint8 tensor on the model's device, augmented there."""
        d = self.cfg.data
        family = self.pair.spec.family
        size = stored_size(family, d.image_size, False, False)
        stored = stored_size(family, d.image_size, d.augment, train)
        split: DecodedSplit = decode_split(ds.base, stored, progress=self.cfg.train.progress)
        world = self.dist.world
        indices = range(*shard_bounds(len(split), self.dist.rank, world)) if shard and world > 1 else None
        return TensorBatchLoader(split, batch_size, shuffle=train, device=self.device, size=size,
                                 augment=BatchAugment(size) if stored != size else None, generator=generator,
                                 with_labels=ds.with_labels, label_map=ds.label_map,
                                 shard=(self.dist.rank, world) if train else (0, 1), indices=indices)

    def _wrap_for_training(self):
        """What a training step calls: the method's ``training_step`` (compiled backbone with
        ``train.compile``), inside DistributedDataParallel under torchrun."""
        if self.cfg.train.compile:
            self.method.backbone.compile()  # in place: state-dict keys, and so checkpoints, stay the same
        if not self.dist.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a method may leave parts idle in a step (a discriminator warming up)
        return DistributedDataParallel(TrainingStep(self.method), device_ids=ids, find_unused_parameters=True)

    def _prepare_run_dir(self, overwrite: bool) -> None:
        """Checks on every rank (they read the same folder), changes by rank 0 only, the others waiting."""
        try:
            self._prepare_run_dir_checked(overwrite)
        finally:
            self.dist.barrier()

    def _prepare_run_dir_checked(self, overwrite: bool) -> None:
        if self.resume:
            if not self.ckpt_path.is_file():
                raise NothingToResumeError(f"nothing to resume: {self.ckpt_path} does not exist (the run never finished "
                                     f"an epoch); run the same command without --resume to start it")
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            started = self.ckpt_path.is_file() or (self.run_dir / "summary.json").is_file()
            if started and not overwrite:
                raise RunExistsError(f"run folder {self.run_dir} already exists; pass --resume to continue it, "
                                     f"--overwrite to replace it, or choose another --experiment.name")
            self.dist.barrier()  # every rank has looked before rank 0 changes anything
            if not self.dist.is_main:
                return
            if not started:
                log.warning("run folder %s holds no checkpoint (killed before its first epoch ended): starting "
                            "it again", self.run_dir)
            shutil.rmtree(self.run_dir)
        else:
            self.dist.barrier()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history, "per_class": self.per_class,
            "resumed_at": self.resumed_at,
            "rng": rng_state(), "stopped_early": self.should_stop,
            "train_time": self.train_time, "train_images": self.train_images,
            "config": self.cfg.to_dict(), "shiftlab_version": __version__,
        }

    def _load(self) -> None:
        state = load_checkpoint(self.ckpt_path)
        self.method.load_state_dict(state["model"])
        # checkpoints of shiftlab 0.1 held one optimiser and one scheduler
        optimizers = state.get("optimizers") or {"main": state["optimizer"]}
        schedulers = state.get("schedulers") or {"main": state["scheduler"]}
        if set(optimizers) != set(self.optimizers):
            raise RunFolderError(f"{self.ckpt_path} holds optimizers {sorted(optimizers)} but method "
                                 f"'{self.cfg.method.name}' declares {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(optimizers[name])
            self.schedulers[name].load_state_dict(schedulers[name])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.per_class = dict(state.get("per_class", {}))
        self.resumed_at = list(state.get("resumed_at", [])) + [self.epoch]
        self.should_stop = bool(state.get("stopped_early", False))
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        set_rng_state(state["rng"])
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

    def _fit(self) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.cfg
        main = self.dist.is_main  # under torchrun only rank 0 writes the run folder and calls back
        if main:
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            if self.pair.skipped_files:
                atomic_write_text(self.run_dir / "skipped_files.txt", "\n".join(self.pair.skipped_files) + "\n")
            for cb in self.callbacks:
                cb.on_fit_start(self)
        writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                               purge_step=self.step if self.resume else None) if main else None
        self.method._scaler = self.scaler
        self.method._optimizers = {k: ManagedOptimizer(k, o, self.scaler) for k, o in self.optimizers.items()}
        start = time.time()
        try:
            if cfg.train.epochs == 0 and not self.history:
                self._record(self._evaluate(), {}, 0.0, writer)
            while self.epoch < cfg.train.epochs and not self.should_stop:
                epoch_start = time.time()
                train_stats = self._train_epoch()
                seconds = time.time() - epoch_start
                self.epoch += 1
                last = self.epoch == cfg.train.epochs
                evals = self._evaluate() if last or self.epoch % cfg.train.eval_every == 0 else {}
                self._record(evals, train_stats, seconds, writer)
                if self.should_stop and main:  # a callback stopped the run: a resume must not train it further
                    save_checkpoint(self.ckpt_path, self._state())
        finally:
            if writer is not None:
                writer.close()
            del self.method._scaler, self.method._optimizers
        if not any("target_acc" in r for r in self.history):  # stopped before any evaluation
            self._record(self._evaluate(), {}, 0.0, None)
        summary = self._summary(time.time() - start)
        if main:
            write_json(self.run_dir / "summary.json", summary)
            self.method.on_fit_end(self.run_dir)
            for cb in self.callbacks:
                cb.on_fit_end(self, summary)
        self.dist.barrier()  # no rank leaves (and tears the process group down) before the summary is written
        return summary

    def _batches(self, loader, stream: int) -> Iterator:
        """Endless iterator over a loader, re-seeded at each epoch and cycling when it runs out."""
        self.generators[stream].manual_seed(stream_seed(self.cfg.experiment.seed, self.epoch, stream))
        if hasattr(loader, "seed_augmentation"):  # the decoded path draws its crops from its own generator
            loader.seed_augmentation(stream_seed(self.cfg.experiment.seed, self.epoch, AUGMENT_STREAM + stream))
        while True:
            yield from loader

    def _train_epoch(self) -> dict[str, float]:
        self.method.train()
        streams = [self._batches(l, i) if l is not None else None
                   for i, l in enumerate((self.source_loader, self.target_loader))]
        automatic = self.method.automatic_optimization  # the instance's: its params may choose
        # running sums stay on the device (float64: on the CPU the same additions as Python floats) and are
        # read once per logging interval, so the host never waits for the device inside a step
        sums: dict[str, torch.Tensor] = {}
        per_step_check = self.device.type == "cpu"
        log_every = CPU_LOG_EVERY if per_step_check else DEVICE_LOG_EVERY
        step_fn = self._step_module if self._step_module is not None else self.method.training_step
        seen = 0
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.cfg.train.progress, leave=False, dynamic_ncols=True)
        t0 = time.time()
        for i in bar:
            source = self._to_batch(next(streams[0])) if streams[0] else None
            target = self._to_batch(next(streams[1])) if streams[1] else None
            losses = self._train_step(source, target, step_fn, automatic, per_step_check)
            seen += sum(len(b.x) for b in (source, target) if b is not None)
            for k, v in losses.items():
                v = v.detach().double()
                sums[k] = sums[k] + v if k in sums else v
            if self.step % log_every == 0 or i == self.steps_per_epoch - 1:
                read = {k: float(v) for k, v in sums.items()}  # the one wait for the device per interval
                if not per_step_check:
                    self._check_sums_finite(read, i)
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

    def _train_step(self, source: Batch | None, target: Batch | None, step_fn, automatic: bool,
                    check_values: bool = True) -> dict[str, torch.Tensor]:
        """One optimisation step on batches already on the device (also what benchmarks/throughput.py times
        as the model's limit, on a synthetic batch); advances the schedules and ``self.step``."""
        with self._autocast():
            losses = step_fn(source, target, self.step / self.total_steps)
        self._check_finite(losses, automatic, values=check_values)
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

    def _check_finite(self, losses: dict[str, torch.Tensor], automatic: bool, values: bool = True) -> None:
        """Whether the method returned a 'loss' and, with ``values``, every loss is finite (a host-device
        sync per loss: on accelerators :meth:`_check_sums_finite` checks once per logging interval instead)."""
        if automatic and "loss" not in losses:
            raise KeyError(f"method '{self.cfg.method.name}' returned {sorted(losses)} but no 'loss' to "
                           f"backpropagate (or set automatic_optimization = False and step yourself)")
        if not values:
            return
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(f"{name} is {value.item()} at epoch {self.epoch + 1}, step {self.step}; "
                                         f"lower optim.lr or check the data")

    def _check_sums_finite(self, sums: dict[str, float], i: int) -> None:
        """A non-finite loss makes its running sum non-finite for good: reading the sums once per logging
        interval finds it without a sync per step (the run stops within that interval)."""
        for name, value in sums.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"{name} became {value} within the last {DEVICE_LOG_EVERY} steps before "
                                         f"step {self.step} (epoch {self.epoch + 1}); lower optim.lr or check the data")

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_batch(self, item) -> Batch:
        if isinstance(item, (list, tuple)):
            x, y = item
            return Batch(self._input(x), y.to(self.device, non_blocking=True))
        return Batch(self._input(item), None)

    @torch.inference_mode()
    def _accuracy(self, loader, what: str, probs: list | None = None) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """Accuracy, mean loss, and per-class (correct, count) over a labelled loader; the softmax outputs are
        appended to ``probs`` when it is given (on the CPU, in the set's order, gathered over ranks).

        Counts and the loss are summed on the device (one-hot sums: exact and deterministic) and read once
        at the end, not per batch; under torchrun each rank's part is summed over the ranks."""
        self.method.eval()
        n = self.pair.num_classes
        correct = torch.zeros(n, dtype=torch.long, device=self.device)
        count = torch.zeros(n, dtype=torch.long, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        outputs = []
        for x, y in tqdm(loader, desc=f"eval {what}", disable=not self.cfg.train.progress, leave=False):
            x, y = self._input(x), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.method.predict(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            if probs is not None:
                outputs.append(torch.softmax(logits.float(), dim=1))
            onehot = F.one_hot(y, n)
            count += onehot.sum(0)
            correct += (onehot * (logits.argmax(1) == y).long()[:, None]).sum(0)
        if self.dist.enabled:
            sums = self.dist.all_reduce_sum(torch.cat([correct.double(), count.double(), loss[None]]))
            correct, count, loss = sums[:n].round().long(), sums[n:2 * n].round().long(), sums[2 * n]
        if probs is not None:
            probs.append(self.dist.gather_in_order(torch.cat(outputs)).cpu())
        correct, count = correct.cpu(), count.cpu()
        total = int(count.sum())
        return int(correct.sum()) / total, float(loss) / total, correct, count

    @torch.inference_mode()
    def _probabilities(self, loader) -> torch.Tensor:
        """Softmax outputs over a loader of images only (no labels exist to read: validators' input)."""
        probs = []
        for x in tqdm(loader, desc="eval validators", disable=not self.cfg.train.progress, leave=False):
            with self._autocast():
                logits = self.method.predict(self._input(x))
            probs.append(torch.softmax(logits.float(), dim=1))
        return self.dist.gather_in_order(torch.cat(probs)).cpu()

    def _evaluate(self) -> dict[str, float]:
        """Every evaluation set; ``before_evaluation`` runs once per domain (AdaBN re-estimates once)."""
        out: dict[str, float] = {}
        for domain in ("source", "target"):
            names = [k for k, (d, _) in self.eval_sets.items() if d == domain]
            self.method.eval()
            self.method.before_evaluation(domain, self.target_images if domain == "target" else None)
            try:
                reuse = self.validators_reuse_target_pass and self.cfg.train.validators
                target_probs: list | None = [] if reuse else None
                for name in names:
                    acc, loss, correct, count = self._accuracy(self.eval_sets[name][1], name,
                                                               target_probs if name == "target" else None)
                    out[f"{name}_acc"], out[f"{name}_loss"] = acc, loss
                    if name == "target":
                        self.per_class[self.epoch] = {
                            c: correct[i].item() / count[i].item()
                            for i, c in enumerate(self.pair.classes) if count[i] > 0}
                if domain == "target" and self.cfg.train.validators:
                    probs = (torch.cat(target_probs) if target_probs
                             else self._probabilities(self._target_images_part))
                    out.update(score_all(probs, self.cfg.train.validators))
            finally:
                self.method.after_evaluation()
        return out

    def _record(self, evals: dict, train_stats: dict, seconds: float, writer) -> None:
        row = {"epoch": self.epoch, "step": self.step, **train_stats, **evals,
               **{f"lr_{k}" if len(self.optimizers) > 1 else "lr": o.param_groups[-1]["lr"]
                  for k, o in self.optimizers.items()},
               "epoch_time_s": round(seconds, 3)}
        improved = evals and self._improves(row)
        self.history.append(row)
        if not self.dist.is_main:  # rank 0 writes; the others learn from it whether a callback stopped the run
            if evals:
                self.should_stop = self.dist.broadcast_object(self.should_stop)
            return
        if improved:  # best.pt before last.pt: a kill in between redoes this epoch and rewrites both
            save_checkpoint(self.best_path, {
                "model": self.method.state_dict(), "epoch": self.epoch, "selection": self.selection,
                "metrics": {k: v for k, v in row.items() if k.endswith(("_acc", "_loss"))},
                "config": self.cfg.to_dict(), "shiftlab_version": __version__})
        save_checkpoint(self.ckpt_path, self._state())
        write_metrics_csv(self.run_dir / "metrics.csv", self.history)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and v is not None:
                    writer.add_scalar(k, v, self.step)
            writer.flush()
        if evals:
            tqdm.write(f"[{self.cfg.experiment.name}] epoch {self.epoch}: "
                       + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.endswith(("acc", "loss"))))
            for cb in self.callbacks:
                cb.on_evaluation(self, row)
            self.should_stop = self.dist.broadcast_object(self.should_stop)

    def _improves(self, row: dict) -> bool:
        """Whether ``row`` is the new choice of the run's selection rule (ties keep the earlier epoch)."""
        key = SELECTIONS[self.selection][0]
        if key is None:
            return True
        previous = [r[key] for r in self.history if key in r]
        return not previous or row[key] > max(previous)

    def _summary(self, wall_time: float) -> dict[str, Any]:
        evaluated = [r for r in self.history if "target_acc" in r]
        final = evaluated[-1]
        metric_keys = [k for k in final if k.endswith("_acc") or k.startswith("unsup_")]

        def chosen(rule: str) -> dict[str, Any]:
            key, text = SELECTIONS[rule]
            row = final if key is None else max(evaluated, key=lambda r: r[key])  # first maximum: earlier epoch
            return {"epoch": row["epoch"], **{k: row[k] for k in metric_keys}, "rule": text}

        rules = [r for r in SELECTIONS if SELECTIONS[r][0] is None or SELECTIONS[r][0] in final]
        selections = {rule: chosen(rule) for rule in rules}
        picked = selections[self.selection]
        return {
            "experiment": self.cfg.experiment.name,
            "method": self.cfg.method.name,
            "dataset": self.pair.spec.name, "source": self.pair.source, "target": self.pair.target,
            "target_eval_split": self.pair.target_eval_split,
            "splits": self.pair.splits,
            "reads_target_labels": self.reads_target_labels,
            "selection": self.selection,
            "target_acc": picked["target_acc"],
            "target_holdout_acc": picked.get("target_holdout_acc", picked["target_acc"]),
            "final_target_acc": final["target_acc"],
            "final_source_val_acc": final["source_val_acc"],
            "best_target_acc": selections["target_oracle"]["target_acc"],
            "selections": selections,
            "best_checkpoint": {"path": "checkpoints/best.pt", "selection": self.selection,
                                "epoch": picked["epoch"]} if self.best_path.is_file() else None,
            "per_class_target_acc": {"selected": self.per_class.get(picked["epoch"]),
                                     "final": self.per_class.get(final["epoch"])},
            "missing_target_classes": list(self.pair.missing_target_classes),
            "skipped_files": len(self.pair.skipped_files),
            "stopped_early": self.should_stop,
            "resumed_at_epochs": self.resumed_at,
            "final_train_loss": final.get("train_loss"),
            "epochs": self.epoch,
            "steps": self.step,
            "wall_time_s": round(wall_time, 2),
            "train_time_s": round(self.train_time, 2),
            "train_images_per_s": round(self.train_images / self.train_time, 2) if self.train_time else None,
            "device": str(self.device), "precision": self.precision,
            "num_parameters": sum(p.numel() for p in self.method.parameters()),
            "seed": self.cfg.experiment.seed,
            "shiftlab_version": __version__, "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "config": self.cfg.to_dict(),
        }
