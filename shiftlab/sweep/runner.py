"""Run a sweep's trials on Ray Tune: local Ray by default, an existing cluster with ``address``.

Ray Tune does the scheduling (trials in parallel as CPUs and GPUs allow, fractional GPUs, ASHA,
Optuna); shiftlab adds what a table needs:

* each trial is one :class:`~shiftlab.engine.loop.Trainer` run in its own run folder,
  ``<sweep>/runs/<trial name>/``, and reports every evaluation's metrics to Tune through a trainer
  callback;
* a re-run skips finished trials (their ``summary.json`` reads back complete) and resumes unfinished
  ones (a damaged ``summary.json`` included) from their ``checkpoints/last.pt``, so an interrupted sweep loses at most the epoch each trial was in;
* a failing trial is reported with its error (``<run>/error.txt`` and ``<sweep>/trials.json``) and does
  not stop the others;
* a progress bar counts trials done / running / failed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..checkpoints import load_checkpoint
from ..config import Config, build_config, run_dir
from ..errors import SweepError
from ..extras import require
from ..utils import atomic_write_text, write_json
from .spec import (
    SweepSpec,
    Trial,
    check_sampled_keys,
    expand,
    grid_trials,
    missing_weights,
    missing_weights_message,
    sweep_dir,
    trial_name,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- one trial


def run_trial(cfg: Config, report=None) -> dict[str, Any]:
    """Train one trial's config to the end, resuming or skipping as its run folder says.

    ``report(metrics)`` (Tune's ``tune.report`` in a sweep) receives each evaluation's row. Returns the
    run's summary (read from disk when the trial had already finished).
    """
    from ..engine.callbacks import LambdaCallback
    from ..engine.loop import Trainer

    folder = run_dir(cfg)
    summary = read_summary(folder)
    if summary is not None:  # finished in an earlier run of the sweep: nothing to train
        if report is not None:  # the last evaluation again, so that a searcher sees what it saw the first time
            last = {k: v for k, v in summary["selections"]["last"].items() if k != "rule"}
            report({**last, "skipped": True})
        return summary
    callbacks = [LambdaCallback(lambda trainer, row: report(dict(row)))] if report is not None else []
    _set_aside_unreadable_summary(folder)
    resume = (folder / "checkpoints" / "last.pt").is_file()
    (folder / "error.txt").unlink(missing_ok=True)
    try:
        trainer = Trainer(cfg, resume=resume, callbacks=callbacks)
        if resume and (folder / "stopped_by_scheduler").is_file():
            trainer.should_stop = True  # ASHA stopped it: write its summary at the epoch it reached
        return trainer.fit()
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt) and folder.is_dir():
            atomic_write_text(folder / "error.txt", "".join(traceback.format_exception(err)))
        raise


def read_summary(folder: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` when it is a complete one, else None: absent, or cut short (a full disk,
    a copy interrupted), or without the keys a sweep reads. A trial is finished only when this reads it."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):  # ValueError: json.JSONDecodeError
        return None
    if not isinstance(summary, dict) or not SUMMARY_KEYS <= summary.keys():
        return None
    return summary


SUMMARY_KEYS = {"selection", "target_acc", "epochs"}  # what trials.json reads (_summary_status)


def _set_aside_unreadable_summary(folder: Path) -> None:
    """Rename a damaged ``summary.json`` to ``summary.json.unreadable``, so the trial resumes from its
    ``last.pt`` (the file stays beside it) instead of staying stuck; a trial without a checkpoint starts
    again, as a run killed before its first epoch does."""
    path = folder / "summary.json"
    if path.is_file():
        kept = path.with_name("summary.json.unreadable")
        os.replace(path, kept)
        log.warning(
            "%s is damaged (renamed to %s): the trial is unfinished and runs again from its last checkpoint, if any",
            path,
            kept.name,
        )


def _tune_trainable(config: dict[str, Any]) -> None:
    """What a Ray worker runs: the trial's config (sampled keys merged for Optuna), then :func:`run_trial`."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(config.get("_threads", 1))))
    run_trial(_trial_config(config), report=tune.report)


def _trial_config(tune_config: dict[str, Any]) -> Config:
    """A trial's config from what Tune passed it: the resolved config, plus the keys Optuna sampled."""
    sampled = {k: v for k, v in tune_config.items() if not k.startswith("_")}
    if sampled:  # Optuna proposed these: the run folder is named after them
        name = trial_name({**tune_config["_point"], **sampled})
        return build_config([], {**sampled, "experiment.name": name}, start=tune_config["_config"])
    return Config.model_validate(tune_config["_config"])


# ---------------------------------------------------------------------------------------------- progress


class _Progress:
    """A Ray Tune callback that keeps a tqdm bar of trials done / running / failed."""

    def __new__(cls, total: int, enabled: bool):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self):
                self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled, dynamic_ncols=True)
                self.running, self.failed = set(), set()

            def _show(self):
                self.bar.set_postfix(
                    done=self.bar.n - len(self.failed), running=len(self.running), failed=len(self.failed)
                )

            def on_trial_start(self, iteration, trials, trial, **info):
                self.running.add(trial.trial_id)
                self._show()

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.running.discard(trial.trial_id)
                self.bar.update(1)
                self._show()

            def on_trial_error(self, iteration, trials, trial, **info):
                self.running.discard(trial.trial_id)
                self.failed.add(trial.trial_id)
                self.bar.update(1)
                self._show()

            def on_experiment_end(self, trials, **info):
                self.bar.close()

        return Progress()


# ---------------------------------------------------------------------------------------------- the sweep


def _init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's tables would fight our progress bar
    import ray

    if ray.is_initialized():
        return
    # plugin modules (experiment.plugins) are importable in workers from where the sweep was started
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path, "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=runtime_env,
            configure_logging=False,
        )


def _scheduler(spec: SweepSpec):
    if spec.asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = spec.asha
    epochs = max(Config.model_validate(t.config).train.epochs for t in grid_trials(spec))
    return ASHAScheduler(
        metric=a.metric,
        mode="max",
        time_attr="epoch",
        max_t=max(epochs, 1),
        grace_period=a.grace_period,
        reduction_factor=a.reduction_factor,
    )


def _space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    makers = {"choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    out = {}
    for key, dist in spec.search.space.items():
        ((kind, args),) = dist.items()
        out[key] = makers[kind](args) if kind == "choice" else makers[kind](*args)
    return out


def _tuner(spec: SweepSpec, trials: list[Trial], storage: Path, name: str, progress, optuna_point: Trial | None):
    from ray import tune

    threads = max(1, int(spec.resources.get("cpu", 1)))
    trainable = tune.with_resources(_tune_trainable, {k: v for k, v in spec.resources.items() if v})
    if optuna_point is None:
        param_space = {"_config": tune.grid_search([t.config for t in trials]), "_threads": threads}
        search_alg, num_samples = None, 1
    else:
        from ray.tune.search.optuna import OptunaSearch

        param_space = {
            **_space(spec),
            "_config": optuna_point.config,
            "_point": optuna_point.point,
            "_threads": threads,
        }
        search_alg = OptunaSearch(metric=spec.search.metric, mode="max", seed=spec.search.seed)
        num_samples = spec.search.num_samples
    sched = _scheduler(spec)
    tune_config = tune.TuneConfig(
        num_samples=num_samples,
        search_alg=search_alg,
        scheduler=sched,
        max_concurrent_trials=spec.max_concurrent,  # the ASHA scheduler carries its own metric and mode
        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(storage),
        verbose=0,
        callbacks=[progress],
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every trial of ``spec`` (skipping finished ones, resuming unfinished ones); write
    ``<sweep>/sweep.yaml`` and ``<sweep>/trials.json``; return ``{"dir", "trials": [...], "failed": n}``."""
    root = sweep_dir(spec)
    optuna = spec.search is not None and spec.search.algorithm == "optuna"
    require("ray.tune", "shiftlab sweep needs Ray Tune", "sweep")  # the extras are optional (shiftlab.extras)
    if optuna:
        require("optuna", "a sweep with 'search: {algorithm: optuna}' needs Optuna", "sweep")
    if optuna:
        check_sampled_keys(spec)
    trials = grid_trials(spec) if optuna else expand(spec)  # every config validated before Ray starts
    unfinished = [t for t in trials if not _finished(t)]
    missing = missing_weights(unfinished)
    if missing:  # all missing: nothing could start, say so before Ray; some: those trials fail, named
        message = missing_weights_message(spec, missing, len(unfinished))
        if len(missing) == len(unfinished):
            raise SweepError(message)
        log.warning("%s", message)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "sweep.yaml", _dump(spec))
    total = len(trials) * (spec.search.num_samples if optuna else 1)
    finished_before = len(trials) - len(unfinished)
    log.info("sweep %s: %d trials (%d finished earlier) in %s", spec.name, total, finished_before, root)

    storage = root / "tune"
    bar = _Progress(total, progress)
    bar.bar.update(0 if optuna else finished_before)
    # finished trials of a grid never reach Ray again; Optuna's see them (read back, not retrained) so that
    # its seeded sampler proposes the same points as the first time
    todo = trials if optuna else [t for t in trials if not _finished(t)]
    groups = [(t, [t]) for t in todo] if optuna else ([(None, todo)] if todo else [])
    results = []
    if groups:
        _init_ray(address, num_cpus, num_gpus)
    for point, group in groups:
        name = f"optuna_{point.name}" if point else "grid"
        if (storage / name).exists():  # Tune's own state of an earlier run: our run folders are the truth
            shutil.rmtree(storage / name)
        results.append(_tuner(spec, group, storage, name, bar, point).fit())
    bar.bar.close()
    done_before = [] if optuna else [t for t in trials if t not in todo]
    return _record(spec, root, results, done_before)


def _finished(trial: Trial) -> bool:
    return read_summary(run_dir(Config.model_validate(trial.config))) is not None


def _dump(spec: SweepSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def _record(spec: SweepSpec, root: Path, results, done_before: list[Trial]) -> dict[str, Any]:
    """One line per trial in ``trials.json``: status, run folder, selected target accuracy or the error."""
    outcomes = [(t.config, {}, None, None) for t in done_before]
    for grid in results:
        # a trial interrupted before its first report (Ctrl-C) has no config: unfinished, the next run resumes it
        outcomes += [(r.config.get("_config") or {}, r.config, r.error, r.metrics) for r in grid if r.config]
    rows = [_row(spec, *outcome) for outcome in outcomes]
    rows.sort(key=lambda r: r["trial"])
    write_json(root / "trials.json", rows)
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        print(f"trial {r['trial']} failed: {r['error']} (traceback: {r['run_dir']}/error.txt)", file=sys.stderr)
    return {"dir": str(root), "trials": rows, "failed": len(failed)}


def _row(spec: SweepSpec, base: dict, tune_config: dict, error, metrics) -> dict[str, Any]:
    sampled = {k: v for k, v in tune_config.items() if not k.startswith("_")}
    name = trial_name({**tune_config.get("_point", {}), **sampled}) if sampled else base["experiment"]["name"]
    folder = Path(base["experiment"]["output_dir"]) / name
    row = {"trial": name, "run_dir": str(folder)}
    if error is not None:
        return {**row, "status": "failed", "error": _one_line(error)}
    if read_summary(folder) is not None:
        return {**row, **_summary_status(folder)}
    ckpt = folder / "checkpoints" / "last.pt"
    if spec.asha is not None and ckpt.is_file():
        # ASHA ends a trial right after a report: one it stopped early, or one that reached its last epoch
        # (before fit() wrote the summary). The summary is written now, without training; the marker keeps
        # a later run of the sweep from training a stopped trial further.
        cfg = _trial_config(tune_config)
        if load_checkpoint(ckpt)["epoch"] < cfg.train.epochs:
            atomic_write_text(folder / "stopped_by_scheduler", "ASHA stopped this trial\n")
        run_trial(cfg)
        return {**row, **_summary_status(folder)}
    return {**row, "status": "stopped", "epochs": (metrics or {}).get("epoch")}


def _summary_status(folder: Path) -> dict[str, Any]:
    """A trial with a summary: 'stopped' when ASHA stopped it (its marker file), else 'finished', with
    ``early_stopped`` telling a run that ended by its own ``train.early_stopping_patience``."""
    summary = read_summary(folder)
    if summary is None:
        return {"status": "stopped", "epochs": None}  # its summary.json was damaged since the trial ended
    by_scheduler = (folder / "stopped_by_scheduler").is_file()
    return {
        "status": "stopped" if by_scheduler else "finished",
        "early_stopped": bool(summary.get("stopped_early")) and not by_scheduler,
        "selection": summary["selection"],
        "target_acc": summary["target_acc"],
        "epochs": summary["epochs"],
    }


def outcome_line(name: str, result: dict[str, Any]) -> str:
    """The closing line of ``shiftlab sweep``: trials finished (those that ended by their own early stopping
    counted among them), failed, and stopped by the ASHA scheduler."""
    rows = result["trials"]
    done = [r for r in rows if r["status"] == "finished"]
    early = sum(bool(r.get("early_stopped")) for r in done)
    patience = f" ({early} of them early-stopped by train.early_stopping_patience)" if early else ""
    return (
        f"sweep {name}: {len(done)} finished{patience}, {result['failed']} failed, "
        f"{len(rows) - len(done) - result['failed']} stopped by the scheduler; {result['dir']}/trials.json"
    )


def _one_line(error: BaseException) -> str:
    """The original exception of a failed trial, not Ray's wrapper around it."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}".strip()
    return text.splitlines()[0] if "\n" in text else text
