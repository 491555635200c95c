"""The run folder never loses a user's data: only folders shiftlab created as runs are emptied, one writer at a
time (a lock), the checkpoint's history restores a lost metrics row, non-finite weights are never checkpointed,
a resume that would change the run is refused, a damaged last.pt falls back on last.prev.pt."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shiftlab.checkpoints import load_checkpoint, save_checkpoint
from shiftlab.cli import main
from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.engine.run_folder import LOCK, MARKER
from shiftlab.errors import NonFiniteWeightsError, RunExistsError, RunFolderError, TrainingDivergedError
from shiftlab.models.weights import load_local

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
QUICK = [
    "--train.progress=false",
    "--data.limit=128",
    "--data.batch_size=32",
    "--train.epochs=1",
    "--train.validators=[]",
]


def _cfg(out: Path, *overrides: str, files=(DEMO,), resume: bool = False):
    return build_config(list(files), [f"--experiment.output_dir={out}", *QUICK, *overrides], resume=resume)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---------------------------------------------------------------- data loss: nothing foreign is deleted


def test_a_run_named_like_the_parent_of_a_finished_run_deletes_nothing(tmp_path):
    """The issue's reproduction: a finished run demo/source_only, the user's notes beside it, then a run whose
    default experiment.name ('demo') is their parent folder."""
    Trainer(_cfg(tmp_path)).fit()
    finished = tmp_path / "demo" / "source_only"
    notes = tmp_path / "demo" / "notes.txt"
    notes.write_text("my notes\n")
    before = _tree(tmp_path)
    with pytest.raises(RunFolderError, match="not a shiftlab run folder"):
        Trainer(build_config([], [f"--experiment.output_dir={tmp_path}", "--model.name=small_cnn", *QUICK]))
    with pytest.raises(RunFolderError, match="not a shiftlab run folder"):  # --overwrite does not change that
        Trainer(
            build_config([], [f"--experiment.output_dir={tmp_path}", "--model.name=small_cnn", *QUICK]), overwrite=True
        )
    assert _tree(tmp_path) == before and notes.read_text() == "my notes\n"
    assert (finished / "summary.json").is_file()


def test_the_output_folder_itself_or_a_folder_outside_it_is_never_a_run(tmp_path):
    Trainer(_cfg(tmp_path / "out", "--experiment.name=a")).fit()
    outside = tmp_path / "mine"
    outside.mkdir()
    (outside / "thesis.tex").write_text("x")
    before = _tree(tmp_path)
    for name in (".", str(outside), "../mine", "a/.."):
        with pytest.raises((RunFolderError, ValueError)):
            Trainer(_cfg(tmp_path / "out", f"--experiment.name={name}"), overwrite=True)
    assert _tree(tmp_path) == before


def test_a_run_folder_holding_foreign_files_or_inside_a_run_is_refused(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    (tmp_path / "r" / "plot.png").write_bytes(b"png")
    with pytest.raises(RunFolderError, match="plot.png"):
        Trainer(_cfg(tmp_path, "--experiment.name=r"), overwrite=True)
    assert (tmp_path / "r" / "plot.png").is_file() and (tmp_path / "r" / "summary.json").is_file()
    with pytest.raises(RunFolderError, match="inside the run"):
        Trainer(_cfg(tmp_path, "--experiment.name=r/inner"))
    assert not (tmp_path / "r" / "inner").exists()


def test_overwrite_replaces_only_a_run_of_its_own(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    with pytest.raises(RunExistsError):
        Trainer(_cfg(tmp_path, "--experiment.name=r"))
    Trainer(_cfg(tmp_path, "--experiment.name=r", "--experiment.seed=1"), overwrite=True).fit()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["seed"] == 1
    assert (tmp_path / "r" / MARKER).is_file() and not (tmp_path / "r" / LOCK).exists()  # released after fit


# ---------------------------------------------------------------- the lock


def test_a_second_trainer_on_a_live_run_stops_with_a_clear_error(tmp_path):
    first = Trainer(_cfg(tmp_path, "--experiment.name=r"))  # holds the lock until it has run
    lock = json.loads((tmp_path / "r" / LOCK).read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="in use by process"):
            Trainer(_cfg(tmp_path, "--experiment.name=r", "--experiment.seed=1"), overwrite=overwrite)
    first.fit()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["seed"] == 0
    assert not (tmp_path / "r" / LOCK).exists()


def test_a_lock_of_another_live_process_is_respected_and_a_dead_one_taken_over(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "r" / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=f"in use by process {sleeper.pid}"):
            Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2"), resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the sleeper is dead now: its lock is stale and the resume takes it over
    summary = Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2"), resume=True).fit()
    assert summary["epochs"] == 2 and not (tmp_path / "r" / LOCK).exists()


@pytest.mark.slow
def test_two_cli_trainings_into_one_folder_leave_one_consistent_run(tmp_path):
    """Started together: one trains, the other stops with the lock's error (exit 2); config, summary and
    checkpoint all belong to the one that ran."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        sys.executable,
        "-m",
        "shiftlab.cli",
        "train",
        "--config",
        str(DEMO),
        f"--experiment.output_dir={tmp_path}",
        "--experiment.name=r",
        *QUICK,
        "--train.epochs=2",
    ]
    procs = [
        subprocess.Popen(
            [*args, f"--experiment.seed={s}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for s in (0, 1)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "in use by process" in loser or "already exists" in loser
    seed = json.loads((tmp_path / "r" / "summary.json").read_text())["seed"]
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["config"]["experiment"]["seed"] == seed
    assert f"seed: {seed}" in (tmp_path / "r" / "config.yaml").read_text()


# ---------------------------------------------------------------- resume repairs, refuses, falls back


def test_resume_restores_the_metrics_row_a_kill_lost_and_removes_interrupted_writes(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2")).fit()
    run = tmp_path / "r"
    full = _rows(run / "metrics.csv")
    # as if killed after the last last.pt and before metrics.csv: one row short, a temporary left behind
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(full[0]))
        writer.writeheader()
        writer.writerow(full[0])
    (run / ".metrics.csv.0123456789ab.tmp").write_text("half")
    (run / "checkpoints" / ".last.pt.0123456789ab.tmp").write_bytes(b"half")
    (run / "summary.json").unlink()
    summary = Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", resume=True), resume=True).fit()
    assert summary["epochs"] == 2
    assert _rows(run / "metrics.csv") == full
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))


def test_resume_refuses_keys_that_would_change_the_run_and_names_them(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    for key, value in (("optim.lr", "0.5"), ("model.name", "dann_digits"), ("data.batch_size", "16")):
        cfg = _cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", f"--{key}={value}", resume=True)
        with pytest.raises(RunFolderError, match=f"--resume cannot change {key}"):
            Trainer(cfg, resume=True)
    # the number of epochs may grow, and the checkpoint's rate is the one that goes on
    summary = Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", resume=True), resume=True).fit()
    assert summary["epochs"] == 2 and summary["config"]["optim"]["lr"] == pytest.approx(0.05)


def test_resume_may_change_the_memory_format_a_speed_setting(tmp_path):
    finals = {}
    for cl in ("false", "true"):  # the same first epoch, resumed in either memory format
        Trainer(_cfg(tmp_path, f"--experiment.name={cl}")).fit()
        cfg = _cfg(tmp_path, f"--experiment.name={cl}", "--train.epochs=2", f"--train.channels_last={cl}", resume=True)
        summary = Trainer(cfg, resume=True).fit()
        assert summary["epochs"] == 2 and summary["resumed_at_epochs"] == [1]
        assert summary["config"]["train"]["channels_last"] is (cl == "true")
        finals[cl] = summary["final_train_loss"]
    assert finals["true"] == pytest.approx(finals["false"], rel=1e-3)  # the same training, up to rounding


def test_a_damaged_last_checkpoint_falls_back_on_the_previous_epoch(tmp_path, caplog):
    Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2")).fit()
    ckpt = tmp_path / "r" / "checkpoints"
    assert load_checkpoint(ckpt / "last.prev.pt")["epoch"] == 1 and load_checkpoint(ckpt / "last.pt")["epoch"] == 2
    data = (ckpt / "last.pt").read_bytes()
    (ckpt / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level("WARNING"):
        summary = Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", resume=True), resume=True).fit()
    assert "last.pt is unreadable" in caplog.text and "last.prev.pt" in caplog.text
    assert summary["epochs"] == 2 and summary["resumed_at_epochs"] == [1]
    # with both damaged: one line naming the file, nothing deleted
    for name in ("last.pt", "last.prev.pt"):
        (ckpt / name).write_bytes(b"not a checkpoint")
    with pytest.raises(RunFolderError, match="last.pt is unreadable"):
        Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=3", resume=True), resume=True)
    assert (ckpt / "last.pt").read_bytes() == b"not a checkpoint"


# ---------------------------------------------------------------- poisoned checkpoints, full disks


def test_a_diverged_run_stops_naming_the_epoch_and_never_checkpoints_nan(tmp_path, capsys):
    args = [
        "train",
        "--config",
        str(DEMO),
        f"--experiment.output_dir={tmp_path}",
        "--experiment.name=nan",
        *QUICK,
        "--optim.lr=1e30",
        "--train.steps_per_epoch=1",
        "--train.epochs=2",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epoch" in err and ("NaN" in err or "nan" in err or "inf" in err), err
    for ckpt in (tmp_path / "nan" / "checkpoints").glob("*.pt"):
        state = load_checkpoint(ckpt)  # refuses non-finite weights, so loading proves they are finite
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_weights_files_with_nan_are_refused_when_loaded(tmp_path):
    state = {"w": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)}
    save_checkpoint(tmp_path / "plain.pt", state)
    save_checkpoint(tmp_path / "run.pt", {"model": state, "epoch": 3})
    for name in ("plain.pt", "run.pt"):
        with pytest.raises(NonFiniteWeightsError, match=f"{name} holds NaN or infinite weights \\(w\\)"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(NonFiniteWeightsError, match="plain.pt"):
        load_local(tmp_path / "plain.pt")


def test_a_full_disk_for_the_run_folder_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    import shiftlab.engine.run_folder as rf

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rf, "save_checkpoint", full)
    with pytest.raises(
        RunFolderError, match=r"cannot write checkpoints/(best|last).pt in .*r: No space left on device"
    ):
        Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    assert not (tmp_path / "r" / LOCK).exists()  # the lock goes with the failed run


def test_a_diverging_loss_is_a_shiftlab_error(tmp_path):
    with pytest.raises(TrainingDivergedError, match="at epoch 1"):
        Trainer(
            _cfg(tmp_path, "--experiment.name=x", "--optim.lr=1e30", "--train.epochs=1", "--train.steps_per_epoch=3")
        ).fit()
    assert issubclass(TrainingDivergedError, FloatingPointError)


def test_a_sweep_trial_takes_the_same_lock(tmp_path):
    from shiftlab.sweep.runner import run_trial

    run = tmp_path / "t"
    run.mkdir()
    (run / MARKER).write_text("{}\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=f"in use by process {sleeper.pid}"):
            run_trial(_cfg(tmp_path, "--experiment.name=t"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in run.iterdir()) == sorted([MARKER, LOCK, "error.txt"])  # nothing else touched


def test_a_lock_being_written_counts_as_held_and_an_old_empty_one_is_stale(tmp_path):
    Trainer(_cfg(tmp_path, "--experiment.name=r")).fit()
    lock = tmp_path / "r" / LOCK
    lock.write_text("")  # created by O_EXCL, its owner not yet done writing
    with pytest.raises(RunFolderError, match="in use by process"):
        Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", resume=True), resume=True)
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))  # a process killed between creating and writing it, a minute ago
    assert (
        Trainer(_cfg(tmp_path, "--experiment.name=r", "--train.epochs=2", resume=True), resume=True).fit()["epochs"]
        == 2
    )
