"""The standard baselines (issue 30): Deep CORAL, DAN / JAN, SHOT, FixMatch-style self-training and entropy
minimisation. Fast tests check each loss on small tensors against a value computed by hand or by a direct
formula, the strong augmentation, and that a method with its weight at 0 trains exactly as source-only does;
slow tests run each method short on USPS -> MNIST against source-only (measurements beside them)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from short_digits import brief_backbone

from shiftlab.config import build_config, read_yaml
from shiftlab.engine.loop import Trainer
from shiftlab.errors import ConfigError
from shiftlab.losses import (
    centroid_pseudo_labels,
    coral_loss,
    diversity,
    gaussian_kernel,
    joint_mmd,
    mean_entropy,
    mk_mmd,
    mmd,
    nearest_centroid,
    thresholded_pseudo_label_loss,
)
from shiftlab.methods import METHODS, Batch, build_method
from shiftlab.models import build_backbone
from shiftlab.nn import StrongAugment

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("coral", "dan", "shot", "self_training", "entropy_min")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------ the losses, against direct formulas


def test_coral_loss_by_hand_and_against_torch_cov():
    # 1-d: C_S = var([0, 2]) = 2, C_T = var([1, 1]) = 0, so ||C_S - C_T||^2 / (4 d^2) = 4 / 4 = 1
    assert coral_loss(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]])).item() == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 5, generator=gen, dtype=torch.double), torch.randn(12, 5, generator=gen, dtype=torch.double)
    expected = (torch.cov(s.T) - torch.cov(t.T)).pow(2).sum() / (4 * 25)
    assert coral_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert coral_loss(s, s + 3.0).item() == pytest.approx(0.0, abs=1e-7)  # a shift leaves covariances alone


def _gauss(a, b, width):
    return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b)) / width)


def test_mmd_estimators_against_their_sums():
    gen = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(6, 3, generator=gen, dtype=torch.double),
        torch.randn(6, 3, generator=gen, dtype=torch.double) + 1,
    )
    z = torch.cat([s, t]).tolist()
    pairs = [(i, j) for i in range(12) for j in range(12) if i != j]
    base = sum(sum((x - y) ** 2 for x, y in zip(z[i], z[j])) for i, j in pairs) / len(pairs)
    mults = (0.5, 1.0, 2.0)

    def k(i, j):  # the multi-kernel: the mean of the Gaussians of widths m * base
        return sum(_gauss(z[i], z[j], m * base) for m in mults) / len(mults)

    kernel = gaussian_kernel(torch.cat([s, t]), mults)
    assert kernel[2, 9].item() == pytest.approx(k(2, 9), rel=1e-6)
    ss = sum(k(i, j) for i in range(6) for j in range(6) if i != j) / 30
    tt = sum(k(i, j) for i in range(6, 12) for j in range(6, 12) if i != j) / 30
    st = sum(k(i, j) for i in range(6) for j in range(6, 12)) / 36
    assert mk_mmd(s, t, mults).item() == pytest.approx(ss + tt - 2 * st, rel=1e-6)
    # DAN's linear-time estimate (Eq. 6): quad-tuples (s_1, s_2, t_1, t_2), (s_3, s_4, t_3, t_4), ...
    lin = sum(k(a, a + 1) + k(6 + a, 7 + a) - k(a, 7 + a) - k(a + 1, 6 + a) for a in (0, 2, 4)) / 3
    assert mk_mmd(s, t, mults, estimator="linear").item() == pytest.approx(lin, rel=1e-6)
    assert mk_mmd(s, t).item() > mk_mmd(s, s[torch.randperm(6, generator=gen)] + 0.01).item()
    # the median base: widths are multiples of the median distinct-pair squared distance
    d2 = torch.cdist(torch.cat([s, t]), torch.cat([s, t])).pow(2)
    median = d2[~torch.eye(12, dtype=torch.bool)].median().item()
    assert gaussian_kernel(torch.cat([s, t]), (1.0,), base="median")[0, 7].item() == pytest.approx(
        _gauss(z[0], z[7], median), rel=1e-6
    )


def test_joint_mmd_is_the_mmd_of_the_product_kernel():
    gen = torch.Generator().manual_seed(2)
    fs, ft = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    ps, pt = torch.randn(8, 3, generator=gen).softmax(1), torch.randn(8, 3, generator=gen).softmax(1)
    kernels = [{"multipliers": (0.5, 1.0)}, {"sigma": 0.92}]
    product = gaussian_kernel(torch.cat([fs, ft]), (0.5, 1.0)) * gaussian_kernel(torch.cat([ps, pt]), sigma=0.92)
    assert joint_mmd([fs, ps], [ft, pt], kernels).item() == pytest.approx(mmd(product, 8).item(), rel=1e-6)
    fixed = gaussian_kernel(torch.cat([ps, pt]), sigma=0.92)
    assert fixed[1, 9].item() == pytest.approx(math.exp(-(ps[1] - pt[1]).pow(2).sum().item() / (2 * 0.92**2)), rel=1e-6)
    assert joint_mmd([fs], [ft], kernels[:1]).item() == pytest.approx(mk_mmd(fs, ft, (0.5, 1.0)).item(), rel=1e-6)


def test_entropy_and_diversity_by_hand():
    uniform = torch.zeros(4, 5)
    assert mean_entropy(uniform).item() == pytest.approx(math.log(5))
    assert diversity(uniform).item() == pytest.approx(-math.log(5))
    sure = torch.tensor([[30.0, 0.0], [30.0, 0.0]])  # both certain of class 0: H = 0, p̂ = (1, 0)
    assert mean_entropy(sure).item() == pytest.approx(0.0, abs=1e-9)
    assert diversity(sure).item() == pytest.approx(0.0, abs=1e-9)
    split = torch.tensor([[30.0, 0.0], [0.0, 30.0]])  # certain, and spread: IM's optimum, -log 2
    assert (mean_entropy(split) + diversity(split)).item() == pytest.approx(-math.log(2), abs=1e-6)
    p = torch.tensor([[0.7, 0.2, 0.1]])
    assert mean_entropy(p.log()).item() == pytest.approx(
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    )


def test_thresholded_pseudo_label_loss_by_hand():
    weak = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.02, 0.98]]).log()  # confident, not, confident
    strong = torch.tensor([[0.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    loss, mask = thresholded_pseudo_label_loss(weak, strong, threshold=0.95)
    # (CE([0,0], 0) + 0 + CE([1,0], 1)) / 3 = (log 2 + log(1 + e)) / 3; the second sample is masked out
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.e)) / 3, rel=1e-6)
    assert mask.item() == pytest.approx(2 / 3)
    strong.requires_grad_(True)
    weak = weak.clone().requires_grad_(True)
    thresholded_pseudo_label_loss(weak, strong)[0].backward()
    assert weak.grad is None or not weak.grad.any()  # the weak view's prediction is a fixed target
    assert not strong.grad[1].any() and strong.grad[0].any()


def test_centroid_pseudo_labels_follow_shots_equations():
    # two clusters of directions; the prediction is wrong for one point, the centroids put it right
    features = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [0.1, 1.0], [-0.1, 1.0], [0.0, 0.9]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.2, 0.8]])
    labels, centroids, classes = centroid_pseudo_labels(features, probs, rounds=1)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and classes.tolist() == [0, 1]
    g = F.normalize(torch.cat([features, torch.ones(6, 1)], 1), dim=1)  # (feature, 1), L2-normalised
    assert torch.allclose(centroids[0], g[:3].mean(0)) and torch.allclose(centroids[1], g[3:].mean(0))  # Eq. 6
    c0 = (probs[:, :1] * g).sum(0) / probs[:, 0].sum()  # Eq. 4: the prediction-weighted centroid
    _, centroids0, _ = centroid_pseudo_labels(features, probs, rounds=0)
    assert torch.allclose(centroids0[0], c0)
    assert nearest_centroid(torch.tensor([[2.0, 0.0]]), centroids, classes).tolist() == [0]
    # a class no image is nearest to keeps no centroid, and is never a label
    labels, centroids, classes = centroid_pseudo_labels(features, torch.cat([probs, torch.zeros(6, 1)], 1))
    assert classes.tolist() == [0, 1] and len(centroids) == 2


# ------------------------------------------------------------------ the strong view


def test_strong_augment_is_seeded_checkpointed_and_in_range():
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    a, b = StrongAugment(seed=3), StrongAugment(seed=3)
    first = a(x)
    assert first.shape == x.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, b(x)) and not torch.equal(first, a(x))  # same seed, same draws; new draws next
    resumed = StrongAugment(seed=99)
    resumed.load_state_dict(a.state_dict())  # the generator's state travels in the checkpoint
    assert torch.equal(resumed(x), a(x))
    before = torch.get_rng_state()
    StrongAugment(seed=1)(x)
    assert torch.equal(before, torch.get_rng_state())  # the global stream is untouched
    assert (StrongAugment(seed=0, cutout=0.5)(torch.ones(2, 1, 28, 28)) == 0.5).any()  # Cutout's grey square


# ------------------------------------------------------------------ the methods


def test_registered_with_described_params_and_search_spaces():
    for name in BASELINES:
        cls = METHODS[name]
        assert cls.__doc__ and cls.search_space, name
        for key, field in cls.Params.model_fields.items():
            assert field.description, f"{name}.{key}"
        assert set(cls.search_space) <= set(cls.Params.model_fields), name
        assert (REPO / "configs" / name / "usps_to_mnist.yaml").is_file(), name
    assert not METHODS["shot"].uses_source and METHODS["shot"].requires_trained_model


def test_bad_layers_are_one_line_config_errors():
    backbone = build_backbone("dann_digits", 10, head_layers=3)
    with pytest.raises(ConfigError, match="unknown layer 'fc9'"):
        build_method("coral", backbone, {"layers": ["fc9"]})
    with pytest.raises(ConfigError, match="no bottleneck"):
        build_method("dan", backbone, {"layers": ["bottleneck"]})


def _digits_batches(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        Batch(torch.rand(8, 3, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)),
        Batch(torch.rand(8, 3, 28, 28, generator=gen)),
    )


@pytest.mark.parametrize(
    "name, params, term",
    [
        ("coral", {"weight": 0.7}, "coral"),
        ("coral", {"weight": 0.7, "layers": ["features", "logits"]}, "coral"),
        ("dan", {"weight": 0.7}, "mmd"),
        ("dan", {"weight": 0.7, "joint": True}, "mmd"),
        ("dan", {"weight": 0.7, "estimator": "linear"}, "mmd"),
        ("entropy_min", {"weight": 0.7}, "entropy"),
        ("self_training", {"weight": 0.7, "threshold": 0.0}, "pseudo"),
    ],
)
def test_a_step_is_ce_plus_weight_times_the_term_and_reaches_the_features(name, params, term):
    torch.manual_seed(0)
    method = build_method(name, build_backbone("dann_digits", 10, head_layers=3), params)
    source, target = _digits_batches()
    losses = method.training_step(source, target, 0.5)
    assert losses["loss"].item() == pytest.approx((losses["ce"] + 0.7 * losses[term]).item(), rel=1e-6)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(method.backbone(source.x), source.y).item(), rel=1e-6)
    (grad,) = torch.autograd.grad(losses[term], method.backbone.features.features.conv1.weight)
    assert grad.abs().sum() > 0  # the alignment term trains the feature extractor


def test_shot_freezes_the_hypothesis_and_labels_by_centroids():
    torch.manual_seed(0)
    backbone = build_backbone("dann_digits", 10, head_layers=3)
    method = build_method("shot", backbone, {})
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.head.fc3.weight", "backbone.head.fc3.bias"}  # the last Linear, SHOT's h
    assert all(g["params"] for g in method.param_groups(0.01))
    _, target = _digits_batches()
    method.on_train_epoch_start(0, [target.x[:5], (target.x[5:], None)])
    g = method.embed(target.x)
    _, centroids, classes = centroid_pseudo_labels(g, method.hypothesis(g).softmax(1))
    assert torch.allclose(method.centroids, centroids) and torch.equal(method.classes, classes)
    losses = method.training_step(None, target, 0.0)
    logits = method.hypothesis(g)
    pl = F.cross_entropy(logits, nearest_centroid(g, centroids, classes))
    expected = mean_entropy(logits) + diversity(logits) + 0.3 * pl
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    whole = build_method("shot", build_backbone("dann_digits", 10, head_layers=3), {"frozen": "head"})
    assert not any(p.requires_grad for p in whole.backbone.head.parameters())


# ------------------------------------------------------------------ on real digits


SHORT = ["--data.limit=2000", "--train.eval_every=100", "--train.validators=[]", "--train.progress=false"]


def _config(out, data_root, name, method, extra=()):
    tree = read_yaml(REPO / "configs" / "dann" / "usps_to_mnist.yaml")
    return build_config(
        [],
        [f"--experiment.output_dir={out}", f"--data.root={data_root}", *SHORT, f"--experiment.name={name}", *extra],
        start={**tree, "method": method},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, params",
    [
        ("coral", {"weight": 0.0}),
        ("dan", {"weight": 0.0}),
        ("entropy_min", {"weight": 0.0}),
        ("self_training", {"weight": 0.0}),
    ],
)
def test_weight_zero_trains_exactly_as_source_only(tmp_path, data_root, name, params):
    """Same network, data, optimiser and seed: with its weight at 0 a method's steps are source-only's, to the
    bit (so the slow tests' gains vanish at weight 0: at their full budget the accuracies are equal too)."""
    source = brief_backbone(tmp_path, data_root, {"name": "source_only"}, "source_only")  # tests/short_digits.py
    off = brief_backbone(tmp_path, data_root, {"name": name, **params}, name)
    assert off[0] == source[0]
    for key, value in source[1].items():
        assert torch.equal(off[1][key], value), key


# USPS -> MNIST, configs/dann/usps_to_mnist.yaml's set-up (the DANN paper's digits network, SGD lr 0.02 annealed)
# with its method section replaced, every split cut to 2,000 evenly spaced images (as tests/test_adversarial.py's
# SHORT_DIGITS), but 10 epochs of 31 steps of 64 + 64 images (310 steps, half DANN's test budget), one
# evaluation at the end. Source-only is the same file with method `source_only`: same data, network,
# optimiser, budget and seed. Measured on 2 shared CPU cores, one thread, target accuracy %, source-only ->
# method (gain), each method at its defaults (configs/<method>/usps_to_mnist.yaml):
#                 seed 0                 seed 1                 seed 2
#   source-only   50.9                   45.3                   42.7
#   coral         65.4 (+14.5)           63.4 (+18.2)           55.4 (+12.7)
#   dan           72.2 (+21.3)           69.6 (+24.4)           67.9 (+25.2)
# The margins are about half the smallest gain: coral 6 points, dan 10. Self-training (FixMatch, tau 0.95) and
# entropy minimisation show no reliable gain in any cheap setting tried, so they are tested for weaker, exact
# properties (their step is CE + weight * term, the term trains the features, weight 0 is source-only to the bit):
#   self_training  52.7 (+1.8)            52.1 (+6.8)            31.8 (-11.0)
#   (620 steps, seed 0: 49.4 -> 77.3, +27.8: FixMatch needs a confident source model first; at ~100 s a run it
#   is past this file's budget); entropy_min at weight 0.1, 620 steps, seed 0: 49.4 -> 49.3 (-0.2).
# With the weight at 0 every method trains exactly as source-only (test_weight_zero_trains_exactly_as_source_only:
# the same weights to the bit), so its gain at weight 0 is 0.0 at any budget.
BUDGET = ["--train.epochs=10", "--experiment.seed=0"]
MARGINS = {"coral": 0.06, "dan": 0.10}  # least gains in target accuracy (fractions)


@pytest.fixture(scope="module")
def source_only_run(tmp_path_factory, data_root):
    """The shared source-only run (and SHOT's source model: its checkpoint)."""
    out = tmp_path_factory.mktemp("baselines_short_digits")
    cfg = _config(out, data_root, "source_only", {"name": "source_only"}, BUDGET)
    before = torch.get_num_threads()  # module scope: the function-scoped one_thread fixture cannot serve here
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, overwrite=True)
        summary = trainer.fit()
    finally:
        torch.set_num_threads(before)
    return out, cfg, summary, trainer.run_dir / "checkpoints" / "last.pt"


def _check_gain(source_only, method, name, margin):
    assert source_only["final_source_val_acc"] > 0.9
    assert source_only["splits"]["target_eval"]["fingerprint"] == method["splits"]["target_eval"]["fingerprint"]
    gain = method["target_acc"] - source_only["target_acc"]
    assert gain >= margin, (
        f"{name} {method['target_acc']:.4f} vs source-only {source_only['target_acc']:.4f} on "
        f"the target: gain {gain:.4f} < {margin}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MARGINS))
def test_a_short_digits_run_where_the_method_beats_source_only(source_only_run, data_root, name):
    out, source_cfg, source_only, _ = source_only_run
    method_tree = read_yaml(REPO / "configs" / name / "usps_to_mnist.yaml")["method"]
    cfg = _config(out, data_root, name, method_tree, BUDGET)
    a, b = source_cfg.model_dump(), cfg.model_dump()
    assert {k for k in a if a[k] != b[k]} == {"experiment", "method"}  # same data, network, optimiser, budget
    summary = Trainer(cfg, overwrite=True).fit()
    assert summary["steps"] == source_only["steps"] == 310 and not summary["reads_target_labels"]
    _check_gain(source_only, summary, name, MARGINS[name])


class _Forbidden(torch.utils.data.Dataset):
    """A source training split that counts reads and refuses them: a source-free run must never draw one."""

    def __init__(self, size: int):
        self.size, self.reads = size, 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        self.reads += 1
        raise AssertionError("SHOT read a source training image")


# SHOT from the shared source-only run's checkpoint (that seed's source model), configs/shot/usps_to_mnist.yaml
# (optim.lr 0.002: at the source run's 0.02 the features drift into a confident, balanced but wrong labelling,
# 23.3% on seed 0), 10 epochs of 31 steps of 64 target images, no source batch. Measured as above, target
# accuracy %, the source model -> SHOT (gain):
#   seed 0  50.9 -> 71.9 (+21.0)   seed 1  45.3 -> 71.4 (+26.2)   seed 2  42.7 -> 54.4 (+11.7)
# (seed 0 with beta 0, information maximisation alone: 73.5). The margin, 6 points, is about half the least gain.
# With beta and im_weight at 0 there is no loss to descend: the weights, and the accuracy, stay the source model's.
SHOT_MARGIN = 0.06


@pytest.mark.slow
def test_shot_beats_its_source_model_without_reading_a_source_image(source_only_run, data_root, monkeypatch):
    from shiftlab.engine import loop

    out, source_cfg, source_only, weights = source_only_run
    forbidden = []

    def build_pair(cfg, method_cls):  # the real pair, its source training split replaced by one that refuses reads
        pair = real_build_pair(cfg, method_cls)
        forbidden.append(_Forbidden(len(pair.source_train)))
        return dataclasses.replace(pair, source_train=forbidden[-1])

    real_build_pair = loop.build_pair
    monkeypatch.setattr(loop, "build_pair", build_pair)
    cfg = build_config(
        [REPO / "configs" / "shot" / "usps_to_mnist.yaml"],
        [  # its own lr, 0.002
            f"--experiment.output_dir={out}",
            f"--data.root={data_root}",
            *SHORT,
            *BUDGET,
            "--experiment.name=shot",
            f"--model.weights={weights}",
        ],
    )
    assert (cfg.data, cfg.model.name, cfg.optim.lr) == (source_cfg.data, source_cfg.model.name, 0.002)
    trainer = Trainer(cfg, overwrite=True)
    assert trainer.loaders.source is None and trainer.loaders.batches(0, 0) is None
    summary = trainer.fit()
    assert forbidden[0].reads == 0 and summary["steps"] > 0
    _check_gain(source_only, summary, "shot", SHOT_MARGIN)

    still = _config(
        out,
        data_root,
        "shot_weight_0",
        {"name": "shot", "beta": 0.0, "im_weight": 0.0},
        ["--train.epochs=1", "--train.steps_per_epoch=5", f"--model.weights={weights}"],
    )
    assert Trainer(still, overwrite=True).fit()["target_acc"] == source_only["target_acc"]
