"""Source-only ResNet-18, PACS art_painting -> cartoon, from scratch, in a reduced CPU setting.

Prints the target accuracy (selected on source validation) and throughput: training images/s of the
whole loop, and images/s of the data pipeline alone (decode + augment, no model), which says whether
the model or the data is the limit. This is a benchmark, not a test: it prints figures.

    python benchmarks/pacs_source_only_cpu.py                      # 112 px, 5 epochs, CPU
    python benchmarks/pacs_source_only_cpu.py --epochs 2 --image-size 96 -- --data.num_workers=2

Extra ``--section.key=value`` overrides after ``--`` go to the config unchanged.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shiftlab.config import build_config  # noqa: E402
from shiftlab.data.pair import make_loader  # noqa: E402
from shiftlab.engine.loop import Trainer  # noqa: E402


def data_pipeline_rate(dataset, batch_size: int, num_workers: int, batches: int) -> float:
    """Images/s of loading alone: decoding and augmenting, as the training loop would ask for them."""
    loader = make_loader(
        dataset, batch_size, shuffle=True, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    seen, start = 0, time.perf_counter()
    with torch.random.fork_rng():  # augmentation draws from the global RNG: leave the training's stream intact
        for i, (x, _) in enumerate(loader):
            seen += len(x)
            if i + 1 >= batches:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--image-size", type=int, default=112, help="input size in pixels (default 112)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (default 0: loading in the main process)"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, from scratch)")
    parser.add_argument("--output-dir", default="runs/benchmarks", help="where the run folder goes")
    parser.add_argument("overrides", nargs="*", help="extra --section.key=value overrides (after --)")
    args = parser.parse_args()

    name = f"pacs_a2c_scratch_{args.image_size}px_{args.epochs}ep"
    cfg = build_config(
        [REPO / "configs" / "ash" / "art_to_cartoon.yaml"],
        [
            "--model.pretrained=none",
            f"--data.image_size={args.image_size}",
            f"--train.epochs={args.epochs}",
            f"--data.batch_size={args.batch_size}",
            f"--data.num_workers={args.workers}",
            f"--optim.lr={args.lr}",
            "--optim.schedule=cosine",
            "--train.device=cpu",
            f"--experiment.output_dir={args.output_dir}",
            f"--experiment.name={name}",
            *args.overrides,
        ],
    )
    trainer = Trainer(cfg, overwrite=True)
    loading = data_pipeline_rate(trainer.pair.source_train, cfg.data.batch_size, cfg.data.num_workers, batches=10)
    summary = trainer.fit()

    report = {
        "setting": f"ResNet-18 from scratch, PACS art_painting -> cartoon, {args.image_size} px, "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} cosine, CPU, "
        f"{cfg.data.num_workers} loader workers",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "target_acc (selection: source_val)": round(summary["target_acc"], 4),
        "final_target_acc": round(summary["final_target_acc"], 4),
        "final_source_val_acc": round(summary["final_source_val_acc"], 4),
        "train_images_per_s (whole loop)": summary["train_images_per_s"],
        "data_pipeline_images_per_s (no model)": round(loading, 1),
        "wall_time_s": summary["wall_time_s"],
        "run_folder": str(trainer.run_dir),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
