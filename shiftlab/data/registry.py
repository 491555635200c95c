"""Registry of datasets and their domains.

A dataset is registered once, by name, with its domains, its classes and a function that loads one
split of one domain. Everything else (the CLI's ``datasets`` command, domain pairing, the checks of
what is on disk) reads this registry, so a new benchmark is one call to :func:`register`.

Splits are the same three everywhere:

* ``train``: what a source domain trains on (labelled) and what a labelled-target method trains on;
* ``val``: held out from ``train``; source validation drives model selection;
* ``test``: what the target domain is evaluated on. For PACS this is the whole domain, as the
  official ``*_test_kfold.txt`` lists it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from .base import SPLITS, DataError, scan_class_folders

Loader = Callable[[Path, str, str], Dataset]
Checker = Callable[[Path, str], "DomainReport"]


@dataclass
class DomainReport:
    """What :func:`check_domain` found on disk for one domain."""
    domain: str
    present: bool
    images: int = 0
    classes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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

    ``family`` picks the default preprocessing ("photo": ImageNet statistics, 224 px;
    "digits": 32 px, mean/std 0.5), so that any two domains of a dataset share one transform.
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate_domain(self, domain: str, role: str = "domain") -> str:
        if domain not in self.domains:
            hint = difflib.get_close_matches(domain, self.domains, n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise DataError(f"unknown {role} '{domain}' for dataset '{self.name}'; "
                            f"valid domains: {', '.join(self.domains)}.{extra}")
        return domain

    def dataset(self, root: Path | str, domain: str, split: str) -> Dataset:
        """The untransformed split of one domain (``(PIL image, label)`` samples)."""
        self.validate_domain(domain)
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        return self.load(Path(root), domain, split)


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (a later registration under the same name replaces it)."""
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, _REGISTRY, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(_REGISTRY))}."
                        f"{extra}") from None


def list_datasets() -> list[DatasetSpec]:
    _ensure_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _ensure_builtin() -> None:
    # Importing the modules registers the built-in datasets; deferred to avoid import cycles.
    from . import demo, digits, folder, pacs  # noqa: F401
