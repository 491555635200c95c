"""Selection rules across hyperparameters: no rule but the oracle reads the target labels of the task it
chooses for (the leakage test), cross_domain reads the other targets', and a hand-checked example."""

from __future__ import annotations

import copy
import random

import pytest

from shiftlab.errors import SelectionError
from shiftlab.selection.rules import RULES, Layout, Run, choose, group_cells, plan_layout, supported_rules

SOURCE = "art_painting"
TARGETS = ("cartoon", "sketch", "photo")
LRS = (0.001, 0.01, 0.1)
SEEDS = (0, 1)
TARGET_LABEL_KEYS = ("target_acc", "target_holdout_acc")
# Every rule that must not read the target labels of the task it chooses for (target_val reads the
# labelled target *validation* part, never target_acc).
BLIND_RULES = ("source_val", "last", "entropy", "im", "snd", "target_val", "cross_domain")
LAYOUT_KEYS = dict(rows=["method.name"], cols=["data.source", "data.target"])


def epoch_rows(rng: random.Random, epochs: int = 4) -> list[dict]:
    """Random per-epoch metrics, as a run's metrics.csv would hold them."""
    return [
        {
            "epoch": e,
            "source_val_acc": rng.uniform(0.5, 0.99),
            "target_acc": rng.uniform(0.2, 0.8),
            "target_holdout_acc": rng.uniform(0.2, 0.8),
            "target_val_acc": rng.uniform(0.2, 0.8),
            "unsup_entropy": -rng.uniform(0.1, 2.0),
            "unsup_im": rng.uniform(0.0, 2.0),
            "unsup_snd": rng.uniform(3.0, 5.0),
        }
        for e in range(1, epochs + 1)
    ]


def selections_from(rows: list[dict]) -> dict[str, dict]:
    """summary.json's ``selections`` as the trainer writes it: each rule's epoch and that epoch's metrics."""

    def best(key):
        return dict(max(rows, key=lambda r: r[key]))

    return {
        "source_val": best("source_val_acc"),
        "last": dict(rows[-1]),
        "target_oracle": best("target_acc"),
        "target_val": best("target_val_acc"),
        "entropy": best("unsup_entropy"),
        "im": best("unsup_im"),
        "snd": best("unsup_snd"),
    }


def config(target: str, lr: float, seed: int, method: str = "dann") -> dict:
    return {
        "method.name": method,
        "data.dataset": "pacs",
        "data.source": SOURCE,
        "data.target": target,
        "optim.lr": lr,
        "experiment.seed": seed,
        "experiment.name": f"{method}/{target}/{lr}/{seed}",
    }


def synthetic_runs(seed: int = 0) -> list[Run]:
    """One source, three targets, three learning rates, two seeds, random per-epoch metrics."""
    rng = random.Random(seed)
    return [
        Run(config(t, lr, s), selections_from(epoch_rows(rng)), f"{t}/{lr}/{s}")
        for t in TARGETS
        for lr in LRS
        for s in SEEDS
    ]


def chosen(runs: list[Run], rule: str) -> dict[str, tuple]:
    """The learning rate each target's cell gets under ``rule``."""
    layout = plan_layout(runs, **LAYOUT_KEYS)
    choices = choose(rule, group_cells(runs, layout), layout)
    return {cell_id[1][1]: choice.setting for cell_id, choice in choices.items()}


def perturbed(runs: list[Run], target: str, change) -> list[Run]:
    """A deep copy where ``change(lr, entry, key)`` gives each target-label value of ``target``'s runs."""
    out = copy.deepcopy(runs)
    for run in out:
        if run.config["data.target"] == target:
            for entry in run.selections.values():
                for key in TARGET_LABEL_KEYS:
                    entry[key] = change(run.config["optim.lr"], entry, key)
    return out


def test_the_synthetic_runs_support_every_rule():
    runs = synthetic_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS)
    assert layout.hparams == ("optim.lr",)  # experiment.name is bookkeeping; the seed is not a hyperparameter
    assert supported_rules(group_cells(runs, layout)) == list(RULES)


def test_speed_keys_varying_between_runs_are_no_hyperparameters():
    # a sweep resumed after its config gained train.channels_last holds runs of both formats
    runs = synthetic_runs()
    for i, run in enumerate(runs):
        run.config["train.channels_last"] = i % 2 == 0
        run.config["train.compile"] = i % 3 == 0
    assert plan_layout(runs, **LAYOUT_KEYS).hparams == ("optim.lr",)


@pytest.mark.parametrize("rule", BLIND_RULES)
@pytest.mark.parametrize("target", TARGETS)
def test_no_rule_but_the_oracle_reads_the_target_labels_of_its_task(rule, target):
    runs = synthetic_runs()
    before = chosen(runs, rule)
    rng = random.Random(1)
    for trial in range(5):
        noisy = perturbed(runs, target, lambda lr, entry, key: rng.random())
        assert chosen(noisy, rule)[target] == before[target], (rule, target, trial)
    # the perturbation that moves the oracle (below) must not move this rule either
    favoured = _other_lr(chosen(runs, "target_oracle")[target])
    assert chosen(perturbed(runs, target, _favour(favoured)), rule)[target] == before[target]


def _other_lr(setting: tuple) -> float:
    return next(lr for lr in LRS if (lr,) != setting)


def _favour(lr_favoured: float):
    """Target accuracy 1.0 for one learning rate, 0.0 for the others."""
    return lambda lr, entry, key: 1.0 if lr == lr_favoured else 0.0


@pytest.mark.parametrize("target", TARGETS)
def test_the_oracle_reads_the_target_labels_so_the_leakage_test_can_fail(target):
    runs = synthetic_runs()
    favoured = _other_lr(chosen(runs, "target_oracle")[target])
    assert chosen(perturbed(runs, target, _favour(favoured)), "target_oracle")[target] == (favoured,)


@pytest.mark.parametrize("target", TARGETS)
def test_cross_domain_chooses_on_the_other_targets(target):
    runs = synthetic_runs()
    before = chosen(runs, "cross_domain")[target]
    favoured = _other_lr(before)
    other = next(t for t in TARGETS if t != target)
    after = chosen(perturbed(runs, other, _favour(favoured)), "cross_domain")
    assert after[target] == (favoured,)


def test_cross_domain_scores_by_the_mean_over_the_other_targets():
    runs = synthetic_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS)
    cells = group_cells(runs, layout)
    choice = choose("cross_domain", cells, layout)[(("dann",), (SOURCE, "photo"))]

    def last_acc(target, lr):
        return sum(
            r.selections["last"]["target_acc"]
            for r in runs
            if r.config["data.target"] == target and r.config["optim.lr"] == lr
        ) / len(SEEDS)

    scores = {lr: (last_acc("cartoon", lr) + last_acc("sketch", lr)) / 2 for lr in LRS}
    assert choice.setting == (max(LRS, key=scores.get),)
    assert choice.score == pytest.approx(max(scores.values()))
    reported = [
        r.selections["last"]["target_acc"]
        for r in runs
        if r.config["data.target"] == "photo" and (r.config["optim.lr"],) == choice.setting
    ]
    assert choice.values == pytest.approx(reported)


def test_cross_domain_without_another_target_is_a_clear_error():
    runs = [r for r in synthetic_runs() if r.config["data.target"] == "photo"]
    layout = plan_layout(runs, **LAYOUT_KEYS)
    with pytest.raises(SelectionError, match="cross_domain.*no other target"):
        choose("cross_domain", group_cells(runs, layout), layout)


# ---------------------------------------------------------------------------------------------- by hand


def _hand_runs() -> list[Run]:
    """2 learning rates x 3 seeds with round numbers (fractions; the table prints percent)."""
    numbers = {
        0.01: {"source_val_acc": (0.90, 0.80, 0.85), "target_acc": (0.40, 0.45, 0.50)},
        0.1: {"source_val_acc": (0.70, 0.75, 0.80), "target_acc": (0.60, 0.62, 0.64)},
    }
    runs = []
    for lr, values in numbers.items():
        for seed, (val, acc) in enumerate(zip(values["source_val_acc"], values["target_acc"])):
            entry = {"epoch": 3, "source_val_acc": val, "target_acc": acc}
            runs.append(
                Run(
                    config("cartoon", lr, seed, "source_only"),
                    {"source_val": entry, "last": entry, "target_oracle": entry},
                    f"{lr}/{seed}",
                )
            )
    return runs


def test_hand_checked_mean_std_and_n():
    runs = _hand_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS)
    cells = group_cells(runs, layout)
    by_val = choose("source_val", cells, layout)[(("source_only",), (SOURCE, "cartoon"))]
    # source_val: lr 0.01 scores (0.90 + 0.80 + 0.85) / 3 = 0.85 > 0.75
    assert by_val.hparams == {"optim.lr": 0.01} and by_val.score == pytest.approx(0.85)
    assert by_val.seeds == (0, 1, 2) and by_val.n == 3
    assert by_val.mean == pytest.approx(0.45) and by_val.std == pytest.approx(0.05)  # sample std, ddof = 1
    oracle = choose("target_oracle", cells, layout)[(("source_only",), (SOURCE, "cartoon"))]
    assert oracle.hparams == {"optim.lr": 0.1}
    assert oracle.mean == pytest.approx(0.62) and oracle.std == pytest.approx(0.02)


def test_ties_go_to_the_first_setting_in_sorted_order():
    runs = _hand_runs()
    for run in runs:
        run.selections["source_val"]["source_val_acc"] = 0.5  # shared entry dicts: every rule ties
    layout = plan_layout(runs, **LAYOUT_KEYS)
    choice = choose("source_val", group_cells(runs, layout), layout)
    assert next(iter(choice.values())).hparams == {"optim.lr": 0.01}


def test_metric_falls_back_to_target_acc_and_counts_it():
    runs = _hand_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS)
    choice = next(iter(choose("source_val", group_cells(runs, layout), layout, "target_holdout_acc").values()))
    assert choice.fallbacks == 3 and choice.mean == pytest.approx(0.45)


# ---------------------------------------------------------------------------------------------- errors


def test_a_task_key_varying_outside_rows_and_cols_is_an_error():
    with pytest.raises(SelectionError, match="'data.target' varies.*--rows or --cols"):
        plan_layout(synthetic_runs(), rows=["method.name"], cols=["optim.lr"])


def test_unknown_row_key_names_the_varying_keys():
    with pytest.raises(SelectionError, match="unknown row key 'method.nme'.*data.target.*Did you mean 'method.name'"):
        plan_layout(synthetic_runs(), rows=["method.nme"], cols=["data.target"])


def test_hparams_override_detection():
    runs = synthetic_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS, hparams=[])
    with pytest.raises(SelectionError, match="same seed and hyperparameters"):
        group_cells(runs, layout)  # without optim.lr the three learning rates collide on each seed
    assert plan_layout(runs, **LAYOUT_KEYS, hparams=["optim.lr"]).hparams == ("optim.lr",)


def test_a_rule_the_runs_do_not_support_lists_those_they_do():
    runs = _hand_runs()
    layout = plan_layout(runs, **LAYOUT_KEYS)
    with pytest.raises(SelectionError, match="'snd' is not supported.*source_val, last, target_oracle"):
        choose("snd", group_cells(runs, layout), layout)
    with pytest.raises(SelectionError, match="unknown selection rule 'sourceval'"):
        choose("sourceval", group_cells(runs, layout), Layout(("method.name",), (), ()))


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_scores_what_it_declares_it_reads(rule):
    """The availability checks and the report's header use score_entry/score_key: the score must agree."""
    spec = RULES[rule]
    runs = [Run({}, {spec.score_entry: {spec.score_key: value}}) for value in (0.25, 0.75)]
    assert spec.score(runs) == pytest.approx(0.5)
