"""`shiftlab sweep` on a local Ray with small resources: a failing trial is isolated, a sweep killed midway
loses nothing when re-run, and an Optuna search runs through the same trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from processes import kill_when

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHIFTLAB = [sys.executable, "-m", "shiftlab.cli"]

pytestmark = pytest.mark.slow


def _sweep_file(tmp_path, name, **spec) -> Path:
    spec = {"name": name, "output_dir": str(tmp_path / "sweeps"), "config": [str(REPO / "configs/demo.yaml")], **spec}
    spec.setdefault("set", {})
    spec["set"] = {"train.progress": False, "train.validators": [], "data.limit": 400, **spec["set"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    # the toy plugin sits in tests/; Ray workers import it through PYTHONPATH
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
    }


def _sweep(path, *extra, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHIFTLAB, "sweep", str(path), "--num-cpus", "2", "--no-progress", *extra],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path):
    path = _sweep_file(
        tmp_path,
        "failing",
        set={"train.epochs": 2, "experiment.plugins": ["toy_methods"]},
        grid={"method.name": ["source_only", "toy_failing"], "experiment.seed": [0]},
    )
    done = _sweep(path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 finished, 1 failed" in done.stdout
    assert "trial method.name=toy_failing,experiment.seed=0 failed: RuntimeError: toy failure" in done.stderr
    root = tmp_path / "sweeps/failing"
    rows = {r["trial"]: r for r in json.loads((root / "trials.json").read_text())}
    ok, bad = rows["method.name=source_only,experiment.seed=0"], rows["method.name=toy_failing,experiment.seed=0"]
    assert ok["status"] == "finished" and 0 <= ok["target_acc"] <= 1
    assert bad["status"] == "failed" and "toy failure at progress" in bad["error"]
    assert "Traceback" in (root / "runs" / bad["trial"] / "error.txt").read_text()
    summary = json.loads((root / "runs" / ok["trial"] / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["config"]["experiment"]["name"] == ok["trial"]
    assert yaml.safe_load((root / "sweep.yaml").read_text())["grid"]["method.name"] == ["source_only", "toy_failing"]


def test_a_sweep_killed_midway_loses_nothing_when_run_again(tmp_path):
    path = _sweep_file(
        tmp_path, "killed", set={"train.epochs": 4}, max_concurrent=1, grid={"experiment.seed": [0, 1, 2]}
    )
    runs = tmp_path / "sweeps/killed/runs"
    first, second = runs / "experiment.seed=0", runs / "experiment.seed=1"
    proc = subprocess.Popen(
        [*SHIFTLAB, "sweep", str(path), "--num-cpus", "2", "--no-progress"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # kill the driver and the Ray processes it started once the first trial has finished and the second
    # has a checkpoint but no summary
    kill_when(proc, lambda: (first / "summary.json").is_file() and (second / "metrics.csv").is_file(), 240)
    assert not (second / "summary.json").is_file()
    finished = (first / "summary.json").stat().st_mtime_ns, (first / "metrics.csv").read_text()
    partial = (second / "metrics.csv").read_text().splitlines()

    done = _sweep(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 finished, 0 failed" in done.stdout
    assert ((first / "summary.json").stat().st_mtime_ns, (first / "metrics.csv").read_text()) == finished
    resumed = json.loads((second / "summary.json").read_text())
    assert resumed["epochs"] == 4 and len(resumed["resumed_at_epochs"]) == 1
    epoch = resumed["resumed_at_epochs"][0]
    assert 1 <= epoch < 4
    # the epochs done before the kill are kept as they were, not trained again (metrics.csv is written just
    # after the checkpoint, so a kill in between leaves it one epoch behind; the checkpoint's history rules)
    assert epoch in (len(partial) - 1, len(partial))
    assert (second / "metrics.csv").read_text().splitlines()[: len(partial)] == partial
    third = json.loads((runs / "experiment.seed=2/summary.json").read_text())
    assert third["epochs"] == 4 and third["resumed_at_epochs"] == []
    # a third run trains nothing
    again = _sweep(path)
    assert again.returncode == 0 and "3 finished" in again.stdout
    assert (second / "summary.json").read_text() == json.dumps(resumed, indent=2) + "\n"


def test_optuna_search_runs_trials_named_by_their_values(tmp_path):
    path = _sweep_file(
        tmp_path,
        "optuna",
        set={"train.epochs": 1},
        search={
            "algorithm": "optuna",
            "num_samples": 2,
            "seed": 0,
            "metric": "source_val_acc",
            "space": {"optim.lr": {"loguniform": [0.001, 0.1]}},
        },
    )
    done = _sweep(path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "sweeps/optuna/trials.json").read_text())
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    for r in rows:
        cfg = json.loads((Path(r["run_dir"]) / "summary.json").read_text())["config"]
        assert r["trial"].startswith("optim.lr=") and 0.001 <= cfg["optim"]["lr"] <= 0.1
        assert f"{cfg['optim']['lr']:.4g}" in r["trial"]


def test_asha_stops_poor_trials_and_their_summaries_are_written(tmp_path):
    # the poor learning rates come last, so that the good ones have set each rung's bar when they reach it
    path = _sweep_file(
        tmp_path,
        "asha",
        set={"train.epochs": 3},
        grid={"optim.lr": [0.05, 0.02, 0.00001, 0.000001]},
        asha={"metric": "source_val_acc", "grace_period": 1, "reduction_factor": 2},
    )
    done = _sweep(path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["trial"]: r for r in json.loads((tmp_path / "sweeps/asha/trials.json").read_text())}
    stopped = [r for r in rows.values() if r["status"] == "stopped"]
    # ASHA is asynchronous: which of the good trials it stops depends on who reaches a rung first, but the
    # first to reach the last rung runs to the end, and the worst rate, started last, is below every bar
    assert rows["optim.lr=1e-06"]["status"] == "stopped" and len(stopped) < len(rows)
    for r in rows.values():  # every trial, stopped or not, has its summary at the epoch it reached
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["epochs"] == r["epochs"]
        assert summary["stopped_early"] == (r["status"] == "stopped")
        assert (r["epochs"] < 3) == (r["status"] == "stopped")
    again = _sweep(path)  # nothing is trained further
    assert again.returncode == 0 and f"{4 - len(stopped)} finished, 0 failed, {len(stopped)} stopped" in again.stdout
    assert {r["trial"]: r for r in json.loads((tmp_path / "sweeps/asha/trials.json").read_text())} == rows
