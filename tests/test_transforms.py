"""The shared preprocessing: same size and 3 channels for every domain, float images in [0, 1] equal to
torchvision's ``ToTensor`` (normalisation is the model's first step, see test_normalization.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from shiftlab.data.transforms import ToUnitTensor, build_transforms


def _random_image(h=37, w=41, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_unit_tensor_equals_torchvision_to_tensor():
    img = _random_image()
    out = ToUnitTensor()(img)
    assert out.shape == (3, 37, 41) and out.dtype == torch.float32
    torch.testing.assert_close(out, T.ToTensor()(img), rtol=0, atol=1e-6)
    grey = ToUnitTensor()(img.convert("L"))
    assert grey.shape == (1, 37, 41)


@pytest.mark.parametrize("family", ["photo", "digits"])
def test_transforms_yield_images_in_unit_range(family):
    black, white = Image.new("RGB", (40, 30), (0, 0, 0)), Image.new("RGB", (40, 30), (255, 255, 255))
    for tf in build_transforms(family, None, augment=True):
        for img in (_random_image(), black, white):
            x = tf(img)
            assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert tf(black).max() == 0 and tf(white).min() == 1  # not normalised: the extremes stay 0 and 1


@pytest.mark.parametrize("family,size,expected", [("photo", None, 224), ("photo", 96, 96), ("digits", None, 32)])
def test_every_domain_gets_the_same_shape(family, size, expected):
    train, evaluation = build_transforms(family, size, augment=True)
    for mode, shape in (("L", (28, 28)), ("RGB", (16, 20)), ("RGB", (227, 227))):
        img = Image.new(mode, shape[::-1], color=128 if mode == "L" else (10, 200, 30))
        for tf in (train, evaluation):
            assert tf(img.convert("RGB")).shape == (3, expected, expected)


@pytest.mark.parametrize("source,target", [("mnist", "usps"), ("usps", "mnist_m"), ("mnist_m", "mnist")])
def test_any_digits_pair_shares_one_preprocessing(data_root, source, target, monkeypatch, tmp_path):
    from shiftlab.data.pair import build_domain_pair

    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path))
    pair = build_domain_pair("digits", data_root, source, target, limit=50)
    x_s, y_s = pair.source_train[0]
    x_t = pair.target_train[0]
    x_e, y_e = pair.target_eval[0]
    assert x_s.shape == x_t.shape == x_e.shape == (3, 32, 32)
    assert 0 <= min(x.min() for x in (x_s, x_t, x_e)) and max(x.max() for x in (x_s, x_t, x_e)) <= 1
    assert isinstance(y_s, int) and isinstance(y_e, int) and torch.is_tensor(x_t)
    assert len(pair.source_train) == len(pair.target_eval) == 50 and pair.classes == list("0123456789")
