"""The ILSVRC2012 validation set in its official layout, split by image ID as AdapterNet does.

Hazan et al., "AdapterNet - learning input transformation for domain adaptation", 2018, section 4
(``/work/shared/seeds/001_6fd3dbee0644b896.txt``): the ImageNet training set is treated as inaccessible
(only the model trained on it, VGG16, is given) and the 50,000 validation images are split by ID:
**IDs 1-40,000 the new train set, 40,001-45,000 the validation set, 45,001-50,000 the test set**. Those
are this dataset's ``train``, ``val`` and ``test`` splits; the simulated cameras are derived domains
(``imagenet@colour_rotation(150)``, ``imagenet@power(0.2,0.3,0.4)``: :mod:`shiftlab.data.shifts`).

Layout under the data root (the official archives unpacked; the same files torchvision's ``ImageNet``
parses)::

    ImageNet/ILSVRC2012_img_val/ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG
    ImageNet/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   50,000 lines, ILSVRC2012_ID 1..1000
    ImageNet/ILSVRC2012_devkit_t12/data/meta.mat                                  synsets: ILSVRC2012_ID -> WNID

The document does not say which label file it used; the ground truth of the devkit is the official one.
Labels are the devkit's ILSVRC2012_IDs mapped to WNIDs (``meta.mat``) and numbered in sorted-WNID order,
which is the class order of torchvision's and Keras's ImageNet models (so a VGG16 trained on ImageNet needs
no relabelling); the class names are torchvision's (``torchvision.models._meta._IMAGENET_CATEGORIES``),
prefixed with the index. Keys are ``ILSVRC2012_img_val/<file>``. A copy with fewer than the 50,000 images
(a subset) is read with a warning; an image whose ID the ground truth lacks is an error.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from .base import ImageListDataset
from .spec import DatasetSpec, DomainReport

log = logging.getLogger(__name__)

FOLDER = "ImageNet"
IMAGES = "ILSVRC2012_img_val"
DEVKIT = "ILSVRC2012_devkit_t12/data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
TOTAL = 50_000
#: AdapterNet's split of the validation IDs (section 4): inclusive ID ranges
ID_SPLITS = {"train": (1, 40_000), "val": (40_001, 45_000), "test": (45_001, 50_000)}
FILE_RE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")


def _classes() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(f"{i:03d} {name}" for i, name in enumerate(_IMAGENET_CATEGORIES))


CLASSES = _classes()


def wnid_order(meta_path: Path) -> dict[int, int]:
    """ILSVRC2012_ID (1..1000) -> class index in sorted-WNID order, from the devkit's ``meta.mat`` (its leaf
    synsets, ``num_children == 0``, as torchvision's devkit parser keeps them)."""
    import scipy.io

    if not meta_path.is_file():
        raise DataError(
            f"ImageNet devkit file not found: {meta_path} (unpack ILSVRC2012_devkit_t12.tar.gz into "
            f"{meta_path.parents[2]})"
        )
    try:
        synsets = scipy.io.loadmat(str(meta_path), squeeze_me=True)["synsets"]
        rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), int(s["num_children"])) for s in synsets]
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        raise DataError(f"cannot read the synsets (ILSVRC2012_ID, WNID, num_children) of {meta_path}: {err}") from err
    leaves = {i: w for i, w, children in rows if children == 0}
    if len(leaves) != len(CLASSES):
        raise DataError(f"{meta_path}: {len(leaves)} leaf synsets, expected {len(CLASSES)}")
    order = {w: k for k, w in enumerate(sorted(leaves.values()))}
    return {i: order[w] for i, w in leaves.items()}


@lru_cache(maxsize=4)
def _labels(root: Path) -> tuple[int, ...]:
    """Class index of validation image ID 1..50,000 (position ID - 1)."""
    devkit = root / FOLDER / DEVKIT
    to_class = wnid_order(devkit / META)
    path = devkit / GROUND_TRUTH
    if not path.is_file():
        raise DataError(f"ImageNet validation ground truth not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(to_class[int(line)])
        except (ValueError, KeyError):
            raise DataError(f"{path}:{lineno}: expected an ILSVRC2012_ID 1..1000, got {line!r}") from None
    if len(out) != TOTAL:
        raise DataError(f"{path}: {len(out)} labels, expected {TOTAL}")
    return tuple(out)


def _images(root: Path) -> dict[int, Path]:
    folder = root / FOLDER / IMAGES
    if not folder.is_dir():
        raise DataError(
            f"ImageNet validation images not found: {folder} (ILSVRC2012_val_00000001.JPEG ...; "
            f"unpack ILSVRC2012_img_val.tar there)"
        )
    found = {}
    for p in folder.iterdir():
        m = FILE_RE.match(p.name)
        if m and 1 <= int(m.group(1)) <= TOTAL:
            found[int(m.group(1))] = p
    return found


def load(root: Path, domain: str, split: str) -> Dataset:
    """One of AdapterNet's ID splits of the validation set (module docstring), ``(PIL RGB image, class)``."""
    if domain != "imagenet":
        raise DataError(f"unknown domain '{domain}' for dataset 'imagenet_val'; valid domains: imagenet")
    root = Path(root)
    labels, images = _labels(root), _images(root)
    if len(images) < TOTAL:
        log.warning("ImageNet validation: %d of %d images in %s (a subset)", len(images), TOTAL, root / FOLDER / IMAGES)
    lo, hi = ID_SPLITS[split]
    samples = [(images[i], labels[i - 1]) for i in sorted(images) if lo <= i <= hi]
    ds = ImageListDataset(samples, CLASSES, key_root=root / FOLDER)
    ds.ids = [i for i in sorted(images) if lo <= i <= hi]
    return ds


def check(root: Path, domain: str) -> DomainReport:
    report = DomainReport(domain, present=(Path(root) / FOLDER / IMAGES).is_dir())
    try:
        labels, images = _labels(Path(root)), _images(Path(root))
        report.images = len(images)
        report.classes = sorted({CLASSES[labels[i - 1]] for i in images})
        if len(images) < TOTAL:
            report.notes.append(f"{len(images)} of the {TOTAL} validation images")
    except DataError as err:
        report.problems.append(str(err))
    return report


SPEC = DatasetSpec(
    name="imagenet_val",
    domains=("imagenet",),
    classes=CLASSES,
    load=load,
    check=check,
    family="photo",
    description="ILSVRC2012 validation set (official layout + devkit ground truth), split by image ID as "
    "AdapterNet: train 1-40,000, val 40,001-45,000, test 45,001-50,000; 1,000 classes",
    citation="Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 2015; split: Hazan et "
    "al., AdapterNet - learning input transformation for domain adaptation, 2018, section 4",
    target_adapt_split="train",
    target_eval_split="test",
)
