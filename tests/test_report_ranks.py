"""``shiftlab report`` on a benchmark sweep: the rows' ranks under each rule (report.md, ranks.csv), the
rules' rank correlations checked by hand, gap.png and rank_correlation.png, published numbers on many rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from test_report import assert_png, hand_config, line, read_csv, report, write_run

from shiftlab.report.ranks import RowRank, average_ranks, correlation_matrix, spearman

# Target accuracy per method and learning rate on cartoon; sketch is 10 points lower at lr 0.01 and 6
# lower at lr 0.1; seed 0 is 1 point below, seed 1 one above. source_val picks lr 0.01 (validation 0.9 >
# 0.7), the oracle lr 0.1 (higher everywhere), so their means over the 2 pairs and 2 seeds are:
#   source_val (and last): alpha 55, beta 45, gamma 35, delta 25 -> ranks 1, 2, 3, 4
#   target_oracle (and cross_domain, which chooses on the other pair): 59, 52, 62, 67 -> ranks 3, 4, 2, 1
BASE = {"alpha": (0.60, 0.62), "beta": (0.50, 0.55), "gamma": (0.40, 0.65), "delta": (0.30, 0.70)}
SHIFT = {(0.01, "cartoon"): 0.0, (0.01, "sketch"): -0.10, (0.1, "cartoon"): 0.0, (0.1, "sketch"): -0.06}
VAL = {0.01: 0.9, 0.1: 0.7}
# Spearman by hand for ranks (1, 2, 3, 4) vs (3, 4, 2, 1): d = (-2, -2, 1, 3), sum d^2 = 18,
# rho = 1 - 6 * 18 / (4 * (16 - 1)) = -0.8
DISAGREE = 1 - 6 * 18 / (4 * 15)


def write_method(root: Path, method: str, targets=("cartoon", "sketch")) -> None:
    for lr, base in zip((0.01, 0.1), BASE[method]):
        for target in targets:
            for seed, noise in ((0, -0.01), (1, 0.01)):
                write_run(
                    root / method / target / f"lr{lr}" / f"s{seed}",
                    hand_config(method, target, lr, seed),
                    VAL[lr],
                    base + SHIFT[lr, target] + noise,
                )


@pytest.fixture
def sweep(tmp_path) -> Path:
    for method in BASE:
        write_method(tmp_path / "sweep", method)
    return tmp_path / "sweep"


def test_ranks_and_correlations_checked_by_hand(sweep):
    code, out = report(sweep, "--no-plots")
    assert code == 0
    ranks = read_csv(out / "ranks.csv")
    expected = {
        "source_val": {"alpha": (55, 1), "beta": (45, 2), "gamma": (35, 3), "delta": (25, 4)},
        "target_oracle": {"alpha": (59, 3), "beta": (52, 4), "gamma": (62, 2), "delta": (67, 1)},
    }
    expected["last"], expected["cross_domain"] = expected["source_val"], expected["target_oracle"]
    assert {r["rule"] for r in ranks} == set(expected) and len(ranks) == 16
    for rule, methods in expected.items():
        for method, (mean, rank) in methods.items():
            got = line(ranks, rule=rule, **{"method.name": method})
            assert float(got["mean_pct"]) == pytest.approx(mean) and float(got["rank"]) == rank, (rule, method)
            assert (got["columns"], got["columns_total"]) == ("2", "2")
    assert line(ranks, rule="target_oracle", **{"method.name": "alpha"})["rule_reads_target_labels"] == "True"

    markdown = (out / "report.md").read_text()
    section = markdown.split("## Ranks of the methods under each rule")[1].split("\n## ")[0]
    assert "| method.name | `source_val` | `last` | `cross_domain` | `target_oracle` (ORACLE) |" in section
    assert "| gamma | 35.0 (3) | 35.0 (3) | 62.0 (2) | 62.0 (2) |" in section
    assert "ORACLE: reads target labels" in section
    matrix = markdown.split("## Agreement of the rankings across rules")[1].split("\n## ")[0]
    assert "Spearman" in matrix
    assert f"| `source_val` | +1.00 | +1.00 | {DISAGREE:+.2f} | {DISAGREE:+.2f} |" in matrix
    assert f"| `target_oracle` (ORACLE) | {DISAGREE:+.2f} | {DISAGREE:+.2f} | +1.00 | +1.00 |" in matrix
    gap = line(read_csv(out / "gap.csv"), rule="source_val", **{"method.name": "alpha", "data.target": "sketch"})
    assert float(gap["gap_points"]) == pytest.approx(50 - 56)


def test_average_ranks_share_ties_and_spearman_matches_the_formula():
    assert average_ranks([50, 60, 60, 40]) == [3, 1.5, 1.5, 4]
    assert average_ranks([45.0, 0.1 + 0.2 + 44.7]) == [1.5, 1.5]  # the same accuracy by another float sum
    # ranks (4, 2.5, 2.5, 1) and (4, 3, 2, 1): deviations (1.5, 0, 0, -1.5) and (1.5, .5, -.5, -1.5),
    # Pearson = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None  # two rows: no ranking to correlate
    assert spearman([5, 5, 5], [1, 2, 3]) is None  # all tied: no order
    stats = pytest.importorskip("scipy.stats")
    a, b = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_correlations_use_the_rows_ranked_under_both_rules():
    def ranking(means):
        return [RowRank((name,), mean, 2 if mean is not None else 1, None) for name, mean in means.items()]

    first = ranking({"a": 3.0, "b": 2.0, "c": 1.0, "d": None})
    second = ranking({"a": 1.0, "b": 2.0, "c": 3.0, "d": 9.0})
    matrix = correlation_matrix({"x": first, "y": second})
    assert matrix["x", "y"] == pytest.approx(-1.0) and matrix["y", "x"] == pytest.approx(-1.0)
    assert matrix["x", "x"] == pytest.approx(1.0)


def test_a_row_missing_a_pair_is_not_ranked(sweep):
    BASE["epsilon"] = (0.9, 0.9)
    try:
        write_method(sweep, "epsilon", targets=("cartoon",))
    finally:
        del BASE["epsilon"]
    code, out = report(sweep, "--no-plots", "--rules", "source_val,target_oracle")
    eps = line(read_csv(out / "ranks.csv"), rule="source_val", **{"method.name": "epsilon"})
    assert (eps["mean_pct"], eps["rank"], eps["columns"]) == ("", "", "1")
    assert line(read_csv(out / "ranks.csv"), rule="source_val", **{"method.name": "alpha"})["rank"] == "1"
    markdown = (out / "report.md").read_text()
    assert "| epsilon | n/a (1 of 2 columns) | n/a (1 of 2 columns) |" in markdown
    assert f"| `source_val` | +1.00 | {DISAGREE:+.2f} |" in markdown  # over the 4 methods ranked under both


def test_gap_and_rank_correlation_plots(sweep, monkeypatch):
    import shiftlab.report.plots as plots

    figures, save = {}, plots._save
    monkeypatch.setattr(
        plots, "_save", lambda fig, path: (figures.__setitem__(Path(path).name, fig), save(fig, path))[1]
    )
    _, out = report(sweep)
    for name in ("gap.png", "rank_correlation.png"):
        assert_png(out / name)
        assert f"![{name[:-4]}]({name})" in (out / "report.md").read_text()
    gap_ax = figures["gap.png"].axes[0]
    legend = [t.get_text() for t in figures["gap.png"].legends[0].get_texts()]
    assert not any(label.startswith("target_oracle (bar") for label in legend)  # the oracle is no bar
    assert any(label.startswith("source_val") for label in legend) and "below the oracle" in gap_ax.get_ylabel()
    bars = sorted(round(p.get_height(), 6) for p in gap_ax.patches)
    # per method, source_val and last: mean over the pairs of (rule - oracle); cross_domain equals the oracle
    assert bars == sorted([-4.0, -4.0, -7.0, -7.0, -27.0, -27.0, -42.0, -42.0] + [0.0] * 4)
    heat = figures["rank_correlation.png"]
    texts = [t.get_text() for t in heat.axes[0].texts]
    assert texts.count(f"{DISAGREE:+.2f}") == 8 and texts.count("+1.00") == 8
    assert "target_oracle (ORACLE)" in [t.get_text() for t in heat.axes[0].get_xticklabels()]
    assert len(heat.axes) == 2  # the heat map and its colour bar


def test_two_methods_get_no_correlation_but_a_gap_plot(tmp_path):
    for method in ("alpha", "beta"):
        write_method(tmp_path, method)
    code, out = report(tmp_path, "--rules", "source_val,target_oracle")
    assert code == 0 and not (out / "rank_correlation.png").exists()
    assert_png(out / "gap.png")
    markdown = (out / "report.md").read_text()
    assert "Rank correlations need at least 3 rows (methods); this report has 2." in markdown
    assert line(read_csv(out / "ranks.csv"), rule="target_oracle", **{"method.name": "beta"})["rank"] == "2"


def test_one_rule_has_nothing_to_correlate(sweep):
    _, out = report(sweep, "--rules", "source_val")
    assert not (out / "rank_correlation.png").exists() and not (out / "gap.png").exists()
    assert "Rank correlations compare two or more rules; this report has one" in (out / "report.md").read_text()
    assert line(read_csv(out / "ranks.csv"), **{"method.name": "delta"})["rank"] == "4"


def test_no_gap_plot_without_the_oracle(sweep):
    _, out = report(sweep, "--rules", "source_val,last")
    assert not (out / "gap.png").exists() and not (out / "gap.csv").exists()
    assert_png(out / "rank_correlation.png")


def test_published_numbers_on_many_rows_are_named_in_the_intro(sweep, tmp_path):
    ref = tmp_path / "ref.yaml"
    results = [
        {"row": {"method.name": m}, "col": {"data.target": t}, "value": v}
        for m, v in (("alpha", 61.5), ("gamma", 48.0), ("delta", 44.0))
        for t in ("cartoon", "sketch")
    ]
    ref.write_text(yaml.safe_dump({"source": "Paper A, Table 1", "setting": {"train.epochs": 3}, "results": results}))
    _, out = report(sweep, "--no-plots", "--rules", "source_val,target_oracle", "--reference", str(ref))
    markdown = (out / "report.md").read_text()
    assert "Rows with published numbers beside ours (3 of 4): alpha, delta, gamma." in markdown
    val = markdown.split("## Selection rule `source_val`")[1].split("\n## ")[0]
    for method, value in (("alpha", 61.5), ("gamma", 48), ("delta", 44)):
        assert f"| {method}, published [1] | {value:g} | {value:g} |" in val
    assert "beta, published" not in markdown
    published = [r for r in read_csv(out / "table.csv") if r["kind"] == "published"]
    assert len(published) == 6


def test_a_row_key_only_some_methods_have_is_left_out_of_their_labels(sweep):
    """Rows ``method.name,method.toalign`` (the digits benchmark's ToAlign stage): beta with ToAlign is a
    row of its own, labelled with the value; methods without the key are labelled by their name alone."""
    for target in ("cartoon", "sketch"):
        for seed in (0, 1):
            config = {**hand_config("beta", target, 0.01, seed), "method.toalign": True}
            config["experiment.name"] += "/toalign"
            write_run(sweep / "beta_toalign" / target / f"s{seed}", config, 0.9, 0.8 + SHIFT[0.01, target])
    code, out = report(sweep, "--no-plots", "--rows", "method.name,method.toalign")
    assert code == 0
    section = (out / "report.md").read_text().split("## Ranks of the methods under each rule")[1].split("\n## ")[0]
    assert "| method.name, method.toalign |" in section
    assert "| beta, True | 75.0 (1) |" in section  # (80 + 70) / 2 under source_val, ahead of alpha's 55
    assert "| alpha | 55.0 (2) |" in section and "None" not in section
    assert {r["method.toalign"] for r in read_csv(out / "ranks.csv")} == {"", "True"}
