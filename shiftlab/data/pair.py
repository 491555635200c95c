"""A source/target pair of domains with the datasets one run needs, all under one preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from .base import DataError
from .cache import data_root
from .registry import DatasetSpec, get_dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FAMILY_DEFAULTS = {  # image size and normalisation per family, so any two domains share one transform
    "photo": dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "digits": dict(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


class ToNormalizedTensor:
    """PIL image -> normalised float tensor (C, H, W), computed in NumPy.

    Same result as ``ToTensor()`` then ``Normalize(mean, std)``, but single-threaded: torch's
    intra-op threads on one small image cost more in synchronisation than they save (measured 35 ms
    against 0.6 ms per 112 px image on 2 busy cores), and would compete with the model's threads.
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1) * 255
        self.scale = 1 / (np.asarray(std, dtype=np.float32).reshape(-1, 1, 1) * 255)

    def __call__(self, img) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(np.ascontiguousarray((arr.transpose(2, 0, 1) - self.mean) * self.scale))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transforms(family: str, size: int | None, augment: bool) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms. Photos: random resized crop and flip when augmenting; digits: resize only."""
    d = FAMILY_DEFAULTS[family]
    size = size or d["size"]
    tail = [ToNormalizedTensor(d["mean"], d["std"])]
    evaluation = T.Compose([T.Resize((size, size)), *tail])
    if augment and family == "photo":
        train = T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0)), T.RandomHorizontalFlip(), *tail])
    else:
        train = evaluation
    return train, evaluation


class Transformed(Dataset):
    """Applies a transform to ``(image, label)`` samples; ``with_labels=False`` yields images only.

    Dropping labels here, rather than in a method, makes an unlabelled target stream unable to leak them.
    """

    def __init__(self, base: Dataset, transform, with_labels: bool = True):
        self.base, self.transform, self.with_labels = base, transform, with_labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        image = self.transform(image)
        return (image, label) if self.with_labels else image


def evenly_spaced(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` samples, evenly spaced: keeps class proportions of class-sorted lists (PACS)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit <= 0:
        raise DataError(f"data.limit must be positive, got {limit}")
    return Subset(dataset, np.linspace(0, len(dataset) - 1, limit).round().astype(int).tolist())


@dataclass
class DomainPair:
    """Everything one run reads. ``target_train`` carries labels only for labelled-target methods."""
    spec: DatasetSpec
    source: str
    target: str
    classes: list[str]
    source_train: Dataset
    source_val: Dataset
    target_train: Dataset
    target_eval: Dataset
    target_eval_images: Dataset  # target_eval without labels, for statistics such as AdaBN's
    target_eval_split: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_domain_pair(dataset: str, root: Path | None, source: str, target: str, *, image_size: int | None = None,
                      augment: bool = True, limit: int | None = None,
                      target_labels: bool = False) -> DomainPair:
    """Source: ``train`` to learn, ``val`` to select. Target without labels: its images of ``test`` (the whole
    domain for PACS) both to adapt on and to evaluate. Target with labels (oracle, fine-tuning): ``train`` to
    learn and the held-out ``val`` to evaluate, so the upper bound is never measured on its training images.
    """
    root = data_root(root)
    if dataset.startswith("folder:"):
        from .folder import discover_folder_dataset
        spec = discover_folder_dataset(root, dataset.split(":", 1)[1])
    else:
        spec = get_dataset(dataset)
    spec.validate_domain(source, "source domain")
    spec.validate_domain(target, "target domain")
    train_tf, eval_tf = build_transforms(spec.family, image_size, augment)

    def split(domain: str, name: str) -> Dataset:
        return evenly_spaced(spec.dataset(root, domain, name), limit)

    source_train = split(source, "train")
    classes = list(_classes_of(source_train))
    target_eval_split = "val" if target_labels else "test"
    target_eval = split(target, target_eval_split)
    if list(_classes_of(target_eval)) != classes:
        raise DataError(f"source '{source}' and target '{target}' have different class lists")
    target_stream = split(target, "train") if target_labels else target_eval
    return DomainPair(
        spec=spec, source=source, target=target, classes=classes,
        source_train=Transformed(source_train, train_tf),
        source_val=Transformed(split(source, "val"), eval_tf),
        target_train=Transformed(target_stream, train_tf, with_labels=target_labels),
        target_eval=Transformed(target_eval, eval_tf),
        target_eval_images=Transformed(target_eval, eval_tf, with_labels=False),
        target_eval_split=target_eval_split,
    )


def _classes_of(dataset: Dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset.classes


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                generator: torch.Generator | None = None, pin_memory: bool = False) -> DataLoader:
    """Training loaders shuffle with ``generator`` (re-seeded each epoch by the loop, which makes resume exact)
    and drop a last partial batch when there is more than one batch (a batch of 1 breaks BatchNorm).
    Workers are not persistent: each epoch's workers take their seeds from the re-seeded generator."""
    if len(dataset) == 0:
        raise DataError("a data split is empty; check data.limit and the split lists")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, pin_memory=pin_memory,
                      drop_last=shuffle and len(dataset) > batch_size)
