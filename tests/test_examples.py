"""examples/quickstart.py runs end to end (train, adapt, report, predict on a folder, ONNX with onnxruntime)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quickstart_example_trains_adapts_reports_predicts_and_exports(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    out = quickstart.run(tmp_path, epochs=1, limit=128, n_images=12)
    assert set(out["summaries"]) == {"source_only", "adabn", "dann"}
    assert all(0 <= s["target_acc"] <= 1 and s["selection"] == "source_val" for s in out["summaries"].values())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "source_only" in report and "adabn" in report and "dann" in report
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["path"].rsplit("/", 1)[-1] for r in rows} == {f"image_{i:03d}.png" for i in range(12)}
    # the folder's predictions from the CLI are the Python API's, and onnxruntime gives the same classes
    assert [r[next(k for k in r if k in ("class", "predicted"))] for r in sorted(rows, key=lambda r: r["path"])] == out[
        "predictions"
    ].classes
    assert out["agreement"] == 1.0
    assert np.allclose(out["onnx_logits"], out["predictions"].logits.numpy(), atol=1e-4)
