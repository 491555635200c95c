"""Data parallelism with torchrun (issue 19): two gloo processes on the CPU train as one process does on
the same global batch, only rank 0 writes the run folder, and both ranks resume from its checkpoint."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer

pytestmark = pytest.mark.slow  # two gloo processes train the demo

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
# dann_digits has no BatchNorm, whose per-rank statistics would differ from the global batch's
SETTING = [
    "--model.name=dann_digits",
    "--data.batch_size=32",
    "--train.steps_per_epoch=8",
    "--optim.lr=0.05",
    "--optim.schedule=constant",  # the same learning rates whether a run is planned for 1 or 2 epochs
    "--train.progress=false",
    "--train.validators=[entropy,snd]",
    "--train.device=cpu",
]
COMPARED = (
    "train_loss",
    "train_acc",
    "source_val_acc",
    "source_val_loss",
    "target_acc",
    "target_loss",
    "unsup_entropy",
    "unsup_snd",
    "lr",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "shiftlab.cli",
        "train",
        "--config",
        str(DEMO),
        *SETTING,
        f"--experiment.output_dir={out}",
        f"--experiment.name={name}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_match_one_process_and_resume_from_rank_0_s_checkpoint(tmp_path):
    one = Trainer(
        build_config(
            [DEMO], [*SETTING, "--train.epochs=2", f"--experiment.output_dir={tmp_path}", "--experiment.name=one"]
        )
    )
    one.fit()
    first = _torchrun(tmp_path, "two", "--train.epochs=1")
    assert first.stdout.count("target accuracy") == 1  # rank 0 alone prints the closing line
    run = tmp_path / "two"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "summary.json").is_file()
    assert len(list((run / "tensorboard").glob("events.*"))) == 1  # one writer: rank 0
    _torchrun(tmp_path, "two", "--train.epochs=2", "--resume")  # every rank loads rank 0's checkpoint

    two = _rows(run / "metrics.csv")
    ref = _rows(tmp_path / "one" / "metrics.csv")
    assert [r["epoch"] for r in two] == [r["epoch"] for r in ref] == ["1", "2"]
    for a, b in zip(ref, two):
        assert a["step"] == b["step"]
        for key in COMPARED:
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), key
