"""Typed config: defaults, YAML, base files, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shiftlab.cli import main
from shiftlab.config import Config, build_config, describe
from shiftlab.errors import ConfigError
from shiftlab.methods import METHODS

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
    cfg = build_config(
        [child],
        [
            "--train.epochs=2",
            "--data.root",
            "/some/where",
            "--optim.lr=1e-3",
            "--model.weights=null",
            "--data.augment=false",
        ],
    )
    assert cfg.data.batch_size == 128  # from base.yaml
    assert cfg.data.target == "sketch"  # from child.yaml
    assert cfg.train.epochs == 2  # command line wins
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
    assert cfg.method.model_extra == {"layers": 2, "count": "layer"}  # resolved with its defaults
    assert cfg.method.params() == {"layers": 2, "count": "layer"}  # the accessor the loop passes to build_method


def test_method_keys_are_resolved_with_their_defaults_into_config_yaml():
    cfg = build_config([], ["--method.name=dann", "--method.lambda_=0.3"])
    assert cfg.method.params() == {
        "weight": 1.0,
        "lambda_": 0.3,
        "lambda_gamma": 10.0,
        "hidden": [1024, 1024],
        "dropout": 0.5,
        "form": "joint",
        "discriminator": "auto",
    }
    saved = yaml.safe_load(cfg.to_yaml())["method"]
    assert saved == {"name": "dann", **cfg.method.params()}  # the resolved config: defaults included


def test_an_unknown_method_key_is_named_with_the_valid_keys():
    with pytest.raises(
        ConfigError,
        match=r"method 'dann': unknown key method\.lamda \(did you mean method\.lambda_\?\)"
        r".*Valid keys: method\.weight, method\.lambda_, ",
    ):
        build_config([], ["--method.name=dann", "--method.lamda=0.3"])


def test_a_wrong_typed_method_key_is_named_with_its_value():
    with pytest.raises(ConfigError, match=r"method\.form: Input should be 'joint' or 'three_step' \(got 'sideways'\)"):
        build_config([], ["--method.name=dann", "--method.form=sideways"])
    with pytest.raises(ConfigError, match=r"method\.lambda_: .*valid number.*\(got 'strong'\)"):
        build_config([], ["--method.name=dann", "--method.lambda_=strong"])


def test_a_bad_method_key_fails_before_any_data_is_read(capsys, tmp_path):
    missing = tmp_path / "no_data_here"  # reading it would fail with another message
    assert (
        main(
            [
                "train",
                "--data.dataset=pacs",
                f"--data.root={missing}",
                "--method.name=dann",
                "--method.lamda=1",
                f"--experiment.output_dir={tmp_path / 'runs'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown key method.lamda" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not missing.exists()


def test_a_plugin_method_is_resolved_after_its_module_is_imported():
    cfg = build_config(
        [], ["--experiment.plugins=[toy_methods]", "--method.name=toy_two_player", "--method.adversarial=0.5"]
    )
    assert cfg.method.params() == {"steps": "both", "adversarial": 0.5}
    with pytest.raises(ConfigError, match="unknown key method.stepz"):
        build_config([], ["--experiment.plugins=[toy_methods]", "--method.name=toy_two_player", "--method.stepz=disc"])


def _dann_base(tmp_path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("method:\n  name: dann\n  lambda_: 0.1\n  hidden: [100]\n")
    return base


def test_a_base_chain_child_naming_another_method_replaces_the_method_section(tmp_path):
    _dann_base(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmethod:\n  name: adabn\n")
    cfg = build_config([child])
    assert cfg.method.name == "adabn" and cfg.method.params() == {"max_batches": None}


def test_a_base_chain_child_naming_the_same_method_merges_into_it(tmp_path):
    _dann_base(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmethod:\n  name: dann\n  form: three_step\n")
    params = build_config([child]).method.params()
    assert (params["lambda_"], params["hidden"], params["form"]) == (0.1, [100], "three_step")


def test_an_override_naming_another_method_replaces_the_config_files_method_section(tmp_path):
    base = _dann_base(tmp_path)
    assert build_config([base], ["--method.name=adabn"]).method.params() == {"max_batches": None}
    assert build_config([base], ["--method.hidden=[50]"]).method.params()["lambda_"] == 0.1  # no name: merges


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
    for name, cls in METHODS.items():
        for key, field in cls.Params.model_fields.items():
            assert f"--method.{key}  (default: {field.get_default(call_default_factory=True)})" in out, (name, key)


def test_every_shipped_config_is_valid():
    # build_config types every method key too (tests/test_sweep_spec.py does the sweeps' trials)
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        cfg = build_config([f])
        assert set(cfg.method.params()) == set(METHODS[cfg.method.name].Params.model_fields), f


def test_train_command_reports_bad_keys_and_exits_2(capsys, tmp_path):
    assert main(["train", "--train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err
    assert main(["train", "--data.source=mnist", f"--experiment.output_dir={tmp_path}"]) == 2
    assert "valid domains: digits, digits_photo" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # a run that cannot start leaves no folder behind


def test_a_resumed_run_keeps_its_method_keys_when_the_same_command_is_given_again(tmp_path):
    run = [f"--experiment.output_dir={tmp_path}", "--experiment.name=t"]
    first = build_config([REPO / "configs" / "demo.yaml"], ["--method.name=dann", "--method.lambda_=0.5", *run])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text(first.to_yaml())
    # demo.yaml names source_only; the command names dann again: the saved lambda_ stays
    again = build_config([REPO / "configs" / "demo.yaml"], ["--method.name=dann", *run], resume=True)
    assert again.method.params() == first.method.params()
    # a method key alone is typed against the saved run's method, not the default one
    changed = build_config([], ["--method.dropout=0.25", *run], resume=True)
    assert (changed.method.name, changed.method.params()["lambda_"], changed.method.params()["dropout"]) == (
        "dann",
        0.5,
        0.25,
    )


def test_a_nameless_method_section_of_a_config_file_merges_under_a_named_override(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("method:\n  lambda_: 0.2\n")
    assert build_config([extra], ["--method.name=dann"]).method.params()["lambda_"] == 0.2
    with pytest.raises(ConfigError, match="unknown key method.lambda_"):  # foreign to adabn: named, not dropped
        build_config([extra], ["--method.name=adabn"])
