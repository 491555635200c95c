"""What a dataset is: its domains, classes, split loader and target protocol (no registry state here).

Dataset modules (``pacs``, ``digits``, ``demo``, ``folder``) build their :class:`DatasetSpec` from
this module only; :mod:`shiftlab.data.registry` imports them and registers their specs in one place,
so no module imports the registry to register itself.

Splits are the same three everywhere:

* ``train``: what a source domain trains on (labelled) and what a labelled-target method trains on;
* ``val``: held out from ``train``; source validation drives model selection;
* ``test``: the benchmark's evaluation split. For PACS and folder datasets this is the whole domain
  (as PACS's official ``*_test_kfold.txt`` lists it), for digits the official test set.

A loader returns a dataset of ``(PIL RGB image, label)`` samples with ``classes`` (the dataset's
class list), ``targets`` (one label per sample) and ``keys`` (one machine-independent name per
sample, unique across the domain's splits): :class:`~shiftlab.data.base.ImageListDataset` and
:class:`~shiftlab.data.base.ArrayDataset` provide them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from ..utils import did_you_mean
from .base import SPLITS, scan_class_folders
from .shifts import Shifted, parse_domain

Loader = Callable[[Path, str, str], Dataset]
Checker = Callable[[Path, str], "DomainReport"]


@dataclass
class DomainReport:
    """What a dataset's ``check`` found on disk for one domain.

    ``problems`` make ``shiftlab datasets`` fail (an incomplete or broken copy); ``notes`` are facts
    worth knowing that training handles (a domain lacking some classes of a dataset whose class list
    is the union of its domains').
    """

    domain: str
    present: bool
    images: int = 0
    classes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def class_folder_report(domain: str, path: Path) -> DomainReport:
    """Presence, class folders and image count of a ``<path>/<class>/<image>`` domain folder."""
    if not path.is_dir():
        return DomainReport(domain, present=False, problems=[f"missing folder {path}"])
    report = DomainReport(domain, present=True)
    try:
        found = scan_class_folders(path)
        report.classes = sorted(found)
        report.images = sum(len(v) for v in found.values())
    except DataError as err:
        report.problems.append(str(err))
    return report


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its domains, its classes, how to load a split and how to check the disk.

    ``family`` picks the default preprocessing ("photo": 224 px; "digits": 32 px), so that any two
    domains of a dataset share one transform.

    ``target_adapt_split`` and ``target_eval_split`` are the benchmark's protocol for the target
    domain: the images an unsupervised method adapts on (without labels) and those its reported
    number is measured on. A split may be a union, ``train+val``. Transductive benchmarks (PACS,
    Office-Home, DomainNet) use the whole target domain (``test``) for both; digits adapt on the
    official training images and are evaluated on the official test set.

    ``union_classes``: ``classes`` is the union of the domains' class folders, so a domain lacking
    some of them is normal (it is then a note of ``shiftlab datasets``, not a problem).
    """

    name: str
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    load: Loader
    family: str = "photo"
    description: str = ""
    citation: str = ""
    check: Checker | None = None
    embedded: bool = False  # ships inside a dependency: needs no root folder
    target_adapt_split: str = "test"
    target_eval_split: str = "test"
    union_classes: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate_domain(self, domain: str, role: str = "domain") -> str:
        """``domain``, or a derived ``<domain>@<shift>(args)``; errors list the valid domains or shifts."""
        base, _ = parse_domain(domain)
        if base not in self.domains:
            extra = did_you_mean(base, self.domains)
            where = f" (in '{domain}')" if base != domain else ""
            raise DataError(
                f"unknown {role} '{base}'{where} for dataset '{self.name}'; "
                f"valid domains: {', '.join(self.domains)}.{extra}"
            )
        return domain

    def dataset(self, root: Path | str, domain: str, split: str) -> Dataset:
        """The untransformed split of one domain (``(PIL image, label)`` samples); a derived domain is
        its base domain's split through its shifts, with the same keys and labels."""
        self.validate_domain(domain)
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        base, shifts = parse_domain(domain)
        loaded = self.load(Path(root), base, split)
        return Shifted(loaded, shifts) if shifts else loaded
