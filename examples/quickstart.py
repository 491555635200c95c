"""shiftlab end to end on the embedded demo (no download): train, adapt, compare, predict, export.

1. source-only on scikit-learn's digits, then AdaBN and DANN adapting to the same digits on photos;
2. ``shiftlab report`` compares them, each number under the selection rule it names;
3. the adapted DANN model classifies a folder of PNG files (``load_run(...).predict``, as ``shiftlab predict``);
4. it is exported to ONNX and run with onnxruntime, which agrees with shiftlab's own predictions.

    python examples/quickstart.py                      # about two minutes on 2 CPU cores
    python examples/quickstart.py --epochs 1 --limit 128 --out /tmp/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shiftlab import load_run
from shiftlab.cli import main as shiftlab
from shiftlab.config import build_config
from shiftlab.data.registry import get_dataset
from shiftlab.engine.loop import Trainer
from shiftlab.export import export_run


def train(out: Path, method: str, epochs: int, limit: int | None) -> dict:
    """One run of the demo config with ``method``; returns its summary."""
    overrides = [
        f"--experiment.output_dir={out / 'runs'}",
        f"--experiment.name={method}",
        f"--method.name={method}",
        f"--train.epochs={epochs}",
        "--train.progress=false",
    ]
    if limit:
        overrides.append(f"--data.limit={limit}")
    return Trainer(build_config(["demo"], overrides), overwrite=True).fit()


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` target images of the demo (digits on photos) as PNG files, as a user's folder would hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    target = get_dataset("demo").dataset(folder, "digits_photo", "test")
    paths = []
    for i in range(n):
        image, _ = target[i]
        paths.append(folder / f"image_{i:03d}.png")
        image.save(paths[-1])
    return paths


def run(out: Path, epochs: int, limit: int | None, n_images: int = 16) -> dict:
    summaries = {m: train(out, m, epochs, limit) for m in ("source_only", "adabn", "dann")}
    for method, s in summaries.items():
        print(f"{method:12s} target accuracy {s['target_acc']:.3f} (selection: {s['selection']})")

    # 2. one table per selection rule, from the run folders
    assert shiftlab(["report", str(out / "runs"), "--out", str(out / "report"), "--no-plots"]) == 0

    # 3. the adapted model on a folder of images, exactly as its run evaluated
    paths = write_images(out / "images", n_images)
    model = load_run(out / "runs" / "dann")
    preds = model.predict(paths)
    for path, row in list(zip(paths, preds.top_k(2)))[:3]:
        print(f"{path.name}: {row}")
    assert (
        shiftlab(
            [
                "predict",
                "--run",
                str(out / "runs" / "dann"),
                "--images",
                str(out / "images"),
                "--out",
                str(out / "predictions.csv"),
                "--no-progress",
            ]
        )
        == 0
    )

    # 4. one ONNX graph from uint8 images to logits, run by onnxruntime
    import onnxruntime as ort

    metadata = export_run(out / "runs" / "dann", out / "dann.onnx", format="onnx", input="float")
    print(f"exported {out / 'dann.onnx'}: {metadata['method']} on {metadata['model']}, {metadata['input_size']} px")
    session = ort.InferenceSession(str(out / "dann.onnx"))
    batch = model.preprocess(paths).numpy()  # the run's evaluation resize, as float images in [0, 1]
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0]
    agree = float((logits.argmax(1) == np.asarray(preds.indices)).mean())
    print(f"onnxruntime agrees with shiftlab on {agree:.0%} of {len(paths)} images")
    return {"summaries": summaries, "predictions": preds, "onnx_logits": logits, "agreement": agree}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="folder for runs, report, files")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of each method (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per split (quick runs)")
    args = parser.parse_args()
    run(args.out, args.epochs, args.limit)
