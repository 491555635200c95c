"""Training-step time of shiftlab's backbones in the two memory formats (``train.channels_last``).

Times forward + backward of each backbone on random inputs, contiguous (NCHW) and channels-last (NHWC),
on one device with a fixed thread count, and prints the ratio. It says which configs should set
``train.channels_last``: on CPU oneDNN's channels-last kernels (max-pooling above all) speed the small
digits networks, while ResNet-18's are slower. This is a benchmark, not a test: it prints figures.

    python benchmarks/channels_last.py                      # the digits networks and ResNet-18 / AlexNet, CPU, 1 thread
    python benchmarks/channels_last.py --models dann_digits lenet --threads 2 --steps 30
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shiftlab.models.backbones import build_backbone  # noqa: E402

# backbone name -> (image size, batch) of the configs that use it
SETTINGS = {
    "dann_digits": (28, 128),  # configs/dann/digits_base.yaml: 64 source + 64 target
    "lenet": (28, 128),
    "small_cnn": (32, 128),
    "resnet18": (64, 64),  # the reduced PACS setting
    "alexnet": (64, 64),
}


def step_ms(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one forward + backward (after two warm-up steps)."""
    for _ in range(2):
        model(x).sum().backward()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="backbones to time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial uses 1 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and format (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), {args.device}"
    )
    print(f"{'model':<12} {'px':>4} {'batch':>5} {'NCHW ms':>8} {'NHWC ms':>8} {'speed-up':>8}")
    for name in args.models:
        size, batch = SETTINGS[name]
        model = build_backbone(name, num_classes=10).to(args.device).train()
        x = torch.randn(batch, 3, size, size, device=args.device)
        nchw = step_ms(model, x, args.steps)
        nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        nhwc = step_ms(nhwc_model, x.contiguous(memory_format=torch.channels_last), args.steps)
        print(f"{name:<12} {size:>4} {batch:>5} {nchw:>8.1f} {nhwc:>8.1f} {nchw / nhwc:>7.2f}x")


if __name__ == "__main__":
    main()
