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

from .utils import atomic_write_bytes


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only stays on: checkpoints hold only tensors, numbers, strings, lists and dicts.
    return torch.load(path, map_location="cpu", weights_only=True)
