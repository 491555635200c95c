"""Checkpoints and run-folder files, written atomically so an interrupted run never leaves half a file."""
from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import torch

# The atomic writers live in shiftlab.utils (one copy for the whole toolkit); they are re-exported
# here because the loop and older code import them from this module.
from ..checkpoints import load_checkpoint, save_checkpoint
from ..utils import atomic_write_bytes, atomic_write_text, write_json

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "save_checkpoint", "load_checkpoint",
           "rng_state", "set_rng_state", "write_metrics_csv"]


def rng_state() -> dict[str, Any]:
    """Every global RNG the training touches (Python's, torch's CPU and CUDA)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state):
    # torch.load returns lists where random.setstate wants tuples
    version, internal, gauss = state
    return version, tuple(internal), gauss


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole history each time (it is small), so the file always matches the checkpoint."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())
