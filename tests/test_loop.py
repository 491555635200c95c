"""The shared training loop: run folder contents, selection, overwrite protection, resume after a kill."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from processes import checkpointed, kill_when

from shiftlab.checkpoints import load_checkpoint
from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.errors import RunExistsError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
# Small batches make an epoch last long enough to be killed in the middle of the run.
FAST = ["--train.epochs=4", "--data.batch_size=16", "--train.progress=false", "--optim.lr=0.02"]
TIMING = ("epoch_time_s", "images_per_s")


def _cli(out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shiftlab.cli",
        "train",
        "--config",
        str(DEMO),
        *FAST,
        f"--experiment.output_dir={out}",
        f"--experiment.name={name}",
        *extra,
    ]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    subprocess.run(_cli(out, "full"), check=True, capture_output=True, timeout=600)
    return out / "full"


@pytest.mark.slow
def test_run_folder_holds_every_file_of_the_contract(full_run):
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt"):
        assert (full_run / name).is_file(), name
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    rows = _rows(full_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for col in ("step", "train_loss", "source_val_acc", "target_acc", "lr"):
        assert col in rows[0]
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["selection"] == "source_val" and summary["epochs"] == 4
    assert summary["reads_target_labels"] is False and summary["target_eval_split"] == "test"
    best_val = max(rows, key=lambda r: float(r["source_val_acc"]))
    assert summary["selections"]["source_val"]["epoch"] == int(best_val["epoch"])
    assert summary["target_acc"] == pytest.approx(float(best_val["target_acc"]))
    assert summary["final_target_acc"] == pytest.approx(float(rows[-1]["target_acc"]))
    assert summary["seed"] == 0 and summary["config"]["train"]["epochs"] == 4
    saved = yaml.safe_load((full_run / "config.yaml").read_text())
    assert saved == summary["config"]


@pytest.mark.slow
def test_embedded_demo_beats_chance(full_run):
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["final_source_val_acc"] > 0.9  # the source task is learnt
    assert summary["final_target_acc"] > 0.3  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(full_run, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    kill_when(proc, checkpointed(run, 2))  # as soon as two epochs are checkpointed
    assert not (run / "summary.json").exists(), "the run finished before the kill"
    epoch_at_kill = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert 2 <= epoch_at_kill < 4

    subprocess.run(_cli(tmp_path, "killed", "--resume"), check=True, capture_output=True, timeout=600)
    assert _rows(run) == _rows(full_run)
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    reference = load_checkpoint(full_run / "checkpoints" / "last.pt")["model"]
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k


@pytest.mark.slow
def test_existing_run_folder_is_never_overwritten_unless_asked(full_run):
    cfg = build_config([DEMO], [f"--experiment.output_dir={full_run.parent}", "--experiment.name=full"])
    before = (full_run / "metrics.csv").read_text()
    with pytest.raises(RunExistsError, match="--resume .* --overwrite"):
        Trainer(cfg)
    assert (full_run / "metrics.csv").read_text() == before


def test_resume_without_checkpoint_is_an_error(tmp_path):
    cfg = build_config([DEMO], [f"--experiment.output_dir={tmp_path}", "--experiment.name=none"])
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(cfg, resume=True)


def _train(tmp_path, name, *overrides):
    cfg = build_config(
        [DEMO],
        [f"--experiment.output_dir={tmp_path}", f"--experiment.name={name}", "--train.progress=false", *overrides],
    )
    return Trainer(cfg, overwrite=True).fit()


@pytest.mark.slow
def test_adabn_on_a_trained_model_changes_target_but_not_source_accuracy(full_run, tmp_path):
    weights = str(full_run / "checkpoints" / "last.pt")
    plain = _train(tmp_path, "plain", "--train.epochs=0", f"--model.weights={weights}")
    adabn = _train(tmp_path, "adabn", "--train.epochs=0", f"--model.weights={weights}", "--method.name=adabn")
    source = json.loads((full_run / "summary.json").read_text())
    assert plain["epochs"] == 0 and plain["final_target_acc"] == pytest.approx(source["final_target_acc"])
    assert adabn["final_source_val_acc"] == pytest.approx(plain["final_source_val_acc"])
    assert adabn["final_target_acc"] != pytest.approx(plain["final_target_acc"])


@pytest.mark.slow
def test_oracle_trains_on_target_labels_and_is_evaluated_on_held_out_target(tmp_path):
    summary = _train(tmp_path, "oracle", "--train.epochs=2", "--method.name=target_oracle")
    # the demo's test part is disjoint from its train/val parts, so it is the oracle's test part too
    assert summary["reads_target_labels"] is True and summary["target_eval_split"] == "test"
    assert summary["selection"] == "target_val" and "target_val_acc" in summary["selections"]["target_val"]
    assert summary["final_target_acc"] > 0.5


@pytest.mark.slow
def test_finetune_trains_only_the_last_layers(full_run, tmp_path):
    weights = full_run / "checkpoints" / "last.pt"
    _train(
        tmp_path, "ft", "--train.epochs=1", "--method.name=finetune", "--method.layers=1", f"--model.weights={weights}"
    )
    start = load_checkpoint(weights)["model"]
    end = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["model"]
    changed = sorted(k for k in start if not torch.equal(start[k], end[k]))
    assert changed == ["backbone.head.bias", "backbone.head.weight"]


def test_finetune_without_a_trained_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--model.weights"):
        _train(tmp_path, "ft0", "--method.name=finetune")


def test_schedules():
    from shiftlab.engine.optim import lr_factor

    steps = 30 * 15  # the study: 30 epochs, x0.1 from epoch 24 on (StepLR(step_size=24))
    assert lr_factor("step", (24 * 15 - 1) / steps) == 1.0
    assert lr_factor("step", 24 * 15 / steps) == pytest.approx(0.1)
    assert (
        lr_factor("cosine", 0) == 1
        and lr_factor("cosine", 1) == pytest.approx(0)
        and lr_factor("cosine", 0.5) == pytest.approx(0.5)
    )
    assert lr_factor("inverse", 1) == pytest.approx(11**-0.75)  # Ganin & Lempitsky: (1 + 10 p)^-0.75
    assert lr_factor("constant", 0.7) == 1.0


def test_exact_steps_gives_every_stream_the_same_budget(tmp_path):
    """train.steps_per_epoch caps an epoch at one pass of the main stream unless train.exact_steps, which cycles
    it: the target oracle (a short target stream) then trains as many steps as a source-stream method."""
    common = [
        f"--experiment.output_dir={tmp_path}",
        "--data.limit=128",
        "--data.batch_size=32",
        "--train.steps_per_epoch=6",
        "--train.epochs=1",
        "--train.progress=false",
        "--train.validators=[]",
    ]
    capped = Trainer(build_config(["configs/demo.yaml"], [*common, "--experiment.name=capped"]))
    exact = Trainer(
        build_config(["configs/demo.yaml"], [*common, "--experiment.name=exact", "--train.exact_steps=true"])
    )
    assert len(capped.loaders.source) < 6 and capped.steps_per_epoch == len(capped.loaders.source)
    assert exact.steps_per_epoch == 6 and exact.fit()["steps"] == 6
