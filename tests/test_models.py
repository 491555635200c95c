"""Backbones split into features / bottleneck / head; weights from torchvision's API or a local file."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from local_http import serve_directory  # noqa: E402

from shiftlab.models import WeightsError, build_backbone  # noqa: E402
from shiftlab.models.weights import download_state_dict  # noqa: E402


@pytest.mark.parametrize("name,size,dim", [("resnet18", 64, 512), ("resnet50", 64, 2048),
                                           ("alexnet", 64, 4096), ("small_cnn", 32, 128)])
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
