"""The rank of the table's rows (methods) under each selection rule, and how far the rules agree on it.

Pure numbers, no I/O (``tables`` renders them, ``plots`` draws them):

* a row's **mean** under a rule is the mean, over the table's columns (domain pairs), of the rule's cell
  means (each a mean over seeds), in percent. A row is ranked under a rule only when the rule has a cell
  for it in every column, so every ranked row is averaged over the same pairs;
* its **rank**: 1 = the highest mean; tied means share the mean of the ranks they span (1, 2.5, 2.5, 4);
* the **agreement** of two rules: Spearman's rank correlation of their means over the rows ranked under
  both (re-ranked among those rows), i.e. Pearson's correlation of the tie-averaged ranks: 1 = the same
  order, -1 = the reverse. It is None (n/a) for fewer than :data:`MIN_ROWS` common rows, or where one
  ranking is all ties (no order to compare).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..selection.rules import Choice

#: Fewer rows than this make no ranking to correlate: any two orders of two rows correlate as +1 or -1.
MIN_ROWS = 3
# means are rounded before ranking so that the same accuracy reached by two float sums (45.0 and
# 45.00000000000001) is a tie, not a rank apart
_DIGITS = 9


@dataclass(frozen=True)
class RowRank:
    """One row under one rule: mean over the columns in percent, the columns it has, and its rank."""

    row: tuple
    mean_pct: float | None  # None where the rule has no cell for the row in some column
    pairs: int  # columns where the rule has a cell for the row
    rank: float | None  # 1 = best; None when not ranked (mean is None)


def average_ranks(values: Sequence[float]) -> list[float]:
    """Rank of each value, 1 = the largest; tied values share the mean of the ranks they span."""
    rounded = [round(v, _DIGITS) for v in values]
    order = sorted(range(len(values)), key=lambda i: -rounded[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and rounded[order[end + 1]] == rounded[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1  # the mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def rank_rows(
    choices: Mapping[tuple[tuple, tuple], Choice], rows: Sequence[tuple], cols: Sequence[tuple]
) -> list[RowRank]:
    """Every row's mean over ``cols`` under one rule's ``choices`` (cell id -> choice), and its rank."""
    means = {}
    for row in rows:
        here = [choices[(row, col)].mean for col in cols if (row, col) in choices]
        means[row] = (100 * statistics.fmean(here) if here and len(here) == len(cols) else None, len(here))
    ranked = [row for row in rows if means[row][0] is not None]
    ranks = dict(zip(ranked, average_ranks([means[row][0] for row in ranked])))
    return [RowRank(row, means[row][0], means[row][1], ranks.get(row)) for row in rows]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences of scores (ties: averaged ranks)."""
    if len(a) != len(b) or len(a) < MIN_ROWS:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    da, db = [r - ma for r in ra], [r - mb for r in rb]
    norm = math.sqrt(sum(d * d for d in da) * sum(d * d for d in db))
    return None if norm == 0 else sum(x * y for x, y in zip(da, db)) / norm


def rank_correlation(first: Sequence[RowRank], second: Sequence[RowRank]) -> float | None:
    """Spearman's correlation of two rules' means over the rows ranked under both."""
    other = {r.row: r.mean_pct for r in second if r.mean_pct is not None}
    common = [r for r in first if r.mean_pct is not None and r.row in other]
    return spearman([r.mean_pct for r in common], [other[r.row] for r in common])


def correlation_unavailable(rows: int, rules: int) -> str | None:
    """Why there is no rank correlation to show for ``rows`` rows and ``rules`` rules; None when there is."""
    if rows < MIN_ROWS:
        return f"Rank correlations need at least {MIN_ROWS} rows (methods); this report has {rows}."
    if rules < 2:
        return "Rank correlations compare two or more rules; this report has one (see --rules)."
    return None


def correlation_matrix(rankings: Mapping[str, Sequence[RowRank]]) -> dict[tuple[str, str], float | None]:
    """(rule, rule) -> Spearman's correlation of their rankings, for every ordered pair of rules."""
    return {(a, b): rank_correlation(rankings[a], rankings[b]) for a in rankings for b in rankings}
