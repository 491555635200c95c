"""Any folder-per-domain dataset: ``<root>/<Dataset>/<domain>/<class>/<image>``.

Office-31, Office-Home and DomainNet ship this way and are registered below; a user's own set is one
call to :func:`register_folder_dataset`, or, without registering, ``--data.dataset=folder:<Dataset>``
(domains and classes are then read from the disk). The class set must be the same in every domain.
``train``/``val`` split each domain 90/10 by a hash of the file's relative path; ``test`` is all of it.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

from .base import DataError, ImageListDataset, scan_class_folders, split_by_hash
from .registry import DatasetSpec, DomainReport, class_folder_report, register

OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)
OFFICE_HOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar",
    "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser",
    "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer",
    "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse",
    "Mug", "Notebook", "Oven", "Pan", "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin",
    "Radio", "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can", "Webcam",
)


def class_difference(expected: Sequence[str], found: Sequence[str]) -> str:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if extra:
        parts.append(f"unexpected {len(extra)}: {', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}")
    return "; ".join(parts)


def _domain_classes(root: Path, folder_name: str, domains: Sequence[str]) -> tuple[str, ...]:
    """Classes read from disk for an unregistered class list; every present domain must agree."""
    sets = {}
    for d in domains:
        path = root / folder_name / d
        if path.is_dir():
            sets[d] = tuple(sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not sets:
        raise DataError(f"no domain folders of {folder_name} under {root / folder_name}")
    first, classes = next(iter(sets.items()))
    for d, found in sets.items():
        if found != classes:
            raise DataError(f"class folders differ between domains of {folder_name}: '{d}' vs '{first}': "
                            f"{class_difference(classes, found)}")
    return classes


def load_folder(root: Path, domain: str, split: str, *, folder_name: str,
                classes: Sequence[str] | None, domains: Sequence[str]) -> ImageListDataset:
    base = root / folder_name
    found = scan_class_folders(base / domain)
    expected = tuple(classes) if classes else _domain_classes(root, folder_name, domains)
    if tuple(sorted(found)) != tuple(sorted(expected)):
        raise DataError(f"class folders of {base / domain} differ from the classes of {folder_name}: "
                        f"{class_difference(expected, sorted(found))}")
    samples = [(p, expected.index(c)) for c in expected for p in found[c]]
    keys = [str(p.relative_to(base)) for p, _ in samples]
    return ImageListDataset([samples[i] for i in split_by_hash(keys, split)], expected)


def check_folder(root: Path, domain: str, *, folder_name: str) -> DomainReport:
    """Presence and class folders; the comparison with the dataset's classes is ``check_datasets``'s."""
    return class_folder_report(domain, root / folder_name / domain)


def register_folder_dataset(name: str, domains: Sequence[str], classes: Sequence[str] | None = None,
                            folder_name: str | None = None, description: str = "",
                            citation: str = "") -> DatasetSpec:
    """Register ``<root>/<folder_name>/<domain>/<class>/*`` under ``name``.

    With ``classes=None`` the class list is read from the disk and must agree across domains.
    """
    folder_name = folder_name or name
    return register(DatasetSpec(
        name=name, domains=tuple(domains), classes=tuple(classes or ()),
        load=partial(load_folder, folder_name=folder_name, classes=classes, domains=tuple(domains)),
        check=partial(check_folder, folder_name=folder_name),
        family="photo", description=description or f"folder-per-domain dataset under <root>/{folder_name}",
        citation=citation,
    ))


def discover_folder_dataset(root: Path, folder_name: str) -> DatasetSpec:
    """Register ``folder:<folder_name>`` from what is on disk: its sub-folders are the domains."""
    base = Path(root) / folder_name
    if not base.is_dir():
        raise DataError(f"dataset folder not found: {base}")
    domains = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not domains:
        raise DataError(f"no domain folders in {base} (expected <Dataset>/<domain>/<class>/<image>)")
    classes = _domain_classes(Path(root), folder_name, domains)
    return register_folder_dataset(f"folder:{folder_name}", domains, classes, folder_name=folder_name)


register_folder_dataset(
    "office31", ("amazon", "dslr", "webcam"), OFFICE31_CLASSES, folder_name="Office31",
    description="Office-31: amazon, dslr, webcam; 31 classes",
    citation="Saenko et al., Adapting Visual Category Models to New Domains, ECCV 2010")
register_folder_dataset(
    "office_home", ("Art", "Clipart", "Product", "Real_World"), OFFICE_HOME_CLASSES, folder_name="OfficeHome",
    description="Office-Home: Art, Clipart, Product, Real World; 65 classes",
    citation="Venkateswara et al., Deep Hashing Network for Unsupervised Domain Adaptation, CVPR 2017")
register_folder_dataset(
    "domainnet", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), None,
    folder_name="DomainNet", description="DomainNet: 6 domains, 345 classes (class list read from disk)",
    citation="Peng et al., Moment Matching for Multi-Source Domain Adaptation, ICCV 2019")
