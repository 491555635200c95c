"""Training throughput: the model's limit, shiftlab's full step, and a plain DataLoader + PIL pipeline.

In one run, on one machine, for each setting:

* **limit**: forward + backward + optimiser step of shiftlab's training step on a synthetic batch that is
  already on the device (no data path at all): the most any data path can reach;
* **full**: shiftlab's training loop (``Trainer.train_epoch``) with its real data path (``data.loader``,
  default ``cached``: decoded once, batches cut and augmented on the device), images counted over the
  source and target streams;
* **plain**: what most peer toolkits do: a torchvision ``DataLoader`` over the same files, decoding and
  transforming each image with PIL every epoch (``RandomResizedCrop`` + flip + ``ToTensor`` for photos,
  ``Resize`` + ``ToTensor`` for digits), feeding the same model, method and batch in an fp32 step.

It prints images/s of each, the ratios full/limit and full/plain, and the two data paths alone (batches
on the device, no model). The three are measured in interleaved rounds and each figure is its best
round (``--rounds``), so that other processes on a shared machine bias none of them. Settings (``--which``):

* ``resnet18``: ResNet-18 from scratch, source-only, PACS art_painting (-> cartoon), 224 px, batch 128;
* ``digits``: the digits networks ``dann_digits`` and ``small_cnn`` trained by DANN on MNIST -> MNIST-M,
  batch 64 from each of the source and target streams.

Targets (issue 19): on a GPU full/limit >= 0.90 and full/plain >= 3; on a 2-core CPU full/plain >= 1.5
for the digits networks and >= 1 for ResNet-18. The decoded cache is built on the first run (its time
is printed) and reused afterwards from ``$SHIFTLAB_CACHE/decoded``.

    .venv/bin/python benchmarks/throughput.py --which digits --steps 40
    .venv/bin/python benchmarks/throughput.py --which resnet18 --steps 3 --device cpu
    .venv/bin/python benchmarks/throughput.py --which all --device cuda --steps 50      # on a GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shiftlab.config import build_config  # noqa: E402
from shiftlab.data.pair import Transformed  # noqa: E402
from shiftlab.data.transforms import CROP_RATIO, CROP_SCALE, FLIP_P  # noqa: E402
from shiftlab.engine.loop import Trainer  # noqa: E402
from shiftlab.methods import Batch  # noqa: E402

SETTINGS = {
    "resnet18": dict(
        label="ResNet-18, PACS art_painting -> cartoon, source_only",
        batch=128,
        size=224,
        overrides=[
            "--data.dataset=pacs",
            "--data.source=art_painting",
            "--data.target=cartoon",
            "--model.name=resnet18",
            "--method.name=source_only",
        ],
    ),
    "dann_digits": dict(
        label="dann_digits, MNIST -> MNIST-M, DANN (source + target)",
        batch=64,
        size=32,
        overrides=[
            "--data.dataset=digits",
            "--data.source=mnist",
            "--data.target=mnist_m",
            "--model.name=dann_digits",
            "--method.name=dann",
        ],
    ),
    "small_cnn": dict(
        label="small_cnn, MNIST -> MNIST-M, DANN (source + target)",
        batch=64,
        size=32,
        overrides=[
            "--data.dataset=digits",
            "--data.source=mnist",
            "--data.target=mnist_m",
            "--model.name=small_cnn",
            "--method.name=dann",
        ],
    ),
}
WHICH = {
    "resnet18": ["resnet18"],
    "digits": ["dann_digits", "small_cnn"],
    "all": ["resnet18", "dann_digits", "small_cnn"],
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores available, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def limit_runner(trainer: Trainer):
    """``run(steps) -> images/s`` of shiftlab's step on one synthetic batch already on the device."""
    d, dev = trainer.cfg.data, trainer.device
    size = d.image_size
    n = trainer.pair.num_classes
    g = torch.Generator().manual_seed(0)

    def batch(labelled: bool) -> Batch:
        x = trainer.to_device(torch.rand(d.batch_size, 3, size, size, generator=g))
        return Batch(x, torch.randint(0, n, (d.batch_size,), generator=g).to(dev) if labelled else None)

    source = batch(True) if trainer.loaders.source is not None else None
    target = batch(trainer.reads_target_labels) if trainer.loaders.target is not None else None
    images = sum(len(b.x) for b in (source, target) if b is not None)

    def run(steps: int) -> float:
        trainer.method.train()
        sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(source, target, check_values=False)
        sync(dev)
        return steps * images / (time.perf_counter() - start)

    return run


def full_runner(trainer: Trainer):
    """``run(steps) -> images/s`` of the loop's own epoch (data path, transfers, step, running sums)."""

    def run(steps: int) -> float:
        trainer.steps_per_epoch = steps
        sync(trainer.device)
        return trainer.train_epoch()["images_per_s"]

    return run


def plain_loader(ds: Transformed, batch: int, size: int, photo: bool, workers: int, seed: int) -> DataLoader:
    """A peer's pipeline over the same samples: PIL transforms per image in a torchvision DataLoader."""
    if photo:
        tf = T.Compose(
            [
                T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO),
                T.RandomHorizontalFlip(FLIP_P),
                T.ToTensor(),
            ]
        )
    else:
        tf = T.Compose([T.Resize((size, size)), T.ToTensor()])
    return DataLoader(
        Transformed(ds.base, tf, ds.with_labels, ds.label_map),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def data_runner(trainer: Trainer):
    """``run(steps) -> images/s`` of shiftlab's data path alone: batches from the trainer's own streams, on
    the device, no model (what the full step pays for data)."""
    streams = [trainer.loaders.batches(i, trainer.epoch) for i in (0, 1)]

    def run(steps: int) -> float:
        sync(trainer.device)
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            for s in streams:
                if s is not None:
                    images += len(trainer.to_batch(next(s)).x)
        sync(trainer.device)
        return images / (time.perf_counter() - start)

    return run


def plain_runner(trainer: Trainer, workers: int):
    """``run(steps) -> images/s`` of a plain fp32 loop: next batch from each DataLoader, to the device, the
    method's step (the DataLoaders' iterators persist across calls, as in an epoch)."""
    d, dev, p = trainer.cfg.data, trainer.device, trainer.pair
    photo = p.spec.family == "photo"
    method = trainer.method
    loaders = [
        plain_loader(p.source_train, d.batch_size, d.image_size, photo, workers, 0)
        if trainer.loaders.source is not None
        else None,
        plain_loader(p.target_train, d.batch_size, d.image_size, photo, workers, 1)
        if trainer.loaders.target is not None
        else None,
    ]

    def endless(loader):
        while True:
            yield from loader

    streams = [endless(loader) if loader is not None else None for loader in loaders]
    opt = torch.optim.SGD(method.parameters(), lr=trainer.cfg.optim.lr, momentum=0.9)
    method.train()

    def to_batch(item) -> Batch:
        if isinstance(item, (list, tuple)):
            return Batch(item[0].to(dev, non_blocking=True), item[1].to(dev, non_blocking=True))
        return Batch(item.to(dev, non_blocking=True), None)

    def run(steps: int, model: bool = True) -> float:
        method.train()
        sync(dev)
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            source = to_batch(next(streams[0])) if streams[0] else None
            target = to_batch(next(streams[1])) if streams[1] else None
            images += sum(len(b.x) for b in (source, target) if b is not None)
            if not model:
                continue
            losses = method.training_step(source, target, 0.5)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
        sync(dev)
        return images / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", choices=sorted(WHICH), default="all", help="settings to measure (default all)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per round and measurement (default 50 on a GPU; on a CPU 20 for digits, 2 for ResNet-18)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size (default 128 / 64)")
    parser.add_argument("--image-size", type=int, default=None, help="override the input size (default 224 / 32)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of (limit, full, plain), interleaved; each figure is its best round, which "
        "filters out other processes' interference on a shared machine (default 3)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's choice)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the plain pipeline (default 0 on a CPU, 8 on a GPU)",
    )
    parser.add_argument(
        "--loader",
        choices=["cached", "files", "auto"],
        default="cached",
        help="shiftlab's data.loader for the full measurement (default cached)",
    )
    parser.add_argument("--compile", action="store_true", help="train.compile=true for limit and full")
    parser.add_argument("--limit", type=int, default=None, help="data.limit: at most this many images per split")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    workers = args.workers if args.workers is not None else (8 if gpu else 0)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    print(f"date     {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine  {machine()}")
    print(f"command  {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"plain pipeline: torchvision DataLoader, {workers} workers, PIL transforms, fp32 step")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in WHICH[args.which]:
            s = SETTINGS[name]
            steps = args.steps or (50 if gpu else (2 if name == "resnet18" else 20))
            batch, size = args.batch_size or s["batch"], args.image_size or s["size"]
            cfg = build_config(
                [],
                [
                    *s["overrides"],
                    f"--data.batch_size={batch}",
                    f"--data.image_size={size}",
                    f"--data.loader={args.loader}",
                    f"--train.device={args.device}",
                    f"--train.compile={str(args.compile).lower()}",
                    "--train.progress=false",
                    f"--experiment.output_dir={out}",
                    f"--experiment.name={name}",
                    "--train.epochs=1",
                    *([f"--data.limit={args.limit}"] if args.limit else []),
                ],
            )
            t0 = time.perf_counter()
            trainer = Trainer(cfg, overwrite=True)
            build = time.perf_counter() - t0
            with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
                plain_run = plain_runner(trainer, workers)
                runners = {
                    "limit": limit_runner(trainer),
                    "full": full_runner(trainer),
                    "plain": plain_run,
                    "data": data_runner(trainer),
                    "plain_data": partial(plain_run, model=False),
                }
                best = {k: 0.0 for k in runners}
                for run in runners.values():  # warm-up: first calls, worker start-up, allocator, caches
                    run(warmup)
                for _ in range(args.rounds):
                    for k, run in runners.items():
                        best[k] = max(best[k], run(steps))
                limit, full, plain = best["limit"], best["full"], best["plain"]
                data, plain_data = best["data"], best["plain_data"]
            row = dict(
                name=name,
                label=s["label"],
                batch=batch,
                size=size,
                steps=steps,
                device=str(trainer.device),
                precision=trainer.precision,
                loader=trainer.loaders.kind,
                build_s=build,
                limit=limit,
                full=full,
                plain=plain,
                data=data,
                plain_data=plain_data,
            )
            rows.append(row)
            print(
                f"\n{s['label']}: batch {batch} per stream, {size} px, best of {args.rounds} rounds of {steps} steps, {row['device']} "
                f"{row['precision']}, data path {row['loader']} (trainer built in {build:.1f} s, decoding included "
                f"when the cache was cold)"
            )
            print(f"  limit (model alone)       {limit:9.1f} images/s")
            print(f"  full (shiftlab)           {full:9.1f} images/s   full/limit {full / limit:.2f}")
            print(f"  plain (DataLoader + PIL)  {plain:9.1f} images/s   full/plain {full / plain:.2f}")
            print(f"  data paths alone (no model): shiftlab {data:.1f} images/s, plain {plain_data:.1f} images/s")
            del trainer
    print(
        "\n| setting | device | limit img/s | full img/s | plain img/s | full/limit | full/plain | data alone: "
        "shiftlab / plain img/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['label']}, batch {r['batch']}, {r['size']} px | {r['device']} {r['precision']} | {r['limit']:.1f} "
            f"| {r['full']:.1f} | {r['plain']:.1f} | {r['full'] / r['limit']:.2f} | {r['full'] / r['plain']:.2f} "
            f"| {r['data']:.0f} / {r['plain_data']:.0f} |"
        )


if __name__ == "__main__":
    main()
