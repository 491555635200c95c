"""The checkpoint file format, read and written in this one place.

A checkpoint is a ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts), written
atomically (a temporary file renamed over the old one) and read back with ``weights_only=True``, so a
file from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .errors import NonFiniteWeightsError
from .utils import atomic_write_bytes


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; its ``model`` weights (or the whole file, a plain state dict) must be finite."""
    # weights_only stays on: checkpoints hold only tensors, numbers, strings, lists and dicts.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        refuse_non_finite(state.get("model") if isinstance(state.get("model"), dict) else state, path)
    return state


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def refuse_non_finite(state: dict[str, Any], path: Path | str) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(
            f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); it was saved from a diverged run: use an "
            f"earlier checkpoint"
        )
