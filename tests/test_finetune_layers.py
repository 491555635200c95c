"""Fine-tuning "the last k layers" counts parametrised layers from the output (AdapterNet, Hazan et al. 2018:
VGG16's fc8, fc7, fc6), for every backbone; the expected module names are written out here, from the
torchvision / shiftlab architectures, not computed by the code under test. Also LeNet's layer shapes."""

from __future__ import annotations

import pytest
import torch

from shiftlab.methods.finetune import FineTune
from shiftlab.models import build_backbone

EXPECTED = {  # model, head_layers -> names of the last 4 parametrised layers, output first
    ("resnet18", 1): ["head", "features.layer4.1.bn2", "features.layer4.1.conv2", "features.layer4.1.bn1"],
    ("vgg16", 3): ["head.6", "head.3", "head.0", "features.features.28"],  # fc8, fc7, fc6, conv5_3
    ("vgg16", 1): ["head", "features.classifier.3", "features.classifier.0", "features.features.28"],
    ("dann_digits", 3): ["head.fc3", "head.fc2", "head.fc1", "features.features.conv2"],
    ("small_cnn", 1): ["head", "features.bn3", "features.fc", "features.bn2"],
    ("lenet", 1): ["head", "features.classifier.fc3", "features.features.conv2", "features.features.conv1"],
}


def _trained(backbone, k, count="layer"):
    method = FineTune(backbone, FineTune.Params(layers=k, count=count))
    names = {n for n, p in backbone.named_parameters() if p.requires_grad}
    return method, names


@pytest.mark.parametrize("model,head_layers", list(EXPECTED))
def test_last_k_parametrised_layers(model, head_layers):
    torch.manual_seed(0)
    expected = EXPECTED[model, head_layers]
    for k in (1, 2, 3):
        backbone = build_backbone(model, 10, head_layers=head_layers)
        method, trainable = _trained(backbone, k)
        assert method.trained_units == list(reversed(expected[:k]))
        # exactly the weights (and biases) of those modules train, nothing else
        want = {f"{m}.{p}" for m in expected[:k] for p, _ in backbone.get_submodule(m).named_parameters()}
        assert all(f"{m}.weight" in want for m in expected[:k])
        assert trainable == want, (k, sorted(trainable ^ want))
        method.train()
        frozen_bn = [
            m for n, m in backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and n not in expected[:k]
        ]
        assert all(not m.training for m in frozen_bn)  # frozen BatchNorm keeps its statistics


def test_unit_count_keeps_whole_stages():
    backbone = build_backbone("resnet18", 10)
    method, trainable = _trained(backbone, 2, count="unit")
    assert method.trained_units == ["features.layer4", "head"]
    assert "features.layer4.0.conv1.weight" in trainable and "features.layer3.1.conv2.weight" not in trainable


def test_too_many_layers_names_them():
    from shiftlab.errors import ConfigError

    with pytest.raises(ConfigError, match="head.fc3"):
        FineTune(build_backbone("dann_digits", 10, head_layers=3), FineTune.Params(layers=99))


def test_help_names_the_modules():
    text = FineTune.Params.model_fields["layers"].description
    for part in ("fc8", "fc7-fc8", "fc6-fc8", "layer4.1.bn2", "fc1-fc3", "bn3", "fc3-fc4"):
        assert part in text


def test_lenet_layer_shapes():
    model = build_backbone("lenet", 10).eval()
    f = model.features.features
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n, m in f.named_children()
    ]
    hooks.append(
        model.features.classifier.fc3.register_forward_hook(lambda m, i, o: shapes.__setitem__("fc3", tuple(o.shape)))
    )
    out = model(torch.rand(2, 3, 28, 28))
    for h in hooks:
        h.remove()
    assert shapes["conv1"] == (2, 20, 24, 24) and shapes["pool1"] == (2, 20, 12, 12)
    assert shapes["conv2"] == (2, 50, 8, 8) and shapes["pool2"] == (2, 50, 4, 4)
    assert shapes["fc3"] == (2, 500) and out.shape == (2, 10)
    assert model.feature_dim == 500 and model.classifier.in_features == 500
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in model.modules())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (3 * 25 * 20 + 20) + (20 * 25 * 50 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
