"""Backbones split into features / bottleneck / head; weights from torchvision's API or a local file."""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from local_http import serve_directory  # noqa: E402

from shiftlab.errors import ConfigError, ModelError, WeightsError  # noqa: E402
from shiftlab.models import build_backbone  # noqa: E402
from shiftlab.models.weights import download_state_dict  # noqa: E402

# The smallest model of each torchvision family that has a split, the path of its classifier in
# torchvision's module tree (written out here, not found by the code under test), and an input size.
FAMILIES = [
    ("resnet18", "fc", 64),
    ("alexnet", "classifier.6", 64),
    ("vgg11", "classifier.6", 32),
    ("densenet121", "classifier", 64),
    ("mobilenet_v3_small", "classifier.3", 64),
    ("efficientnet_b0", "classifier.1", 64),
    ("regnet_y_400mf", "fc", 64),
    ("convnext_tiny", "classifier.2", 64),
    ("swin_t", "head", 64),
    ("swin_v2_t", "head", 64),
    ("vit_b_16", "heads.head", 224),
    ("maxvit_t", "classifier.5", 224),
    ("shufflenet_v2_x0_5", "fc", 64),
    ("mnasnet0_5", "classifier.1", 64),
    ("googlenet", "fc", 64),
    ("inception_v3", "fc", 80),
]
KWARGS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}  # silence init warnings


def _torchvision_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, **KWARGS.get(name, {})).eval()


@pytest.mark.parametrize(
    "name,size,dim", [("resnet18", 64, 512), ("resnet50", 64, 2048), ("alexnet", 64, 4096), ("small_cnn", 32, 128)]
)
def test_backbones_expose_features_and_head(name, size, dim):
    model = build_backbone(name, 7, bottleneck_dim=0).eval()
    x = torch.randn(2, 3, size, size)
    assert model.features(x).shape == (2, dim)
    assert model(x).shape == (2, 7)
    assert model.units()[-1][0] == "head"


def test_bottleneck_sits_between_features_and_head():
    model = build_backbone("resnet18", 5, bottleneck_dim=32).eval()
    assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    assert [n for n, _ in model.units()][-2:] == ["bottleneck", "head"]


def test_local_torchvision_state_dict_is_loaded_exactly(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("resnet18", 7, weights=path)
    assert torch.equal(model.features.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.features.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.head.out_features == 7


def test_shiftlab_checkpoint_round_trip(tmp_path):
    source = build_backbone("small_cnn", 10)
    path = tmp_path / "last.pt"
    torch.save({"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = build_backbone("small_cnn", 10, weights=path)
    for k, v in source.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found: .*missing.pth"):
        build_backbone("resnet18", 7, weights=tmp_path / "missing.pth")

    evil = tmp_path / "evil.pth"  # any pickled object beyond tensors must be refused (weights_only)
    torch.save({"conv1.weight": Payload()}, evil)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_backbone("resnet18", 7, weights=evil)

    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone("resnet18", 7, weights=wrong)


class Payload:
    pass


def _hash_named(state: dict, folder: Path, stem: str) -> str:
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{stem}-{digest[:8]}.pth"
    tmp.rename(folder / name)
    return name


def test_download_into_torch_hub_cache_from_local_server(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "served"
    served.mkdir()
    state = {"w": torch.arange(6.0)}
    name = _hash_named(state, served, "tiny")
    with serve_directory(served) as base:
        got = download_state_dict(base + name, progress=False)
    assert torch.equal(got["w"], state["w"])
    assert (tmp_path / "torch" / "hub" / "checkpoints" / name).is_file()


def test_download_with_wrong_hash_fails_without_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"w": torch.zeros(3)}, served / "tiny-00000000.pth")  # name's hash prefix does not match
    with serve_directory(served) as base:
        with pytest.raises(WeightsError, match="could not get weights"):
            download_state_dict(base + "tiny-00000000.pth", progress=False)


def test_imagenet_request_uses_mirror_and_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with serve_directory(empty) as base:
        monkeypatch.setenv("SHIFTLAB_WEIGHTS_MIRROR", base)
        with pytest.raises(WeightsError) as err:
            build_backbone("resnet18", 7, pretrained="imagenet", progress=False)
        assert base.hits["resnet18-f37072fd.pth"] == 1
    text = str(err.value)
    assert "resnet18-f37072fd.pth" in text and "--model.weights" in text and "hub" in text


def test_imagenet_weights_come_from_torchvision_cache(tmp_path, monkeypatch):
    """A file already in torch hub's cache is used as is, like torchvision's own weights API does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SHIFTLAB_WEIGHTS_MIRROR", "http://127.0.0.1:9/")  # nothing listens: no download possible
    reference = torchvision.models.resnet18()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    model = build_backbone("resnet18", 1000, pretrained="imagenet", progress=False)
    assert torch.equal(model.features.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.head.weight, reference.fc.weight)  # 1000 classes keep ImageNet's classifier


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", 7, pretrained="IMAGENET1K_V9")


@pytest.mark.slow
@pytest.mark.parametrize("name,classifier,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_torchvision_format_weights_load_for_every_family(name, classifier, size, tmp_path):
    reference = _torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone(name, 7, weights=path).eval()

    in_features = reference.get_submodule(classifier).in_features
    reference.set_submodule(classifier, torch.nn.Identity())
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected, features = reference(x), model.features(x)
        assert features.shape == (1, in_features) == expected.shape and model.feature_dim == in_features
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
        assert model.head(model.bottleneck(features)).shape == (1, 7)
    assert model.classifier is model.head and model.head.out_features == 7
    assert model.units()[-1] == ("head", model.head)


def test_alexnet_head_layers_one_keeps_fc6_fc7_in_the_features(tmp_path):
    reference = _torchvision_model("alexnet")
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("alexnet", 1000, weights=path, head_layers=1).eval()
    keys = model.state_dict()
    assert {"features.classifier.1.weight", "features.classifier.4.weight", "head.weight"} <= set(keys)
    assert keys["features.classifier.1.weight"].shape == (4096, 9216) and model.feature_dim == 4096
    assert model.classifier is model.head and model.head.weight.shape == (1000, 4096)
    assert [n for n, _ in model.units()][-3:] == ["features.classifier.1", "features.classifier.4", "head"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # 1000 classes: torchvision's own classifier is kept, so the outputs are torchvision's
        torch.testing.assert_close(model(x), reference(model.normalize(x)), rtol=1e-4, atol=1e-5)


def test_alexnet_head_layers_three_puts_fc6_fc7_fc8_in_the_head(tmp_path):
    reference = _torchvision_model("alexnet")
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("alexnet", 1000, weights=path, head_layers=3).eval()
    keys = model.state_dict()
    assert not any(k.startswith("features.classifier.") for k in keys)  # features: conv part, avgpool, flatten
    head_keys = [f"head.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")]  # fc6, fc7, fc8
    assert [k for k in keys if k.startswith("head.")] == head_keys
    assert model.feature_dim == 9216 and model.features(torch.rand(2, 3, 64, 64)).shape == (2, 9216)
    assert [type(m).__name__ for m in model.head] == ["Dropout", "Linear", "ReLU"] * 2 + ["Linear"]
    assert torch.equal(model.head[1].weight, reference.classifier[1].weight)  # fc6
    assert model.classifier is model.head[6]
    assert [n for n, _ in model.units()][-4:] == ["features.features.10", "head.1", "head.4", "head.6"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model.normalize(x)), rtol=1e-4, atol=1e-5)

    seven = build_backbone("alexnet", 7, weights=path, head_layers=3)
    assert seven.classifier.weight.shape == (7, 4096)
    assert torch.equal(seven.head[4].weight, reference.classifier[4].weight)
    domain_branch = copy.deepcopy(seven.head)  # the DANN assignment's domain classifier starts as a copy of G_y
    assert domain_branch(torch.rand(2, 9216)).shape == (2, 7)


def test_imagenet_alexnet_from_cache_with_fc_head(tmp_path, monkeypatch):
    """The PACS assignment's set-up: torchvision's AlexNet weights, G_f = conv part, G_y = fc6, fc7, fc8."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SHIFTLAB_WEIGHTS_MIRROR", "http://127.0.0.1:9/")  # nothing listens: no download possible
    reference = _torchvision_model("alexnet")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "alexnet-owt-7be5be79.pth")
    model = build_backbone("alexnet", 7, pretrained="IMAGENET1K_V1", head_layers=3, progress=False)
    assert torch.equal(model.features.features[0].weight, reference.features[0].weight)
    assert torch.equal(model.head[1].weight, reference.classifier[1].weight)
    assert model.classifier.out_features == 7


def test_vgg_head_layers_and_bottleneck(tmp_path):
    model = build_backbone("vgg11", 7, head_layers=2)
    assert model.feature_dim == 4096 and [n for n, _ in model.units()][-2:] == ["head.3", "head.6"]
    assert [type(m).__name__ for m in model.head] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    narrow = build_backbone("efficientnet_b0", 7, bottleneck_dim=32)
    assert narrow.classifier.in_features == 32 and narrow(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(ModelError, match="bottleneck_dim and model.head_layers"):
        build_backbone("vgg11", 7, head_layers=3, bottleneck_dim=32)


def test_shiftlab_checkpoints_are_told_from_torchvision_state_dicts(tmp_path):
    # swin's torchvision keys are features.*, norm.*, head.*: still a torchvision state dict
    reference = _torchvision_model("swin_t")
    torch.save(reference.state_dict(), tmp_path / "swin.pth")
    swin = build_backbone("swin_t", 7, weights=tmp_path / "swin.pth")
    assert torch.equal(swin.features.norm.weight, reference.norm.weight)

    torch.manual_seed(1)  # mobilenet_v3_small: features.* and classifier.* keys like AlexNet's, two Linears, small
    source = build_backbone("mobilenet_v3_small", 7, head_layers=2, mean=[0.5] * 3, std=[0.5] * 3)
    torch.save(source.state_dict(), tmp_path / "backbone.pt")  # a bare Backbone state dict
    torch.save(
        {
            "model": {f"backbone.{k}": v for k, v in source.state_dict().items()}
            | {"discriminator.0.weight": torch.zeros(2)}
        },
        tmp_path / "last.pt",
    )  # a method's checkpoint
    for path in (tmp_path / "backbone.pt", tmp_path / "last.pt"):
        loaded = build_backbone("mobilenet_v3_small", 7, head_layers=2, weights=path)
        for k, v in source.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
    other = build_backbone("mobilenet_v3_small", 5, head_layers=2, weights=tmp_path / "last.pt")  # new classifier
    assert other.classifier.out_features == 5 and torch.equal(other.head[0].weight, source.head[0].weight)
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone("mobilenet_v3_small", 7, head_layers=1, weights=tmp_path / "last.pt")


@pytest.mark.slow
def test_auxiliary_classifiers_are_dropped():
    for name, size in (("googlenet", 64), ("inception_v3", 80)):
        model = build_backbone(name, 3).train()
        assert model(torch.rand(2, 3, size, size)).shape == (2, 3)  # a tensor, not torchvision's namedtuple
        assert not any("aux" in k.lower() for k in model.state_dict())


def test_units_hold_every_parameter_once():
    for name, kwargs in (
        ("resnet18", {}),
        ("alexnet", {"head_layers": 3}),
        ("efficientnet_b0", {"bottleneck_dim": 8}),
        ("densenet121", {}),
        ("small_cnn", {}),
    ):
        model = build_backbone(name, 4, **kwargs)
        in_units = [id(p) for _, m in model.units() for p in m.parameters()]
        assert sorted(in_units) == sorted(id(p) for p in model.parameters()), name


def test_unknown_and_unsupported_models_are_named():
    with pytest.raises(ModelError, match=r"unknown model.name 'resnet19'. Did you mean 'resnet18'\?.*small_cnn"):
        build_backbone("resnet19", 7)
    with pytest.raises(ModelError, match="'squeezenet1_1' has no Linear classifier"):
        build_backbone("squeezenet1_1", 7)
    with pytest.raises(ModelError, match="head_layers=2 but the classifier of 'resnet18' is a single Linear"):
        build_backbone("resnet18", 7, head_layers=2)
    with pytest.raises(ModelError, match="head_layers=4 but the classifier of 'vgg11' is a Sequential with 3"):
        build_backbone("vgg11", 7, head_layers=4)
    with pytest.raises(ModelError, match="small_cnn's head is one Linear"):
        build_backbone("small_cnn", 7, head_layers=2)


def test_config_accepts_any_torchvision_model_and_names_unknown_ones():
    from shiftlab.config import build_config

    cfg = build_config([], ["--model.name=convnext_tiny", "--model.head_layers=2", "--model.mean=[0.5,0.5,0.5]"])
    assert cfg.model.name == "convnext_tiny" and cfg.model.mean == [0.5] * 3 and cfg.model.std is None
    with pytest.raises(ConfigError, match=r"model\.name.*'alexnex'.*Did you mean 'alexnet'"):
        build_config([], ["--model.name=alexnex"])
    with pytest.raises(ConfigError, match=r"model\.std"):
        build_config([], ["--model.std=[0.5,0,0.5]"])
