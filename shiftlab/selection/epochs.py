"""The rules that choose a run's epoch (``train.selection``): the one registry of their names.

Each names the metric of ``metrics.csv`` it maximises (``None``: the last epoch) and says what it reads.
``train.selection``'s choices and the report's per-run rules are derived from it.
"""

from __future__ import annotations

from typing import NamedTuple

from .validators import VALIDATORS, metric_name


class EpochRule(NamedTuple):
    metric: str | None
    description: str


EPOCH_RULES: dict[str, EpochRule] = {
    "source_val": EpochRule("source_val_acc", "epoch of best source-validation accuracy (reads no target label)"),
    "target_val": EpochRule(
        "target_val_acc",
        "epoch of best accuracy on the labelled target validation part "
        "(the method trains on target labels; its test part is never read)",
    ),
    "last": EpochRule(None, "last epoch"),
    "target_oracle": EpochRule("target_acc", "epoch of best target accuracy (ORACLE: reads target test labels)"),
    **{
        name: EpochRule(
            metric_name(name),
            f"epoch of best unsupervised validator '{name}' on the unlabelled target "
            f"adaptation images (reads no target label)",
        )
        for name in VALIDATORS
    },
}


def choose_row(rows: list[dict], rule: str) -> dict:
    """The evaluated row ``rule`` picks (the first maximum: ties keep the earlier epoch)."""
    metric = EPOCH_RULES[rule].metric
    return rows[-1] if metric is None else max(rows, key=lambda r: r[metric])


def improves(history: list[dict], row: dict, rule: str) -> bool:
    """Whether ``row`` is ``rule``'s new choice over ``history`` (ties keep the earlier epoch)."""
    metric = EPOCH_RULES[rule].metric
    if metric is None:
        return True
    previous = [r[metric] for r in history if metric in r]
    return not previous or row[metric] > max(previous)
