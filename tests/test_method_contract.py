"""A new method is one small class: the README's example trains through the shared loop unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.methods.base import METHODS, Method, get_method, method_params, register_method

REPO = Path(__file__).resolve().parents[1]
SEEN = {}


class EntropyMin(Method):
    name = "entropy_min_test"
    target_stream = "unlabelled"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(0.1, description="weight of the target entropy term")

    def training_step(self, source, target, progress):
        SEEN.setdefault("target_labels", set()).add(target.y is None)
        SEEN.setdefault("progress", []).append(progress)
        ce, acc = self.classification(self.backbone(source.x), source.y)
        p = self.backbone(target.x).softmax(1)
        entropy = -(p * p.clamp_min(1e-8).log()).sum(1).mean()
        return {"loss": ce + self.params.weight * entropy, "ce": ce, "entropy": entropy, "acc": acc}


@pytest.fixture
def registered():
    register_method(EntropyMin)
    yield
    METHODS.pop(EntropyMin.name, None)


@pytest.mark.slow
def test_a_new_method_trains_with_its_own_params_and_losses(registered, tmp_path):
    cfg = build_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"--experiment.output_dir={tmp_path}",
            "--experiment.name=em",
            "--method.name=entropy_min_test",
            "--method.weight=0.5",
            "--train.epochs=2",
            "--data.limit=256",
            "--train.progress=false",
        ],
    )
    trainer = Trainer(cfg)
    assert trainer.method.params.weight == 0.5
    trainer.fit()
    assert SEEN["target_labels"] == {True}  # the unlabelled stream carries no labels
    assert SEEN["progress"][0] == 0 and 0 < SEEN["progress"][-1] < 1
    with open(tmp_path / "em" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train_loss", "train_ce", "train_entropy", "train_acc"} <= set(rows[0])
    assert len(rows) == 2


def test_a_new_methods_params_are_typed_by_build_config(registered):
    cfg = build_config([], ["--method.name=entropy_min_test"])
    assert cfg.method.params() == {"weight": 0.1}  # its default, in the resolved config
    with pytest.raises(ValueError, match=r"unknown key method\.wieght \(did you mean method\.weight\?\)"):
        build_config([], ["--method.name=entropy_min_test", "--method.wieght=0.5"])


def test_unknown_method_and_bad_params_are_named():
    with pytest.raises(ValueError, match="unknown method.name 'adabm'.*Did you mean 'adabn'"):
        get_method("adabm")
    with pytest.raises(ValueError, match=r"method\.layerz.*Valid keys: method\.layers"):
        method_params("finetune", {"layerz": 2})
