"""Datasets that every loader builds on: a list of image files, or images held in memory.

Every dataset in shiftlab yields ``(PIL.Image in RGB, int label)`` before its transform, so that any
two domains can be paired once they share a transform (same size, 3 channels).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


def path_text(path: str | os.PathLike) -> str:
    """``path`` as text any UTF-8 writer accepts: bytes of a name that are not UTF-8 shown as ``\\xNN``.

    Python keeps such bytes in ``str(path)`` as lone surrogates, which printing, ``.encode()`` and text
    files refuse (UnicodeEncodeError); messages and file lists name a path through this instead.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def text_bytes(text: str) -> bytes:
    """UTF-8 bytes of a key or path for hashing; a file name's non-UTF-8 bytes (surrogates) are hashed as
    the bytes they stand for, so such a file has a stable key like any other."""
    return text.encode("utf-8", "surrogateescape")


def load_rgb(path: Path) -> Image.Image:
    """Decode one image as RGB, turning any decoding failure into a :class:`DataError` naming the file.

    An image announcing more pixels than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is
    unreadable too: PIL raises ``DecompressionBombError`` above twice the limit, and above the limit
    this checks before decoding (PIL only warns there), so a tiny file cannot take gigabytes of memory.
    """
    try:
        with Image.open(path) as img:
            _check_pixel_count(img, path)
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image file is missing: {path_text(path)}") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # the warning where made an error
        raise DataError(f"cannot decode image {path_text(path)}: {err} {BOMB_HINT}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot decode image {path_text(path)}: {err}") from err


BOMB_HINT = "Replace or remove the file, or skip it with data.skip_unreadable=true."


def _check_pixel_count(img: Image.Image, path: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise DataError(
            f"cannot decode image {path_text(path)}: it announces {img.width}x{img.height} pixels, more "
            f"than PIL's limit of {limit} (a decompression bomb?). {BOMB_HINT}"
        )


class ImageListDataset(Dataset):
    """Images read from files, one ``(path, label)`` pair per sample.

    ``keys`` name each sample independently of the machine: its path relative to ``key_root`` (the
    dataset's folder, e.g. ``cartoon/dog/pic_001.jpg`` under ``<root>/PACS``), else its last three path
    parts. Splits are compared and held out by these keys (see :mod:`shiftlab.data.splits`).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        transform: Callable | None = None,
        key_root: Path | None = None,
    ):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.key_root = key_root

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.samples]

    @property
    def keys(self) -> list[str]:
        if self.key_root is None:
            return ["/".join(Path(p).parts[-3:]) for p, _ in self.samples]
        prefix = f"{self.key_root}{os.sep}"

        def key(p) -> str:  # a string slice for a normalised path under the root: Path parsing costs 2 s per run
            if isinstance(p, Path) and os.sep == "/" and str(p).startswith(prefix):
                return str(p)[len(prefix) :]
            return Path(p).relative_to(self.key_root).as_posix()

        return [key(p) for p, _ in self.samples]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = load_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3), as digits datasets ship.

    ``keys`` name each sample (e.g. ``mnist/test/17``: domain, official split, index); a loader must
    make them unique across the splits of a domain, because splits are compared by key. The default,
    the position in ``images``, only suits a dataset with a single split.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Callable | None = None,
        keys: Sequence[str] | None = None,
    ):
        if images.dtype != np.uint8:
            raise TypeError(f"ArrayDataset wants uint8 images, got {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitem__(self, index: int):
        arr = self.images[index]
        img = Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name so that order never depends on the file system."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_class_folders(domain_dir: Path) -> dict[str, list[Path]]:
    """``{class name: [image paths]}`` for a ``<domain>/<class>/<image>`` folder; errors name the folder at fault."""
    if not domain_dir.is_dir():
        raise DataError(f"domain folder not found: {domain_dir}")
    classes = sorted(p.name for p in domain_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {domain_dir} (expected <domain>/<class>/<image>)")
    found = {}
    for name in classes:
        images = list_images(domain_dir / name)
        if not images:
            raise DataError(
                f"class folder has no images: {domain_dir / name} "
                f"(extensions looked for: {', '.join(IMAGE_EXTENSIONS)})"
            )
        found[name] = images
    return found


def held_out(key: str, fraction: float = 0.1) -> bool:
    """Deterministic train/val assignment from a sample's key (its relative path or index).

    A hash keeps the split stable when files are added or the seed changes, so that every run,
    every method and every machine sees the same validation set.
    """
    digest = hashlib.sha1(text_bytes(key)).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split_by_hash(keys: Sequence[str], split: str, fraction: float = 0.1) -> list[int]:
    """Indices of ``keys`` in ``split``: ``train`` and ``val`` partition them, ``test`` is all of them."""
    if split == "test":
        return list(range(len(keys)))
    want_val = split == "val"
    return [i for i, k in enumerate(keys) if held_out(k, fraction) == want_val]
