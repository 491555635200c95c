"""Splits as sets of keys: look through subsets and wrappers, hold out a fixed part, remove one from another.

Every sample has a key (see :mod:`shiftlab.data.spec`), the same on every machine and for a derived
domain as for its base. Comparing splits by key is what lets :func:`shiftlab.data.pair.build_domain_pair`
prove that no evaluated image is trained on, and what makes the target's held-out part the same for
every method and every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset
from tqdm.auto import tqdm

from ..errors import DataError
from .base import held_out, load_rgb, text_bytes

HOLDOUT_SALT = "holdout/"  # keeps the holdout independent of the 10% val hash of folder datasets and digits


def per_sample(dataset: Dataset, attribute: str) -> list:
    """``attribute`` (``keys``, ``targets``, ``paths``) of every sample, through subsets, concatenations
    and order-keeping wrappers (anything with a ``base``: shifted domains, transformed datasets)."""
    if isinstance(dataset, Subset):
        inner = per_sample(dataset.dataset, attribute)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [v for part in dataset.datasets for v in per_sample(part, attribute)]
    if getattr(dataset, "base", None) is not None:
        return per_sample(dataset.base, attribute)
    values = getattr(dataset, attribute, None)
    if values is None:
        if attribute == "paths":  # images held in memory: no file to check
            return [None] * len(dataset)
        raise DataError(
            f"{type(dataset).__name__} has no '{attribute}': a dataset loader must return samples "
            f"with classes, targets and keys (see shiftlab/data/spec.py)"
        )
    return list(values)


def keys_of(dataset: Dataset) -> list[str]:
    return per_sample(dataset, "keys")


def targets_of(dataset: Dataset) -> list[int]:
    return [int(t) for t in per_sample(dataset, "targets")]


def classes_of(dataset: Dataset) -> list[str]:
    while not hasattr(dataset, "classes"):
        dataset = (
            dataset.datasets[0]
            if isinstance(dataset, ConcatDataset)
            else (dataset.dataset if isinstance(dataset, Subset) else dataset.base)
        )
    return list(dataset.classes)


def fingerprint(dataset: Dataset) -> str:
    """Short hash of the sorted keys: two runs evaluated on the same images show the same fingerprint."""
    return hashlib.sha1(text_bytes("\n".join(sorted(keys_of(dataset))))).hexdigest()[:12]


def select(dataset: Dataset, keep: Sequence[bool]) -> Dataset:
    """The samples where ``keep`` is true; the dataset itself when all are kept."""
    if all(keep):
        return dataset
    return Subset(dataset, [i for i, k in enumerate(keep) if k])


def without(dataset: Dataset, keys: Iterable[str]) -> Dataset:
    """``dataset`` minus the samples whose key is in ``keys``."""
    drop = set(keys)
    return select(dataset, [k not in drop for k in keys_of(dataset)])


def holdout_part(dataset: Dataset, fraction: float) -> Dataset:
    """A fixed ``fraction`` of ``dataset`` chosen by a hash of each key: the same images on every machine,
    for every method and seed, and stable when files are added."""
    return select(dataset, [held_out(HOLDOUT_SALT + k, fraction) for k in keys_of(dataset)])


def union(parts: Sequence[Dataset]) -> Dataset:
    """The samples of ``parts`` in order, each key once (``train+test`` of a transductive dataset)."""
    if len(parts) == 1:
        return parts[0]
    joined = ConcatDataset(parts)
    seen: set[str] = set()
    keep = []
    for key in keys_of(joined):
        keep.append(key not in seen)
        seen.add(key)
    return select(joined, keep)


def evenly_spaced(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` samples, evenly spaced: keeps class proportions of class-sorted lists (PACS)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit <= 0:
        raise DataError(f"data.limit must be positive, got {limit}")
    return Subset(dataset, np.linspace(0, len(dataset) - 1, limit).round().astype(int).tolist())


class ReadabilityCheck:
    """Decodes image files once each and remembers which fail (for ``data.skip_unreadable``).

    Decoding at build time costs a pass over the files (about 1 ms per PACS image, in threads because
    PIL releases the GIL), but it finds every unreadable file before training starts, so a run never
    stops in its last epoch and skipped files are known before the first step.
    """

    def __init__(self, progress: bool = True):
        self.errors: dict[Path, str] = {}
        self._checked: set[Path] = set()
        self.progress = progress

    def _decode(self, path: Path) -> str | None:
        try:
            load_rgb(path)
        except DataError as err:
            return str(err)
        return None

    def readable(self, dataset: Dataset) -> Dataset:
        """``dataset`` without its unreadable files (in-memory samples are always kept)."""
        paths = per_sample(dataset, "paths")
        todo = sorted({p for p in paths if p is not None} - self._checked)
        if todo:
            with ThreadPoolExecutor(max_workers=4) as pool:
                results = pool.map(self._decode, todo)
                for path, error in tqdm(
                    zip(todo, results), total=len(todo), desc="checking images", disable=not self.progress, leave=False
                ):
                    self._checked.add(path)
                    if error is not None:
                        self.errors[path] = error
        return select(dataset, [p is None or p not in self.errors for p in paths])
