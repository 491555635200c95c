"""``shiftlab adapt-images``: apply a trained AdapterNet alone to images, and draw a grid like the paper's.

Hazan et al., "AdapterNet - learning input transformation for domain adaptation" (2018), Figures 3, 4
and 6 show, for a few images, the original, the simulated camera's version and the adapter's output.
This module does the same for any shiftlab adapter run:

* ``--images`` a folder: every image file under it (sorted) goes through the adapter; the grid has two
  rows, input / after the adapter.
* ``--images`` a domain of the run's dataset, e.g. ``mnist_m@colour_rotation(150)``: images of the base
  domain's split (``--split``, default ``test``, never trained on) go through the domain's shifts and
  then the adapter; the grid has three rows, original (base domain) / simulated camera / after the
  adapter.

The adapter is fully convolutional, so it is applied at each image's own resolution (no resizing);
outputs are clipped to [0, 1] and rounded to 8 bits. Written: ``<out>/adapted/*.png`` (and, for a
domain, ``<out>/camera/*.png`` and ``<out>/original/*.png``) and ``<out>/grid.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from .errors import AdaptImagesError
from .methods.adapternet import ADAPTER_FILE, export_adapter, read_adapter_file
from .nn.adapters import AdapterNet, load_adapter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class LoadedAdapter:
    adapter: AdapterNet
    config: dict  # the training run's resolved config (dataset, root, domains)
    path: Path  # the adapter.pt it came from


def load_run_adapter(run: str | Path) -> LoadedAdapter:
    """The adapter of an adapternet run folder (its ``adapter.pt``, exported from ``checkpoints/best.pt``
    first if the run predates it) or of an ``adapter.pt`` file."""
    run = Path(run)
    if run.is_dir():
        path = run / ADAPTER_FILE
        if not path.is_file():
            if not (run / "checkpoints" / "best.pt").is_file():
                raise AdaptImagesError(
                    f"--adapter {run}: neither {ADAPTER_FILE} nor checkpoints/best.pt is there; "
                    f"give the run folder of a finished --method.name=adapternet run"
                )
            path = export_adapter(run)
    elif run.is_file():
        path = run
    else:
        raise AdaptImagesError(f"--adapter {run}: no such run folder or adapter file")
    state = read_adapter_file(path)
    config = state.get("config") or {}
    if not config and (path.parent / "config.yaml").is_file():
        config = yaml.safe_load((path.parent / "config.yaml").read_text()) or {}
    return LoadedAdapter(load_adapter(state), config, path)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)


def to_image(x: torch.Tensor) -> Image.Image:
    """[0, 1] (clipped) -> 8-bit RGB, rounded to the nearest level as the cameras are."""
    array = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


@torch.no_grad()
def adapt(adapter: AdapterNet, image: Image.Image) -> Image.Image:
    return to_image(adapter(to_tensor(image)[None])[0])


def folder_images(folder: Path, limit: int | None) -> list[tuple[str, Image.Image]]:
    from .data.base import load_rgb

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AdaptImagesError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) under this folder")
    files = files[:limit] if limit else files
    return [(str(p.relative_to(folder).with_suffix("")), load_rgb(p)) for p in files]


def domain_images(
    domain: str, config: dict, dataset: str | None, root: str | None, split: str, limit: int | None
) -> list[tuple[str, Image.Image, Image.Image]]:
    """``(name, original, camera)`` for evenly spaced images of the base domain's ``split``."""
    from .data.cache import data_root
    from .data.registry import get_dataset
    from .data.shifts import Shifted, parse_domain
    from .data.splits import evenly_spaced

    data = config.get("data") or {}
    dataset = dataset or data.get("dataset")
    if not dataset:
        raise AdaptImagesError(
            f"--images {domain}: not a folder, and the adapter's run names no dataset; pass --dataset"
        )
    resolved = data_root(root or data.get("root"))
    spec = get_dataset(dataset, resolved)
    base_name, shifts = parse_domain(domain)
    spec.validate_domain(domain, "--images")
    base = spec.dataset(resolved, base_name, split)
    chosen = evenly_spaced(base, limit)
    camera = Shifted(chosen, shifts)
    out = []
    for i in range(len(chosen)):
        original, _ = chosen[i]
        shifted, _ = camera[i]
        out.append((f"{i:05d}", original.convert("RGB"), shifted))
    return out


def grid(rows: list[list[Image.Image]], labels: list[str], cell: int = 96, pad: int = 2) -> Image.Image:
    """A white-framed grid, one row per stage, each image scaled to ``cell`` pixels (nearest neighbour for
    small images, so digits' pixels stay visible) with the row's label on its left."""
    from PIL import ImageDraw

    label_w = 8 * max(len(s) for s in labels) + 8
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + cols * (cell + pad) + pad, len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = pad + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, img in enumerate(row):
            scale = Image.Resampling.NEAREST if max(img.size) < cell else Image.Resampling.BILINEAR
            canvas.paste(img.resize((cell, cell), scale), (label_w + pad + c * (cell + pad), y))
    return canvas


def adapt_images(
    adapter_run: str | Path,
    images: str,
    out: str | Path,
    *,
    limit: int | None = 8,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    cell: int = 96,
    grid_columns: int = 8,
) -> dict:
    """Write adapted PNGs and ``grid.png`` under ``out``; returns what was written (for the CLI's message)."""
    if limit is not None and limit < 1:
        raise AdaptImagesError(f"--limit must be at least 1, got {limit}")
    if split not in ("train", "val", "test"):
        raise AdaptImagesError(f"--split must be train, val or test, got {split!r}")
    loaded = load_run_adapter(adapter_run)
    out = Path(out)
    folder = Path(images)
    if folder.is_dir():
        items = [(name, None, img) for name, img in folder_images(folder, limit)]
        labels = ["input", "adapted"]
    elif any(ch in images for ch in "/\\") and "@" not in images:
        raise AdaptImagesError(
            f"--images {images}: no such folder (a domain is written like mnist_m@colour_rotation(150))"
        )
    else:
        items = domain_images(images, loaded.config, dataset, root, split, limit)
        labels = ["original", "camera", "adapted"]
    written = {"adapted": [], "grid": None, "adapter": str(loaded.path)}
    rows: list[list[Image.Image]] = [[] for _ in labels]
    for name, original, camera in items:
        adapted = adapt(loaded.adapter, camera)
        target = out / "adapted" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        adapted.save(target)
        written["adapted"].append(str(target))
        if original is not None:
            for sub, img in (("original", original), ("camera", camera)):
                (out / sub).mkdir(parents=True, exist_ok=True)
                img.save(out / sub / f"{name}.png")
        if len(rows[0]) < grid_columns:
            stages = [camera, adapted] if original is None else [original, camera, adapted]
            for row, img in zip(rows, stages):
                row.append(img)
    grid_path = out / "grid.png"
    grid(rows, labels, cell=cell).save(grid_path)
    written["grid"] = str(grid_path)
    return written


__all__ = ["adapt_images", "load_run_adapter", "grid"]
