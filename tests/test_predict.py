"""load_run and shiftlab predict (issue 29): the model a run evaluated, with its preprocessing and the method's
inference state, gives back the run's own numbers; inputs of every kind are preprocessed alike; errors are one line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from inference_runs import METHODS, REPO, demo_runs, summary
from PIL import Image

from shiftlab import load_run
from shiftlab.cli import main
from shiftlab.config import build_config
from shiftlab.engine.loop import Trainer
from shiftlab.errors import InferenceDataError, PredictInputError, RunModelError
from shiftlab.inference import needs_data

DETERMINISTIC = [m for m in METHODS if m != "activation_shaping_random"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return demo_runs(tmp_path_factory)


def _metrics_row(run, epoch: int) -> dict:
    with open(run / "metrics.csv") as f:
        return next(r for r in csv.DictReader(f) if int(r["epoch"]) == epoch)


@pytest.mark.slow
@pytest.mark.parametrize("method", DETERMINISTIC)
@pytest.mark.parametrize("checkpoint, key", [("best", "target_acc"), ("last", "final_target_acc")])
def test_predict_on_the_target_gives_the_runs_own_accuracy_and_loss(runs, method, checkpoint, key):
    run = runs / method
    model = load_run(run, checkpoint, device="cpu")
    preds, labels, accuracy = model.evaluate("target")
    assert accuracy == summary(run)[key]
    # the loss pins the logits, not only their argmax: the inference state (AdaBN's statistics, Gaussian
    # matching's maps, the adapter, the shaping hooks) is the one the run evaluated with
    loss = F.cross_entropy(preds.logits, torch.tensor(labels)).item()
    assert loss == pytest.approx(float(_metrics_row(run, model.epoch)["target_loss"]), abs=1e-6)
    assert len(preds) == summary(run)["splits"]["target_eval"]["size"]


@pytest.mark.slow
def test_which_methods_read_the_runs_images(runs):
    assert needs_data(load_run(runs / "adabn").method) == ("target",)
    assert needs_data(load_run(runs / "gaussian_matching").method) == ("source", "target")
    for name in ("source_only", "dann", "adapternet", "activation_shaping", "activation_matching"):
        assert needs_data(load_run(runs / name).method) == ()
    # AdaBN's restored target statistics are not the checkpoint's source statistics
    adabn, plain = load_run(runs / "adabn"), load_run(runs / "adabn")
    plain.method.load_state_dict(torch.load(runs / "adabn" / "checkpoints" / "best.pt", weights_only=True)["model"])
    x = plain.domain_images()[0][0][0][None]
    assert not torch.equal(adabn.logits(x), plain.logits(x))


@pytest.mark.slow
def test_paths_pil_images_and_tensors_are_preprocessed_as_the_run_evaluated(runs, tmp_path):
    model = load_run(runs / "adabn", device="cpu")
    dataset, keys = model.domain_images("target")
    x = torch.stack([dataset[i][0] for i in range(6)])
    u8 = (x * 255).round().to(torch.uint8)
    paths = []
    for i, im in enumerate(u8):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(paths[-1])
    reference = model.logits(x)
    for images in (paths, [str(p) for p in paths], [Image.open(p) for p in paths], u8, list(u8), x):
        assert torch.equal(model.predict(images, batch_size=6).logits, reference)
    # other batch sizes: the same up to the summation order of batched kernels
    assert torch.allclose(model.predict(paths, batch_size=4).logits, reference, atol=1e-6)
    assert model.predict(paths).paths == [str(p) for p in paths]
    # another size: resized by PIL exactly as a file of that size is
    big = torch.randint(0, 256, (2, 3, 45, 37), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    files = []
    for i, im in enumerate(big):
        files.append(tmp_path / f"big{i}.png")
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(files[-1])
    expected = torch.stack([model.transform(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(model.preprocess(big), expected) and torch.equal(model.preprocess(files), expected)
    assert model.preprocess(Image.fromarray(np.zeros((9, 11), np.uint8))).shape == (1, 3, 32, 32)  # greyscale
    with pytest.raises(PredictInputError, match="float image tensor must already be 32x32"):
        model.predict(torch.rand(1, 3, 40, 40))
    with pytest.raises(PredictInputError, match=r"\[0, 1\]"):
        model.predict(torch.rand(1, 3, 32, 32) * 255)


@pytest.mark.slow
def test_predictions_give_names_probabilities_and_top_k(runs):
    model = load_run(runs / "source_only", "last")
    preds = model.predict(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8))
    assert model.classes == list("0123456789") and len(preds) == 5
    assert torch.allclose(preds.probs.sum(1), torch.ones(5))
    top = preds.top_k(3)
    assert [t[0][0] for t in top] == preds.classes
    assert all(t[0][1] >= t[1][1] >= t[2][1] for t in top)
    assert preds.confidence == pytest.approx([t[0][1] for t in top])
    assert preds[0]["class"] == preds.classes[0] and set(preds[0]["probs"]) == set(model.classes)


def test_load_run_errors_name_the_folder_and_what_to_do(tmp_path):
    with pytest.raises(RunModelError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunModelError, match="not a finished shiftlab run"):
        load_run(tmp_path / "run")
    torch.save({"model": {}}, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(RunModelError, match="use checkpoint 'last'"):
        load_run(tmp_path / "run")
    with pytest.raises(RunModelError, match="valid are best, last"):
        load_run(tmp_path / "run", "first")
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"damaged")
    with pytest.raises(RunModelError, match="cannot read .*best.pt.*damaged"):
        load_run(tmp_path / "run")


def _folder_dataset(root):
    """``<root>/Tiny/{a,b}/{x,y}/*.png``: two domains, two classes, 24 images each."""
    rng = np.random.default_rng(0)
    for domain in ("a", "b"):
        for c, cls in enumerate(("x", "y")):
            (root / "Tiny" / domain / cls).mkdir(parents=True)
            for i in range(24):
                img = rng.integers(0, 80, (36, 36, 3)) + (120 * c if domain == "a" else 60 * c)
                Image.fromarray(img.astype(np.uint8)).save(root / "Tiny" / domain / cls / f"{i}.png")


@pytest.mark.slow
def test_adabn_without_its_data_is_one_line_and_checkpoint_only_methods_need_none(tmp_path):
    data = tmp_path / "data"
    _folder_dataset(data)
    for method in ("adabn", "source_only"):
        Trainer(
            build_config(
                [],
                [
                    f"--data.root={data}",
                    "--data.dataset=folder:Tiny",
                    "--data.source=a",
                    "--data.target=b",
                    "--data.image_size=32",
                    "--model.name=small_cnn",
                    "--data.batch_size=16",
                    "--train.epochs=1",
                    "--train.progress=false",
                    "--train.validators=[]",
                    f"--experiment.output_dir={tmp_path / 'runs'}",
                    f"--experiment.name={method}",
                    f"--method.name={method}",
                ],
            )
        ).fit()
    expected = summary(tmp_path / "runs" / "adabn")["target_acc"]
    assert load_run(tmp_path / "runs" / "adabn").evaluate()[2] == expected
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    model = load_run(tmp_path / "runs" / "source_only")  # classes and input size come from the checkpoint
    assert model.classes == ["x", "y"] and model.image_size == 32
    with pytest.raises(
        InferenceDataError,
        match=r"method 'adabn' computes its inference state from the run's target "
        r"images .*data.root=.*data.*data_root=",
    ):
        load_run(tmp_path / "runs" / "adabn")
    assert load_run(tmp_path / "runs" / "adabn", data_root=moved).evaluate()[2] == expected
    assert (
        main(
            [
                "predict",
                "--run",
                str(tmp_path / "runs" / "adabn"),
                "--images",
                "target",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )


# ------------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_predict_command_on_the_runs_target_writes_rows_and_the_accuracy(runs, tmp_path, capsys):
    out = tmp_path / "preds" / "adabn.csv"
    assert (
        main(
            [
                "predict",
                "--run",
                str(runs / "adabn"),
                "--checkpoint",
                "last",
                "--images",
                "target",
                "--out",
                str(out),
                "--top-k",
                "3",
                "--batch-size",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    with open(out) as f:
        rows = list(csv.DictReader(f))
    s = summary(runs / "adabn")
    assert len(rows) == s["splits"]["target_eval"]["size"]
    assert list(rows[0]) == [
        "path",
        "predicted",
        "probability",
        "label",
        "correct",
        "top1",
        "top1_prob",
        "top2",
        "top2_prob",
        "top3",
        "top3_prob",
    ]
    assert all(r["predicted"] == r["top1"] and float(r["top2_prob"]) <= float(r["probability"]) for r in rows)
    assert sum(int(r["correct"]) for r in rows) / len(rows) == s["final_target_acc"]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["accuracy"] == record["run_reported_accuracy"] == s["final_target_acc"]
    assert f"accuracy {s['final_target_acc']:.4f}" in capsys.readouterr().out
    # another domain of the run's dataset: its evaluation split under the run's data settings
    assert (
        main(
            [
                "predict",
                "--run",
                str(runs / "adabn"),
                "--images",
                "digits",
                "--out",
                str(tmp_path / "d.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "d.json").read_text())["run_reported_accuracy"] is None
    assert main(["predict", "--run", str(runs / "adabn"), "--images", "cartoon", "--out", str(tmp_path / "c.csv")]) == 2
    assert "not a domain of the run's dataset 'demo'" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_command_on_a_folder_lists_unreadable_files(runs, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(images / "sub" / f"{i}.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "grey.bmp")
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image file: ignored")
    out = tmp_path / "p.csv"
    args = ["predict", "--run", str(runs / "source_only"), "--images", str(images), "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err and "--skip-unreadable" in err and not out.exists()
    assert main(args + ["--skip-unreadable", "--top-k", "20"]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(
        str(p) for p in [images / "grey.bmp", *sorted((images / "sub").iterdir())]
    )
    assert "top10" in rows[0] and "top11" not in rows[0]  # at most the number of classes
    assert (tmp_path / "p.unreadable.txt").read_text().strip() == str(images / "broken.png")
    model = load_run(runs / "source_only")
    expected = model.predict([r["path"] for r in rows])
    assert [r["predicted"] for r in rows] == expected.classes


def test_predict_help_explains_every_option():
    text = subprocess.run(
        [sys.executable, "-m", "shiftlab.cli", "predict", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    for option in (
        "--run",
        "--checkpoint",
        "--images",
        "--out",
        "--top-k",
        "--batch-size",
        "--skip-unreadable",
        "--device",
        "--data-root",
        "--no-progress",
    ):
        assert option in text, option
    assert "best" in text and "last" in text and "accuracy" in text
