"""Simulated cameras (AdapterNet, Hazan et al. 2018, Sec. 4): colour rotation in CIELAB and per-channel powers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from shiftlab.cli import main
from shiftlab.data.shifts import SHIFTS, colour_rotation, parse_domain, power
from shiftlab.errors import DataError


def random_image(seed=0, shape=(24, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def ramp() -> np.ndarray:
    """Every 8-bit level once in each channel: a 16 x 16 image."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.repeat(levels[:, :, None], 3, axis=2)


# --- colour rotation ---------------------------------------------------------------------------------


def test_registered_with_their_signatures():
    assert SHIFTS["colour_rotation"].signature() == "colour_rotation(degrees: float)"
    assert SHIFTS["power"].signature() == "power(r: float, g: float, b: float)"
    base, shifts = parse_domain("mnist_m@colour_rotation(150)@power(0.2, 0.3, 0.4)")
    assert base == "mnist_m" and [s.args for s in shifts] == [(150.0,), (0.2, 0.3, 0.4)]
    out = shifts[0](random_image())  # through the registry's checks (uint8, same shape)
    assert out.dtype == np.uint8 and out.shape == (24, 20, 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_angle_zero_is_the_identity_within_quantisation(seed):
    image = random_image(seed, (32, 32, 3))
    out = colour_rotation(image, 0.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image).max() <= 1  # RGB -> Lab -> RGB in float, then rounded
    assert np.abs(colour_rotation(image, 360.0).astype(int) - image).max() <= 1


def test_greys_have_no_chroma_to_rotate():
    grey = np.repeat(np.arange(0, 256, 5, dtype=np.uint8)[None, :, None], 3, axis=2)
    assert np.abs(colour_rotation(grey, 150.0).astype(int) - grey).max() <= 1


def test_rotation_preserves_lightness_where_not_clipped():
    image = random_image(3, (40, 40, 3))
    lab = rgb2lab(image)
    theta = np.deg2rad(150.0)
    a, b = lab[..., 1], lab[..., 2]
    rotated = np.stack([lab[..., 0], np.cos(theta) * a - np.sin(theta) * b, np.sin(theta) * a + np.cos(theta) * b], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lab2rgb warns about the out-of-gamut pixels this test leaves out
        unclipped = lab2rgb(rotated)
    inside = ((unclipped > 0.002) & (unclipped < 0.998)).all(-1)  # pixels the gamut clip leaves alone
    assert inside.mean() > 0.2  # enough pixels for the check to mean something
    out = colour_rotation(image, 150.0)
    lightness = rgb2lab(out)[..., 0]
    # 8-bit rounding of each channel moves L by well under 1 unit of 100
    assert np.abs(lightness - lab[..., 0])[inside].max() < 1.0
    # and the chroma really turned: the hue angle moved by 150 degrees where there is colour
    chroma = np.hypot(a, b)
    coloured = inside & (chroma > 20)
    new = rgb2lab(out)
    turn = np.rad2deg(np.arctan2(new[..., 2], new[..., 1]) - np.arctan2(b, a)) % 360
    assert np.abs(turn[coloured] - 150.0).max() < 3.0


def test_rotation_stays_in_the_gamut():
    out = colour_rotation(random_image(5, (32, 32, 3)), 150.0)
    assert out.dtype == np.uint8  # clipped to [0, 1] before the uint8 rounding: no wrap-around
    assert out.min() >= 0 and out.max() <= 255


# --- power -------------------------------------------------------------------------------------------


def test_power_values_and_range():
    image = random_image(7)
    out = power(image, 0.2, 0.3, 0.4)
    assert out.dtype == np.uint8 and out.shape == image.shape
    expected = np.round(255 * (image / 255.0) ** np.array([0.2, 0.3, 0.4]))
    assert np.array_equal(out, expected.astype(np.uint8))
    levels = ramp()
    lifted = power(levels, 0.2, 0.3, 0.4)
    assert lifted[0, 0].tolist() == [0, 0, 0] and lifted[-1, -1].tolist() == [255, 255, 255]  # ends fixed
    flat = lifted.reshape(-1, 3)
    assert (np.diff(flat.astype(int), axis=0) >= 0).all()  # monotone in every channel
    assert (flat >= levels.reshape(-1, 3)).all()  # a power below 1 brightens
    assert np.array_equal(power(levels, 1.0, 1.0, 1.0), levels)


def test_power_leaves_fewer_distinct_levels():
    # Rounding to the nearest level (numpy's round) of 255 * (v / 255) ** p over all 256 levels v.
    # The paper counts 120 of 256 levels left by power 0.2; ours gives exactly that.
    lifted = power(ramp(), 0.2, 0.3, 0.4).reshape(-1, 3)
    counts = [len(np.unique(lifted[:, c])) for c in range(3)]
    assert counts == [120, 149, 173]


def test_power_rejects_non_positive_exponents():
    with pytest.raises(DataError, match=r"every exponent must be positive, got \(0.0, 0.3, 0.4\)"):
        power(random_image(), 0.0, 0.3, 0.4)
    with pytest.raises(
        DataError, match=r"takes 3 argument\(s\), got 1; expected power\(r: float, g: float, b: float\)"
    ):
        parse_domain("mnist_m@power(0.2)")


# --- a derived domain end to end ---------------------------------------------------------------------


def test_camera_domain_end_to_end_through_shiftlab_train(data_root, tmp_path, capsys):
    code = main(
        [
            "train",
            f"--data.root={data_root}",
            "--data.dataset=digits",
            "--data.source=mnist_m",
            "--data.target=mnist_m@power(0.2,0.3,0.4)",
            "--model.name=small_cnn",
            "--data.image_size=28",
            "--data.limit=64",
            "--data.batch_size=32",
            "--train.epochs=1",
            "--train.progress=false",
            "--train.validators=[]",
            f"--experiment.output_dir={tmp_path}",
            "--experiment.name=camera",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "camera" / "summary.json").read_text())
    assert summary["target"] == "mnist_m@power(0.2,0.3,0.4)"
    assert summary["splits"]["target_eval"]["domain"] == "mnist_m@power(0.2,0.3,0.4)"
    # a derived domain keeps its base's keys: the camera's test images are MNIST-M's test images
    assert summary["splits"]["target_eval"]["split"] == "test" and summary["splits"]["target_eval"]["size"] == 64
    assert 0.0 <= summary["target_acc"] <= 1.0
