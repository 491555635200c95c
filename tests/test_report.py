"""``shiftlab report``: tables checked by hand on run folders written here, published numbers with their
setting differences, plots written and non-empty, unfinished runs listed, user errors, a real run."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from shiftlab.config import build_config, nest_dotted
from shiftlab.errors import ReportError, ShiftlabError
from shiftlab.report.cli import add_arguments, run
from shiftlab.report.runs import load_runs

REPO = Path(__file__).resolve().parents[1]
SOURCE = "art_painting"
# Target accuracy at the last (= every rule's) epoch, per method, learning rate and seed; cartoon's are
# the hand-checked ones, sketch's are 10 points lower. Source validation accuracy picks lr 0.01.
HAND = {
    ("source_only", 0.01): {"val": (0.90, 0.80, 0.85), "acc": (0.40, 0.45, 0.50)},
    ("source_only", 0.1): {"val": (0.70, 0.75, 0.80), "acc": (0.60, 0.62, 0.64)},
    ("adabn", 0.01): {"val": (0.90, 0.90), "acc": (0.50, 0.60)},
}
TARGET_SHIFT = {"cartoon": 0.0, "sketch": -0.1}


def write_run(folder: Path, flat_config: dict, val: float, acc: float, epochs: int = 3) -> Path:
    """A finished run folder as the trainer writes it; every rule picks the last epoch, the best one."""
    rows = [
        {
            "epoch": e,
            "step": 10 * e,
            "train_loss": 1.0 / e,
            "source_val_acc": val - 0.1 * (epochs - e),
            "target_acc": acc - 0.05 * (epochs - e),
            "target_holdout_acc": "",
            "lr": 0.1,
        }
        for e in range(1, epochs + 1)
    ]
    last = {"epoch": epochs, "source_val_acc": val, "target_acc": acc}
    summary = {
        "method": flat_config["method.name"],
        "source": flat_config["data.source"],
        "target": flat_config["data.target"],
        "seed": flat_config["experiment.seed"],
        "selection": "source_val",
        "reads_target_labels": False,
        "selections": {rule: dict(last, rule=rule) for rule in ("source_val", "last", "target_oracle")},
    }
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(nest_dotted(flat_config)))
    (folder / "summary.json").write_text(json.dumps(summary))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def hand_config(method: str, target: str, lr: float, seed: int) -> dict:
    return {
        "experiment.name": f"{method}/{target}/lr{lr}/s{seed}",
        "experiment.seed": seed,
        "data.dataset": "pacs",
        "data.source": SOURCE,
        "data.target": target,
        "data.root": f"/data/{seed}",
        "method.name": method,
        "optim.lr": lr,
        "train.epochs": 3,
    }


@pytest.fixture
def runs_folder(tmp_path) -> Path:
    for (method, lr), numbers in HAND.items():
        for target, shift in TARGET_SHIFT.items():
            for seed, (val, acc) in enumerate(zip(numbers["val"], numbers["acc"])):
                write_run(
                    tmp_path / method / target / f"lr{lr}" / f"s{seed}",
                    hand_config(method, target, lr, seed),
                    val,
                    acc + shift,
                )
    unfinished = tmp_path / "source_only" / "cartoon" / "lr1.0" / "s0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump(nest_dotted(hand_config("source_only", "cartoon", 1.0, 0))))
    (unfinished / "error.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: loss is nan\n")
    return tmp_path


def report(folder: Path, *options: str) -> tuple[int, Path]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(folder), *options])
    return run(args), Path(args.out) if args.out else folder / "report"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def line(rows: list[dict], **where) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


def test_table_values_checked_by_hand(runs_folder, capsys):
    code, out = report(runs_folder, "--no-plots")
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "table.csv", "ranks.csv", "gap.csv"}
    rows = read_csv(out / "table.csv")
    assert {r["rule"] for r in rows} == {"source_val", "last", "cross_domain", "target_oracle"}
    # source_val: lr 0.01 (mean source val 0.85 > 0.75): 40, 45, 50 -> 45.0 ± 5.0 (sample std)
    val = line(rows, rule="source_val", **{"method.name": "source_only", "data.target": "cartoon"})
    assert (val["cell"], val["n"], val["chosen.optim.lr"], val["seeds"]) == ("45.0 ± 5.0 (n=3)", "3", "0.01", "0;1;2")
    assert float(val["mean_pct"]) == pytest.approx(45.0) and float(val["std_pct"]) == pytest.approx(5.0)
    # the oracle picks lr 0.1: 60, 62, 64 -> 62.0 ± 2.0
    oracle = line(rows, rule="target_oracle", **{"method.name": "source_only", "data.target": "cartoon"})
    assert (oracle["cell"], oracle["chosen.optim.lr"], oracle["rule_reads_target_labels"]) == (
        "62.0 ± 2.0 (n=3)",
        "0.1",
        "True",
    )
    # cross_domain for cartoon chooses on sketch (lr 0.1: 52 > 35 mean), then reports cartoon's 62.0 ± 2.0
    cross = line(rows, rule="cross_domain", **{"method.name": "source_only", "data.target": "cartoon"})
    assert (cross["cell"], cross["chosen.optim.lr"]) == ("62.0 ± 2.0 (n=3)", "0.1")
    adabn = line(rows, rule="source_val", **{"method.name": "adabn", "data.target": "cartoon"})
    assert adabn["cell"] == f"55.0 ± {100 * statistics.stdev([0.5, 0.6]):.1f} (n=2)" == "55.0 ± 7.1 (n=2)"
    gap = line(read_csv(out / "gap.csv"), rule="source_val", **{"method.name": "source_only", "data.target": "cartoon"})
    assert float(gap["gap_points"]) == pytest.approx(45.0 - 62.0)

    markdown = (out / "report.md").read_text()
    assert capsys.readouterr().out.startswith(markdown.rstrip("\n"))
    assert "| method.name | art_painting→cartoon | art_painting→sketch |" in markdown
    assert "| source_only | 45.0 ± 5.0 (n=3) | 35.0 ± 5.0 (n=3) |" in markdown
    assert "## Selection rule `target_oracle` (ORACLE: reads target labels)" in markdown
    assert "- source_only / art_painting→cartoon: optim.lr=0.01 (of 2 settings; score 0.85)" in markdown
    assert "| source_only | `source_val` | -17.0 | -17.0 | -17.0 |" in markdown
    assert "`data.root`" not in markdown  # bookkeeping keys are no hyperparameters


def test_holdout_metric_falls_back_to_target_acc_with_a_note(runs_folder):
    _, out = report(runs_folder, "--no-plots", "--rules", "source_val", "--metric", "target_holdout_acc")
    val = line(read_csv(out / "table.csv"), **{"method.name": "source_only", "data.target": "cartoon"})
    assert (val["cell"], val["metric"], val["metric_fallbacks"]) == ("45.0 ± 5.0 (n=3)", "target_holdout_acc", "3")
    assert (
        "`target_holdout_acc` was missing in some runs' selections, which report `target_acc` instead "
        "(reported runs, per rule: source_val: 10)" in (out / "report.md").read_text()
    )


def test_unfinished_runs_are_counted_and_listed(runs_folder):
    runset = load_runs(runs_folder)
    assert len(runset.finished) == 16 and len(runset.unfinished) == 1
    _, out = report(runs_folder, "--no-plots", "--rules", "source_val")
    markdown = (out / "report.md").read_text()
    assert "16 finished runs in 4 cells, 1 unfinished" in markdown
    assert f"- `{runs_folder / 'source_only/cartoon/lr1.0/s0'}`: failed: RuntimeError: loss is nan" in markdown


def test_published_numbers_beside_ours_with_setting_differences(runs_folder, tmp_path):
    ref = tmp_path / "ref.yaml"
    ref.write_text(
        yaml.safe_dump(
            {
                "source": "Some Paper, Table 2",
                "setting": {"train.epochs": 30, "data.dataset": "pacs"},
                "results": [
                    {"row": {"method.name": "source_only"}, "col": {"data.target": "cartoon"}, "value": 54.48},
                    {
                        "row": {"method.name": "adabn"},
                        "col": {"data.target": "sketch"},
                        "value": 50.0,
                        "source": "Other Paper",
                        "setting": {"train.epochs": 3},
                        "loss": 0.0125038,
                    },
                    {"row": {"method.name": "dann"}, "col": {"data.target": "cartoon"}, "value": 60.0},
                ],
            }
        )
    )
    _, out = report(
        runs_folder, "--no-plots", "--rules", "source_val", "--reference", str(ref), "--out", str(tmp_path / "rep")
    )
    markdown = (out / "report.md").read_text()
    assert "| source_only, published [1] | 54.48 †1 |  |" in markdown
    assert "| adabn, published [2] |  | 50 (loss 0.0125038) |" in markdown  # same setting: no mark; its loss
    assert "- [1] Some Paper, Table 2: published number, not measured by shiftlab." in markdown
    assert "- †1 our runs' setting differs from the published one: train.epochs: ours 3 vs published 30." in markdown
    assert "matching no cell of this table: 60 for method.name=dann" in markdown
    published = line(read_csv(out / "table.csv"), kind="published", **{"method.name": "source_only"})
    assert (published["mean_pct"], published["source"], published["setting_differences"]) == (
        "54.48",
        "Some Paper, Table 2",
        "train.epochs: ours 3 vs published 30",
    )
    assert published["published_loss"] == ""
    assert (
        line(read_csv(out / "table.csv"), kind="published", **{"method.name": "adabn"})["published_loss"] == "0.0125038"
    )


def test_a_one_module_list_matches_its_reference_and_lists_read_as_modules_joined_by_plus():
    from shiftlab.report.references import same_value
    from shiftlab.report.tables import _csv_text, row_label

    # a run's config stores --method.layers=conv1 as [conv1]; Table 3's reference file writes conv1
    assert same_value(["conv1"], "conv1") and same_value("conv1", ("conv1",))
    assert not same_value(["conv1", "layer1.0.conv1"], "conv1") and not same_value(["bn1"], "conv1")
    assert same_value(("conv1", "layer1.0.conv1"), ["conv1", "layer1.0.conv1"])
    assert row_label((("conv1", "layer1.0.conv1"), 0.5)) == "conv1 + layer1.0.conv1, 0.5"
    assert row_label((("bn1",), None)) == "bn1"
    assert _csv_text([{"method.layers": ("conv1", "layer1.0.conv1"), "n": 3}], ["method.layers"]) == (
        "method.layers,n\nconv1 + layer1.0.conv1,3\n"
    )


def test_the_ash_reference_file_loads():
    from shiftlab.report.references import load_references

    refs = load_references(REPO / "docs" / "references" / "ash_baseline.yaml")
    assert {r.where["data.target"]: r.value for r in refs} == {"cartoon": 54.48, "sketch": 40.89, "photo": 95.93}
    assert all(r.setting["train.epochs"] == 30 and r.where["data.source"] == SOURCE for r in refs)


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.05, path  # not blank


def test_plots_are_written_and_not_empty(runs_folder):
    _, out = report(runs_folder, "--rules", "source_val,target_oracle", "--x", "optim.lr")
    for name in ("curves.png", "bars.png", "vs_optim.lr.png"):
        assert_png(out / name)
    assert "![vs_optim.lr](vs_optim.lr.png)" in (out / "report.md").read_text()


def test_bars_give_no_legend_entry_to_a_row_without_cells_under_the_rule(runs_folder, monkeypatch):
    import shiftlab.report.plots as plots

    for seed in (0, 1):  # a row with no source-validation choice, as a pure-inference run has none
        folder = write_run(runs_folder / "no_val" / f"s{seed}", hand_config("no_val", "cartoon", 0.01, seed), 0.9, 0.3)
        summary = json.loads((folder / "summary.json").read_text())
        del summary["selections"]["source_val"]
        (folder / "summary.json").write_text(json.dumps(summary))
    figures, save = {}, plots._save

    def keep_figure(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_figure)
    report(runs_folder, "--rules", "source_val,target_oracle")
    legend = [t.get_text() for t in figures["bars.png"].legends[0].get_texts()]
    assert sorted(legend) == ["adabn", "source_only"]


def test_bars_show_each_published_number_on_its_bar_and_tell_many_rows_apart(runs_folder, tmp_path, monkeypatch):
    import shiftlab.report.plots as plots

    ref = tmp_path / "ref.yaml"
    entry = {"row": {"method.name": "adabn"}, "col": {"data.target": "sketch"}, "value": 77.5}
    ref.write_text(yaml.safe_dump({"source": "Some Paper, Table 2", "results": [entry]}))
    figures, save = {}, plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(Path(path).name, fig) and save(fig, path))
    report(runs_folder, "--rules", "source_val", "--reference", str(ref))
    ax = figures["bars.png"].axes[0]
    # the one published number: a scatter over the adabn bar of sketch
    (markers,) = [c for c in ax.collections if c.get_label().startswith("published")]
    ((x, y),) = markers.get_offsets()
    # adabn on sketch: 55 - 10 (source_only on cartoon is 45 too, in the first group, left of 0.5)
    adabn_sketch = [b for b in ax.patches if b.get_height() == pytest.approx(45.0) and b.get_x() > 0.5]
    assert y == 77.5 and len(adabn_sketch) == 1
    assert x == pytest.approx(adabn_sketch[0].get_x() + adabn_sketch[0].get_width() / 2)
    legend = [t.get_text() for t in figures["bars.png"].legends[0].get_texts()]
    assert "published [1]: Some Paper, Table 2 (not measured by shiftlab)" in legend
    colours = plots.palette(12)  # past matplotlib's ten-colour cycle the colours stay distinct
    assert len({tuple(c) for c in colours}) == 12


@pytest.mark.parametrize(
    "options, message",
    [
        (["--rows", "method.nme"], r"unknown row key 'method.nme'.*optim.lr"),
        (["--rules", "snd"], r"'snd' is not supported.*source_val, last, cross_domain, target_oracle"),
        (["--cols", "data.source"], r"'data.target' varies.*--rows or --cols"),
        (["--x", "method.name"], r"already a row or column key"),
        (["--x", "data.root"], r"must be a numeric config key"),
    ],
)
def test_user_errors_name_what_to_do(runs_folder, options, message):
    with pytest.raises(ShiftlabError, match=message):
        report(runs_folder, *options)


def test_no_finished_run_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no finished run folder"):
        report(tmp_path)
    with pytest.raises(ReportError, match="is not a folder"):
        report(tmp_path / "missing")


def test_a_sweep_files_report_defaults_may_be_lists(runs_folder):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.set_defaults(rows=["method.name"], cols=["data.source", "data.target"], rules="source_val")
    assert run(parser.parse_args([str(runs_folder), "--no-plots"])) == 0


@pytest.mark.slow
def test_a_real_run_folder(tmp_path):
    from shiftlab.engine.loop import Trainer

    cfg = build_config(
        [REPO / "configs" / "demo.yaml"],
        [
            "--train.epochs=2",
            "--data.limit=96",
            "--data.batch_size=32",
            "--train.progress=false",
            f"--experiment.output_dir={tmp_path / 'runs'}",
            "--experiment.name=demo/s0",
        ],
    )
    summary = Trainer(cfg).fit()
    code, out = report(tmp_path / "runs")
    assert code == 0
    rows = read_csv(out / "table.csv")
    assert {r["rule"] for r in rows} == {"source_val", "last", "entropy", "im", "snd", "target_oracle"}
    val = line(rows, rule="source_val")
    assert (val["method.name"], val["data.source"], val["data.target"], val["n"]) == (
        "source_only",
        "digits",
        "digits_photo",
        "1",
    )
    assert float(val["mean_pct"]) == pytest.approx(100 * summary["selections"]["source_val"]["target_acc"], abs=1e-3)
    assert_png(out / "curves.png")


def test_a_corrupt_summary_names_its_file(runs_folder):
    broken = runs_folder / "adabn" / "cartoon" / "lr0.01" / "s0" / "summary.json"
    broken.write_text('{"selections": ')
    with pytest.raises(ReportError, match=f"{broken} cannot be read as a run summary"):
        load_runs(runs_folder)


def test_a_key_newer_than_some_runs_is_not_taken_for_a_hyperparameter(tmp_path):
    """Runs made before a config key existed behaved as its default: a run that states the default and one
    that lacks the key are the same setting, while a run with another value is a different one."""
    old = hand_config("source_only", "cartoon", 0.01, 0)
    write_run(tmp_path / "old", old, 0.9, 0.4)
    write_run(tmp_path / "new", {**hand_config("source_only", "cartoon", 0.01, 1), "train.eval_every": 1}, 0.8, 0.5)
    runs = load_runs(tmp_path).finished
    assert {r.config["train.eval_every"] for r in runs} == {1}
    code, out = report(tmp_path, "--no-plots")
    assert code == 0 and line(read_csv(out / "table.csv"), rule="source_val", kind="ours")["n"] == "2"
    write_run(tmp_path / "other", {**hand_config("source_only", "cartoon", 0.01, 2), "train.eval_every": 2}, 0.7, 0.6)
    code, out = report(tmp_path, "--no-plots")
    assert "train.eval_every" in (out / "report.md").read_text()  # now it does vary: a hyperparameter


def test_a_malformed_sweep_file_is_one_line_naming_it(runs_folder, capsys):
    from shiftlab.cli import main

    (runs_folder / "sweep.yaml").write_text("name: demo\nreport: {rows: [method.name\n")
    assert main(["report", str(runs_folder), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"shiftlab report: error: cannot parse sweep file {runs_folder / 'sweep.yaml'}: "
    )


def test_a_selection_with_a_null_target_acc_shows_as_n_a_with_the_reason(runs_folder):
    """Every run's source_val selection has no target accuracy: the table is there, its cells n/a, and
    the reason is named, instead of the source_val table vanishing from the report."""
    for path in runs_folder.rglob("summary.json"):
        summary = json.loads(path.read_text())
        summary["selections"]["source_val"]["target_acc"] = None
        path.write_text(json.dumps(summary))
    code, out = report(runs_folder, "--no-plots")
    assert code == 0
    text = (out / "report.md").read_text()
    section = text.split("## Selection rule `source_val`")[1].split("## ")[0]
    assert "| source_only | n/a | n/a |" in section
    assert (
        "n/a: source_only / art_painting→cartoon: 6 run(s) have no target_acc (null) at the epoch of their "
        "'source_val' selection" in section
    )
    assert {r["rule"] for r in read_csv(out / "table.csv")} == {"last", "cross_domain", "target_oracle"}


def test_a_null_target_acc_in_one_cell_leaves_the_others(runs_folder):
    path = runs_folder / "adabn" / "sketch" / "lr0.01" / "s1" / "summary.json"
    summary = json.loads(path.read_text())
    summary["selections"]["source_val"]["target_acc"] = None
    path.write_text(json.dumps(summary))
    code, out = report(runs_folder, "--no-plots")
    rows = read_csv(out / "table.csv")
    assert line(rows, rule="source_val", **{"method.name": "adabn", "data.target": "cartoon"})["n"] == "2"
    assert not [
        r for r in rows if r["rule"] == "source_val" and r["method.name"] == "adabn" and r["data.target"] == "sketch"
    ]
    assert "n/a: adabn / art_painting→sketch: 1 run(s) have no target_acc (null)" in (out / "report.md").read_text()


def _two_lrs_one_target(tmp_path) -> Path:
    """source_only on cartoon only, lr 0.01 and 0.1, two seeds: a choice to make in one cell."""
    for lr, vals in ((0.01, (0.9, 0.8)), (0.1, (0.7, 0.6))):
        for seed, val in enumerate(vals):
            write_run(tmp_path / f"lr{lr}" / f"s{seed}", hand_config("source_only", "cartoon", lr, seed), val, 0.5)
    return tmp_path


def test_chosen_hyperparameters_list_the_value_chosen_per_cell(tmp_path):
    code, out = report(_two_lrs_one_target(tmp_path), "--no-plots", "--rules", "source_val")
    markdown = (out / "report.md").read_text()
    assert code == 0 and "Chosen hyperparameters (source_val_acc of the `source_val` selection" in markdown
    assert "- source_only / art_painting→cartoon: optim.lr=0.01 (of 2 settings; score 0.85)" in markdown


def test_no_chosen_hyperparameters_heading_where_the_rule_chose_in_no_cell(tmp_path):
    # cross_domain chooses on another target of the same source: art_painting has none, so the one cell
    # with two settings is n/a; photo's two targets are chosen for, with one setting each (nothing to list)
    _two_lrs_one_target(tmp_path)
    for target in ("cartoon", "sketch"):
        for seed in (0, 1):
            write_run(
                tmp_path / "photo" / target / f"s{seed}",
                {**hand_config("source_only", target, 0.01, seed), "data.source": "photo"},
                0.8,
                0.5,
            )
    code, out = report(tmp_path, "--no-plots", "--rules", "source_val,cross_domain")
    markdown = (out / "report.md").read_text()
    cross = markdown[markdown.index("## Selection rule `cross_domain`") :]
    assert code == 0 and "n/a: source_only / art_painting→cartoon" in cross
    assert "Chosen hyperparameters" not in cross
    assert markdown.count("Chosen hyperparameters") == 1  # source_val's


def test_an_old_run_without_method_defaults_is_the_same_setting_as_a_resolved_one(tmp_path):
    """config.yaml files written before method keys were resolved omit the method's defaults."""
    old = {**hand_config("dann", "cartoon", 0.01, 0), "method.lambda_": 0.1}
    resolved = build_config([], ["--method.name=dann", "--method.lambda_=0.1"]).method.params()
    new = {**hand_config("dann", "cartoon", 0.01, 1), **{f"method.{k}": v for k, v in resolved.items()}}
    write_run(tmp_path / "old", old, 0.9, 0.4)
    write_run(tmp_path / "new", new, 0.8, 0.5)
    runs = load_runs(tmp_path).finished
    assert [r.config["method.hidden"] for r in runs] == [(1024, 1024)] * 2
    code, out = report(tmp_path, "--no-plots")
    assert code == 0 and line(read_csv(out / "table.csv"), rule="source_val", kind="ours")["n"] == "2"


def test_a_methods_own_keys_are_no_hyperparameters_in_a_table_of_methods(tmp_path):
    """Every resolved config holds its method's keys: constant within each method's cells, they choose nothing."""
    dann = {f"method.{k}": v for k, v in build_config([], ["--method.name=dann"]).method.params().items()}
    for seed in (0, 1):
        write_run(tmp_path / "dann" / f"s{seed}", {**hand_config("dann", "cartoon", 0.01, seed), **dann}, 0.8, 0.5)
        write_run(tmp_path / "so" / f"s{seed}", hand_config("source_only", "cartoon", 0.01, seed), 0.8, 0.4)
    code, out = report(tmp_path, "--no-plots")
    markdown = (out / "report.md").read_text()
    assert code == 0 and "hyperparameters (none (the runs of a cell differ by seed only))" in markdown
    assert not any(k.startswith("chosen.method.") for k in read_csv(out / "table.csv")[0])


def test_readable_key_turns_config_keys_into_axis_titles():
    from shiftlab.report.plots import readable_key

    assert readable_key("method.mask_ratio") == "mask ratio"
    assert readable_key("optim.lr") == "learning rate"
    assert readable_key("method.lambda_") == "lambda (adversarial weight)"
    assert readable_key("method.layers") == "layers"
    assert readable_key("data.source,data.target") == "source domain, target domain"
    # two keys that would both read "name" keep their sections
    assert readable_key("model.name,method.name,method.drift") == "model name, method name, drift"
    assert readable_key("target_acc") == "target accuracy"


def test_curve_panels_share_their_y_axis_show_the_baseline_and_count_the_seeds(runs_folder, monkeypatch):
    import shiftlab.report.plots as plots

    figures, save = {}, plots._save

    def keep_figure(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_figure)
    report(runs_folder, "--rules", "source_val", "--x", "optim.lr")
    curves = figures["curves.png"]
    panels = [ax for ax in curves.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == 2 and panels[0].get_ylim() == panels[1].get_ylim()  # adabn and source_only rows
    adabn = next(ax for ax in panels if ax.get_title().startswith("adabn"))
    assert any(line.get_label().startswith("baseline: source_only") for line in adabn.get_lines())
    title = curves._suptitle.get_text()
    assert "mean ± std over 2-3 seeds" in title  # adabn has 2 seeds, source_only 3
    versus = figures["vs_optim.lr.png"]
    assert versus.axes[0].get_xlabel() == "learning rate" and versus.axes[0].get_ylabel() == "target accuracy (%)"


def test_a_baseline_evaluated_once_is_a_level_line_in_its_columns_colour(tmp_path, monkeypatch):
    """Pure inference (one evaluation, epoch 0) is the baseline of AdapterNet's sweeps: a lone point at
    epoch 0 would hide under the axis, so it spans the panel at its accuracy."""
    from matplotlib.colors import to_hex

    import shiftlab.report.plots as plots

    for seed in (0, 1):
        write_run(tmp_path / f"ft{seed}", hand_config("finetune", "cartoon", 0.01, seed), 0.9, 0.7, epochs=4)
    inference = write_run(tmp_path / "inf", hand_config("source_only", "cartoon", 0.01, 0), 0.9, 0.4, epochs=1)
    text = (inference / "metrics.csv").read_text().splitlines()
    (inference / "metrics.csv").write_text("\n".join([text[0], "0" + text[1][1:]]) + "\n")  # epoch 0
    figures, save = {}, plots._save
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: (figures.__setitem__(Path(path).name, fig), save(fig, path))[1]
    )
    report(tmp_path, "--rules", "last")
    panel = next(ax for ax in figures["curves.png"].axes if ax.get_title().startswith("finetune"))
    base = [line for line in panel.get_lines() if line.get_label().startswith("baseline: source_only")]
    assert len(base) == 1
    xs, ys = base[0].get_data()
    assert list(ys) == [40.0, 40.0] and list(xs) == [0, 1]  # axhline: the panel's full width, in axes units
    target = next(line for line in panel.get_lines() if line.get_label() == "art_painting→cartoon")
    assert to_hex(base[0].get_color()) == to_hex(target.get_color())
    # no panel of its own (nothing per epoch to show), so the title counts the finetune runs' 2 seeds
    titles = [ax.get_title() for ax in figures["curves.png"].axes if ax.get_visible() and ax.get_title()]
    assert titles == [next(t for t in titles if t.startswith("finetune"))]
    assert "mean ± std over 2 seeds" in figures["curves.png"]._suptitle.get_text()


def test_panel_titles_read_as_words_and_wrap_instead_of_running_into_each_other(tmp_path, monkeypatch):
    import shiftlab.report.plots as plots

    for gaussian in (True, False):
        for drift in (0.0, 1.0):
            config = {**hand_config("activation_matching", "cartoon", 0.01, 0), "method.gaussian": gaussian}
            config["method.drift"] = drift
            write_run(tmp_path / f"g{gaussian}d{drift}", config, 0.9, 0.6)
    figures, save = {}, plots._save
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: (figures.__setitem__(Path(path).name, fig), save(fig, path))[1]
    )
    report(tmp_path, "--rows", "method.name,method.gaussian,method.drift", "--rules", "last")
    titles = {ax.get_title() for ax in figures["curves.png"].axes if ax.get_visible() and ax.get_title()}
    assert "activation_matching, gaussian=True, drift=0.0" in titles  # the method bare, keys without sections
    assert all(len(part) <= 50 for title in titles for part in title.split("\n"))


def test_include_adds_the_runs_of_another_folder_once(tmp_path):
    """`--include DIR`: a second sweep's runs (a baseline) join the table; a folder given twice counts once."""
    write_run(tmp_path / "init" / "a0", hand_config("adabn", "cartoon", 0.01, 0), 0.9, 0.7)
    write_run(tmp_path / "init" / "a1", hand_config("adabn", "cartoon", 0.01, 1), 0.9, 0.6)
    write_run(tmp_path / "inference" / "s0", hand_config("source_only", "cartoon", 0.01, 0), 0.9, 0.4)
    code, out = report(tmp_path / "init", "--include", str(tmp_path / "inference"), "--include", str(tmp_path / "init"))
    assert code == 0 and out == tmp_path / "init" / "report"
    rows = read_csv(out / "table.csv")
    assert {r["method.name"] for r in rows} == {"adabn", "source_only"}
    assert line(rows, **{"method.name": "adabn", "rule": "last"})["n"] == "2"  # not 4: init counted once
    assert float(line(rows, **{"method.name": "source_only", "rule": "last"})["mean_pct"]) == 40.0
    assert f"With the runs of {tmp_path / 'inference'}" in (out / "report.md").read_text()
    with pytest.raises(ShiftlabError, match="nowhere is not a folder"):
        report(tmp_path / "init", "--include", str(tmp_path / "nowhere"))


def test_where_restricts_the_report_to_the_runs_whose_config_matches(tmp_path):
    """`--where KEY=VALUES`: one pair of a sweep still running; values typed as in YAML; errors name the choices."""
    for target in ("cartoon", "sketch"):
        for seed in (0, 1, 2):
            write_run(tmp_path / f"{target}{seed}", hand_config("adabn", target, 0.01, seed), 0.9, 0.5 + 0.1 * seed)
    (tmp_path / "cartoon9").mkdir()  # unfinished runs: one of the chosen target is listed, the other is not
    (tmp_path / "cartoon9" / "config.yaml").write_text(
        yaml.safe_dump(nest_dotted(hand_config("adabn", "cartoon", 0.01, 2)))
    )
    (tmp_path / "sketch9").mkdir()
    (tmp_path / "sketch9" / "config.yaml").write_text(
        yaml.safe_dump(nest_dotted(hand_config("adabn", "sketch", 0.01, 2)))
    )
    code, out = report(tmp_path, "--where", "data.target=cartoon", "--where", "experiment.seed=0,2", "--no-plots")
    rows = read_csv(out / "table.csv")
    assert {r["data.target"] for r in rows} == {"cartoon"}
    last = line(rows, **{"method.name": "adabn", "rule": "last"})
    assert last["n"] == "2" and float(last["mean_pct"]) == pytest.approx(60.0)  # seeds 0 and 2: 50 and 70
    markdown = (out / "report.md").read_text()
    assert "Only the runs with `data.target` = cartoon and `experiment.seed` = 0 or 2 (`--where`)." in markdown
    assert "cartoon9" in markdown and "sketch9" not in markdown
    with pytest.raises(ShiftlabError, match="no run has config key 'data.targt'. Did you mean 'data.target'"):
        report(tmp_path, "--where", "data.targt=cartoon", "--no-plots")
    with pytest.raises(ShiftlabError, match="leaves no finished run; the runs have data.target: cartoon, sketch"):
        report(tmp_path, "--where", "data.target=photo", "--no-plots")
    with pytest.raises(ShiftlabError, match="write KEY=VALUE"):
        report(tmp_path, "--where", "data.target", "--no-plots")


def test_a_single_seed_figure_claims_no_spread(tmp_path, monkeypatch):
    import shiftlab.report.plots as plots

    write_run(tmp_path / "a", hand_config("source_only", "cartoon", 0.01, 0), 0.9, 0.4)
    write_run(tmp_path / "b", hand_config("adabn", "cartoon", 0.01, 0), 0.9, 0.5)
    figures, save = {}, plots._save
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: (figures.__setitem__(Path(path).name, fig), save(fig, path))[1]
    )
    report(tmp_path, "--rules", "source_val")
    for name in ("curves.png", "bars.png"):
        title = figures[name]._suptitle.get_text()
        assert "one seed (no spread)" in title and "mean ± std" not in title, (name, title)


def test_majority_rate_is_the_largest_class_share_of_the_evaluated_split(data_root):
    from shiftlab.report.plots import majority_rate

    config = {"data.dataset": "pacs", "data.root": str(data_root), "data.target": "cartoon"}
    assert majority_rate(config) == 457 / 2344  # README: cartoon's largest class, elephant
    assert majority_rate({**config, "data.root": "/nonexistent"}) is None


def test_the_majority_rate_is_drawn_only_where_a_curve_comes_near_it(runs_folder, monkeypatch):
    import shiftlab.report.plots as plots

    figures, save = {}, plots._save
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: (figures.__setitem__(Path(path).name, fig), save(fig, path))[1]
    )
    monkeypatch.setattr(plots, "majority_rate", lambda config: 0.45 if config["data.target"] == "cartoon" else 0.05)
    report(runs_folder, "--rules", "source_val")
    labels = [line.get_label() for ax in figures["curves.png"].axes for line in ax.get_lines()]
    assert any(label.startswith("majority-class rate") and "cartoon" in label for label in labels)
    assert not any(label.startswith("majority-class rate") and "sketch" in label for label in labels)
