"""The standard discriminative baselines of issue 30: CDAN / CDAN+E, MDD, MCC (alone and added to DANN / CDAN)
and BNM. Their losses on synthetic tensors against values worked out by hand or by a direct formula, the
pieces they are built on, weight 0 equal to source-only, and short USPS -> MNIST runs where each beats
source-only (slow)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from short_digits import brief_backbone, same_setting, short_source_only, short_tree, train_short

from shiftlab.losses import (
    SOURCE,
    TARGET,
    batch_nuclear_norm,
    class_confusion,
    domain_bce,
    entropy_weights,
    margin_disparity_loss,
    minimum_class_confusion,
)
from shiftlab.methods import Batch, build_method
from shiftlab.models import build_backbone
from shiftlab.nn import (
    ConditionalAdversary,
    RandomizedMultilinearMap,
    cdan_condition,
    multilinear_map,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _batches(classes: int = 10, seed: int = 0) -> tuple[Batch, Batch]:
    gen = torch.Generator().manual_seed(seed)
    return (
        Batch(torch.rand(8, 3, 28, 28, generator=gen), torch.randint(0, classes, (8,), generator=gen)),
        Batch(torch.rand(8, 3, 28, 28, generator=gen)),
    )


# ------------------------------------------------------------------ the losses, by hand and by direct formulas


def test_mcc_loss_by_hand_and_by_the_papers_sums():
    # uniform predictions: every entry of C~ is 1/C, the off-diagonal mass (C - 1) / C
    assert minimum_class_confusion(torch.zeros(5, 4)).item() == pytest.approx(3 / 4)
    # confident predictions, one class each: C is diagonal, no confusion
    assert minimum_class_confusion(torch.eye(3) * 100).item() == pytest.approx(0.0, abs=1e-6)
    # random logits against the paper's sums written out element by element (ECCV 2020, Eqs. 1-6), T = 2.5
    torch.manual_seed(0)
    logits, T = torch.randn(6, 4) * 3, 2.5
    B, C = logits.shape
    y = [[math.exp(logits[i, j] / T) for j in range(C)] for i in range(B)]
    y = [[v / sum(row) for v in row] for row in y]
    h = [-sum(v * math.log(v) for v in row) for row in y]
    w = [B * (1 + math.exp(-hi)) / sum(1 + math.exp(-hk) for hk in h) for hi in h]
    corr = [[sum(y[i][j] * w[i] * y[i][k] for i in range(B)) for k in range(C)] for j in range(C)]
    norm = [[corr[j][k] / sum(corr[m][k] for m in range(C)) for k in range(C)] for j in range(C)]
    expected = sum(norm[j][k] for j in range(C) for k in range(C) if j != k) / C
    assert minimum_class_confusion(logits, T).item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(class_confusion(logits, T), torch.tensor(norm))
    # the certainty weights are detached (they rank examples, they are not trained)
    z = logits.clone().requires_grad_()
    minimum_class_confusion(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_bnm_loss_by_hand_and_against_the_nuclear_norm():
    # uniform predictions, B = C = 4: A = 1/4 everywhere, rank one, its one singular value sqrt(16) / 4 = 1
    assert batch_nuclear_norm(torch.zeros(4, 4)).item() == pytest.approx(-1 / 4)
    # three confident predictions of three different classes: A ~ identity, ||A||_* = 3, over B = 3
    assert batch_nuclear_norm(torch.eye(3) * 100).item() == pytest.approx(-1.0, abs=1e-5)
    # ... and of one class only: rank one, ||A||_* = sqrt(3): BNM prefers diverse predictions
    assert batch_nuclear_norm(torch.tensor([[100.0, 0, 0]] * 3)).item() == pytest.approx(-math.sqrt(3) / 3, abs=1e-5)
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    loss = batch_nuclear_norm(logits)
    expected = -torch.linalg.matrix_norm(logits.detach().softmax(1), ord="nuc") / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_mdd_loss_by_hand():
    # f predicts class 0 on the source image and class 1 on the target image
    f_source, f_target = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    adv_source, adv_target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p_source = math.exp(1) / (math.exp(1) + 1)  # f' gives f's source label this probability
    p_target = math.exp(1) / (math.exp(1) + 1)  # ... and f's target label this one
    expected = 4 * -math.log(p_source) + -math.log(1 - p_target)  # gamma * CE(f', f) - log(1 - softmax)
    assert margin_disparity_loss(f_source, f_target, adv_source, adv_target, margin=4).item() == pytest.approx(expected)
    # three classes, against log(1 - softmax) written directly; the labels come from f, never its gradient
    torch.manual_seed(0)
    fs, ft = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    adv_s, adv_t = torch.randn(5, 3), torch.randn(5, 3)
    ys, yt = fs.argmax(1), ft.argmax(1)
    direct = 2 * F.cross_entropy(adv_s, ys) - (1 - adv_t.softmax(1)[torch.arange(5), yt]).log().mean()
    loss = margin_disparity_loss(fs, ft, adv_s, adv_t, margin=2)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5)
    assert not loss.requires_grad  # only f' (here plain tensors) is trained by it
    # f' agreeing with f on the target to within float precision: the log-space term stays finite
    sure = margin_disparity_loss(fs, torch.tensor([[0.0, 200.0]]), adv_s, torch.tensor([[0.0, 200.0]]))
    assert math.isfinite(sure.item()) and sure.item() > 150


def test_cdan_domain_loss_against_a_direct_formula():
    torch.manual_seed(0)
    features, logits = torch.rand(6, 5), torch.randn(6, 3)
    adversary = ConditionalAdversary(5, 3, "multilinear", hidden=[7], dropout=0.0, lambda_=1.0, entropy=True)
    probs = logits.softmax(1)
    d = adversary.discriminator(torch.einsum("bc,bd->bcd", probs, features).flatten(1)).squeeze(1)
    w = 1 + torch.exp((probs * probs.log()).sum(1))  # CDAN+E, Eq. 9: 1 + exp(-H(g))
    bce = F.binary_cross_entropy_with_logits(d, torch.ones(6), reduction="none")
    expected = (w * bce).sum() / w.sum()
    got = adversary.domain_loss(features, logits, TARGET, progress=1.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() == pytest.approx(domain_bce(d, TARGET, entropy_weights(probs)).item(), rel=1e-5)
    torch.testing.assert_close(multilinear_map(features, probs), torch.einsum("bc,bd->bcd", probs, features).flatten(1))
    plain = ConditionalAdversary(5, 3, "features", hidden=[7], dropout=0.0)
    assert plain.domain_loss(features, logits, SOURCE, 1.0).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(plain.discriminator(features).squeeze(1), torch.zeros(6)).item()
    )


# ------------------------------------------------------------------ the methods on their pieces


def test_cdan_picks_the_randomized_map_above_4096_and_reverses_the_gradient():
    assert cdan_condition(768, 10) == "randomized" and cdan_condition(100, 10) == "multilinear"  # 7,680 vs 1,000
    assert cdan_condition(768, 10, randomized=False) == "multilinear" and cdan_condition(10, 3, True) == "randomized"
    digits = build_backbone("dann_digits", 10, head_layers=3)  # G_f: 768 conv features
    cdan = build_method("cdan", digits, {"randomized_dim": 64, "hidden": [16]})
    assert isinstance(cdan.adversary.randomized, RandomizedMultilinearMap)
    assert cdan.adversary.discriminator[0].in_features == 64
    small = build_method("cdan", build_backbone("dann_digits", 10, head_layers=2), {"entropy": True})  # 100 features
    assert small.adversary.condition == "multilinear" and small.adversary.discriminator[0].in_features == 1000
    assert small.adversary.entropy
    losses = cdan.training_step(*_batches(), progress=1.0)
    assert set(losses) == {"loss", "ce", "d_source", "d_target", "acc", "lambda"}
    torch.testing.assert_close(losses["loss"], losses["ce"] + (losses["d_source"] + losses["d_target"]) / 2)
    losses["loss"].backward()
    assert next(cdan.backbone.features.parameters()).grad.abs().sum() > 0
    assert cdan.adversary.discriminator[0].weight.grad is not None


def test_mcc_composes_with_dann_and_cdan():
    def digits():
        return build_backbone("dann_digits", 10, head_layers=3)

    alone = build_method("mcc", digits(), {})
    assert alone.adversary is None and (alone.params.mu, alone.params.temperature) == (1.0, 2.5)
    losses = alone.training_step(*_batches(), progress=0.5)
    assert set(losses) == {"loss", "ce", "mcc", "acc"}
    torch.testing.assert_close(losses["loss"], losses["ce"] + losses["mcc"])
    dann = build_method("mcc", digits(), {"base": "dann", "entropy": True})
    assert dann.adversary.condition == "features" and not dann.adversary.entropy  # DANN: features, no weighting
    cdan = build_method("mcc", digits(), {"base": "cdan", "entropy": True, "mu": 0.5, "weight": 0.3})
    assert cdan.adversary.condition == "randomized" and cdan.adversary.entropy
    losses = cdan.training_step(*_batches(), progress=0.5)
    torch.testing.assert_close(
        losses["loss"], losses["ce"] + 0.5 * losses["mcc"] + 0.3 * (losses["d_source"] + losses["d_target"]) / 2
    )


def test_mdd_auxiliary_head_is_a_fresh_copy_behind_reversal():
    torch.manual_seed(0)
    method = build_method("mdd", build_backbone("dann_digits", 10, head_layers=3), {"lambda_": 1.0})
    head, adversary = method.backbone.head, method.adversary
    assert [type(m) for m in adversary.modules()] == [type(m) for m in head.modules()]
    assert not torch.equal(next(adversary.parameters()), next(head.parameters()))  # its own weights
    source, target = _batches()
    losses = method.training_step(source, target, progress=1.0)
    assert set(losses) == {"loss", "ce", "disparity", "acc", "lambda"}
    losses["disparity"].backward()
    # f' learns to raise the disparity, the features (behind the reversal) get the opposite gradient
    features = method.backbone.forward_features(source.x).detach()
    reversed_, plain = features.clone().requires_grad_(), features.clone().requires_grad_()
    logits = method.backbone.head(features).detach()
    rev = method.reversal(reversed_, 1.0)
    margin_disparity_loss(logits, logits, adversary(rev), adversary(rev)).backward()
    margin_disparity_loss(logits, logits, adversary(plain), adversary(plain)).backward()
    torch.testing.assert_close(reversed_.grad, -plain.grad)
    assert all(p.grad is None for p in head.parameters())  # f is trained by the source cross-entropy only


@pytest.mark.parametrize(
    "name, zero",
    [
        ("cdan", {"weight": 0.0}),
        ("mdd", {"weight": 0.0}),
        ("mcc", {"mu": 0.0}),
        ("mcc", {"mu": 0.0, "base": "cdan", "weight": 0.0}),
        ("bnm", {"weight": 0.0}),
    ],
)
def test_weight_zero_gives_source_onlys_gradients(name, zero):
    source, target = _batches()
    torch.manual_seed(0)
    reference = build_method("source_only", build_backbone("dann_digits", 10, head_layers=3), {})
    torch.manual_seed(0)
    method = build_method(name, build_backbone("dann_digits", 10, head_layers=3), zero)
    reference.training_step(source, None, 1.0)["loss"].backward()
    method.training_step(source, target, 1.0)["loss"].backward()
    for (key, a), b in zip(reference.backbone.named_parameters(), method.backbone.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------ short digits runs against source-only

# USPS -> MNIST in the short setting of tests/test_adversarial.py (configs/<method>/usps_to_mnist.yaml: the DANN
# paper's digits network at 28 px, SGD lr 0.02 annealed, every split cut to 2,000 evenly spaced images, 620 steps
# of 64 + 64 images, one evaluation at the end). Source-only is the same file with its method section replaced
# (one run, shared by every method here). Measured on 2 shared CPU cores, one thread, target accuracy %,
# source-only -> method (gain), the methods at their configs' (the papers') defaults:
#   source-only   seed 0 49.4   seed 1 46.3   seed 2 45.35
#   CDAN          seed 0 66.0 (+16.6)   seed 1 62.7 (+16.4)   seed 2 61.55 (+16.2)
#   MCC           seed 0 83.15 (+33.75)   seed 1 75.05 (+28.75)   seed 2 75.9 (+30.55)
#   BNM           seed 0 80.95 (+31.55)   seed 1 74.7 (+28.4)    seed 2 79.4 (+34.05)
# Each margin is about half the smallest gain. With its weight at 0 each method trains exactly as source-only
# (test_weight_zero_trains_exactly_as_source_only_on_digits: the same weights to the bit), so its gain at
# weight 0 is 0.0 at any budget: the gain is the method's term, nothing else.
# MDD showed no clear gain in this budget (seed 0; 49.4 source-only): the paper's margin 4 -> 51.45 (+2.05),
# reversal fixed at 0.1 (its code's ceiling) 48.7, margin 2 48.45, margin 1 61.45 but source accuracy down
# to 71 % (unstable), reversal fixed at 1 or weight 3: NaN within 25 steps (the network has no BatchNorm
# bottleneck, as MDD's has). At margin 4 the logged disparity settles at 9.19 ~ 4 ln 10 from epoch 7 on: f' is
# held at chance on the source by the reversed features. Its test checks weaker properties instead: the run is
# finite and stays a classifier, and at weight 0 it is source-only to the image.
# Test times on the 2-core machine beside one sweep trial (2026-12-07): the shared source-only run 20 s, CDAN 51 s,
# MDD 31 s, MCC 29 s, BNM 29 s; the weight-0 identity runs (15 steps each, two runs) about 1.6 s apiece.
MARGINS = {"cdan": 0.08, "mcc": 0.14, "bnm": 0.14}  # least gains required (fractions): about half the least measured
ZERO = {"cdan": "weight", "mcc": "mu", "bnm": "weight", "mdd": "weight"}  # the key that turns each method's term off


@pytest.fixture(scope="module")
def short_source_only_run(tmp_path_factory, data_root):
    return short_source_only(tmp_path_factory, data_root)  # tests/short_digits.py: shared with test_adversarial.py


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cdan", "mcc", "bnm"])
def test_a_short_digits_run_beats_source_only(method, short_source_only_run, data_root):
    out, source_cfg, source_only = short_source_only_run
    cfg, adapted = train_short(out, data_root, short_tree(method), method)
    same_setting(source_cfg, cfg, source_only, adapted)
    assert adapted["method"] == method and not adapted["reads_target_labels"]
    assert adapted["final_source_val_acc"] > 0.9  # still a real classifier
    gain = adapted["target_acc"] - source_only["target_acc"]
    assert gain >= MARGINS[method], (
        f"{method} {adapted['target_acc']:.4f} vs source-only "
        f"{source_only['target_acc']:.4f} on the target: gain {gain:.4f} < {MARGINS[method]}"
    )


@pytest.mark.slow
def test_a_short_digits_mdd_run_is_stable(short_source_only_run, data_root):
    out, source_cfg, source_only = short_source_only_run
    cfg, mdd = train_short(out, data_root, short_tree("mdd"), "mdd")
    same_setting(source_cfg, cfg, source_only, mdd)
    assert mdd["final_source_val_acc"] > 0.9  # stable in this setting (the paper's margin 4)
    with open(out / "mdd" / "metrics.csv") as f:
        disparity = [float(row["train_disparity"]) for row in csv.DictReader(f)]
    assert len(disparity) == 20 and all(map(math.isfinite, disparity))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cdan", "mdd", "mcc", "bnm"])
def test_weight_zero_trains_exactly_as_source_only_on_digits(tmp_path, data_root, name):
    """Real USPS -> MNIST batches, the short setting's network, optimiser and seed, 15 steps: with its weight at
    0 (MCC: mu) a method ends with source-only's backbone to the bit and source-only's target accuracy."""
    source = brief_backbone(tmp_path, data_root, {"name": "source_only"}, "source_only")
    off = brief_backbone(tmp_path, data_root, {**short_tree(name)["method"], ZERO[name]: 0.0}, name)
    assert off[0] == source[0] and off[1].keys() == source[1].keys()
    for key, value in source[1].items():
        assert torch.equal(off[1][key], value), key
