"""Activation shaping: the operations' values, the mask ratio, module selection, the twice-called ReLU,
target-batch maps, removable hooks, the method's keys, exact resume, and a shaped PACS-slice training."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from shiftlab.checkpoints import load_checkpoint
from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.methods import Batch, build_method, method_params
from shiftlab.models import build_backbone
from shiftlab.nn import ActivationShaper, ash_b, ash_p, ash_s, binarize_and_mask, mask_only, random_mask, select_modules
from shiftlab.nn.shaping import pair_maps

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
ASH_CARTOON = REPO / "configs" / "ash" / "art_to_cartoon.yaml"


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_backbone("resnet18", 7)


def _images(n, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Probe:
    """A forward hook that keeps a copy of every output it sees (registered before the shaper: the raw
    activation; after it: the shaped one)."""

    def __init__(self, module: nn.Module):
        self.outputs: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(lambda m, i, out: self.outputs.append(out.detach().clone()))


# ------------------------------------------------------------------------------------------ operations


def test_binarize_and_mask_and_mask_only_values():
    a = torch.tensor([[-1.5, 0.0, 2.0, 3.0, 0.5]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.0, 5.0, -2.0]], dtype=torch.float64)
    out = binarize_and_mask(a, m)
    assert out.dtype == torch.float64 and out.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    assert mask_only(a, m).tolist() == [[-1.5, 0.0, 0.0, 3.0, 0.0]]
    assert binarize_and_mask(a, m > 0).tolist() == out.tolist()  # a boolean map means the same
    half = binarize_and_mask(a.to(torch.bfloat16), m)
    assert half.dtype == torch.bfloat16 and half.tolist() == out.tolist()


def test_ash_variants_on_a_known_example():
    # per sample, over all non-batch dimensions: n = 10, p = 70 -> K = 10 - round(7) = 3 values kept
    first = torch.arange(1.0, 11.0)  # keeps 8, 9, 10; s1 = 55, s2 = 27
    second = torch.tensor([5.0, -1, 0, 4, 9, 2, 2, 7, 1, 3])  # keeps 9, 7, 5; s1 = 32, s2 = 21
    a = torch.stack([first, second]).view(2, 2, 5)
    expected_p = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 8, 9, 10], [5, 0, 0, 0, 9, 0, 0, 7, 0, 0.0]])
    torch.testing.assert_close(ash_p(a, 70), expected_p.view(2, 2, 5))
    kept = expected_p != 0
    torch.testing.assert_close(ash_b(a, 70), (kept * torch.tensor([[55 / 3], [32 / 3]])).view(2, 2, 5))
    scale = torch.tensor([[math.exp(55 / 27)], [math.exp(32 / 21)]])
    torch.testing.assert_close(ash_s(a, 70), (expected_p * scale).view(2, 2, 5))
    assert torch.equal(ash_p(a, 0), a) and not ash_b(a, 100).any()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_random_mask_zero_fraction_is_the_ratio_within_sampling_error(ratio):
    n = 100_000
    torch.manual_seed(1)
    mask = random_mask(torch.empty(10, n // 10), ratio)
    assert mask.shape == (10, n // 10) and set(mask.unique().tolist()) <= {0.0, 1.0}
    zeros = (mask == 0).float().mean().item()
    assert abs(zeros - ratio) <= 4 * math.sqrt(ratio * (1 - ratio) / n), zeros
    if ratio in (0.0, 1.0):
        assert zeros == ratio


def test_random_mask_draws_from_torchs_rng():
    like = torch.empty(1000)
    torch.manual_seed(3)
    first = random_mask(like, 0.5)
    torch.manual_seed(3)
    assert torch.equal(random_mask(like, 0.5), first)  # the global RNG: what the loop checkpoints
    g = torch.Generator().manual_seed(3)
    assert torch.equal(random_mask(like, 0.5, g), random_mask(like, 0.5, torch.Generator().manual_seed(3)))


def test_target_maps_cycle_over_a_larger_source_batch():
    maps = torch.tensor([[1], [2]])
    assert pair_maps(maps, 5).flatten().tolist() == [1, 2, 1, 2, 1]
    assert pair_maps(maps, 1).flatten().tolist() == [1]


# ------------------------------------------------------------------------------------------ selection


def test_selection_by_type_name_and_frequency_on_resnet18(resnet18):
    features = resnet18.features
    convs = select_modules(features, types="Conv2d")
    assert len(convs) == 20 and convs[0][0] == "conv1"  # conv1, 16 in the blocks, 3 downsample convs
    assert all(isinstance(m, nn.Conv2d) for _, m in convs)
    assert len(select_modules(features, types=["BatchNorm2d"])) == 20
    relus = [n for n, _ in select_modules(features, types="ReLU")]
    assert relus == ["relu"] + [f"layer{i}.{j}.relu" for i in range(1, 5) for j in range(2)]
    assert select_modules(features, types="Conv2d", every=2) == convs[::2]
    assert [n for n, _ in select_modules(features, types="Conv2d", every=2)][:4] == [
        "conv1",
        "layer1.0.conv2",
        "layer1.1.conv2",
        "layer2.0.conv2",
    ]
    # names: any order in, registration order out; the study's names resolve inside the feature extractor
    chosen = select_modules(features, names="layer3.0.downsample.0, conv1,layer1.1.relu")
    assert [n for n, _ in chosen] == ["conv1", "layer1.1.relu", "layer3.0.downsample.0"]
    assert chosen[2][1] is features.layer3[0].downsample[0]
    assert [n for n, _ in select_modules(features, names=["layer1", "layer1.0.bn2"], types="BatchNorm2d")] == [
        "layer1.0.bn2"
    ]
    both = [n for n, _ in select_modules(features, types="Conv2d,BatchNorm2d")]
    assert both[:3] == ["conv1", "bn1", "layer1.0.conv1"] and len(both) == 40
    assert len(select_modules(features, types="BasicBlock")) == 8  # model classes by name too


def test_selection_and_shaping_work_on_another_backbone():
    torch.manual_seed(0)
    small = build_backbone("small_cnn", 10)
    assert [n for n, _ in select_modules(small.features, types="Conv2d")] == ["conv1", "conv2"]
    assert [n for n, _ in select_modules(small.features, types="ReLU", every=2)] == ["relu1", "relu3"]
    small.train()
    with ActivationShaper(small.features, "relu2", mask_ratio=0.5):
        after = Probe(small.features.relu2)
        small(_images(4))
    assert set(after.outputs[0].unique().tolist()) == {0.0, 1.0}
    alexnet = build_backbone("alexnet", 7)
    assert [n for n, _ in select_modules(alexnet.features, types="Linear")] == ["classifier.1", "classifier.4"]


def test_unknown_names_and_types_are_errors_listing_the_valid_ones(resnet18):
    with pytest.raises(
        ValueError,
        match=r"unknown module name 'conv_1'; valid: conv1, bn1, relu, maxpool, layer1, "
        r"layer1\.0, layer1\.0\.conv1.*Did you mean 'conv1'\?",
    ):
        select_modules(resnet18.features, names="conv_1")
    with pytest.raises(ValueError, match=r"unknown module type 'Conv2D'; valid: .*BatchNorm2d.*Did you mean 'Conv2d'"):
        select_modules(resnet18.features, types="Conv2D")
    with pytest.raises(ValueError, match="every must be at least 1"):
        select_modules(resnet18.features, types="Conv2d", every=0)
    with pytest.raises(ValueError, match="nothing to shape"):
        select_modules(resnet18.features, names="conv1", types="ReLU")
    with pytest.raises(ValueError, match="unknown shaping mode 'ash_x'.*Did you mean"):
        ActivationShaper(resnet18.features, "conv1", mode="ash_x")


# ------------------------------------------------------------------------------------------ hooks


@pytest.mark.slow
def test_removed_hooks_leave_the_output_of_the_unhooked_model_bit_for_bit(resnet18):
    model = copy.deepcopy(resnet18).eval()
    reference = copy.deepcopy(model)
    x = _images(4)
    shaper = ActivationShaper(model.features, types="ReLU", every=3, at_eval=True, mode="mask")
    with torch.no_grad():
        assert not torch.equal(model(x), reference(x))
        shaper.remove()
        assert torch.equal(model(x), reference(x))
        with ActivationShaper(model.features, "conv1,layer2.0.conv2", at_eval=True):
            assert not torch.equal(model(x), reference(x))
        assert torch.equal(model(x), reference(x))
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_hooks_pass_through_in_eval_mode_unless_at_eval(resnet18):
    model = copy.deepcopy(resnet18).eval()
    x = _images(4)
    with torch.no_grad():
        plain = model(x)
        with ActivationShaper(model.features, "conv1", at_eval=False):
            assert torch.equal(model(x), plain)
        with ActivationShaper(model.features, "conv1", at_eval=True) as shaper:
            assert not torch.equal(model(x), plain)
            shaper.enabled = False
            assert torch.equal(model(x), plain)


def test_the_twice_called_relu_is_shaped_at_both_calls(resnet18):
    model = copy.deepcopy(resnet18).train()
    relu = model.features.layer1[1].relu
    assert relu.inplace  # the hook's new tensor must replace the in-place output
    with ActivationShaper(model.features, "layer1.1.relu", mask_ratio=0.0):
        after = Probe(relu)
        model(_images(3))
        model(_images(3, seed=1))
    assert len(after.outputs) == 4  # two calls per forward: after bn1 and after the residual sum
    for out in after.outputs:
        assert set(out.unique().tolist()) == {0.0, 1.0}
    first_call, second_call = after.outputs[0], after.outputs[1]
    assert first_call.shape == second_call.shape and not torch.equal(first_call, second_call)


def test_target_maps_per_call_and_cycled_over_a_larger_source_batch(resnet18):
    model = copy.deepcopy(resnet18).train()
    relu, conv1 = model.features.layer1[1].relu, model.features.conv1
    raw_relu, raw_conv = Probe(relu), Probe(conv1)  # before the shaper: the unshaped activations
    shaper = ActivationShaper(model.features, "conv1,layer1.1.relu", maps="target")
    shaped_relu, shaped_conv = Probe(relu), Probe(conv1)  # after it: what the network goes on with
    with pytest.raises(RuntimeError, match="recording"):
        model(_images(2))
    raw_relu.outputs.clear(), raw_conv.outputs.clear(), shaped_conv.outputs.clear(), shaped_relu.outputs.clear()
    with torch.no_grad(), shaper.recording():
        model(_images(2, seed=5))  # target batch of 2
    assert [len(p.outputs) for p in (raw_conv, raw_relu)] == [1, 2]
    assert torch.equal(shaped_relu.outputs[0], raw_relu.outputs[0])  # the recording pass is not shaped
    target_conv, target_relu = raw_conv.outputs[0], raw_relu.outputs[:]
    for p in (raw_relu, raw_conv, shaped_conv, shaped_relu):
        p.outputs.clear()
    model(_images(5, seed=6))  # source batch of 5: sample i takes target i % 2
    pairs = [(raw_conv.outputs[0], shaped_conv.outputs[0], target_conv)]
    pairs += [(raw_relu.outputs[k], shaped_relu.outputs[k], target_relu[k]) for k in range(2)]  # call k: map k
    for source, shaped, target in pairs:
        expected = ((source > 0) & (target[torch.arange(5) % 2] > 0)).float()
        assert torch.equal(shaped, expected)
        assert not shaped[(target[torch.arange(5) % 2] <= 0)].any()  # zero wherever the target's is <= 0
    shaper.remove()


# ------------------------------------------------------------------------------------------ the method


def _method_cfg(tmp_path, *overrides, config=DEMO):
    return build_config(
        [config],
        [
            f"--experiment.output_dir={tmp_path}",
            "--train.progress=false",
            "--method.name=activation_shaping",
            *overrides,
        ],
    )


def test_method_keys_from_the_command_line(tmp_path, resnet18):
    cfg = _method_cfg(
        tmp_path, "--method.layers=conv1,layer2.0.conv2", "--method.mask_ratio=0.5", "--method.maps=target"
    )
    params = method_params(cfg.method.name, cfg.method.model_extra)
    assert params.layers == ["conv1", "layer2.0.conv2"] and params.maps == "target" and params.mask_ratio == 0.5
    method = build_method("activation_shaping", copy.deepcopy(resnet18), cfg.method.model_extra)
    assert method.shaper.names == ["conv1", "layer2.0.conv2"] and method.target_stream == "unlabelled"
    by_type = build_method("activation_shaping", copy.deepcopy(resnet18), {"types": "BatchNorm2d", "every": 5})
    assert by_type.shaper.names == ["bn1", "layer2.0.bn1", "layer3.0.bn1", "layer4.0.bn1"]
    assert by_type.target_stream == "none"  # random maps read no target images
    with pytest.raises(ValueError, match=r"method\.maps: .*unknown method\.maps 'targets'.*Did you mean 'target'"):
        method_params("activation_shaping", {"maps": "targets"})
    with pytest.raises(ValueError, match=r"method\.mask_ratio"):
        method_params("activation_shaping", {"mask_ratio": 1.5})
    with pytest.raises(ValueError, match="maps=target needs a mode that reads a map"):
        build_method("activation_shaping", copy.deepcopy(resnet18), {"maps": "target", "mode": "ash_b"})
    with pytest.raises(ValueError, match="unknown module name 'layer2.0.conv3'"):
        build_method("activation_shaping", copy.deepcopy(resnet18), {"layers": "layer2.0.conv3"})


def test_the_trainer_loads_a_target_stream_only_for_target_maps(tmp_path):
    random_maps = Trainer(_method_cfg(tmp_path, "--experiment.name=random", "--method.maps=random"))
    target_maps = Trainer(_method_cfg(tmp_path, "--experiment.name=target", "--method.maps=target"))
    assert random_maps.loaders.target is None and target_maps.loaders.target is not None


def test_train_help_lists_every_key():
    out = subprocess.run(
        [sys.executable, "-m", "shiftlab.cli", "train", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    for key in ("layers", "types", "every", "mask_ratio", "maps", "mode", "percentile", "at_eval", "eval_maps"):
        assert f"--method.{key}  (default:" in out, key


def test_checkpoints_hold_no_hook_and_evaluation_is_plain_unless_at_eval(resnet18):
    x = _images(4)
    plain = copy.deepcopy(resnet18).eval()
    method = build_method("activation_shaping", copy.deepcopy(resnet18), {"at_eval": False}).eval()
    assert set(method.state_dict()) == {f"backbone.{k}" for k in plain.state_dict()}
    with torch.no_grad():
        assert torch.equal(method.predict(x), plain(x))
        shaped = build_method("activation_shaping", copy.deepcopy(resnet18), {"mask_ratio": 1.0}).eval()
        logits = shaped.predict(x)  # at_eval (the default): conv1 zeroed, one output for every image
    assert torch.allclose(logits, logits[:1].expand_as(logits))


@pytest.mark.slow
def test_target_pass_leaves_batchnorm_statistics_alone(resnet18):
    method = build_method("activation_shaping", copy.deepcopy(resnet18), {"maps": "target"}).train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.record_target_maps(_images(3))
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    losses = method.training_step(Batch(_images(4, seed=1), torch.tensor([0, 1, 2, 3])), Batch(_images(3)), 0.0)
    losses["loss"].backward()
    assert method.backbone.head.weight.grad is not None


def test_eval_maps_default_is_the_batchs_own_activation_and_fixed_target_differs(resnet18):
    """method.eval_maps: the default keeps the old behaviour (each evaluated batch its own map, A_bin); fixed_target
    masks with maps recorded before evaluation on target images, paired i mod n, and so gives other outputs."""
    x, target = _images(4, seed=1), _images(3, seed=2)
    default = build_method("activation_shaping", copy.deepcopy(resnet18), {"maps": "target"})
    assert default.params.eval_maps == "own_batch"
    fixed = build_method("activation_shaping", copy.deepcopy(resnet18), {"maps": "target", "eval_maps": "fixed_target"})
    conv1 = fixed.backbone.features.conv1
    raw = Probe(conv1)
    fixed.eval()
    fixed.before_evaluation("source", [target])  # records on the first target batch only
    assert len(raw.outputs) == 1 and len(raw.outputs[0]) == 3  # one pass, of the 3 target images
    recorded = raw.outputs[0] > 0
    shaped = Probe(conv1)
    raw.outputs.clear()
    with torch.no_grad():
        out_fixed = fixed.predict(x)
    expected = ((raw.outputs[0] > 0) & recorded[torch.arange(4) % 3]).float()
    assert torch.equal(shaped.outputs[0], expected)
    with torch.no_grad():
        out_default = default.eval().predict(x)
        plain = copy.deepcopy(resnet18).eval()
        with ActivationShaper(plain.features, "conv1", mask_ratio=0.0, at_eval=True):  # A_bin * 1 = A_bin
            out_a_bin = plain(x)
    assert torch.equal(out_default, out_a_bin)  # today's behaviour: the output is A_bin
    assert not torch.allclose(out_fixed, out_default)
    unrecorded = build_method(
        "activation_shaping", copy.deepcopy(resnet18), {"maps": "target", "eval_maps": "fixed_target"}
    ).eval()
    with pytest.raises(RuntimeError, match="for_eval=True"), torch.no_grad():
        unrecorded.predict(x)
    with pytest.raises(ValueError, match="eval_maps"):
        method_params("activation_shaping", {"eval_maps": "own"})


class _Interrupt(Exception):
    pass


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")} for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("maps", ["random", "target"])
def test_a_shaped_run_resumes_exactly_after_an_interruption(tmp_path, maps):
    overrides = [
        "--method.layers=relu1,conv2",
        f"--method.maps={maps}",
        "--train.epochs=2",
        "--data.limit=128",
        "--data.batch_size=32",
    ]
    Trainer(_method_cfg(tmp_path, "--experiment.name=full", *overrides)).fit()

    def stop_after_first_epoch(trainer, metrics):  # called once the epoch's checkpoint is written
        raise _Interrupt

    cfg = _method_cfg(tmp_path, "--experiment.name=cut", *overrides)
    with pytest.raises(_Interrupt):
        Trainer(cfg, callbacks=[stop_after_first_epoch]).fit()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    torch.rand(7)  # the process's RNG moves on, as it would in a new process: the checkpoint's must win
    Trainer(cfg, resume=True).fit()
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full") and len(_rows(tmp_path / "full")) == 2
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    reference = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k


@pytest.mark.slow
def test_a_pacs_slice_trains_with_measurably_shaped_activations(tmp_path, data_root):
    cfg = _method_cfg(
        tmp_path,
        "--experiment.name=pacs",
        f"--data.root={data_root}",
        "--model.pretrained=none",
        "--data.image_size=32",
        "--data.batch_size=16",
        "--data.limit=48",
        "--data.num_workers=0",
        "--train.epochs=1",
        "--train.steps_per_epoch=3",
        "--train.device=cpu",
        "--method.layers=conv1",
        "--method.mask_ratio=0.5",
        config=ASH_CARTOON,
    )
    trainer = Trainer(cfg)
    conv1 = trainer.method.backbone.features.conv1
    seen: list[tuple[bool, torch.Tensor]] = []
    conv1.register_forward_hook(lambda m, i, out: seen.append((m.training, out.detach().clone())))  # after the shaper
    summary = trainer.fit()
    training = [out for is_training, out in seen if is_training]
    assert len(training) == 3 and all(out.shape[0] == 16 for out in training)
    values = torch.cat([out.flatten() for out in training])
    assert set(values.unique().tolist()) == {0.0, 1.0}  # A_bin * M_bin: binary, where a raw conv is not
    zeros = (values == 0).float().mean().item()
    assert 0.6 < zeros < 0.9, zeros  # about half positive, times a mask keeping half: ~3/4 zeros
    assert any(not is_training for is_training, _ in seen)  # evaluation ran (shaped too: at_eval by default)
    assert math.isfinite(summary["final_train_loss"]) and summary["method"] == "activation_shaping"
