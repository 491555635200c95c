"""Tiny demo runs of every method family, trained once per test session for tests/test_predict.py and
tests/test_export.py (about 20 s on 2 CPU cores in all)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
COMMON = [
    "--data.limit=256",
    "--data.batch_size=32",
    "--train.progress=false",
    "--train.validators=[]",
    "--train.steps_per_epoch=2",
]
# name -> overrides; the methods that start from a trained model load the source_only run's best.pt
METHODS = {
    "source_only": ["--method.name=source_only", "--train.epochs=2"],
    "dann": ["--method.name=dann", "--train.epochs=2"],
    "adabn": ["--method.name=adabn", "--train.epochs=2"],
    "activation_shaping": [
        "--method.name=activation_shaping",
        "--method.layers=relu1",
        "--method.maps=target",
        "--train.epochs=2",
    ],
    "activation_shaping_ash": [
        "--method.name=activation_shaping",
        "--method.layers=relu2",
        "--method.mode=ash_p",
        "--train.epochs=1",
    ],
    "activation_shaping_random": ["--method.name=activation_shaping", "--method.layers=relu1", "--train.epochs=1"],
    "gaussian_matching": ["--method.name=gaussian_matching", "--train.epochs=0", "WEIGHTS"],
    "adapternet": ["--method.name=adapternet", "--train.epochs=2", "--optim.lr=0.01", "WEIGHTS"],
    "activation_matching": [
        "--method.name=activation_matching",
        "--method.gaussian=true",
        "--train.epochs=2",
        "WEIGHTS",
    ],
}
_RUNS: dict[str, Path] = {}


def demo_runs(tmp_path_factory) -> Path:
    """The folder holding one finished run per entry of :data:`METHODS` (trained on the first call)."""
    if "out" in _RUNS:
        return _RUNS["out"]
    out = tmp_path_factory.mktemp("inference_runs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two competing threads on 2 busy cores
    try:
        for name, extra in METHODS.items():
            weights = f"--model.weights={out / 'source_only' / 'checkpoints' / 'best.pt'}"
            overrides = [
                f"--experiment.output_dir={out}",
                f"--experiment.name={name}",
                *COMMON,
                *[weights if e == "WEIGHTS" else e for e in extra],
            ]
            Trainer(build_config([DEMO], overrides)).fit()
    finally:
        torch.set_num_threads(before)
    _RUNS["out"] = out
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
