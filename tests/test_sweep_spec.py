"""Sweep files: grid expansion, random search, names, and errors that name the key (no Ray here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shiftlab.config import build_config, nest_dotted
from shiftlab.errors import SweepError
from shiftlab.methods import METHODS
from shiftlab.sweep.spec import draw, expand, grid_trials, load_sweep, sweep_dir, trial_name

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, **spec) -> Path:
    spec.setdefault("config", [str(REPO / "configs/demo.yaml")])
    spec.setdefault("output_dir", str(tmp_path / "sweeps"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_the_cartesian_product_in_a_fixed_order(tmp_path):
    spec = load_sweep(
        _write(
            tmp_path,
            set={"train.epochs": 3},
            grid={"method.name": ["source_only", "adabn"], "experiment.seed": [0, 1, 2]},
        )
    )
    assert spec.name == "s"  # the file's stem
    trials = expand(spec)
    assert [t.point for t in trials] == [
        {"method.name": m, "experiment.seed": s} for m in ("source_only", "adabn") for s in (0, 1, 2)
    ]
    assert trials[4].name == "method.name=adabn,experiment.seed=1"
    cfg = trials[4].config
    assert cfg["method"]["name"] == "adabn" and cfg["experiment"]["seed"] == 1 and cfg["train"]["epochs"] == 3
    assert cfg["experiment"]["name"] == trials[4].name
    assert Path(cfg["experiment"]["output_dir"]) == sweep_dir(spec) / "runs" == tmp_path / "sweeps/s/runs"
    assert cfg["data"]["dataset"] == "demo"  # from the base config file
    assert expand(spec) == trials  # the same trials on every expansion


def test_exclude_skips_matching_grid_points_and_names_bad_entries(tmp_path):
    # Office-Home's 12 ordered pairs are the 4 x 4 grid without its diagonal
    domains = ["Art", "Clipart", "Product", "Real_World"]
    spec = load_sweep(
        _write(
            tmp_path,
            grid={"data.source": domains, "data.target": domains},
            exclude=[{"data.source": d, "data.target": d} for d in domains],
        )
    )
    points = [t.point for t in expand(spec)]
    assert len(points) == 12 and all(p["data.source"] != p["data.target"] for p in points)
    assert {"data.source": "Art", "data.target": "Clipart"} in points
    # a partial entry drops every point it matches
    spec = load_sweep(
        _write(
            tmp_path,
            grid={"method.name": ["source_only", "adabn"], "experiment.seed": [0, 1, 2]},
            exclude=[{"experiment.seed": 2}],
        )
    )
    assert [t.point["experiment.seed"] for t in expand(spec)] == [0, 1, 0, 1]
    with pytest.raises(SweepError, match=r"exclude\[0\]: method.lr is not a grid key; grid keys: method.name"):
        load_sweep(_write(tmp_path, grid={"method.name": ["adabn"]}, exclude=[{"method.lr": 1}]))
    with pytest.raises(SweepError, match=r"exclude\[0\]: method.name='dann' is not among grid.method.name"):
        load_sweep(_write(tmp_path, grid={"method.name": ["adabn"]}, exclude=[{"method.name": "dann"}]))


AM_CONFIG = (
    REPO / "configs/activation_matching/activation_matching_js.yaml"
)  # method keys: layers, gan (drift: the default)


def test_a_grid_method_section_naming_another_method_replaces_the_base_section(tmp_path):
    spec = load_sweep(
        _write(
            tmp_path,
            config=[str(AM_CONFIG)],
            grid={"method": [{"name": "adabn"}, {"name": "activation_matching", "drift": 0.5}]},
        )
    )
    adabn, matching = (t.config["method"] for t in expand(spec))
    assert adabn == {"name": "adabn", "max_batches": None}  # the base's activation-matching keys are gone
    # the same method merges: the base's gan stays, the grid's drift wins, the rest are the defaults
    assert (matching["gan"], matching["drift"], matching["layers"]) == ("js", 0.5, "auto")  # default drift: 1


def test_a_grid_method_name_naming_another_method_replaces_the_base_section(tmp_path):
    spec = load_sweep(_write(tmp_path, config=[str(AM_CONFIG)], grid={"method.name": ["adabn", "activation_matching"]}))
    adabn, matching = (t.config["method"] for t in expand(spec))
    assert adabn == {"name": "adabn", "max_batches": None} and matching["gan"] == "js"


def test_a_set_method_section_naming_another_method_replaces_the_base_section(tmp_path):
    spec = load_sweep(
        _write(
            tmp_path,
            config=[str(AM_CONFIG)],
            set={"method": {"name": "dann", "lambda_": 0.1}},
            grid={"method.form": ["joint", "three_step"]},
        )
    )
    methods = [t.config["method"] for t in expand(spec)]
    assert [(m["name"], m["lambda_"], m["form"]) for m in methods] == [
        ("dann", 0.1, "joint"),
        ("dann", 0.1, "three_step"),
    ]
    assert not any("gan" in m for m in methods)


def test_set_method_keys_reach_every_trial_of_a_grid_of_methods(tmp_path):
    spec = load_sweep(_write(tmp_path, set={"method.lambda_": 0.1}, grid={"method.name": ["dann", "dannp"]}))
    assert [(t.config["method"]["name"], t.config["method"]["lambda_"]) for t in expand(spec)] == [
        ("dann", 0.1),
        ("dannp", 0.1),
    ]


def test_a_misspelt_method_key_of_a_trial_names_the_trial_and_the_valid_keys(tmp_path):
    with pytest.raises(
        SweepError, match=r"trial method.name=dann: .*unknown key method\.lamda.*Valid keys: method\.weight"
    ):
        expand(load_sweep(_write(tmp_path, set={"method.lamda": 0.1}, grid={"method.name": ["dann"]})))


def test_random_search_draws_the_same_trials_each_time_within_bounds(tmp_path):
    path = _write(
        tmp_path,
        grid={"experiment.seed": [0, 1]},
        search={
            "algorithm": "random",
            "num_samples": 5,
            "seed": 7,
            "space": {
                "optim.lr": {"loguniform": [1e-4, 1e-1]},
                "optim.name": {"choice": ["sgd", "adam"]},
                "data.batch_size": {"randint": [16, 65]},
            },
        },
    )
    trials = expand(load_sweep(path))
    assert len(trials) == 10 and len({t.name for t in trials}) == 10
    assert [t.name for t in trials] == [t.name for t in expand(load_sweep(path))]
    for t in trials:
        assert 1e-4 <= t.config["optim"]["lr"] <= 1e-1
        assert t.config["optim"]["name"] in ("sgd", "adam")
        assert 16 <= t.config["data"]["batch_size"] < 65
    assert len({t.config["optim"]["lr"] for t in trials}) == 10
    assert grid_trials(load_sweep(path))[1].point == {"experiment.seed": 1}


def test_draw_covers_a_log_range():
    import numpy as np

    rng = np.random.default_rng(0)
    lrs = [draw({"lr": {"loguniform": [1e-4, 1.0]}}, rng)["lr"] for _ in range(2000)]
    below = sum(lr < 1e-2 for lr in lrs) / len(lrs)
    assert below == pytest.approx(0.5, abs=0.05)  # half the draws in the lower half of the exponents


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
    with pytest.raises(SweepError, match="unknown config key 'train.epoch'.*Did you mean 'train.epochs'"):
        expand(load_sweep(_write(tmp_path, grid={"train.epoch": [1, 2]})))
    with pytest.raises(SweepError, match=r"trial method.name=nope.*unknown method.name 'nope'"):
        expand(load_sweep(_write(tmp_path, grid={"method.name": ["source_only", "nope"]})))
    with pytest.raises(SweepError, match="grid.experiment.seed is an empty list"):
        load_sweep(_write(tmp_path, grid={"experiment.seed": []}))
    with pytest.raises(SweepError, match=r"s.yaml: .*search.space.optim.lr must be one of"):
        load_sweep(_write(tmp_path, search={"space": {"optim.lr": {"gauss": [0, 1]}}}))
    with pytest.raises(SweepError, match="reads target test labels"):
        load_sweep(
            _write(
                tmp_path,
                search={"algorithm": "optuna", "metric": "target_acc", "space": {"optim.lr": {"uniform": [0.01, 0.1]}}},
            )
        )
    with pytest.raises(SweepError, match="asha.metric 'target_acc' reads target test labels"):
        load_sweep(_write(tmp_path, asha={"metric": "target_acc"}))
    with pytest.raises(SweepError, match="valid top-level keys"):
        load_sweep(_write(tmp_path, grids={"experiment.seed": [0]}))
    with pytest.raises(SweepError, match="share the run folder"):
        expand(load_sweep(_write(tmp_path, grid={"experiment.seed": [1, 1]})))
    # `report: {cols: data.source,data.target}` in YAML flow style splits at the comma into a key data.target
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        f"config: [{REPO / 'configs/demo.yaml'}]\nreport: {{rows: method.name, cols: data.source,data.target}}\n"
    )
    with pytest.raises(SweepError, match="unknown report 'data.target'; valid: rows, cols"):
        load_sweep(flow)


def test_trial_names_are_folder_safe_and_unique():
    assert trial_name({}) == "default"
    assert (
        trial_name({"optim.lr": 0.0123456, "data.target": "photo@greyscale()"})
        == "optim.lr=0.01235,data.target=photo@greyscale()"
    )
    a = trial_name({"method.layers": ["layer1.0.conv1"] * 20, "experiment.seed": 0})
    b = trial_name({"method.layers": ["layer1.0.conv1"] * 20, "experiment.seed": 1})
    assert len(a) <= 120 and a != b and "/" not in a


def test_dotted_overrides_nest_like_the_command_line():
    assert nest_dotted({"train.epochs": 3, "data": {"root": "/x"}, "method.name": "adabn"}) == {
        "train": {"epochs": 3},
        "data": {"root": "/x"},
        "method": {"name": "adabn"},
    }
    assert build_config([], {"train.epochs": 3}).train.epochs == 3
    assert build_config([], ["--train.epochs=3"]) == build_config([], {"train.epochs": 3})


def test_every_shipped_sweep_expands(tmp_path, monkeypatch):
    # the sweeps of docs/ must stay runnable as the config keys evolve (configs are built, nothing runs)
    monkeypatch.chdir(REPO)
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        spec = load_sweep(f)
        trials = expand(spec)
        assert trials, f
        assert len({t.name for t in trials}) == len(trials), f
        for t in trials:  # every method key typed: misspelt keys would have failed expand() above
            method = dict(t.config["method"])
            assert set(method) - {"name"} == set(METHODS[method["name"]].Params.model_fields), (f, t.name)


@pytest.mark.slow
def test_dry_run_into_a_closed_pipe_exits_quietly():
    """`shiftlab sweep --dry-run FILE | head -1`: the reader leaves early; no traceback, exit status 141."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shiftlab.cli",
            "sweep",
            "--dry-run",
            str(REPO / "sweeps/toalign_office_home_dannp.yaml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # nothing is read
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err


def test_a_trial_that_early_stopped_by_patience_counts_as_finished_and_one_asha_stopped_does_not(tmp_path):
    from shiftlab.sweep.runner import _summary_status, outcome_line

    def trial(name, stopped_early, marker=False):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(
            json.dumps({"stopped_early": stopped_early, "selection": "last", "target_acc": 0.5, "epochs": 2})
        )
        if marker:
            (folder / "stopped_by_scheduler").write_text("ASHA stopped this trial\n")
        return {"trial": name, **_summary_status(folder)}

    rows = [trial("ran_out", False), trial("patience", True), trial("asha", True, marker=True)]
    assert [(r["status"], r["early_stopped"]) for r in rows] == [
        ("finished", False),
        ("finished", True),
        ("stopped", False),
    ]
    line = outcome_line(
        "demo", {"trials": rows + [{"trial": "bad", "status": "failed"}], "failed": 1, "dir": "runs/sweeps/demo"}
    )
    assert line == (
        "sweep demo: 2 finished (1 of them early-stopped by train.early_stopping_patience), "
        "1 failed, 1 stopped by the scheduler; runs/sweeps/demo/trials.json"
    )


# --- a damaged summary.json: the trial is unfinished (issue 31) ------------------------------------------


def trial_config(tmp_path: Path):
    return build_config(
        [REPO / "configs/demo.yaml"],
        [
            "--train.epochs=1",
            "--data.limit=32",
            "--data.batch_size=16",
            "--train.progress=false",
            "--train.validators=[]",
            f"--experiment.output_dir={tmp_path / 'runs'}",
            "--experiment.name=trial",
        ],
    )


@pytest.mark.parametrize(
    "text", ['{"selection": "source_val", "target_acc": 0.', "[1, 2]", '{"selection": "last"}', ""]
)
def test_a_damaged_summary_is_not_a_finished_trial(tmp_path, text):
    from shiftlab.sweep.runner import _finished, read_summary
    from shiftlab.sweep.spec import Trial

    cfg = trial_config(tmp_path)
    folder = tmp_path / "runs" / "trial"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(text)
    assert read_summary(folder) is None
    assert not _finished(Trial(name="trial", point={}, config=cfg.to_dict()))
    (folder / "summary.json").write_text(json.dumps({"selection": "last", "target_acc": 0.5, "epochs": 1}))
    assert _finished(Trial(name="trial", point={}, config=cfg.to_dict()))


@pytest.mark.slow
def test_a_trial_with_a_truncated_summary_resumes_from_its_checkpoint(tmp_path):
    from shiftlab.sweep.runner import run_trial

    cfg = trial_config(tmp_path)
    first = run_trial(cfg)
    folder = tmp_path / "runs" / "trial"
    text = (folder / "summary.json").read_text()
    (folder / "summary.json").write_text(text[: len(text) // 2])  # a full disk cut it short
    again = run_trial(cfg)
    assert again["resumed_at_epochs"] == [1]  # read back from last.pt, not trained again
    assert again["target_acc"] == first["target_acc"]
    assert json.loads((folder / "summary.json").read_text())["target_acc"] == first["target_acc"]
    assert (folder / "summary.json.unreadable").read_text() == text[: len(text) // 2]


@pytest.mark.slow
def test_a_trial_with_a_truncated_summary_and_no_checkpoint_starts_again(tmp_path):
    from shiftlab.sweep.runner import run_trial

    cfg = trial_config(tmp_path)
    run_trial(cfg)
    folder = tmp_path / "runs" / "trial"
    (folder / "checkpoints" / "last.pt").unlink()
    (folder / "summary.json").write_text('{"selections": ')
    again = run_trial(cfg)
    assert again["resumed_at_epochs"] == [] and again["epochs"] == 1
    assert json.loads((folder / "summary.json").read_text())["epochs"] == 1


def test_method_search_expands_each_method_by_its_own_declared_space(tmp_path):
    from shiftlab.methods import get_method

    path = tmp_path / "bench.yaml"
    path.write_text(
        f"name: bench\noutput_dir: {tmp_path}\nconfig: [{REPO / 'configs' / 'demo.yaml'}]\n"
        "method_search: true\n"
        "grid:\n  method.name: [source_only, dann]\n  experiment.seed: [0, 1]\n"
    )
    trials = expand(load_sweep(path))
    weights = get_method("dann").search_space["weight"]
    assert len(weights) > 1 and get_method("source_only").search_space == {}
    assert len(trials) == 2 + 2 * len(weights)  # source-only has no weight to search
    dann = sorted(
        (t.point["experiment.seed"], t.point["method.weight"]) for t in trials if t.point["method.name"] == "dann"
    )
    assert dann == sorted((s, w) for s in (0, 1) for w in weights)
    assert all(t.config["method"]["weight"] == t.point["method.weight"] for t in trials if "method.weight" in t.point)
    assert len({t.name for t in trials}) == len(trials)  # each setting its own run folder


def test_a_trial_interrupted_before_its_first_report_is_left_for_the_next_run(tmp_path):
    """Ctrl-C while a trial had just started: Ray returns a result without a config; the sweep's record
    skips it (the next run resumes it) instead of failing with an AttributeError after the interruption."""
    from types import SimpleNamespace

    from shiftlab.sweep.runner import _record

    interrupted = SimpleNamespace(config=None, error=None, metrics=None)
    record = _record(None, tmp_path, [[interrupted]], [])
    assert record["trials"] == [] and record["failed"] == 0
    assert json.loads((tmp_path / "trials.json").read_text()) == []


def test_a_sweep_whose_trials_all_lack_their_weights_file_stops_before_ray_and_names_them(tmp_path, capsys):
    """A second-stage sweep run before its first stage (AdapterNet, SHOT, activation matching start from
    another run's checkpoint): one error naming the missing files, no Ray, no sweep folder written."""
    from shiftlab.cli import main
    from shiftlab.sweep.runner import run_sweep
    from shiftlab.sweep.spec import missing_weights

    present = tmp_path / "present.pt"
    present.write_bytes(b"")
    template = str(tmp_path / "stage1" / "seed{experiment.seed}.pt")
    spec = load_sweep(_write(tmp_path, set={"model.weights": template}, grid={"experiment.seed": [0, 1, 2, 3, 4]}))
    missing = missing_weights(expand(spec))
    assert sorted(missing) == [f"experiment.seed={s}" for s in range(5)]
    assert missing["experiment.seed=3"] == tmp_path / "stage1" / "seed3.pt"
    with pytest.raises(SweepError, match=r"5 of 5 unfinished trials .* model.weights file that does not exist") as err:
        run_sweep(spec, progress=False)
    assert "seed0.pt" in str(err.value) and "and 2 more" in str(err.value)
    assert not sweep_dir(spec).exists()
    # --dry-run marks each trial whose file is missing
    path = _write(tmp_path, set={"model.weights": template}, grid={"experiment.seed": [0]})
    assert main(["sweep", "--dry-run", str(path)]) == 0
    assert f"(model.weights not found: {tmp_path / 'stage1' / 'seed0.pt'})" in capsys.readouterr().out
    spec = load_sweep(_write(tmp_path, set={"model.weights": str(present)}, grid={"experiment.seed": [0]}))
    assert missing_weights(expand(spec)) == {}
