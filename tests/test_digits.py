"""The digits loaders (MNIST, USPS, MNIST-M) on the real data in $SHIFTLAB_DATA (default ../shared/data)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.data import digits
from shiftlab.data.registry import get_dataset
from shiftlab.errors import DataError

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("SHIFTLAB_DATA", REPO.parent / "shared" / "data"))

MNIST_TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first t10k labels
USPS_TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
USPS_TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
MNIST_M_TEST_COUNTS = [878, 1016, 933, 908, 890, 807, 856, 914, 880, 919]
MNIST_M_TRAIN_COUNTS = [285, 339, 299, 295, 325, 274, 306, 329, 261, 287]


def _need(*rel: str) -> None:
    for r in rel:
        if not (ROOT / r).exists():
            if os.environ.get("SHIFTLAB_REQUIRE_DATA"):  # CI: missing data is a failure, not a skip
                pytest.fail(f"data not available: {ROOT / r} (SHIFTLAB_REQUIRE_DATA is set)")
            pytest.skip(f"data not available: {ROOT / r}")


def _counts(labels) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=10).tolist()


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: any write shows up as a difference."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """All loads in this module unpack into a temporary cache, never into ~/.cache or the data root."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("shiftlab-cache")
        mp.setenv("SHIFTLAB_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module", autouse=True)
def root_listing():
    """The data root as it was before any load in this module."""
    return _listing(ROOT) if ROOT.is_dir() else None


@pytest.fixture(scope="module")
def mnist(root_listing):
    _need("MNIST/raw")
    return {s: digits.load(ROOT, "mnist", s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def usps(root_listing):
    _need("USPS/usps.h5")
    return {s: digits.load(ROOT, "usps", s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def mnist_m(root_listing):
    _need("MNIST_M")
    return {s: digits.load(ROOT, "mnist_m", s) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------------------------- MNIST


def test_mnist_splits(mnist):
    train, val, test = mnist["train"], mnist["val"], mnist["test"]
    assert len(train) + len(val) == 60_000
    assert 5_400 < len(val) < 6_600  # ~10% held out
    assert len(test) == 10_000
    assert not set(train.indices) & set(val.indices)
    # Disjoint by content too (the 60,000 MNIST training images are pairwise distinct).
    train_h = {img.tobytes() for img in train.images}
    val_h = {img.tobytes() for img in val.images}
    assert len(train_h) == len(train) and len(val_h) == len(val)
    assert not train_h & val_h
    assert test.targets[:10] == MNIST_TEST_FIRST
    assert sum(_counts(test.targets)) == 10_000


def test_mnist_items_and_cache(mnist, module_cache):
    img, label = mnist["test"][0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)
    assert label == 7
    img, label = mnist["train"][0]
    assert img.mode == "RGB" and img.size == (28, 28) and isinstance(label, int) and 0 <= label <= 9
    raw = list((module_cache / "MNIST-unpacked").glob("*/MNIST/raw"))
    assert len(raw) == 1
    assert sorted(p.name for p in raw[0].iterdir()) == sorted(n[:-3] for n in digits.MNIST_FILES)


def test_mnist_val_is_deterministic(mnist):
    again = digits.load(ROOT, "mnist", "val")
    assert again.indices == mnist["val"].indices
    assert np.array_equal(again.images, mnist["val"].images)


def test_mnist_unpacks_only_when_missing(monkeypatch, tmp_path):
    _need("MNIST/raw")
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path))
    base = digits.unpack_mnist(ROOT)
    assert base.is_relative_to(tmp_path)
    target = base / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    mtime = target.stat().st_mtime_ns
    assert digits.unpack_mnist(ROOT) == base
    assert target.stat().st_mtime_ns == mtime  # not rewritten
    target.write_bytes(target.read_bytes()[:100])  # a truncated copy is redone
    digits.unpack_mnist(ROOT)
    assert target.stat().st_size == 10_008
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_mnist_missing_files(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        digits.load(tmp_path, "mnist", "train")
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "shiftlab download digits" in msg


# ---------------------------------------------------------------------------------------------- USPS


def test_usps_counts(usps):
    assert len(usps["test"]) == 2_007
    assert _counts(usps["test"].targets) == USPS_TEST_COUNTS
    assert len(usps["train"]) + len(usps["val"]) == 7_291
    assert _counts(usps["train"].targets + usps["val"].targets) == USPS_TRAIN_COUNTS
    assert not set(usps["train"].indices) & set(usps["val"].indices)
    img, label = usps["test"][0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (16, 16)
    assert usps["test"].images.dtype == np.uint8 and usps["test"].images.max() == 255


def test_usps_uses_one_packaging(caplog):
    """Here usps.bz2 is missing, so usps.h5 serves train *and* test; the choice is logged."""
    _need("USPS/usps.h5")
    if (ROOT / "USPS" / "usps.bz2").is_file():
        pytest.skip("usps.bz2 present: the torchvision packaging is used")
    assert digits.usps_packaging(ROOT) == "h5"
    digits._logged_usps.clear()
    with caplog.at_level(logging.INFO, logger="shiftlab.data.digits"):
        digits.load(ROOT, "usps", "test")
        digits.load(ROOT, "usps", "train")
    msgs = [r.getMessage() for r in caplog.records if "USPS" in r.getMessage()]
    assert len(msgs) == 1 and "usps.h5" in msgs[0]


def test_usps_h5_test_labels_match_torchvision(usps):
    _need("USPS/usps.t.bz2")
    import torchvision

    tv = torchvision.datasets.USPS(str(ROOT / "USPS"), train=False, download=False)
    assert usps["test"].targets == list(tv.targets)


def test_usps_torchvision_packaging_when_both_bz2(tmp_path):
    """With both bz2 files present, torchvision reads both splits (here usps.bz2 is a stand-in copy)."""
    _need("USPS/usps.t.bz2")
    (tmp_path / "USPS").mkdir()
    (tmp_path / "USPS" / "usps.t.bz2").symlink_to(ROOT / "USPS" / "usps.t.bz2")
    (tmp_path / "USPS" / "usps.bz2").symlink_to(ROOT / "USPS" / "usps.t.bz2")
    (tmp_path / "USPS" / "usps.h5").write_bytes(b"not read")
    assert digits.usps_packaging(tmp_path) == "torchvision"
    test = digits.load(tmp_path, "usps", "test")
    assert _counts(test.targets) == USPS_TEST_COUNTS
    assert len(digits.load(tmp_path, "usps", "train")) + len(digits.load(tmp_path, "usps", "val")) == 2_007


def test_usps_missing_lists_files(tmp_path):
    (tmp_path / "USPS").mkdir()
    (tmp_path / "USPS" / "usps.t.bz2").write_bytes(b"")
    with pytest.raises(DataError) as err:
        digits.load(tmp_path, "usps", "test")
    msg = str(err.value)
    for name in ("usps.bz2", "usps.t.bz2", "usps.h5"):
        assert str(tmp_path / "USPS" / name) in msg


# ------------------------------------------------------------------------------------------- MNIST-M


def test_mnist_m_counts(mnist_m):
    assert len(mnist_m["test"]) == 9_001
    assert _counts(mnist_m["test"].targets) == MNIST_M_TEST_COUNTS
    assert len(mnist_m["train"]) + len(mnist_m["val"]) == 3_000
    assert _counts(mnist_m["train"].targets + mnist_m["val"].targets) == MNIST_M_TRAIN_COUNTS
    assert not set(mnist_m["train"].indices) & set(mnist_m["val"].indices)
    img, label = mnist_m["test"][0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    img, _ = mnist_m["val"][0]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_mnist_m_labels_follow_mnist(mnist, mnist_m):
    assert mnist_m["test"].targets[:200] == mnist["test"].targets[:200]


def _copy_mnist_m(tmp_path: Path, lines: list[str]) -> Path:
    src = ROOT / "MNIST_M"
    dst = tmp_path / "MNIST_M"
    (dst / "mnist_m_test").mkdir(parents=True)
    for name in ("00000000.png", "00000001.png", "00000002.png"):
        shutil.copy(src / "mnist_m_test" / name, dst / "mnist_m_test" / name)
    (dst / "mnist_m_test_labels.txt").write_text("".join(line + "\n" for line in lines))
    return dst / "mnist_m_test_labels.txt"


def test_mnist_m_missing_image_named(tmp_path):
    _need("MNIST_M")
    head = (ROOT / "MNIST_M" / "mnist_m_test_labels.txt").read_text().splitlines()[:4]
    labels = _copy_mnist_m(tmp_path, head)  # line 4 lists 00000003.png, which was not copied
    with pytest.raises(DataError) as err:
        digits.load(tmp_path, "mnist_m", "test")
    msg = str(err.value)
    assert f"{labels}:4" in msg and "00000003.png" in msg


def test_mnist_m_malformed_line_named(tmp_path):
    _need("MNIST_M")
    head = (ROOT / "MNIST_M" / "mnist_m_test_labels.txt").read_text().splitlines()[:3]
    labels = _copy_mnist_m(tmp_path, head[:2] + ["00000002.png"])  # truncated: label missing
    with pytest.raises(DataError) as err:
        digits.load(tmp_path, "mnist_m", "test")
    assert f"{labels}:3" in str(err.value)
    labels.write_text("".join(line + "\n" for line in head))  # the intact prefix loads
    ds = digits.load(tmp_path, "mnist_m", "test")
    assert ds.targets == [int(line.split()[1]) for line in head]
    assert ds[2][0].size == (32, 32)


def test_mnist_m_missing_label_file_and_folder(tmp_path):
    (tmp_path / "MNIST_M" / "mnist_m_train").mkdir(parents=True)
    with pytest.raises(DataError, match="mnist_m_train_labels.txt"):
        digits.load(tmp_path, "mnist_m", "train")
    with pytest.raises(DataError, match="mnist_m_test"):
        digits.load(tmp_path, "mnist_m", "test")


# ------------------------------------------------------------------------------------ registry/check


def test_unknown_domain_names_valid_ones():
    with pytest.raises(DataError) as err:
        get_dataset("digits").dataset(ROOT, "svhm", "train")
    msg = str(err.value)
    assert "svhm" in msg and all(d in msg for d in ("mnist", "usps", "mnist_m", "svhn"))


def test_registered_spec():
    spec = get_dataset("digits")
    assert spec.domains == ("mnist", "usps", "mnist_m", "svhn")  # svhn: optional, tests/test_svhn.py
    assert spec.classes == tuple("0123456789") and spec.family == "digits"
    assert "LeCun" in spec.citation and "Hull" in spec.citation and "Ganin" in spec.citation


@pytest.mark.parametrize("domain,count", [("mnist", 70_000), ("usps", 9_298), ("mnist_m", 12_001)])
def test_check_real(domain, count):
    _need("MNIST", "USPS", "MNIST_M")
    report = digits.check(ROOT, domain)
    assert report.present and report.problems == []
    assert report.images == count
    assert report.classes == list("0123456789")


def test_check_empty_root(tmp_path):
    for domain in digits.DOMAINS:
        report = digits.check(tmp_path, domain)
        assert not report.present and report.images == 0
        assert report.notes if domain == "svhn" else report.problems  # svhn is optional


def test_load_never_writes_into_data_root(root_listing, mnist, usps, mnist_m):
    """Runs after the module's loads (and loads every split again): the data root is unchanged."""
    for domain in ("mnist", "usps", "mnist_m"):  # the shared data has no SVHN (tests/test_svhn.py)
        for split in ("train", "val", "test"):
            digits.load(ROOT, domain, split)
        digits.check(ROOT, domain)
    assert _listing(ROOT) == root_listing
