"""A source/target pair of domains with the datasets one run needs, all under one preprocessing.

Which target images a method may see, and where its number is measured, follows each benchmark's
protocol (:class:`~shiftlab.data.spec.DatasetSpec`'s ``target_adapt_split``/``target_eval_split``,
overridable by ``data.target_adapt_split``/``data.target_eval_split``):

* an unsupervised method adapts on the target's adapt split without labels and is evaluated on its
  eval split (digits: the official training images / the official test set, Ganin & Lempitsky 2015;
  PACS, Office-Home, DomainNet, folder datasets and the demo: the whole target domain for both, i.e.
  transductive, as their papers evaluate);
* a method that trains on target labels (oracle, fine-tuning, AdapterNet) needs three disjoint parts:
  ``train`` to learn, ``val`` to stop early and select, and a test part for the reported number.

Every row of a comparison must be measured on the same images, so one held-out target part, the
**holdout**, is defined for every method: when the eval split is disjoint from the target's
``train``/``val`` (digits: the official test set) the holdout is the eval split itself; when the eval
split is transductive (it contains ``train``/``val``), it is a fixed fraction of it chosen by a hash
of each image's key (``data.target_holdout_fraction``, 20% by default), which is removed from the
labelled methods' ``train`` and ``val``. Labelled methods are evaluated on the holdout; unsupervised
ones on their protocol's eval split and also on the holdout (``target_holdout``), so the two kinds of
rows can be put side by side on the same images.

When source and target share images (``photo -> photo@greyscale``, or the same domain twice), the
target is evaluated on the holdout only and the holdout is removed from the source's ``train`` and
``val``: no evaluated image is ever trained on, which :func:`build_domain_pair` checks by key.

``data.source_part`` (AdapterNet's protocol, Hazan et al. 2018, section 4: the adapter and the fine-tuning
baselines learn on images the classifier never saw) splits the source domain's images in two by a hash of
each key (``source_part/<key>``, :data:`SOURCE_PART_SALT`): the ``classifier`` part (a fraction
``data.source_part_fraction``) and the ``adapter`` part (the rest). With ``classifier`` or ``adapter`` every
part a run learns or selects on (source train/val, target train/val/adapt images) keeps, of the source
domain's images, only those of that part; a camera of the source domain (``mnist_m@power(...)``) has the
same keys, so its images follow the same split. Evaluated parts are never changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .base import SPLITS, held_out, path_text
from .cache import data_root
from .registry import get_dataset
from .spec import DatasetSpec
from .splits import (
    ReadabilityCheck,
    classes_of,
    evenly_spaced,
    fingerprint,
    holdout_part,
    keys_of,
    select,
    targets_of,
    union,
    without,
)
from .transforms import build_transforms

log = logging.getLogger(__name__)

__all__ = ["DomainPair", "Transformed", "build_domain_pair", "evenly_spaced", "make_loader", "SOURCE_PARTS"]

SOURCE_PARTS = ("all", "classifier", "adapter")
SOURCE_PART_SALT = "source_part/"
TRAINED_PARTS = ("source_train", "source_val", "target_train", "target_val", "target_adapt_images")


class Transformed(Dataset):
    """Applies a transform to ``(image, label)`` samples; ``with_labels=False`` yields images only.

    Dropping labels here, rather than in a method, makes an unlabelled target stream unable to leak them.
    ``label_map`` renumbers labels into the pair's class list when the source lacks some of the dataset's
    classes.
    """

    def __init__(self, base: Dataset, transform, with_labels: bool = True, label_map: tuple[int, ...] | None = None):
        self.base, self.transform, self.with_labels, self.label_map = base, transform, with_labels, label_map

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        image = self.transform(image)
        if not self.with_labels:
            return image
        return image, label if self.label_map is None else self.label_map[label]


@dataclass
class DomainPair:
    """Everything one run reads, transformed; see the module docstring for the protocol.

    * ``source_train`` / ``source_val``: labelled source, to learn and to select.
    * ``target_train``: the target training stream: the adapt split without labels, or, for methods
      that read target labels, the labelled target ``train`` part.
    * ``target_val``: labelled target validation part (early stopping, selection), for labelled methods only.
    * ``target_eval``: labelled; where the reported number is measured (protocol eval split, or the
      holdout for labelled methods and for pairs whose source shares the target's images).
    * ``target_adapt_images``: unlabelled target images to adapt on (e.g. AdaBN statistics).
    * ``target_holdout``: labelled common held-out part, or None when it is ``target_eval`` itself.
    * ``splits``: ``name -> {domain, split, subset, size, fingerprint, ...}`` for summary.json.
    * ``missing_target_classes``: source classes the target has no image of (accuracy is then over
      the classes it has); ``skipped_files``: unreadable files left out (``data.skip_unreadable``).
    """

    spec: DatasetSpec
    source: str
    target: str
    classes: list[str]
    source_train: Dataset
    source_val: Dataset
    target_train: Dataset
    target_val: Dataset | None
    target_eval: Dataset
    target_adapt_images: Dataset
    target_holdout: Dataset | None
    target_eval_split: str
    splits: dict[str, dict] = field(default_factory=dict)
    missing_target_classes: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Part:
    """One untransformed part of a pair, with where it comes from (recorded in summary.json)."""

    domain: str
    split: str
    subset: str  # "all", "holdout", "without holdout"
    data: Dataset
    labelled: bool = True
    source_part: str | None = None  # "classifier" / "adapter" when data.source_part restricted it


class _SplitLoader:
    """Loads ``train``, ``val``, ``test`` or a union such as ``train+val``, each split of a domain once."""

    def __init__(self, spec: DatasetSpec, root: Path):
        self.spec, self.root, self._cache = spec, root, {}

    def __call__(self, domain: str, expression: str, key: str = "split") -> Dataset:
        names = expression.split("+")
        if any(n not in SPLITS for n in names) or len(set(names)) != len(names):
            raise DataError(
                f"{key}: '{expression}' is not a split; valid: {', '.join(SPLITS)}, or a union of "
                f"them such as train+val"
            )
        return union([self._one(domain, n) for n in names])

    def _one(self, domain: str, split: str) -> Dataset:
        if (domain, split) not in self._cache:
            self._cache[domain, split] = self.spec.dataset(self.root, domain, split)
        return self._cache[domain, split]


def build_domain_pair(
    dataset: str,
    root: Path | None,
    source: str,
    target: str,
    *,
    image_size: int | None = None,
    augment: bool = True,
    limit: int | None = None,
    target_labels: bool = False,
    target_adapt_split: str | None = None,
    target_eval_split: str | None = None,
    holdout_fraction: float = 0.2,
    strict_classes: bool = False,
    skip_unreadable: bool = False,
    target_train_limit: int | None = None,
    source_train_split: str = "train",
    source_part: str = "all",
    source_part_fraction: float = 0.5,
) -> DomainPair:
    """The datasets of one run (see the module docstring for which target images go where).

    ``target_labels``: the method trains on target labels. ``target_adapt_split``/``target_eval_split``:
    None = the dataset's protocol. ``holdout_fraction``: share of a transductive eval split held out for
    every method. ``strict_classes``: a target lacking some source classes is an error rather than a
    warning. ``skip_unreadable``: decode every file first and leave out those that fail (listed in
    ``skipped_files``) instead of stopping the run at the first one. ``target_train_limit``: at most this
    many labelled target training images, evenly spaced (only when ``target_labels``).
    ``source_train_split``: the source split trained on (``test``: the whole domain on PACS).
    ``source_part``, ``source_part_fraction``: the hash part of the source domain's images a run may learn on
    (module docstring).
    """
    root = data_root(root)
    spec = get_dataset(dataset, root)
    spec.validate_domain(source, "source domain")
    spec.validate_domain(target, "target domain")
    if not 0 < holdout_fraction < 1:
        raise DataError(f"data.target_holdout_fraction must be between 0 and 1 (exclusive), got {holdout_fraction}")
    if limit is not None and limit <= 0:
        raise DataError(f"data.limit must be positive, got {limit}")
    load = _SplitLoader(spec, root)
    adapt_split = target_adapt_split or spec.target_adapt_split
    eval_split = target_eval_split or spec.target_eval_split
    parts = plan_parts(
        load, source, target, adapt_split, eval_split, holdout_fraction, target_labels, source_train_split
    )
    restrict_to_source_part(parts, source_part, source_part_fraction)
    check_disjoint(parts, target_labels)
    classes, label_map, missing = match_classes(parts, source, target, strict_classes)

    holdout_is_eval = parts["target_holdout"].data is parts["target_eval"].data
    sizes = {"before_limit": {name: len(p.data) for name, p in parts.items()}}
    for p in parts.values():
        p.data = evenly_spaced(p.data, limit)
    if target_labels and target_train_limit is not None:  # data.target_train_limit: labelled target train only
        for name in ("target_train", "target_adapt_images"):  # the same images (see plan_parts)
            parts[name].data = evenly_spaced(parts[name].data, target_train_limit)
    sizes["before_skipping"] = {name: len(p.data) for name, p in parts.items()}
    skipped = _skip_unreadable(parts) if skip_unreadable else []
    for name, p in parts.items():
        if len(p.data) == 0:
            raise DataError(
                f"{name} is empty: split '{p.split}' ({p.subset}) of domain '{p.domain}' of dataset "
                f"'{spec.name}' has no images"
                + (" left after skipping unreadable files" if skipped else "")
                + "; check the domain's files, data.limit and data.target_holdout_fraction"
            )

    train_tf, eval_tf = build_transforms(spec.family, image_size, augment)

    def wrap(name: str, transform, with_labels: bool = True) -> Dataset | None:
        return Transformed(parts[name].data, transform, with_labels, label_map) if name in parts else None

    return DomainPair(
        spec=spec,
        source=source,
        target=target,
        classes=classes,
        source_train=wrap("source_train", train_tf),
        source_val=wrap("source_val", eval_tf),
        target_train=wrap("target_train", train_tf, with_labels=target_labels),
        target_val=wrap("target_val", eval_tf),
        target_eval=wrap("target_eval", eval_tf),
        target_adapt_images=wrap("target_adapt_images", eval_tf, with_labels=False),
        target_holdout=None if holdout_is_eval else wrap("target_holdout", eval_tf),
        target_eval_split=_split_name(parts["target_eval"]),
        splits=_record(parts, sizes, holdout_fraction, source_part_fraction),
        missing_target_classes=missing,
        skipped_files=skipped,
    )


def plan_parts(
    load: _SplitLoader,
    source: str,
    target: str,
    adapt_split: str,
    eval_split: str,
    holdout_fraction: float,
    target_labels: bool,
    source_train_split: str = "train",
) -> dict[str, Part]:
    """The untransformed parts of a pair, chosen by key as the module docstring describes.

    The holdout and the source are chosen the same way whether or not the method reads target labels,
    so that every method of a comparison trains on the same source and is measured on the same holdout.
    """
    source_train = load(source, source_train_split, "data.source_train_split")
    source_val = load(source, "val")
    target_train, target_val = load(target, "train"), load(target, "val")
    evaluated = load(target, eval_split, "data.target_eval_split")
    labelled_keys = set(keys_of(target_train)) | set(keys_of(target_val))
    if labelled_keys.isdisjoint(keys_of(evaluated)):
        holdout = Part(target, eval_split, "all", evaluated)
    else:
        holdout = Part(target, eval_split, "holdout", holdout_part(evaluated, holdout_fraction))
    holdout_keys = set(keys_of(holdout.data))
    source_keys = set(keys_of(source_train)) | set(keys_of(source_val))
    shares_images = not source_keys.isdisjoint(keys_of(evaluated))

    def minus_holdout(domain: str, split: str, data: Dataset) -> Part:
        kept = without(data, holdout_keys)
        return Part(domain, split, "all" if kept is data else "without holdout", kept)

    parts = {
        "source_train": minus_holdout(source, source_train_split, source_train),
        "source_val": minus_holdout(source, "val", source_val),
    }
    if target_labels:
        parts["target_train"] = minus_holdout(target, "train", target_train)
        parts["target_val"] = minus_holdout(target, "val", target_val)
        parts["target_eval"] = holdout
        parts["target_adapt_images"] = Part(
            target,
            parts["target_train"].split,
            parts["target_train"].subset,
            parts["target_train"].data,
            labelled=False,
        )
    else:
        adapt = Part(target, adapt_split, "all", load(target, adapt_split, "data.target_adapt_split"), labelled=False)
        parts["target_train"] = adapt
        parts["target_eval"] = holdout if shares_images else Part(target, eval_split, "all", evaluated)
        parts["target_adapt_images"] = adapt
    parts["target_holdout"] = holdout
    return parts


def in_classifier_part(key: str, fraction: float) -> bool:
    """Whether a source image (by key) is in the classifier's part of ``data.source_part``."""
    return held_out(SOURCE_PART_SALT + key, fraction)


def restrict_to_source_part(parts: dict[str, Part], part: str, fraction: float) -> None:
    """Keep, in every part learnt or selected on, only the source domain's images of ``part`` (module docstring);
    images of other domains (a target that is not a camera of the source) are kept."""
    if part not in SOURCE_PARTS:
        raise DataError(f"data.source_part must be one of {', '.join(SOURCE_PARTS)}, got '{part}'")
    if not 0 < fraction < 1:
        raise DataError(f"data.source_part_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if part == "all":
        return
    source_keys = set(keys_of(parts["source_train"].data)) | set(keys_of(parts["source_val"].data))
    want = part == "classifier"
    for name in TRAINED_PARTS:
        if name not in parts:
            continue
        p = parts[name]
        keys = keys_of(p.data)
        keep = [k not in source_keys or in_classifier_part(k, fraction) == want for k in keys]
        if all(keep) and not source_keys.intersection(keys):
            continue  # no image of the source domain: nothing to split
        p.data = select(p.data, keep)
        p.subset = f"{p.subset}, {part} part"
        p.source_part = part


def check_disjoint(parts: dict[str, Part], target_labels: bool) -> None:
    """No evaluated image (target eval, holdout) in any part trained or selected on, by key; the labelled
    target parts pairwise disjoint. The planning guarantees it: this proves it for every pair built."""
    evaluated = set(keys_of(parts["target_eval"].data)) | set(keys_of(parts["target_holdout"].data))
    trained = ["source_train", "source_val"] + (["target_train", "target_val"] if target_labels else [])
    for name in trained:
        shared = evaluated.intersection(keys_of(parts[name].data))
        if shared:
            raise DataError(
                f"{len(shared)} evaluated image(s) of '{parts['target_eval'].domain}' are also in "
                f"{name} (domain '{parts[name].domain}', split '{parts[name].split}'), e.g. "
                f"{sorted(shared)[0]}; choose other data.target_eval_split / data.target_adapt_split"
            )
    if target_labels:
        shared = set(keys_of(parts["target_train"].data)).intersection(keys_of(parts["target_val"].data))
        if shared:
            raise DataError(f"target train and val parts share {len(shared)} image(s), e.g. {sorted(shared)[0]}")


def match_classes(
    parts: dict[str, Part], source: str, target: str, strict: bool
) -> tuple[list[str], tuple[int, ...] | None, list[str]]:
    """The pair's classes (the source's, in the dataset's order), the label renumbering into them (None when
    the source has every class of the dataset), and the source classes the target lacks.

    Only the pair's own two domains count, not the other domains of the dataset. A target class that the
    source lacks is an error (no model trained on the source can predict it); a source class that the
    target lacks is a warning, or an error with ``strict``.
    """
    names = classes_of(parts["source_train"].data)
    if classes_of(parts["target_eval"].data) != names:
        raise DataError(f"source '{source}' and target '{target}' have different class lists")
    source_present = {y for n in ("source_train", "source_val") for y in targets_of(parts[n].data)}
    target_present = {y for n, p in parts.items() if n.startswith("target") for y in targets_of(p.data)}
    extra = sorted(target_present - source_present)
    if extra:
        raise DataError(
            f"target '{target}' has images of class(es) that source '{source}' has none of: "
            f"{', '.join(names[i] for i in extra)}; a model trained on '{source}' cannot predict them. "
            f"Choose another source, or remove these class folders from the target"
        )
    missing = [names[i] for i in sorted(source_present - target_present)]
    if missing:
        text = (
            f"target '{target}' has no images of {len(missing)} of the {len(source_present)} classes of "
            f"source '{source}': {', '.join(missing)}"
        )
        if strict:
            raise DataError(f"{text} (data.strict_classes=true)")
        log.warning(
            "%s; target accuracy is computed on the classes it has (data.strict_classes=true makes this an error)", text
        )
    kept = sorted(source_present)
    if len(kept) == len(names):
        return list(names), None, missing
    new_index = {old: new for new, old in enumerate(kept)}
    return [names[i] for i in kept], tuple(new_index.get(i, -1) for i in range(len(names))), missing


def _skip_unreadable(parts: dict[str, Part]) -> list[str]:
    """Decode every file of every part once; leave out those that fail and return their paths."""
    check = ReadabilityCheck()
    for p in parts.values():
        p.data = check.readable(p.data)
    if check.errors:
        log.warning(
            "skipping %d unreadable image file(s) (data.skip_unreadable=true): %s",
            len(check.errors),
            "; ".join(list(check.errors.values())[:5]) + (" ..." if len(check.errors) > 5 else ""),
        )
    return sorted(path_text(p) for p in check.errors)  # written to skipped_files.txt: text UTF-8 accepts


def _split_name(part: Part) -> str:
    """``test``, or ``test:holdout`` for the hash-selected holdout of a transductive split."""
    return part.split if part.subset == "all" else f"{part.split}:{part.subset.replace(' ', '-')}"


def _record(
    parts: dict[str, Part], sizes: dict[str, dict[str, int]], fraction: float, source_part_fraction: float = 0.5
) -> dict[str, dict]:
    """What summary.json says about each part: where it comes from, its size and a fingerprint of its keys
    (equal fingerprints: the same images), and how many images data.limit and unreadable files removed."""
    out = {}
    for name, p in parts.items():
        row = {
            "domain": p.domain,
            "split": p.split,
            "subset": p.subset,
            "labelled": p.labelled,
            "size": len(p.data),
            "fingerprint": fingerprint(p.data),
        }
        if p.subset == "holdout":
            row["holdout_fraction"] = fraction
        if p.source_part is not None:
            row["source_part"] = {
                "part": p.source_part,
                "classifier_fraction": source_part_fraction,
                "hash": f"sha1('{SOURCE_PART_SALT}' + key)[:4] big-endian / 2**32 < fraction: "
                "classifier part, else adapter part",
            }
        if sizes["before_limit"][name] != sizes["before_skipping"][name]:
            row["size_before_limit"] = sizes["before_limit"][name]
        if sizes["before_skipping"][name] != len(p.data):
            row["unreadable_skipped"] = sizes["before_skipping"][name] - len(p.data)
        out[name] = row
    return out


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Training loaders shuffle with ``generator`` (re-seeded each epoch by the loop, which makes resume exact)
    and drop a last partial batch when there is more than one batch (a batch of 1 breaks BatchNorm).
    Workers are not persistent: each epoch's workers take their seeds from the re-seeded generator."""
    if len(dataset) == 0:
        raise DataError("a data split is empty; check data.limit and the split lists")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=shuffle and len(dataset) > batch_size,
    )
