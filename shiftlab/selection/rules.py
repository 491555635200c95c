"""Selection rules across hyperparameters: which setting each rule picks in each cell of a table.

Pure Python, no I/O: reports and sweeps hand in runs (anything with ``config``, a flat mapping of dotted
config keys, ``selections``, the ``summary.json`` dict rule -> metrics of the epoch that rule picked, and
``label``, a name for messages) and get back, per cell, the chosen hyperparameter setting and the reported
metric per seed.

Runs are grouped into **cells** by the row and column keys of a table (:class:`Layout`). Inside a cell,
runs differ by seed (``experiment.seed``) and by **hyperparameters**: every other config key whose value
varies among the runs, except the bookkeeping keys of :data:`IGNORED_KEYS` (where a run was written, how
it was shown, on which device: nothing that changes what a method is asked to learn). A key that names
the task (:data:`TASK_KEYS`) may vary only as a row or column key: choosing "the best target" would not
be model selection.

Each rule scores every hyperparameter setting ``h`` of a cell by a mean over seeds of a quantity read
from one ``selections`` entry, picks the best (ties: the first setting in sorted order), and reports,
per seed, the metric of a ``selections`` entry at that setting. Which quantities each rule reads is
written in its scoring function below: no rule but ``target_oracle`` reads a target label of the cell
it chooses for (``cross_domain`` reads those of *other* targets only; ``tests/test_selection_rules.py``
checks both by perturbing target accuracies).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import SelectionError
from ..utils import did_you_mean
from .epochs import EPOCH_RULES

__all__ = [
    "SEED_KEY",
    "TASK_KEYS",
    "IGNORED_KEYS",
    "METRICS",
    "RULE_ORDER",
    "RULES",
    "RunLike",
    "Run",
    "Layout",
    "Cell",
    "Choice",
    "Rule",
    "varying_keys",
    "plan_layout",
    "group_cells",
    "rule_not_recorded",
    "rule_unavailable",
    "supported_rules",
    "choose",
    "sort_key",
]

SEED_KEY = "experiment.seed"
TASK_KEYS = ("data.dataset", "data.source", "data.target")
#: Config keys that never count as hyperparameters: names and paths of the run, how it was shown or
#: loaded, the device it ran on, which rule the run itself reported and which validators it logged
#: (a report applies every rule itself). ``model.weights`` is a path that differs between machines.
IGNORED_KEYS = frozenset(
    {
        "experiment.name",
        "experiment.output_dir",
        "experiment.plugins",
        "data.root",
        "data.num_workers",
        "data.eval_batch_size",
        "model.weights",
        "train.progress",
        "train.device",
        "train.compile",
        "train.channels_last",
        "train.precision",
        "train.deterministic",
        "train.selection",
        "train.validators",
    }
)
#: The metrics a rule may report: the target test accuracy, or the held-out target part's.
METRICS = ("target_acc", "target_holdout_acc")


class RunLike(Protocol):
    config: Mapping[str, Any]
    selections: Mapping[str, Mapping[str, Any]]
    label: str


@dataclass(frozen=True)
class Run:
    """A minimal run: flat config, ``summary.json``'s ``selections`` and a name for messages."""

    config: Mapping[str, Any]
    selections: Mapping[str, Mapping[str, Any]]
    label: str = ""


@dataclass(frozen=True)
class Layout:
    """How runs become a table: rows and columns by config keys, hyperparameters chosen inside a cell."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    hparams: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.rows + self.cols


@dataclass
class Cell:
    """The runs of one table cell, by hyperparameter setting (values in ``Layout.hparams`` order)."""

    row: tuple
    col: tuple
    coords: dict[str, Any]  # row and column key -> value
    settings: dict[tuple, list[RunLike]]  # setting -> its runs, one per seed, in seed order

    @property
    def id(self) -> tuple[tuple, tuple]:
        return self.row, self.col

    @property
    def runs(self) -> list[RunLike]:
        return [run for runs in self.settings.values() for run in runs]


@dataclass(frozen=True)
class Choice:
    """One rule's pick in one cell: the setting, its score and the reported metric per seed."""

    rule: str
    setting: tuple
    hparams: dict[str, Any]
    score: float
    seeds: tuple
    values: tuple[float, ...]
    epochs: tuple[Any, ...]
    fallbacks: int  # runs that lacked the asked metric and reported target_acc instead

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


# ---------------------------------------------------------------------------------------------- layout


def sort_key(value: Any) -> tuple:
    """A total order on config values of mixed types: numbers, then text, then missing values."""
    if isinstance(value, tuple):
        return (0, tuple(sort_key(v) for v in value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    if value is None:
        return (3, 0.0, "")
    return (2, 0.0, str(value))


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _value(run: RunLike, key: str) -> Any:
    return _hashable(run.config.get(key))


def varying_keys(runs: Sequence[RunLike]) -> list[str]:
    """Config keys whose value differs among ``runs`` (a key missing from some runs counts as varying)."""
    keys = sorted({k for run in runs for k in run.config})
    return [k for k in keys if len({_value(run, k) for run in runs}) > 1]


def _check_known(keys: Iterable[str], kind: str, runs: Sequence[RunLike]) -> None:
    known = {k for run in runs for k in run.config}
    for key in keys:
        if key not in known:
            varying = varying_keys(runs)
            raise SelectionError(
                f"unknown {kind} key '{key}'; keys that vary among these runs: "
                f"{', '.join(varying) or '(none)'}.{did_you_mean(key, known)}"
            )


def plan_layout(
    runs: Sequence[RunLike], rows: Sequence[str], cols: Sequence[str], hparams: Sequence[str] | None = None
) -> Layout:
    """The table's layout; hyperparameters are detected (varying inside a cell, not ignored, not seed, not a
    row or column key) unless ``hparams`` names them. A task key varying outside rows/cols is an error."""
    rows, cols = tuple(rows), tuple(cols)
    _check_known(rows, "row", runs)
    _check_known(cols, "column", runs)
    varying = varying_keys(runs)
    for key in TASK_KEYS:
        if key in varying and key not in rows + cols:
            raise SelectionError(
                f"'{key}' varies among these runs ({_values_text(runs, key)}) but is neither a "
                f"row nor a column key: a task is not a hyperparameter; put it in --rows or --cols"
            )
    if hparams is None:
        candidates = [k for k in varying if k not in IGNORED_KEYS and k != SEED_KEY and k not in rows + cols]
        hparams = _varying_within_cells(runs, rows + cols, candidates)
    else:
        _check_known(hparams, "hyperparameter", runs)
        for key in hparams:
            if key in TASK_KEYS or key == SEED_KEY or key in rows + cols:
                raise SelectionError(
                    f"'{key}' cannot be a hyperparameter: it is a task key, the seed, or a row or column key"
                )
    return Layout(rows, cols, tuple(hparams))


def _varying_within_cells(runs: Sequence[RunLike], cell_keys: tuple[str, ...], keys: list[str]) -> list[str]:
    """The ``keys`` that vary among the runs of some cell: one constant in every cell chooses nothing (e.g.
    a method's own keys, which every resolved config holds, in a table whose rows are methods)."""
    cells: dict[tuple, list[RunLike]] = {}
    for run in runs:
        cells.setdefault(tuple(_value(run, k) for k in cell_keys), []).append(run)
    return [k for k in keys if any(len({_value(r, k) for r in members}) > 1 for members in cells.values())]


def _values_text(runs: Sequence[RunLike], key: str) -> str:
    return ", ".join(str(v) for v in sorted({_value(r, key) for r in runs}, key=sort_key))


def group_cells(runs: Sequence[RunLike], layout: Layout) -> list[Cell]:
    """Runs by cell and hyperparameter setting, in sorted order; two runs of one seed and setting are an error."""
    cells: dict[tuple, Cell] = {}
    for run in runs:
        row = tuple(_value(run, k) for k in layout.rows)
        col = tuple(_value(run, k) for k in layout.cols)
        cell = cells.setdefault((row, col), Cell(row, col, dict(zip(layout.keys, row + col)), {}))
        cell.settings.setdefault(tuple(_value(run, k) for k in layout.hparams), []).append(run)
    for cell in cells.values():
        cell.settings = {s: _by_seed(cell.settings[s]) for s in sorted(cell.settings, key=sort_key)}
    return [cells[k] for k in sorted(cells, key=sort_key)]


def _by_seed(runs: list[RunLike]) -> list[RunLike]:
    runs = sorted(runs, key=lambda r: sort_key(_value(r, SEED_KEY)))
    for a, b in zip(runs, runs[1:]):
        if _value(a, SEED_KEY) == _value(b, SEED_KEY):
            raise SelectionError(
                f"two runs with the same seed and hyperparameters in one cell: {a.label} and "
                f"{b.label}; name the key that tells them apart with --hparams, --rows or --cols, "
                f"or report on a folder that holds one of them"
            )
    return runs


# ---------------------------------------------------------------------------------------------- rules
# Each scoring function gets the runs of one hyperparameter setting (one per seed) and returns the mean
# over seeds of what it reads; higher is better. Its docstring says what that is and where it comes from.


def _mean_entry(runs: Sequence[RunLike], entry: str, key: str) -> float:
    return statistics.fmean(float(run.selections[entry][key]) for run in runs)


def score_source_val(runs: Sequence[RunLike]) -> float:
    """Source validation accuracy at the epoch of best source validation accuracy: the source's
    validation split, no target label (the default; the i.i.d. validation of the source domain)."""
    return _mean_entry(runs, "source_val", "source_val_acc")


def score_last(runs: Sequence[RunLike]) -> float:
    """Source validation accuracy at the last epoch (no target label)."""
    return _mean_entry(runs, "last", "source_val_acc")


def score_entropy(runs: Sequence[RunLike]) -> float:
    """Minus the mean prediction entropy on the unlabelled target images, at the epoch it picked:
    Morerio, Cavazza & Murino, "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain
    Adaptation", ICLR 2018 (no target label)."""
    return _mean_entry(runs, "entropy", "unsup_entropy")


def score_im(runs: Sequence[RunLike]) -> float:
    """Information maximisation of the predictions on the unlabelled target images (Gomes, Krause &
    Perona, "Discriminative Clustering by Regularized Information Maximization", NeurIPS 2010), a
    validator in Musgrave, Belongie & Lim, "Benchmarking Validation Methods for Unsupervised Domain
    Adaptation", ECCV 2022 (no target label)."""
    return _mean_entry(runs, "im", "unsup_im")


def score_snd(runs: Sequence[RunLike]) -> float:
    """Soft neighborhood density of the target predictions (Saito et al., "Tune it the Right Way:
    Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density", ICCV 2021; no target label)."""
    return _mean_entry(runs, "snd", "unsup_snd")


def score_target_val(runs: Sequence[RunLike]) -> float:
    """Accuracy on the labelled target validation part, for methods that train on target labels: it
    reads those training labels, never the target test labels the table reports."""
    return _mean_entry(runs, "target_val", "target_val_acc")


def score_cross_domain(runs: Sequence[RunLike]) -> float:
    """Last-epoch target accuracy of *another* target of the same source: the PACS DANN assignment's
    protocol (for Photo -> Art, choose on the mean of Photo -> Cartoon and Photo -> Sketch, never on
    Art). :func:`choose` hands it only runs of other targets, averaged over them."""
    return _mean_entry(runs, "last", "target_acc")


def score_target_oracle(runs: Sequence[RunLike]) -> float:
    """Target test accuracy at its best epoch. ORACLE: reads the target labels it reports; for reference only."""
    return _mean_entry(runs, "target_oracle", "target_acc")


@dataclass(frozen=True)
class Rule:
    """A selection rule: how a setting is scored, and which ``selections`` entry its reported metric is read from."""

    name: str
    score: Callable[[Sequence[RunLike]], float]
    score_entry: str  # the selections entry the score reads
    score_key: str  # ... and the metric in it
    report_entry: str  # the selections entry (its epoch) whose metric the table reports
    reads_target_labels: bool  # of the cell it chooses for
    description: str
    cross_task: bool = False  # scored on the other targets' cells instead of the cell itself


def _per_run(
    name: str,
    score: Callable[[Sequence[RunLike]], float],
    description: str,
    *,
    score_key: str | None = None,
    reads_target_labels: bool = False,
) -> Rule:
    """A rule over runs built on the run-level epoch rule of the same name (``shiftlab.selection.epochs``, the one
    registry of those names): it scores and reports that rule's ``selections`` entry."""
    metric = score_key or EPOCH_RULES[name].metric
    assert metric is not None, name
    return Rule(name, score, name, metric, name, reads_target_labels, description)


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        _per_run(
            "source_val",
            score_source_val,
            "epoch and hyperparameters by source-validation accuracy; reads no target label",
        ),
        _per_run(
            "last",
            score_last,
            "last epoch; hyperparameters by last-epoch source-validation accuracy; reads no target label",
            score_key="source_val_acc",
        ),
        _per_run(
            "entropy",
            score_entropy,
            "epoch and hyperparameters by the prediction-entropy validator (Morerio et al., ICLR 2018) on the "
            "unlabelled target images; reads no target label",
        ),
        _per_run(
            "im",
            score_im,
            "epoch and hyperparameters by the information-maximisation validator (Gomes et al., NeurIPS 2010; "
            "Musgrave et al., ECCV 2022) on the unlabelled target images; reads no target label",
        ),
        _per_run(
            "snd",
            score_snd,
            "epoch and hyperparameters by the soft-neighborhood-density validator (Saito et al., ICCV 2021) on the "
            "unlabelled target images; reads no target label",
        ),
        _per_run(
            "target_val",
            score_target_val,
            "epoch and hyperparameters by accuracy on the labelled target validation part (methods trained on "
            "target labels); reads no target test label",
        ),
        Rule(
            "cross_domain",
            score_cross_domain,
            "last",
            "target_acc",
            "last",
            False,
            "last epoch; hyperparameters by the mean target accuracy of the other targets of the same source "
            "(PACS DANN assignment protocol); reads no label of the target it reports",
            cross_task=True,
        ),
        _per_run(
            "target_oracle",
            score_target_oracle,
            "ORACLE: reads target labels. Epoch and hyperparameters by target test accuracy; for reference only",
            reads_target_labels=True,
        ),
    )
}
assert set(EPOCH_RULES) <= set(RULES), "every run-level epoch rule is also a rule over runs"
#: Rules in the order a report shows them: the default first, the oracle last.
RULE_ORDER = tuple(RULES)


def _other_targets(cell: Cell, cells: Sequence[Cell]) -> list[Cell]:
    """Cells equal to ``cell`` on every row and column key but ``data.target``, whose target differs."""
    if "data.target" not in cell.coords:
        return []
    rest = {k: v for k, v in cell.coords.items() if k != "data.target"}
    return [
        c
        for c in cells
        if c.coords["data.target"] != cell.coords["data.target"]
        and {k: v for k, v in c.coords.items() if k != "data.target"} == rest
    ]


def _pool(rule: Rule, cell: Cell, cells: Sequence[Cell]) -> list[Cell]:
    """The cells whose runs score a setting for ``cell``: itself, or the other targets' cells."""
    return _other_targets(cell, cells) if rule.cross_task else [cell]


def _has(run: RunLike, entry: str, key: str) -> bool:
    return (run.selections or {}).get(entry, {}).get(key) is not None


def rule_not_recorded(rule_name: str, cell: Cell, cells: Sequence[Cell]) -> str | None:
    """Why the runs of ``cell`` (or of its pool) do not record what ``rule_name`` reads (None when they do)."""
    rule = RULES[rule_name]
    pool = _pool(rule, cell, cells)
    if not pool:
        return "no other target of the same source to choose on"
    if not any(setting in c.settings for c in pool for setting in cell.settings):
        return "the other targets ran none of this cell's hyperparameter settings"
    if not all(rule.report_entry in (run.selections or {}) for run in cell.runs):
        return f"runs without a '{rule.report_entry}' selection"
    if not all(_has(run, rule.score_entry, rule.score_key) for c in pool for run in c.runs):
        return f"runs without '{rule.score_key}' in their '{rule.score_entry}' selection"
    return None


def rule_unavailable(rule_name: str, cell: Cell, cells: Sequence[Cell]) -> str | None:
    """Why ``rule_name`` cannot choose for ``cell`` (None when it can): it is not recorded, or a run's
    selection records it with no ``target_acc`` (null) to report."""
    missing = rule_not_recorded(rule_name, cell, cells)
    if missing is not None:
        return missing
    entry = RULES[rule_name].report_entry
    null = [run for run in cell.runs if not _has(run, entry, "target_acc")]
    if null:
        return (
            f"{len(null)} run(s) have no target_acc (null) at the epoch of their '{entry}' selection, e.g. "
            f"{null[0].label}; that epoch has no target accuracy to report"
        )
    return None


def supported_rules(cells: Sequence[Cell]) -> list[str]:
    """The rules the runs record for at least one cell, in :data:`RULE_ORDER`. A rule recorded with a null
    ``target_acc`` counts: its table then shows the cell as n/a with the reason, rather than vanishing."""
    return [name for name in RULE_ORDER if any(rule_not_recorded(name, c, cells) is None for c in cells)]


def _score(rule: Rule, setting: tuple, pool: Sequence[Cell]) -> float:
    """Mean of the rule's score over the pool cells that ran ``setting``; NaN when none did."""
    scores = [rule.score(c.settings[setting]) for c in pool if setting in c.settings]
    return statistics.fmean(scores) if scores else math.nan


def _reported(run: RunLike, entry: str, metric: str) -> tuple[float, bool]:
    """The metric of ``run`` at the rule's epoch, and whether it fell back to ``target_acc``."""
    picked = run.selections[entry]
    if picked.get(metric) is not None:
        return float(picked[metric]), False
    return float(picked["target_acc"]), True


def _choose_in_cell(rule: Rule, cell: Cell, cells: Sequence[Cell], layout: Layout, metric: str) -> Choice:
    pool = _pool(rule, cell, cells)
    best, best_score = None, -math.inf
    for setting in cell.settings:  # sorted order; strict '>' keeps the first of tied settings
        score = _score(rule, setting, pool)
        score = -math.inf if math.isnan(score) else score  # a setting no pool cell ran cannot win
        if best is None or score > best_score:
            best, best_score = setting, score
    runs = cell.settings[best]
    reported = [_reported(run, rule.report_entry, metric) for run in runs]
    return Choice(
        rule.name,
        best,
        dict(zip(layout.hparams, best)),
        _score(rule, best, pool),
        tuple(_value(run, SEED_KEY) for run in runs),
        tuple(v for v, _ in reported),
        tuple(run.selections[rule.report_entry].get("epoch") for run in runs),
        sum(fell for _, fell in reported),
    )


def choose(
    rule_name: str, cells: Sequence[Cell], layout: Layout, metric: str = "target_acc"
) -> dict[tuple[tuple, tuple], Choice]:
    """Each cell's choice under ``rule_name``, by cell id; cells the rule cannot choose for are left out.

    A rule that can choose for no cell at all is an error naming the reason and the rules that can.
    """
    if rule_name not in RULES:
        raise SelectionError(
            f"unknown selection rule '{rule_name}'; valid: {', '.join(RULE_ORDER)}."
            f"{did_you_mean(rule_name, RULE_ORDER)}"
        )
    if metric not in METRICS:
        raise SelectionError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    rule = RULES[rule_name]
    choices = {
        c.id: _choose_in_cell(rule, c, cells, layout, metric)
        for c in cells
        if rule_unavailable(rule_name, c, cells) is None
    }
    if not choices and rule_name not in supported_rules(cells):  # recorded but null everywhere: all n/a
        reason = rule_unavailable(rule_name, cells[0], cells) if cells else "no runs"
        raise SelectionError(
            f"rule '{rule_name}' is not supported by these runs ({reason}); rules they "
            f"support: {', '.join(supported_rules(cells)) or '(none)'}"
        )
    return choices
