"""The one training loop every method shares.

It owns what methods should not repeat: devices, mixed precision, the pairing of a labelled source
stream with a target stream, learning-rate schedules, evaluation, logging (progress bar, CSV,
TensorBoard), atomic checkpoints and exact resumption. A method only says what a step costs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config, ConfigError
from ..data.cache import data_root
from ..data.pair import DomainPair, build_domain_pair, make_loader
from ..methods import Batch, Method, build_method, get_method
from ..models import build_backbone
from .checkpoint import (atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json,
                         write_metrics_csv)

log = logging.getLogger(__name__)

SELECTIONS = {
    "source_val": "epoch of best source-validation accuracy (reads no target label)",
    "last": "last epoch",
    "target_oracle": "epoch of best target accuracy (ORACLE: reads target labels)",
}


class RunExistsError(FileExistsError):
    pass


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


def lr_factor(schedule: str, progress: float, step_at: float = 0.8, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    if schedule == "step":
        return gamma if progress >= step_at - 1e-9 else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "inverse":  # Ganin & Lempitsky, ICML 2015, Sec. 5: mu_p = mu_0 / (1 + 10 p)^0.75
        return (1 + 10 * progress) ** -0.75
    return 1.0


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


class Trainer:
    """Runs one experiment into ``<experiment.output_dir>/<experiment.name>/``.

    ``resume=True`` continues from ``checkpoints/last.pt``; otherwise an existing run folder is an
    error unless ``overwrite=True``.
    """

    def __init__(self, cfg: Config, *, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.run_dir = Path(cfg.experiment.output_dir) / cfg.experiment.name
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"

        t = cfg.train
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        seed_everything(cfg.experiment.seed)
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)

        method_cls = get_method(cfg.method.name)
        if method_cls.requires_trained_model and not cfg.model.weights and cfg.model.pretrained == "none":
            raise ConfigError(f"method '{cfg.method.name}' starts from a trained model: set --model.weights=PATH "
                              f"(e.g. runs/<source-only run>/checkpoints/last.pt) or --model.pretrained=imagenet")
        d = cfg.data
        self.pair: DomainPair = build_domain_pair(
            d.dataset, data_root(d.root), d.source, d.target, image_size=d.image_size, augment=d.augment,
            limit=d.limit, target_labels=method_cls.target_stream == "labelled")
        backbone = build_backbone(cfg.model.name, self.pair.num_classes, pretrained=cfg.model.pretrained,
                                  weights=cfg.model.weights, bottleneck_dim=cfg.model.bottleneck_dim,
                                  progress=t.progress)
        self.method: Method = build_method(cfg.method.name, backbone, cfg.method.model_extra or {},
                                           feature_lr_mult=cfg.optim.feature_lr_mult).to(self.device)

        loader = partial(make_loader, num_workers=d.num_workers, pin_memory=self.device.type == "cuda")
        eval_bs = d.eval_batch_size or 2 * d.batch_size
        self.generators = [torch.Generator(), torch.Generator()]  # re-seeded every epoch (see _batches)
        self.source_loader = loader(self.pair.source_train, d.batch_size, shuffle=True,
                                    generator=self.generators[0]) if method_cls.uses_source else None
        self.target_loader = loader(self.pair.target_train, d.batch_size, shuffle=True,
                                    generator=self.generators[1]) if method_cls.target_stream != "none" else None
        self.eval_loaders = {"source_val": loader(self.pair.source_val, eval_bs, shuffle=False),
                             "target": loader(self.pair.target_eval, eval_bs, shuffle=False)}
        self.target_images = loader(self.pair.target_eval_images, eval_bs, shuffle=False)
        main = self.source_loader if self.source_loader is not None else self.target_loader
        self.steps_per_epoch = min(len(main), t.steps_per_epoch or len(main))
        self.total_steps = max(1, self.steps_per_epoch * t.epochs)

        self.optimizer = self._optimizer()
        o = cfg.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(o.schedule, step / self.total_steps, o.step_at, o.gamma))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.step, self.history = 0, 0, []
        self.train_time, self.train_images = 0.0, 0
        # Only once config, data and model are known to be good is the run folder touched.
        self._prepare_run_dir(overwrite)
        if resume:
            self._load()

    # ------------------------------------------------------------ setup

    def _prepare_run_dir(self, overwrite: bool) -> None:
        if self.resume:
            if not self.ckpt_path.is_file():
                raise FileNotFoundError(f"nothing to resume: {self.ckpt_path} does not exist")
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            if not overwrite:
                raise RunExistsError(f"run folder {self.run_dir} already exists; pass --resume to continue it, "
                                     f"--overwrite to replace it, or choose another --experiment.name")
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = self.method.param_groups(o.lr)
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                                   weight_decay=o.weight_decay)
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(groups, lr=o.lr, weight_decay=o.weight_decay)

    def _load(self) -> None:
        state = load_checkpoint(self.ckpt_path)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d", self.run_dir, self.epoch)

    def _save(self) -> None:
        save_checkpoint(self.ckpt_path, {
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history, "rng": rng_state(),
            "train_time": self.train_time, "train_images": self.train_images,
            "config": self.cfg.to_dict(), "shiftlab_version": __version__,
        })
        write_metrics_csv(self.run_dir / "metrics.csv", self.history)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------ running

    def fit(self) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step if self.resume else None)
        start = time.time()
        try:
            if cfg.train.epochs == 0 and not self.history:
                self._record(self._evaluate(), {}, 0.0, writer)
            while self.epoch < cfg.train.epochs:
                epoch_start = time.time()
                train_stats = self._train_epoch()
                seconds = time.time() - epoch_start
                self.epoch += 1
                last = self.epoch == cfg.train.epochs
                evals = self._evaluate() if last or self.epoch % cfg.train.eval_every == 0 else {}
                self._record(evals, train_stats, seconds, writer)
        finally:
            writer.close()
        summary = self._summary(time.time() - start)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _batches(self, loader, stream: int) -> Iterator:
        """Endless iterator over a loader, re-seeded at each epoch and cycling when it runs out."""
        self.generators[stream].manual_seed(stream_seed(self.cfg.experiment.seed, self.epoch, stream))
        while True:
            yield from loader

    def _train_epoch(self) -> dict[str, float]:
        self.method.train()
        streams = [self._batches(l, i) if l is not None else None
                   for i, l in enumerate((self.source_loader, self.target_loader))]
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.cfg.train.progress, leave=False, dynamic_ncols=True)
        t0 = time.time()
        for _ in bar:
            source = self._to_batch(next(streams[0])) if streams[0] else None
            target = self._to_batch(next(streams[1])) if streams[1] else None
            with self._autocast():
                losses = self.method.training_step(source, target, self.step / self.total_steps)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step}; "
                                         f"lower optim.lr or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            seen += sum(len(b.x) for b in (source, target) if b is not None)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if self.step % 10 == 0 or _ == self.steps_per_epoch - 1:
                bar.set_postfix({k: f"{v / (_ + 1):.3f}" for k, v in sums.items()})
        seconds = time.time() - t0
        self.train_time += seconds
        self.train_images += seen
        stats = {f"train_{k}": v / self.steps_per_epoch for k, v in sums.items()}
        stats["images_per_s"] = seen / max(seconds, 1e-9)
        return stats

    def _to_batch(self, item) -> Batch:
        if isinstance(item, (list, tuple)):
            x, y = item
            return Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
        return Batch(item.to(self.device, non_blocking=True), None)

    @torch.no_grad()
    def _accuracy(self, loader, what: str) -> tuple[float, float]:
        self.method.eval()
        correct, total, loss = 0, 0, 0.0
        for x, y in tqdm(loader, desc=f"eval {what}", disable=not self.cfg.train.progress, leave=False):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.method.predict(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
        return correct / total, loss / total

    def _evaluate(self) -> dict[str, float]:
        out = {}
        for domain, key, images in (("source", "source_val", None), ("target", "target", self.target_images)):
            self.method.eval()
            self.method.before_evaluation(domain, images)
            try:
                out[f"{key}_acc"], out[f"{key}_loss"] = self._accuracy(self.eval_loaders[key], key)
            finally:
                self.method.after_evaluation()
        return out

    def _record(self, evals: dict, train_stats: dict, seconds: float, writer) -> None:
        row = {"epoch": self.epoch, "step": self.step, **train_stats, **evals,
               "lr": self.optimizer.param_groups[-1]["lr"], "epoch_time_s": round(seconds, 3)}
        self.history.append(row)
        self._save()
        for k, v in row.items():
            if k not in ("epoch", "step") and v is not None:
                writer.add_scalar(k, v, self.step)
        writer.flush()
        if "target_acc" in evals:
            tqdm.write(f"[{self.cfg.experiment.name}] epoch {self.epoch}: "
                       + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.endswith(("acc", "loss"))))

    def _summary(self, wall_time: float) -> dict[str, Any]:
        evaluated = [r for r in self.history if "target_acc" in r]
        final = evaluated[-1]

        def pick(rows, key):
            best = max(rows, key=lambda r: r[key])  # first maximum: ties go to the earlier epoch
            return {"epoch": best["epoch"], "target_acc": best["target_acc"], "source_val_acc": best["source_val_acc"],
                    "rule": SELECTIONS[{"source_val_acc": "source_val", "target_acc": "target_oracle"}[key]]}

        selections = {
            "source_val": pick(evaluated, "source_val_acc"),
            "last": {"epoch": final["epoch"], "target_acc": final["target_acc"],
                     "source_val_acc": final["source_val_acc"], "rule": SELECTIONS["last"]},
            "target_oracle": pick(evaluated, "target_acc"),
        }
        method_cls = type(self.method)
        return {
            "experiment": self.cfg.experiment.name,
            "method": self.cfg.method.name,
            "dataset": self.pair.spec.name, "source": self.pair.source, "target": self.pair.target,
            "target_eval_split": self.pair.target_eval_split,
            "reads_target_labels": method_cls.target_stream == "labelled",
            "selection": "source_val",
            "target_acc": selections["source_val"]["target_acc"],
            "final_target_acc": final["target_acc"],
            "final_source_val_acc": final["source_val_acc"],
            "best_target_acc": selections["target_oracle"]["target_acc"],
            "selections": selections,
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
