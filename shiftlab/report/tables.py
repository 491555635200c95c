"""The report's tables: one per selection rule, the selection gap to the oracle, published numbers.

Files written to the output folder:

* ``report.md``: a section per rule (header line naming the rule and what it reads; cells
  ``47.1 ± 0.9 (n=3)``: mean ± sample standard deviation over seeds, in percent, n = seeds; the
  published numbers on a labelled line under our row; the chosen hyperparameters below the table),
  the selection-gap table when ``target_oracle`` is among the rules, notes (sources, setting
  differences, metric fallbacks), the unfinished runs, and the plots;
* ``table.csv``: the same numbers in long form, one line per rule and cell (column ``rule``; ``kind`` is
  ``ours`` or ``published``), with the row and column keys, mean/std in percent, n, seeds, per-seed
  values and epochs, and the chosen hyperparameters as ``chosen.<key>`` columns;
* ``gap.csv``: per rule and cell, the rule's mean, the oracle's mean and their difference in points;
* ``ranks.csv``: per rule and row, the mean over the columns and the rank (:mod:`.ranks`); report.md also
  has the ranks table and, with at least ``ranks.MIN_ROWS`` rows, the rules' rank correlations.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..selection.rules import RULES, Cell, Choice, Layout, choose, rule_unavailable
from ..utils import atomic_write_text
from .ranks import MIN_ROWS, RowRank, correlation_matrix, correlation_unavailable, rank_rows
from .references import Reference, matches, setting_differences
from .runs import RunSet, UnfinishedRun, parse_where

ORACLE = "target_oracle"
ORACLE_LABEL = "ORACLE: reads target labels"
METRIC_NAMES = {"target_acc": "target accuracy", "target_holdout_acc": "accuracy on the held-out target part"}

CellId = tuple[tuple, tuple]


@dataclass(frozen=True)
class Published:
    """A published number placed in a cell, with the setting keys where our runs differ."""

    ref: Reference
    cell_id: CellId
    differences: tuple[str, ...]


@dataclass
class Report:
    root: Path
    layout: Layout
    cells: list[Cell]
    metric: str
    rules: list[str]
    choices: dict[str, dict[CellId, Choice]]
    published: list[Published]
    unmatched: list[Reference]
    unfinished: list[UnfinishedRun]
    run_count: int
    included: tuple[Path, ...] = ()
    where: tuple[str, ...] = ()


def build_report(
    runset: RunSet,
    layout: Layout,
    cells: list[Cell],
    rules: Sequence[str],
    metric: str,
    references: Sequence[Reference] = (),
) -> Report:
    """Every rule's choice in every cell, and the published numbers placed in their cells."""
    choices = {rule: choose(rule, cells, layout, metric) for rule in rules}
    published = [
        Published(ref, cell.id, tuple(setting_differences(ref, cell)))
        for ref in references
        for cell in cells
        if matches(ref, cell)
    ]
    placed = {id(p.ref) for p in published}
    unmatched = [ref for ref in references if id(ref) not in placed]
    return Report(
        runset.root,
        layout,
        cells,
        metric,
        list(rules),
        choices,
        published,
        unmatched,
        runset.unfinished,
        len(runset.finished),
        runset.included,
        runset.where,
    )


# ---------------------------------------------------------------------------------------------- labels


def value_label(value) -> str:
    """A config value as a table shows it: a list as its items joined by `` + `` (``method.layers``:
    ``conv1 + layer1.0.conv1``; a one-item list is its item), anything else as ``str``."""
    if isinstance(value, (list, tuple)):
        return " + ".join(map(value_label, value))
    return str(value)


def row_label(row: tuple) -> str:
    """The row's values; a key the row's runs do not have (``None``: e.g. ``method.toalign`` of a method
    without ToAlign, in a report whose rows are ``method.name,method.toalign``) is left out."""
    return ", ".join(value_label(v) for v in row if v is not None) or "all runs"


def col_label(layout: Layout, col: tuple) -> str:
    """``source→target`` when both are column keys, other column keys as their values."""
    values = dict(zip(layout.cols, col))
    parts = []
    if "data.source" in values and "data.target" in values:
        parts.append(f"{values.pop('data.source')}→{values.pop('data.target')}")
    parts += [value_label(v) for v in values.values()]
    return ", ".join(parts) or "all runs"


def cols_title(layout: Layout) -> str:
    keys = list(layout.cols)
    if "data.source" in keys and "data.target" in keys:
        keys.remove("data.target")
        keys[keys.index("data.source")] = "data.source→data.target"
    return ", ".join(f"`{k}`" for k in keys) or "(none)"


def rule_title(rule: str) -> str:
    return f"`{rule}` ({ORACLE_LABEL})" if RULES[rule].reads_target_labels else f"`{rule}`"


def format_choice(choice: Choice | None) -> str:
    """``47.1 ± 0.9 (n=3)`` in percent; one seed has no spread: ``47.1 (n=1)``."""
    if choice is None:
        return "n/a"
    if choice.std is None:
        return f"{100 * choice.mean:.1f} (n=1)"
    return f"{100 * choice.mean:.1f} ± {100 * choice.std:.1f} (n={choice.n})"


def _rows(report: Report) -> list[tuple]:
    return list(dict.fromkeys(c.row for c in report.cells))


def _cols(report: Report) -> list[tuple]:
    return list(dict.fromkeys(c.col for c in report.cells))


def _trains_on_target(report: Report, row: tuple) -> bool:
    return any(
        getattr(run, "summary", {}).get("reads_target_labels") for c in report.cells if c.row == row for run in c.runs
    )


def our_row_label(report: Report, row: tuple, key_label: Callable[[str], str] | None = None) -> str:
    """The row's values; with ``key_label`` and rows that are not just methods (a plot's panel), each value but
    the method's as ``<key_label(key)>=value`` (``activation_matching, gaussian=True, drift=0.0``)."""
    label = row_label(row)
    if key_label is not None and report.layout.rows != ("method.name",):
        label = ", ".join(
            value_label(v) if k == "method.name" else f"{key_label(k)}={value_label(v)}"
            for k, v in zip(report.layout.rows, row)
            if v is not None
        )
    return f"{label} (trains on target labels)" if _trains_on_target(report, row) else label


# ---------------------------------------------------------------------------------------------- footnotes


@dataclass(frozen=True)
class Footnotes:
    """Numbers for the published sources (``[1]``) and for the distinct setting differences (``†1``)."""

    sources: dict[str, int]
    differences: dict[tuple[str, ...], int]

    def mark(self, pub: Published) -> str:
        dagger = f" †{self.differences[pub.differences]}" if pub.differences else ""
        loss = f" (loss {pub.ref.loss:g})" if pub.ref.loss is not None else ""
        return f"{pub.ref.value:g}{loss}{dagger}"


def footnotes(report: Report) -> Footnotes:
    sources = {p.ref.source: 0 for p in report.published}
    differences = {p.differences: 0 for p in report.published if p.differences}
    return Footnotes({s: i + 1 for i, s in enumerate(sources)}, {d: i + 1 for i, d in enumerate(differences)})


# ---------------------------------------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    def fmt(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [fmt(header), fmt(["---"] * len(header)), *map(fmt, lines)]


def _published_lines(report: Report, row: tuple, notes: Footnotes) -> list[list[str]]:
    """One line per source with a number for ``row``: ``<row>, published [1]`` then the numbers."""
    lines = []
    for source, number in notes.sources.items():
        here = {p.cell_id[1]: notes.mark(p) for p in report.published if p.cell_id[0] == row and p.ref.source == source}
        if here:
            lines.append([f"{row_label(row)}, published [{number}]", *(here.get(col, "") for col in _cols(report))])
    return lines


def _rule_table(report: Report, rule: str, notes: Footnotes) -> list[str]:
    header = [", ".join(report.layout.rows) or "runs", *(col_label(report.layout, c) for c in _cols(report))]
    lines = []
    for row in _rows(report):
        lines.append(
            [
                our_row_label(report, row),
                *(format_choice(report.choices[rule].get((row, col))) for col in _cols(report)),
            ]
        )
        lines += _published_lines(report, row, notes)
    return _md_table(header, lines)


def _hparams_text(choice: Choice, cell: Cell, hparams: Sequence[str]) -> str:
    """The chosen values of the hyperparameters that vary inside ``cell``."""
    varying = [i for i, _ in enumerate(hparams) if len({s[i] for s in cell.settings}) > 1]
    chosen = ", ".join(f"{hparams[i]}={choice.setting[i]}" for i in varying)
    return f"{chosen} (of {len(cell.settings)} settings; score {choice.score:.4g})"


def _chosen_section(report: Report, rule: str) -> list[str]:
    """The chosen values in each cell where the rule chose among several hyperparameter settings; no
    heading at all when it chose in no cell (one setting per cell, or no choice where there were more)."""
    items = [
        f"- {row_label(cell.row)} / {col_label(report.layout, cell.col)}: "
        f"{_hparams_text(report.choices[rule][cell.id], cell, report.layout.hparams)}"
        for cell in report.cells
        if len(cell.settings) > 1 and cell.id in report.choices[rule]
    ]
    if not items:
        return []
    heading = (
        f"Chosen hyperparameters ({RULES[rule].score_key} of the `{RULES[rule].score_entry}` selection, "
        f"mean over seeds{', over the other targets' if RULES[rule].cross_task else ''}):"
    )
    return [heading, "", *items, ""]


def _unavailable_section(report: Report, rule: str) -> list[str]:
    missing = [
        (cell, rule_unavailable(rule, cell, report.cells))
        for cell in report.cells
        if cell.id not in report.choices[rule]
    ]
    return [f"n/a: {row_label(c.row)} / {col_label(report.layout, c.col)}: {why}" for c, why in missing] + (
        [""] if missing else []
    )


def _rule_section(report: Report, rule: str, notes: Footnotes) -> list[str]:
    lines = [
        f"## Selection rule {rule_title(rule)}",
        "",
        f"Selection `{rule}`: {RULES[rule].description}. "
        f"Reported: `{report.metric}` of the `{RULES[rule].report_entry}` selection's epoch.",
        "",
    ]
    lines += _rule_table(report, rule, notes) + [""]
    return lines + _unavailable_section(report, rule) + _chosen_section(report, rule)


def gap_lines(report: Report) -> list[dict[str, Any]]:
    """Per non-oracle rule and cell: the rule's mean, the oracle's, and the gap in points."""
    if ORACLE not in report.rules:
        return []
    oracle = report.choices[ORACLE]
    out = []
    for rule in (r for r in report.rules if r != ORACLE):
        for cell_id, choice in report.choices[rule].items():
            if cell_id in oracle:
                out.append(
                    {
                        "rule": rule,
                        "cell_id": cell_id,
                        "rule_mean_pct": 100 * choice.mean,
                        "oracle_mean_pct": 100 * oracle[cell_id].mean,
                        "gap_points": 100 * (choice.mean - oracle[cell_id].mean),
                    }
                )
    return out


def _gap_section(report: Report) -> list[str]:
    gaps = gap_lines(report)
    if not gaps:
        return []
    by_key = {(g["cell_id"][0], g["rule"], g["cell_id"][1]): g["gap_points"] for g in gaps}
    header = [
        ", ".join(report.layout.rows) or "runs",
        "rule",
        *(col_label(report.layout, c) for c in _cols(report)),
        "mean",
    ]
    lines = []
    for row in _rows(report):
        for rule in (r for r in report.rules if r != ORACLE):
            values = [by_key.get((row, rule, col)) for col in _cols(report)]
            present = [v for v in values if v is not None]
            if present:
                lines.append(
                    [
                        row_label(row),
                        f"`{rule}`",
                        *("" if v is None else f"{v:+.1f}" for v in values),
                        f"{sum(present) / len(present):+.1f}",
                    ]
                )
    intro = (
        f"Rule mean minus `{ORACLE}` mean ({ORACLE_LABEL}), in percentage points of {report.metric}: how far "
        "each rule lands from the best the target labels could pick (0 = as good as the oracle)."
    )
    return ["## Selection gap to the oracle", "", intro, "", *_md_table(header, lines), ""]


def rankings(report: Report) -> dict[str, list[RowRank]]:
    """Rule -> every row's mean over the columns and rank under it (see :mod:`.ranks`)."""
    return {rule: rank_rows(report.choices[rule], _rows(report), _cols(report)) for rule in report.rules}


def rule_header(rule: str) -> str:
    return f"`{rule}` (ORACLE)" if RULES[rule].reads_target_labels else f"`{rule}`"


def _rank_text(rank: RowRank, columns: int) -> str:
    if rank.rank is None:
        return f"n/a ({rank.pairs} of {columns} columns)"
    return f"{rank.mean_pct:.1f} ({rank.rank:g})"


def _ranks_section(report: Report, ranked: dict[str, list[RowRank]]) -> list[str]:
    columns = len(_cols(report))
    header = [", ".join(report.layout.rows) or "runs", *map(rule_header, report.rules)]
    lines = [
        [our_row_label(report, row), *(_rank_text(ranked[rule][i], columns) for rule in report.rules)]
        for i, row in enumerate(_rows(report))
    ]
    oracles = [f"`{r}`" for r in report.rules if RULES[r].reads_target_labels]
    oracle = f" {', '.join(oracles)}: {ORACLE_LABEL}, for reference only." if oracles else ""
    intro = (
        f"Each cell: mean of the rule's {report.metric} over the {columns} columns, in %, and in brackets "
        "the row's rank under that rule (1 = best; tied means share the mean rank). A row without a cell "
        f"in every column under a rule is not ranked under it (n/a).{oracle}"
    )
    return ["## Ranks of the methods under each rule", "", intro, "", *_md_table(header, lines), ""]


def _correlation_section(report: Report, ranked: dict[str, list[RowRank]]) -> list[str]:
    title = ["## Agreement of the rankings across rules", ""]
    why_not = correlation_unavailable(len(_rows(report)), len(report.rules))
    if why_not:
        return title + [why_not, ""]
    matrix = correlation_matrix(ranked)
    lines = [
        [rule_header(a), *("n/a" if matrix[a, b] is None else f"{matrix[a, b]:+.2f}" for b in report.rules)]
        for a in report.rules
    ]
    intro = (
        "Spearman's rank correlation between two rules' rankings of the rows, over the rows ranked under "
        "both: +1 = the same order, -1 = the reverse order; n/a: fewer than "
        f"{MIN_ROWS} common rows, or all tied."
    )
    if ORACLE in report.rules:
        intro += f" A rule with a low value in the `{ORACLE}` column orders the methods unlike the target labels."
    return title + [intro, "", *_md_table(["", *map(rule_header, report.rules)], lines), ""]


def _notes_section(report: Report, notes: Footnotes) -> list[str]:
    lines = [f"- [{n}] {source}: published number, not measured by shiftlab." for source, n in notes.sources.items()]
    lines += [
        f"- †{n} our runs' setting differs from the published one: {'; '.join(diff)}."
        for diff, n in notes.differences.items()
    ]
    lines += [
        f"- published number matching no cell of this table: {ref.value:g} for "
        f"{', '.join(f'{k}={v}' for k, v in ref.where.items())} ({ref.source})."
        for ref in report.unmatched
    ]
    fallbacks = {rule: sum(c.fallbacks for c in report.choices[rule].values()) for rule in report.rules}
    if any(fallbacks.values()):
        counts = ", ".join(f"{rule}: {n}" for rule, n in fallbacks.items() if n)
        lines.append(
            f"- `{report.metric}` was missing in some runs' selections, which report `target_acc` "
            f"instead (reported runs, per rule: {counts})."
        )
    if any(_trains_on_target(report, row) for row in _rows(report)):
        lines.append(
            '- Rows marked "trains on target labels" are methods that train on labelled target images '
            "(an upper bound, not domain adaptation)."
        )
    return ["## Notes", "", *lines, ""] if lines else []


def _unfinished_section(report: Report) -> list[str]:
    if not report.unfinished:
        return []
    return [
        "## Unfinished runs",
        "",
        f"{len(report.unfinished)} run folders have no summary.json and are not in the tables:",
        "",
        *(f"- `{u.path}`: {u.status}" for u in report.unfinished),
        "",
    ]


def _published_rows(report: Report) -> list[str]:
    """One sentence naming the rows with published numbers beside them; none when no reference was given."""
    if not (report.published or report.unmatched):
        return []
    published = {p.cell_id[0] for p in report.published}
    rows = _rows(report)
    named = ", ".join(row_label(r) for r in rows if r in published) or "none"
    return [f"Rows with published numbers beside ours ({len(published)} of {len(rows)}): {named}.", ""]


def _where_text(where: Sequence[str]) -> str:
    return " and ".join(f"`{key}` = {' or '.join(values)}" for key, values in map(parse_where, where))


def _intro(report: Report) -> list[str]:
    layout = report.layout
    hparams = ", ".join(f"`{k}`" for k in layout.hparams) or "none (the runs of a cell differ by seed only)"
    unfinished = f", {len(report.unfinished)} unfinished (listed below)" if report.unfinished else ""
    return [
        f"# shiftlab report: {report.root}",
        "",
        *([f"With the runs of {', '.join(map(str, report.included))} (`--include`).", ""] if report.included else []),
        *([f"Only the runs with {_where_text(report.where)} (`--where`).", ""] if report.where else []),
        f"{report.run_count} finished runs in {len(report.cells)} cells{unfinished}. Cells: "
        f"{METRIC_NAMES[report.metric]} (`{report.metric}`) in %, mean ± sample standard deviation over "
        f"seeds (ddof = 1), n = number of seeds. Rows: {', '.join(f'`{k}`' for k in layout.rows) or '(none)'}; "
        f"columns: {cols_title(layout)}. Each table names the rule that chose the epoch and the "
        f"hyperparameters ({hparams}).",
        "",
        *_published_rows(report),
    ]


def render_markdown(report: Report, plots: Sequence[Path] = ()) -> str:
    notes = footnotes(report)
    lines = _intro(report)
    for rule in report.rules:
        lines += _rule_section(report, rule, notes)
    ranked = rankings(report)
    lines += _gap_section(report) + _ranks_section(report, ranked) + _correlation_section(report, ranked)
    lines += _notes_section(report, notes) + _unfinished_section(report)
    if plots:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CSV


def _coords(report: Report, cell_id: CellId) -> dict[str, Any]:
    return dict(zip(report.layout.keys, cell_id[0] + cell_id[1]))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.4f}"


def _choice_line(report: Report, rule: str, cell_id: CellId, choice: Choice) -> dict[str, Any]:
    return {
        "rule": rule,
        "rule_reads_target_labels": RULES[rule].reads_target_labels,
        "kind": "ours",
        **_coords(report, cell_id),
        "cell": format_choice(choice),
        "mean_pct": _pct(choice.mean),
        "std_pct": _pct(choice.std),
        "n": choice.n,
        "metric": report.metric,
        "seeds": ";".join(map(str, choice.seeds)),
        "values_pct": ";".join(map(_pct, choice.values)),
        "epochs": ";".join(map(str, choice.epochs)),
        "score": f"{choice.score:.6g}",
        "metric_fallbacks": choice.fallbacks,
        **{f"chosen.{k}": v for k, v in choice.hparams.items()},
    }


def _published_line(report: Report, pub: Published) -> dict[str, Any]:
    return {
        "rule": "",
        "kind": "published",
        **_coords(report, pub.cell_id),
        "cell": f"{pub.ref.value:g}",
        "mean_pct": pub.ref.value,
        "published_loss": "" if pub.ref.loss is None else f"{pub.ref.loss:g}",
        "source": pub.ref.source,
        "setting_differences": "; ".join(pub.differences),
    }


def table_lines(report: Report) -> list[dict[str, Any]]:
    lines = [
        _choice_line(report, rule, cell.id, report.choices[rule][cell.id])
        for rule in report.rules
        for cell in report.cells
        if cell.id in report.choices[rule]
    ]
    return lines + [_published_line(report, pub) for pub in report.published]


def _csv_text(lines: list[dict[str, Any]], first: Sequence[str]) -> str:
    columns = list(dict.fromkeys([*first, *(k for line in lines for k in line)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    # a list value (method.layers) as its table text, not Python's tuple repr "('conv1',)"
    writer.writerows(
        {k: value_label(v) if isinstance(v, (list, tuple)) else v for k, v in line.items()} for line in lines
    )
    return buffer.getvalue()


def rank_csv_lines(report: Report) -> list[dict[str, Any]]:
    """Per rule and row: the mean over the columns (percent), the rank, and how many columns it has."""
    columns = len(_cols(report))
    return [
        {
            "rule": rule,
            "rule_reads_target_labels": RULES[rule].reads_target_labels,
            **dict(zip(report.layout.rows, r.row)),
            "mean_pct": "" if r.mean_pct is None else f"{r.mean_pct:.4f}",
            "rank": "" if r.rank is None else f"{r.rank:g}",
            "columns": r.pairs,
            "columns_total": columns,
        }
        for rule, ranked in rankings(report).items()
        for r in ranked
    ]


def write_tables(report: Report, out: Path, plots: Sequence[Path] = ()) -> list[Path]:
    """``report.md``, ``table.csv``, ``ranks.csv`` and (with the oracle among the rules) ``gap.csv`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md", out / "table.csv", out / "ranks.csv"]
    atomic_write_text(written[0], render_markdown(report, plots) + "\n")
    atomic_write_text(written[1], _csv_text(table_lines(report), ["rule", "kind", *report.layout.keys]))
    atomic_write_text(written[2], _csv_text(rank_csv_lines(report), ["rule", *report.layout.rows]))
    gaps = [
        {
            "rule": g["rule"],
            **_coords(report, g["cell_id"]),
            "rule_mean_pct": f"{g['rule_mean_pct']:.4f}",
            "oracle_mean_pct": f"{g['oracle_mean_pct']:.4f}",
            "gap_points": f"{g['gap_points']:.4f}",
        }
        for g in gap_lines(report)
    ]
    if gaps:
        written.append(out / "gap.csv")
        atomic_write_text(written[-1], _csv_text(gaps, ["rule", *report.layout.keys]))
    return written
