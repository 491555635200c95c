"""The decoded cache and its tensor-batch loader (issue 19): same images and order as the file path,
augmentations as defined, a cache that follows the data, exact resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from shiftlab.config import build_config
from shiftlab.data import decoded
from shiftlab.data.base import load_rgb
from shiftlab.data.decoded import (
    BatchAugment,
    TensorBatchLoader,
    decode_split,
    flip_mask,
    random_resized_crop_boxes,
    resized_crops,
    split_identity,
    stored_size,
)
from shiftlab.data.pair import build_domain_pair, make_loader
from shiftlab.data.splits import per_sample
from shiftlab.engine.loop import Trainer
from shiftlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TIMING = ("epoch_time_s", "images_per_s")


def forget_decoded_splits() -> None:
    """Forget the splits the decoded cache holds in memory (its files stay), so the next read is from disk."""
    decoded._MEMORY.clear()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache folder and starts with nothing held in memory."""
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path / "cache"))
    forget_decoded_splits()
    yield
    forget_decoded_splits()


def _cached(ds, batch_size, *, train, family, image_size=None, augment=True, generator=None):
    size = stored_size(family, image_size, False, False)
    stored = stored_size(family, image_size, augment, train)
    split = decode_split(ds.base, stored)
    return TensorBatchLoader(
        split,
        batch_size,
        shuffle=train,
        device=CPU,
        size=size,
        generator=generator,
        augment=BatchAugment(size) if stored != size else None,
        with_labels=ds.with_labels,
        label_map=ds.label_map,
    )


def test_digits_batches_are_the_file_path_s_bit_for_bit(data_root):
    pair = build_domain_pair("digits", data_root, "mnist", "mnist_m", limit=96)
    # training stream: same seed, same order, same images (MNIST in memory)
    files = make_loader(pair.source_train, 32, shuffle=True, generator=torch.Generator().manual_seed(3))
    cached = _cached(pair.source_train, 32, train=True, family="digits", generator=torch.Generator().manual_seed(3))
    assert len(files) == len(cached) == 3
    for (xf, yf), (xc, yc) in zip(files, cached):
        assert xc.dtype == xf.dtype and torch.equal(xf, xc) and torch.equal(yf, yc)
    # evaluation and unlabelled target streams (MNIST-M, decoded from PNG files)
    for ds in (pair.target_eval, pair.target_adapt_images):
        files = list(make_loader(ds, 40, shuffle=False))
        cached = list(_cached(ds, 40, train=False, family="digits"))
        assert len(files) == len(cached)
        for f, c in zip(files, cached):
            for a, b in zip(f if isinstance(f, list) else [f], c if isinstance(c, tuple) else [c]):
                assert torch.equal(a, b)


def test_pacs_decoded_content_is_the_file_path_s_before_augmentation(data_root):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", limit=12, image_size=64)
    # evaluation: the eval transform itself, so identical
    files = list(make_loader(pair.source_val, 5, shuffle=False))
    cached = list(_cached(pair.source_val, 5, train=False, family="photo", image_size=64))
    for (xf, yf), (xc, yc) in zip(files, cached):
        assert torch.equal(xf, xc) and torch.equal(yf, yc)
    # training split: stored with the crop margin, each image exactly PIL's resize of its file
    stored = stored_size("photo", 64, True, True)
    assert stored == 73
    split = decode_split(pair.source_train.base, stored)
    paths = per_sample(pair.source_train.base, "paths")
    for i in (0, len(paths) - 1):
        want = np.asarray(T.Resize((stored, stored))(load_rgb(paths[i])))
        assert np.array_equal(split.images[i].permute(1, 2, 0).numpy(), want)
    # augmented batches: training size, [0, 1], labels as the file path's
    x, y = next(
        iter(
            _cached(
                pair.source_train,
                4,
                train=True,
                family="photo",
                image_size=64,
                generator=torch.Generator().manual_seed(0),
            )
        )
    )
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) <= set(range(7))


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.7, 1.0)])
@pytest.mark.parametrize("height,width", [(256, 256), (200, 300)])
def test_random_resized_crop_matches_torchvision_in_distribution(scale, height, width):
    ratio = (3 / 4, 4 / 3)
    n = 20000
    boxes = random_resized_crop_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert (h >= 1).all() and (w >= 1).all()
    share = h * w / (height * width)
    # w, h are rounded: allow one pixel either way around the bounds
    slack = (2 * max(height, width) + 1) / (height * width)
    assert (share >= scale[0] - slack).all() and (share <= scale[1] + slack).all()
    log_r = torch.log(w / h)
    assert (log_r >= math.log(ratio[0]) - 0.02).all() and (log_r <= math.log(ratio[1]) + 0.02).all()
    # torchvision's own draws, from the same definition: the same distribution of area, ratio, position
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)], dtype=torch.float64
    )
    ref_share = ref[:, 2] * ref[:, 3] / (height * width)
    ref_log_r = torch.log(ref[:, 3] / ref[:, 2])
    for ours, theirs in (
        (share, ref_share),
        (log_r, ref_log_r),
        (top / height, ref[:, 0] / height),
        (left / width, ref[:, 1] / width),
    ):
        for q in (0.1, 0.5, 0.9):
            assert abs(torch.quantile(ours, q) - torch.quantile(theirs, q)) < 0.03
        assert abs(ours.mean() - theirs.mean()) < 0.02


def test_flip_rate_is_one_half_and_a_flip_mirrors_the_crop():
    flips = flip_mask(100_000, 0.5, torch.Generator().manual_seed(1))
    assert abs(flips.float().mean().item() - 0.5) < 0.01
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    aug = BatchAugment(32)
    boxes, _ = aug.params(4, 40, 40, torch.Generator().manual_seed(2))
    plain = aug.apply(images, boxes, torch.zeros(4, dtype=torch.bool))
    flipped = aug.apply(images, boxes, torch.ones(4, dtype=torch.bool))
    assert torch.equal(flipped, plain.flip(-1))
    assert plain.shape == (4, 3, 32, 32) and plain.min() >= 0 and plain.max() <= 1


def test_whole_image_box_at_its_own_size_is_the_identity():
    images = torch.randint(0, 256, (2, 3, 24, 24)).float()
    boxes = torch.tensor([[0, 0, 24, 24], [0, 0, 24, 24]], dtype=torch.float64)
    assert torch.allclose(resized_crops(images, boxes, 24), images, atol=1e-4)
    # a constant region stays constant, whatever the box
    flat = torch.full((1, 3, 24, 24), 77.0)
    out = resized_crops(flat, torch.tensor([[3, 5, 11, 17]], dtype=torch.float64), 16)
    assert torch.allclose(out, torch.full_like(out, 77.0))
    # the top-left quarter upsampled x2 keeps the quarter's mean (bilinear, half-pixel centres)
    out = resized_crops(images, torch.tensor([[0, 0, 12, 12]] * 2, dtype=torch.float64), 24)
    assert torch.allclose(out.mean(), images[:, :, :12, :12].mean(), rtol=0.05)


def _toy_folder(root: Path, data_root: Path) -> Path:
    """``root/Toy/<domain>/<class>/*.jpg``: real PACS jpgs copied (not linked), so a test may change one."""
    sources = sorted((data_root / "PACS" / "photo" / "dog").iterdir())[:6]
    for domain in ("real", "drawn"):  # the layout of test_folder.py: its hash splits leave no part empty
        for c, cls in enumerate(("cat", "dog", "fox")):
            folder = root / "Toy" / domain / cls
            folder.mkdir(parents=True)
            for i in range(8):
                shutil.copy(sources[(i + c + (domain == "drawn")) % len(sources)], folder / f"img_{i:02d}.jpg")
    return root


def test_the_cache_is_rebuilt_when_the_data_changes(tmp_path, data_root):
    root = _toy_folder(tmp_path / "data", data_root)
    cache = tmp_path / "cache" / "decoded"

    def build():
        return build_domain_pair("folder:Toy", root, "real", "drawn", image_size=32).source_val.base

    first = decode_split(build(), 32)
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob(".*tmp"))  # written atomically: no temporary left
    forget_decoded_splits()
    again = decode_split(build(), 32)  # read back from disk, not decoded again
    assert again.identity == first.identity and torch.equal(again.images, first.images)
    assert sorted(cache.glob("*.pt")) == files
    # the same split at another size is another file
    assert split_identity(build(), 48) != first.identity

    # change one image of the split: a new identity, a new file, the new pixels
    paths = per_sample(build(), "paths")
    other = sorted((data_root / "PACS" / "art_painting" / "dog").iterdir())[0]
    shutil.copy(other, paths[0])
    changed = decode_split(build(), 32)
    assert changed.identity != first.identity
    assert len(list(cache.glob("*.pt"))) == 2
    want = np.asarray(T.Resize((32, 32))(load_rgb(paths[0])))
    assert np.array_equal(changed.images[0].permute(1, 2, 0).numpy(), want)
    assert not torch.equal(changed.images[0], first.images[0])
    # a derived domain (a shift) is other data too
    shifted = build_domain_pair("folder:Toy", root, "real@greyscale", "drawn", image_size=32).source_val.base
    assert split_identity(shifted, 32) != changed.identity


def _cfg(tmp_path, root, name, *extra):
    return build_config(
        [],
        [
            f"--experiment.output_dir={tmp_path / 'runs'}",
            f"--experiment.name={name}",
            "--data.dataset=folder:Toy",
            f"--data.root={root}",
            "--data.source=real",
            "--data.target=drawn",
            "--data.image_size=32",
            "--data.batch_size=4",
            "--model.name=small_cnn",
            "--train.progress=false",
            "--optim.lr=0.02",
            "--train.validators=[entropy]",
            *extra,
        ],
    )


def _rows(trainer):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in trainer.history]


@pytest.mark.slow
def test_resume_with_the_cached_path_is_exact(tmp_path, data_root):
    root = _toy_folder(tmp_path / "data", data_root)
    full = Trainer(_cfg(tmp_path, root, "full", "--train.epochs=3", "--data.loader=cached"))
    assert full.loaders.kind == "cached" and full.loaders.source.augment is not None  # photos: crops and flips
    full.fit()
    part = Trainer(_cfg(tmp_path, root, "part", "--train.epochs=2", "--data.loader=cached"))
    part.fit()
    resumed = Trainer(_cfg(tmp_path, root, "part", "--train.epochs=3", "--data.loader=cached"), resume=True)
    resumed.fit()
    assert _rows(resumed) == _rows(full)
    # and the augmentation did something: another seed gives other losses
    other = Trainer(_cfg(tmp_path, root, "other", "--train.epochs=1", "--data.loader=cached", "--experiment.seed=1"))
    other.fit()
    assert other.history[0]["train_loss"] != full.history[0]["train_loss"]


def test_loader_choice_follows_the_key_and_the_budget(tmp_path, data_root):
    root = _toy_folder(tmp_path / "data", data_root)
    assert Trainer(_cfg(tmp_path, root, "a", "--train.epochs=1")).loaders.kind == "cached"  # auto: it fits
    tiny = Trainer(_cfg(tmp_path, root, "b", "--train.epochs=1", "--data.cache_budget_gb=1e-9"))
    assert tiny.loaders.kind == "files"
    assert Trainer(_cfg(tmp_path, root, "c", "--train.epochs=1", "--data.loader=files")).loaders.kind == "files"
    with pytest.raises(ConfigError, match="data.loader"):
        _cfg(tmp_path, root, "d", "--data.loader=gpu")
