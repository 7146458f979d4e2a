"""Real image data sets read from local folders: torchvision's CIFAR/STL/MNIST and ImageFolder trees.

Nothing is downloaded unless ``download=True`` is asked for explicitly. A missing or malformed path
raises :class:`~pdenets.errors.UsageError` naming the path and the layout that was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pdenets.errors import UsageError

# name -> (torchvision class, num_classes, in_chans, mean, std, native size, expected layout)
TORCHVISION_SETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(cls="CIFAR10", num_classes=10, in_chans=3, size=32,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    layout="DATA_DIR/cifar-10-batches-py/ (the python version of CIFAR-10)"),
    "cifar100": dict(cls="CIFAR100", num_classes=100, in_chans=3, size=32,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     layout="DATA_DIR/cifar-100-python/ (the python version of CIFAR-100)"),
    "stl10": dict(cls="STL10", num_classes=10, in_chans=3, size=96,
                  mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
                  layout="DATA_DIR/stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin)"),
    "mnist": dict(cls="MNIST", num_classes=10, in_chans=1, size=28, mean=(0.1307,), std=(0.3081,),
                  layout="DATA_DIR/MNIST/raw/ (the four idx files)"),
    "fashion_mnist": dict(cls="FashionMNIST", num_classes=10, in_chans=1, size=28, mean=(0.2860,), std=(0.3530,),
                          layout="DATA_DIR/FashionMNIST/raw/ (the four idx files)"),
}

IMAGEFOLDER_LAYOUT = ("PATH/train/<class>/<image> and PATH/val/<class>/<image> (optionally PATH/test/<class>/<image>; "
                      "without it PATH/val is the test split and validation is carved from PATH/train)")


def _targets(ds) -> list[int]:
    t = getattr(ds, "targets", None)
    if t is None:
        t = ds.labels  # STL10
    return [int(v) for v in t]


def _torchvision(name: str, root: Path, train: bool, transform, download: bool):
    import torchvision.datasets as tvd

    info = TORCHVISION_SETS[name]
    cls = getattr(tvd, info["cls"])
    try:
        if name == "stl10":
            return cls(str(root), split="train" if train else "test", transform=transform, download=download)
        return cls(str(root), train=train, transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise UsageError(f"{name} not found or corrupted under {str(root)!r}; expected {info['layout']} "
                         f"(add --download to fetch it)") from e


def build_torchvision_dataset(name: str, split: str, data_dir: str | os.PathLike | None, transform,
                              download: bool = False):
    """A torchvision data set from ``data_dir``: 'test' is its official test split; 'train' and 'val' are the
    fixed stratified 85/15 carve of its training split (:func:`pdenets.datasets.splits.carve_validation`)."""
    from torch.utils.data import Subset

    from pdenets.datasets.splits import carve_validation

    info = TORCHVISION_SETS[name]
    if data_dir is None:
        raise UsageError(f"--dataset {name} needs --data-dir DIR with {info['layout']} (or add --download)")
    root = Path(data_dir).expanduser()
    if not download and not root.is_dir():
        raise UsageError(f"data dir {str(root)!r} does not exist; expected {info['layout']}")
    if split not in ("train", "val", "test"):
        raise UsageError(f"split must be 'train', 'val' or 'test', got {split!r}")
    ds = _torchvision(name, root, split != "test", transform, download)
    if split == "test":
        return ds
    targets = _targets(ds)
    train, val = carve_validation(range(len(targets)), targets)
    return Subset(ds, train if split == "train" else val)


def build_imagefolder(path: str | os.PathLike, split: str, transform):
    """One split of an ImageFolder tree (``torchvision.datasets.ImageFolder``).

    With PATH/test: 'train', 'val', 'test' are PATH/train, PATH/val, PATH/test. Without it (ImageNet's layout:
    train and val only) PATH/val is the **test** split and 'train' / 'val' are the fixed stratified 85/15 carve
    of PATH/train (:func:`pdenets.datasets.splits.carve_validation`), as for the torchvision sets: no checkpoint
    is ever chosen on the split that is reported (docs/design.md §9).
    """
    import torchvision.datasets as tvd

    root = Path(path).expanduser()
    if split not in ("train", "val", "test"):
        raise UsageError(f"split must be 'train', 'val' or 'test', got {split!r}")
    carved = not (root / "test").is_dir()
    sub = split if not carved else ("val" if split == "test" else "train")
    folder = root / sub
    if not folder.is_dir():
        raise UsageError(f"image folder {str(folder)!r} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    try:
        ds = tvd.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"no images found under {str(folder)!r}; expected {IMAGEFOLDER_LAYOUT}") from e
    if sub != "train":
        check_same_classes(imagefolder_classes(root), ds.classes, folder)
    if carved and split != "test":
        from torch.utils.data import Subset

        keep = _carve(ds.targets, folder)[split == "val"]
        check_images_readable([ds.samples[i][0] for i in keep], folder)
        return Subset(ds, keep)
    check_images_readable([p for p, _ in ds.samples], folder)
    return ds


def _carve(targets: list[int], folder: Path) -> tuple[list[int], list[int]]:
    """(train, val) indices of the validation carve of a training tree; a tree too small to stratify is refused."""
    from pdenets.datasets.splits import VAL_FRACTION, carve_validation

    try:
        return carve_validation(range(len(targets)), targets)
    except ValueError as e:  # scikit-learn: a class with one image, or fewer held-out images than classes
        raise UsageError(f"{str(folder)!r}: too few images per class to hold out {VAL_FRACTION:.0%} as a stratified "
                         f"validation split ({e}); add PATH/test/<class>/<image> so that PATH/val is the "
                         f"validation split") from None


def check_same_classes(train: list[str], other: list[str], folder: Path) -> None:
    """The class folders of a validation/test tree must be those of the training tree: ImageFolder numbers
    classes by their sorted names, so any difference would silently score one class as another."""
    if train != other:
        missing, extra = sorted(set(train) - set(other)), sorted(set(other) - set(train))
        raise UsageError(f"the classes of {str(folder)!r} differ from the training classes: missing "
                         f"{missing or '-'}, extra {extra or '-'}; every split needs the same class folders")


def check_images_readable(paths: list[str], folder: Path) -> None:
    """Refuse a tree with images PIL cannot open (checked before the first step: header and, where the
    format has them, checksums, via ``Image.verify``); the error counts them and names the first few."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception:  # PIL raises many types for foreign, truncated or corrupt files
            bad.append(p)
    if bad:
        raise UsageError(f"{len(bad)} unreadable image(s) under {str(folder)!r} (first: {', '.join(bad[:3])}); "
                         f"remove or replace them")


def imagefolder_classes(path: str | os.PathLike) -> list[str]:
    folder = Path(path).expanduser() / "train"
    if not folder.is_dir():
        raise UsageError(f"image folder {str(folder)!r} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    if not classes:
        raise UsageError(f"no class folders in {str(folder)!r}; expected {IMAGEFOLDER_LAYOUT}")
    return classes
