"""benchmarks/throughput.py runs against the Trainer's public step and epoch (a couple of steps on real digits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_throughput_benchmark_runs_a_couple_of_steps_and_prints_its_table(data_root, tmp_path):
    env = {
        **os.environ,
        "SHIFTLAB_DATA": str(data_root),
        "SHIFTLAB_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "throughput.py"),
            "--which",
            "digits",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--limit",
            "256",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "cpu fp32" in line]
    assert len(rows) == 2  # dann_digits and small_cnn
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        limit, full, plain = (float(c) for c in cells[2:5])
        assert limit > 0 and full > 0 and plain > 0
        # the ratios printed are of the unrounded figures
        assert abs(float(cells[5]) - full / limit) < 0.02 and abs(float(cells[6]) - full / plain) < 0.02
