"""The short USPS -> MNIST setting shared by the slow effect tests of tests/test_adversarial.py and
tests/test_baselines_discriminative.py, and its source-only run, trained once per test session for both.

configs/dann/usps_to_mnist.yaml's set-up (the DANN paper's digits network at 28 px, SGD lr 0.02 annealed),
every split cut to 2,000 evenly spaced images (the target: a fixed 2,000-image slice of MNIST's test set),
620 steps of 64 + 64 images (20 passes over the 2,000 source images), one evaluation at the end, seed 0.
Source-only is that file with its method section replaced: each method's run differs from it by the method
section and the run's name alone (``same_setting`` checks it)."""

from __future__ import annotations

from pathlib import Path

import torch

from shiftlab.config import Config, build_config, read_yaml
from shiftlab.engine.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
SHORT_DIGITS = [
    "--data.limit=2000",
    "--train.epochs=20",
    "--train.eval_every=20",
    "--train.validators=[]",
    "--train.progress=false",
    "--experiment.seed=0",
]
_RUNS: dict[str, tuple[Path, Config, dict]] = {}


def short_tree(method: str) -> dict:
    """The config tree of ``configs/<method>/usps_to_mnist.yaml`` (each is based on DANN's)."""
    return read_yaml(REPO / "configs" / method / "usps_to_mnist.yaml")


def short_config(out: Path, data_root: Path, tree: dict, name: str, *extra: str) -> Config:
    """``tree`` in the short setting, run ``out/name``; ``extra`` overrides come last."""
    return build_config(
        [],
        [
            f"--experiment.output_dir={out}",
            f"--data.root={data_root}",
            *SHORT_DIGITS,
            f"--experiment.name={name}",
            *extra,
        ],
        start=tree,
    )


def _fit(cfg: Config) -> tuple[Trainer, dict]:
    before = torch.get_num_threads()  # callers are module- or session-scoped: the one_thread fixture cannot serve
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, overwrite=True)
        return trainer, trainer.fit()
    finally:
        torch.set_num_threads(before)


def train_short(out: Path, data_root: Path, tree: dict, name: str, *extra: str) -> tuple[Config, dict]:
    """Train ``tree`` in the short setting into ``out/name`` with one torch thread; (config, summary)."""
    cfg = short_config(out, data_root, tree, name, *extra)
    return cfg, _fit(cfg)[1]


def brief_backbone(out: Path, data_root: Path, method: dict, name: str) -> tuple[float, dict]:
    """15 steps of the short setting on 300 images per split with this method section: (target accuracy,
    the backbone's weights), for checking that a method with its weight at 0 trains as source-only to the bit."""
    extra = ["--train.epochs=1", "--train.steps_per_epoch=15", "--data.limit=300"]
    trainer, summary = _fit(short_config(out, data_root, {**short_tree("dann"), "method": method}, name, *extra))
    return summary["target_acc"], trainer.method.backbone.state_dict()


def short_source_only(tmp_path_factory, data_root: Path) -> tuple[Path, Config, dict]:
    """(folder, config, summary) of the source-only run, trained on the first call; later runs of a method
    go into the same folder, so that their configs differ from its by the method and the name only."""
    if "source_only" not in _RUNS:
        out = tmp_path_factory.mktemp("short_usps_to_mnist")
        tree = {**short_tree("dann"), "method": {"name": "source_only"}}
        _RUNS["source_only"] = (out, *train_short(out, data_root, tree, "source_only"))
    return _RUNS["source_only"]


def same_setting(a_cfg: Config, b_cfg: Config, a: dict, b: dict) -> None:
    """Two runs of the short setting differ by their method and name only, and saw the same target images."""
    a_dump, b_dump = a_cfg.model_dump(), b_cfg.model_dump()
    assert {k for k in a_dump if a_dump[k] != b_dump[k]} <= {"experiment", "method"}  # data, network, optimiser, budget
    assert {k for k in a_dump["experiment"] if a_dump["experiment"][k] != b_dump["experiment"][k]} == {"name"}
    assert a["steps"] == b["steps"] == 620 and (b_cfg.data.source, b_cfg.data.target) == ("usps", "mnist")
    assert a["splits"]["target_eval"]["fingerprint"] == b["splits"]["target_eval"]["fingerprint"]
    assert b["splits"]["target_eval"]["size"] == 2000
