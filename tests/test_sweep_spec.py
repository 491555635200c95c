"""Sweep files: grid expansion, random search, names, and errors that name the key (no Ray here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shiftlab.config import build_config, nest_dotted
from shiftlab.errors import SweepError
from shiftlab.sweep.spec import draw, expand, grid_trials, load_sweep, sweep_dir, trial_name

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, **spec) -> Path:
    spec.setdefault("config", [str(REPO / "configs/demo.yaml")])
    spec.setdefault("output_dir", str(tmp_path / "sweeps"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_the_cartesian_product_in_a_fixed_order(tmp_path):
    spec = load_sweep(_write(tmp_path, set={"train.epochs": 3},
                             grid={"method.name": ["source_only", "adabn"], "experiment.seed": [0, 1, 2]}))
    assert spec.name == "s"  # the file's stem
    trials = expand(spec)
    assert [t.point for t in trials] == [{"method.name": m, "experiment.seed": s}
                                         for m in ("source_only", "adabn") for s in (0, 1, 2)]
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
    spec = load_sweep(_write(tmp_path, grid={"data.source": domains, "data.target": domains},
                             exclude=[{"data.source": d, "data.target": d} for d in domains]))
    points = [t.point for t in expand(spec)]
    assert len(points) == 12 and all(p["data.source"] != p["data.target"] for p in points)
    assert {"data.source": "Art", "data.target": "Clipart"} in points
    # a partial entry drops every point it matches
    spec = load_sweep(_write(tmp_path, grid={"method.name": ["source_only", "adabn"], "experiment.seed": [0, 1, 2]},
                             exclude=[{"experiment.seed": 2}]))
    assert [t.point["experiment.seed"] for t in expand(spec)] == [0, 1, 0, 1]
    with pytest.raises(SweepError, match=r"exclude\[0\]: method.lr is not a grid key; grid keys: method.name"):
        load_sweep(_write(tmp_path, grid={"method.name": ["adabn"]}, exclude=[{"method.lr": 1}]))
    with pytest.raises(SweepError, match=r"exclude\[0\]: method.name='dann' is not among grid.method.name"):
        load_sweep(_write(tmp_path, grid={"method.name": ["adabn"]}, exclude=[{"method.name": "dann"}]))


def test_random_search_draws_the_same_trials_each_time_within_bounds(tmp_path):
    path = _write(tmp_path, grid={"experiment.seed": [0, 1]},
                  search={"algorithm": "random", "num_samples": 5, "seed": 7,
                          "space": {"optim.lr": {"loguniform": [1e-4, 1e-1]},
                                    "optim.name": {"choice": ["sgd", "adam"]},
                                    "data.batch_size": {"randint": [16, 65]}}})
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
        load_sweep(_write(tmp_path, search={"algorithm": "optuna", "metric": "target_acc",
                                            "space": {"optim.lr": {"uniform": [0.01, 0.1]}}}))
    with pytest.raises(SweepError, match="asha.metric 'target_acc' reads target test labels"):
        load_sweep(_write(tmp_path, asha={"metric": "target_acc"}))
    with pytest.raises(SweepError, match="valid top-level keys"):
        load_sweep(_write(tmp_path, grids={"experiment.seed": [0]}))
    with pytest.raises(SweepError, match="share the run folder"):
        expand(load_sweep(_write(tmp_path, grid={"experiment.seed": [1, 1]})))
    # `report: {cols: data.source,data.target}` in YAML flow style splits at the comma into a key data.target
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"config: [{REPO / 'configs/demo.yaml'}]\nreport: {{rows: method.name, cols: data.source,data.target}}\n")
    with pytest.raises(SweepError, match="unknown report 'data.target'; valid: rows, cols"):
        load_sweep(flow)


def test_trial_names_are_folder_safe_and_unique():
    assert trial_name({}) == "default"
    assert trial_name({"optim.lr": 0.0123456, "data.target": "photo@greyscale()"}) == \
        "optim.lr=0.01235,data.target=photo@greyscale()"
    a = trial_name({"method.layers": ["layer1.0.conv1"] * 20, "experiment.seed": 0})
    b = trial_name({"method.layers": ["layer1.0.conv1"] * 20, "experiment.seed": 1})
    assert len(a) <= 120 and a != b and "/" not in a


def test_dotted_overrides_nest_like_the_command_line():
    assert nest_dotted({"train.epochs": 3, "data": {"root": "/x"}, "method.name": "adabn"}) == \
        {"train": {"epochs": 3}, "data": {"root": "/x"}, "method": {"name": "adabn"}}
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


def test_dry_run_into_a_closed_pipe_exits_quietly():
    """`shiftlab sweep --dry-run FILE | head -1`: the reader leaves early; no traceback, exit status 141."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "shiftlab.cli", "sweep", "--dry-run",
                             str(REPO / "sweeps/toalign_office_home_dannp.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # nothing is read
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err


def test_a_trial_that_early_stopped_by_patience_counts_as_finished_and_one_asha_stopped_does_not(tmp_path):
    from shiftlab.sweep.runner import _summary_status, outcome_line

    def trial(name, stopped_early, marker=False):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(
            {"stopped_early": stopped_early, "selection": "last", "target_acc": 0.5, "epochs": 2}))
        if marker:
            (folder / "stopped_by_scheduler").write_text("ASHA stopped this trial\n")
        return {"trial": name, **_summary_status(folder)}

    rows = [trial("ran_out", False), trial("patience", True), trial("asha", True, marker=True)]
    assert [(r["status"], r["early_stopped"]) for r in rows] == \
        [("finished", False), ("finished", True), ("stopped", False)]
    line = outcome_line("demo", {"trials": rows + [{"trial": "bad", "status": "failed"}], "failed": 1,
                                 "dir": "runs/sweeps/demo"})
    assert line == ("sweep demo: 2 finished (1 of them early-stopped by train.early_stopping_patience), "
                    "1 failed, 1 stopped by the scheduler; runs/sweeps/demo/trials.json")
