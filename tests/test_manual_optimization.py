"""Methods that own their optimisation: named optimisers, alternating steps, exact resume after a kill."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import checkpointed, kill_when

from shiftlab.checkpoints import load_checkpoint
from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DEMO = REPO / "configs" / "demo.yaml"
PLUGIN = "--experiment.plugins=[toy_methods]"


@pytest.fixture(autouse=True)
def _plugin_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _trainer(tmp_path, name, *overrides) -> Trainer:
    cfg = build_config(
        [DEMO],
        [
            f"--experiment.output_dir={tmp_path}",
            f"--experiment.name={name}",
            PLUGIN,
            "--train.progress=false",
            "--data.limit=256",
            *overrides,
        ],
    )
    return Trainer(cfg, overwrite=True)


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize(
    "steps, moved, still", [("disc", "discriminator", "backbone"), ("main", "backbone", "discriminator")]
)
def test_a_step_of_one_optimizer_leaves_the_others_parameters_untouched(tmp_path, steps, moved, still):
    trainer = _trainer(
        tmp_path,
        steps,
        "--method.name=toy_two_player",
        f"--method.steps={steps}",
        "--train.epochs=1",
        "--train.steps_per_epoch=3",
    )
    assert set(trainer.optimizers) == {"main", "disc"}
    assert isinstance(trainer.optimizers["disc"], torch.optim.Adam)
    assert isinstance(trainer.optimizers["main"], torch.optim.SGD)
    before = {m: _params(getattr(trainer.method, m)) for m in ("backbone", "discriminator")}
    trainer.fit()
    after = {m: _params(getattr(trainer.method, m)) for m in ("backbone", "discriminator")}
    assert all(torch.equal(before[still][k], after[still][k]) for k in before[still])
    assert any(not torch.equal(before[moved][k], after[moved][k]) for k in before[moved])


def test_three_backward_passes_give_the_gradients_of_the_summed_loss(tmp_path):
    common = ("--train.epochs=1", "--train.steps_per_epoch=1", "--optim.momentum=0", "--optim.weight_decay=0")
    joint = _trainer(tmp_path, "joint", "--method.name=toy_dann_joint", *common)
    three = _trainer(tmp_path, "three", "--method.name=toy_dann_three_step", *common)
    start = _params(joint.method)
    assert all(torch.equal(start[k], v) for k, v in _params(three.method).items())  # same seed, same init
    joint.fit(), three.fit()
    a, b = _params(joint.method), _params(three.method)
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert any(k.startswith("domain_classifier") for k in moved) and any(k.startswith("backbone") for k in moved)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_manual_method_must_not_claim_a_parameter_twice(tmp_path):
    from toy_methods import ToyTwoPlayer

    original = ToyTwoPlayer.configure_optimizers
    ToyTwoPlayer.configure_optimizers = lambda self, lr: {
        "main": self.param_groups(lr),  # includes the disc
        "disc": [{"params": list(self.discriminator.parameters())}],
    }
    try:
        with pytest.raises(ValueError, match="both optimizer 'main' and 'disc'"):
            _trainer(tmp_path, "twice", "--method.name=toy_two_player")
    finally:
        ToyTwoPlayer.configure_optimizers = original


def _cli(out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shiftlab.cli",
        "train",
        "--config",
        str(DEMO),
        PLUGIN,
        "--method.name=toy_two_player",
        "--train.epochs=4",
        "--data.batch_size=16",
        "--train.progress=false",
        "--optim.lr=0.02",
        f"--experiment.output_dir={out}",
        f"--experiment.name={name}",
        *extra,
    ]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_optimizer_method_resumes_bit_exactly_after_sigkill(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(_cli(tmp_path, "full"), check=True, capture_output=True, timeout=600, env=env)
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    ckpt = run / "checkpoints" / "last.pt"
    kill_when(proc, checkpointed(run, 2))
    assert not (run / "summary.json").exists() and 2 <= load_checkpoint(ckpt)["epoch"] < 4

    subprocess.run(_cli(tmp_path, "killed", "--resume"), check=True, capture_output=True, timeout=600, env=env)
    assert _rows(run) == _rows(tmp_path / "full")
    resumed, reference = load_checkpoint(ckpt), load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    for k in reference["model"]:
        assert torch.equal(resumed["model"][k], reference["model"][k]), k
    assert set(resumed["optimizers"]) == {"main", "disc"}
    for name in ("main", "disc"):  # Adam's moments and SGD's momentum buffers resume too
        for pid, state in reference["optimizers"][name]["state"].items():
            for key, value in state.items():
                assert torch.equal(
                    torch.as_tensor(resumed["optimizers"][name]["state"][pid][key]), torch.as_tensor(value)
                ), (name, pid, key)
        assert resumed["schedulers"][name] == reference["schedulers"][name]
