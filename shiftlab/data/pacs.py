"""PACS with its official k-fold split lists.

Li, Yang, Song, Hospedales, "Deeper, Broader and Artier Domain Generalization", ICCV 2017.

Layout: ``<root>/PACS/<domain>/<class>/<image>`` and
``<root>/PACS/splits/<domain>_{train,crossval,test}_kfold.txt``, one ``<domain>/<class>/<file> <label>``
line per image, labels 1..7 in alphabetical class order. shiftlab's ``train``/``val``/``test`` splits
are the official ``train``/``crossval``/``test`` lists; ``test`` is the whole domain.

The official lists carry two quirks that users' copies have too, and which are kept as they are:
the first line of ``art_painting_crossval_kfold.txt`` says label 0 for a dog image (the class folder
decides: the label is taken from the path, and a mismatch is logged as a warning), and the same file lists
``dog/pic_248.jpg`` twice (the duplicate is kept so that counts match the official 208).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import DataError
from .base import ImageListDataset
from .spec import DatasetSpec, DomainReport, class_folder_report

log = logging.getLogger(__name__)

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
SPLIT_FILES = {"train": "train", "val": "crossval", "test": "test"}


def split_file(root: Path, domain: str, split: str) -> Path:
    return root / "PACS" / "splits" / f"{domain}_{SPLIT_FILES[split]}_kfold.txt"


def read_split(list_file: Path, image_root: Path) -> list[tuple[Path, int]]:
    """Parse one official split list into ``(path, 0-based label)`` pairs, checking every line.

    The label comes from the class folder in the path; the list's own label is only checked
    against it, because upstream lists contain a label 0 that contradicts its folder.
    """
    if not list_file.is_file():
        raise DataError(
            f"PACS split list not found: {list_file} "
            f"(expected <root>/PACS/splits/<domain>_{{train,crossval,test}}_kfold.txt)"
        )
    samples = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"-?[0-9]+", parts[1]):
            raise DataError(f"{list_file}:{lineno}: expected '<domain>/<class>/<file> <label>', got {line!r}")
        rel, listed = parts[0], int(parts[1])
        path = image_root / rel
        if not path.is_file():
            raise DataError(f"{list_file}:{lineno}: listed image does not exist: {path}")
        class_name = Path(rel).parent.name
        if class_name not in CLASSES:
            raise DataError(
                f"{list_file}:{lineno}: class folder '{class_name}' is not a PACS class; "
                f"valid classes: {', '.join(CLASSES)}"
            )
        label = CLASSES.index(class_name)
        if listed != label + 1:
            log.warning(
                "%s:%d lists label %d for %s; using %d from its class folder '%s'",
                list_file,
                lineno,
                listed,
                rel,
                label + 1,
                class_name,
            )
        samples.append((path, label))
    if not samples:
        raise DataError(f"PACS split list is empty: {list_file}")
    return samples


def load(root: Path, domain: str, split: str) -> ImageListDataset:
    samples = read_split(split_file(root, domain, split), root / "PACS")
    return ImageListDataset(samples, CLASSES, key_root=root / "PACS")  # keys as the lists write them


def check(root: Path, domain: str) -> DomainReport:
    """Folder, class folders, image count and split lists of one PACS domain."""
    report = class_folder_report(domain, root / "PACS" / domain)
    if not report.present:
        return report
    for split in SPLIT_FILES:
        try:
            read_split(split_file(root, domain, split), root / "PACS")
        except DataError as err:
            report.problems.append(str(err))
    return report


# Transductive, as in the PACS paper and the DA work evaluated on it: the whole target domain (``test``)
# is both adapted on (without labels) and evaluated on.
SPEC = DatasetSpec(
    name="pacs",
    domains=DOMAINS,
    classes=CLASSES,
    load=load,
    check=check,
    family="photo",
    description="PACS: photo, art painting, cartoon, sketch; 7 classes, official k-fold splits",
    citation="Li et al., Deeper, Broader and Artier Domain Generalization, ICCV 2017",
    target_adapt_split="test",
    target_eval_split="test",
)
