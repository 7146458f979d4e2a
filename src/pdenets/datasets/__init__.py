"""Data sets: generated and bundled ones (no download) and loaders for local copies of real ones.

:func:`build_dataset` is the single entry point; :func:`dataset_info` tells the trainer how many classes
and input channels a data set has (so they can be passed to ``create_model``). Names:

* ``digits`` — scikit-learn's 8×8 digits resized to ``img_size`` (default 16), fixed stratified 75/25
  train/test split;
* ``circles`` — Ruseckas §5.1 two noisy concentric circles, 2-D points (vector data, 2 classes), 75/25;
* ``cifar10``, ``cifar100``, ``stl10``, ``mnist``, ``fashion_mnist`` — torchvision, from a local ``data_dir``
  (their official train and test splits);
* ``imagefolder:PATH`` — PATH/train/<class>/*, PATH/val/<class>/* and optionally PATH/test/<class>/*.

Splits: 'train' trains, 'val' selects (the best checkpoint), 'test' is scored once at the end. Sets without
an official validation split (digits, circles, the torchvision sets) get a fixed stratified 15 % of their
training part as 'val' (:mod:`pdenets.datasets.splits`; seed fixed, independent of the run's seed), and
'train' is the rest; 'test' stays the fixed test split. ImageFolder: with PATH/test, 'val' is PATH/val and
'test' PATH/test; without it (ImageNet's layout) 'test' is PATH/val and 'val' is carved from PATH/train.

Every data set yields ``(x, y)`` pairs; the trainer's samplers know the index of every sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pdenets.errors import UsageError

DATASETS: tuple[str, ...] = ("digits", "circles", "cifar10", "cifar100", "stl10", "mnist", "fashion_mnist",
                             "imagefolder:PATH")


@dataclass
class DatasetInfo:
    """What the trainer needs to know before building a model: classes, channels, kind, native size."""

    name: str
    num_classes: int
    in_chans: int
    kind: str = "image"  # 'image' (N, C, H, W) or 'vector' (N, F)
    native_size: int | None = None
    in_features: int | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: list[str] = field(default_factory=list)


def check_dataset_name(name: str) -> None:
    if name in DATASETS[:-1]:
        return
    if name.startswith("imagefolder:") and len(name) > len("imagefolder:"):
        return
    raise UsageError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, channels and kind of data set ``name`` (reads only folder names for ``imagefolder``)."""
    from pdenets.datasets.vision import TORCHVISION_SETS, imagefolder_classes

    check_dataset_name(name)
    if name == "digits":
        return DatasetInfo(name, 10, 1, native_size=8, class_names=[str(i) for i in range(10)])
    if name == "circles":
        return DatasetInfo(name, 2, 0, kind="vector", in_features=2, class_names=["inner", "outer"])
    if name in TORCHVISION_SETS:
        t = TORCHVISION_SETS[name]
        return DatasetInfo(name, t["num_classes"], t["in_chans"], native_size=t["size"], mean=t["mean"],
                           std=t["std"], class_names=[str(i) for i in range(t["num_classes"])])
    classes = imagefolder_classes(name.partition(":")[2])
    return DatasetInfo(name, len(classes), 3, native_size=None, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), class_names=classes)


def build_transform(info: DatasetInfo, img_size: int, is_training: bool, augment: dict[str, Any] | None = None,
                    crop_pct: float | None = None, interpolation: str = "bilinear"):
    """timm's ``create_transform`` for an image data set; ``augment`` (training only) holds its keywords
    (``auto_augment``, ``re_prob``, ``re_mode``, ``re_count``, ``hflip``, ``scale``, ``color_jitter`` ...).
    Without ``augment`` the training images get the evaluation transform (resize + centre crop)."""
    from timm.data import create_transform

    input_size = (info.in_chans, img_size, img_size)
    if crop_pct is None:
        crop_pct = 1.0 if info.native_size in (None, img_size) or info.native_size < 64 else 0.875
    common = dict(input_size=input_size, mean=info.mean, std=info.std, interpolation=interpolation)
    if is_training and augment is not None:
        return create_transform(is_training=True, **common, **augment)
    return create_transform(is_training=False, crop_pct=crop_pct, **common)


def build_dataset(name: str, split: str, img_size: int | None = None, data_dir: str | os.PathLike | None = None,
                  download: bool = False, augment: dict[str, Any] | None = None, crop_pct: float | None = None,
                  seed: int = 0, random_shift: int = 0):
    """The ``split`` ('train', 'val' or 'test', disjoint; see the module docstring) of data set ``name``.

    ``img_size`` defaults to 16 for digits and to the native size of the others (224 for ImageFolder).
    ``augment`` is passed to timm's ``create_transform`` for the training split of real image sets;
    ``random_shift`` is the digits' training augmentation (random translation by up to that many pixels).
    Bad names and paths raise :class:`~pdenets.errors.UsageError` (one line naming the value).
    """
    from pdenets.datasets.vision import TORCHVISION_SETS, build_imagefolder, build_torchvision_dataset

    check_dataset_name(name)
    if split not in ("train", "val", "test"):
        raise UsageError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if img_size is not None and img_size < 1:
        raise UsageError(f"--img-size must be a positive integer, got {img_size}")
    if name == "digits":
        from pdenets.datasets.digits import DigitsDataset

        return DigitsDataset(split, img_size or 16, random_shift=random_shift if split == "train" else 0)
    if name == "circles":
        from pdenets.datasets.circles_dataset import CirclesDataset

        return CirclesDataset(split, seed=seed)
    info = dataset_info(name, data_dir)
    size = img_size or info.native_size or 224
    tf = build_transform(info, size, split == "train", augment, crop_pct)
    if name in TORCHVISION_SETS:
        return build_torchvision_dataset(name, split, data_dir, tf, download)
    return build_imagefolder(name.partition(":")[2], split, tf)


__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "build_transform", "check_dataset_name", "dataset_info"]
