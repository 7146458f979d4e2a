"""Data for the trainer: the three splits (:class:`DataSplits`) and their loaders.

Training uses a DistributedSampler (also with one process, so the shuffling of epoch ``e`` depends only
on ``(seed, e)`` — which makes resume exact); validation and test an unpadded shard sampler.
:func:`batch_indices` recovers the data set indices of every training batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from pdenets.datasets import DatasetInfo, build_dataset, dataset_info
from pdenets.train.distributed import DistInfo


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a data set, in order and without padding (for evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


@dataclass
class DataSplits:
    """The three splits of a run: any torch Datasets yielding ``(x, y)`` (in-memory TensorDatasets are fine).

    ``train`` trains, ``val`` picks the best checkpoint, ``test`` is scored once at the end with it;
    ``info`` (:class:`pdenets.datasets.DatasetInfo`) gives ``num_classes``, ``in_chans``, ``kind``,
    ``in_features`` and ``class_names`` to the model constructor and the report.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: DatasetInfo


@dataclass
class Loaders:
    """Loaders of a run's splits; ``eval`` is the validation loader (the name of earlier versions)."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_sampler: DistributedSampler
    info: DatasetInfo
    img_size: int | None

    @property
    def eval(self) -> DataLoader:
        return self.val


def augment_kwargs(cfg) -> dict[str, Any] | None:
    """Keywords for timm's create_transform (training split) from the config, or None for no augmentation."""
    if cfg.no_aug:
        return None
    kw: dict[str, Any] = dict(hflip=cfg.hflip, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
                              auto_augment=cfg.auto_augment)
    if cfg.scale is not None:
        kw["scale"] = tuple(cfg.scale)
    if cfg.color_jitter is not None:
        kw["color_jitter"] = cfg.color_jitter
    return kw


def default_img_size(cfg, info: DatasetInfo) -> int | None:
    """``cfg.img_size``, else 16 for digits and the native size (224 for ImageFolder) of other image sets."""
    if info.kind != "image":
        return None
    if cfg.img_size is not None:
        return cfg.img_size
    return 16 if cfg.dataset == "digits" else (info.native_size or 224)


def build_splits(cfg) -> DataSplits:
    """The train / val / test splits of ``cfg.dataset`` (:func:`pdenets.datasets.build_dataset`)."""
    info = dataset_info(cfg.dataset, cfg.data_dir)
    common = dict(img_size=default_img_size(cfg, info), data_dir=cfg.data_dir, download=cfg.download,
                  seed=cfg.seed)
    train = build_dataset(cfg.dataset, "train", augment=augment_kwargs(cfg), crop_pct=cfg.crop_pct,
                          random_shift=cfg.random_shift, **common)
    val = build_dataset(cfg.dataset, "val", crop_pct=cfg.crop_pct, **common)
    test = build_dataset(cfg.dataset, "test", crop_pct=cfg.crop_pct, **common)
    return DataSplits(train, val, test, info)


def build_loaders(cfg, dist_info: DistInfo | None = None, splits: DataSplits | None = None) -> Loaders:
    """Loaders of ``splits`` (default: :func:`build_splits` of ``cfg``) for this rank."""
    d = dist_info or DistInfo()
    splits = splits if splits is not None else build_splits(cfg)
    sampler = DistributedSampler(splits.train, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    drop_last = len(splits.train) >= cfg.batch_size * d.world_size
    train = DataLoader(splits.train, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                       drop_last=drop_last, pin_memory=d.device.type == "cuda", persistent_workers=cfg.workers > 0)
    bs = cfg.eval_batch_size or 2 * cfg.batch_size
    return Loaders(train, make_eval_loader(splits.val, bs, cfg.workers, d),
                   make_eval_loader(splits.test, bs, cfg.workers, d), sampler, splits.info,
                   default_img_size(cfg, splits.info))


def make_eval_loader(ds: Dataset, batch_size: int, workers: int = 0, dist_info: DistInfo | None = None
                     ) -> DataLoader:
    """An in-order loader of this rank's shard of ``ds`` (no padding, so sums over ranks are exact)."""
    d = dist_info or DistInfo()
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), d.rank, d.world_size),
                      num_workers=workers, pin_memory=d.device.type == "cuda")


def batch_indices(loader: DataLoader) -> list[list[int]]:
    """Data set indices of each batch the loader will yield this epoch (call after ``set_epoch``)."""
    order = list(iter(loader.sampler))
    bs = loader.batch_size
    n = len(order) // bs if loader.drop_last else -(-len(order) // bs)
    return [order[i * bs:(i + 1) * bs] for i in range(n)]


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device`` (4-D inputs to channels-last memory format if asked)."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
