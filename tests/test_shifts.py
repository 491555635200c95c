"""Derived domains (``<domain>@<shift>(args)``): the shift registry, and pairs that share a base domain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.config import build_config
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.registry import get_dataset
from shiftlab.data.shifts import SHIFTS, parse_domain, register_shift
from shiftlab.data.splits import keys_of, per_sample
from shiftlab.errors import DataError


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "shifts-cache"))


def image(seed=0, shape=(9, 7, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- parsing and errors ----------------------------------------------------------------------------


def test_parse_plain_chained_and_defaults():
    assert parse_domain("photo") == ("photo", ())
    base, shifts = parse_domain("photo@greyscale@brightness( -40 )")
    assert base == "photo"
    assert [str(s) for s in shifts] == ["greyscale", "brightness(-40.0)"]
    assert shifts[1].args == (-40.0,)


def test_unknown_shift_lists_the_registered_ones():
    with pytest.raises(DataError) as err:
        parse_domain("photo@grayscale")
    msg = str(err.value)
    assert "unknown shift 'grayscale' in domain 'photo@grayscale'" in msg
    assert (
        "registered shifts: brightness(delta: float), colour_rotation(degrees: float), greyscale(), "
        "power(r: float, g: float, b: float)"
    ) in msg
    assert "Did you mean 'greyscale'?" in msg


@pytest.mark.parametrize(
    "domain, expected",
    [
        (
            "photo@brightness",
            "shift 'brightness' in domain 'photo@brightness' takes 1 argument(s), got 0; "
            "expected brightness(delta: float)",
        ),
        ("photo@brightness(1,2)", "takes 1 argument(s), got 2; expected brightness(delta: float)"),
        ("photo@greyscale(3)", "shift 'greyscale' in domain 'photo@greyscale(3)' takes 0 argument(s), got 1"),
        (
            "photo@brightness(bright)",
            "argument 'delta' of shift 'brightness' in domain 'photo@brightness(bright)' "
            "must be float, got 'bright'; expected brightness(delta: float)",
        ),
        ("photo@brightness(3", "cannot read shift 'brightness(3' in domain 'photo@brightness(3'"),
    ],
)
def test_bad_arguments_name_the_shift_and_its_signature(domain, expected):
    with pytest.raises(DataError) as err:
        parse_domain(domain)
    assert expected in str(err.value)


def test_a_new_shift_is_one_registration():
    """The later issue's per-channel power, registered as a user would: one call, arguments typed."""

    def power(image: np.ndarray, r: float, g: float, b: float = 1.0) -> np.ndarray:
        """per-channel power law on [0, 1] values"""
        x = image / 255.0
        return np.round(255 * x ** np.array([r, g, b])).astype(np.uint8)

    register_shift("power", power)
    assert SHIFTS["power"].signature() == "power(r: float, g: float, b: float = 1.0)"
    (applied,) = parse_domain("mnist_m@power(0.2,0.3,0.4)")[1]
    img = image()
    expected = np.round(255 * (img / 255.0) ** np.array([0.2, 0.3, 0.4])).astype(np.uint8)
    np.testing.assert_array_equal(applied(img), expected)
    assert parse_domain("mnist_m@power(2,3)")[1][0].args == (2.0, 3.0, 1.0)
    with pytest.raises(TypeError, match="argument 'k' of .* must be positional and annotated"):
        register_shift("bad", lambda image, k: image)
    with pytest.raises(DataError, match="must return a uint8 image"):
        register_shift("float_out", lambda image: image / 255.0)
        parse_domain("x@float_out")[1][0](img)


def test_builtin_shifts_are_deterministic_pixel_maps():
    img = image(1)
    (grey,) = parse_domain("d@greyscale")[1]
    out = grey(img)
    reference = np.asarray(Image.fromarray(img).convert("L"))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out == reference[:, :, None]).all()
    (bright,) = parse_domain("d@brightness(100)")[1]
    np.testing.assert_array_equal(bright(img), np.clip(img.astype(int) + 100, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(bright(img), bright(img))


# --- derived domains of any dataset ----------------------------------------------------------------


def test_any_dataset_accepts_a_derived_domain_and_checks_its_base():
    spec = get_dataset("demo")
    assert spec.validate_domain("digits_photo@greyscale") == "digits_photo@greyscale"
    with pytest.raises(DataError) as err:
        spec.validate_domain("digit@greyscale", "target domain")
    msg = str(err.value)
    assert "unknown target domain 'digit' (in 'digit@greyscale') for dataset 'demo'" in msg
    assert "valid domains: digits, digits_photo" in msg


def test_derived_domain_is_its_base_through_the_shift(data_root):
    spec = get_dataset("pacs")
    base = spec.dataset(data_root, "photo", "val")
    derived = spec.dataset(data_root, "photo@brightness(-50)", "val")
    assert len(derived) == len(base) == 171
    assert keys_of(derived) == keys_of(base) and derived.classes == base.classes
    for i in (0, 170):
        (img, y), (ref, y_ref) = derived[i], base[i]
        assert y == y_ref and img.mode == "RGB" and img.size == ref.size
        np.testing.assert_array_equal(np.asarray(img), np.clip(np.asarray(ref).astype(int) - 50, 0, 255))


def test_config_takes_a_derived_domain():
    cfg = build_config([], ["--data.target=photo@brightness(20)", "--data.source=photo"])
    assert cfg.data.target == "photo@brightness(20)"


# --- source and target sharing a base domain: no evaluated image is trained on ---------------------


def _evaluated_and_trained(pair, labelled: bool) -> tuple[set, set]:
    evaluated = set(per_sample(pair.target_eval, "keys"))
    if pair.target_holdout is not None:
        evaluated |= set(per_sample(pair.target_holdout, "keys"))
    trained = set(keys_of(pair.source_train)) | set(keys_of(pair.source_val))
    if labelled:
        trained |= set(keys_of(pair.target_train)) | set(keys_of(pair.target_val))
    return evaluated, trained


@pytest.mark.parametrize("labelled", [False, True])
def test_pacs_photo_to_photo_greyscale_never_trains_on_evaluated_images(data_root, labelled):
    pair = build_domain_pair("pacs", data_root, "photo", "photo@greyscale", image_size=32, target_labels=labelled)
    evaluated, trained = _evaluated_and_trained(pair, labelled)
    assert evaluated and trained and evaluated.isdisjoint(trained)
    # by file, not only by key
    paths = lambda name: set(per_sample(getattr(pair, name), "paths"))  # noqa: E731
    trained_paths = (
        paths("source_train")
        | paths("source_val")
        | (paths("target_train") | paths("target_val") if labelled else set())
    )
    assert paths("target_eval").isdisjoint(trained_paths)
    assert pair.target_eval_split == "test:holdout"
    assert len(pair.target_eval) == 305  # photo's holdout: 18.3% of 1,670
    assert (len(pair.source_train), len(pair.source_val)) == (1218, 147)  # 1,499 and 171 without it
    x, y = pair.target_eval[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey


@pytest.mark.parametrize("labelled", [False, True])
def test_same_domain_twice_is_also_safe(data_root, labelled):
    pair = build_domain_pair("pacs", data_root, "sketch", "sketch", image_size=32, target_labels=labelled, limit=100)
    evaluated, trained = _evaluated_and_trained(pair, labelled)
    assert evaluated.isdisjoint(trained)


@pytest.mark.parametrize("labelled", [False, True])
def test_digits_mnist_m_to_brighter_mnist_m(data_root, labelled):
    pair = build_domain_pair("digits", data_root, "mnist_m", "mnist_m@brightness(60)", target_labels=labelled)
    evaluated, trained = _evaluated_and_trained(pair, labelled)
    assert evaluated.isdisjoint(trained)
    assert len(pair.target_eval) == 9001  # the official test set: already out of every training split
    eval_paths = set(per_sample(pair.target_eval, "paths"))
    assert {p.parent.name for p in eval_paths} == {"mnist_m_test"}
    assert {p.parent.name for p in per_sample(pair.source_train, "paths")} == {"mnist_m_train"}
    x_shifted, _ = pair.target_eval[0]
    plain = build_domain_pair("digits", data_root, "mnist", "mnist_m", limit=5)
    assert (x_shifted >= plain.target_eval[0][0]).all()
