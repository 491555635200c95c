"""Target splits that follow each benchmark's protocol, on the real data (``data_root``).

Expected sizes come from ``/work/shared/data/README.md``; the holdout is recomputed here from its
documented rule (sha1 of ``holdout/<key>``, first 4 bytes big-endian, below fraction x 2**32), not
taken from the code under test.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import keys_of, per_sample
from shiftlab.errors import DataError

CARTOON_TRAIN, CARTOON_VAL, CARTOON_ALL = 2107, 237, 2344  # README: disjoint, together the whole domain


def documented_holdout(keys, fraction=0.2) -> set[str]:
    return {
        k for k in keys if int.from_bytes(hashlib.sha1(f"holdout/{k}".encode()).digest()[:4], "big") < fraction * 2**32
    }


def keys(ds) -> set[str]:
    return set(keys_of(ds))


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "splits-cache"))


def listed(data_root, name: str) -> list[str]:
    """The relative paths of an official PACS list: the keys of its images."""
    text = (data_root / "PACS" / "splits" / f"{name}_kfold.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cartoon_keys(data_root) -> list[str]:
    return listed(data_root, "cartoon_test")


# --- digits: adapt on the official training images, evaluate on the official test set ---------------


def test_mnist_to_mnist_m_unsupervised(data_root):
    pair = build_domain_pair("digits", data_root, "mnist", "mnist_m")
    assert len(pair.target_train) == len(pair.target_adapt_images) == 3000  # all MNIST-M training images we have
    assert len(pair.target_eval) == 9001  # the official test set
    assert pair.target_eval_split == "test"
    assert pair.target_holdout is None  # the test set is already disjoint from train/val: it is the holdout
    assert pair.target_val is None
    assert keys(pair.target_train).isdisjoint(keys(pair.target_eval))
    assert {k.split("/")[0] for k in keys(pair.target_train)} == {"mnist_m_train"}
    assert (len(pair.source_train), len(pair.source_val)) == (53979, 6021)  # hashed 10% of MNIST's 60,000
    s = pair.splits
    assert (s["target_train"]["split"], s["target_train"]["size"], s["target_train"]["labelled"]) == (
        "train+val",
        3000,
        False,
    )
    assert (s["target_eval"]["split"], s["target_eval"]["size"]) == ("test", 9001)
    assert s["target_holdout"]["fingerprint"] == s["target_eval"]["fingerprint"]
    # unsupervised target streams carry no labels
    assert isinstance(pair.target_train[0], torch.Tensor)
    assert isinstance(pair.target_adapt_images[0], torch.Tensor)
    x, y = pair.target_eval[0]
    assert x.shape == (3, 32, 32) and type(y) is int


def test_mnist_to_mnist_m_labelled(data_root):
    pair = build_domain_pair("digits", data_root, "mnist", "mnist_m", target_labels=True)
    train, val, test = keys(pair.target_train), keys(pair.target_val), keys(pair.target_eval)
    assert len(train) + len(val) == 3000 and len(test) == 9001
    assert (len(train), len(val)) == (2699, 301)  # hashed 10% of the 3,000 as validation
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert pair.target_holdout is None
    unsupervised = build_domain_pair("digits", data_root, "mnist", "mnist_m")
    assert test == keys(unsupervised.target_eval)  # every row measured on the same images
    x, y = pair.target_train[0]
    assert type(y) is int


# --- PACS: transductive, with a hash-selected holdout ------------------------------------------------


def test_pacs_unsupervised_is_transductive_and_also_evaluated_on_the_holdout(data_root, cartoon_keys):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=32)
    assert len(pair.target_train) == len(pair.target_eval) == CARTOON_ALL
    assert keys(pair.target_train) == keys(pair.target_eval) == set(cartoon_keys)
    holdout = documented_holdout(cartoon_keys)
    assert keys(pair.target_holdout) == holdout
    assert len(holdout) == 437  # 18.6% of 2,344
    assert pair.splits["target_holdout"] == {
        "domain": "cartoon",
        "split": "test",
        "subset": "holdout",
        "labelled": True,
        "size": 437,
        "fingerprint": pair.splits["target_holdout"]["fingerprint"],
        "holdout_fraction": 0.2,
    }
    assert isinstance(pair.target_train[0], torch.Tensor)


def test_pacs_labelled_parts_are_disjoint_and_tested_on_the_same_holdout(data_root, cartoon_keys):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=32, target_labels=True)
    holdout = documented_holdout(cartoon_keys)
    train, val, test = keys(pair.target_train), keys(pair.target_val), keys(pair.target_eval)
    assert test == holdout
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert train | val | test == set(cartoon_keys)
    assert train == set(listed(data_root, "cartoon_train")) - holdout
    assert val == set(listed(data_root, "cartoon_crossval")) - holdout
    assert (len(train), len(val), len(test)) == (1707, 200, 437)  # 2,107 - 400, 237 - 37, 18.6% of 2,344
    unsupervised = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=32)
    assert pair.splits["target_eval"]["fingerprint"] == unsupervised.splits["target_holdout"]["fingerprint"]
    assert pair.splits["target_train"]["subset"] == "without holdout"


def test_holdout_fraction_and_limit(data_root, cartoon_keys):
    pair = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=32, holdout_fraction=0.5)
    assert keys(pair.target_holdout) == documented_holdout(cartoon_keys, 0.5)
    limited = build_domain_pair("pacs", data_root, "art_painting", "cartoon", image_size=32, limit=50)
    assert len(limited.target_holdout) == 50
    assert keys(limited.target_holdout) <= documented_holdout(cartoon_keys)  # chosen before the limit
    assert limited.splits["target_holdout"]["size_before_limit"] == 437
    with pytest.raises(DataError, match="target_holdout_fraction must be between 0 and 1"):
        build_domain_pair("pacs", data_root, "art_painting", "cartoon", holdout_fraction=1.0)


def test_split_overrides(data_root):
    pair = build_domain_pair(
        "pacs", data_root, "art_painting", "cartoon", image_size=32, target_adapt_split="train", target_eval_split="val"
    )
    assert len(pair.target_train) == CARTOON_TRAIN
    assert len(pair.target_eval) == CARTOON_VAL
    assert pair.splits["target_train"]["split"] == "train"
    with pytest.raises(DataError) as err:
        build_domain_pair("pacs", data_root, "art_painting", "cartoon", target_eval_split="tset")
    assert "data.target_eval_split: 'tset' is not a split; valid: train, val, test" in str(err.value)


def test_demo_keeps_its_protocol():
    """The demo's target test split (30%) is adapted on and evaluated on; labelled methods test on it too."""
    pair = build_domain_pair("demo", None, "digits", "digits_photo")
    labelled = build_domain_pair("demo", None, "digits", "digits_photo", target_labels=True)
    assert len(pair.target_eval) == len(pair.target_train) == 553
    assert keys(labelled.target_eval) == keys(pair.target_eval)
    # source training never sees the target's test digits (digits_photo image i is digits image i)
    assert keys(pair.source_train).isdisjoint(keys(pair.target_eval))
    assert per_sample(pair.target_eval, "paths")[0] is None  # in memory


def test_source_train_split_selects_the_whole_source_domain(data_root):
    """data.source_train_split=test trains on the whole Photo domain (the PACS DANN assignment's "entire Photo
    dataset"): every image of photo_test_kfold.txt, README's 1,670; the default keeps the official train list."""
    default = build_domain_pair("pacs", data_root, "photo", "art_painting", image_size=32)
    whole = build_domain_pair("pacs", data_root, "photo", "art_painting", image_size=32, source_train_split="test")
    assert len(default.source_train) == 1499 and keys(default.source_train) == set(listed(data_root, "photo_train"))
    assert len(whole.source_train) == 1670 and keys(whole.source_train) == set(listed(data_root, "photo_test"))
    assert whole.splits["source_train"]["split"] == "test"
    assert keys(whole.source_val) <= keys(whole.source_train)  # said in the key's help: val is trained on then
    assert len(whole.target_eval) == len(whole.target_train) == 2048  # the whole Art domain, transductive
    with pytest.raises(DataError, match="data.source_train_split: 'all' is not a split"):
        build_domain_pair("pacs", data_root, "photo", "art_painting", source_train_split="all")
