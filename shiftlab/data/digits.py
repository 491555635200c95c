"""Digits: MNIST, USPS and MNIST-M, the classic 10-class digit-recognition shift benchmark.

* MNIST: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
  Proceedings of the IEEE 86(11), 1998. 28x28 grey, 60,000 train / 10,000 test.
* USPS: Hull, "A database for handwritten text recognition research", IEEE TPAMI 16(5), 1994.
  16x16 grey, 7,291 train / 2,007 test.
* MNIST-M: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015
  (MNIST digits blended over BSDS500 colour patches; image i is derived from MNIST image i).
  32x32 RGB, 59,001 train / 9,001 test.
* SVHN: Netzer et al., "Reading Digits in Natural Images with Unsupervised Feature Learning", NIPS
  Workshop on Deep Learning and Unsupervised Feature Learning 2011. 32x32 RGB house numbers, 73,257 train /
  26,032 test (the ``extra`` set is not used). Optional: deep activation matching's third pair,
  SVHN -> MNIST (seeds/003_63417c418c7168ad.txt's tables; not in the shared data folder).

Layout under the data root::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   the 4 original files
    USPS/usps.bz2 + USPS/usps.t.bz2                              torchvision/LIBSVM packaging, or
    USPS/usps.h5                                                 HDF5 packaging (groups train, test)
    MNIST_M/mnist_m_{train,test}/<file>.png
    MNIST_M/mnist_m_{train,test}_labels.txt                      lines "<file> <digit>"
    SVHN/{train,test}_32x32.mat                                  torchvision's SVHN files (root=<root>/SVHN)

Splits: ``test`` is the official test set; ``val`` is a deterministic 10% of the official training
set (:func:`~shiftlab.data.base.split_by_hash`) and ``train`` is the rest. Images are returned at
their native size (28, 16 and 32 px); the "digits" family transform resizes them all to 32x32 RGB.
Every dataset returned by :func:`load` has an ``indices`` attribute: the position of each sample in
the official split it was taken from (so MNIST-M sample ``k`` pairs with MNIST index ``indices[k]``).

The data root is only ever read: MNIST is unpacked into shiftlab's cache folder
(:func:`~shiftlab.data.cache.cache_dir`), because torchvision's ``MNIST`` reads unpacked files and
the data root may be read-only.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils import atomic_path
from .base import ArrayDataset, ImageListDataset, split_by_hash
from .cache import cache_dir
from .spec import DatasetSpec, DomainReport

log = logging.getLogger(__name__)

DOMAINS = ("mnist", "usps", "mnist_m", "svhn")
CLASSES = tuple("0123456789")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
USPS_TV_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}  # names torchvision.datasets.USPS reads
USPS_H5_FILE = "usps.h5"
MNIST_M_DIR = "MNIST_M"
SVHN_DIR = "SVHN"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}  # torchvision.datasets.SVHN.split_list

_logged_usps: set[str] = set()  # roots whose USPS packaging was already announced


def _official(split: str) -> str:
    """The official split a shiftlab split is drawn from (``val`` is held out of ``train``)."""
    return "test" if split == "test" else "train"


def _subset(domain: str, images: np.ndarray, labels, split: str) -> ArrayDataset:
    """``split`` of one official in-memory split, hashed by ``<domain>/<index>`` into train/val and keyed
    ``<domain>/<official split>/<index>`` (unique across the domain's splits)."""
    labels = np.asarray(labels, dtype=np.int64)
    if split == "test":
        idx = np.arange(len(images))
    else:
        idx = np.asarray(split_by_hash([f"{domain}/{i}" for i in range(len(images))], split), dtype=np.int64)
    keys = [f"{domain}/{_official(split)}/{i}" for i in idx.tolist()]
    ds = ArrayDataset(images[idx] if split != "test" else images, labels[idx], CLASSES, keys=keys)
    ds.indices = idx.tolist()
    return ds


# --------------------------------------------------------------------------------------------- MNIST


def mnist_raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _missing_mnist(root: Path) -> list[Path]:
    return [mnist_raw_dir(root) / name for name in MNIST_FILES if not (mnist_raw_dir(root) / name).is_file()]


def _mnist_missing_error(missing: list[Path], root: Path) -> DataError:
    return DataError(
        f"MNIST file not found: {missing[0]}"
        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        + f". Get it with `shiftlab download digits`, or copy the 4 original files "
        f"{', '.join(MNIST_FILES)} into {mnist_raw_dir(root)}"
    )


def _gzip_size(path: Path) -> int:
    """Uncompressed size mod 2**32 from the gzip trailer (ISIZE): a cheap check of an unpacked copy."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def unpack_mnist(root: Path) -> Path:
    """Unpack the 4 MNIST ``.gz`` files into the cache; returns the folder to give torchvision as root.

    The cache folder is ``cache_dir("MNIST-unpacked", <hash of the resolved root>)`` laid out as
    ``MNIST/raw/<file>``, because torchvision's MNIST only reads unpacked files and the data root may
    be read-only. A file is unpacked only when missing (or its size disagrees with the gzip trailer),
    through :func:`shiftlab.utils.atomic_path` (a temporary file in the same folder, then one
    ``os.replace``), so that concurrent runs or an interrupted one never leave a partial file behind.
    """
    missing = _missing_mnist(root)
    if missing:
        raise _mnist_missing_error(missing, root)
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    base = cache_dir("MNIST-unpacked", key)
    out_dir = base / "MNIST" / "raw"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        src = mnist_raw_dir(root) / name
        dst = out_dir / name[: -len(".gz")]
        if dst.is_file() and dst.stat().st_size % 2**32 == _gzip_size(src):
            continue
        try:
            with atomic_path(dst) as tmp, gzip.open(src, "rb") as inp, open(tmp, "wb") as out:
                shutil.copyfileobj(inp, out, length=1 << 20)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise DataError(f"cannot unpack MNIST file {src} into {out_dir}: {err}") from err
    return base


def read_mnist(root: Path, official: str) -> tuple[np.ndarray, np.ndarray]:
    """Official MNIST ``train`` or ``test`` as uint8 (N, 28, 28) images and int64 labels.

    Goes through ``torchvision.datasets.MNIST`` (download disabled) on the unpacked cache copy, so
    the bytes are parsed by the same code everyone else uses.
    """
    import torchvision

    base = unpack_mnist(root)
    try:
        tv = torchvision.datasets.MNIST(str(base), train=official == "train", download=False)
    except RuntimeError as err:  # torchvision's "Dataset not found" or a bad idx header
        raise DataError(
            f"torchvision cannot read the unpacked MNIST files in {base / 'MNIST' / 'raw'} "
            f"(from {mnist_raw_dir(root)}): {err}"
        ) from err
    return tv.data.numpy(), tv.targets.numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------- USPS


def usps_packaging(root: Path) -> str:
    """Which USPS packaging to read: ``"torchvision"`` if both bz2 files exist, else ``"h5"``.

    One packaging serves both splits, never a mix: the two apply different pixel preprocessing
    (LIBSVM [-1, 1] vs. [0, 1] of the ESL "zip" values), so mixing would shift train against test.
    """
    folder = root / "USPS"
    if all((folder / f).is_file() for f in USPS_TV_FILES.values()):
        return "torchvision"
    if (folder / USPS_H5_FILE).is_file():
        return "h5"
    looked = [folder / USPS_TV_FILES["train"], folder / USPS_TV_FILES["test"], folder / USPS_H5_FILE]
    present = [p.name for p in looked if p.is_file()]
    raise DataError(
        "USPS not found: looked for "
        + ", ".join(str(p) for p in looked)
        + f"; need both {USPS_TV_FILES['train']} and {USPS_TV_FILES['test']} "
        f"(torchvision/LIBSVM) or {USPS_H5_FILE}"
        + (f" (only {', '.join(present)} present)" if present else "")
        + ". Get them with `shiftlab download digits`."
    )


def read_usps(root: Path, official: str) -> tuple[np.ndarray, np.ndarray]:
    """Official USPS ``train`` or ``test`` as uint8 (N, 16, 16) images and int64 labels."""
    folder = root / "USPS"
    packaging = usps_packaging(root)
    if str(folder) not in _logged_usps:
        _logged_usps.add(str(folder))
        if packaging == "torchvision":
            log.info(
                "USPS: using the torchvision/LIBSVM packaging (%s, %s) for train and test",
                folder / USPS_TV_FILES["train"],
                folder / USPS_TV_FILES["test"],
            )
        else:
            log.info(
                "USPS: using the HDF5 packaging %s for train and test (torchvision needs both %s and %s)",
                folder / USPS_H5_FILE,
                *USPS_TV_FILES.values(),
            )
    if packaging == "torchvision":
        import torchvision

        path = folder / USPS_TV_FILES[official]
        try:  # reads the bz2 directly and writes nothing when download=False
            tv = torchvision.datasets.USPS(str(folder), train=official == "train", download=False)
        except (OSError, EOFError, ValueError, IndexError) as err:
            raise DataError(f"cannot read USPS file {path}: {err}") from err
        return np.asarray(tv.data, dtype=np.uint8), np.asarray(tv.targets, dtype=np.int64)
    import h5py

    path = folder / USPS_H5_FILE
    try:
        with h5py.File(path, "r") as fh:
            data = np.asarray(fh[official]["data"], dtype=np.float32)
            target = np.asarray(fh[official]["target"]).astype(np.int64).reshape(-1)
    except (OSError, KeyError) as err:
        raise DataError(f"cannot read group '{official}' (data, target) of {path}: {err}") from err
    if data.ndim != 2 or data.shape[1] != 256 or len(data) != len(target):
        raise DataError(f"{path}:/{official}: expected data N x 256 and N targets, got {data.shape} and {target.shape}")
    images = np.round(np.clip(data, 0.0, 1.0) * 255).astype(np.uint8).reshape(-1, 16, 16)  # row-major 16x16
    return images, target


# ------------------------------------------------------------------------------------------- MNIST-M


def mnist_m_paths(root: Path, official: str) -> tuple[Path, Path]:
    """``(image folder, label file)`` of one official MNIST-M split."""
    base = root / MNIST_M_DIR
    return base / f"mnist_m_{official}", base / f"mnist_m_{official}_labels.txt"


def read_mnist_m(root: Path, official: str, check_files: bool = True) -> list[tuple[Path, int]]:
    """Parse ``mnist_m_<split>_labels.txt`` into ``(path, digit)`` pairs, checking every line.

    Errors name the label file and line (malformed line, digit outside 0..9, listed image missing).
    """
    folder, labels = mnist_m_paths(root, official)
    if not folder.is_dir():
        raise DataError(
            f"MNIST-M image folder not found: {folder} (expected "
            f"<root>/{MNIST_M_DIR}/mnist_m_{{train,test}}/ with the PNG files)"
        )
    if not labels.is_file():
        raise DataError(f"MNIST-M label file not found: {labels} (expected lines '<file> <digit>')")
    samples = []
    for lineno, line in enumerate(labels.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) > 9:
            raise DataError(f"{labels}:{lineno}: expected '<file> <digit 0..9>', got {line!r}")
        path = folder / parts[0]
        if check_files and not path.is_file():
            raise DataError(f"{labels}:{lineno}: listed image does not exist: {path}")
        samples.append((path, int(parts[1])))
    if not samples:
        raise DataError(f"MNIST-M label file is empty: {labels}")
    return samples


# ---------------------------------------------------------------------------------------------- SVHN


def read_svhn(root: Path, official: str) -> tuple[np.ndarray, np.ndarray]:
    """Official SVHN ``train`` or ``test`` as uint8 (N, 32, 32, 3) images and int64 digits 0..9.

    Reads torchvision's files (``<root>/SVHN/{train,test}_32x32.mat``: ``X`` 32 x 32 x 3 x N uint8, ``y`` N x 1
    with 10 for the digit 0) as ``torchvision.datasets.SVHN`` does (``scipy.io.loadmat``, label 10 -> 0), without
    its md5 check, which ``shiftlab download svhn`` does when it fetches them.
    """
    path = root / SVHN_DIR / SVHN_FILES[official]
    if not path.is_file():
        raise DataError(
            f"SVHN file not found: {path}. Get it with `shiftlab download svhn` (torchvision's URLs "
            f"and md5) or copy torchvision's {', '.join(SVHN_FILES.values())} into {root / SVHN_DIR}"
        )
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    except (OSError, KeyError, ValueError, NotImplementedError) as err:
        raise DataError(f"cannot read SVHN file {path} (expected torchvision's .mat with X and y): {err}") from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: expected X of shape 32 x 32 x 3 x N and N labels, got {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels must be 0..10 (10 = digit 0), got {y.min()}..{y.max()}")
    y = np.where(y == 10, 0, y)  # torchvision: np.place(labels, labels == 10, 0)
    return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)).astype(np.uint8)), y


# ------------------------------------------------------------------------------------- load / check


def load(root: Path, domain: str, split: str) -> Dataset:
    """One split of one digits domain, yielding ``(PIL RGB image at native size, digit)``."""
    root = Path(root)
    official = _official(split)
    if domain == "mnist":
        return _subset(domain, *read_mnist(root, official), split)
    if domain == "usps":
        return _subset(domain, *read_usps(root, official), split)
    if domain == "svhn":
        return _subset(domain, *read_svhn(root, official), split)
    if domain == "mnist_m":
        samples = read_mnist_m(root, official)
        # Key by file name (not line position): stable if a label file's lines are reordered.
        idx = split_by_hash([f"{domain}/{p.name}" for p, _ in samples], split)
        ds = ImageListDataset([samples[i] for i in idx], CLASSES, key_root=root / MNIST_M_DIR)
        ds.indices = idx
        return ds
    raise DataError(f"unknown domain '{domain}' for dataset 'digits'; valid domains: {', '.join(DOMAINS)}")


def _idx_count_and_labels(images_gz: Path, labels_gz: Path) -> tuple[int, np.ndarray]:
    """Image count from an idx3 header (16 bytes, no image decoding) and the labels of an idx1 file."""
    with gzip.open(images_gz, "rb") as fh:
        magic, count = struct.unpack(">II", fh.read(8))
    if magic != 2051:
        raise DataError(f"{images_gz}: not an idx3 image file (magic {magic}, expected 2051)")
    with gzip.open(labels_gz, "rb") as fh:
        magic, n = struct.unpack(">II", fh.read(8))
        labels = np.frombuffer(fh.read(), dtype=np.uint8)
    if magic != 2049 or n != len(labels):
        raise DataError(f"{labels_gz}: not an idx1 label file or truncated (magic {magic}, {len(labels)}/{n} labels)")
    if n != count:
        raise DataError(f"{images_gz} has {count} images but {labels_gz} has {n} labels")
    return count, labels


def _usps_counts(root: Path) -> tuple[int, set[int]]:
    folder = root / "USPS"
    if usps_packaging(root) == "h5":
        import h5py

        total, found = 0, set()
        with h5py.File(folder / USPS_H5_FILE, "r") as fh:
            for group in ("train", "test"):
                if group not in fh or "data" not in fh[group] or "target" not in fh[group]:
                    raise DataError(f"{folder / USPS_H5_FILE}: missing group '{group}' with data and target")
                target = np.asarray(fh[group]["target"]).reshape(-1)
                if len(target) != len(fh[group]["data"]):
                    raise DataError(
                        f"{folder / USPS_H5_FILE}:/{group}: {len(fh[group]['data'])} images but {len(target)} targets"
                    )
                total += len(target)
                found |= set(target.tolist())
        return total, found
    total, found = 0, set()
    for name in USPS_TV_FILES.values():  # labels are the first token of each line (1..10)
        with bz2.open(folder / name, "rt") as fh:
            for line in fh:
                if line.strip():
                    total += 1
                    found.add(int(line.split(None, 1)[0].split(".")[0]) - 1)
    return total, found


def check(root: Path, domain: str) -> DomainReport:
    """Files, sample count (train + test) and digits present for one domain; decodes no images."""
    root = Path(root)
    report = DomainReport(domain, present=False)
    found: set[int] = set()
    try:
        if domain == "mnist":
            missing = _missing_mnist(root)
            report.present = len(missing) < len(MNIST_FILES)
            if missing:
                report.problems.append(str(_mnist_missing_error(missing, root)))
            for split in ("train", "t10k"):
                images = mnist_raw_dir(root) / f"{split}-images-idx3-ubyte.gz"
                labels = mnist_raw_dir(root) / f"{split}-labels-idx1-ubyte.gz"
                if images.is_file() and labels.is_file():
                    try:
                        count, lab = _idx_count_and_labels(images, labels)
                    except (OSError, EOFError, struct.error) as err:
                        raise DataError(f"cannot read {images} / {labels}: {err}") from err
                    report.images += count
                    found |= set(lab.tolist())
        elif domain == "usps":
            folder = root / "USPS"
            report.present = any((folder / f).is_file() for f in (*USPS_TV_FILES.values(), USPS_H5_FILE))
            report.images, found = _usps_counts(root)
        elif domain == "svhn":
            report.present = any((root / SVHN_DIR / f).is_file() for f in SVHN_FILES.values())
            if not report.present:  # optional domain: its absence is no problem of the digits copy
                report.notes.append(
                    f"optional, not on disk: {root / SVHN_DIR} ({', '.join(SVHN_FILES.values())}); "
                    f"`shiftlab download svhn`"
                )
                return report
            for official in ("train", "test"):
                try:
                    _, labels = read_svhn(root, official)
                except DataError as err:
                    report.problems.append(str(err))
                    continue
                report.images += len(labels)
                found |= set(labels.tolist())
        elif domain == "mnist_m":
            report.present = (root / MNIST_M_DIR).is_dir()
            for official in ("train", "test"):
                try:
                    samples = read_mnist_m(root, official)
                except DataError as err:
                    report.problems.append(str(err))
                    continue
                report.images += len(samples)
                found |= {label for _, label in samples}
        else:
            report.problems.append(f"unknown domain '{domain}'; valid domains: {', '.join(DOMAINS)}")
    except (DataError, OSError, EOFError, ValueError) as err:
        report.problems.append(str(err))
    report.classes = [CLASSES[i] for i in sorted(found) if 0 <= i < len(CLASSES)]
    return report


# The digits protocol (Ganin & Lempitsky 2015, Sec. 5; Tzeng et al., ADDA, CVPR 2017): an unsupervised
# method adapts on the target's official training images, all of them (train+val: the val part only
# serves methods that read target labels), and is evaluated on the official test set.
SPEC = DatasetSpec(
    name="digits",
    domains=DOMAINS,
    classes=CLASSES,
    load=load,
    check=check,
    family="digits",
    description="Digits: MNIST (28 px grey), USPS (16 px grey), MNIST-M (32 px colour), SVHN (32 px colour, "
    "optional); 10 classes; "
    "val = hashed 10% of the official train set, test = official test set",
    citation="LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998; "
    "Hull, A database for handwritten text recognition research, TPAMI 1994; "
    "Ganin & Lempitsky, Unsupervised Domain Adaptation by Backpropagation, ICML 2015; "
    "Netzer et al., Reading Digits in Natural Images with Unsupervised Feature Learning, NIPS-W 2011",
    target_adapt_split="train+val",
    target_eval_split="test",
)
