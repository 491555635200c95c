"""The adversarial family: gradient reversal, discriminators and their losses, DANN's two forms, DANNP's
conditioning and entropy weights, HDA, ToAlign's positive features, the inverse learning-rate schedule,
the DANN digits network, the Office-Home configs end to end on a small synthetic dataset, and a short
USPS -> MNIST run where DANN beats source-only on the target."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from short_digits import same_setting, short_source_only, short_tree, train_short

from shiftlab.config import OptimConfig, build_config
from shiftlab.engine.loop import Trainer
from shiftlab.engine.optim import ManagedOptimizer, build_optimizers, lr_factor, schedule_factor
from shiftlab.errors import ConfigError
from shiftlab.losses import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy
from shiftlab.methods import Batch, build_method
from shiftlab.methods.dann import DANN
from shiftlab.models import build_backbone
from shiftlab.nn import (
    DomainDiscriminator,
    GradientReversal,
    RandomizedMultilinearMap,
    discriminator_from_head,
    ganin_lambda,
    multilinear_map,
    positive_features,
    reverse_gradient,
)

REPO = Path(__file__).resolve().parents[1]
TOALIGN = sorted((REPO / "configs" / "toalign").glob("office_home_*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------ gradient reversal


def _numerical_grad(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function, in double."""
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        grad.view(-1)[i] = (fn(x + step.view_as(x)) - fn(x - step.view_as(x))) / (2 * eps)
    return grad


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 2, dtype=torch.double)
    smooth = lambda v: torch.tanh(v @ w).pow(2).sum()  # noqa: E731
    assert torch.equal(reverse_gradient(x, 0.37), x)
    # with coefficient -1 the backward pass is +grad, the true derivative of the identity: gradcheck must pass
    assert torch.autograd.gradcheck(lambda v: torch.tanh(reverse_gradient(v, -1.0) @ w), (x,))
    for coeff in (0.37, 1.0, 2.5):
        (grad,) = torch.autograd.grad(smooth(reverse_gradient(x, coeff)), x)
        torch.testing.assert_close(grad, -coeff * _numerical_grad(smooth, x.detach()), rtol=1e-6, atol=1e-8)


def test_lambda_schedule_and_fixed_coefficient():
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert ganin_lambda(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert ganin_lambda(0.1, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.1)) - 1)
    values = [ganin_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)
    scheduled, fixed = GradientReversal(None, gamma=10.0), GradientReversal(0.3)
    assert scheduled.coefficient(0.5) == pytest.approx(ganin_lambda(0.5)) and fixed.coefficient(0.9) == 0.3
    x = torch.ones(2, requires_grad=True)
    scheduled(x, progress=0.5).sum().backward()
    assert torch.allclose(x.grad, torch.full((2,), -ganin_lambda(0.5)))


# ------------------------------------------------------------------ discriminators and their losses


def test_domain_labels_and_losses():
    zero = torch.zeros(4, 1)
    assert domain_bce(zero, SOURCE).item() == pytest.approx(math.log(2))
    assert (SOURCE, TARGET) == (0.0, 1.0)
    sure = torch.full((4,), 20.0)  # sigmoid -> 1: "target"
    assert domain_bce(sure, TARGET).item() < 1e-6 and domain_bce(sure, SOURCE).item() == pytest.approx(20.0, rel=1e-4)
    logits = torch.tensor([0.0, 2.0])
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros(2), reduction="none")
    weighted = domain_bce(logits, SOURCE, torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((per_sample[0] + 3 * per_sample[1]).item() / 4)

    torch.manual_seed(0)  # trained on separable domains, the discriminator says 0 for source and 1 for target
    source, target = torch.randn(32, 5) - 2, torch.randn(32, 5) + 2
    disc = DomainDiscriminator(5, hidden=(16,), dropout=0.0)
    opt = torch.optim.SGD(disc.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        (domain_bce(disc(source), SOURCE) + domain_bce(disc(target), TARGET)).backward()
        opt.step()
    assert disc(source).sigmoid().max() < 0.5 < disc(target).sigmoid().min()


def test_discriminator_architectures():
    dann = DomainDiscriminator(256)
    assert [type(m).__name__ for m in dann] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert [m.out_features for m in dann if isinstance(m, torch.nn.Linear)] == [1024, 1024, 1]
    digits = DomainDiscriminator(768, hidden=[100], dropout=0.0)  # the DANN paper's digits domain classifier
    assert [type(m).__name__ for m in digits] == ["Linear", "ReLU", "Linear"] and digits[0].in_features == 768

    alexnet = build_backbone("alexnet", 7, head_layers=3)
    branch = discriminator_from_head(alexnet.head)  # the PACS assignment's G_d: G_y's layers and weights, 1 output
    assert [type(m).__name__ for m in branch] == [type(m).__name__ for m in alexnet.head]
    assert torch.equal(branch[1].weight, alexnet.head[1].weight) and torch.equal(
        branch[4].weight, alexnet.head[4].weight
    )
    assert branch[1].weight.data_ptr() != alexnet.head[1].weight.data_ptr() and branch[6].out_features == 1
    method = build_method("dann", alexnet, {})
    assert method.discriminator[6].out_features == 1  # "auto" copies a multi-layer head
    assert isinstance(build_method("dann", build_backbone("resnet18", 7), {}).discriminator, DomainDiscriminator)


# ------------------------------------------------------------------ DANN: joint and three-step


def _batches(size: int, classes: int, seed: int = 0) -> tuple[Batch, Batch]:
    gen = torch.Generator().manual_seed(seed)
    return (
        Batch(torch.rand(6, 3, size, size, generator=gen), torch.randint(0, classes, (6,), generator=gen)),
        Batch(torch.rand(6, 3, size, size, generator=gen)),
    )


@pytest.mark.parametrize(
    "model, size, extra",
    [("dann_digits", 28, {"hidden": [16], "lambda_": 0.7}), ("resnet18", 32, {"hidden": [32, 32]})],
)
def test_three_step_and_joint_forms_give_the_same_gradients(model, size, extra):
    torch.manual_seed(0)
    backbone = build_backbone(model, 5, head_layers=3 if model == "dann_digits" else 1)
    joint = build_method("dann", backbone, extra).double()  # double: the two sums of gradients round alike
    three = build_method("dann", copy.deepcopy(backbone), {**extra, "form": "three_step"}).double()
    three.discriminator.load_state_dict(joint.discriminator.state_dict())
    assert type(joint) is type(three) is DANN and joint.automatic_optimization and not three.automatic_optimization
    three._optimizers = {
        "main": ManagedOptimizer(
            "main", torch.optim.SGD(three.parameters(), lr=0.0), torch.amp.GradScaler("cpu", enabled=False)
        )
    }
    source, target = _batches(size, 5)
    source, target = Batch(source.x.double(), source.y), Batch(target.x.double())
    joint.train(), three.train()
    torch.manual_seed(1)  # same dropout masks: both forms draw them in the same order
    losses = joint.training_step(source, target, progress=0.4)
    losses["loss"].backward()
    torch.manual_seed(1)
    stepped = three.training_step(source, target, progress=0.4)
    assert stepped["loss"].item() == pytest.approx(losses["loss"].item(), rel=1e-12)
    grads = {k: p.grad for k, p in three.named_parameters()}
    for name, p in joint.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert any(k.startswith("discriminator") for k, g in grads.items() if g.abs().sum() > 0)


def test_three_step_form_trains_through_the_loop(tmp_path):
    cfg = build_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"--experiment.output_dir={tmp_path}",
            "--experiment.name=three",
            "--method.name=dann",
            "--method.form=three_step",
            "--method.lambda_=0.5",
            "--method.hidden=[32]",
            "--data.limit=64",
            "--data.batch_size=16",
            "--train.epochs=1",
            "--train.steps_per_epoch=2",
            "--train.progress=false",
            "--train.validators=[]",
        ],
    )
    trainer = Trainer(cfg)
    assert not trainer.method.automatic_optimization
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    trainer.fit()
    moved = [k for k, v in trainer.method.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("discriminator") for k in moved) and any(k.startswith("backbone.features") for k in moved)
    with open(tmp_path / "three" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["train_lambda"]) == 0.5 and {"train_d_source", "train_d_target", "train_ce"} <= set(row)


# ------------------------------------------------------------------ ToAlign, DANNP, HDA


def test_toalign_positive_features_keep_the_norm_and_send_no_gradient_to_the_classifier():
    torch.manual_seed(0)
    features = torch.rand(5, 8, requires_grad=True)
    classifier = torch.nn.Linear(8, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    positive = positive_features(features, classifier.weight[labels])
    torch.testing.assert_close(positive.norm(dim=1), features.norm(dim=1))
    w = classifier.weight[labels].detach()
    scale = features.norm(dim=1, keepdim=True) / (w * features).norm(dim=1, keepdim=True)
    torch.testing.assert_close(positive, scale * w * features)  # f_p = s * (w_y ⊙ f)
    positive.sum().backward()
    assert classifier.weight.grad is None and features.grad is not None


def test_dannp_entropy_weights_and_conditioning():
    uniform, confident = torch.full((2, 4), 0.25), torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    torch.testing.assert_close(prediction_entropy(uniform), torch.full((2,), math.log(4)))
    torch.testing.assert_close(entropy_weights(uniform), torch.full((2,), 1.25))  # CDAN+E: 1 + exp(-log 4)
    torch.testing.assert_close(entropy_weights(uniform, offset=0.0), torch.full((2,), 0.25))  # the ToAlign code
    torch.testing.assert_close(entropy_weights(confident), torch.full((2,), 2.0))
    features, probs = torch.rand(3, 5), torch.softmax(torch.randn(3, 4), 1)
    torch.testing.assert_close(multilinear_map(features, probs), torch.einsum("bc,bd->bcd", probs, features).flatten(1))
    assert RandomizedMultilinearMap(5, 4, 16)(features, probs).shape == (3, 16)
    for condition, width in (("prediction", 4), ("multilinear", 4 * 512), ("randomized", 64), ("features", 512)):
        method = build_method("dannp", build_backbone("resnet18", 4), {"condition": condition, "randomized_dim": 64})
        assert method.discriminator[0].in_features == width, condition


def test_hda_subtracts_its_heuristic_heads_and_toalign_uses_their_weights():
    torch.manual_seed(0)
    method = build_method("hda", build_backbone("resnet18", 4), {"heads": 3, "toalign": True})
    features, labels = torch.rand(2, 512), torch.tensor([3, 1])
    heads = sum(h(features) for h in method.heuristics)
    torch.testing.assert_close(method.classify(features), method.backbone.head(features) - heads)
    rows = method.backbone.classifier.weight[labels] - sum(h.weight[labels] for h in method.heuristics)
    torch.testing.assert_close(method.class_weights(labels), rows)
    assert method.backbone.classifier.weight.abs().max() < 0.05  # HDA's initial state: F starts near zero
    source, target = _batches(32, 4)
    losses = method.training_step(source, target, progress=0.5)
    assert set(losses) == {"loss", "ce", "d_source", "d_target", "acc", "heuristic"}
    losses["loss"].backward()
    assert all(h.weight.grad is not None for h in method.heuristics)
    with pytest.raises(ConfigError, match="toalign needs a head that is one Linear"):
        build_method("dannp", build_backbone("dann_digits", 10, head_layers=3), {"toalign": True})


# ------------------------------------------------------------------ learning-rate schedule


def test_inverse_schedule_keys():
    assert lr_factor("inverse", 1) == pytest.approx(11**-0.75)  # today's default: alpha 10, beta 0.75
    assert lr_factor("inverse", 0.5, alpha=4, beta=0.5) == pytest.approx(3**-0.5)
    default = OptimConfig()
    assert (default.alpha, default.beta, default.inverse_per) == (10.0, 0.75, "progress")
    assert schedule_factor("inverse", 500, 1000, default) == pytest.approx(6**-0.75)
    per_step = OptimConfig(schedule="inverse", inverse_per="step", alpha=5e-4, beta=0.75, lr=1e-3)
    assert schedule_factor("inverse", 2000, 8000, per_step) == pytest.approx(
        2**-0.75
    )  # the per-step form: (1 + 5e-4 i)^-0.75
    param = torch.nn.Parameter(torch.zeros(1))
    optimizers, schedulers = build_optimizers({"main": [{"params": [param]}]}, per_step, total_steps=10)
    for _ in range(4):
        optimizers["main"].step(), schedulers["main"].step()
    assert optimizers["main"].param_groups[0]["lr"] == pytest.approx(1e-3 * (1 + 5e-4 * 4) ** -0.75)
    cfg = build_config([REPO / "configs" / "toalign" / "base.yaml"], ["--optim.beta=0.5"])
    # ToAlign's configs follow the authors' code (microsoft/UDA): (1 + 10 p)^-0.75, p = iteration / 8,000
    assert (cfg.optim.inverse_per, cfg.optim.alpha, cfg.optim.beta) == ("progress", 10.0, 0.5)
    assert schedule_factor("inverse", 2000, 8000, cfg.optim.model_copy(update={"beta": 0.75})) == pytest.approx(
        (1 + 10 * 2000 / 8000) ** -0.75
    )
    with pytest.raises(ConfigError, match="inverse_per"):
        build_config([], ["--optim.inverse_per=epoch"])


# ------------------------------------------------------------------ backbone and configs


def test_dann_digits_network_is_the_papers():
    model = build_backbone("dann_digits", 10, head_layers=3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (48, (5, 5))]
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [100, 100, 10]
    for size in (28, 32):  # the paper's 28 px and the digits pipeline's default 32 px
        assert model.forward_features(torch.rand(2, 3, size, size)).shape == (2, 48 * 4 * 4)
    assert build_backbone("dann_digits", 10).feature_dim == 100  # head_layers=1: FC 100-100 in the features


def _office_home(root: Path, per_class: int = 6) -> Path:
    """``root/OfficeHome/{Art,Clipart}/<class>/img_XX.jpg``: 16 px JPEGs of three of its 65 classes."""
    for d, domain in enumerate(("Art", "Clipart")):
        for c, cls in enumerate(("Alarm_Clock", "Backpack", "Batteries")):
            folder = root / "OfficeHome" / domain / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (16, 16), (70 * c + 20, 15 * i, 90 * d)).save(folder / f"img_{i:02d}.jpg")
    return root


@pytest.mark.parametrize("config", TOALIGN, ids=[p.stem for p in TOALIGN])
def test_office_home_configs_run_end_to_end(tmp_path, config):
    root = _office_home(tmp_path / "data")
    cfg = build_config(
        [config],
        [
            f"--data.root={root}",
            f"--experiment.output_dir={tmp_path / 'runs'}",
            "--data.image_size=32",
            "--model.name=resnet18",
            "--model.pretrained=none",
            "--train.epochs=1",
            "--train.steps_per_epoch=2",
            "--data.batch_size=4",
            "--data.num_workers=0",
            "--train.eval_every=1",
            "--train.progress=false",
            "--train.validators=[]",
        ],
    )
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items() if v.is_floating_point()}
    summary = trainer.fit()
    assert summary["method"] == cfg.method.name and summary["steps"] == 2
    # both players learned: the features (through the reversed domain gradient too) and the discriminator
    after = trainer.method.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"backbone", "discriminator"} <= moved, moved
    last = trainer.history[-1]
    assert last["train_d_source"] > 0 and last["train_d_target"] > 0 and last["train_ce"] > 0
    # the target accuracy is measured: the 18 Clipart images, 3 classes, so a multiple of 1/18
    assert summary["splits"]["target_eval"]["size"] == 18
    assert round(summary["final_target_acc"] * 18, 6) == round(summary["final_target_acc"] * 18)
    row = json.loads((Path(cfg.experiment.output_dir) / cfg.experiment.name / "summary.json").read_text())
    assert row["config"]["method"]["toalign"] == cfg.method.model_extra["toalign"]
    # the authors' code's decay (microsoft/UDA inv_lr_scheduler): (1 + 10 p)^-0.75, p = iteration / total
    assert (row["config"]["optim"]["inverse_per"], row["config"]["optim"]["alpha"]) == ("progress", 10.0)


def test_dann_runs_on_mnist_to_mnist_m(tmp_path, data_root):
    """A few steps of the digits config on the real data; whether DANN beats source-only on MNIST-M needs a
    budget far beyond a unit test on two busy cores (see the issue's experiments; USPS -> MNIST does not:
    the last test of this module)."""
    cfg = build_config(
        [REPO / "configs" / "dann" / "mnist_to_mnist_m.yaml"],
        [
            f"--data.root={data_root}",
            f"--experiment.output_dir={tmp_path}",
            "--data.limit=256",
            "--train.epochs=1",
            "--train.steps_per_epoch=3",
            "--train.progress=false",
            "--train.validators=[]",
        ],
    )
    trainer = Trainer(cfg)
    assert trainer.method.discriminator[0].in_features == 768 and trainer.pair.target == "mnist_m"
    discriminator = [p.detach().clone() for p in trainer.method.discriminator.parameters()]
    features = [p.detach().clone() for p in trainer.method.backbone.features.parameters()]
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["selection"] == "last"
    # three steps changed both the discriminator and the shared features (the reversed gradient reaches them)
    assert any(not torch.equal(a, b) for a, b in zip(discriminator, trainer.method.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(features, trainer.method.backbone.features.parameters()))
    row = trainer.history[-1]
    # an untrained discriminator is near chance: each domain's BCE is close to ln 2
    assert 0.4 < row["train_d_source"] < 1.0 and 0.4 < row["train_d_target"] < 1.0
    assert summary["splits"]["target_eval"]["size"] == 256 and 0 < summary["final_target_acc"] < 1


# ------------------------------------------------------------------ a short digits run beats source-only

# USPS -> MNIST (configs/dann/usps_to_mnist.yaml: the DANN paper's digits network at 28 px, SGD lr 0.02
# annealed, Ganin's lambda schedule, G_d one hidden layer of 100 with dropout 0.5), every split cut to 2,000
# evenly spaced images (the target: a fixed 2,000-image slice of MNIST's test set), 620 steps of 64 + 64
# images (20 passes over the 2,000 source images), one evaluation at the end. Source-only: the same file with
# its method section replaced, so the same network, optimiser, data, budget and seed (tests/short_digits.py: that
# run is trained once per session and shared with tests/test_baselines_discriminative.py).
# Measured on 2 shared CPU cores, one thread, target accuracy % source-only -> DANN (gain):
#   seed 0  49.3 -> 68.0 (+18.7, the test's seed)   seed 1  46.4 -> 69.6 (+23.2)   seed 2  45.8 -> 67.7 (+21.9)
#   seed 3  48.1 -> 73.0 (+24.9)                     seed 4  49.4 -> 69.5 (+20.1)
# (with 310 steps seed 0 gained only 5.0 points: 51.0 -> 56.0, hence 620). The margin, 9 points, is half the
# smallest gain, and fails when the gradient reversal is off: --method.lambda_=0 gives 49.3 / 46.4 on seeds
# 0 / 1, source-only's numbers to the image (gain 0.0).
SHORT_MARGIN = 0.09  # the least gain in target accuracy (a fraction: 9 points)


@pytest.fixture(scope="module")
def short_digits_runs(tmp_path_factory, data_root):
    out, source_cfg, source_only = short_source_only(tmp_path_factory, data_root)  # tests/short_digits.py
    dann_cfg, dann = train_short(out, data_root, short_tree("dann"), "dann")
    return source_cfg, dann_cfg, source_only, dann


@pytest.mark.slow
def test_a_short_digits_run_where_dann_beats_source_only(short_digits_runs):
    source_cfg, dann_cfg, source_only, dann = short_digits_runs
    same_setting(source_cfg, dann_cfg, source_only, dann)  # same data, network, optimiser, budget and target images
    assert (source_only["method"], dann["method"]) == ("source_only", "dann") and not dann["reads_target_labels"]
    assert dann_cfg.method.lambda_ is None  # Ganin's schedule
    assert source_only["final_source_val_acc"] > 0.9 and dann["final_source_val_acc"] > 0.9  # real classifiers
    gain = dann["target_acc"] - source_only["target_acc"]
    assert gain >= SHORT_MARGIN, (
        f"DANN {dann['target_acc']:.4f} vs source-only {source_only['target_acc']:.4f} "
        f"on the target: gain {gain:.4f} < {SHORT_MARGIN}"
    )
