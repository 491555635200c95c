"""Shared fixtures: the real data root, and caches kept inside pytest's temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shiftlab.data import registry
from shiftlab.data.shifts import SHIFTS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$SHIFTLAB_DATA``, else ``../shared/data`` beside the repository (read-only: never write into it)."""
    root = Path(os.environ.get("SHIFTLAB_DATA", REPO.parent / "shared" / "data"))
    if not (root / "PACS").is_dir():
        if os.environ.get("SHIFTLAB_REQUIRE_DATA"):
            pytest.fail(f"data root {root} has no PACS folder (SHIFTLAB_REQUIRE_DATA is set)")
        pytest.skip(f"real data not found under {root}; set SHIFTLAB_DATA")
    return root


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """Keep shiftlab's and torch hub's caches out of the user's home during tests."""
    base = tmp_path_factory.mktemp("caches")
    old = {k: os.environ.get(k) for k in ("SHIFTLAB_CACHE", "TORCH_HOME")}
    os.environ["SHIFTLAB_CACHE"] = str(base / "shiftlab")
    os.environ["TORCH_HOME"] = str(base / "torch")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def restore_registry():
    """Datasets and shifts registered by a test are removed after it, so that no test sees another's."""
    before, shifts_before = dict(registry._REGISTRY), dict(SHIFTS)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    SHIFTS.clear()
    SHIFTS.update(shifts_before)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (modules opt in with ``pytestmark``): on two busy cores one thread
    is several times faster than two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
