"""Normalisation is the backbone's first module: same outputs as the old data-side normalisation, saved in
checkpoints, and a checkpoint without it is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from shiftlab.data.transforms import build_transforms
from shiftlab.errors import WeightsError
from shiftlab.models import IMAGENET_MEAN, IMAGENET_STD, InputNormalization, build_backbone, normalization_for


def test_family_defaults():
    assert normalization_for("photo") == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_for("digits") == ((0.5,) * 3, (0.5,) * 3)
    assert normalization_for("photo", "googlenet") == ((0.5,) * 3, (0.5,) * 3)  # its weights expect [-1, 1]
    assert normalization_for("digits", "googlenet") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="unknown dataset family 'audio'"):
        normalization_for("audio")


@pytest.mark.parametrize("name,family,size", [("resnet18", "photo", 64), ("small_cnn", "digits", 32)])
def test_output_on_unit_images_equals_the_old_pipeline(name, family, size):
    """Old: ToTensor + Normalize in the data path, then the model without normalisation. New: [0, 1]
    images from the data path, normalised inside the model."""
    mean, std = normalization_for(family)
    torch.manual_seed(0)
    model = build_backbone(name, 5, bottleneck_dim=16, mean=mean, std=std).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)) for _ in range(3)]
    resize = T.Resize((size, size))
    old_tf = T.Compose([resize, T.ToTensor(), T.Normalize(mean, std)])
    _, new_tf = build_transforms(family, size, augment=False)
    old_x = torch.stack([old_tf(img) for img in images])
    new_x = torch.stack([new_tf(img) for img in images])
    with torch.no_grad():
        old = model.head(model.bottleneck(model.features(old_x)))
        new = model(new_x)
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-5)


def test_buffers_are_in_the_state_dict_and_follow_the_model():
    model = build_backbone("small_cnn", 10, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    state = model.state_dict()
    assert list(state)[:2] == ["normalize.mean", "normalize.std"]
    assert state["normalize.mean"].shape == (1, 3, 1, 1)
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert "normalize" not in dict(model.features.named_modules())  # layer names inside features unchanged
    assert model.to(torch.float64).normalize.mean.dtype == torch.float64


def test_default_is_imagenet_and_bad_statistics_are_refused():
    model = build_backbone("small_cnn", 10)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    with pytest.raises(ValueError, match="std must be positive"):
        InputNormalization([0.5] * 3, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="one value per channel"):
        InputNormalization([0.5] * 3, [0.5] * 2)


def test_checkpoint_round_trip_keeps_the_statistics(tmp_path):
    source = build_backbone("small_cnn", 10, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    path = tmp_path / "last.pt"
    torch.save({"model": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = build_backbone("small_cnn", 10, weights=path)  # built with ImageNet's, the checkpoint's win
    torch.testing.assert_close(loaded.normalize.std, source.normalize.std)


def test_checkpoint_without_normalisation_is_refused(tmp_path):
    source = build_backbone("small_cnn", 10)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items() if not k.startswith("normalize.")}
    torch.save({"model": state, "epoch": 3}, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="missing.*normalize.mean"):
        build_backbone("small_cnn", 10, weights=tmp_path / "partial.pt")


@pytest.mark.slow
def test_googlenet_statistics_replace_torchvisions_transform_input(tmp_path):
    """torchvision runs its GoogLeNet weights with ``transform_input=True`` on ImageNet-normalised images;
    the backbone gets the same logits from [0, 1] images with ``normalization_for("photo", "googlenet")``."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.googlenet(init_weights=True, transform_input=True).eval()
    torch.save(reference.state_dict(), tmp_path / "googlenet.pth")
    mean, std = normalization_for("photo", "googlenet")
    model = build_backbone("googlenet", 1000, weights=tmp_path / "googlenet.pth", mean=mean, std=std).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
