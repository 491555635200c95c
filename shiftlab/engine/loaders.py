"""A run's data, from config to batches: the domain pair, the choice between decoding files every epoch
and the decoded cache, data-parallel sharding, and the epoch-seeded streams that make resume exact.

Kept beside the :class:`~shiftlab.engine.loop.Trainer` (as Dassl keeps its data manager), so the loop only
asks for the next source and target batch and the evaluator for its sets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

from ..config import Config
from ..data.decoded import (
    BatchAugment,
    DecodedSplit,
    TensorBatchLoader,
    decode_split,
    decoded_bytes,
    resolve_loader,
    split_identity,
    stored_size,
)
from ..data.pair import DomainPair, Transformed, build_domain_pair, make_loader
from ..data.splits import keys_of
from ..errors import ConfigError, Uncacheable
from .distributed import DistEnv, ShardedBatchSampler, shard_bounds

log = logging.getLogger(__name__)

AUGMENT_STREAM = 16  # offset of the augmentation's seeds from the shuffling streams (0 source, 1 target)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """Each epoch's shuffling and worker seeds depend only on (seed, epoch, stream), so resume is exact."""
    return (seed * 1_000_003 + epoch * 7_919 + stream) % 2**63


def build_pair(cfg: Config, method_cls, target: str | None = None) -> DomainPair:
    """The source and target splits of ``cfg.data`` for a method (labelled target parts only if it reads them);
    ``target`` replaces ``data.target`` (``shiftlab predict`` on another domain of the run's dataset)."""
    d = cfg.data
    return build_domain_pair(
        d.dataset,
        d.root,
        d.source,
        target or d.target,
        image_size=d.image_size,
        augment=d.augment,
        limit=d.limit,
        target_labels=method_cls.target_stream == "labelled",
        target_adapt_split=d.target_adapt_split,
        target_eval_split=d.target_eval_split,
        holdout_fraction=d.target_holdout_fraction,
        strict_classes=d.strict_classes,
        skip_unreadable=d.skip_unreadable,
        target_train_limit=d.target_train_limit,
        source_train_split=d.source_train_split,
        source_part=d.source_part,
        source_part_fraction=d.source_part_fraction,
    )


def validator_subset(n: int, limit: int | None) -> list[int] | None:
    """The images the validators score: all (``None``), or ``limit`` of ``n`` chosen by a fixed seed, sorted,
    so the subset is the same for every epoch, method, seed and resume (``train.validator_limit``)."""
    if limit is None or limit >= n:
        return None
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit]
    return sorted(chosen.tolist())


class RunLoaders:
    """Training streams and evaluation loaders of one run (see the module docstring).

    ``eval_sets``: name -> (domain, labelled loader); every name becomes ``<name>_acc`` / ``<name>_loss``.
    ``target_images``: the whole adaptation set on every rank (what methods read before evaluation, e.g.
    AdaBN's statistics); ``validator_images``: the validators' images, this rank's part of them."""

    def __init__(self, cfg: Config, pair: DomainPair, method, device: torch.device, dist: DistEnv):
        self.cfg, self.pair, self.device, self.dist = cfg, pair, device, dist
        d, t, p = cfg.data, cfg.train, pair
        if dist.enabled and d.batch_size % dist.world:
            raise ConfigError(
                f"data.batch_size={d.batch_size} is the global batch of {dist.world} processes "
                f"and must be divisible by {dist.world}"
            )
        eval_bs = d.eval_batch_size or 2 * d.batch_size
        self.generators = [torch.Generator(), torch.Generator()]  # re-seeded every epoch (see batches)
        train = {
            "source_train": p.source_train if method.uses_source else None,
            "target_train": p.target_train if method.target_stream != "none" else None,
        }
        evals = {
            "source_val": p.source_val,
            "target": p.target_eval,
            "target_val": p.target_val,
            "target_holdout": p.target_holdout,
            "target_images": p.target_adapt_images,
        }
        self.kind = self._choose(
            {k: v for k, v in train.items() if v is not None}, {k: v for k, v in evals.items() if v is not None}
        )
        make = self._cached if self.kind == "cached" else self._files
        self.source = (
            make(train["source_train"], d.batch_size, train=True, generator=self.generators[0])
            if train["source_train"] is not None
            else None
        )
        self.target = (
            make(train["target_train"], d.batch_size, train=True, generator=self.generators[1])
            if train["target_train"] is not None
            else None
        )
        self.eval_sets = {
            name: (domain, make(ds, eval_bs, train=False, shard=True))
            for name, domain, ds in (
                ("source_val", "source", p.source_val),
                ("target", "target", p.target_eval),
                ("target_val", "target", p.target_val),
                ("target_holdout", "target", p.target_holdout),
            )
            if ds is not None
        }
        self.target_images = make(p.target_adapt_images, eval_bs, train=False)
        self.validator_indices = validator_subset(len(p.target_adapt_images), t.validator_limit)
        self.validator_images = (
            make(p.target_adapt_images, eval_bs, train=False, shard=True, indices=self.validator_indices)
            if dist.enabled or self.validator_indices is not None
            else self.target_images
        )
        # transductive protocols (PACS, Office-Home) adapt on the images they evaluate on: the validators then
        # reuse the evaluation pass's probabilities instead of a second pass over the same images
        self.validators_reuse_target_pass = keys_of(p.target_eval.base) == keys_of(p.target_adapt_images.base)
        main = self.source if self.source is not None else self.target
        exact = t.exact_steps and t.steps_per_epoch  # a budget in steps, the same whatever the stream's length
        self.steps_per_epoch = t.steps_per_epoch if exact else min(len(main), t.steps_per_epoch or len(main))
        self.total_steps = max(1, self.steps_per_epoch * t.epochs)

    def batches(self, stream: int, epoch: int) -> Iterator | None:
        """Endless iterator over stream 0 (source) or 1 (target), re-seeded for ``epoch``; None if unused."""
        loader = (self.source, self.target)[stream]
        if loader is None:
            return None
        seed = self.cfg.experiment.seed
        self.generators[stream].manual_seed(stream_seed(seed, epoch, stream))
        if hasattr(loader, "seed_augmentation"):  # the decoded path draws its crops from its own generator
            loader.seed_augmentation(stream_seed(seed, epoch, AUGMENT_STREAM + stream))
        return _cycle(loader)

    def _choose(self, train: dict[str, Transformed], evals: dict[str, Transformed]) -> str:
        """``cached`` or ``files`` (``data.loader``; ``auto`` caches when the decoded splits fit the budget)."""
        d = self.cfg.data
        family = self.pair.spec.family
        needed: dict[tuple[int, int], int] = {}  # (split object, stored size) -> bytes; shared splits count once
        for is_train, parts in ((True, train), (False, evals)):
            for ds in parts.values():
                size = stored_size(family, d.image_size, d.augment, is_train)
                needed[id(ds.base), size] = decoded_bytes(len(ds), size)
        kind = resolve_loader(d.loader, sum(needed.values()), self.device, d.cache_budget_gb)
        if kind == "cached":
            try:  # the identity walk names any dataset the cache cannot key, before anything is decoded
                for ds in {id(v.base): v for v in (*train.values(), *evals.values())}.values():
                    split_identity(ds.base, 0)
            except Uncacheable as err:
                if d.loader == "cached":
                    raise ConfigError(f"data.loader=cached: {err}") from err
                kind = "files"
        log.info("data path: %s (data.loader=%s)", kind, d.loader)
        return kind

    def _part(self, n: int, shard: bool, indices: Sequence[int] | None) -> Sequence[int] | None:
        """Positions this rank reads: ``indices`` (or all), cut to the rank's contiguous share when sharded."""
        if not (shard and self.dist.world > 1):
            return indices
        positions = range(n) if indices is None else indices
        lo, hi = shard_bounds(len(positions), self.dist.rank, self.dist.world)
        return positions[lo:hi]

    def _files(
        self,
        ds: Transformed,
        batch_size: int,
        *,
        train: bool,
        generator=None,
        shard: bool = False,
        indices: Sequence[int] | None = None,
    ):
        """The DataLoader path: decodes files every epoch (in ``data.num_workers`` processes)."""
        d, world = self.cfg.data, self.dist.world
        pin = self.device.type == "cuda"
        if not train:
            part = self._part(len(ds), shard, indices)
            if part is not None:
                ds = torch.utils.data.Subset(ds, part)
            return make_loader(ds, batch_size, shuffle=False, num_workers=d.num_workers, pin_memory=pin)
        if world == 1:
            return make_loader(
                ds, batch_size, shuffle=True, num_workers=d.num_workers, generator=generator, pin_memory=pin
            )
        # the sampler and batching make_loader would use, each rank keeping its part of every global batch
        batches = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(ds, generator=generator), batch_size, drop_last=len(ds) > batch_size
        )
        return torch.utils.data.DataLoader(
            ds,
            batch_sampler=ShardedBatchSampler(batches, self.dist.rank, world),
            num_workers=d.num_workers,
            generator=generator,
            pin_memory=pin,
        )

    def _cached(
        self,
        ds: Transformed,
        batch_size: int,
        *,
        train: bool,
        generator=None,
        shard: bool = False,
        indices: Sequence[int] | None = None,
    ):
        """The decoded path: batches cut from the split's uint8 tensor on the model's device, augmented there."""
        d = self.cfg.data
        family = self.pair.spec.family
        size = stored_size(family, d.image_size, False, False)
        stored = stored_size(family, d.image_size, d.augment, train)
        split: DecodedSplit = decode_split(ds.base, stored, progress=self.cfg.train.progress)
        return TensorBatchLoader(
            split,
            batch_size,
            shuffle=train,
            device=self.device,
            size=size,
            augment=BatchAugment(size) if stored != size else None,
            generator=generator,
            with_labels=ds.with_labels,
            label_map=ds.label_map,
            shard=(self.dist.rank, self.dist.world) if train else (0, 1),
            indices=None if train else self._part(len(split), shard, indices),
        )


def _cycle(loader) -> Iterator:
    while True:
        yield from loader
