"""What sweeps need from a Trainer: best.pt kept, callbacks, early stop, no leaked process state,
resolved paths, restart after an early kill, resume in the library, one-line user errors only."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftlab.checkpoints import load_checkpoint
from shiftlab.cli import main
from shiftlab.config import build_config
from shiftlab.engine.callbacks import EarlyStopping
from shiftlab.engine.loop import Trainer
from shiftlab.errors import RunFolderError
from shiftlab.methods import METHODS, register_method
from shiftlab.methods.source_only import SourceOnly

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
QUICK = ["--train.progress=false", "--data.limit=256", "--data.batch_size=32"]


def _cfg(tmp_path, name, *overrides, resume=False):
    return build_config(
        [DEMO], [f"--experiment.output_dir={tmp_path}", f"--experiment.name={name}", *QUICK, *overrides], resume=resume
    )


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summary = Trainer(_cfg(out, "three", "--train.epochs=3")).fit()
    return out / "three", summary


@pytest.mark.slow
def test_best_checkpoint_is_the_selected_epoch_and_evaluates_to_its_numbers(three_epochs, tmp_path):
    run, summary = three_epochs
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    chosen = summary["selections"]["source_val"]
    assert summary["best_checkpoint"] == {
        "path": "checkpoints/best.pt",
        "selection": "source_val",
        "epoch": chosen["epoch"],
    }
    assert best["epoch"] == chosen["epoch"] and best["selection"] == "source_val"
    again = Trainer(_cfg(tmp_path, "eval", "--train.epochs=0", f"--model.weights={run / 'checkpoints/best.pt'}")).fit()
    assert again["final_target_acc"] == pytest.approx(chosen["target_acc"])
    assert again["final_source_val_acc"] == pytest.approx(chosen["source_val_acc"])


@pytest.mark.slow
def test_summary_records_splits_and_per_class_accuracy(three_epochs):
    _, summary = three_epochs
    assert summary["splits"] and all("size" in s for s in summary["splits"].values())
    per_class = summary["per_class_target_acc"]["final"]
    assert sorted(per_class) == [str(i) for i in range(10)] or len(per_class) == 10
    assert all(0 <= v <= 1 for v in per_class.values())


@pytest.mark.slow
def test_callback_sees_every_evaluation_and_can_stop_the_run(tmp_path):
    seen = []

    def stop_after_two(trainer, metrics):
        seen.append(metrics)
        if metrics["epoch"] == 2:
            trainer.should_stop = True

    summary = Trainer(_cfg(tmp_path, "stop", "--train.epochs=5"), callbacks=[stop_after_two]).fit()
    assert [m["epoch"] for m in seen] == [1, 2] and "source_val_acc" in seen[0]
    assert summary["stopped_early"] is True and summary["epochs"] == 2
    # resuming a run that a callback stopped does not train it further
    resumed = Trainer(_cfg(tmp_path, "stop", "--train.epochs=5", resume=True), resume=True).fit()
    assert resumed["epochs"] == 2


def test_early_stopping_stops_when_the_monitored_metric_stalls():
    class Stub:
        should_stop = False

    stub, stopper = Stub(), EarlyStopping(monitor="source_val_acc", patience=2)
    for acc in (0.5, 0.6, 0.6, 0.55):
        stopper.on_evaluation(stub, {"source_val_acc": acc})
    assert stub.should_stop
    with pytest.raises(KeyError, match="source_val_acc"):
        EarlyStopping().on_evaluation(stub, {"target_acc": 0.1})


@pytest.mark.slow
def test_a_trainer_leaves_no_process_global_state_behind(tmp_path):
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    first = Trainer(_cfg(tmp_path, "a", "--train.epochs=1", "--train.deterministic=true"))
    first.fit()
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


@pytest.mark.slow
def test_trainers_in_one_process_do_not_change_each_other(tmp_path):
    alone = Trainer(_cfg(tmp_path, "alone", "--train.epochs=2")).fit()
    other = Trainer(_cfg(tmp_path, "other", "--train.epochs=1", "--experiment.seed=5"))
    interleaved = Trainer(_cfg(tmp_path, "interleaved", "--train.epochs=2"))
    other.fit()
    again = interleaved.fit()
    assert again["final_target_acc"] == alone["final_target_acc"]
    assert again["final_train_loss"] == alone["final_train_loss"]


def test_relative_paths_are_resolved_when_the_config_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHIFTLAB_DATA", "somewhere/data")
    cfg = build_config([], ["--experiment.output_dir=runs", "--model.weights=w.pt"])
    assert cfg.experiment.output_dir == tmp_path / "runs"
    assert cfg.data.root == tmp_path / "somewhere" / "data"
    assert cfg.model.weights == tmp_path / "w.pt"


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_restarts_without_overwrite(tmp_path):
    run = tmp_path / "early"
    (run / "tensorboard").mkdir(parents=True)
    (run / "config.yaml").write_text("stale: true\n")
    (run / ".shiftlab-run").write_text("{}\n")  # the marker a run writes first
    Trainer(_cfg(tmp_path, "early", "--train.epochs=1")).fit()
    assert (run / "checkpoints" / "last.pt").is_file() and "stale" not in (run / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match="--resume"):
        Trainer(_cfg(tmp_path, "early", "--train.epochs=1"))
    with pytest.raises(RunFolderError, match="nothing to resume"):
        Trainer(_cfg(tmp_path, "never", "--train.epochs=1"), resume=True)


@pytest.mark.slow
def test_resume_takes_the_saved_config_and_the_command_line_still_wins(tmp_path):
    Trainer(_cfg(tmp_path, "r", "--train.epochs=1", "--optim.lr=0.03")).fit()
    cfg = build_config(
        [], [f"--experiment.output_dir={tmp_path}", "--experiment.name=r", "--train.epochs=2"], resume=True
    )
    assert cfg.optim.lr == pytest.approx(0.03) and cfg.data.limit == 256  # from the saved config
    assert cfg.train.epochs == 2  # from the command line
    assert Trainer(cfg, resume=True).fit()["epochs"] == 2


class Broken(SourceOnly):
    name = "broken_test"

    def training_step(self, source, target, progress):
        raise ZeroDivisionError("a bug in a method")


def test_cli_prints_user_errors_in_one_line_and_lets_bugs_show_their_traceback(tmp_path, capsys):
    args = ["train", "--config", str(DEMO), *QUICK, f"--experiment.output_dir={tmp_path}"]
    assert main([*args, "--train.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs" in err
    register_method(Broken)
    try:
        with pytest.raises(ZeroDivisionError, match="a bug in a method"):
            main([*args, "--method.name=broken_test", "--experiment.name=broken"])
    finally:
        METHODS.pop("broken_test", None)
