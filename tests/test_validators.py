"""Unsupervised validators: known answers, and a trainer whose target labels are scrambled chooses the
same epochs under every rule but the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.errors import ConfigError
from shiftlab.selection.epochs import EPOCH_RULES
from shiftlab.selection.validators import (
    entropy_score,
    information_maximization,
    metric_name,
    score_all,
    soft_neighborhood_density,
)


def test_entropy_known_answers():
    c = 7
    assert entropy_score(torch.full((5, c), 1 / c)) == pytest.approx(-math.log(c))
    assert entropy_score(torch.eye(c)) == pytest.approx(0.0)
    two = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert entropy_score(two) == pytest.approx(-math.log(2) / 2)


def test_information_maximization_known_answers():
    c = 4
    assert information_maximization(torch.eye(c).repeat(3, 1)) == pytest.approx(math.log(c))  # confident, balanced
    assert information_maximization(torch.eye(c)[[0] * 6]) == pytest.approx(0.0)  # confident, one class
    assert information_maximization(torch.full((6, c), 1 / c)) == pytest.approx(0.0)  # no information


def test_soft_neighborhood_density_known_answers():
    n = 9
    # identical predictions: every other sample is an equally close neighbour
    assert soft_neighborhood_density(torch.tensor([[0.2, 0.8]]).repeat(n, 1)) == pytest.approx(math.log(n - 1))
    # two tight clusters of sizes 3 and 6, orthogonal: neighbours of a sample are its own cluster, almost only
    # (cosine 1 against 0, divided by tau = 0.05: weight e^20 against 1)
    probs = torch.eye(2)[[0] * 3 + [1] * 6].double()
    w = math.exp(1 / 0.05)

    def row_entropy(same: int, other: int) -> float:
        z = same * w + other
        return -(same * (w / z) * math.log(w / z) + other * (1 / z) * math.log(1 / z))

    expected = (3 * row_entropy(2, 6) + 6 * row_entropy(5, 3)) / 9
    assert soft_neighborhood_density(probs) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx((3 * math.log(2) + 6 * math.log(5)) / 9, abs=1e-6)
    # spreading the same images over more clusters lowers the density
    assert soft_neighborhood_density(torch.eye(3)[[0, 0, 0, 1, 1, 1, 2, 2, 2]]) < soft_neighborhood_density(probs)
    with pytest.raises(ValueError, match="two"):
        soft_neighborhood_density(torch.ones(1, 3))


def test_snd_subsamples_large_sets_deterministically():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 5, generator=g), 1)
    a = soft_neighborhood_density(probs, max_samples=100)
    assert a == soft_neighborhood_density(probs, max_samples=100)
    assert a != pytest.approx(soft_neighborhood_density(probs))


class ScrambledLabels:
    """A labelled loader whose labels are replaced by fixed random ones (what a leak would notice)."""

    def __init__(self, loader, num_classes: int):
        self.loader, self.num_classes = loader, num_classes

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        g = torch.Generator().manual_seed(123)
        for x, y in self.loader:
            yield x, torch.randint(self.num_classes, y.shape, generator=g)


def _demo(tmp_path, name, **overrides):
    args = [
        f"--experiment.output_dir={tmp_path}",
        f"--experiment.name={name}",
        "--train.epochs=4",
        "--train.progress=false",
        "--optim.lr=0.02",
    ] + [f"--{k}={v}" for k, v in overrides.items()]
    return build_config(["configs/demo.yaml"], args)


@pytest.mark.slow
@pytest.mark.parametrize("adapt_split", ["test", "train"])
def test_no_rule_but_the_oracle_reads_target_labels(tmp_path, adapt_split):
    """Two identical runs, one with scrambled target labels: every rule that claims to read no target label
    picks the same epoch with the same scores; only the accuracies (and the oracle) may move. Adapting on the
    evaluated images (the demo's protocol) takes the validators' probabilities from the evaluation pass;
    adapting on the training images takes a pass of their own: both are checked."""
    split = {"data.target_adapt_split": adapt_split}
    h = Trainer(_demo(tmp_path, "honest", **split))
    assert h.loaders.validators_reuse_target_pass == (adapt_split == "test")
    honest = h.fit()
    # the evaluation-time scores equal a separate pass over the adaptation images with the final model
    separate = score_all(h.evaluator.probabilities(h.loaders.target_images), ["entropy", "im", "snd"])
    for key, value in separate.items():
        assert h.history[-1][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    t = Trainer(_demo(tmp_path, "scrambled", **split))
    domain, loader = t.loaders.eval_sets["target"]
    t.loaders.eval_sets["target"] = (domain, ScrambledLabels(loader, t.pair.num_classes))
    scrambled = t.fit()

    assert honest["final_target_acc"] != scrambled["final_target_acc"]  # the labels did change
    blind = [r for r in honest["selections"] if r != "target_oracle"]
    assert {"source_val", "last", "entropy", "im", "snd"} <= set(blind)
    for rule in blind:
        a, b = honest["selections"][rule], scrambled["selections"][rule]
        assert a["epoch"] == b["epoch"], rule
        for name in ("entropy", "im", "snd"):
            assert a[metric_name(name)] == b[metric_name(name)], (rule, name)
    # the scores moved from epoch to epoch (else any epoch would "agree")
    for name in ("entropy", "im", "snd"):
        assert len({row[metric_name(name)] for row in h.history}) == 4, name


@pytest.mark.slow
def test_validator_selection_writes_best_checkpoint_and_needs_its_validator(tmp_path):
    s = Trainer(_demo(tmp_path, "im", **{"train.selection": "im", "train.epochs": 2})).fit()
    assert s["selection"] == "im" and s["best_checkpoint"]["epoch"] == s["selections"]["im"]["epoch"]
    assert EPOCH_RULES["im"].metric == "unsup_im"
    with pytest.raises(ConfigError, match="train.validators"):
        Trainer(_demo(tmp_path, "x", **{"train.selection": "snd", "train.validators": "[entropy]"}))
    none = Trainer(_demo(tmp_path, "none", **{"train.validators": "[]", "train.epochs": 1})).fit()
    assert set(none["selections"]) == {"source_val", "last", "target_oracle"}


def test_the_validator_subset_is_a_fixed_sorted_choice():
    from shiftlab.engine.loaders import validator_subset

    subset = validator_subset(500, 60)
    assert subset == validator_subset(500, 60) and subset == sorted(set(subset)) and len(subset) == 60
    assert subset != list(range(60)) and max(subset) > 250  # spread over the set, not its first images
    assert validator_subset(500, 500) is None and validator_subset(500, None) is None


@pytest.mark.slow
def test_validators_score_one_fixed_subset_across_epochs_methods_seeds_and_resumes(tmp_path):
    common = {"train.validator_limit": 40, "train.epochs": 1, "data.target_adapt_split": "train", "data.limit": 300}
    a = Trainer(_demo(tmp_path, "a", **common))
    b = Trainer(_demo(tmp_path, "b", **{**common, "method.name": "adabn", "experiment.seed": 3}))
    assert a.loaders.validator_indices == b.loaders.validator_indices
    assert len(a.loaders.validator_indices) == 40 < len(a.pair.target_adapt_images)
    summary = a.fit()
    assert summary["validator_images"] == {"limit": 40, "scored": 40}
    # the scores are those of exactly that subset, with the final model
    probs = a.evaluator.probabilities(a.loaders.validator_images)
    assert len(probs) == 40
    for key, value in score_all(probs, ["entropy", "im", "snd"]).items():
        assert a.history[-1][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    resumed = Trainer(_demo(tmp_path, "a", **{**common, "train.epochs": 2}), resume=True)
    assert resumed.loaders.validator_indices == a.loaders.validator_indices


@pytest.mark.slow
def test_transductive_validators_take_the_subset_from_the_evaluation_pass(tmp_path):
    t = Trainer(_demo(tmp_path, "t", **{"train.validator_limit": 30, "train.epochs": 1, "data.limit": 200}))
    assert t.loaders.validators_reuse_target_pass and len(t.loaders.validator_indices) == 30
    t.fit()
    everything = t.evaluator.probabilities(t.loaders.target_images)
    subset = everything[torch.as_tensor(t.loaders.validator_indices)]
    for key, value in score_all(subset, ["entropy", "im", "snd"]).items():
        assert t.history[-1][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
