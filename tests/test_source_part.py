"""``data.source_part``: the classifier and the adapter learn on disjoint hash parts of the source domain
(AdapterNet, Hazan et al. 2018, section 4), on the real MNIST-M files (``data_root``).

The split is recomputed here from its documented rule (sha1 of ``source_part/<key>``, first 4 bytes
big-endian, below fraction x 2**32: the classifier's part), not taken from the code under test.
"""

from __future__ import annotations

import hashlib

import pytest

from shiftlab.config import build_config
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import keys_of
from shiftlab.errors import ConfigError, DataError

CAMERA = "mnist_m@power(0.2,0.3,0.4)"


def classifier_part(key: str, fraction: float = 0.5) -> bool:
    return int.from_bytes(hashlib.sha1(f"source_part/{key}".encode()).digest()[:4], "big") < fraction * 2**32


def keys(ds) -> set[str]:
    return set(keys_of(ds))


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "source-part-cache"))


def test_classifier_and_adapter_learn_on_disjoint_parts(data_root):
    whole = build_domain_pair("digits", data_root, "mnist_m", CAMERA, target_labels=True)
    clf = build_domain_pair("digits", data_root, "mnist_m", "mnist_m", source_part="classifier")
    ada = build_domain_pair("digits", data_root, "mnist_m", CAMERA, target_labels=True, source_part="adapter")
    learnt_by_clf = keys(clf.source_train) | keys(clf.source_val) | keys(clf.target_train)
    learnt_by_ada = keys(ada.target_train) | keys(ada.target_val) | keys(ada.source_train) | keys(ada.source_val)
    assert learnt_by_clf and learnt_by_ada
    assert all(classifier_part(k) for k in learnt_by_clf)
    assert not any(classifier_part(k) for k in learnt_by_ada)
    assert learnt_by_clf.isdisjoint(learnt_by_ada)
    # together they are the 3,000 MNIST-M training images, split about in half
    all_train = keys(whole.target_train) | keys(whole.target_val)
    assert len(all_train) == 3000
    assert keys(ada.target_train) | keys(ada.target_val) == {k for k in all_train if not classifier_part(k)}
    assert 1300 < len(keys(ada.target_train) | keys(ada.target_val)) < 1700
    # evaluated images never change: the official test set, 9,001
    assert keys(ada.target_eval) == keys(whole.target_eval) and len(ada.target_eval) == 9001
    assert keys(ada.target_adapt_images) == keys(ada.target_train)
    s = ada.splits["target_train"]
    assert s["source_part"]["part"] == "adapter" and s["source_part"]["classifier_fraction"] == 0.5
    assert s["subset"].endswith("adapter part") and "source_part" not in ada.splits["target_eval"]


def test_fraction_and_other_domains(data_root):
    clf = build_domain_pair(
        "digits", data_root, "mnist_m", "mnist_m", source_part="classifier", source_part_fraction=0.8
    )
    n = len(clf.source_train) + len(clf.source_val)
    assert 2250 < n < 2550  # about 80% of 3,000
    assert all(classifier_part(k, 0.8) for k in keys(clf.source_train))
    # a target that is not a camera of the source is untouched; only the source is split
    pair = build_domain_pair(
        "digits", data_root, "mnist_m", "mnist", target_labels=True, source_part="adapter", limit=2000
    )
    plain = build_domain_pair("digits", data_root, "mnist_m", "mnist", target_labels=True, limit=2000)
    assert keys(pair.target_train) == keys(plain.target_train)
    assert "source_part" not in pair.splits["target_train"]
    assert not any(classifier_part(k) for k in keys(pair.source_train))


def test_config_key_is_validated(tmp_path):
    cfg = build_config([], ["--data.source_part=adapter", "--data.source_part_fraction=0.25"])
    assert (cfg.data.source_part, cfg.data.source_part_fraction) == ("adapter", 0.25)
    with pytest.raises(ConfigError, match="source_part"):
        build_config([], ["--data.source_part=half"])
    with pytest.raises(DataError):
        build_domain_pair("demo", None, "digits", "digits_photo", source_part="half")


def test_disjoint_sweeps_learn_on_the_adapter_part_without_early_stopping():
    from pathlib import Path

    from shiftlab.sweep.spec import expand, load_sweep

    repo = Path(__file__).resolve().parents[1]
    trials = expand(load_sweep(repo / "sweeps" / "adapternet_digits_disjoint.yaml"))
    assert len(trials) == 4 * 3 * 3
    for t in trials:
        assert t.config["data"]["source_part"] == "adapter"
        assert t.config["train"]["early_stopping_patience"] is None
        assert str(t.config["model"]["weights"]).endswith("runs/adapternet/digits/classifier_part/checkpoints/best.pt")
    es = expand(load_sweep(repo / "sweeps" / "adapternet_digits_disjoint_early_stopping.yaml"))
    assert [t.name for t in es] == [t.name for t in trials]
    assert all(t.config["train"]["early_stopping_patience"] == 5 for t in es)
    inference = expand(load_sweep(repo / "sweeps" / "adapternet_digits_disjoint_inference.yaml"))
    assert all(str(t.config["model"]["weights"]).endswith("classifier_part/checkpoints/best.pt") for t in inference)
    clf = build_config([repo / "configs" / "adapternet" / "digits_classifier_part.yaml"], [])
    assert clf.data.source_part == "classifier" and clf.experiment.name == "adapternet/digits/classifier_part"
    init = expand(load_sweep(repo / "sweeps" / "adapternet_digits_init.yaml"))
    assert sorted({t.point["experiment.seed"] for t in init}) == [0, 1, 2]
    # the initialisation study runs in the document's protocol too: adapter part, no early stopping
    assert all(t.config["data"]["source_part"] == "adapter" for t in init)
    assert all(t.config["train"]["early_stopping_patience"] is None for t in init)
    assert all(str(t.config["model"]["weights"]).endswith("classifier_part/checkpoints/best.pt") for t in init)
