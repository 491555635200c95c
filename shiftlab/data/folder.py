"""Any folder-per-domain dataset: ``<root>/<Dataset>/<domain>/<class>/<image>``.

Office-31, Office-Home and DomainNet ship this way and are defined below; a user's own set is one
call to :func:`shiftlab.data.registry.register_folder_dataset`, or, without registering,
``--data.dataset=folder:<Dataset>`` (domains and classes are then read from the disk).

Classes: a registered class list fixes the label order, and a class folder outside it is an error; without
one, the classes are the union of all domains' class folders, in sorted order. Either way a domain may lack
some classes (real datasets do): labels stay the positions in the dataset's list, so any two domains agree,
and a pair of domains is checked on its own two domains only (:func:`shiftlab.data.pair.build_domain_pair`).

Splits: ``train``/``val`` split each domain 90/10 by a hash of the file's path relative to
``<root>/<Dataset>`` (its key, e.g. ``real/cat/img_01.jpg``); ``test`` is all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..errors import DataError
from .base import ImageListDataset, scan_class_folders, split_by_hash
from .spec import DatasetSpec, DomainReport, class_folder_report

OFFICE31_CLASSES = (
    "back_pack",
    "bike",
    "bike_helmet",
    "bookcase",
    "bottle",
    "calculator",
    "desk_chair",
    "desk_lamp",
    "desktop_computer",
    "file_cabinet",
    "headphones",
    "keyboard",
    "laptop_computer",
    "letter_tray",
    "mobile_phone",
    "monitor",
    "mouse",
    "mug",
    "paper_notebook",
    "pen",
    "phone",
    "printer",
    "projector",
    "punchers",
    "ring_binder",
    "ruler",
    "scissors",
    "speaker",
    "stapler",
    "tape_dispenser",
    "trash_can",
)
OFFICE_HOME_CLASSES = (
    "Alarm_Clock",
    "Backpack",
    "Batteries",
    "Bed",
    "Bike",
    "Bottle",
    "Bucket",
    "Calculator",
    "Calendar",
    "Candles",
    "Chair",
    "Clipboards",
    "Computer",
    "Couch",
    "Curtains",
    "Desk_Lamp",
    "Drill",
    "Eraser",
    "Exit_Sign",
    "Fan",
    "File_Cabinet",
    "Flipflops",
    "Flowers",
    "Folder",
    "Fork",
    "Glasses",
    "Hammer",
    "Helmet",
    "Kettle",
    "Keyboard",
    "Knives",
    "Lamp_Shade",
    "Laptop",
    "Marker",
    "Monitor",
    "Mop",
    "Mouse",
    "Mug",
    "Notebook",
    "Oven",
    "Pan",
    "Paper_Clip",
    "Pen",
    "Pencil",
    "Postit_Notes",
    "Printer",
    "Push_Pin",
    "Radio",
    "Refrigerator",
    "Ruler",
    "Scissors",
    "Screwdriver",
    "Shelf",
    "Sink",
    "Sneakers",
    "Soda",
    "Speaker",
    "Spoon",
    "TV",
    "Table",
    "Telephone",
    "ToothBrush",
    "Toys",
    "Trash_Can",
    "Webcam",
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


def _class_folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def union_classes(root: Path, folder_name: str, domains: Sequence[str]) -> tuple[str, ...]:
    """Sorted union of the class folders of every present domain (a domain may lack some)."""
    present = [root / folder_name / d for d in domains if (root / folder_name / d).is_dir()]
    if not present:
        raise DataError(f"no domain folders of {folder_name} under {root / folder_name}; expected {', '.join(domains)}")
    return tuple(sorted({c for path in present for c in _class_folders(path)}))


def load_folder(
    root: Path, domain: str, split: str, *, folder_name: str, classes: Sequence[str] | None, domains: Sequence[str]
) -> ImageListDataset:
    base = root / folder_name
    found = scan_class_folders(base / domain)
    expected = tuple(classes) if classes else union_classes(root, folder_name, domains)
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise DataError(
            f"class folders of {base / domain} are not classes of {folder_name}: "
            f"unexpected {len(unexpected)}: {', '.join(unexpected)}; valid classes: {', '.join(expected)}"
        )
    samples = [(p, i) for i, c in enumerate(expected) for p in found.get(c, ())]
    everything = ImageListDataset(samples, expected, key_root=base)
    return ImageListDataset([samples[i] for i in split_by_hash(everything.keys, split)], expected, key_root=base)


def check_folder(root: Path, domain: str, *, folder_name: str) -> DomainReport:
    """Presence and class folders; the comparison with the dataset's classes is ``check_datasets``'s."""
    return class_folder_report(domain, root / folder_name / domain)


def folder_dataset_spec(
    name: str,
    domains: Sequence[str],
    classes: Sequence[str] | None = None,
    folder_name: str | None = None,
    description: str = "",
    citation: str = "",
) -> DatasetSpec:
    """The spec of ``<root>/<folder_name>/<domain>/<class>/*`` (register it with
    :func:`shiftlab.data.registry.register_folder_dataset`).

    With ``classes=None`` the class list is the union of the domains' class folders, read at load time.
    """
    folder_name = folder_name or name
    return DatasetSpec(
        name=name,
        domains=tuple(domains),
        classes=tuple(classes or ()),
        load=partial(load_folder, folder_name=folder_name, classes=classes, domains=tuple(domains)),
        check=partial(check_folder, folder_name=folder_name),
        family="photo",
        description=description or f"folder-per-domain dataset under <root>/{folder_name}",
        citation=citation,
        union_classes=not classes,
    )


def discover_folder_dataset(root: Path, folder_name: str) -> DatasetSpec:
    """``folder:<folder_name>`` from what is on disk: its sub-folders are the domains, the union of
    their class folders the classes. Not registered: read again each time it is asked for."""
    base = Path(root) / folder_name
    if not base.is_dir():
        raise DataError(f"dataset folder not found: {base}")
    domains = _class_folders(base)
    if not domains:
        raise DataError(f"no domain folders in {base} (expected <Dataset>/<domain>/<class>/<image>)")
    classes = union_classes(Path(root), folder_name, domains)
    spec = folder_dataset_spec(f"folder:{folder_name}", domains, classes, folder_name=folder_name)
    return replace(spec, union_classes=True)


OFFICE31 = folder_dataset_spec(
    "office31",
    ("amazon", "dslr", "webcam"),
    OFFICE31_CLASSES,
    folder_name="Office31",
    description="Office-31: amazon, dslr, webcam; 31 classes",
    citation="Saenko et al., Adapting Visual Category Models to New Domains, ECCV 2010",
)
OFFICE_HOME = folder_dataset_spec(
    "office_home",
    ("Art", "Clipart", "Product", "Real_World"),
    OFFICE_HOME_CLASSES,
    folder_name="OfficeHome",
    description="Office-Home: Art, Clipart, Product, Real World; 65 classes",
    citation="Venkateswara et al., Deep Hashing Network for Unsupervised Domain Adaptation, CVPR 2017",
)
DOMAINNET = folder_dataset_spec(
    "domainnet",
    ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
    None,
    folder_name="DomainNet",
    description="DomainNet: 6 domains, 345 classes (class list read from disk)",
    citation="Peng et al., Moment Matching for Multi-Source Domain Adaptation, ICCV 2019",
)
SPECS = (OFFICE31, OFFICE_HOME, DOMAINNET)
