"""Loading weights: torchvision's ImageNet weights (through its weights API and cache) or a local file.

There is no silent fallback: a model asked to start from weights either gets them or the run stops
with a :class:`WeightsError` that says how to provide them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision

from ..checkpoints import refuse_non_finite
from ..errors import WeightsError


def imagenet_weights(arch: str, name: str = "imagenet"):
    """The torchvision weights enum for ``arch``: ``imagenet`` is its DEFAULT, else an enum name
    such as ``IMAGENET1K_V1``."""
    enum = torchvision.models.get_model_weights(arch)
    if name == "imagenet":
        return enum.DEFAULT
    try:
        return enum[name]
    except KeyError:
        valid = ", ".join(["imagenet", *enum.__members__])
        raise WeightsError(f"unknown model.pretrained '{name}' for {arch}; valid: none, {valid}") from None


def weights_url(url: str) -> str:
    """``$SHIFTLAB_WEIGHTS_MIRROR`` (a base URL) replaces the host of torchvision's URL, for offline mirrors."""
    mirror = os.environ.get("SHIFTLAB_WEIGHTS_MIRROR")
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if mirror else url


def download_state_dict(url: str, *, progress: bool = True) -> dict:
    """Fetch a state dict into torch hub's cache (``$TORCH_HOME/hub/checkpoints``), as torchvision does.

    The hash prefix in the file name is checked (``check_hash=True``) and the file is read with
    ``weights_only=True``; any failure becomes a :class:`WeightsError` with the ways out.
    """
    filename = url.rsplit("/", 1)[-1]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except (URLError, OSError, RuntimeError, ValueError) as err:
        raise WeightsError(
            f"could not get weights from {url}: {err}\n"
            f"Provide them in one of these ways:\n"
            f"  - copy the file {filename} into {cache} (torchvision's cache; TORCH_HOME moves it);\n"
            f"  - set SHIFTLAB_WEIGHTS_MIRROR to a base URL that serves {filename};\n"
            f"  - pass --model.weights=PATH to a local state dict;\n"
            f"  - or train from scratch with --model.pretrained=none."
        ) from err


def load_imagenet(arch: str, name: str = "imagenet", *, progress: bool = True) -> dict:
    return download_state_dict(weights_url(imagenet_weights(arch, name).url), progress=progress)


def load_local(path: str | os.PathLike) -> dict:
    """A state dict from a local file, read safely (``weights_only=True``).

    Accepts a plain state dict, ``{"state_dict": ...}``, or a shiftlab checkpoint (``{"model": ...}``).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (model.weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    refuse_non_finite(obj, path)
    return obj
