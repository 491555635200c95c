"""Derived domains: a base domain's images through a registered, deterministic image transform.

A domain name may carry suffixes, ``<domain>@<shift>(<args>)``, applied left to right::

    photo@greyscale                   PACS photos in grey
    mnist_m@brightness(-40)           MNIST-M, 40 grey levels darker
    photo@greyscale@brightness(20)    both, in this order

This is how simulated cameras (a colour rotation in CIELAB, a per-channel power) become domains of
any dataset without copying files: a shift is one function registered here, nothing else changes.
A shift acts on the uint8 image as loaded (H x W x 3, RGB), before resizing and the tensor transform,
so that it sees what a camera would deliver. It must be deterministic (same image in, same image
out): the derived domain is then a fixed dataset, the same in every run, and its samples keep the
base domain's keys, so that a pair ``photo -> photo@greyscale`` can keep evaluated images out of
training (see :func:`shiftlab.data.pair.build_domain_pair`).

A shift of your own::

    from shiftlab.data.shifts import register_shift

    def invert(image):                     # uint8 (H, W, 3) -> uint8 (H, W, 3)
        return 255 - image

    register_shift("invert", invert, doc="photographic negative")

Arguments are read from the function's signature after ``image``: their annotations (``int``,
``float``, ``str``) convert the text in the parentheses, and defaults make them optional.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils import did_you_mean

ARGUMENT_TYPES = {int: "int", float: "float", str: "str"}
_ANNOTATION_NAMES = {"int": int, "float": float, "str": str}  # string annotations (from __future__)
_SUFFIX = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<args>[^()]*)\))?$")


@dataclass(frozen=True)
class Shift:
    """A registered image transform: its name, function, arguments (after ``image``) and one-line doc."""

    name: str
    fn: Callable[..., np.ndarray]
    params: tuple[inspect.Parameter, ...]
    doc: str = ""

    def signature(self) -> str:
        """``brightness(delta: float)``: how to write it after ``@``."""
        parts = []
        for p in self.params:
            text = f"{p.name}: {ARGUMENT_TYPES[_annotation(p)]}"
            parts.append(text if p.default is inspect.Parameter.empty else f"{text} = {p.default!r}")
        return f"{self.name}({', '.join(parts)})"


SHIFTS: dict[str, Shift] = {}


def _annotation(param: inspect.Parameter) -> type:
    ann = param.annotation
    return _ANNOTATION_NAMES.get(ann, ann) if isinstance(ann, str) else ann


def register_shift(name: str, fn: Callable[..., np.ndarray], doc: str = "") -> Shift:
    """Register ``fn(image, *args) -> image`` (uint8 H x W x 3 in and out) as ``<domain>@name(args)``.

    The arguments after ``image`` must be positional and annotated ``int``, ``float`` or ``str``; a
    later registration under the same name replaces the earlier one.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"shift name {name!r} must be an identifier (letters, digits, underscores)")
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"shift '{name}': {fn.__name__} must take the image as its first argument")
    for p in params[1:]:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or _annotation(p) not in ARGUMENT_TYPES:
            raise TypeError(
                f"shift '{name}': argument '{p.name}' of {fn.__name__} must be positional and "
                f"annotated int, float or str"
            )
    doc = doc or (inspect.getdoc(fn) or "").split("\n")[0]
    shift = Shift(name, fn, tuple(params[1:]), doc)
    SHIFTS[name] = shift
    return shift


def get_shift(name: str, domain: str = "") -> Shift:
    try:
        return SHIFTS[name]
    except KeyError:
        where = f" in domain '{domain}'" if domain else ""
        raise DataError(
            f"unknown shift '{name}'{where}; registered shifts: "
            f"{', '.join(SHIFTS[k].signature() for k in sorted(SHIFTS))}." + did_you_mean(name, SHIFTS)
        ) from None


@dataclass(frozen=True)
class AppliedShift:
    """A shift with its arguments, as written after ``@`` in a domain name."""

    shift: Shift
    args: tuple

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.shift.fn(image, *self.args)
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != image.shape:
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise DataError(f"shift '{self}' must return a uint8 image of shape {image.shape}, got {got}")
        return out

    def __str__(self) -> str:
        return f"{self.shift.name}({', '.join(map(str, self.args))})" if self.shift.params else self.shift.name


def _convert(text: str, param: inspect.Parameter, shift: Shift, domain: str):
    kind = _annotation(param)
    try:
        return kind(text)
    except ValueError:
        raise DataError(
            f"argument '{param.name}' of shift '{shift.name}' in domain '{domain}' must be "
            f"{ARGUMENT_TYPES[kind]}, got {text!r}; expected {shift.signature()}"
        ) from None


def parse_shift(suffix: str, domain: str) -> AppliedShift:
    """``brightness(20)`` -> the registered shift with its converted arguments; errors name the shift."""
    match = _SUFFIX.match(suffix.strip())
    if not match:
        raise DataError(
            f"cannot read shift '{suffix}' in domain '{domain}': write <domain>@<shift> or "
            f"<domain>@<shift>(<arg>, ...), e.g. photo@brightness(20)"
        )
    shift = get_shift(match["name"], domain)
    raw = match["args"]
    texts = [t.strip() for t in raw.split(",")] if raw is not None and raw.strip() else []
    required = [p for p in shift.params if p.default is inspect.Parameter.empty]
    if not len(required) <= len(texts) <= len(shift.params):
        count = (
            f"{len(shift.params)}" if len(required) == len(shift.params) else f"{len(required)} to {len(shift.params)}"
        )
        raise DataError(
            f"shift '{shift.name}' in domain '{domain}' takes {count} argument(s), got {len(texts)}; "
            f"expected {shift.signature()}"
        )
    args = [_convert(t, p, shift, domain) for t, p in zip(texts, shift.params)]
    args += [p.default for p in shift.params[len(texts) :]]
    return AppliedShift(shift, tuple(args))


def parse_domain(domain: str) -> tuple[str, tuple[AppliedShift, ...]]:
    """``photo@greyscale@brightness(20)`` -> ``("photo", (greyscale, brightness(20.0)))``."""
    base, *suffixes = domain.split("@")
    return base, tuple(parse_shift(s, domain) for s in suffixes)


class Shifted(Dataset):
    """A base dataset's ``(PIL image, label)`` samples through shifts, applied to the uint8 RGB image.

    Keeps the base's order, so keys, labels and classes are the base's (``base`` is what
    :mod:`shiftlab.data.splits` looks through).
    """

    def __init__(self, base: Dataset, shifts: tuple[AppliedShift, ...]):
        self.base, self.shifts = base, tuple(shifts)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    def __getitem__(self, index: int):
        image, label = self.base[index]
        array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
        for shift in self.shifts:
            array = shift(array)
        return Image.fromarray(array, mode="RGB"), label


def format_shifts() -> str:
    """The registered shifts, one line each, for ``shiftlab datasets``."""
    lines = [
        "shifts (derive a domain of any dataset as <domain>@<shift>(args), e.g. photo@greyscale, "
        "mnist_m@brightness(-40); chain them with more @):"
    ]
    for name in sorted(SHIFTS):
        lines.append(f"  {SHIFTS[name].signature():<28} {SHIFTS[name].doc}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ built-in shifts


def greyscale(image: np.ndarray) -> np.ndarray:
    """grey image in 3 channels (ITU-R 601-2 luma, as PIL's convert('L'))"""
    grey = np.asarray(Image.fromarray(image, mode="RGB").convert("L"))
    return np.repeat(grey[:, :, None], 3, axis=2)


def brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """adds delta grey levels (-255..255) to every channel, clipped to 0..255"""
    return np.clip(image.astype(np.float32) + delta, 0, 255).round().astype(np.uint8)


register_shift("greyscale", greyscale)
register_shift("brightness", brightness)


# ----------------------------------------------------------- simulated cameras (AdapterNet, Hazan et al.)
# Hazan, Shoham, Avraham, Perets, Kasten, Hauptmann, Kaufman, Ben-Moshe, "AdapterNet - learning input
# transformation for domain adaptation" (2018), Sec. 4: a new camera is simulated by a colour rotation
# in CIELAB or by per-channel power functions of the ImageNet validation images.


def colour_rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    """rotates each pixel's (a, b) chroma in CIELAB by degrees, keeps L, clips to the RGB gamut (AdapterNet)"""
    from skimage.color import lab2rgb, rgb2lab  # imported here: only this shift needs scikit-image

    lab = rgb2lab(image)  # uint8 RGB is read as sRGB in [0, 1]
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    a, b = lab[..., 1].copy(), lab[..., 2].copy()
    lab[..., 1], lab[..., 2] = cos * a - sin * b, sin * a + cos * b
    # a rotated chroma may leave the sRGB gamut: lab2rgb clips (and warns, for every image: silenced, since
    # clipping is intended here) and so do we, as a camera saturates
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*negative Z values that have been clipped")
        rgb = np.clip(lab2rgb(lab), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def power(image: np.ndarray, r: float, g: float, b: float) -> np.ndarray:
    """per-channel power x**p of values in [0, 1], rounded back to 8 bits (AdapterNet's power camera)"""
    exponents = np.array([r, g, b], dtype=np.float64)
    if (exponents <= 0).any():
        raise DataError(f"power(r, g, b): every exponent must be positive, got ({r}, {g}, {b})")
    # round to the nearest level, as an 8-bit camera would store it: power 0.2 leaves 120 of 256 levels
    return np.round(255.0 * (image.astype(np.float64) / 255.0) ** exponents).astype(np.uint8)


register_shift("colour_rotation", colour_rotation)
register_shift("power", power)
