"""Typed config: defaults, YAML, base files, dotted overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from shiftlab.cli import main
from shiftlab.config import Config, build_config, describe
from shiftlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_demo_with_resnet18():
    cfg = Config()
    assert (cfg.data.dataset, cfg.data.source, cfg.data.target) == ("demo", "digits", "digits_photo")
    assert cfg.model.name == "resnet18" and cfg.method.name == "source_only"


def test_yaml_then_overrides_compose_in_order(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data:\n  batch_size: 128\n  dataset: pacs\ntrain:\n  epochs: 30\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ndata:\n  target: sketch\ntrain:\n  epochs: 5\n")
    cfg = build_config([child], ["--train.epochs=2", "--data.root", "/some/where", "--optim.lr=1e-3",
                                 "--model.weights=null", "--data.augment=false"])
    assert cfg.data.batch_size == 128          # from base.yaml
    assert cfg.data.target == "sketch"         # from child.yaml
    assert cfg.train.epochs == 2               # command line wins
    assert cfg.data.root == Path("/some/where")
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.data.augment is False and cfg.model.weights is None


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*Did you mean 'train\.epochs'"):
        build_config([], ["--train.epoch=3"])


def test_bad_value_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        build_config([], ["--train.epochs=many"])
    with pytest.raises(ConfigError, match=r"model\.name.*resnet18.*small_cnn"):
        build_config([], ["--model.name=vgg"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        build_config([tmp_path / "nope.yaml"])


def test_method_keys_are_kept_for_the_method_to_validate():
    cfg = build_config([], ["--method.name=finetune", "--method.layers=2"])
    assert cfg.method.model_extra == {"layers": 2}


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = build_config([REPO / "configs" / "demo.yaml"], ["--experiment.seed=7"])
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert build_config([saved]) == cfg


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key, default, _ in describe():
        assert f"--{key}  (default: {default})" in out
    assert "--method.layers" in out and "adabn" in out and "target_oracle" in out


def test_every_shipped_config_is_valid():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        build_config([f])


def test_train_command_reports_bad_keys_and_exits_2(capsys, tmp_path):
    assert main(["train", "--train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main(["train", "--data.source=mnist", f"--experiment.output_dir={tmp_path}"]) == 2
    assert "valid domains: digits, digits_photo" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # a run that cannot start leaves no folder behind
