"""The shared preprocessing: same size and 3 channels for every domain, equal to torchvision's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from shiftlab.data.pair import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedTensor, build_transforms


def test_normalised_tensor_equals_torchvision_to_tensor_then_normalize():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 41, 3), dtype=np.uint8))
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    out = ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)(img)
    assert out.shape == (3, 37, 41) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


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
    assert isinstance(y_s, int) and isinstance(y_e, int) and torch.is_tensor(x_t)
    assert len(pair.source_train) == len(pair.target_eval) == 50 and pair.classes == list("0123456789")
