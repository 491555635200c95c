"""The report's PNG plots (matplotlib, drawn on ``Figure`` objects: no pyplot state, no display needed).

* ``curves.png``: accuracy per epoch, mean over seeds with a ±std band: target accuracy solid, source
  validation accuracy dashed; one line per column value, one subplot per row value. Each cell shows the
  runs of the hyperparameters its first rule chose.
* ``vs_<key>.png``: the reported metric under the first rule against a numeric config key, one line per
  column value, one subplot per row value, error bars = std over seeds.
* ``bars.png``: grouped bars under the first rule: groups = column values (domain pairs), bars = row
  values (methods), error bars = std over seeds; a published number of the cell (``--reference``) is a
  black marker on its bar, one marker shape per source, the legend naming the source and its footnote number.
* ``gap.png`` (with the oracle among the rules): the selection gap (rule minus oracle, in points) per row
  and non-oracle rule: bar = mean over the columns, dots = each column's gap; groups = rows, colour = rule.
* ``rank_correlation.png`` (with 3 or more rows and 2 or more rules): heat map of Spearman's correlation between the rules'
  rankings of the rows (:mod:`.ranks`), the value written in each cell.

Panels that compare rows share their y axis; a curve figure draws the baseline row (``method.name`` =
``source_only``, when the report has one) in every other panel, dotted grey, and the target's
majority-class rate (:func:`majority_rate`, dash-dot) in a panel where a target curve comes within
``NEAR_MAJORITY`` points of it; a title says "mean ± std over n seeds" only when n > 1. Config keys on axes
are readable labels (:func:`readable_key`).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from textwrap import shorten, wrap

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..selection.rules import RULES, Cell, Choice, Layout
from ..utils import atomic_write_bytes
from .ranks import correlation_matrix
from .runs import RunRecord
from .tables import (
    ORACLE,
    ORACLE_LABEL,
    Report,
    col_label,
    footnotes,
    gap_lines,
    our_row_label,
    rankings,
    row_label,
)

SOURCE_STYLE = dict(linestyle="--", linewidth=1.2, alpha=0.8)
BASELINE_STYLE = dict(linestyle=":", linewidth=1.5)
BASELINE_METHOD = "source_only"
# keys whose last part alone would say too little; any other key reads as its last part, '_' -> ' '
KEY_LABELS = {
    "optim.lr": "learning rate",
    "experiment.seed": "seed",
    "data.source": "source domain",
    "data.target": "target domain",
    "method.lambda_": "lambda (adversarial weight)",
    "target_acc": "target accuracy",
    "source_val_acc": "source validation accuracy",
    "target_holdout_acc": "accuracy on the held-out target part",
}


PUBLISHED_MARKERS = ("D", "*", "^", "v", "s", "P")  # one shape per published source, in footnote order


def palette(n: int) -> list:
    """``n`` colours that tell ``n`` lines or bars apart: tab10 up to 10 (matplotlib's default cycle),
    tab20 up to 20; beyond that tab20 repeats."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return [colormaps["tab20"](i % 20) for i in range(n)]


NEAR_MAJORITY = 5.0  # points: a target curve this close to the majority-class rate gets the rate drawn
_MAJORITY: dict[tuple, float | None] = {}


def majority_rate(config: dict) -> float | None:
    """The share of the largest class in the run's evaluated target split (what one constant prediction can
    score at best), from the dataset's labels (no image decoded); None where the data cannot be read here."""
    key = tuple(config.get(k) for k in ("data.dataset", "data.root", "data.target", "data.target_eval_split"))
    if key not in _MAJORITY:
        _MAJORITY[key] = None
        try:
            from ..data.registry import get_dataset
            from ..data.splits import targets_of

            dataset, root, target, split = key
            spec = get_dataset(dataset, root)
            split = split or spec.target_eval_split
            if "+" not in split:
                labels = targets_of(spec.dataset(root, target, split))
                if labels:
                    _MAJORITY[key] = max(labels.count(c) for c in set(labels)) / len(labels)
        except Exception:  # noqa: BLE001 - a plot's extra line: data elsewhere or removed means no line
            pass
    return _MAJORITY[key]


def readable_key(key: str) -> str:
    """A config key or metric as an axis title: ``method.mask_ratio`` -> ``mask ratio``, ``optim.lr`` ->
    ``learning rate``, ``method.lambda_`` -> ``lambda (adversarial weight)``; comma-separated keys each, with
    the section kept where two keys would read alike (``model.name,method.name`` -> ``model name, method name``)."""
    if "," in key:
        keys = [k.strip() for k in key.split(",")]
        labels = [readable_key(k) for k in keys]
        return ", ".join(
            label if labels.count(label) == 1 else k.replace(".", " ").replace("_", " ").strip()
            for k, label in zip(keys, labels)
        )
    if key in KEY_LABELS:
        return KEY_LABELS[key]
    return key.rsplit(".", 1)[-1].strip("_").replace("_", " ") or key


def _panel_title(report: Report, row: tuple) -> str:
    """A panel's title: its row with readable keys, wrapped so that neighbouring panels' titles never meet."""
    return "\n".join(wrap(our_row_label(report, row, key_label=readable_key), 50))


def _seed_count(runs: Sequence[RunRecord]) -> int:
    return len({r.config.get("experiment.seed") for r in runs})


def _caption_for(counts: Sequence[int]) -> str:
    counts = sorted(set(counts)) or [0]
    if counts[-1] <= 1:
        return "one seed (no spread)"
    n = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    return f"mean ± std over {n} seeds"


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _rule_caption(rule: str) -> str:
    return f"selection {rule}, {ORACLE_LABEL}" if RULES[rule].reads_target_labels else f"selection {rule}"


def _err(choice: Choice) -> float:
    """The error bar in points: std over seeds; none (NaN) for a single seed, whose spread is unknown."""
    return math.nan if choice.std is None else 100 * choice.std


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def epoch_series(runs: Sequence[RunRecord], column: str) -> tuple[list[float], list[float], list[float]]:
    """Epochs at which some run has ``column``, with the mean and std over the runs that have it there."""
    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for row in run.metrics:
            if row.get("epoch") is not None and row.get(column) is not None:
                by_epoch.setdefault(row["epoch"], []).append(row[column])
    epochs = sorted(by_epoch)
    stats = [_mean_std(by_epoch[e]) for e in epochs]
    return epochs, [100 * m for m, _ in stats], [100 * s for _, s in stats]


def _chosen_runs(report: Report, cell: Cell) -> list[RunRecord]:
    choice = report.choices[report.rules[0]].get(cell.id)
    return cell.settings[choice.setting] if choice else next(iter(cell.settings.values()))


def _grid(n: int, width: float = 5.5, height: float = 3.6) -> tuple[Figure, list]:
    """``n`` subplots sharing the x and y axes (they compare rows), at most three per line."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:  # a subplot above a hidden one is the lowest of its column: it keeps its tick labels
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.yaxis.set_tick_params(labelleft=True)
    return fig, list(axes[:n])


def _legend_below(fig: Figure, axes: list) -> None:
    """One legend for the figure, below the plots, so it covers neither data nor the title."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            fontsize="small",
            ncols=min(len(labels), 4),
        )


def plot_curves(report: Report, path: Path) -> Path:
    """``curves.png``: target (solid) and source-validation (dashed) accuracy per epoch, mean ± std over seeds.

    A baseline evaluated once (pure inference) gets no panel of its own: it is a level line in every other."""
    rows = list(dict.fromkeys(c.row for c in report.cells))
    colors = _col_colors(report)
    baseline = _baseline_cells(report)
    if len(rows) > 1 and baseline and all(_evaluated_once(report, cell) for cell in baseline.values()):
        rows = [row for row in rows if row != next(iter(baseline.values())).row]  # a level line in every panel
    fig, axes = _grid(len(rows))
    counts = []
    for ax, row in zip(axes, rows):
        for cell in (c for c in report.cells if c.row == row):
            runs = _chosen_runs(report, cell)
            counts.append(_seed_count(runs))
            color = colors[cell.col]
            _draw_series(ax, runs, "target_acc", col_label(report.layout, cell.col), color, {})
            _draw_series(ax, runs, "source_val_acc", None, color, SOURCE_STYLE)
            rate = majority_rate(runs[0].config) if runs else None
            _, mean, _ = epoch_series(runs, "target_acc")
            if rate is not None and any(abs(m - 100 * rate) <= NEAR_MAJORITY for m in mean):
                ax.axhline(
                    100 * rate,
                    color=color,
                    linestyle="-.",
                    linewidth=1.0,
                    label=f"majority-class rate, {col_label(report.layout, cell.col)}",
                )
            base = baseline.get(cell.col)
            if base is not None and base.row != row:
                _draw_baseline(ax, report, base, color)
        ax.set_title(_panel_title(report, row), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    if axes:
        axes[0].plot([], [], color="grey", label="target accuracy (solid)")
        axes[0].plot([], [], color="grey", label="source val accuracy (dashed)", **SOURCE_STYLE)
    fig.suptitle(
        f"Accuracy per epoch, {_caption_for(counts)}\n(hyperparameters chosen by {_rule_caption(report.rules[0])})",
        fontsize="medium",
    )
    _legend_below(fig, axes)
    return _save(fig, path)


def _evaluated_once(report: Report, cell: Cell) -> bool:
    """Whether the cell's runs were evaluated at one epoch at most (pure inference: nothing to plot per epoch)."""
    epochs, _, _ = epoch_series(_chosen_runs(report, cell), "target_acc")
    return len(epochs) <= 1


def _draw_baseline(ax, report: Report, base: Cell, color) -> None:
    """The baseline's target accuracy per epoch; a baseline evaluated once (pure inference: one point, epoch 0)
    is a level line across the panel, since a lone point at epoch 0 hides under the axis."""
    epochs, mean, _ = epoch_series(_chosen_runs(report, base), "target_acc")
    if not epochs:
        return
    label = f"baseline: {row_label(base.row)} (target, mean; dotted, its column's colour)"
    style = {**BASELINE_STYLE, "color": color}  # one baseline per column: the colour says whose
    if len(epochs) == 1:
        ax.axhline(mean[0], label=label, **style)
    else:
        ax.plot(epochs, mean, label=label, **style)


def _baseline_cells(report: Report) -> dict[tuple, Cell]:
    """Column -> the cell of the baseline row (``method.name`` = source_only), where the report has one."""
    if "method.name" not in report.layout.rows:
        return {}
    at = report.layout.rows.index("method.name")
    return {c.col: c for c in report.cells if c.row[at] == BASELINE_METHOD}


def _draw_series(ax, runs: Sequence[RunRecord], column: str, label: str | None, color, style: dict) -> None:
    epochs, mean, std = epoch_series(runs, column)
    if not epochs:
        return
    ax.plot(epochs, mean, color=color, label=label, marker="o" if len(epochs) < 3 else None, markersize=3, **style)
    ax.fill_between(
        epochs,
        [m - s for m, s in zip(mean, std)],
        [m + s for m, s in zip(mean, std)],
        color=color,
        alpha=0.15,
        linewidth=0,
    )


def _col_colors(report: Report) -> dict[tuple, str]:
    cols = list(dict.fromkeys(c.col for c in report.cells))
    return dict(zip(cols, palette(len(cols))))


def plot_versus(report: Report, key: str, path: Path) -> Path:
    """``vs_<key>.png``: the reported metric against ``key`` (the report's last column key), one line per
    remaining column value, one subplot per row value, error bars = std over seeds."""
    base_cols = report.layout.cols[:-1]
    rows = list(dict.fromkeys(c.row for c in report.cells))
    fig, axes = _grid(len(rows))
    rule = report.rules[0]
    line_keys = list(dict.fromkeys(c.col[:-1] for c in report.cells))
    colors = dict(zip(line_keys, palette(len(line_keys))))
    counts = [c.n for c in report.choices[rule].values()]
    for ax, row in zip(axes, rows):
        lines: dict[tuple, list[tuple[float, Choice]]] = {}
        for cell in (c for c in report.cells if c.row == row and c.id in report.choices[rule]):
            lines.setdefault(cell.col[:-1], []).append((float(cell.col[-1]), report.choices[rule][cell.id]))
        for col, points in lines.items():
            points.sort(key=lambda p: p[0])
            color = colors[col]
            label = col_label(Layout(report.layout.rows, base_cols, ()), col)
            ax.errorbar(
                [x for x, _ in points],
                [100 * c.mean for _, c in points],
                yerr=[_err(c) for _, c in points],
                color=color,
                marker="o",
                capsize=3,
                label=label,
            )
        _numeric_x_axis(ax, [float(c.col[-1]) for c in report.cells])
        ax.set_title(_panel_title(report, row), fontsize="medium")
        ax.set_xlabel(readable_key(key))
        ax.set_ylabel(f"{readable_key(report.metric)} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{readable_key(report.metric)} against {readable_key(key)}, {_caption_for(counts)}\n({_rule_caption(rule)})",
        fontsize="medium",
    )
    _legend_below(fig, axes)
    return _save(fig, path)


def _numeric_x_axis(ax, xs: Sequence[float]) -> None:
    """A log axis for values spanning a factor of ten or more (learning rates); ticks at the swept values."""
    values = sorted(set(xs))
    if values[0] > 0 and values[-1] / values[0] >= 10:
        ax.set_xscale("log")
    if len(values) <= 8:
        ax.set_xticks(values, [f"{x:g}" for x in values])
        ax.minorticks_off()


def plot_bars(report: Report, path: Path) -> Path:
    """``bars.png``: groups = column values, bars = row values, error bars = std over seeds, first rule."""
    rule = report.rules[0]
    rows = list(dict.fromkeys(c.row for c in report.cells))
    cols = list(dict.fromkeys(c.col for c in report.cells))
    width = 0.8 / max(len(rows), 2)
    fig = Figure(figsize=(max(5.0, 1.2 + len(cols) * (0.5 * len(rows) + 0.6)), 4.4), layout="constrained")
    ax = fig.subplots()
    colors = palette(len(rows))
    for i, row in enumerate(rows):
        choices = [report.choices[rule].get((row, col)) for col in cols]
        present = [c for c in choices if c is not None]
        if not present:  # a row with no cell under this rule (e.g. no validation split) gets no legend entry
            continue
        xs = [_bar_x(j, i, len(rows), width) for j, c in enumerate(choices) if c is not None]
        ax.bar(
            xs,
            [100 * c.mean for c in present],
            width,
            yerr=[_err(c) for c in present],
            capsize=3,
            label=row_label(row),
            color=colors[i],
        )
    _draw_published(ax, report, rows, cols, width)
    ax.set_xticks(
        range(len(cols)),
        [col_label(report.layout, c) for c in cols],
        rotation=20 if len(cols) > 3 else 0,
        ha="right" if len(cols) > 3 else "center",
    )
    ax.set_xlim(-0.6, len(cols) - 0.4)  # a lone group keeps its bars' width instead of filling the axes
    ax.set_ylabel(f"{readable_key(report.metric)} (%)")
    ax.set_xlabel(readable_key(",".join(report.layout.cols)) if report.layout.cols else "all runs")
    counts = [c.n for c in report.choices[rule].values()]
    fig.suptitle(
        f"{readable_key(report.metric)} by {readable_key(','.join(report.layout.rows)) or 'run'}, "
        f"{_caption_for(counts)}\n({_rule_caption(rule)})",
        fontsize="medium",
    )
    ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, [ax])
    return _save(fig, path)


def _bar_x(group: int, bar: int, n_bars: int, width: float) -> float:
    """The centre of bar ``bar`` of ``n_bars`` in group ``group`` of :func:`plot_bars`."""
    return group + (bar - (n_bars - 1) / 2) * width


def _draw_published(ax, report: Report, rows: list[tuple], cols: list[tuple], width: float) -> None:
    """Each published number of a cell as a black marker over that cell's bar."""
    notes = footnotes(report)
    points: dict[str, list[tuple[float, float]]] = {}
    for pub in report.published:
        row, col = pub.cell_id
        if row in rows and col in cols:
            x = _bar_x(cols.index(col), rows.index(row), len(rows), width)
            points.setdefault(pub.ref.source, []).append((x, pub.ref.value))
    for source, xy in points.items():
        number = notes.sources[source]
        ax.scatter(
            [x for x, _ in xy],
            [y for _, y in xy],
            marker=PUBLISHED_MARKERS[(number - 1) % len(PUBLISHED_MARKERS)],
            s=30,
            color="black",
            zorder=4,
            label=f"published [{number}]: {shorten(source, 70)} (not measured by shiftlab)",
        )


def _group_axes(n_groups: int, n_bars: int) -> tuple[Figure, object]:
    """One axes wide enough for ``n_groups`` groups of ``n_bars`` bars."""
    width = 1.5 + n_groups * (0.35 * n_bars + 0.6)
    # past 13 inches the bars narrow instead: a page-wide figure stays readable when scaled down
    fig = Figure(figsize=(min(max(5.5, width), 13.0), 5.0), layout="constrained")
    return fig, fig.subplots()


def _group_ticks(ax, labels: Sequence[str]) -> None:
    tilt = len(labels) > 3 or max(map(len, labels), default=0) > 14
    ax.set_xticks(range(len(labels)), labels, rotation=25 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def plot_gaps(report: Report, path: Path) -> Path:
    """``gap.png``: per row (group) and non-oracle rule (colour), the rule's gap to the oracle in points:
    bar = mean over the columns where both have a cell, dots = each column's gap."""
    gaps: dict[tuple, dict[str, list[float]]] = {}
    for g in gap_lines(report):
        gaps.setdefault(g["cell_id"][0], {}).setdefault(g["rule"], []).append(g["gap_points"])
    rows = [row for row in dict.fromkeys(c.row for c in report.cells) if row in gaps]
    rules = [r for r in report.rules if r != ORACLE]
    width = 0.8 / max(len(rules), 1)
    fig, ax = _group_axes(len(rows), len(rules))
    colors = palette(len(rules))
    for k, rule in enumerate(rules):
        offset = (k - (len(rules) - 1) / 2) * width
        present = [(i, gaps[row][rule]) for i, row in enumerate(rows) if rule in gaps[row]]
        ax.bar(
            [i + offset for i, _ in present],
            [statistics.fmean(v) for _, v in present],
            width * 0.9,
            color=colors[k],
            label=f"{rule} (bar: mean over the pairs)",
        )
        xs = [i + offset for i, values in present for _ in values]
        ax.scatter(
            xs,
            [v for _, values in present for v in values],
            s=14,
            color="black",
            zorder=3,
            label="one pair" if k == 0 else None,
        )
    ax.axhline(0, color="0.2", linewidth=1.0, label=f"{ORACLE} (0: as good as the oracle)")
    _group_ticks(ax, [our_row_label(report, row) for row in rows])
    ax.use_sticky_edges = False  # a margin above 0, so that dots on the oracle's line are not cut in half
    ax.margins(y=0.05)
    ax.set_ylabel(f"rule − oracle, points of {readable_key(report.metric)}\n(below 0: points below the oracle)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Selection gap to the oracle ({ORACLE_LABEL}), per method and rule", fontsize="medium")
    _legend_below(fig, [ax])
    return _save(fig, path)


def plot_rank_correlation(report: Report, path: Path) -> Path:
    """``rank_correlation.png``: Spearman's correlation between every two rules' rankings of the rows."""
    import numpy as np
    from matplotlib import colormaps

    matrix = correlation_matrix(rankings(report))
    rules = report.rules
    values = np.array([[np.nan if matrix[a, b] is None else matrix[a, b] for b in rules] for a in rules])
    size = 1.6 + 0.9 * len(rules)
    fig = Figure(figsize=(size + 1.6, size), layout="constrained")
    ax = fig.subplots()
    # a diverging map centred on 0 (no agreement); n/a cells (NaN) light grey
    image = ax.imshow(values, cmap=colormaps["RdBu"].with_extremes(bad="0.85"), vmin=-1, vmax=1)
    for (i, j), value in np.ndenumerate(values):
        dark = not np.isnan(value) and abs(value) > 0.6
        ax.text(
            j,
            i,
            "n/a" if np.isnan(value) else f"{value:+.2f}",
            ha="center",
            va="center",
            color="white" if dark else "black",
            fontsize="small",
        )
    labels = [f"{r} (ORACLE)" if RULES[r].reads_target_labels else r for r in rules]
    ax.set_xticks(range(len(rules)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(rules)), labels)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman's rank correlation")
    fig.suptitle(
        f"Agreement of the rules' rankings of {len(set(c.row for c in report.cells))} "
        f"{'methods' if report.layout.rows == ('method.name',) else 'rows'}\n(+1: same order, −1: reversed)",
        fontsize="medium",
    )
    return _save(fig, path)
