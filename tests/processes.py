"""Killing a run at a chosen moment, as a power cut or an OOM killer would (shared by the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shiftlab.checkpoints import load_checkpoint


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``proc``'s whole process group (it must start with ``start_new_session=True``) as soon as
    ``ready()`` holds; the test fails if the process ends first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail("the process ended before it could be killed")
            if time.time() > deadline:
                pytest.fail(f"still not ready to be killed after {timeout} s")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def checkpointed(run: Path, epochs: int) -> Callable[[], bool]:
    """Whether ``run``'s ``checkpoints/last.pt`` holds at least ``epochs`` epochs."""
    ckpt = run / "checkpoints" / "last.pt"
    return lambda: ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= epochs
