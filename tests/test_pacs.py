"""The PACS loader on the real data (the ``data_root`` fixture) and on modified copies in ``tmp_path``.

Expected numbers come from ``/work/shared/data/README.md`` (PACS section), not from the loader.
The data root is read-only: every modified copy lives in ``tmp_path`` (split lists copied,
domain folders symlinked to the real images).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from shiftlab.data.pair import build_domain_pair
from shiftlab.data.registry import get_dataset
from shiftlab.data.splits import per_sample
from shiftlab.errors import DataError

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")

# README: line counts of the official lists (shiftlab's val = the official crossval list).
SPLIT_SIZES = {
    "art_painting": {"train": 1840, "val": 208, "test": 2048},
    "cartoon": {"train": 2107, "val": 237, "test": 2344},
    "photo": {"train": 1499, "val": 171, "test": 1670},
    "sketch": {"train": 3531, "val": 398, "test": 3929},
}
# README: images per domain and class (the test list is the whole domain).
TEST_CLASS_COUNTS = {
    "art_painting": [379, 255, 285, 184, 201, 295, 449],
    "cartoon": [389, 457, 346, 135, 324, 288, 405],
    "photo": [189, 202, 182, 186, 199, 280, 432],
    "sketch": [772, 740, 753, 608, 816, 80, 160],
}
SPLIT_FILE = {"train": "train", "val": "crossval", "test": "test"}


@pytest.fixture(scope="module")
def spec():
    return get_dataset("pacs")


@pytest.fixture(scope="module")
def splits(data_root, spec):
    """Every split of every domain, loaded once: ``{(domain, split): dataset}``."""
    return {(d, s): spec.dataset(data_root, d, s) for d in DOMAINS for s in ("train", "val", "test")}


def pacs_copy(tmp_path: Path, data_root: Path, domains=DOMAINS) -> Path:
    """A PACS root in tmp: domain folders symlinked to the real ones, split lists copied (editable)."""
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    for d in domains:
        (root / "PACS" / d).symlink_to(data_root / "PACS" / d, target_is_directory=True)
    for f in (data_root / "PACS" / "splits").iterdir():
        shutil.copyfile(f, root / "PACS" / "splits" / f.name)
    return root


def list_path(root: Path, domain: str, split: str) -> Path:
    return root / "PACS" / "splits" / f"{domain}_{SPLIT_FILE[split]}_kfold.txt"


def rel(path: Path) -> str:
    return "/".join(path.parts[-3:])


# --- sizes, class counts, labels -------------------------------------------------------------------


def test_registered_domains_and_classes(spec):
    assert spec.domains == DOMAINS
    assert spec.classes == CLASSES
    assert list(spec.classes) == sorted(spec.classes)
    assert spec.num_classes == 7


@pytest.mark.parametrize("domain", DOMAINS)
def test_split_sizes_match_readme(splits, domain):
    sizes = {s: len(splits[domain, s]) for s in ("train", "val", "test")}
    assert sizes == SPLIT_SIZES[domain]


@pytest.mark.parametrize("domain", DOMAINS)
def test_test_split_class_counts_match_readme(splits, domain):
    counts = Counter(splits[domain, "test"].targets)
    assert [counts[i] for i in range(7)] == TEST_CLASS_COUNTS[domain]
    assert set(counts) == set(range(7))
    assert sum(TEST_CLASS_COUNTS[domain]) == SPLIT_SIZES[domain]["test"]


def test_total_images(splits):
    assert sum(len(splits[d, "test"]) for d in DOMAINS) == 9991


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_labels_are_zero_based_class_folders(data_root, splits, domain, split):
    ds = splits[domain, split]
    assert ds.classes == list(CLASSES)
    for path, label in ds.samples:
        assert isinstance(label, int) and 0 <= label <= 6
        assert path.parent.name == CLASSES[label], path
        assert path.parent.parent.name == domain, path
        assert path.parent.parent.parent == data_root / "PACS"
    assert ds.targets == [label for _, label in ds.samples]


def test_first_labels_by_name(splits):
    """dog = 0 ... person = 6: the first and last image of each class-sorted test list."""
    art = splits["art_painting", "test"]
    assert rel(art.samples[0][0]) == "art_painting/dog/pic_225.jpg"  # first line of the test list
    assert art.samples[0][1] == 0
    assert art.samples[-1][0].parent.name == "person" and art.samples[-1][1] == 6
    assert CLASSES.index("giraffe") == 2
    giraffes = [p for p, label in art.samples if label == 2]
    assert len(giraffes) == 285 and all(p.parent.name == "giraffe" for p in giraffes)


@pytest.mark.parametrize("domain, index", [("art_painting", 0), ("sketch", 0), ("photo", -1)])
def test_items_decode_as_rgb_227(splits, domain, index):
    ds = splits[domain, "test"]
    img, label = ds[index]
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (227, 227)
    assert label == ds.samples[index][1]


# --- upstream quirks -------------------------------------------------------------------------------


def test_art_painting_crossval_label_zero_uses_folder(data_root, spec, caplog):
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.pacs"):
        ds = spec.dataset(data_root, "art_painting", "val")
    path, label = ds.samples[0]
    assert rel(path) == "art_painting/dog/pic_225.jpg"
    assert label == 0  # dog, from the folder (the file says 0, which is not a 1-based label)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "shiftlab.data.pacs"]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "art_painting_crossval_kfold.txt:1 " in msg
    assert "pic_225.jpg" in msg
    assert "label 0" in msg


def test_no_warning_for_consistent_lists(data_root, spec, caplog):
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.pacs"):
        test = spec.dataset(data_root, "art_painting", "test")
        spec.dataset(data_root, "art_painting", "train")
        spec.dataset(data_root, "cartoon", "val")
    assert [r for r in caplog.records if r.name == "shiftlab.data.pacs"] == []
    # the same image in the test list: label 1 in the file, 0 here
    assert dict((rel(p), y) for p, y in test.samples)["art_painting/dog/pic_225.jpg"] == 0


def test_art_painting_duplicate_is_kept(splits):
    val = [rel(p) for p, _ in splits["art_painting", "val"].samples]
    train = [rel(p) for p, _ in splits["art_painting", "train"].samples]
    test = [rel(p) for p, _ in splits["art_painting", "test"].samples]
    assert len(val) == 208
    assert val.count("art_painting/dog/pic_248.jpg") == 2
    assert val.index("art_painting/dog/pic_248.jpg") == 1  # lines 2 and 17
    assert val[16] == "art_painting/dog/pic_248.jpg"
    assert len(set(val)) == 207
    assert "art_painting/dog/pic_249.jpg" not in set(train) | set(val)
    assert "art_painting/dog/pic_249.jpg" in test
    assert len(set(train) | set(val)) == 2047
    assert set(test) - (set(train) | set(val)) == {"art_painting/dog/pic_249.jpg"}


@pytest.mark.parametrize("domain", ["cartoon", "photo", "sketch"])
def test_train_val_partition_test(splits, domain):
    train = [p for p, _ in splits[domain, "train"].samples]
    val = [p for p, _ in splits[domain, "val"].samples]
    test = [p for p, _ in splits[domain, "test"].samples]
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(test)
    assert len(train) + len(val) == len(test) == len(set(test))
    labels = dict(splits[domain, "test"].samples)
    assert all(labels[p] == y for p, y in splits[domain, "train"].samples + splits[domain, "val"].samples)


# --- errors ----------------------------------------------------------------------------------------


def test_missing_listed_file(tmp_path, data_root, spec):
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "cartoon", "train")
    lines = lst.read_text().splitlines()
    lines[4] = "cartoon/horse/no_such_image.jpg 5"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        spec.dataset(root, "cartoon", "train")
    msg = str(err.value)
    assert f"{lst}:5:" in msg
    assert str(root / "PACS" / "cartoon" / "horse" / "no_such_image.jpg") in msg
    assert "does not exist" in msg
    # the other splits of the copy still load
    assert len(spec.dataset(root, "cartoon", "val")) == 237


@pytest.mark.parametrize(
    "bad",
    [
        "photo/dog/056_0001.jpg",  # no label
        "photo/dog/056_0001.jpg one",  # label not a number
        "photo/dog/056_0001.jpg 1 extra",  # three fields
        "photo/dog/056 0001.jpg 1",  # space inside the path
        "photo/dog/056_0001.jpg 1.0",  # not an integer
        "photo/dog/056_0001.jpg --1",  # was a raw ValueError from int(), naming neither file nor line
        "photo/dog/056_0001.jpg \u00b2",  # superscript two: str.isdigit() but not int()
    ],
)
def test_malformed_line(tmp_path, data_root, spec, bad):
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "photo", "val")
    lines = lst.read_text().splitlines()
    lines[2] = bad
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        spec.dataset(root, "photo", "val")
    msg = str(err.value)
    assert f"{lst}:3:" in msg
    assert repr(bad) in msg


def test_wrong_labels_warn_and_use_folder(tmp_path, data_root, spec, caplog):
    """The class folder decides, whatever the list says (0, negative, or another class's label)."""
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "photo", "val")
    lines = lst.read_text().splitlines()
    assert lines[0].startswith("photo/dog/") and lines[-1].startswith("photo/person/")
    lines[0] = lines[0].split()[0] + " -1"
    lines[-1] = lines[-1].split()[0] + " 1"  # a person image listed as dog
    lst.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.pacs"):
        ds = spec.dataset(root, "photo", "val")
    assert len(ds) == 171
    assert ds.targets[0] == 0 and ds.targets[-1] == 6
    assert [r.getMessage().split(" lists")[0] for r in caplog.records] == [f"{lst}:1", f"{lst}:171"]


def test_blank_lines_are_skipped(tmp_path, data_root, spec):
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "photo", "val")
    lst.write_text("\n" + lst.read_text().replace("\n", "\n\n", 3) + "\n\n")
    assert len(spec.dataset(root, "photo", "val")) == 171


def test_missing_split_file(tmp_path, data_root, spec):
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "sketch", "val")
    lst.unlink()
    with pytest.raises(DataError) as err:
        spec.dataset(root, "sketch", "val")
    assert str(lst) in str(err.value)
    assert "sketch_crossval_kfold.txt" in str(err.value)


def test_empty_split_file(tmp_path, data_root, spec):
    root = pacs_copy(tmp_path, data_root)
    lst = list_path(root, "photo", "train")
    lst.write_text("\n")
    with pytest.raises(DataError, match="empty") as err:
        spec.dataset(root, "photo", "train")
    assert str(lst) in str(err.value)


def test_class_folder_not_a_pacs_class(tmp_path, data_root, spec):
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    (root / "PACS" / "photo" / "cat").mkdir(parents=True)
    (root / "PACS" / "photo" / "cat" / "a.jpg").symlink_to(data_root / "PACS" / "photo" / "dog" / "056_0001.jpg")
    lst = list_path(root, "photo", "test")
    lst.write_text("photo/cat/a.jpg 1\n")
    with pytest.raises(DataError, match="'cat' is not a PACS class") as err:
        spec.dataset(root, "photo", "test")
    assert f"{lst}:1:" in str(err.value)


@pytest.mark.parametrize("domain", ["painting", "Photo", "sketches", ""])
def test_unknown_domain(data_root, spec, domain):
    with pytest.raises(DataError) as err:
        spec.dataset(data_root, domain, "test")
    msg = str(err.value)
    assert f"'{domain}'" in msg
    assert "valid domains: art_painting, cartoon, photo, sketch" in msg


def test_unknown_split(data_root, spec):
    with pytest.raises(DataError, match="unknown split 'crossval'; valid splits: train, val, test"):
        spec.dataset(data_root, "photo", "crossval")


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, data_root, spec, content):
    real = data_root / "PACS" / "photo" / "dog" / "056_0001.jpg"
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    dog = root / "PACS" / "photo" / "dog"
    dog.mkdir(parents=True)
    (dog / "good.jpg").symlink_to(real)
    bad = dog / "bad.jpg"
    data = real.read_bytes()
    bad.write_bytes(b"this is not a jpeg" * 50 if content == "garbage" else data[: len(data) // 2])
    list_path(root, "photo", "test").write_text("photo/dog/good.jpg 1\nphoto/dog/bad.jpg 1\n")
    ds = spec.dataset(root, "photo", "test")  # listing only checks that the files exist
    assert len(ds) == 2 and ds.targets == [0, 0]
    img, label = ds[0]
    assert img.size == (227, 227) and label == 0
    with pytest.raises(DataError) as err:
        ds[1]
    assert str(bad) in str(err.value)


def test_image_deleted_after_listing(tmp_path, data_root, spec):
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    dog = root / "PACS" / "photo" / "dog"
    dog.mkdir(parents=True)
    (dog / "a.jpg").symlink_to(data_root / "PACS" / "photo" / "dog" / "056_0001.jpg")
    list_path(root, "photo", "test").write_text("photo/dog/a.jpg 1\n")
    ds = spec.dataset(root, "photo", "test")
    (dog / "a.jpg").unlink()
    with pytest.raises(DataError, match="missing") as err:
        ds[0]
    assert str(dog / "a.jpg") in str(err.value)


# --- domain pairs ----------------------------------------------------------------------------------


def _labels(dataset) -> list[int]:
    """Labels of a (possibly subset) image-list dataset, without decoding images."""
    if isinstance(dataset, Subset):
        base = _labels(dataset.dataset)
        return [base[i] for i in dataset.indices]
    return dataset.targets


def test_pair_unlabelled_target(data_root):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=64)
    assert (pair.source, pair.target, pair.classes) == ("art_painting", "cartoon", list(CLASSES))
    assert pair.num_classes == 7
    assert len(pair.source_train) == 1840
    assert len(pair.source_val) == 208
    assert len(pair.target_train) == 2344
    assert len(pair.target_eval) == 2344
    assert len(pair.target_adapt_images) == 2344
    assert pair.target_eval_split == "test"
    assert pair.target_val is None

    x, y = pair.source_train[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert type(y) is int and y == 0
    x, y = pair.source_val[207]
    assert x.shape == (3, 64, 64) and y == 6

    item = pair.target_train[0]  # unlabelled stream: a bare tensor, no label to leak
    assert isinstance(item, torch.Tensor) and item.shape == (3, 64, 64)
    assert isinstance(pair.target_adapt_images[5], torch.Tensor)
    x, y = pair.target_eval[2343]
    assert x.shape == (3, 64, 64) and y == 6
    # evaluation transform is deterministic
    assert torch.equal(pair.target_eval[0][0], pair.target_adapt_images[0])


def test_pair_labelled_target(data_root):
    """Oracle / fine-tuning: cartoon's train and crossval lists without the holdout, tested on the holdout."""
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=64, target_labels=True)
    assert len(pair.source_train) == 1840
    assert len(pair.source_val) == 208
    assert pair.target_eval_split == "test:holdout"
    assert pair.target_holdout is None  # the holdout is target_eval itself
    # README: cartoon's train (2,107) and crossval (237) lists are disjoint and make up its test list (2,344)
    assert len(pair.target_train) + len(pair.target_val) + len(pair.target_eval) == 2344
    x, y = pair.target_train[0]
    assert x.shape == (3, 64, 64) and type(y) is int
    parts = [set(per_sample(getattr(pair, n), "paths")) for n in ("target_train", "target_val", "target_eval")]
    assert sum(map(len, parts)) == 2344 and len(set().union(*parts)) == 2344  # disjoint, by path


def test_pair_limit_keeps_all_classes(data_root):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=64, limit=70)
    for name in ("source_train", "source_val", "target_train", "target_eval", "target_adapt_images", "target_holdout"):
        ds = getattr(pair, name)
        assert len(ds) == 70, name
        assert set(_labels(ds.base)) == set(range(7)), name
    sub = pair.source_train.base
    assert sub.indices[0] == 0 and sub.indices[-1] == 1839
    assert len(set(sub.indices)) == 70
    x, y = pair.source_train[69]
    assert x.shape == (3, 64, 64) and y == 6
    assert isinstance(pair.target_train[0], torch.Tensor)


def test_pair_limit_above_size_keeps_everything(data_root):
    pair = build_domain_pair("pacs", data_root, "photo", "sketch", image_size=32, limit=200)
    assert [len(pair.source_train), len(pair.source_val), len(pair.target_train)] == [200, 171, 200]


def test_pair_bad_limit(data_root):
    with pytest.raises(DataError, match="positive"):
        build_domain_pair("pacs", data_root, "photo", "sketch", limit=0)


def test_pair_unknown_domain(data_root):
    with pytest.raises(DataError) as err:
        build_domain_pair("pacs", data_root, "art_painting", "cartoons")
    msg = str(err.value)
    assert "target domain 'cartoons'" in msg
    assert "art_painting, cartoon, photo, sketch" in msg
    assert "Did you mean 'cartoon'?" in msg
