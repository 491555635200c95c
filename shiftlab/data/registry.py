"""Registry of datasets: the built-in ones, registered here in one place, and those of users.

A dataset is registered once, by name, as a :class:`~shiftlab.data.spec.DatasetSpec`. Everything
else (the CLI's ``datasets`` command, domain pairing, the checks of what is on disk) reads this
registry, so a new benchmark is one call to :func:`register` (or :func:`register_folder_dataset`).
``folder:<Dataset>`` names are not registered: :func:`get_dataset` reads them from the disk each time,
so that no run leaves a dataset behind in the process for the next one.

The dataset modules define their specs without importing this module, and this module imports
them: there is no import cycle, and no registration happens as a side effect of an import elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..utils import did_you_mean
from . import demo, digits, folder, imagenet, pacs
from .cache import data_root
from .spec import DatasetSpec

BUILTIN: tuple[DatasetSpec, ...] = (demo.SPEC, digits.SPEC, pacs.SPEC, imagenet.SPEC, *folder.SPECS)
_REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in BUILTIN}
FOLDER_PREFIX = "folder:"


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (a later registration under the same name replaces it)."""
    if spec.name.startswith(FOLDER_PREFIX):
        raise DataError(
            f"dataset name '{spec.name}': names starting with '{FOLDER_PREFIX}' are read from the disk, not registered"
        )
    _REGISTRY[spec.name] = spec
    return spec


def register_folder_dataset(
    name: str,
    domains: Sequence[str],
    classes: Sequence[str] | None = None,
    folder_name: str | None = None,
    description: str = "",
    citation: str = "",
) -> DatasetSpec:
    """Register ``<root>/<folder_name>/<domain>/<class>/*`` under ``name`` (see :mod:`shiftlab.data.folder`).

    With ``classes=None`` the class list is the union of the domains' class folders.
    """
    return register(folder.folder_dataset_spec(name, domains, classes, folder_name, description, citation))


def get_dataset(name: str, root: Path | str | None = None) -> DatasetSpec:
    """A registered dataset, or ``folder:<Dataset>`` read from ``<root>/<Dataset>`` (root: see
    :func:`~shiftlab.data.cache.data_root`)."""
    if name.startswith(FOLDER_PREFIX):
        return folder.discover_folder_dataset(data_root(root), name[len(FOLDER_PREFIX) :])
    try:
        return _REGISTRY[name]
    except KeyError:
        extra = did_you_mean(name, _REGISTRY)
        raise DataError(
            f"unknown dataset '{name}'; known datasets: {', '.join(sorted(_REGISTRY))}, or "
            f"{FOLDER_PREFIX}<folder under the data root>.{extra}"
        ) from None


def list_datasets() -> list[DatasetSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
