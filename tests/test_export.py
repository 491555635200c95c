"""shiftlab export (issue 29): ONNX (run by onnxruntime) and TorchScript graphs give shiftlab's own predictions
on 256 target images of the run, logits within 1e-4, with metadata; what cannot be exported is one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from inference_runs import METHODS, REPO, demo_runs

from shiftlab import load_run
from shiftlab.cli import main
from shiftlab.errors import ExportError
from shiftlab.export import export_run, read_metadata

EXPORTABLE = [m for m in METHODS if m != "activation_shaping_random"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


def _run_exported(path, fmt, images):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    return torch.jit.load(str(path))(images)


@pytest.mark.slow
@pytest.mark.parametrize("method", EXPORTABLE)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graph_predicts_as_shiftlab_does(runs, tmp_path, method, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"{method}.{fmt}"
    meta = export_run(runs / method, out, format=fmt)
    model = load_run(runs / method, device="cpu")
    preds, _, _ = model.evaluate("target")
    dataset, _ = model.domain_images("target")
    assert len(dataset) == 256
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    images = (x * 255).round().to(torch.uint8)
    assert torch.equal(images.float().mul(1 / 255), x)  # the run's images are exactly these uint8 ones
    logits = _run_exported(out, fmt, images)  # one batch of 256: the traced batch was 2
    assert logits.shape == preds.logits.shape
    assert (logits - preds.logits).abs().max().item() <= 1e-4
    assert logits.argmax(1).tolist() == preds.indices
    assert _run_exported(out, fmt, images[:1]).shape == (1, 10)
    saved = read_metadata(out)
    assert saved["classes"] == model.classes and saved["input_size"] == "32" and saved["input"] == "uint8"
    assert (
        saved["config_sha256"] == model.config_hash == meta["config_sha256"]
        and saved["method"] == model.config.method.name
    )


@pytest.mark.slow
def test_float_input_and_last_checkpoint(runs, tmp_path):
    out = tmp_path / "adabn.pt"
    assert (
        main(
            [
                "export",
                "--run",
                str(runs / "adabn"),
                "--checkpoint",
                "last",
                "--format",
                "torchscript",
                "--input",
                "float",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model = load_run(runs / "adabn", "last")
    x = torch.stack([model.domain_images()[0][i][0] for i in range(40)])
    assert (torch.jit.load(str(out))(x) - model.logits(x)).abs().max().item() <= 1e-4
    assert read_metadata(out)["checkpoint"] == "last.pt" and read_metadata(out)["input"] == "float"


@pytest.mark.slow
def test_random_predictions_are_refused_in_one_line(runs, tmp_path, capsys):
    out = tmp_path / "random.pt"
    with pytest.raises(ExportError, match=r"predicts differently on two passes .*method.maps=random"):
        export_run(runs / "activation_shaping_random", out, format="torchscript")
    assert not out.exists()
    assert (
        main(["export", "--run", str(runs / "activation_shaping_random"), "--format", "torchscript", "--out", str(out)])
        == 2
    )
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_onnx_without_its_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert main(["export", "--run", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "shiftlab[onnx]"' in capsys.readouterr().err


def test_export_help_explains_every_option():
    text = subprocess.run(
        [sys.executable, "-m", "shiftlab.cli", "export", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    for option in ("--run", "--checkpoint", "--format", "--out", "--input", "--data-root", "onnx", "torchscript"):
        assert option in text, option
