"""``shiftlab report <folder>``: the options, and the run from run folders to files.

Writes ``report.md``, ``table.csv``, ``ranks.csv``, ``gap.csv`` (when the oracle is among the rules) and
the plots ``curves.png``, ``bars.png``, ``vs_<key>.png`` (with ``--x``), ``gap.png`` (with the oracle) and
``rank_correlation.png`` (with 3 or more rows and 2 or more rules) to ``--out`` (default ``<folder>/report``); prints the
Markdown and the paths written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..selection.rules import METRICS, RULE_ORDER, Layout, group_cells, plan_layout, supported_rules
from .ranks import correlation_unavailable
from .references import load_references
from .runs import RunSet, load_runs, restrict_runs
from .tables import Report, build_report, gap_lines, render_markdown, write_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder",
        help="a sweep folder or any folder holding run folders (searched recursively; a "
        "run folder holds config.yaml and summary.json)",
    )
    parser.add_argument(
        "--rows",
        default="method.name",
        help="comma-separated config keys whose values make the rows (default: method.name)",
    )
    parser.add_argument(
        "--cols",
        default="data.source,data.target",
        help="comma-separated config keys whose values make the columns (default: "
        "data.source,data.target, shown as source→target)",
    )
    parser.add_argument(
        "--rules",
        default=None,
        help=f"comma-separated selection rules, one table each, from: {', '.join(RULE_ORDER)} "
        "(target_oracle reads target labels and is always labelled ORACLE). Default: every "
        "rule these runs support, source_val first and target_oracle last",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="target_acc",
        help="reported metric: target_acc (default) or target_holdout_acc (the held-out target "
        "part; runs without it report target_acc, as a note says)",
    )
    parser.add_argument(
        "--hparams",
        default=None,
        help="comma-separated config keys each rule chooses inside a cell (default: every key that "
        "varies among the runs, except rows, columns, experiment.seed and bookkeeping keys "
        "such as experiment.name or data.root); 'none': runs of a cell differ by seed only",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="FILE",
        help="YAML file of published numbers to show beside ours, with the setting they were "
        "measured in (repeatable; e.g. docs/references/ash_baseline.yaml)",
    )
    parser.add_argument(
        "--x",
        default=None,
        metavar="KEY",
        help="numeric config key (e.g. optim.lr): also plot the metric against it, vs_<KEY>.png",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DIR",
        help="another folder whose runs join the report (repeatable), e.g. the pure-inference baseline "
        "of a second sweep: shiftlab report runs/sweeps/adapternet_digits_init --include "
        "runs/sweeps/adapternet_digits_disjoint/inference",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="only the runs whose config key has one of these comma-separated values (repeatable, all must "
        "hold), e.g. --where data.target=mnist_m for one pair of a sweep still running, or "
        "--where experiment.seed=0,1",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: <folder>/report)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only, no PNG")


def split_keys(value: Any) -> list[str]:
    """``"a,b"``, ``["a", "b,c"]`` or None (command line or a sweep file's ``report:`` section) -> keys."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    return [key.strip() for part in parts for key in str(part).split(",") if key.strip()]


def _versus_report(report: Report, runset: RunSet, key: str) -> Report:
    """The report with ``key`` as an extra (last) column key, under the first rule only."""
    layout = report.layout
    if key in layout.keys:
        raise ReportError(f"--x {key} is already a row or column key; plot against a key that is neither")
    values = {run.config.get(key) for run in runset.finished}
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
        raise ReportError(
            f"--x {key} must be a numeric config key; its values here: {', '.join(sorted(map(str, values)))}"
        )
    versus = Layout(layout.rows, layout.cols + (key,), tuple(h for h in layout.hparams if h != key))
    return build_report(runset, versus, group_cells(runset.finished, versus), report.rules[:1], report.metric)


def _write_plots(report: Report, runset: RunSet, x: str | None, out: Path) -> list[Path]:
    from ..extras import require

    require("matplotlib", "shiftlab report's plots need matplotlib", "report", hint=" (or --no-plots: tables only)")
    from .plots import plot_bars, plot_curves, plot_gaps, plot_rank_correlation, plot_versus  # only when plotting

    versus = _versus_report(report, runset, x) if x else None  # check --x before drawing anything
    written = [plot_curves(report, out / "curves.png"), plot_bars(report, out / "bars.png")]
    if versus is not None:
        written.append(plot_versus(versus, x, out / f"vs_{x}.png"))
    if gap_lines(report):
        written.append(plot_gaps(report, out / "gap.png"))
    if not correlation_unavailable(len({cell.row for cell in report.cells}), len(report.rules)):
        written.append(plot_rank_correlation(report, out / "rank_correlation.png"))
    return written


def make_report(args) -> tuple[Report, RunSet]:
    """Load the runs, lay out the table and apply every rule, as ``args`` say."""
    runset = restrict_runs(load_runs(args.folder, args.include), args.where)
    hparams = [] if args.hparams == "none" else (split_keys(args.hparams) or None)
    layout = plan_layout(runset.finished, split_keys(args.rows), split_keys(args.cols), hparams)
    cells = group_cells(runset.finished, layout)
    rules = split_keys(args.rules) or supported_rules(cells)
    if not rules:
        raise ReportError(
            f"the runs under {args.folder} support no selection rule: their summary.json files have "
            "no 'selections' (written by an older shiftlab?)"
        )
    references = [ref for path in split_keys(args.reference) for ref in load_references(path)]
    return build_report(runset, layout, cells, rules, args.metric, references), runset


def run(args) -> int:
    """Write the report's files; print the Markdown and the paths. User errors raise ShiftlabError."""
    report, runset = make_report(args)
    out = Path(args.out) if args.out else Path(args.folder) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else _write_plots(report, runset, args.x, out)
    written = write_tables(report, out, plots)
    print(render_markdown(report, plots))
    print("wrote:\n" + "\n".join(f"  {path}" for path in written + plots))
    return 0
