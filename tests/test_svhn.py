"""SVHN, the digits dataset's optional domain (deep activation matching's SVHN -> MNIST pair), on a tiny
synthetic copy of torchvision's files (``train_32x32.mat`` / ``test_32x32.mat``: X 32x32x3xN uint8, y Nx1
with 10 for the digit 0), written with scipy.io.savemat; and its download entry (torchvision's URLs, md5)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from shiftlab.data import digits
from shiftlab.data.download import SOURCES
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import keys_of
from shiftlab.errors import DataError


def _write_svhn(root, n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    (root / "SVHN").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10; 10 is the digit 0
        scipy.io.savemat(str(root / "SVHN" / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


def test_reads_torchvisions_format(tmp_path):
    written = _write_svhn(tmp_path)
    images, labels = digits.read_svhn(tmp_path, "test")
    x, y = written["test"]
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[3], x[:, :, :, 3])  # sample i is X[:, :, :, i], channels last
    assert labels.tolist() == [(v % 10) for v in y.reshape(-1).tolist()] and 0 in labels and 10 not in labels
    train, val, test = (digits.load(tmp_path, "svhn", s) for s in ("train", "val", "test"))
    assert len(train) + len(val) == 60 and len(test) == 20
    assert set(keys_of(train)).isdisjoint(keys_of(val))
    assert keys_of(test)[0] == "svhn/test/0"
    image, label = test[0]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 1
    report = digits.check(tmp_path, "svhn")
    assert report.present and report.images == 80 and report.problems == []
    assert report.classes == list("0123456789")


def test_missing_and_bad_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"SVHN.*train_32x32.mat.*shiftlab download svhn"):
        digits.load(tmp_path, "svhn", "train")
    (tmp_path / "SVHN").mkdir()
    scipy.io.savemat(
        str(tmp_path / "SVHN" / "test_32x32.mat"), {"X": np.zeros((28, 28, 5), np.uint8), "y": np.ones((5, 1))}
    )
    with pytest.raises(DataError, match="32 x 32 x 3 x N"):
        digits.load(tmp_path, "svhn", "test")
    absent = digits.check(tmp_path / "nothing", "svhn")
    assert not absent.present and not absent.problems and "optional" in absent.notes[0]  # no failure of `datasets`


def test_svhn_to_mnist_pair(tmp_path, data_root):
    _write_svhn(tmp_path)
    (tmp_path / "MNIST").symlink_to(data_root / "MNIST")  # the real MNIST, read-only
    pair = build_domain_pair("digits", tmp_path, "svhn", "mnist", limit=100)
    x, y = pair.source_train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y <= 9
    assert pair.splits["target_eval"]["split"] == "test"


def test_download_entry_is_torchvisions():
    from torchvision.datasets import SVHN

    entries = {r.filename: r for r in SOURCES["svhn"]}
    assert set(entries) == {"train_32x32.mat", "test_32x32.mat"}  # not the 1.3 GB extra set
    for split in ("train", "test"):
        url, name, md5 = SVHN.split_list[split]
        assert (entries[name].url, entries[name].md5, entries[name].folder) == (url, md5, "SVHN")
    assert "svhn" not in {r.folder.lower() for r in SOURCES["digits"]}
