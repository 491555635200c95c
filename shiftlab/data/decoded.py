"""Decoded cache and tensor-batch loaders: each split decoded once, then batches cut from one tensor.

Why: a PACS epoch of ResNet-18 on a GPU takes less time than decoding its JPEGs, and the digits
networks are cheaper than the per-image PIL work that feeds them even on a CPU. So each split is
decoded once into uint8 tensors at the training resolution (plus a crop margin when random crops
are taken), kept on disk under ``$SHIFTLAB_CACHE/decoded/`` and in memory on the device where the
model runs, and the augmentation is done there, batched but per sample.

What stays the same as the file path (:func:`shiftlab.data.pair.make_loader`):

* the images: a split is decoded with the very transform the file path uses before its random part
  (``Resize((S, S))`` on the PIL image), so evaluation batches and digits batches are identical, bit
  for bit (tested), and photo training batches differ only by the random crop's interpolation
  (torch's, from the stored square, rather than PIL's from the file);
* the order: the indices come from a ``DataLoader`` over positions with the same sampler and
  generator, re-seeded by the loop each epoch, so a seed gives the same epoch order as the file path
  and resume stays exact;
* the augmentation's definition: the random resized crop follows torchvision's sampling (10 tries of
  a uniform area share within ``scale`` and a log-uniform aspect ratio within ``ratio``, else a centre
  crop clamped to the ratio), with the scale and ratio of :mod:`shiftlab.data.transforms`, and the flip
  has probability 0.5. Its random numbers come from a CPU generator seeded from (seed, epoch, stream)
  by the loop, not from the global RNG, so resume is exact and CPU and GPU draw the same crops.

The photo training splits are stored at ``S = round(size * CROP_MARGIN)`` (256 for 224): a crop of 70%
of the area is then cut from 214 pixels rather than upsampled from 187. Images are squashed to a
square, as the evaluation transform does, so a non-square image keeps all its content (a centre crop
would drop its sides, which the file path's random crop can reach).

The cache file of a split is named by a hash of what determines its content: the preprocessing
version, the stored size, and the split's identity (each file's path, size and modification time;
or, for images held in memory, a hash of the array; any subset's indices; any derived domain's shift
names and arguments). A change of the data therefore leads to a new file, and the file is written
atomically (temporary + rename), so a killed decode never leaves half a cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import transforms as T
from tqdm.auto import tqdm

from ..errors import DataError, Uncacheable
from ..utils import atomic_path
from .base import ArrayDataset, ImageListDataset, path_text, text_bytes
from .cache import cache_dir
from .transforms import CROP_RATIO, CROP_SCALE, FAMILY_SIZES, FLIP_P

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1  # bump when decoding changes: every old cache file is then ignored
CROP_MARGIN = 8 / 7  # stored side / training side of photo splits that are randomly cropped (224 -> 256)
LOADERS = ("auto", "cached", "files")
DEFAULT_BUDGET_SHARE = 0.25  # auto: cache when every split together takes at most this share of free memory


# --------------------------------------------------------------------------------------------------
# sizes and identity


def stored_size(family: str, size: int | None, augment: bool, train: bool) -> int:
    """Side of the stored square: the training size, plus the crop margin for randomly cropped splits."""
    size = size or FAMILY_SIZES[family]
    if train and augment and family == "photo":
        return int(round(size * CROP_MARGIN))
    return size


def _array_hash(ds: ArrayDataset) -> str:
    cached = getattr(ds, "_shiftlab_content_hash", None)
    if cached is None:
        h = hashlib.sha1()
        h.update(str((ds.images.shape, ds.images.dtype.str)).encode())
        h.update(np.ascontiguousarray(ds.images).data)
        h.update(ds.labels.tobytes())
        h.update(text_bytes("\n".join(ds.keys)))
        cached = h.hexdigest()
        ds._shiftlab_content_hash = cached
    return cached


def _identity(ds: Dataset, h) -> None:
    """Feed what determines ``ds``'s samples into hash ``h``, walking subsets, unions and wrappers."""
    from .shifts import Shifted  # late: shifts imports base only, but keep this module light to import

    if isinstance(ds, Subset):
        h.update(b"subset:")
        h.update(np.asarray(ds.indices, dtype=np.int64).tobytes())
        _identity(ds.dataset, h)
    elif isinstance(ds, ConcatDataset):
        h.update(f"concat:{len(ds.datasets)}".encode())
        for part in ds.datasets:
            _identity(part, h)
    elif isinstance(ds, Shifted):
        h.update(("shifts:" + "@".join(str(s) for s in ds.shifts)).encode())
        _identity(ds.base, h)
    elif isinstance(ds, ImageListDataset):
        h.update(f"files:{len(ds.samples)}".encode())
        for path, label in ds.samples:
            try:
                st = os.stat(path)
            except FileNotFoundError as err:
                raise DataError(f"image file is missing: {path_text(path)}") from err
            h.update(text_bytes(f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n"))
    elif isinstance(ds, ArrayDataset):
        h.update(f"array:{_array_hash(ds)}".encode())
    elif getattr(ds, "base", None) is not None and hasattr(ds, "transform"):  # a Transformed view
        _identity(ds.base, h)
    else:
        raise Uncacheable(
            f"cannot cache {type(ds).__name__}: the decoded cache knows file lists, in-memory "
            f"arrays, subsets, unions and shifted domains; use data.loader=files"
        )


def split_identity(dataset: Dataset, size: int) -> str:
    """Hex hash naming the decoded cache file of ``dataset`` stored at ``size`` pixels."""
    h = hashlib.sha1(f"shiftlab-decoded/v{PREPROCESS_VERSION}/size={size}/".encode())
    _identity(dataset, h)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# decoding


@dataclass
class DecodedSplit:
    """A split decoded once: ``images`` uint8 (N, 3, S, S), ``labels`` int64 (N,) as the dataset gives them."""

    images: torch.Tensor
    labels: torch.Tensor
    identity: str

    def __len__(self) -> int:
        return len(self.images)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` on ``device``, copied there once however many loaders read the split."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.images, self.labels
        copies = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = (self.images.to(device), self.labels.to(device))
        return copies[device]


def _decode_all(dataset: Dataset, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    resize = T.Resize((size, size))
    out = np.empty((len(dataset), size, size, 3), dtype=np.uint8)
    labels = np.empty(len(dataset), dtype=np.int64)

    def one(i: int) -> None:
        image, label = dataset[i]
        image = resize(image if image.mode == "RGB" else image.convert("RGB"))
        out[i] = np.asarray(image, dtype=np.uint8)
        labels[i] = label

    # PIL releases the GIL while decoding and resizing: threads overlap the files' reads and decodes
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(
            pool.map(one, range(len(dataset))),
            total=len(dataset),
            desc=f"decoding {size}px",
            disable=not progress,
            leave=False,
        ):
            pass
    return out, labels


# identity -> split while some loader holds it: a split read by two loaders of a run (the target's training
# stream and its adaptation images) is read and copied to the device once, and freed with the last loader
_MEMORY: weakref.WeakValueDictionary[str, DecodedSplit] = weakref.WeakValueDictionary()


def decode_split(dataset: Dataset, size: int, *, progress: bool = False) -> DecodedSplit:
    """``dataset`` (untransformed ``(PIL image, label)`` samples) decoded at ``size`` x ``size``, from the
    on-disk cache when it holds this exact split, else decoded now and written there atomically."""
    identity = split_identity(dataset, size)
    if identity in _MEMORY:
        return _MEMORY[identity]
    folder = _cache_folder()
    path = None if folder is None else folder / f"{identity}.pt"
    split = None
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if state.get("version") == PREPROCESS_VERSION and len(state["images"]) == len(dataset):
                split = DecodedSplit(state["images"], state["labels"], identity)
        except Exception as err:  # a damaged file is decoded again, never trusted
            log.warning("decoded cache %s is unreadable (%s); decoding again", path, err)
    if split is None:
        images, labels = _decode_all(dataset, size, progress)
        split = DecodedSplit(
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), identity
        )
        if path is not None:
            _write_cache_file(
                path, {"version": PREPROCESS_VERSION, "images": split.images, "labels": split.labels, "size": size}
            )
    _MEMORY[identity] = split
    return split


def _cache_folder() -> Path | None:
    """``$SHIFTLAB_CACHE/decoded``, or None (with a warning) when it cannot be created."""
    try:
        return cache_dir("decoded")
    except OSError as err:
        log.warning(
            "cannot create the decoded cache folder under $SHIFTLAB_CACHE (%s); decoding in memory "
            "without keeping a copy on disk",
            _os_error_text(err),
        )
        return None


def _write_cache_file(path: Path, state: dict) -> None:
    """Save a decoded split; a cache that cannot be written (full disk, read-only folder) only costs a decode
    next time, so it is a warning naming the folder and the run goes on from memory."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError (inline_container.cc)
        log.warning(
            "cannot write the decoded cache in %s (%s); the run goes on with the split decoded in memory "
            "(free space there or point $SHIFTLAB_CACHE at a writable folder to keep it)",
            path.parent,
            _os_error_text(err),
        )


def _os_error_text(err: BaseException) -> str:
    """The first line of an error (torch's write errors carry a C++ trace below it)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# --------------------------------------------------------------------------------------------------
# batched augmentation (per sample), on any device


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] = CROP_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, 4) float boxes ``(top, left, h, w)`` drawn as torchvision's ``RandomResizedCrop.get_params``
    draws one: up to 10 tries of ``area = U(scale) * H * W`` and ``log r = U(log ratio)``, ``w = round(sqrt(
    area r))``, ``h = round(sqrt(area / r))``, accepted when it fits, at a uniform position; a sample
    whose 10 tries all fail takes the centre crop of the whole image clamped to ``ratio``. Vectorised over
    the batch, so its random numbers come in another order than torchvision's, with the same distribution."""
    tries = 10
    area = height * width
    u = torch.rand(n, tries, generator=generator, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    h, w = h[rows, pick], w[rows, pick]
    # fallback (torchvision): the whole image, cut down to the nearest ratio bound
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    failed = first < 0
    h = torch.where(failed, torch.full_like(h, fh), h)
    w = torch.where(failed, torch.full_like(w, fw), w)
    # torch.randint(0, H - h + 1) is floor(U * (H - h + 1)) in distribution
    top = torch.floor(pos[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(pos[:, 1] * (width - w + 1)).clamp(max=width - w)
    top = torch.where(failed, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(failed, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], 1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box ``(top, left, h, w)`` resized to ``size`` x ``size``, in one batched call.

    ``torchvision.ops.roi_align`` with ``aligned=True`` samples each output pixel at its centre in the
    box by bilinear interpolation (half-pixel centres, as ``F.interpolate(align_corners=False)``), and
    averages ``ceil(box / size)`` samples per pixel and axis when the box is larger than the output,
    which stands in for the antialiasing of PIL's and torchvision's resize. Float in, float out.
    """
    from torchvision.ops import roi_align

    boxes = boxes.to(device=images.device, dtype=torch.float32)
    index = torch.arange(len(images), device=images.device, dtype=torch.float32)
    rois = torch.stack([index, boxes[:, 1], boxes[:, 0], boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], 1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def flip_mask(n: int, p: float = FLIP_P, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which of ``n`` images to flip horizontally, each with probability ``p`` (torchvision's rule)."""
    return torch.rand(n, generator=generator) < p


@dataclass(frozen=True)
class BatchAugment:
    """Random resized crop to ``size`` and horizontal flip, per sample, on a uint8 batch (N, 3, S, S)."""

    size: int
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    flip_p: float = FLIP_P

    def params(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws of ``n`` samples (boxes and flips), from a CPU generator: cheap, and the same
        on every device, so a GPU run crops as a CPU run does."""
        boxes = random_resized_crop_boxes(n, height, width, self.scale, self.ratio, generator)
        return boxes, flip_mask(n, self.flip_p, generator)

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] from uint8 ``images`` and the draws of :meth:`params`.

        On an accelerator, one batched ``roi_align`` (:func:`resized_crops`). On the CPU, one antialiased
        bilinear resize per image on uint8 (torch's vectorised uint8 kernel, what torchvision's tensor
        ``resized_crop`` calls): measured 4x faster there than the batched float kernels (0.23 s against
        0.89 s for 128 crops of 256 -> 224 px on one core), because it reads only the crop, in bytes."""
        if images.device.type != "cpu":
            out = resized_crops(images.float(), boxes, self.size)
            out = torch.where(flips.to(out.device)[:, None, None, None], out.flip(-1), out)
            return out.mul_(1 / 255).clamp_(0, 1)
        out = torch.empty(len(images), images.shape[1], self.size, self.size, dtype=torch.uint8)
        for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
            crop = images[i : i + 1, :, top : top + h, left : left + w]
            out[i] = torch.nn.functional.interpolate(
                crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        return out.float().mul_(1 / 255)


# --------------------------------------------------------------------------------------------------
# the loader


class _Positions(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _as_tensor(batch: list[int]) -> torch.Tensor:
    return torch.tensor(batch, dtype=torch.long)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous part ``[start, stop)`` of ``n`` items for ``rank`` of ``world`` (sizes differ by at most 1),
    so gathering the parts in rank order gives the original order back."""
    start = rank * n // world
    return start, (rank + 1) * n // world


class TensorBatchLoader:
    """Batches from a :class:`DecodedSplit` held on ``device``: ``(x, y)``, or ``x`` when ``with_labels`` is
    false, ``x`` float in [0, 1] of ``size`` pixels.

    Order: a ``DataLoader`` over positions with the file path's sampler settings (``shuffle``, ``generator``,
    ``drop_last``) yields the indices, so the same generator state gives the same batches. ``shard=(rank,
    world)`` keeps rank's contiguous part of every global batch (data parallelism: the global batch is
    ``batch_size``); the augmentation's draws are made for the whole global batch and sliced the same
    way, so that world sizes 1 and 2 see the same images. ``indices`` restricts the loader to a part of
    the split (a rank's share of an evaluation set).
    """

    def __init__(
        self,
        split: DecodedSplit,
        batch_size: int,
        *,
        shuffle: bool,
        device: torch.device,
        size: int,
        augment: BatchAugment | None = None,
        generator: torch.Generator | None = None,
        with_labels: bool = True,
        label_map: Sequence[int] | None = None,
        drop_last: bool | None = None,
        shard: tuple[int, int] = (0, 1),
        indices: Sequence[int] | None = None,
    ):
        if len(split) == 0:
            raise DataError("a data split is empty; check data.limit and the split lists")
        self.device = torch.device(device)
        self.split = split  # keeps it (and its device copy) shared while this loader lives
        self.images, labels = split.on(self.device)
        if label_map is not None:
            labels = torch.tensor(label_map, dtype=torch.long, device=labels.device)[labels]
        self.labels = labels
        self.size, self.augment, self.with_labels = size, augment, with_labels
        if augment is None and self.images.shape[-1] != size:
            raise ValueError(
                f"split stored at {self.images.shape[-1]} px but batches of {size} px asked without augmentation"
            )
        self.rank, self.world = shard
        self.positions = None if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
        n = len(self.positions) if self.positions is not None else len(split)
        drop_last = (shuffle and n > batch_size) if drop_last is None else drop_last
        self.batch_size = batch_size
        self.generator = generator
        self.index_loader = DataLoader(
            _Positions(n),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            collate_fn=_as_tensor,
        )
        self.aug_generator = torch.Generator()

    def seed_augmentation(self, seed: int) -> None:
        """Re-seed the augmentation's draws (the loop does it each epoch from (seed, epoch, stream))."""
        self.aug_generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.index_loader)

    def __iter__(self) -> Iterator:
        for batch in self.index_loader:
            draws = None
            if self.augment is not None:
                draws = self.augment.params(
                    len(batch), self.images.shape[-2], self.images.shape[-1], self.aug_generator
                )
            if self.world > 1:
                lo, hi = shard_bounds(len(batch), self.rank, self.world)
                batch = batch[lo:hi]
                draws = None if draws is None else (draws[0][lo:hi], draws[1][lo:hi])
            if self.positions is not None:
                batch = self.positions[batch]
            idx = batch.to(self.device, non_blocking=True)
            raw = self.images.index_select(0, idx)
            if draws is not None:
                x = self.augment.apply(raw, *draws)
            else:
                x = raw.float().mul_(1 / 255)  # as ToUnitTensor: float32(v) * float32(1/255), bit for bit
            if self.with_labels:
                yield x, self.labels.index_select(0, idx)
            else:
                yield x


# --------------------------------------------------------------------------------------------------
# choosing the path


def available_memory(device: torch.device) -> int:
    """Bytes free for a cache on ``device``: free GPU memory, else the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def decoded_bytes(n: int, size: int) -> int:
    return n * (3 * size * size + 8)


def resolve_loader(mode: str, needed_bytes: int, device: torch.device, budget_gb: float | None) -> str:
    """``cached`` or ``files`` for ``data.loader=mode``: ``auto`` caches when every decoded split of the run
    fits the budget (``data.cache_budget_gb``, default a quarter of the free memory where the cache lives)."""
    if mode not in LOADERS:
        raise DataError(f"data.loader={mode!r} is not a loader; valid: {', '.join(LOADERS)}")
    if mode != "auto":
        return mode
    budget = budget_gb * 2**30 if budget_gb is not None else DEFAULT_BUDGET_SHARE * available_memory(device)
    return "cached" if needed_bytes <= budget else "files"
