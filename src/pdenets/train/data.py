"""Data loaders for the trainer: a DistributedSampler for training (also with one process, so the
shuffling of epoch ``e`` depends only on ``(seed, e)`` — which makes resume exact) and an unpadded shard
sampler for evaluation. :func:`batch_indices` recovers the data set indices of every training batch.
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
class Loaders:
    train: DataLoader
    eval: DataLoader
    train_sampler: DistributedSampler
    info: DatasetInfo
    img_size: int | None


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


def build_loaders(cfg, dist_info: DistInfo | None = None) -> Loaders:
    """Training and evaluation loaders of ``cfg.dataset`` (the evaluation split is 'val', which is the test
    split of data sets that have only two)."""
    d = dist_info or DistInfo()
    info = dataset_info(cfg.dataset, cfg.data_dir)
    img_size = cfg.img_size if info.kind == "image" else None
    if info.kind == "image" and img_size is None:
        img_size = 16 if cfg.dataset == "digits" else (info.native_size or 224)
    common = dict(img_size=img_size, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    train_ds = build_dataset(cfg.dataset, "train", augment=augment_kwargs(cfg), crop_pct=cfg.crop_pct,
                             random_shift=cfg.random_shift, **common)
    eval_ds = build_dataset(cfg.dataset, "val", crop_pct=cfg.crop_pct, **common)
    sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=False)
    pin = d.device.type == "cuda"
    drop_last = len(train_ds) >= cfg.batch_size * d.world_size
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                       drop_last=drop_last, pin_memory=pin, persistent_workers=cfg.workers > 0)
    eval_loader = make_eval_loader(eval_ds, cfg.eval_batch_size or 2 * cfg.batch_size, cfg.workers, d)
    return Loaders(train, eval_loader, sampler, info, img_size)


def make_eval_loader(ds: Dataset, batch_size: int, workers: int = 0, dist_info: DistInfo | None = None
                     ) -> DataLoader:
    d = dist_info or DistInfo()
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), d.rank, d.world_size),
                      num_workers=workers, pin_memory=d.device.type == "cuda")


def batch_indices(loader: DataLoader) -> list[list[int]]:
    """Data set indices of each batch the loader will yield this epoch (call after ``set_epoch``)."""
    order = list(iter(loader.sampler))
    bs = loader.batch_size
    n = len(order) // bs if loader.drop_last else -(-len(order) // bs)
    return [order[i * bs:(i + 1) * bs] for i in range(n)]


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool = False):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
