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
