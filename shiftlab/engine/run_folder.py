"""The run folder: what a run writes, and the promise that nothing else is ever deleted.

``<experiment.output_dir>/<experiment.name>/`` holds ``.shiftlab-run`` (the marker, written first),
``config.yaml``, ``metrics.csv``, ``summary.json``, ``checkpoints/{last,last.prev,best}.pt``,
``tensorboard/`` and a method's own files (AdapterNet's ``adapter.pt``). The guarantees:

* **Atomic files.** Every file is written to a temporary beside it and renamed over it, so a kill leaves
  the old version or the new one; ``last.prev.pt`` keeps the epoch before, in case ``last.pt`` is damaged.
* **Nothing foreign is deleted.** A restart (a run killed before its first checkpoint) or ``--overwrite``
  empties a folder only when it carries the marker and holds nothing but run files; any other folder,
  a folder inside a run, or a folder holding another run, is an error that names it.
* **One writer.** A lock file (``.lock``: pid, host, time) keeps a second process out while a run lives,
  ``--overwrite`` included; a lock left by a dead process on this host is taken over.
* **The checkpoint's history is the truth.** A resume rewrites ``metrics.csv`` from it (a kill between the
  checkpoint and the CSV loses no row) and removes the temporaries of interrupted writes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_checkpoint, non_finite_tensors, save_checkpoint
from ..errors import NothingToResumeError, RunExistsError, RunFolderError, TrainingDivergedError
from ..utils import atomic_write_text, write_json

log = logging.getLogger(__name__)

MARKER = ".shiftlab-run"
FRESH_LOCK_S = 10.0  # an unreadable lock younger than this is being written by its owner, not stale
LOCK = ".lock"
# what a run (the loop, a sweep, a method) writes into its folder; anything else makes it not ours
RUN_ENTRIES = frozenset(
    {
        MARKER,
        LOCK,
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints",
        "tensorboard",
        "skipped_files.txt",
        "error.txt",
        "stopped_by_scheduler",
        "adapter.pt",
        "summary.json.unreadable",
    }
)


def is_temporary(name: str) -> bool:
    """A temporary of :func:`shiftlab.utils.atomic_path` (``.<name>.<hex>.tmp``) left by an interrupted write."""
    return name.startswith(".") and name.endswith(".tmp")


def is_run_folder(path: Path) -> bool:
    return (path / MARKER).is_file()


def foreign_entries(path: Path) -> list[str]:
    """Entries of ``path`` that a run does not write (sorted), e.g. a user's notes or another run's folder."""
    return sorted(p.name for p in path.iterdir() if p.name not in RUN_ENTRIES and not is_temporary(p.name))


class RunLock:
    """An exclusive lock file (created with O_EXCL) holding the owner's pid and host.

    A lock whose owner is a dead process on this host is stale and taken over; a lock of this process is
    stale unless a live :class:`RunLock` object of this process holds it (a trainer dropped without
    ``fit`` releases its lock when it is collected)."""

    _held: set[str] = set()  # lock paths held by live RunLock objects of this process

    def __init__(self, path: Path):
        self.path = path
        self.owned = False
        self._finalizer: weakref.finalize | None = None

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if self._held_by_another(owner):
                    raise RunFolderError(self._in_use(owner)) from None
                log.warning("taking over the stale lock %s of process %s", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.owned = True
            RunLock._held.add(str(self.path))
            self._finalizer = weakref.finalize(self, RunLock._remove, str(self.path))
            return
        raise RunFolderError(f"could not take the lock {self.path}: another process keeps creating it")

    def check_free(self) -> None:
        """An error if a live process holds the lock (read only: :meth:`acquire` takes it)."""
        if self.path.exists():
            owner = self._owner()
            if self._held_by_another(owner):
                raise RunFolderError(self._in_use(owner))

    def _held_by_another(self, owner: dict | None) -> bool:
        """A lock file whose owner lives, or one just created whose owner has not written it yet (a few
        seconds: a process killed in between leaves it empty for good, and then it is stale)."""
        if owner is None:
            try:
                return time.time() - self.path.stat().st_mtime < FRESH_LOCK_S
            except OSError:
                return False
        return self._alive(owner)

    def _in_use(self, owner: dict | None) -> str:
        owner = owner or {"pid": "(starting)", "host": "?"}
        return (
            f"run folder {self.path.parent} is in use by process {owner.get('pid')} on {owner.get('host')} "
            f"(lock file {self.path}); wait for it to finish or stop it, or choose another --experiment.name "
            f"(delete the lock file only if that process is gone)"
        )

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # removes the file once, whoever calls first
        self.owned = False

    @staticmethod
    def _remove(path: str) -> None:
        RunLock._held.discard(path)
        try:
            Path(path).unlink()
        except OSError:
            pass

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written by a process killed between create and write: stale

    def _alive(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # another machine's process cannot be checked from here
        pid = owner.get("pid")
        if not isinstance(pid, int):
            return False
        if pid == os.getpid():
            return str(self.path) in RunLock._held
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole history each time (it is small), so the file always matches the checkpoint."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def count_metrics_rows(path: Path) -> int:
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


class RunFolder:
    """One run's folder: prepared (checked, locked, marked), written (checkpoints, metrics, summary), read back.

    ``main=False`` (ranks other than 0 under torchrun) checks but never writes."""

    def __init__(self, path: Path, output_dir: Path, *, main: bool = True):
        self.path = path
        self.output_dir = output_dir
        self.main = main
        self.last = path / "checkpoints" / "last.pt"
        self.previous = path / "checkpoints" / "last.prev.pt"
        self.best = path / "checkpoints" / "best.pt"
        self.lock = RunLock(path / LOCK)
        self.writer = None  # TensorBoard's, open between start() and close_log()

    # ------------------------------------------------------------ prepare

    def prepare(self, *, resume: bool, overwrite: bool, before_changes: Callable[[], None] = lambda: None) -> None:
        """Check the folder for this run and, on the main process, lock and mark it (see the module's rules).
        ``before_changes`` runs between the checks and the first change (a barrier: every rank has looked)."""
        self._check_place()
        if resume:
            self._check_resumable()
            before_changes()
            if self.main:
                self.lock.check_free()
                self._check_ours(self.path, "resume")
                self.lock.acquire()
                self._remove_temporaries()
                self._mark()
            return
        occupied = self.check(overwrite=overwrite)
        if occupied and not self._started():
            log.warning(
                "run folder %s holds no checkpoint (killed before its first epoch ended): starting it again", self.path
            )
        before_changes()
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()  # before anything is removed: a live run's folder is never emptied
        try:
            if occupied:
                self._empty()
            self._mark()
        except BaseException:
            self.lock.release()
            raise

    def check(self, *, overwrite: bool) -> bool:
        """Whether a new run (not a resume) may use this folder, changing nothing: an error if not; returns
        whether the folder holds files already. The trainer calls it before reading any data, then again
        in :meth:`prepare`."""
        self._check_place()
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder; choose another --experiment.name")
        occupied = self.path.is_dir() and any(self.path.iterdir())
        if occupied:
            self.lock.check_free()  # first: a run that is starting may not have written its marker yet
            self._check_ours(self.path, "overwrite" if overwrite else "restart")
            if self._started() and not overwrite:
                raise RunExistsError(
                    f"run folder {self.path} already exists; pass --resume to continue it, "
                    f"--overwrite to replace it, or choose another --experiment.name"
                )
        return occupied

    def _started(self) -> bool:
        return self.last.is_file() or self.previous.is_file() or (self.path / "summary.json").is_file()

    def _check_place(self) -> None:
        """The folder lies strictly inside the output folder and inside no other run."""
        out, path = self.output_dir.resolve(), self.path.resolve()
        if path == out or out not in path.parents:
            raise RunFolderError(
                f"run folder {self.path} is not inside experiment.output_dir={self.output_dir}; "
                f"experiment.name must be a relative path without '..'"
            )
        for parent in path.parents:
            if parent == out:
                break
            if is_run_folder(parent):
                raise RunFolderError(
                    f"run folder {self.path} would lie inside the run {parent}; a run folder is "
                    f"never the parent of another run: choose another --experiment.name"
                )

    def _check_ours(self, path: Path, action: str) -> None:
        if not is_run_folder(path):
            raise RunFolderError(
                f"{path} exists and is not a shiftlab run folder (no {MARKER}; it holds "
                f"{', '.join(sorted(p.name for p in path.iterdir())[:5]) or 'nothing'}); shiftlab will not {action} "
                f"into a folder it did not create: choose another --experiment.name or --experiment.output_dir"
            )
        foreign = foreign_entries(path)
        if foreign:
            raise RunFolderError(
                f"run folder {path} also holds {', '.join(foreign[:5])}, which shiftlab did not "
                f"write; shiftlab will not {action} it: move them out, or choose another "
                f"--experiment.name"
            )

    def _empty(self) -> None:
        """Remove the run files (only run files are there: :meth:`_check_ours`), keeping our lock."""
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _mark(self) -> None:
        if not (self.path / MARKER).is_file():
            write_json(self.path / MARKER, {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()})

    def _remove_temporaries(self) -> None:
        for folder in (self.path, self.path / "checkpoints"):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if is_temporary(entry.name) and entry.is_file():
                        entry.unlink()

    def release(self) -> None:
        self.lock.release()

    # ------------------------------------------------------------ write

    def guarded(self, what: str, write: Callable[[], None]) -> None:
        """Run a write; a full disk or a read-only folder becomes one line naming the folder."""
        try:
            write()
        except OSError as err:
            raise RunFolderError(
                f"cannot write {what} in {self.path}: {err.strerror or err}; free space there (or "
                f"choose another --experiment.output_dir), then continue with --resume from the last "
                f"complete checkpoint"
            ) from err

    def write_text(self, name: str, text: str) -> None:
        self.guarded(name, lambda: atomic_write_text(self.path / name, text))

    def write_json(self, name: str, obj: Any) -> None:
        self.guarded(name, lambda: write_json(self.path / name, obj))

    def save_state(self, state: dict[str, Any], *, epoch: int, step: int) -> None:
        """``last.pt`` (the previous one kept as ``last.prev.pt``), refused if its weights are not finite."""
        self._refuse_non_finite(state["model"], epoch, step)
        self.guarded("checkpoints/last.pt", lambda: self._save_keeping_previous(state))

    def save_best(self, state: dict[str, Any], *, epoch: int, step: int) -> None:
        self._refuse_non_finite(state["model"], epoch, step)
        self.guarded("checkpoints/best.pt", lambda: save_checkpoint(self.best, state))

    def _save_keeping_previous(self, state: dict[str, Any]) -> None:
        if self.last.is_file():  # a hard link: no moment without a complete last.pt
            tmp = self.previous.with_name(f".{self.previous.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(self.last, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(self.last, tmp)
            os.replace(tmp, self.previous)
        save_checkpoint(self.last, state)

    def _refuse_non_finite(self, model_state: dict[str, Any], epoch: int, step: int) -> None:
        bad = non_finite_tensors(model_state)
        if bad:
            raise TrainingDivergedError(
                f"the weights became NaN or infinite by epoch {epoch}, step {step} ({', '.join(bad[:3])}); the "
                f"checkpoint was not written, {self.last} keeps the last finite one: lower optim.lr or check the data"
            )

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        self.guarded("metrics.csv", lambda: write_metrics_csv(self.path / "metrics.csv", history))

    def start(
        self, config_yaml: str, skipped_files: list[str], history: list[dict[str, Any]], purge_step: int | None
    ) -> None:
        """At the start of ``fit``: the resolved config, the skipped files, the TensorBoard log (on resume cut
        back to ``purge_step``), and the rows a kill lost restored from the checkpoint's ``history``."""
        from torch.utils.tensorboard import SummaryWriter

        self.write_text("config.yaml", config_yaml)
        if skipped_files:
            self.write_text("skipped_files.txt", "\n".join(skipped_files) + "\n")
        self.writer = SummaryWriter(str(self.path / "tensorboard"), purge_step=purge_step)
        written = self.metrics_rows()
        if history and written != len(history):  # a kill between last.pt and metrics.csv: the checkpoint wins
            self.write_metrics(history)
            for row in history[written:]:
                self._log_scalars(row)

    def record(
        self, row: dict[str, Any], history: list[dict[str, Any]], state: dict[str, Any], best: dict[str, Any] | None
    ) -> None:
        """One epoch: ``best.pt`` (when the rule chose it) before ``last.pt`` (a kill in between redoes the epoch
        and rewrites both), then ``metrics.csv`` and TensorBoard."""
        if best is not None:
            self.save_best(best, epoch=row["epoch"], step=row["step"])
        self.save_state(state, epoch=row["epoch"], step=row["step"])
        self.write_metrics(history)
        self._log_scalars(row)

    def _log_scalars(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k not in ("epoch", "step") and v is not None:
                self.writer.add_scalar(k, v, row["step"])
        self.writer.flush()

    def close_log(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------ read

    def _check_resumable(self) -> None:
        if not (self.last.is_file() or self.previous.is_file()):
            raise NothingToResumeError(
                f"nothing to resume: {self.last} does not exist (the run never finished "
                f"an epoch); run the same command without --resume to start it"
            )

    def load_for_resume(self) -> dict[str, Any]:
        """The state to resume from (checked to be resumable first; see :meth:`load_state`)."""
        self._check_place()
        self._check_resumable()
        return self.load_state()

    def load_state(self) -> dict[str, Any]:
        """``last.pt``, or ``last.prev.pt`` (with a warning) when ``last.pt`` is missing or damaged."""
        errors = []
        for path in (self.last, self.previous):
            if not path.is_file():
                continue
            try:
                state = load_checkpoint(path)
            except Exception as err:  # truncated or corrupt: torch raises several kinds
                errors.append(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                continue
            if errors:
                log.warning("%s; resuming from %s (epoch %s) instead", errors[0], path, state.get("epoch"))
            return state
        raise RunFolderError(
            "; ".join(errors) + " and there is no readable earlier checkpoint to fall back on: "
            "start the run again with --overwrite"
        )

    def metrics_rows(self) -> int:
        return count_metrics_rows(self.path / "metrics.csv")


def training_state(t, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything a resume of trainer ``t`` needs to continue exactly (``checkpoints/last.pt``), plus ``extra``."""
    from .. import __version__
    from .randomness import rng_state

    return {
        "model": t.method.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in t.schedulers.items()},
        "scaler": t.scaler.state_dict(),
        "epoch": t.epoch,
        "step": t.step,
        "history": t.history,
        "per_class": t.per_class,
        "resumed_at": t.resumed_at,
        "rng": rng_state(),
        "stopped_early": t.should_stop,
        "train_time": t.train_time,
        "train_images": t.train_images,
        "config": t.cfg.to_dict(),
        "shiftlab_version": __version__,
        **extra,
    }


def best_state(t, row: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``checkpoints/best.pt`` of trainer ``t``: the weights of the epoch its rule chose, with that epoch's metrics."""
    from .. import __version__

    return {
        "model": t.method.state_dict(),
        "epoch": t.epoch,
        "selection": t.selection,
        "metrics": {k: v for k, v in row.items() if k.endswith(("_acc", "_loss"))},
        "config": t.cfg.to_dict(),
        "shiftlab_version": __version__,
        **extra,
    }


def restore_training_state(t, state: dict[str, Any]) -> None:
    """Trainer ``t`` as :func:`training_state` saved it: modules, optimisers, progress, history, RNG."""
    from .randomness import set_rng_state

    restore_modules(state, t.method, t.optimizers, t.schedulers, t.scaler, t.folder.last, t.cfg)
    t.epoch, t.step, t.history = state["epoch"], state["step"], list(state["history"])
    t.per_class = dict(state["per_class"])
    t.resumed_at = list(state["resumed_at"]) + [t.epoch]
    t.should_stop = bool(state["stopped_early"])
    t.train_time, t.train_images = state["train_time"], state["train_images"]
    set_rng_state(state["rng"])


def restore_modules(state: dict[str, Any], method, optimizers: dict, schedulers: dict, scaler, path: Path, cfg) -> None:
    """Load a checkpoint's model, optimisers, schedules and scaler; a checkpoint of another model is one line."""
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as err:
        raise RunFolderError(
            f"{path} does not fit method '{cfg.method.name}' with model '{cfg.model.name}': {str(err).splitlines()[0]}"
        ) from err
    if set(state["optimizers"]) != set(optimizers):
        raise RunFolderError(
            f"{path} holds optimizers {sorted(state['optimizers'])} but method "
            f"'{cfg.method.name}' declares {sorted(optimizers)}"
        )
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
        schedulers[name].load_state_dict(state["schedulers"][name])
    scaler.load_state_dict(state["scaler"])


# Keys that may change on --resume: where the run's files and data live, how they are read, and how long it trains.
# Any other change would make the resumed run a different experiment than its first epochs.
RESUMABLE_KEYS = frozenset(
    {
        "experiment.output_dir",
        "experiment.plugins",
        "data.root",
        "data.num_workers",
        "data.loader",
        "data.cache_budget_gb",
        "data.eval_batch_size",
        "train.epochs",
        "train.device",
        "train.progress",
        "train.compile",
        "train.channels_last",
        "train.early_stopping_patience",
        "model.weights",
    }
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def changed_on_resume(saved: dict[str, Any], now: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a resume whose config changes keys other than :data:`RESUMABLE_KEYS`, naming them."""
    before, after = _flatten(saved), _flatten(now)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k] and k not in RESUMABLE_KEYS)
    if changed:
        listed = ", ".join(f"{k} ({before[k]!r} in the checkpoint, {after[k]!r} now)" for k in changed[:4])
        raise RunFolderError(
            f"--resume cannot change {listed}: {checkpoint} was trained with the first values; "
            f"drop these keys to continue the run, or start a new run (another --experiment.name, "
            f"or --overwrite)"
        )


def summarize(trainer, wall_time: float) -> dict[str, Any]:
    """``summary.json``: the selected and final numbers, every rule's choice, splits, provenance."""
    from .. import __version__
    from ..selection.epochs import EPOCH_RULES, choose_row

    t = trainer
    evaluated = [r for r in t.history if "target_acc" in r]
    final = evaluated[-1]
    metric_keys = [k for k in final if k.endswith("_acc") or k.startswith("unsup_")]

    def chosen(rule: str) -> dict[str, Any]:
        row = choose_row(evaluated, rule)
        return {"epoch": row["epoch"], **{k: row[k] for k in metric_keys}, "rule": EPOCH_RULES[rule].description}

    selections = {rule: chosen(rule) for rule, r in EPOCH_RULES.items() if r.metric is None or r.metric in final}
    picked = selections[t.selection]
    loaders = t.loaders
    return {
        "experiment": t.cfg.experiment.name,
        "method": t.cfg.method.name,
        "dataset": t.pair.spec.name,
        "source": t.pair.source,
        "target": t.pair.target,
        "target_eval_split": t.pair.target_eval_split,
        "splits": t.pair.splits,
        "reads_target_labels": t.reads_target_labels,
        "selection": t.selection,
        "target_acc": picked["target_acc"],
        "target_holdout_acc": picked.get("target_holdout_acc", picked["target_acc"]),
        "final_target_acc": final["target_acc"],
        "final_source_val_acc": final["source_val_acc"],
        "best_target_acc": selections["target_oracle"]["target_acc"],
        "selections": selections,
        "validator_images": {
            "limit": t.cfg.train.validator_limit,
            "scored": len(loaders.validator_indices)
            if loaders.validator_indices is not None
            else len(t.pair.target_adapt_images),
        },
        "best_checkpoint": {"path": "checkpoints/best.pt", "selection": t.selection, "epoch": picked["epoch"]}
        if t.folder.best.is_file()
        else None,
        "per_class_target_acc": {
            "selected": t.per_class.get(picked["epoch"]),
            "final": t.per_class.get(final["epoch"]),
        },
        "missing_target_classes": list(t.pair.missing_target_classes),
        "skipped_files": len(t.pair.skipped_files),
        "stopped_early": t.should_stop,
        "resumed_at_epochs": t.resumed_at,
        "final_train_loss": final.get("train_loss"),
        "epochs": t.epoch,
        "steps": t.step,
        "wall_time_s": round(wall_time, 2),
        "train_time_s": round(t.train_time, 2),
        "train_images_per_s": round(t.train_images / t.train_time, 2) if t.train_time else None,
        "device": str(t.device),
        "precision": t.precision,
        "num_parameters": sum(p.numel() for p in t.method.parameters()),
        "seed": t.cfg.experiment.seed,
        "shiftlab_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "config": t.cfg.to_dict(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
